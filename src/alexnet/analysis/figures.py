"""Figures as PNG files (matplotlib's Agg canvas: no display, and no change to pyplot's backend).

Text that comes from data (class names, store and run names) is drawn as text: `PLAIN` turns off
mathtext and LaTeX on its artists, so a synset name with `$` or `_` prints as written."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from alexnet.files import atomic_write

# keyword arguments for every text artist whose string comes from data, not from this code
PLAIN = {"parse_math": False, "usetex": False}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(**subplots):
    """(figure, axes) on matplotlib's Agg canvas, outside pyplot (nothing global is touched; the
    figure is freed with its last reference). Without arguments, no axes (None)."""
    from matplotlib.figure import Figure

    figsize = subplots.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, (fig.subplots(**subplots) if subplots else None)


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as a 256-colour PNG (several times smaller than matplotlib's RGBA for photos),
    through a temporary file that is synced and renamed: never a half-written PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: let pyplot forget it
        _pyplot().close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_write(path, tmp_suffix=".partial.png") as f:
        img.save(f, format="PNG", optimize=True)
    return path


pyplot, save_figure = _pyplot, _save  # public: the experiment layer's figures (alexnet/fig1.py) use them too


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves of a run (its metrics.jsonl rows): loss, error rates and learning rate by epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err, ax_lr) = new_figure(nrows=1, ncols=3, figsize=(14, 4))
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
        fig.suptitle(title, **PLAIN)
    fig.tight_layout()
    return _save(fig, path)


def kernel_mosaic(weight, towers: int = 2, columns: int = 16, zoom: int = 6, gap: int = 2):
    """Fig. 3: conv1's kernels (K, 3, h, w) as one RGB image, each kernel stretched to 0..1 on its own,
    the towers' kernels in separate blocks (top: tower 1, bottom: tower 2), `columns` to a row."""
    w = np.asarray(weight, dtype=np.float64)
    k, _, h, wd = w.shape
    lo = w.reshape(k, -1).min(1)[:, None, None, None]
    hi = w.reshape(k, -1).max(1)[:, None, None, None]
    tiles = ((w - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)  # (K, h, w, 3)
    tiles = tiles.repeat(zoom, 1).repeat(zoom, 2)
    th, tw = h * zoom, wd * zoom
    per_tower = k // towers
    columns = min(columns, per_tower)
    rows_per_tower = -(-per_tower // columns)
    height = towers * rows_per_tower * (th + gap) + (towers - 1) * 3 * gap
    width = columns * (tw + gap) - gap
    mosaic = np.ones((height, width, 3))
    for t in range(towers):
        top0 = t * (rows_per_tower * (th + gap) + 3 * gap)
        for j in range(per_tower):
            r, c = divmod(j, columns)
            y, x = top0 + r * (th + gap), c * (tw + gap)
            mosaic[y : y + th, x : x + tw] = tiles[t * per_tower + j]
    return mosaic


def save_kernel_mosaic(weight, path: str | os.PathLike, towers: int = 2, title: str = "") -> Path:
    """Fig. 3 as a PNG: `kernel_mosaic` drawn at its own pixel size, with a title."""
    mosaic = kernel_mosaic(weight, towers)
    fig, _ = new_figure(figsize=(mosaic.shape[1] / 60 + 0.4, mosaic.shape[0] / 60 + 0.8))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.86 if title else 0.96])
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9, **PLAIN)
    return _save(fig, path)


def save_top5_figure(images, probs, labels, class_names: list[str], path: str | os.PathLike,
                     columns: int = 4) -> Path:
    """Fig. 4 (left): each image with the five labels the net thinks most probable as bars; the correct
    label is written under the image and its bar is red when it is among the five."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = new_figure(nrows=rows * 2, ncols=columns, figsize=(3.2 * columns, 4.2 * rows),
                           squeeze=False, gridspec_kw={"height_ratios": [1.6, 1] * rows})
    for j in range(rows * columns):
        ax_img, ax_bar = axes[2 * (j // columns), j % columns], axes[2 * (j // columns) + 1, j % columns]
        ax_img.axis("off")
        if j >= n:
            ax_bar.axis("off")
            continue
        ax_img.imshow(images[j])
        ax_img.set_title(class_names[labels[j]], fontsize=9, y=-0.16, **PLAIN)
        top = np.argsort(-probs[j])[:5]
        colours = ["tab:red" if c == labels[j] else "tab:blue" for c in top]
        ax_bar.barh(range(len(top))[::-1], probs[j][top], color=colours)
        ax_bar.set_yticks(range(len(top))[::-1], [class_names[c][:22] for c in top], fontsize=8, **PLAIN)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def save_neighbours_figure(queries, neighbours, path: str | os.PathLike, query_titles=None,
                           neighbour_titles=None) -> Path:
    """Fig. 4 (right): each query image in the first column, its nearest training images after it."""
    q, k = len(queries), len(neighbours[0])
    fig, axes = new_figure(nrows=q, ncols=k + 1, figsize=(1.5 * (k + 1), 1.6 * q), squeeze=False)
    for i in range(q):
        for j in range(k + 1):
            ax = axes[i, j]
            ax.imshow(queries[i] if j == 0 else neighbours[i][j - 1])
            ax.set_xticks([])
            ax.set_yticks([])
            title = (query_titles[i] if query_titles else "query") if j == 0 else (
                neighbour_titles[i][j - 1] if neighbour_titles else "")
            ax.set_title(title, fontsize=7, **PLAIN)
            if j == 0:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:red")
                    side.set_linewidth(2)
    fig.tight_layout()
    return _save(fig, path, dpi=90)
