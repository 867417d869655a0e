"""`alexnet predict`: the five most probable labels of any image files (§6.1, Fig. 4 left).

Each file gets the store's treatment (§2: shorter side to the store's size, centre square), then the
centre patch or the ten patches of §4.1, minus the training mean image the checkpoint carries."""

from __future__ import annotations

import os

import numpy as np
import torch

from alexnet.errors import UserError


def predict_files(checkpoint: str | os.PathLike, paths: list[str], views: int = 1, device: str = "auto",
                  top: int = 5, batch_size: int = 64) -> list[dict]:
    """One result per file: {"file", "top": [{"label", "wnid", "name", "probability"}...]} or
    {"file", "error"} for a file that cannot be read as an image."""
    from alexnet.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from alexnet.data.augment import BatchTransforms
    from alexnet.data.image import BadImage, load_image
    from alexnet.runtime import resolve_device

    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    payload = load_checkpoint(checkpoint)
    config = checkpoint_config(payload)
    model = model_from_checkpoint(payload)
    dev = resolve_device(device)
    size = payload["image_size"]
    transforms = BatchTransforms(payload["mean"].numpy(), np.ones(3), np.eye(3), config.model.input_size,
                                 config.data, dev)
    classes, names = payload["classes"], payload["class_names"]
    results: list[dict] = []
    good: list[tuple[int, np.ndarray]] = []
    for path in paths:
        try:
            pixels, _ = load_image(path, size)
            good.append((len(results), pixels))
            results.append({"file": str(path)})
        except BadImage as e:
            results.append({"file": str(path), "error": str(e)})
    model = model.to(dev)
    with torch.no_grad():
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            images = torch.from_numpy(np.stack([p for _, p in chunk])).to(dev)
            probs = model(transforms.test(images, views).contiguous()).float().softmax(1)
            probs = probs.reshape(len(chunk), views, -1).mean(1).cpu()
            values, indices = probs.topk(min(top, probs.shape[1]), 1)
            for (slot, _), v, i in zip(chunk, values, indices):
                results[slot]["top"] = [{"label": int(c), "wnid": classes[c], "name": names[c], "probability": float(p)}
                                        for p, c in zip(v.tolist(), i.tolist())]
    return results
