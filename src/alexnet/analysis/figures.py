"""Figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as a 256-colour PNG (several times smaller than matplotlib's RGBA for photos)."""
    import io

    from PIL import Image

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = path.with_name(path.name + ".partial.png")
    img.save(tmp, optimize=True)
    os.replace(tmp, path)
    return path


pyplot, save_figure = _pyplot, _save  # public: the experiment layer's figures (alexnet/fig1.py) use them too


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves of a run (its metrics.jsonl rows): loss, error rates and learning rate by epoch."""
    plt = _pyplot()
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
    return _save(fig, path)


def kernel_mosaic(weight, towers: int = 2, columns: int = 16, zoom: int = 6, gap: int = 2):
    """Fig. 3: conv1's kernels (K, 3, h, w) as one RGB image, each kernel stretched to 0..1 on its own,
    the towers' kernels in separate blocks (top: tower 1, bottom: tower 2), `columns` to a row."""
    import numpy as np

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
    plt = _pyplot()
    mosaic = kernel_mosaic(weight, towers)
    fig = plt.figure(figsize=(mosaic.shape[1] / 60 + 0.4, mosaic.shape[0] / 60 + 0.8))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.86 if title else 0.96])
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_top5_figure(images, probs, labels, class_names: list[str], path: str | os.PathLike,
                     columns: int = 4) -> Path:
    """Fig. 4 (left): each image with the five labels the net thinks most probable as bars; the correct
    label is written under the image and its bar is red when it is among the five."""
    import numpy as np

    plt = _pyplot()
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows * 2, columns, figsize=(3.2 * columns, 4.2 * rows),
                             gridspec_kw={"height_ratios": [1.6, 1] * rows})
    axes = np.atleast_2d(axes)
    for j in range(rows * columns):
        ax_img, ax_bar = axes[2 * (j // columns), j % columns], axes[2 * (j // columns) + 1, j % columns]
        ax_img.axis("off")
        if j >= n:
            ax_bar.axis("off")
            continue
        ax_img.imshow(images[j])
        ax_img.set_title(class_names[labels[j]], fontsize=9, y=-0.16)
        top = np.argsort(-probs[j])[:5]
        colours = ["tab:red" if c == labels[j] else "tab:blue" for c in top]
        ax_bar.barh(range(len(top))[::-1], probs[j][top], color=colours)
        ax_bar.set_yticks(range(len(top))[::-1], [class_names[c][:22] for c in top], fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def save_neighbours_figure(queries, neighbours, path: str | os.PathLike, query_titles=None,
                           neighbour_titles=None) -> Path:
    """Fig. 4 (right): each query image in the first column, its nearest training images after it."""
    import numpy as np

    plt = _pyplot()
    q, k = len(queries), len(neighbours[0])
    fig, axes = plt.subplots(q, k + 1, figsize=(1.5 * (k + 1), 1.6 * q))
    axes = np.atleast_2d(axes)
    for i in range(q):
        for j in range(k + 1):
            ax = axes[i, j]
            ax.imshow(queries[i] if j == 0 else neighbours[i][j - 1])
            ax.set_xticks([])
            ax.set_yticks([])
            title = (query_titles[i] if query_titles else "query") if j == 0 else (
                neighbour_titles[i][j - 1] if neighbour_titles else "")
            ax.set_title(title, fontsize=7)
            if j == 0:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:red")
                    side.set_linewidth(2)
    fig.tight_layout()
    return _save(fig, path, dpi=90)
