"""A run's training curves: loss, error rates and learning rate by epoch, titled by the run.

Errors and the learning rate are drawn on log axes (the slow progress after the first epochs shows),
and each fall of the learning rate (§5) is marked on every panel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from alexnet.report.canvas import PLAIN, drawable, new_figure, save_figure


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
        fig.suptitle(drawable(title), **PLAIN)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """`curves_figure` as a PNG."""
    return save_figure(curves_figure(history, title), path)
