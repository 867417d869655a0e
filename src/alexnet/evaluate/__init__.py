"""§6 Results: error rates on one or ten patches and of ensembles, predictions for image files,
the last hidden layer's features, their nearest neighbours (§6.1), and the net as ONNX.

    error_rates.py  the one evaluation loop: the §4.1 test views, top-1/top-5, ensembles
    predict.py      image files, folders, globs -> top-5 labels
    features.py     fc7 vectors of a store's split, streamed to .npy
    neighbours.py   §6.1 retrieval: exact nearest neighbours, and short binary codes
    search.py       `alexnet neighbors`: two feature files -> nearest rows
    export.py       ONNX, with the mean subtraction inside the graph
"""

from alexnet.evaluate.error_rates import evaluate

__all__ = ["evaluate"]
