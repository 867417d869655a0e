"""§6 evaluation: top-1 and top-5 error of one checkpoint or an average of several (the paper's
ensembles), on the centre patch or the average of the ten patches' softmax outputs (§4.1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from alexnet.errors import UserError


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """How many rows have their label among the k highest scores, for each k (k capped at the class
    count, so top-5 of a 3-class problem is top-3)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]
    return [hits[:, : min(k, scores.shape[1])].any(1).sum() for k in ks]


@torch.no_grad()
def predict_probabilities(model, store, device: torch.device, views: int = 1, batch_size: int = 128,
                          amp: bool | None = None, progress: bool = False, indices=None,
                          data_config=None) -> np.ndarray:
    """(N, classes) softmax outputs of `model` on a store split, averaged over the views."""
    from alexnet.config import DataConfig

    from alexnet.data.augment import BatchTransforms
    from alexnet.data.loader import BatchLoader

    if indices is None:
        indices = np.arange(len(store))
    crop = model.config.input_size
    if crop > store.image_size:
        raise UserError(f"the net's input ({crop}) is larger than the store's images ({store.image_size})")
    transforms = BatchTransforms.for_store(store, crop, data_config or DataConfig(), device=device)
    amp = device.type == "cuda" if amp is None else amp
    per_batch = max(1, batch_size // views)
    plan = [indices[i : i + per_batch] for i in range(0, len(indices), per_batch)]
    out = np.empty((len(indices), model.config.num_classes), np.float32)
    model = model.to(device).eval()
    from tqdm import tqdm

    row = 0
    for images, labels, _ in tqdm(BatchLoader(store, plan, device, workers=2), total=len(plan), unit="batch",
                                  disable=not progress, leave=False):
        x = transforms.test(images, views)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        probs = logits.float().softmax(1).reshape(len(labels), views, -1).mean(1)
        out[row : row + len(labels)] = probs.cpu().numpy()
        row += len(labels)
    return out


def error_rates(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1/top-5 error and per-class accuracy of averaged probabilities."""
    p, y = torch.from_numpy(probs), torch.from_numpy(np.asarray(labels, np.int64))
    c1, c5 = (int(c) for c in topk_correct(p, y, (1, 5)))
    top5 = p.topk(min(5, p.shape[1]), 1).indices
    hit1 = (top5[:, 0] == y).numpy()
    hit5 = (top5 == y[:, None]).any(1).numpy()
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        per_class.append({"label": c, "n": n,
                          "top1_accuracy": float(hit1[mask].mean()) if n else None,
                          "top5_accuracy": float(hit5[mask].mean()) if n else None})
    n = len(labels)
    return {"n": n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "per_class": per_class}


def evaluate(checkpoints: list[str | os.PathLike], data: str | os.PathLike | None = None, split: str = "val",
             views: int = 1, batch_size: int = 128, device: str = "auto", progress: bool = True) -> dict:
    """Error rates of one checkpoint, or of the average of several checkpoints' softmax outputs."""
    from alexnet.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from alexnet.data import ImageStore
    from alexnet.runtime import keep_freed_memory, resolve_device

    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    if not checkpoints:
        raise UserError("give at least one checkpoint")
    keep_freed_memory()
    dev = resolve_device(device)
    payloads = [load_checkpoint(c) for c in checkpoints]
    data = data or payloads[0].get("data")
    if not data:
        raise UserError("give the store with --data")
    store = ImageStore(data, split)
    for p in payloads:
        if p["classes"] != store.classes:
            raise UserError(f"{p['path']} was trained on other classes than the store {data} has "
                            f"({len(p['classes'])} vs {len(store.classes)})")
    total = None
    singles = []
    for p in payloads:
        probs = predict_probabilities(model_from_checkpoint(p), store, dev, views, batch_size, progress=progress,
                                      data_config=checkpoint_config(p).data)
        singles.append({"checkpoint": p["path"], **{k: v for k, v in error_rates(probs, store.labels, len(store.classes)).items()
                                                   if k != "per_class"}})
        total = probs if total is None else total + probs
    result = error_rates(total / len(payloads), store.labels, len(store.classes))
    for row, wnid, name in zip(result["per_class"], store.classes, store.class_names):
        row.update(wnid=wnid, name=name)
    return {"data": str(Path(data)), "split": split, "crops": views, "checkpoints": [p["path"] for p in payloads],
            "models": singles, **result}
