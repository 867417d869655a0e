"""Shared helpers for the benchmarks: timing, interleaved A/B comparison, the generated JPEG folder and
the environment line written next to every figure."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"commit": commit, "torch": torch.__version__, "python": platform.python_version(),
           "cpu": cpu, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls after `warmup` calls (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleave(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each measure once per round, in the order given on even rounds and reversed on odd ones (A B,
    B A, ...), so that drift in the machine's load hits every measure alike and none always goes
    first. Returns each measure's values, one a round, in round order."""
    values: dict[str, list[float]] = {name: [] for name in measures}
    names = list(measures)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            values[name].append(measures[name]())
    return values


def pair_ratio(ours: list[float], base: list[float], higher_is_better: bool = True) -> dict:
    """The speed-up of `ours` over `base` from values measured side by side (one pair per round):
    the median of the pair ratios and their range. Rates (images/s) divide ours / base; times
    (`higher_is_better=False`) base / ours. Ratios of medians taken at different moments swing with
    the load; pair ratios share each moment's load."""
    if len(ours) != len(base) or not ours:
        raise ValueError(f"need as many values of each side, at least one; got {len(ours)} and {len(base)}")
    ratios = [o / b if higher_is_better else b / o for o, b in zip(ours, base)]
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "pairs": len(ratios)}


def ratio_text(r: dict) -> str:
    """'1.23x (1.10-1.31, 4 pairs)'."""
    return f"{r['ratio']:.2f}x ({r['low']:.2f}-{r['high']:.2f}, {r['pairs']} pairs)"


def make_folder(root: Path, n: int, classes: int = 8, source: str = "generated") -> None:
    """`n` ImageNet-like JPEGs (q90, ~500x375, every fifth portrait) in root/train/<class>/.
    source "generated": smooth random colour fields, each channel drawn on its own, plus Gaussian
    pixel noise (sigma 8); "photos": crops of 60-100% of scikit-learn's two sample photographs
    (china.jpg, flower.jpg, 427x640) resized to the same sizes, real photographs as ImageNet's (their
    256x256 JPEGs decode as slowly as the generated ones: bench/docs/loader.md, loader section)."""
    rng = np.random.default_rng(0)
    from PIL import Image

    photos = _sample_photos() if source == "photos" else []
    for i in range(n):
        w, h = int(rng.integers(400, 520)), int(rng.integers(300, 400))
        if i % 5 == 0:
            w, h = h, w
        if photos:
            photo = photos[i % len(photos)]
            ph, pw = (int(d * rng.uniform(0.6, 1.0)) for d in photo.shape[:2])
            top, left = int(rng.integers(0, photo.shape[0] - ph + 1)), int(rng.integers(0, photo.shape[1] - pw + 1))
            img = Image.fromarray(np.ascontiguousarray(photo[top : top + ph, left : left + pw]))
            pixels = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC))
        else:
            small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            pixels = np.clip(np.asarray(img) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img_{i:05d}.JPEG", quality=90)


def _sample_photos() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        sys.exit("--source photos needs scikit-learn (pip install scikit-learn): its two sample photographs")
    return list(load_sample_images().images)


def write_results(path: str | Path, name: str, rows: list[dict]) -> None:
    """Append one benchmark's rows, with the environment, to a JSON-lines file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"bench": name, "env": environment(), "rows": rows}) + "\n")


def markdown_table(rows: list[dict]) -> str:
    """The rows under the union of their keys, in first-seen order (a missing cell is left empty)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = (f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(name: str, title: str, rows: list[dict], out: str = "") -> None:
    """Print a benchmark's title line (with the environment) and table; append them to `out`."""
    print(f"{title}; {environment()}")
    print(markdown_table(rows))
    if out:
        write_results(out, name, rows)
