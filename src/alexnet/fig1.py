"""§3.1, Fig. 1: ReLU vs tanh in "a particular four-layer convolutional network" on CIFAR-10.

"The learning rates for each network were chosen independently to make training as fast as possible.
No regularization of any kind was employed." Here: three 5x5 conv layers (32, 32, 64 kernels, each
followed by 3x3 stride-2 max-pooling, as in cuda-convnet's CIFAR-10 example nets) and one fully
connected layer into the 10-way softmax; the §5 update rule with momentum 0.9 and no weight decay,
batch 128, no augmentation, no dropout. Each nonlinearity gets the learning rate, from a grid, that
gives the lowest training error after a short trial; then both train until their training error
(averaged over each epoch's batches, as Fig. 1 plots it) reaches 25%.

CIFAR-10 is read by alexnet/data/cifar.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.analysis.figures import pyplot, save_figure
from alexnet.data.cifar import load_cifar10
from alexnet.errors import UserError
from alexnet.optim import PaperSGD
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


def train_curve(images: torch.Tensor, labels: torch.Tensor, nonlinearity: str, lr: float, epochs: int,
                target: float | None = None, batch_size: int = 128, seed: int = 0,
                device: torch.device | str = "cpu", budget_s: float | None = None) -> dict:
    """Train from scratch; the training error rate of each epoch (over its batches, the model as it
    was when it saw them) and the iterations at which it first reached `target`."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = FourLayerNet(nonlinearity).to(device)
    opt = PaperSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)  # no regularisation
    n = len(images) // batch_size * batch_size
    errors, iterations, reached = [], 0, None
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(images))[:n])
        wrong = 0
        for idx in order.split(batch_size):
            x, y = images[idx].to(device), labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                errors.append(float("nan"))
                return {"nonlinearity": nonlinearity, "lr": lr, "errors": errors, "iterations_to_target": None,
                        "diverged": True, "iterations_per_epoch": n // batch_size}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong += (logits.argmax(1) != y).sum().item()
            iterations += 1
        errors.append(wrong / n)
        if target is not None and reached is None and errors[-1] <= target:
            reached = iterations
            break
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return {"nonlinearity": nonlinearity, "lr": lr, "errors": errors, "iterations_to_target": reached,
            "diverged": False, "iterations_per_epoch": n // batch_size, "seconds": time.perf_counter() - start}


def prepare_inputs(images: np.ndarray) -> torch.Tensor:
    """Raw RGB minus the training set's mean image (§2's recipe), scaled by 1/64 to about unit size."""
    x = torch.from_numpy(images).float()
    return ((x - x.mean(0)) / 64.0).permute(0, 3, 1, 2).contiguous()


def relu_vs_tanh(cifar: str | os.PathLike, out: str | os.PathLike, lrs=(0.003, 0.01, 0.03, 0.1),
                 trial_epochs: int = 2, max_epochs: int = 60, target: float = 0.25, device: str = "auto",
                 seed: int = 0, log=print) -> dict:
    """Fig. 1: pick each nonlinearity's best learning rate, train both to `target` training error,
    write fig1.png and fig1.json into `out`, return the result (iterations and their ratio)."""
    dev = resolve_device(device)
    data = load_cifar10(cifar)
    images, labels = prepare_inputs(data["train"][0]), torch.from_numpy(data["train"][1])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"data": str(cifar), "images": len(images), "target": target, "lrs": list(lrs), "runs": {}}
    for nonlinearity in ("relu", "tanh"):
        trials = []
        for lr in lrs:
            t = train_curve(images, labels, nonlinearity, lr, trial_epochs, device=dev, seed=seed)
            trials.append(t)
            outcome = "diverged" if t["diverged"] else f"{t['errors'][-1]:.1%}"
            log(f"{nonlinearity} lr {lr:g}: training error after {trial_epochs} epochs {outcome}")
        best = min((t for t in trials if not t["diverged"]), key=lambda t: t["errors"][-1], default=None)
        if best is None:
            raise UserError(f"every learning rate diverged for {nonlinearity}: {lrs}")
        run = train_curve(images, labels, nonlinearity, best["lr"], max_epochs, target, device=dev, seed=seed)
        reached = run["iterations_to_target"]
        log(f"{nonlinearity}: lr {best['lr']:g}, {target:.0%} training error "
            + (f"after {reached} iterations ({len(run['errors'])} epochs)" if reached else
               f"not reached in {max_epochs} epochs (last {run['errors'][-1]:.1%})"))
        result["runs"][nonlinearity] = {**run, "trials": [{"lr": t["lr"], "error": t["errors"][-1],
                                                           "diverged": t["diverged"]} for t in trials]}
    r, t = result["runs"]["relu"]["iterations_to_target"], result["runs"]["tanh"]["iterations_to_target"]
    result["ratio"] = t / r if r and t else None
    save_fig1(result, out / "fig1.png")
    (out / "fig1.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def save_fig1(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, style in (("relu", "-"), ("tanh", "--")):
        run = result["runs"][name]
        epochs = np.arange(1, len(run["errors"]) + 1)
        ax.plot(epochs, run["errors"], style, color="black", label=f"{name} (lr {run['lr']:g})")
    ax.axhline(result["target"], color="tab:red", lw=0.8)
    ax.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 0.8),
           title=f"Fig. 1: four-layer CNN on {Path(result['data']).name}"
           + (f", tanh/ReLU = {result['ratio']:.2f}x" if result["ratio"] else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
