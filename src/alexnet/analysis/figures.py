"""Figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves of a run (its metrics.jsonl rows): loss, error rates and learning rate by epoch."""
    plt = _pyplot()
    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        ax_loss.plot(epochs, [h.get("val_loss") for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.plot(epochs, [h["train_top1_err"] for h in history], label="train top-1")
    if any("val_top1_err" in h for h in history):
        ax_err.plot(epochs, [h.get("val_top1_err") for h in history], label="validation top-1")
        ax_err.plot(epochs, [h.get("val_top5_err") for h in history], label="validation top-5")
    ax_err.set(xlabel="epoch", ylabel="error rate", title="error", ylim=(0, 1))
    ax_lr.semilogy(epochs, [h["lr"] for h in history])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (§5)")
    for ax in (ax_loss, ax_err):
        ax.legend()
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
