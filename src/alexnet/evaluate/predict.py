"""`alexnet predict` and `alexnet.predict`: the five most probable labels of any images (§6.1, Fig. 4 left).

Each image gets the store's treatment (§2: shorter side to the store's size, centre square), then the
centre patch or the ten patches of §4.1, minus the training mean image the net carries
(alexnet.data.transforms: what `net.transforms()` gives, to the bit).
Inputs are files, folders (every image file under them, in name order) or glob patterns; files are
decoded, run and reported one batch at a time, so memory stays that of one batch however many."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.model.net import AlexNet
from alexnet.data.augment import BatchTransforms
from alexnet.data.image import IMAGE_SUFFIXES, BadImage
from alexnet.data.transforms import store_pixels
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import check_fits, inference_autocast, view_outputs
from alexnet.runtime import resolve_device


def image_paths(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | None]]:
    """(path, None) for each file to predict, in order, or (input, why) for an input that names no file."""
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                yield item, "the folder holds no image files"
            yield from ((p, None) for p in found)
        elif path.exists() or not glob.has_magic(item):
            yield item, None  # a missing file is reported by the reader, in the same words as a bad one
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                yield item, "no file matches this pattern"
            yield from ((p, None) for p in matches)


def _check(views: int, top: int, batch_size: int) -> None:
    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if batch_size < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")


def iter_predictions(checkpoint: str | os.PathLike, inputs: Iterable[str | os.PathLike], views: int = 1,
                     device: str = "auto", top: int = 5, batch_size: int = 64,
                     precision: str | None = None) -> Iterator[dict]:
    """One result per file, in input order, a batch at a time: {"file", "top": [{"label", "wnid",
    "name", "probability"}...]}, or {"file", "error"} for a file that cannot be read as an image; the
    net run in `precision` (`inference_autocast`).
    The checkpoint is loaded and the arguments checked before this returns."""
    _check(views, top, batch_size)
    payload = load_checkpoint(checkpoint)
    check_fits(payload)
    model = model_from_checkpoint(payload).to(resolve_device(device), memory_format=torch.channels_last)
    return stream_predictions(model, inputs, views, top, batch_size, precision)


def predict(net: AlexNet, images, top: int = 5, views: int = 1, batch_size: int = 64,
            precision: str | None = None) -> list[dict]:
    """`alexnet.predict`: the `top` most probable classes of each image for a net that carries its
    preprocessing (`alexnet.load`), as `alexnet predict` prints them. `images`: a path, folder or glob
    pattern, a PIL image, an H x W x 3 uint8 array, or a list of them; one result per image, in order:
    {"file" (paths) or "image" (its place in the list), "top": [{"label", "wnid", "name", "probability"}]},
    or {..., "error"} for a file that is not an image. The net stays on its device, in its mode."""
    _check(views, top, batch_size)
    if isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor, Image.Image)):
        images = [images]
    was_training = net.training
    try:
        return list(stream_predictions(net.eval(), images, views, top, batch_size, precision))
    finally:
        net.train(was_training)


def stream_predictions(model: AlexNet, inputs: Iterable, views: int, top: int, batch_size: int,
                       precision: str | None = None) -> Iterator[dict]:
    """The results of `predict`, a batch at a time: the net's own mean image, image size, test-view
    settings and classes (a net without class names reports label numbers)."""
    if model.input_mean is None:
        raise UserError("this net has no mean image (a fresh net): predict with a trained one (alexnet.load), or "
                        "give it one with net.set_preprocessing(mean)")
    dev = model.fc8.weight.device
    transforms = BatchTransforms(model.input_mean.cpu(), np.ones(3), np.eye(3), model.config.input_size,
                                 model.data_config, dev)
    classes = model.classes or [str(i) for i in range(model.config.num_classes)]
    run = _BatchRunner(model, transforms, views, top, classes, model.class_names or classes, dev, precision)
    return _stream(run, inputs, model.image_size, batch_size)


def expand_inputs(inputs: Iterable) -> Iterator[tuple[dict, object, str | None]]:
    """(result, what to read, why not) for each image: paths, folders and globs expanded (`image_paths`),
    in-memory images (PIL, arrays) as they are."""
    for i, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            yield from (({"file": path}, path, why) for path, why in image_paths([item]))
        else:
            yield {"image": i}, item, None


def _stream(run: "_BatchRunner", inputs: Iterable, size: int, batch_size: int) -> Iterator[dict]:
    pending: list[tuple[dict, np.ndarray | None]] = []
    for result, image, why in expand_inputs(inputs):
        if why is None:
            try:
                pending.append((result, store_pixels(image, size)))
            except BadImage as e:
                pending.append(({**result, "error": str(e)}, None))
        else:
            pending.append(({**result, "error": why}, None))
        if len(pending) >= batch_size:
            yield from run(pending)
            pending = []
    yield from run(pending)


def predict_files(checkpoint: str | os.PathLike, paths: Iterable[str | os.PathLike], views: int = 1,
                  device: str = "auto", top: int = 5, batch_size: int = 64) -> list[dict]:
    """`iter_predictions` as a list."""
    return list(iter_predictions(checkpoint, paths, views, device, top, batch_size))


class _BatchRunner:
    """Runs the decoded images of a batch of results through the net and fills in their top labels."""

    def __init__(self, model, transforms, views, top, classes, names, device, precision=None):
        self.model, self.transforms, self.views, self.top = model.eval(), transforms, views, top
        self.classes, self.names, self.device = classes, names, device
        self.autocast = inference_autocast(device, precision)

    def __call__(self, pending: list[tuple[dict, np.ndarray | None]]) -> list[dict]:
        good = [(result, pixels) for result, pixels in pending if pixels is not None]
        if good:
            images = torch.from_numpy(np.stack([pixels for _, pixels in good])).to(self.device)
            with torch.no_grad():
                probs = view_outputs(self.model, images, self.transforms, self.views, "probabilities",
                                     self.autocast, channels_last=True).cpu()
            broken = (~torch.isfinite(probs).all(1)).nonzero()
            if len(broken):  # finite weights whose sums overflow float32: every label would be arbitrary
                raise UserError(f"the net's outputs for {good[int(broken[0])][0]['file']} are not finite (NaN or "
                                f"infinite): its weights overflow float32; no labels printed")
            values, indices = probs.topk(min(self.top, probs.shape[1]), 1)
            for (result, _), v, i in zip(good, values, indices):
                result["top"] = [{"label": int(c), "wnid": self.classes[c], "name": self.names[c],
                                  "probability": float(p)} for p, c in zip(v.tolist(), i.tolist())]
        return [result for result, _ in pending]
