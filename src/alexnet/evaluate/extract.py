"""`alexnet.extract` and `alexnet.rdm`: any layer's activations for any images, and the representational
dissimilarity matrix of a layer, for comparing the net with other nets or with brain data.

`extract` feeds each image the way `alexnet predict` does (alexnet.data.transforms: §2's square, the
centre patch minus the net's mean image) and reads the layers by their paper names through
`AlexNet.features` (before or after the ReLU, whole or per tower): rows in input order, float32 NumPy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from alexnet.data.folder import pixel_batches
from alexnet.errors import UserError, printable
from alexnet.evaluate.predict import expand_inputs
from alexnet.model.net import AlexNet


def image_items(data) -> Sequence:
    """The images `data` names, as an indexable sequence: a folder (every image file under it, in name
    order), a file or a glob pattern, a list of those and of in-memory images (PIL, arrays), or a
    Dataset (anything with len() and [i]: an ImageFolder, an ImageStore) as it is."""
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if isinstance(data, (list, tuple)):
        items = []
        for result, image, why in expand_inputs(data):
            if why is not None:
                raise UserError(f"{printable(str(image))}: {why}")
            items.append(image)
        return items
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise UserError(f"give a folder, files, a list of images or a Dataset, not {type(data).__name__}")
    return data


def extract(net: AlexNet, data, layers: str | Iterable[str], batch_size: int = 64, relu: str = "post",
            towers: bool = False) -> dict[str, np.ndarray]:
    """{layer: float32 array (N, C, H, W) or (N, D)}: the activations of `layers` (AlexNet.features:
    paper names, `relu` "pre" or "post", `towers` for the two halves) for every image of `data`
    (`image_items`), rows in input order, the centre patch of each as `alexnet predict` sees it. The
    net runs on its own device, in eval mode (its mode is put back after), without gradients."""
    items = image_items(data)
    if not len(items):
        raise UserError("no images to extract features from")
    preprocess = net.transforms()  # refuses a net without a mean image
    net.feature_modules(layers, relu, towers)  # the layer names checked before any image is read
    device, was_training = net.fc8.weight.device, net.training
    out: dict[str, np.ndarray] = {}
    row = 0
    net.eval()
    try:
        with torch.no_grad():
            for pixels, _ in pixel_batches(items, preprocess.image_size, batch_size):
                feats = net.features(preprocess.batch(pixels).to(device), layers, relu, towers)
                for name, value in feats.items():
                    if name not in out:
                        out[name] = np.empty((len(items), *value.shape[1:]), np.float32)
                    out[name][row : row + len(value)] = value.float().cpu().numpy()
                row += len(pixels)
    finally:
        net.train(was_training)
    return out


def rdm(features) -> np.ndarray:
    """(N, N) representational dissimilarity matrix of N rows of features (each flattened): 1 - the
    Pearson correlation of every two rows, in float64, 0 on the diagonal. A constant row has no
    correlation and is refused."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 2 or len(x) < 2:
        raise UserError(f"an RDM needs at least two rows of features, got an array of shape {x.shape}")
    x = x.reshape(len(x), -1)
    x = x - x.mean(1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    if not np.isfinite(norms).all() or (norms == 0).any():
        bad = int(np.flatnonzero(~np.isfinite(norms) | (norms == 0))[0])
        raise UserError(f"row {bad} of the features is constant or not finite: its correlation is undefined")
    x /= norms[:, None]
    d = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d
