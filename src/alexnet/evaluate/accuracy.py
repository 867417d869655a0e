"""`alexnet.evaluate(net, data)`: §6's top-1 and top-5 error of a net in memory on labelled images, on
the centre patch or §4.1's ten (their softmax averaged), with per-class accuracy, as `alexnet eval`
reports a checkpoint's on a store (alexnet.evaluate.error_rates, whose view averaging it shares).

`data`: a store (a split of it), a plain class-folder tree (ROOT/<class>/<images>, its folders named
as the net's classes), or any Dataset of (image, label). Every image gets the net's preprocessing
(alexnet.data.transforms), so a store of the net's image size is read exactly as `alexnet eval` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from alexnet.data.augment import BatchTransforms
from alexnet.data.folder import ImageFolder, pixel_batches
from alexnet.data.store import ImageStore
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import error_rates, patch_count, view_outputs
from alexnet.model.net import AlexNet


def labelled_data(net: AlexNet, data, split: str = "val"):
    """A store's split, a class-folder tree whose folders are among the net's classes, or `data` as it is."""
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if (root / "meta.json").is_file() or (root.parent / (root.name + ".partial")).is_dir():
            data = ImageStore(root, split)
        else:
            return ImageFolder(root, net.image_size, classes=net.classes)
    classes = getattr(data, "classes", None)
    if net.classes is not None and classes is not None and list(classes) != list(net.classes):
        raise UserError(f"the data has other classes than the net ({len(classes)} vs {len(net.classes)}, or in "
                        f"another order)")
    return data


def evaluate(net: AlexNet, data, views: int = 10, split: str = "val", batch_size: int = 128) -> dict:
    """{"n", "top1_err", "top5_err", "patches", "per_class": [{"label", "wnid", "name", "n", "top1_accuracy",
    "top5_accuracy"}]} of `net` on `data` (`labelled_data`), `views` 1 or 10 (§4.1; the five unmirrored
    for a run trained without reflections), `batch_size` patches at a time. The net stays on its device;
    it runs in eval mode (put back after)."""
    if views not in (1, 10):
        raise UserError(f"views must be 1 or 10, got {views}")
    preprocess = net.transforms()  # refuses a net without a mean image
    dataset = labelled_data(net, data, split)
    if not len(dataset):
        raise UserError("no images to evaluate")
    device, was_training = net.fc8.weight.device, net.training
    transforms = BatchTransforms(net.input_mean, np.ones(3), np.eye(3), net.config.input_size, net.data_config, device)
    probs, labels = [], []
    net.eval()
    try:
        with torch.no_grad():
            for pixels, batch_labels in pixel_batches(dataset, preprocess.image_size, max(1, batch_size // views)):
                if None in batch_labels:
                    raise UserError("the data has no labels: give a store, a class-folder tree or a Dataset of "
                                    "(image, label)")
                y = view_outputs(net, pixels.to(device), transforms, views, "probabilities")
                probs.append(y.cpu().numpy())
                labels += batch_labels
    finally:
        net.train(was_training)
    classes = net.classes or [str(i) for i in range(net.config.num_classes)]
    result = error_rates(np.concatenate(probs), np.asarray(labels), len(classes))
    for row, wnid, name in zip(result["per_class"], classes, net.class_names or classes):
        row.update(wnid=wnid, name=name)
    return {"patches": patch_count(views, net.data_config), **result}
