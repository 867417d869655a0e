"""§3.1, Fig. 1: ReLU vs tanh in "a particular four-layer convolutional network" on CIFAR-10.

"The learning rates for each network were chosen independently to make training as fast as possible.
No regularization of any kind was employed." Here: three 5x5 conv layers (32, 32, 64 kernels, each
followed by 3x3 stride-2 max-pooling, as in cuda-convnet's CIFAR-10 example nets) and one fully
connected layer into the 10-way softmax; the §5 update rule with momentum 0.9 and no weight decay,
batch 128, no augmentation, no dropout. Each nonlinearity gets the learning rate, from a grid, that
gives the lowest training error after a short trial; then both train, with several seeds, until
their training error reaches 25%.

The training error is the one Fig. 1 plots: that of the batches as the net trains on them (the
model as it was when it saw each batch). It is recorded for every step and averaged over a window of
a few steps (a quarter epoch), so the 25% crossing is found between points a few steps apart and
interpolated linearly between them, not rounded to whole epochs: on a small set an epoch is a dozen
steps, and whole epochs would make the ratio a ratio of small integers.

CIFAR-10 is read by alexnet/data/cifar.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.data.cifar import load_cifar10
from alexnet.errors import UserError
from alexnet.files import write_json_atomic
from alexnet.experiments.fig1_plot import save_fig1
from alexnet.train.optim import PaperSGD
from alexnet.runtime import resolve_device


class FourLayerNet(nn.Module):
    """conv 32 5x5 - pool - conv 32 5x5 - pool - conv 64 5x5 - pool - fc 10, with one nonlinearity."""

    def __init__(self, nonlinearity: str = "relu", classes: int = 10):
        super().__init__()
        self.act = {"relu": F.relu, "tanh": torch.tanh}[nonlinearity]
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)  # (B, 32, 32, 32)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)  # (B, 32, 15, 15)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)  # (B, 64, 7, 7)
        self.fc = nn.Linear(64 * 3 * 3, classes)  # from (B, 64, 3, 3)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.pool(self.act(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def window_curve(batch_errors: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """The running training error: the mean of each `window` consecutive batches' error rates (batches
    of equal size), placed at the mean of their positions in steps. Batch i (from 0) was seen by the
    net after i updates, so it sits at x = i; a window of batches i-w+1..i sits at i - (w-1)/2."""
    e = np.asarray(batch_errors, dtype=np.float64)
    if len(e) < window:
        return np.zeros(0), np.zeros(0)
    means = np.convolve(e, np.ones(window) / window, mode="valid")
    return np.arange(len(means)) + (window - 1) / 2, means


def crossing(x: Sequence[float], y: Sequence[float], target: float) -> float | None:
    """The first x at which the piecewise-linear curve through (x, y) comes down to `target`: between
    the last point above it and the first at or below it, x0 + (y0 - target) (x1 - x0) / (y0 - y1).
    None if no point is at or below it."""
    for i, value in enumerate(y):
        if value <= target:
            if i == 0:
                return float(x[0])
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            return float(x0 + (y0 - target) * (x1 - x0) / (y0 - y1))
    return None


def default_window(steps_per_epoch: int) -> int:
    """A quarter epoch, at least 3 steps: fine enough to place the crossing within an epoch, wide
    enough that the noise of one batch (sqrt(0.25 * 0.75 / 128) = 3.8 points at 25%) is averaged down."""
    return max(3, steps_per_epoch // 4)


def train_curve(images: torch.Tensor, labels: torch.Tensor, nonlinearity: str, lr: float, epochs: int,
                target: float | None = None, batch_size: int = 128, seed: int = 0,
                device: torch.device | str = "cpu", window: int | None = None, progress: bool = False,
                desc: str = "") -> dict:
    """Train from scratch for up to `epochs`, stopping once the running training error (`window_curve`)
    reaches `target`. Returns each step's batch error, the per-epoch error (over its batches), and the
    steps and epochs to `target`, interpolated between the window points either side of it."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = FourLayerNet(nonlinearity, classes=int(labels.max()) + 1 if len(labels) else 10).to(device)
    opt = PaperSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)  # no regularisation
    per_epoch = len(images) // batch_size
    if per_epoch < 1:
        raise UserError(f"{len(images)} training images make no batch of {batch_size}")
    window = window or default_window(per_epoch)
    batch_errors: list[float] = []
    run = {"nonlinearity": nonlinearity, "lr": lr, "seed": seed, "window": window, "iterations_per_epoch": per_epoch,
           "batch_size": batch_size, "diverged": False, "steps_to_target": None, "epochs_to_target": None}
    start = time.perf_counter()
    with tqdm(total=epochs * per_epoch, desc=desc or f"{nonlinearity} lr {lr:g}", unit="step", disable=not progress,
              leave=False) as bar:
        for epoch in range(epochs):
            order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(images))[:per_epoch * batch_size])
            for idx in order.split(batch_size):
                logits = model(images[idx].to(device))
                loss = F.cross_entropy(logits, labels[idx].to(device))
                if not torch.isfinite(loss):
                    run["diverged"] = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                batch_errors.append((logits.argmax(1).cpu() != labels[idx]).float().mean().item())
                bar.update()
            if run["diverged"]:
                break
            x, y = window_curve(batch_errors, window)
            bar.set_postfix(err=f"{y[-1]:.1%}" if len(y) else "-")
            if target is not None and crossing(x, y, target) is not None:
                run["steps_to_target"] = crossing(x, y, target)
                run["epochs_to_target"] = run["steps_to_target"] / per_epoch
                break
    e = np.asarray(batch_errors)
    x, y = window_curve(batch_errors, window)
    run["curve_epochs"], run["curve_errors"] = (x / per_epoch).tolist(), y.tolist()  # what Fig. 1 plots
    run["batch_errors"] = batch_errors
    run["errors"] = [float(e[i:i + per_epoch].mean()) for i in range(0, len(e) - per_epoch + 1, per_epoch)]
    run["seconds"] = time.perf_counter() - start
    return run


def prepare_inputs(images: np.ndarray) -> torch.Tensor:
    """Raw RGB minus the training set's mean image (§2's recipe), scaled by 1/64 to about unit size."""
    x = torch.from_numpy(images).float()
    return ((x - x.mean(0)) / 64.0).permute(0, 3, 1, 2).contiguous()


def pick_lr(images: torch.Tensor, labels: torch.Tensor, nonlinearity: str, lrs: Sequence[float], trial_epochs: int,
            device, progress: bool, log) -> tuple[float, list[dict]]:
    """§3.1 "chosen independently to make training as fast as possible": the lr of the grid whose
    training error over the batches of the last of `trial_epochs` epochs is lowest (seed 0)."""
    trials = []
    for lr in lrs:
        t = train_curve(images, labels, nonlinearity, lr, trial_epochs, device=device, progress=progress,
                        desc=f"{nonlinearity} lr {lr:g} trial")
        trials.append({"lr": lr, "diverged": t["diverged"], "error": None if t["diverged"] else t["errors"][-1]})
        log(f"{nonlinearity} lr {lr:g}: training error in epoch {trial_epochs} "
            + ("diverged" if t["diverged"] else f"{t['errors'][-1]:.1%}"))
    fine = [t for t in trials if not t["diverged"]]
    if not fine:
        raise UserError(f"every learning rate diverged for {nonlinearity}: {list(lrs)}")
    best = min(fine, key=lambda t: t["error"])["lr"]
    if best in (min(lrs), max(lrs)) and len(lrs) > 1:
        log(f"{nonlinearity}: the best lr {best:g} is at the edge of the grid; a wider --lrs may train faster")
    return best, trials


def ratio_summary(ratios: list[float | None]) -> dict:
    """tanh/ReLU epochs to the target over seeds: mean, sample std, range, and how many seeds had both
    nets reach it."""
    done = [r for r in ratios if r is not None]
    out = {"per_seed": ratios, "n": len(done), "mean": None, "std": None, "min": None, "max": None}
    if done:
        out.update(mean=float(np.mean(done)), min=float(min(done)), max=float(max(done)),
                   std=float(np.std(done, ddof=1)) if len(done) > 1 else None)
    return out


def relu_vs_tanh(cifar: str | os.PathLike, out: str | os.PathLike, lrs=(0.003, 0.01, 0.03, 0.1),
                 trial_epochs: int = 2, max_epochs: int = 60, target: float = 0.25, device: str = "auto",
                 seed: int = 0, seeds: int = 3, progress: bool = False, log=print) -> dict:
    """Fig. 1: pick each nonlinearity's best learning rate, train both to `target` training error with
    `seeds` seeds (seed, seed+1, ...), write fig1.png and fig1.json into `out`, return the result: per
    seed the curves and the epochs to `target`, and the tanh/ReLU ratio's mean, spread and range."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    dev = resolve_device(device)
    data = load_cifar10(cifar)
    images, labels = prepare_inputs(data["train"][0]), torch.from_numpy(data["train"][1])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"data": str(cifar), "images": len(images), "target": target, "lrs": list(lrs), "lr": {}, "trials": {},
              "runs": {"relu": [], "tanh": []}}
    for nonlinearity in ("relu", "tanh"):
        result["lr"][nonlinearity], result["trials"][nonlinearity] = pick_lr(
            images, labels, nonlinearity, lrs, trial_epochs, dev, progress, log)
    for s in range(seed, seed + seeds):
        for nonlinearity in ("relu", "tanh"):
            run = train_curve(images, labels, nonlinearity, result["lr"][nonlinearity], max_epochs, target, device=dev,
                              seed=s, progress=progress, desc=f"{nonlinearity} seed {s}")
            result["runs"][nonlinearity].append(run)
            reached = run["epochs_to_target"]
            log(f"{nonlinearity} seed {s}: lr {run['lr']:g}, {target:.0%} training error "
                + (f"after {reached:.2f} epochs ({run['steps_to_target']:.1f} steps)" if reached is not None else
                   f"not reached in {max_epochs} epochs"))
    ratios = [t["epochs_to_target"] / r["epochs_to_target"]
              if r["epochs_to_target"] and t["epochs_to_target"] is not None else None
              for r, t in zip(result["runs"]["relu"], result["runs"]["tanh"])]
    result["ratio"] = ratio_summary(ratios)
    save_fig1(result, out / "fig1.png")
    write_json_atomic(out / "fig1.json", result)
    return result
