"""§3.1, Fig. 1: ReLU vs tanh in "a particular four-layer convolutional network" on CIFAR-10.

"The learning rates for each network were chosen independently to make training as fast as possible.
No regularization of any kind was employed." Here: three 5x5 conv layers (32, 32, 64 kernels, each
followed by 3x3 stride-2 max-pooling, as in cuda-convnet's CIFAR-10 example nets) and one fully
connected layer into the 10-way softmax; the §5 update rule with momentum 0.9 and no weight decay,
batch 128, no augmentation, no dropout. Each nonlinearity gets the learning rate, from a grid, that
gives the lowest training error after a short trial; then both train until their training error
(averaged over each epoch's batches, as Fig. 1 plots it) reaches 25%.

CIFAR-10 is read from the standard python-pickle batches (data_batch_1..5, test_batch,
batches.meta) at a path; nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.errors import UserError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def load_cifar10(path: str | os.PathLike) -> dict:
    """{"train": (uint8 (N, 32, 32, 3), int64 (N,)), "test": (...), "classes": names} from the batches."""
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserError(f"CIFAR-10 folder {path} does not exist")
    missing = [n for n in TRAIN_BATCHES if not (root / n).is_file()]
    if missing:
        raise UserError(f"{root} is not a CIFAR-10 python folder: {', '.join(missing)} missing "
                        f"(expected data_batch_1..5, test_batch, batches.meta)")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(root / name, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
            raise UserError(f"{root / name} is not a CIFAR-10 batch: {e}") from None
        if len(data) != len(labels):
            raise UserError(f"{root / name} has {len(data)} images but {len(labels)} labels")
        return data, labels

    parts = [read(n) for n in TRAIN_BATCHES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read("test_batch") if (root / "test_batch").is_file() else None
    classes = [str(i) for i in range(10)]
    if (root / "batches.meta").is_file():
        with open(root / "batches.meta", "rb") as f:
            meta = pickle.load(f, encoding="bytes")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", classes)]
    return {"train": train, "test": test, "classes": classes}


def write_cifar_batches(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray, classes: list[str],
                        test_images: np.ndarray, test_labels: np.ndarray) -> Path:
    """Write images (N, 32, 32, 3) uint8 in CIFAR-10's python format (five train batches)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": rows,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))]}, f)

    for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        dump(TRAIN_BATCHES[i], images[part], labels[part])
    dump("test_batch", test_images, test_labels)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in classes], b"num_vis": 3072}, f)
    return root


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
    from alexnet.optim import PaperSGD

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
    from alexnet.runtime import keep_freed_memory, resolve_device

    keep_freed_memory()
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
    import json

    (out / "fig1.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def save_fig1(result: dict, path: Path) -> Path:
    from alexnet.analysis.figures import _pyplot, _save

    plt = _pyplot()
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
    return _save(fig, path)
