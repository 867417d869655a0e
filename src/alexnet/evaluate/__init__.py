"""§6 Results: error rates on one or ten patches and of ensembles, predictions for image files,
the last hidden layer's features, their nearest neighbours (§6.1), and the net as ONNX.

    error_rates.py  the one evaluation loop: the §4.1 test views, top-1/top-5, ensembles (`alexnet eval`)
    accuracy.py     the same of a net in memory on a store, a class-folder tree or a Dataset
    predict.py      image files, folders, globs, PIL images, arrays -> top-5 labels
    features.py     fc7 vectors of a store's split, streamed to .npy
    extract.py      any layer's activations for any images, in input order; RDMs
    neighbours.py   §6.1 retrieval: exact nearest neighbours, and short binary codes
    search.py       `alexnet neighbors`: two feature files -> nearest rows
    export.py       ONNX, with the mean subtraction inside the graph
"""

import sys
import types

from alexnet.evaluate.accuracy import evaluate

__all__ = ["evaluate"]


class _Evaluate(types.ModuleType):
    """This package is what `alexnet.evaluate` names (Python makes a subpackage an attribute of its
    parent when it is imported, whatever the parent defined), so the package itself is the front
    door's `alexnet.evaluate(net, data, views=10)`: calling it calls accuracy.py's `evaluate`."""

    def __call__(self, net, data, views: int = 10, split: str = "val", batch_size: int = 128) -> dict:
        return evaluate(net, data, views, split, batch_size)


sys.modules[__name__].__class__ = _Evaluate
