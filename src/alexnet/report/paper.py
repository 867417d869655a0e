"""`alexnet figures`: the paper's figures for any checkpoint and store, as PNG files.

    kernels.png     Fig. 3, conv1's kernels, one block per tower
    top5.png        Fig. 4 left, validation images with their five most probable labels
    neighbours.png  Fig. 4 right, validation images and their nearest training images in fc7 space
    curves.png      the run's training curves (when the checkpoint sits in a run folder)

All or nothing: the PNGs are drawn into a staging folder beside OUT and moved into OUT only once every
one is drawn, so a failed run leaves no partial set. Fig. 4 right needs only the k nearest training
images of a few queries: without `train_features` the training split's fc7 vectors are computed batch
by batch and only each query's running k nearest kept (ImageNet's would be a 21 GB file).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alexnet.evaluate.features import load_features
from alexnet.report.curves import plot_curves, run_title
from alexnet.report.figures import save_kernel_mosaic, save_neighbours_figure, save_top5_figure
from alexnet.evaluate.neighbours import RunningNearest, nearest_neighbours
from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from alexnet.config import Config
from alexnet.data import ImageStore
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import check_fits, predict_probabilities, store_batches, store_outputs
from alexnet.files import check_output_path
from alexnet.runtime import resolve_device
from alexnet.train.metrics import read_history


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


def example_indices(labels: np.ndarray, predictions: np.ndarray, n: int = 8, seed: int = 0) -> np.ndarray:
    """Up to n images to show, half of them mistakes when there are enough (Fig. 4 shows some), the
    classes taking turns within each half."""
    wrong = np.flatnonzero(predictions != labels)
    right = np.flatnonzero(predictions == labels)
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    picked = []
    for pool, k in ((wrong, n_wrong), (right, n - n_wrong)):
        if k and len(pool):
            picked.extend(pool[spread_sample(labels[pool], k, seed)].tolist())
    return np.asarray(picked, dtype=np.int64)


def write_figures(checkpoint: str | os.PathLike, data: str | os.PathLike | None, out: str | os.PathLike,
                  device: str = "auto", views: int = 1, n_top5: int = 8, n_queries: int = 5, k: int = 6,
                  train_features: str | os.PathLike | None = None, seed: int = 0,
                  progress: bool = False) -> dict[str, Path]:
    """Draw the figures of a checkpoint on a store it fits into the folder `out`; {name: PNG path}."""
    payload = load_checkpoint(checkpoint)
    data = data or payload.get("data")
    if not data:
        raise UserError("give the store with --data")
    train, val = ImageStore(data, "train"), ImageStore(data, "val")
    check_fits(payload, train)
    check_fits(payload, val)
    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    if min(n_top5, n_queries, k) < 1:
        raise UserError("the figures need at least one image, one query and one neighbour")
    config = checkpoint_config(payload)
    database = _training_features(train_features, train, config) if train_features else None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        drawn = _draw(payload, config, data, train, val, staging, resolve_device(device), views, n_top5,
                      n_queries, k, database, seed, progress)
        out.mkdir(exist_ok=True)
        paths = {}
        for name, path in drawn.items():
            paths[name] = check_output_path(out / path.name)  # never over a device or a FIFO put there
            os.replace(path, paths[name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _training_features(path: str | os.PathLike, train: ImageStore, config: Config) -> np.ndarray:
    database, _ = load_features(path)
    if len(database) != len(train):
        raise UserError(f"{path} has {len(database)} rows, the store's train split {len(train)}")
    if database.shape[1] != config.model.fc_width:
        raise UserError(f"{path} holds {database.shape[1]}-d features, this net's fc7 has {config.model.fc_width}")
    return database


TOP5_POOL = 400  # validation images the top-5 examples are chosen from (mistakes among them): seconds on a CPU


def _draw(payload: dict, config: Config, data, train: ImageStore, val: ImageStore, folder: Path,
          device: torch.device, views: int, n_top5: int, n_queries: int, k: int, database: np.ndarray | None,
          seed: int, progress: bool) -> dict[str, Path]:
    model = model_from_checkpoint(payload)
    paths = {}
    run = Path(payload["path"]).parent
    history = (read_history(run) or ([], 0))[0]  # a damaged metrics file costs the curves, not the figures
    total = 4 if history else 3

    def say(step: int, what: str) -> None:  # each figure takes seconds to draw: say which is under way
        if progress:
            tqdm.write(f"figure {step}/{total}: {what}", file=sys.stderr)

    say(1, "kernels.png (Fig. 3, conv1's kernels)")
    towers = config.model.towers
    kernel = model.conv1.kernel_size
    paths["kernels"] = save_kernel_mosaic(model.conv1.weight.detach().cpu(), folder / "kernels.png", towers,
                                          title=f"conv1: {model.conv1.out_channels} kernels {kernel[0]}x{kernel[1]}x3"
                                          " (§6.1, Fig. 3), one colour scale for all")

    pool = np.sort(spread_sample(val.labels, max(TOP5_POOL, n_top5), seed))
    say(2, f"top5.png (Fig. 4 left), chosen among {len(pool)} validation images")
    probs = predict_probabilities(model, val, device, views, indices=pool, data_config=config.data,
                                  progress=progress)
    chosen = example_indices(val.labels[pool], probs.argmax(1), n_top5, seed)
    shown = pool[chosen]
    paths["top5"] = save_top5_figure(val.get_batch(shown), probs[chosen], val.labels[shown], val.class_names,
                                     folder / "top5.png")

    queries = spread_sample(val.labels, n_queries, seed + 1)
    say(3, f"neighbours.png (Fig. 4 right), searching the {len(train)} training images")
    query_features = store_outputs(model, val, device, output="features", indices=queries, data_config=config.data)
    nearest = _nearest_training_images(model, train, query_features, k, device, config, database, progress)
    names = train.class_names
    paths["neighbours"] = save_neighbours_figure(
        val.get_batch(queries), [train.get_batch(row) for row in nearest], folder / "neighbours.png",
        query_titles=[names[val.labels[q]] for q in queries],
        neighbour_titles=[[names[train.labels[j]] for j in row] for row in nearest])

    if history:
        say(4, "curves.png (the training curves)")
        paths["curves"] = plot_curves(history, folder / "curves.png",
                                      title=run_title(config.variant, data, history, run))
    return paths


def _nearest_training_images(model: torch.nn.Module, train: ImageStore, query_features: np.ndarray, k: int,
                             device: torch.device, config: Config, database: np.ndarray | None,
                             progress: bool) -> np.ndarray:
    """(queries, k) training-split indices nearest in fc7 space, from a feature file or streamed."""
    if database is not None:
        return nearest_neighbours(query_features, database, k, device)[1]
    nearest = RunningNearest(query_features, min(k, len(train)), device)
    for features, _, indices in store_batches(model, train, device, output="features", batch_size=256,
                                              data_config=config.data, progress=progress, desc="train features"):
        nearest.add(features, int(indices[0]))
    return nearest.result()[1]
