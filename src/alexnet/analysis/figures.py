"""Figures as PNG files (matplotlib's Agg canvas: no display, and no change to pyplot's backend).

Each figure has a builder that returns the matplotlib `Figure` (`curves_figure`, `kernel_figure`,
`top5_figure`, `neighbours_figure`: what tests and the run report look into) and a `save_*` function
that writes it. Text that comes from data (class names, store and run names) is drawn as text:
`PLAIN` turns off mathtext and LaTeX on its artists, so a synset name with `$` or `_` prints as
written, and names are wrapped onto more lines, never cut."""

from __future__ import annotations

import io
import os
import textwrap
import time
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


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as a 256-colour PNG (several times smaller than matplotlib's RGBA for photos)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: let pyplot forget it
        _pyplot().close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure as `png_bytes` through a temporary file that is synced and renamed: never a
    half-written PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(fig, dpi)
    with atomic_write(path, tmp_suffix=".partial.png") as f:
        f.write(data)
    return path


pyplot, save_figure = _pyplot, _save  # public: the experiment layer's figures (alexnet/fig1.py) use them too


def wrap_name(name: str, width: int) -> str:
    """A class name on lines of at most `width` characters where it has spaces (a longer word stays
    whole): wrapped, never cut."""
    return "\n".join(textwrap.wrap(str(name), width, break_long_words=False, break_on_hyphens=False)) or str(name)


# ---------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------


def lr_drops(history: list[dict]) -> list[tuple[float, float]]:
    """(x, factor) of each fall of the learning rate between epochs: x halfway between the two epochs."""
    drops = []
    for before, after in zip(history, history[1:]):
        if after.get("lr") and before.get("lr") and after["lr"] < before["lr"]:
            drops.append(((before["epoch"] + after["epoch"]) / 2, before["lr"] / after["lr"]))
    return drops


def _series(history: list[dict], key: str, zero: bool = False) -> tuple[list, list]:
    """Epochs and values of `key` in the rows that have a positive value for it (log axes), or a
    non-negative one with `zero`."""
    pairs = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and
             (h[key] > 0 or (zero and h[key] == 0))]
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


def _error_axis(ax) -> None:
    """A log axis in round percentages for the error panel. When an error reached 0 (which a log axis
    has no place for) the axis is linear below the smallest decade reached and log above (symlog),
    so the zeros show at the bottom instead of leaving gaps in the lines."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    values = np.concatenate([np.asarray(line.get_ydata(), np.float64) for line in ax.lines])
    positive = values[values > 0]
    top = min(1.0, float(values.max()) * 1.15) if positive.size else 1.0
    if (values == 0).any():
        floor = 10.0 ** np.floor(np.log10(positive.min())) if positive.size else 0.01
        ax.set_yscale("symlog", linthresh=floor, linscale=0.3)
        ax.set_ylim(0, top)
        ticks = [0.0] + percent_ticks(floor, top)
    else:
        ax.set_yscale("log")
        ticks = percent_ticks(*ax.get_ylim())
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.0%}" if v >= 0.01 else f"{v:.1%}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def run_title(variant: str, store: str | os.PathLike | None, history: list[dict], run: Path | None = None) -> str:
    """"VARIANT on STORE, DATE" (the date of the last epoch, else of the run's newest file; the store
    left out when unknown): what a run's curves are titled by."""
    stamp = str(history[-1].get("time", ""))[:10] if history else ""
    for name in ("best.pt", "last.pt", "config.toml") if run is not None and not stamp else ():
        if (run / name).is_file():
            stamp = time.strftime("%Y-%m-%d", time.localtime((run / name).stat().st_mtime))
            break
    what = f"{variant} on {Path(store).name}" if store else variant
    return f"{what}, {stamp}" if stamp else what


def curves_figure(history: list[dict], title: str = ""):
    """Loss, error rates and learning rate by epoch (a run's metrics.jsonl rows). Errors and the
    learning rate on log axes, so the slow progress after the first epochs shows (`_error_axis`);
    each fall of the learning rate (§5: divided by 10 on a plateau) is a red dotted line on every
    panel, its factor written on the learning-rate panel."""
    fig, axes = new_figure(nrows=1, ncols=3, figsize=(13, 4.2))
    ax_loss, ax_err, ax_lr = axes
    style = {"marker": "o", "markersize": 3} if len(history) < 30 else {}
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(*_series(history, key), label=label, **style)
    for key, label in (("train_top1_err", "train top-1"), ("val_top1_err", "validation top-1"),
                       ("val_top5_err", "validation top-5")):
        ax_err.plot(*_series(history, key, zero=True), label=label, **style)
    ax_lr.plot(*_series(history, "lr"), color="tab:gray", **style)
    ax_loss.set(title="loss", ylabel="cross-entropy")
    ax_err.set(title="error rate", ylabel="error (log scale)")
    ax_lr.set(title="learning rate (§5)", ylabel="learning rate (log scale)")
    drops = lr_drops(history)
    if any(len(line.get_xdata()) for line in ax_lr.lines):
        ax_lr.set_yscale("log")
    if any(len(line.get_xdata()) for line in ax_err.lines):
        _error_axis(ax_err)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        for x, _ in drops:
            ax.axvline(x, color="tab:red", linestyle=":", linewidth=1, gid="lr-drop")
    for x, factor in drops:
        ax_lr.annotate(f"÷{factor:.3g}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                       textcoords="offset points", color="tab:red", fontsize=8)
    for ax in (ax_loss, ax_err):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, **PLAIN)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """`curves_figure` as a PNG."""
    return _save(curves_figure(history, title), path)


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
        fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=11, **PLAIN)
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
    return _save(kernel_figure(weight, towers, title, scale), path)


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
    fig.suptitle(title or f"Top-5 predictions (§6.1, Fig. 4 left): {int(wrong.sum())} of {n} are top-1 mistakes\n"
                 "the correct label is under each image; its bar is red when it is among the five",
                 fontsize=11, **PLAIN)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / ((image_h + panel) * rows + 0.7)))
    return fig


def save_top5_figure(images, probs, labels, class_names: list[str], path: str | os.PathLike,
                     columns: int = 4, title: str = "") -> Path:
    """`top5_figure` as a PNG."""
    return _save(top5_figure(images, probs, labels, class_names, columns, title), path, dpi=90)


def neighbours_figure(queries, neighbours, query_titles=None, neighbour_titles=None, title: str = ""):
    """Fig. 4 (right): each query image (red frame) in the first column, its nearest training images
    after it, each under its class name (wrapped, never cut: the rows grow to fit the longest)."""
    q, k = len(queries), len(neighbours[0])
    titles = [[(query_titles[i] if query_titles else "query")]
              + [neighbour_titles[i][j] if neighbour_titles else "" for j in range(k)] for i in range(q)]
    titles = [[wrap_name(t, 19) for t in row] for row in titles]
    lines = max(t.count("\n") + 1 for row in titles for t in row)
    row_h = 1.55 + 0.16 * lines
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
    fig.suptitle(title or "Nearest training images in fc7 space (§6.1, Fig. 4 right); first column: the query",
                 fontsize=10, **PLAIN)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (row_h * q + 0.5)))
    return fig


def save_neighbours_figure(queries, neighbours, path: str | os.PathLike, query_titles=None,
                           neighbour_titles=None, title: str = "") -> Path:
    """`neighbours_figure` as a PNG."""
    return _save(neighbours_figure(queries, neighbours, query_titles, neighbour_titles, title), path, dpi=90)
