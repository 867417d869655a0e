"""The run report's own figures, as PNG bytes: training curves and the confusion matrix.

Text from data (class names) is drawn as text: matplotlib reads a pair of `$` as mathtext, so every
string goes through `plain_text` first.
"""

from __future__ import annotations

import io
import math

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(text: str) -> str:
    """`text` as matplotlib draws it literally (an escaped `$` is a dollar sign, never mathtext)."""
    return str(text).replace("$", r"\$")


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as a 256-colour PNG (a third of matplotlib's RGBA size for these plots)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    _pyplot().close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="png", optimize=True)
    return out.getvalue()


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def lr_drops(history: list[dict]) -> list[tuple[float, float]]:
    """(x, factor) of each fall of the learning rate between epochs: x halfway between the two epochs."""
    drops = []
    for before, after in zip(history, history[1:]):
        if after.get("lr") and before.get("lr") and after["lr"] < before["lr"]:
            drops.append(((before["epoch"] + after["epoch"]) / 2, before["lr"] / after["lr"]))
    return drops


def _series(history: list[dict], key: str) -> tuple[list, list]:
    """Epochs and values of `key` in the rows that have a positive value for it (log axes)."""
    pairs = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and h[key] > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


PERCENT_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                 0.8, 0.9, 1.0)
ONE_TWO_FIVE = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def percent_ticks(low: float, high: float, most: int = 11) -> list[float]:
    """Round percentages between low and high for a log axis: as many as fit in `most`, the 1-2-5
    ones when there are too many (a wide range), so a narrow range still gets several."""
    inside = [t for t in PERCENT_TICKS if low <= t <= high]
    if len(inside) > most:
        inside = [t for t in inside if t in ONE_TWO_FIVE]
    return inside


def _percent_axis(ax) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    low, high = ax.get_ylim()
    ax.yaxis.set_major_locator(FixedLocator(percent_ticks(low, high)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}" if v >= 0.01 else f"{v:.1%}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def curves_png(history: list[dict], title: str) -> bytes:
    """Loss, error rates (on a log axis, so the slow progress after the first epochs shows) and learning
    rate (log) by epoch; the learning rate's falls (§5: divided by 10 on a plateau) as dotted lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    ax_loss, ax_err, ax_lr = axes
    style = {"marker": "o", "markersize": 3} if len(history) < 30 else {}
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(*_series(history, key), label=label, **style)
    for key, label in (("train_top1_err", "train top-1"), ("val_top1_err", "validation top-1"),
                       ("val_top5_err", "validation top-5")):
        ax_err.plot(*_series(history, key), label=label, **style)
    ax_lr.plot(*_series(history, "lr"), color="tab:gray", **style)
    ax_loss.set(title="loss", ylabel="cross-entropy")
    ax_err.set(title="error rate", ylabel="error (log scale)")
    ax_lr.set(title="learning rate (§5)", ylabel="learning rate (log scale)")
    for ax in axes:
        if ax is not ax_loss and any(len(line.get_xdata()) for line in ax.lines):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        for x, factor in lr_drops(history):
            ax.axvline(x, color="tab:red", linestyle=":", linewidth=1)
    if any(len(line.get_xdata()) for line in ax_err.lines):
        _percent_axis(ax_err)
    for x, factor in lr_drops(history):
        ax_lr.annotate(f"÷{factor:.3g}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                       textcoords="offset points", color="tab:red", fontsize=8)
    for ax in (ax_loss, ax_err):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(plain_text(title))
    fig.tight_layout()
    return png_bytes(fig)


def confusion_png(counts: np.ndarray, names: list[str], labels: list[int], title: str) -> bytes:
    """The confusion matrix, each row as shares of that class's images, on a square-root colour scale
    (a 2% confusion stays visible next to an 80% diagonal). The axes name the classes up to 40 of
    them and give their label numbers (`labels`, as in the per-class table) beyond."""
    from matplotlib.colors import PowerNorm

    plt = _pyplot()
    c = len(counts)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labelled = c <= 40
    side = min(11.0, max(5.0, 0.22 * c + (3.0 if labelled else 1.5)))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    if labelled:
        shown = [plain_text(n if len(n) <= 28 else n[:27] + "…") for n in names]
        ax.set_xticks(range(c), shown, rotation=90, fontsize=8)
        ax.set_yticks(range(c), shown, fontsize=8)
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
    ax.set_title(plain_text(title), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class's images")
    fig.tight_layout()
    return png_bytes(fig)
