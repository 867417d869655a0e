"""RESULTS/results.md: one row per ablation arm, its seeds' mean and spread, and whether its difference
to the baseline is larger than that spread (Welch's t-test).

Welch's test (unequal variances) and not Student's: an ablation can change how much a run depends on
its seed (no dropout, no LRN), so the two arms' variances need not be equal. Its p-value is computed
here (the Student t tail by quadrature) so the table needs nothing beyond NumPy.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from alexnet.files import write_text_atomic

SIGNIFICANCE = 0.05  # two-sided; with 3 seeds an arm's difference must be about 3 standard errors to pass


def t_tail_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` > 0 degrees of freedom. With x = sqrt(df) tan(theta)
    the density times dx is c cos(theta)^(df - 1) dtheta, bounded for df >= 1, so Simpson's rule on
    [arctan(|t| / sqrt(df)), pi/2] is accurate to ~1e-9."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    theta0 = math.atan(abs(t) / math.sqrt(df))
    theta = np.linspace(theta0, math.pi / 2, 4001)
    f = np.cos(theta) ** (df - 1) if df != 1 else np.ones_like(theta)
    h = (theta[-1] - theta[0]) / (len(theta) - 1)
    integral = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    return float(min(1.0, 2 * c * integral))


def welch_t_test(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """(t, degrees of freedom, two-sided p) of Welch's test of equal means; None with fewer than two
    values in either sample. Two samples without any spread differ for sure (p = 0) unless equal."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return (math.copysign(math.inf, diff), math.inf, 0.0) if diff else (0.0, math.inf, 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(t), float(df), t_tail_two_sided(t, df)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{np.mean(values):.2%} ± {np.std(values, ddof=1):.2%}"


def arms(results: str | os.PathLike) -> dict[tuple, dict[int, dict]]:
    """The rows of results.jsonl by (data, base, settings, experiment), then by seed (the latest row
    of a seed wins, so a re-run replaces its own)."""
    out: dict[tuple, dict[int, dict]] = {}
    for line in (Path(results) / "results.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault((r["data"], r["base"], r.get("settings", ""), r["experiment"]), {})[r.get("seed", 0)] = r
    return out


def _versus(rows: list[dict], baseline: list[dict] | None) -> tuple[str, str]:
    if baseline is None:
        return "", ""
    a, b = [r["top1_err"] for r in rows], [r["top1_err"] for r in baseline]
    delta = f"{(np.mean(a) - np.mean(b)) * 100:+.2f} pts"
    test = welch_t_test(a, b)
    if test is None:
        return delta, "n/a (1 seed)"
    return delta, f"{'yes' if test[2] < SIGNIFICANCE else 'no'} (p = {test[2]:.3f})"


def write_table(results: str | os.PathLike, order: list[str]) -> Path:
    """results.md from every row of results.jsonl: per data/base/settings/experiment the mean ± sample
    standard deviation over its seeds, and its difference to the baseline of the same data, base and
    settings with Welch's test of that difference. `order`: the experiments' order in the table."""
    results = Path(results)
    groups = arms(results)
    lines = ["| data | base | settings | experiment | paper | change | params | seeds | epochs | "
             "top-1 err (mean ± std) | vs baseline | beyond the seeds' spread? (Welch t-test, p < 0.05) | "
             "top-5 err | top-1, 10 patches | top-5, 10 patches | train err | img/s | date | commit |",
             "|" + "---|" * 19]
    rank = {name: i for i, name in enumerate(order)}
    for key in sorted(groups, key=lambda k: (*k[:3], rank.get(k[3], len(rank)), k[3])):
        data, base, settings, name = key
        rows = [groups[key][s] for s in sorted(groups[key])]
        baseline = groups.get((data, base, settings, "baseline")) if name != "baseline" else None
        delta, beyond = _versus(rows, list(baseline.values()) if baseline else None)
        r = rows[-1]
        col = lambda k: _mean_std([x[k] for x in rows])  # noqa: E731
        lines.append(f"| {Path(data).name} | {base} | {settings} | {name} | {r['section']} | {r['change']} | "
                     f"{r['parameters']:,} | {','.join(str(x.get('seed', 0)) for x in rows)} | {r['epochs']} | "
                     f"{col('top1_err')} | {delta} | {beyond} | {col('top5_err')} | {col('top1_err_10crop')} | "
                     f"{col('top5_err_10crop')} | {col('train_err')} | "
                     f"{np.mean([x['images_per_s'] for x in rows]):.0f} | {r['date']} | {r['commit']} |")
    path = results / "results.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
