"""Fig. 1's figure: training error against epochs for ReLU and tanh, one line per seed, the 25% line,
where each run crossed it, and the tanh/ReLU ratio with its spread over seeds (alexnet/experiments/fig1.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet.report.canvas import drawable, new_figure, save_figure

STYLE = {"relu": ("-", "black"), "tanh": ("--", "tab:blue")}  # Fig. 1: ReLU solid, tanh dashed


def ratio_text(summary: dict) -> str:
    """'3.12 ± 0.40 (range 2.70-3.50, 3 seeds)', or why there is no ratio."""
    if not summary["n"]:
        return "n/a (a net did not reach the target)"
    spread = f" ± {summary['std']:.2f}" if summary["std"] is not None else ""
    seeds = f"{summary['n']} seed{'s' if summary['n'] > 1 else ''}"
    missing = len(summary["per_seed"]) - summary["n"]
    return (f"{summary['mean']:.2f}{spread} (range {summary['min']:.2f}-{summary['max']:.2f}, {seeds}"
            + (f"; {missing} did not reach it" if missing else "") + ")")


def save_fig1(result: dict, path: Path) -> Path:
    """The whole of every curve on the axes (x from 0 to the longest run, y from 0 to the highest error)."""
    fig, ax = new_figure(figsize=(7.5, 4.8), nrows=1, ncols=1)
    top, right = result["target"], 0.0
    for name, (style, colour) in STYLE.items():
        for i, run in enumerate(result["runs"][name]):
            x, y = np.asarray(run["curve_epochs"]), np.asarray(run["curve_errors"])
            if not len(x):
                continue
            ax.plot(x, y, style, color=colour, lw=1.1, alpha=0.85,
                    label=f"{name} (lr {run['lr']:g})" if i == 0 else None)
            if run["epochs_to_target"] is not None:
                ax.plot([run["epochs_to_target"]], [result["target"]], "o", color=colour, ms=4)
            top, right = max(top, float(y.max())), max(right, float(x.max()))
    ax.axhline(result["target"], color="tab:red", lw=0.9, label=f"{result['target']:.0%} training error")
    ax.set_xlim(0, right * 1.03 or 1)
    ax.set_ylim(0, min(1.0, top * 1.05))
    ax.set_xlabel("epochs")
    ax.set_ylabel(f"training error rate (running mean of {result['runs']['relu'][0]['window']} batches)"
                  if result["runs"]["relu"] else "training error rate")
    ax.set_title(f"Fig. 1: four-layer CNN on {drawable(Path(result['data']).name)}, "
                 f"{len(result['runs']['relu'])} seed(s)")
    ax.text(0.98, 0.97, f"epochs to {result['target']:.0%}: tanh / ReLU =\n{ratio_text(result['ratio'])}",
            transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
