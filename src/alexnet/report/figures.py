"""The paper's figures as PNG files: Fig. 3 (conv1's kernels, one block per tower) and Fig. 4 (top-5
predictions; nearest training images in fc7 space).

Each figure has a builder that returns the matplotlib `Figure` (`kernel_figure`, `top5_figure`,
`neighbours_figure`: what tests and the run report look into) and a `save_*` function that writes
it. Class names are drawn as text (`PLAIN`) and wrapped, never cut. The training curves live in
alexnet.report.curves and the canvas in alexnet.report.canvas; their public names are here too,
where the callers have always found them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet.report.canvas import PLAIN, drawable, new_figure, save_figure, wrap_name

__all__ = ["scale_kernels", "kernel_blocks", "kernel_mosaic", "kernel_figure", "save_kernel_mosaic",
           "top5_figure", "save_top5_figure", "neighbours_figure", "save_neighbours_figure"]


# ---------------------------------------------------------------------------------------------------
# Fig. 3: conv1's kernels
# ---------------------------------------------------------------------------------------------------


def scale_kernels(weight, scale: str = "shared") -> np.ndarray:
    """Kernels (K, 3, h, w) as RGB tiles (K, h, w, 3) in 0..1. "shared": one linear map for all the
    kernels, the layer's lowest weight to 0 and its highest to 1, as cuda-convnet's shownet.py (the
    paper's own tool; Fig. 3's caption says nothing about scaling) draws filters by default: a weak or
    colourless kernel looks weak or grey instead of being stretched into false contrast, so §6.1's
    colour-agnostic tower and colour-specific tower compare as learned. "each": every kernel
    stretched to 0..1 on its own, to see the shape of weak kernels."""
    w = np.asarray(weight, dtype=np.float64)
    if scale == "shared":
        lo, hi = w.min(), w.max()
    elif scale == "each":
        lo = w.reshape(len(w), -1).min(1)[:, None, None, None]
        hi = w.reshape(len(w), -1).max(1)[:, None, None, None]
    else:
        raise ValueError(f"scale must be 'shared' or 'each', got {scale!r}")
    return ((w - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)


def kernel_blocks(weight, towers: int = 2, columns: int = 16, zoom: int = 6, gap: int = 2,
                  scale: str = "shared") -> list[np.ndarray]:
    """One RGB image per tower (tower t holds kernels t*K/towers ... (t+1)*K/towers - 1, as §3.2 splits
    conv1's kernels over the GPUs): its kernels `columns` to a row, each pixel repeated `zoom` times
    (enlarged without blur), white `gap` pixels between them."""
    tiles = scale_kernels(weight, scale).repeat(zoom, 1).repeat(zoom, 2)
    k, th, tw = tiles.shape[:3]
    per_tower = k // towers
    columns = min(columns, per_tower)
    rows = -(-per_tower // columns)
    blocks = []
    for t in range(towers):
        block = np.ones((rows * (th + gap) - gap, columns * (tw + gap) - gap, 3))
        for j in range(per_tower):
            r, c = divmod(j, columns)
            block[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tiles[t * per_tower + j]
        blocks.append(block)
    return blocks


def kernel_mosaic(weight, towers: int = 2, columns: int = 16, zoom: int = 6, gap: int = 2,
                  scale: str = "shared") -> np.ndarray:
    """Fig. 3 as one RGB image: `kernel_blocks` stacked (top: tower 1), a wider white gap between them."""
    blocks = kernel_blocks(weight, towers, columns, zoom, gap, scale)
    spacer = np.ones((5 * gap, blocks[0].shape[1], 3))
    return np.concatenate([part for b in blocks for part in (b, spacer)][:-1])


def tower_label(t: int, towers: int, kernels: int) -> str:
    return f"tower {t + 1} (GPU {t + 1}): {kernels} kernels" if towers == 2 else f"{kernels} kernels (one tower)"


def kernel_figure(weight, towers: int = 2, title: str = "", scale: str = "shared", dpi: int = 100):
    """Fig. 3: each tower's kernels under its label (the paper: the top 48 learned on GPU 1, the
    bottom 48 on GPU 2), drawn pixel for pixel (`figimage`: no resampling, so no blur)."""
    k, _, h, _ = np.shape(weight)
    zoom = max(1, round(66 / h))  # an 11x11 kernel as 66x66 pixels
    blocks = kernel_blocks(weight, towers, zoom=zoom, scale=scale)
    pad, label_h, title_h = 12, 24, (30 if title else 0)
    width = blocks[0].shape[1] + 2 * pad
    height = title_h + sum(label_h + b.shape[0] + pad for b in blocks) + pad
    fig, _ = new_figure(figsize=(width / dpi, height / dpi))
    fig.set_dpi(dpi)
    if title:
        fig.text(0.5, 1 - 8 / height, drawable(title), ha="center", va="top", fontsize=11, **PLAIN)
    top = title_h + pad  # pixels from the top of the figure
    for t, block in enumerate(blocks):
        fig.text(pad / width, 1 - (top + label_h - 6) / height, tower_label(t, towers, k // towers),
                 ha="left", va="bottom", fontsize=10, weight="bold")
        top += label_h
        fig.figimage(block, xo=pad, yo=height - top - block.shape[0], origin="upper")
        top += block.shape[0] + pad
    return fig


def save_kernel_mosaic(weight, path: str | os.PathLike, towers: int = 2, title: str = "",
                       scale: str = "shared") -> Path:
    """`kernel_figure` as a PNG, at the size it was laid out for."""
    return save_figure(kernel_figure(weight, towers, title, scale), path)


# ---------------------------------------------------------------------------------------------------
# Fig. 4: top-5 predictions, nearest neighbours
# ---------------------------------------------------------------------------------------------------


LINE = 1.0  # the five-bar panel's units: one line of label text, and a bar, are 1 unit (BAR_INCH) high
BAR_INCH = 0.135


def _bar_rows(names: list[str]) -> tuple[list[float], list[float], float]:
    """y of each name's first line and of its bar (units of LINE, from the top) in a five-bar panel
    where every name sits above its bar, and the panel's height."""
    y, text_y, bar_y = 0.15, [], []
    for name in names:
        text_y.append(y)
        y += LINE * (name.count("\n") + 1)
        bar_y.append(y + 0.5 * LINE)
        y += 1.35 * LINE
    return text_y, bar_y, y


def _five_bars(ax, probs: np.ndarray, label: int, class_names: list[str]) -> None:
    top = np.argsort(-probs, kind="stable")[:5]
    names = [wrap_name(class_names[c], 44) for c in top]
    text_y, bar_y, height = _bar_rows(names)
    ax.barh(bar_y, probs[top], height=0.9 * LINE, color=["tab:red" if c == label else "tab:blue" for c in top])
    for name, y in zip(names, text_y):
        ax.text(0.005, y, name, va="top", ha="left", fontsize=7.5, linespacing=1.1, **PLAIN)
    ax.set_ylim(height, 0)
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def top5_figure(images, probs, labels, class_names: list[str], columns: int = 4, title: str = ""):
    """Fig. 4 (left): each image with the five labels the net finds most probable as bars on a
    probability axis, each label written in full above its bar; the correct label is written under the
    image and its bar is red when it is among the five (the paper's convention). An image whose top-1
    guess is wrong gets an orange frame and says so. The title counts the mistakes shown."""
    n, probs, labels = len(images), np.asarray(probs), np.asarray(labels)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    panel = max(_bar_rows([wrap_name(class_names[c], 44) for c in np.argsort(-p, kind="stable")[:5]])[2]
                for p in probs) * BAR_INCH + 0.45
    image_h = 2.9
    fig, axes = new_figure(nrows=rows * 2, ncols=columns, figsize=(3.6 * columns, (image_h + panel) * rows + 0.7),
                           squeeze=False, gridspec_kw={"height_ratios": [image_h, panel] * rows})
    wrong = probs.argmax(1) != labels
    for j in range(rows * columns):
        ax_img, ax_bar = axes[2 * (j // columns), j % columns], axes[2 * (j // columns) + 1, j % columns]
        if j >= n:
            ax_img.axis("off")
            ax_bar.axis("off")
            continue
        ax_img.imshow(images[j])
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        for side in ax_img.spines.values():
            side.set_edgecolor("tab:orange" if wrong[j] else "none")
            side.set_linewidth(3)
        ax_img.set_xlabel(wrap_name(class_names[labels[j]], 36), fontsize=9, weight="bold", **PLAIN)
        if wrong[j]:
            ax_img.set_title("top-1 guess wrong", fontsize=9, color="tab:orange", pad=3)
        _five_bars(ax_bar, probs[j], labels[j], class_names)
    fig.suptitle(drawable(title) or f"Top-5 predictions (§6.1, Fig. 4 left): {int(wrong.sum())} of {n} are top-1 "
                 "mistakes\nthe correct label is under each image; its bar is red when it is among the five",
                 fontsize=11, **PLAIN)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / ((image_h + panel) * rows + 0.7)))
    return fig


def save_top5_figure(images, probs, labels, class_names: list[str], path: str | os.PathLike,
                     columns: int = 4, title: str = "") -> Path:
    """`top5_figure` as a PNG."""
    return save_figure(top5_figure(images, probs, labels, class_names, columns, title), path, dpi=90)


def neighbours_figure(queries, neighbours, query_titles=None, neighbour_titles=None, title: str = ""):
    """Fig. 4 (right): each query image (red frame) in the first column, its nearest training images
    after it, each under its class name (wrapped, never cut: the rows grow to fit the longest)."""
    q, k = len(queries), len(neighbours[0])
    titles = [[(query_titles[i] if query_titles else "query")]
              + [neighbour_titles[i][j] if neighbour_titles else "" for j in range(k)] for i in range(q)]
    titles = [[wrap_name(t, 19) for t in row] for row in titles]
    lines = max(t.count("\n") + 1 for row in titles for t in row)
    row_h = 1.7 + 0.16 * lines
    fig, axes = new_figure(nrows=q, ncols=k + 1, figsize=(1.6 * (k + 1), row_h * q + 0.5), squeeze=False)
    for i in range(q):
        for j in range(k + 1):
            ax = axes[i, j]
            ax.imshow(queries[i] if j == 0 else neighbours[i][j - 1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[i][j], fontsize=8, **PLAIN)
            if j == 0:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:red")
                    side.set_linewidth(2.5)
    fig.suptitle(drawable(title) or "Nearest training images in fc7 space (§6.1, Fig. 4 right); first column: the "
                 "query",
                 fontsize=10, **PLAIN)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (row_h * q + 0.5)), h_pad=1.6)
    return fig


def save_neighbours_figure(queries, neighbours, path: str | os.PathLike, query_titles=None,
                           neighbour_titles=None, title: str = "") -> Path:
    """`neighbours_figure` as a PNG."""
    return save_figure(neighbours_figure(queries, neighbours, query_titles, neighbour_titles, title), path, dpi=90)
