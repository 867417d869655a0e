"""`alexnet figures`: the paper's figures for any checkpoint and store, as PNG files.

    kernels.png     Fig. 3, conv1's kernels, one block per tower
    top5.png        Fig. 4 left, validation images with their five most probable labels
    neighbours.png  Fig. 4 right, validation images and their nearest training images in fc7 space
    curves.png      the run's training curves (when the checkpoint sits in a run folder)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def spread_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n indices drawn so that the classes take turns (one per class before any class gets two)."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in rng.permutation(int(labels.max()) + 1)]
    picked = []
    while len(picked) < min(n, len(labels)):
        for members in by_class:
            if members and len(picked) < n:
                picked.append(members.pop())
    return np.asarray(picked)


def write_figures(checkpoint: str | os.PathLike, data: str | os.PathLike | None, out: str | os.PathLike,
                  device: str = "auto", views: int = 1, n_top5: int = 8, n_queries: int = 5, k: int = 6,
                  train_features: str | os.PathLike | None = None, seed: int = 0, progress: bool = False) -> dict:
    from alexnet.analysis.features import extract_features, load_features
    from alexnet.analysis.figures import (plot_curves, save_kernel_mosaic, save_neighbours_figure,
                                          save_top5_figure)
    from alexnet.analysis.neighbours import nearest_neighbours
    from alexnet.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from alexnet.data import ImageStore
    from alexnet.errors import UserError
    from alexnet.evaluate import predict_probabilities
    from alexnet.runtime import resolve_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = load_checkpoint(checkpoint)
    config = checkpoint_config(payload)
    model = model_from_checkpoint(payload)
    dev = resolve_device(device)
    data = data or payload.get("data")
    if not data:
        raise UserError("give the store with --data")
    train, val = ImageStore(data, "train"), ImageStore(data, "val")
    if payload["classes"] != train.classes:
        raise UserError(f"{payload['path']} was trained on other classes than the store {data} has")
    paths = {}

    paths["kernels"] = save_kernel_mosaic(model.conv1.weight.detach(), out / "kernels.png", config.model.towers,
                                          title=f"conv1: {model.conv1.out_channels} kernels "
                                          f"{model.conv1.kernel_size[0]}x{model.conv1.kernel_size[1]}x3"
                                          + (", one block per tower (§6.1, Fig. 3)" if config.model.towers == 2 else ""))

    shown = spread_sample(val.labels, n_top5, seed)
    probs = predict_probabilities(model, val, dev, views, indices=shown, data_config=config.data)
    paths["top5"] = save_top5_figure(val.get_batch(shown), probs, val.labels[shown], val.class_names,
                                     out / "top5.png")

    if train_features:
        database, meta = load_features(train_features)
        if len(database) != len(train):
            raise UserError(f"{train_features} has {len(database)} rows, the store's train split {len(train)}")
    else:
        database, _ = load_features(extract_features(model, train, out / "train_features.npy", dev,
                                                     data_config=config.data, progress=progress,
                                                     meta={"checkpoint": payload["path"]}))
    queries = spread_sample(val.labels, n_queries, seed + 1)
    query_store_features = _features_of(model, val, queries, dev, config.data)
    _, nearest = nearest_neighbours(query_store_features, database, k, dev)
    names = train.class_names
    paths["neighbours"] = save_neighbours_figure(
        val.get_batch(queries), [train.get_batch(row) for row in nearest], out / "neighbours.png",
        query_titles=[names[val.labels[q]][:14] for q in queries],
        neighbour_titles=[[names[train.labels[j]][:14] for j in row] for row in nearest])

    metrics = Path(payload["path"]).parent / "metrics.jsonl"
    if metrics.is_file():
        history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if history:
            paths["curves"] = plot_curves(history, out / "curves.png", title=f"{config.variant} on {Path(data).name}")
    return paths


@torch.no_grad()
def _features_of(model, store, indices, device, data_config) -> np.ndarray:
    from alexnet.data.augment import BatchTransforms

    transforms = BatchTransforms.for_store(store, model.config.input_size, data_config, device)
    images = torch.from_numpy(store.get_batch(indices)).to(device)
    return model.to(device).eval().embed(transforms.test(images, 1).contiguous()).float().cpu().numpy()
