"""`alexnet predict`: the five most probable labels of any image files (§6.1, Fig. 4 left).

Each file gets the store's treatment (§2: shorter side to the store's size, centre square), then the
centre patch or the ten patches of §4.1, minus the training mean image the checkpoint carries.
Inputs are files, folders (every image file under them, in name order) or glob patterns; files are
decoded, run and reported one batch at a time, so memory stays that of one batch however many."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from alexnet.data.augment import BatchTransforms
from alexnet.data.image import BadImage, load_image
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import autocast_for, check_fits, view_outputs
from alexnet.runtime import resolve_device

# what a folder is searched for (a file named on the command line is tried whatever its name)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


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


def iter_predictions(checkpoint: str | os.PathLike, inputs: Iterable[str | os.PathLike], views: int = 1,
                     device: str = "auto", top: int = 5, batch_size: int = 64) -> Iterator[dict]:
    """One result per file, in input order, a batch at a time: {"file", "top": [{"label", "wnid",
    "name", "probability"}...]}, or {"file", "error"} for a file that cannot be read as an image.
    The checkpoint is loaded and the arguments checked before this returns."""
    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if batch_size < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")
    payload = load_checkpoint(checkpoint)
    check_fits(payload)
    config = checkpoint_config(payload)
    dev = resolve_device(device)
    model = model_from_checkpoint(payload).to(dev, memory_format=torch.channels_last)
    transforms = BatchTransforms(payload["mean"].numpy(), np.ones(3), np.eye(3), config.model.input_size,
                                 config.data, dev)
    run = _BatchRunner(model, transforms, views, top, payload["classes"], payload["class_names"], dev)
    return _stream(run, inputs, payload["image_size"], batch_size)


def _stream(run: "_BatchRunner", inputs: Iterable[str | os.PathLike], size: int, batch_size: int) -> Iterator[dict]:
    pending: list[tuple[dict, np.ndarray | None]] = []
    for path, why in image_paths(inputs):
        if why is None:
            try:
                pixels, _ = load_image(path, size)
                pending.append(({"file": path}, pixels))
            except BadImage as e:
                pending.append(({"file": path, "error": str(e)}, None))
        else:
            pending.append(({"file": path, "error": why}, None))
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

    def __init__(self, model, transforms, views, top, classes, names, device):
        self.model, self.transforms, self.views, self.top = model.eval(), transforms, views, top
        self.classes, self.names, self.device = classes, names, device

    def __call__(self, pending: list[tuple[dict, np.ndarray | None]]) -> list[dict]:
        good = [(result, pixels) for result, pixels in pending if pixels is not None]
        if good:
            images = torch.from_numpy(np.stack([pixels for _, pixels in good])).to(self.device)
            with torch.no_grad():
                probs = view_outputs(self.model, images, self.transforms, self.views, "probabilities",
                                     autocast_for(self.device, self.device.type == "cuda"), channels_last=True).cpu()
            broken = (~torch.isfinite(probs).all(1)).nonzero()
            if len(broken):  # finite weights whose sums overflow float32: every label would be arbitrary
                raise UserError(f"the net's outputs for {good[int(broken[0])][0]['file']} are not finite (NaN or "
                                f"infinite): its weights overflow float32; no labels printed")
            values, indices = probs.topk(min(self.top, probs.shape[1]), 1)
            for (result, _), v, i in zip(good, values, indices):
                result["top"] = [{"label": int(c), "wnid": self.classes[c], "name": self.names[c],
                                  "probability": float(p)} for p, c in zip(v.tolist(), i.tolist())]
        return [result for result, _ in pending]
