"""The run report's own figures, as PNG bytes: training curves (alexnet.report.curves) and the
confusion matrix.

Text from data (class names) is drawn as text (`PLAIN`: no mathtext, which reads a pair of `$` as
a formula).
"""

from __future__ import annotations

import math

import numpy as np

from alexnet.report.canvas import PLAIN, drawable, new_figure, png_bytes
from alexnet.report.curves import curves_figure

__all__ = ["confusion_matrix", "confusion_png", "curves_png"]


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def curves_png(history: list[dict], title: str) -> bytes:
    """The run's training curves (`alexnet.report.figures.curves_figure`) as PNG bytes."""
    return png_bytes(curves_figure(history, title))


def confusion_png(counts: np.ndarray, names: list[str], labels: list[int], title: str) -> bytes:
    """The confusion matrix, each row as shares of that class's images, on a square-root colour scale
    (a 2% confusion stays visible next to an 80% diagonal). The axes name the classes up to 40 of
    them and give their label numbers (`labels`, as in the per-class table) beyond."""
    from matplotlib.colors import PowerNorm

    c = len(counts)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labelled = c <= 40
    side = min(11.0, max(5.0, 0.22 * c + (3.0 if labelled else 1.5)))
    fig, ax = new_figure(figsize=(side + 1.2, side), nrows=1, ncols=1)
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    if labelled:
        shown = [n if len(n) <= 28 else n[:27] + "…" for n in map(drawable, names)]  # no room for wrapping
        ax.set_xticks(range(c), shown, rotation=90, fontsize=8, **PLAIN)
        ax.set_yticks(range(c), shown, fontsize=8, **PLAIN)
        if c <= 15:
            for i in range(c):
                for j in range(c):
                    if counts[i, j]:
                        ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                                color="white" if shares[i, j] > 0.5 else "black")
    else:
        step = max(1, int(math.ceil(c / 20)))
        ticks = list(range(0, c, step))
        ax.set_xticks(ticks, [str(labels[t]) for t in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [str(labels[t]) for t in ticks], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(drawable(title), fontsize=10, **PLAIN)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class's images")
    fig.tight_layout()
    return png_bytes(fig)
