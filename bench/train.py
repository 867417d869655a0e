"""Training throughput: `alexnet train` against the loop users run, pytorch/examples' ImageNet
`main.py -a alexnet` (bench/examples_peer.py), on the same JPEGs, interleaved.

    python bench/train.py [--images 640] [--batch 64] [--warmup 2] [--steps 6] [--rounds 3]
                          [--configs default|attribution|full|NAME,NAME] [--device auto] [--threads N] [--out FILE]

*peer*: bench/examples_peer.py on the JPEG folder: per-image Pillow decode, RandomResizedCrop(224),
flip, ToTensor, Normalize in DataLoader workers, torchvision's AlexNet, SGD; fp32 or bf16 autocast;
glibc's allocator as it comes, or told to keep freed memory through the environment
(GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647, which is what
`alexnet.machine.keep_freed_memory` asks of glibc with mallopt).
*alexnet*: the CLI, `alexnet train --variant paper` on a raw store prepared from the same JPEGs, with
the CPU's defaults (fp32, NCHW) or bf16 autocast + channels_last; 1000 classes on both sides.
Images/s of the steps after the warm-up ones, end to end: data, augmentation and the optimizer
included, validation and checkpoint writes left out on both sides (the project's from its step lines,
one a step, each of whose windows ends once the device has finished the step, as the peer's timing
ends on a torch.cuda.synchronize; the peer's from the end of its last warm-up step). Every configuration runs as its own
process once a round, in an order reversed every other round; each ratio is the median of the
per-round ratios, with their range. Both sides get the same thread count (--threads, default: as
OMP_NUM_THREADS, else every usable core) and sleeping waiting OpenMP threads, as `alexnet` sets them:
this compares the implementations, bench/threads.py the thread placement. The default set on a CPU
says where the lead over the peer comes from: the allocator setting (peer with and without it), bf16
+ channels_last, and the LRN's share of the step (the same run with --no-model.lrn).

On CUDA (--device auto finds it) the configurations are every one that runs there but the allocator
ones (glibc's setting is about the CPU's memory): the paper net at batch 128 in fp32 (TF32 off, as
`--amp off` is; and with `--train.tf32`, as the peer's fp32 is by PyTorch's default for convolutions),
bf16 with and without channels_last, without the LRN, and with --compile, against the peer in fp32 and
bf16, each as a share of the device's measured matmul rate. A configuration that fails is a row saying
so (with the first line of its error), and the others are measured: one crash does not end the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import interleave, make_folder, pair_ratio, ratio_text, report  # noqa: E402

KEEP_FREED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
STEP_LINE = re.compile(r"^epoch \d+ step \d+ .* data ([\d.]+) s  compute ([\d.]+) s\s*$")

# name: (side, settings). Project settings are `alexnet train` flags; peer ones examples_peer.py flags
# and whether glibc keeps freed memory.
CONFIGS = {
    "peer fp32": ("peer", {"amp": "off", "keep_freed": False}),
    "peer fp32 (keep freed)": ("peer", {"amp": "off", "keep_freed": True}),
    "peer bf16": ("peer", {"amp": "bf16", "keep_freed": False}),
    "peer bf16 (keep freed)": ("peer", {"amp": "bf16", "keep_freed": True}),
    "alexnet as it comes": ("alexnet", []),  # no flag: this machine's default precision, channels_last
    "alexnet as it comes compile": ("alexnet", ["--compile"]),
    "alexnet fp32": ("alexnet", ["--amp", "off", "--channels-last", "off"]),
    "alexnet fp32 channels_last": ("alexnet", ["--amp", "off", "--channels-last", "on"]),
    "alexnet bf16": ("alexnet", ["--amp", "bf16", "--channels-last", "off"]),
    "alexnet bf16 channels_last": ("alexnet", ["--amp", "bf16", "--channels-last", "on"]),
    "alexnet bf16 channels_last (no LRN)": ("alexnet", ["--amp", "bf16", "--channels-last", "on", "--no-model.lrn"]),
    "alexnet bf16 channels_last compile": ("alexnet", ["--amp", "bf16", "--channels-last", "on", "--compile"]),
    "alexnet fp32 channels_last tf32": ("alexnet", ["--amp", "off", "--channels-last", "on", "--train.tf32"]),
    # §3.3's LRN through the torch.library operator (alexnet/model/lrn_op.py) or as torch operations
    "alexnet fp32 channels_last (LRN op)": ("alexnet", ["--amp", "off", "--channels-last", "on"], {"ALEXNET_LRN_OP": "1"}),
    "alexnet fp32 channels_last (torch LRN)": ("alexnet", ["--amp", "off", "--channels-last", "on"],
                                               {"ALEXNET_LRN_OP": "0"}),
    "alexnet bf16 channels_last (LRN op)": ("alexnet", ["--amp", "bf16", "--channels-last", "on"], {"ALEXNET_LRN_OP": "1"}),
    "alexnet bf16 channels_last (torch LRN)": ("alexnet", ["--amp", "bf16", "--channels-last", "on"],
                                               {"ALEXNET_LRN_OP": "0"}),
}
CPU_FULL = ["peer fp32", "peer fp32 (keep freed)", "peer bf16", "peer bf16 (keep freed)", "alexnet fp32", "alexnet fp32 channels_last", "alexnet bf16", "alexnet bf16 channels_last",
            "alexnet bf16 channels_last (no LRN)"]
# where the lead over the peer comes from: the allocator setting, bf16 + channels_last, the LRN's share
CPU_ATTRIBUTION = ["peer fp32", "peer fp32 (keep freed)", "peer bf16 (keep freed)", "alexnet fp32",
                   "alexnet bf16 channels_last", "alexnet bf16 channels_last (no LRN)"]
# issue 28's figures: each side as it comes and in bf16, torch.compile against eager
CPU_SHARES = ["peer fp32", "peer bf16", "alexnet as it comes", "alexnet bf16 channels_last", "alexnet as it comes compile",
              "alexnet bf16 channels_last compile"]
CUDA_DEFAULT = ["peer fp32", "peer bf16", "alexnet fp32", "alexnet fp32 channels_last", "alexnet fp32 channels_last tf32",
                "alexnet bf16", "alexnet bf16 channels_last", "alexnet bf16 channels_last (no LRN)",
                "alexnet bf16 channels_last compile"]

# (ours, baseline, what the ratio says): a row whenever both were measured
COMPARISONS = [
    ("alexnet as it comes", "peer fp32", "as each comes (peer: fp32, glibc's allocator)"),
    ("alexnet as it comes compile", "alexnet as it comes", "what --compile adds, as it comes"),
    ("alexnet fp32", "peer fp32", "as each comes (peer: glibc's allocator)"),
    ("alexnet fp32", "peer fp32 (keep freed)", "fp32, allocator setting on both sides"),
    ("alexnet bf16 channels_last", "peer bf16", "bf16"),
    ("alexnet bf16 channels_last", "peer bf16 (keep freed)", "bf16, allocator setting on both sides"),
    ("alexnet bf16 channels_last", "peer fp32 (keep freed)", "each at its best precision, allocator on both"),
    ("alexnet bf16 channels_last compile", "peer bf16", "bf16, --compile"),
    ("alexnet bf16 channels_last compile", "alexnet bf16 channels_last", "what --compile adds"),
    ("peer fp32 (keep freed)", "peer fp32", "the allocator setting, peer fp32"),
    ("peer bf16 (keep freed)", "peer bf16", "the allocator setting, peer bf16"),
    ("alexnet bf16", "alexnet fp32", "bf16 autocast, NCHW"),
    ("alexnet fp32 channels_last", "alexnet fp32", "channels_last, fp32"),
    ("alexnet fp32", "alexnet fp32 (torch update)", "the update rule's kernel, fp32"),
    ("alexnet bf16 channels_last", "alexnet bf16", "channels_last, bf16"),
    ("alexnet bf16 channels_last", "alexnet fp32", "bf16 + channels_last"),
    ("alexnet fp32 channels_last tf32", "alexnet fp32 channels_last", "TF32 tensor cores, fp32"),
    ("alexnet fp32 channels_last tf32", "peer fp32", "fp32 with TF32 on both sides (the peer's convolutions)"),
    ("alexnet fp32 channels_last (LRN op)", "alexnet fp32 channels_last (torch LRN)", "the LRN operator, fp32"),
    ("alexnet bf16 channels_last (LRN op)", "alexnet bf16 channels_last (torch LRN)", "the LRN operator, bf16"),
]


def step_lines_rate(log: str, warmup: int, batch: int) -> float:
    """Images/s from a run's step lines (one a step, `--train.log-every 1`), the first `warmup` left out."""
    seconds = [float(m[1]) + float(m[2]) for m in map(STEP_LINE.match, log.splitlines()) if m]
    timed = seconds[warmup:]
    if not timed or sum(timed) <= 0:
        raise RuntimeError(f"no step lines after {warmup} warm-up steps in the run's log:\n{log[-2000:]}")
    return len(timed) * batch / sum(timed)


def child_env(threads: int, keep_freed: bool | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ALEXNET_THREADS", "MKL_NUM_THREADS")}
    env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if keep_freed:
        env["GLIBC_TUNABLES"] = KEEP_FREED
    return env


def run_alexnet(store: Path, scratch: Path, flags: list[str], a: argparse.Namespace, env: dict | None = None) -> float:
    out = scratch / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "alexnet.cli", "train", "--data", str(store), "--out", str(out), "--variant", "paper",
           "--model.num-classes", "1000", "--batch-size", str(a.batch), "--max-steps", str(a.warmup + a.steps),
           "--train.log-every", "1", "--schedule", "step", "--device", a.device, "--quiet", *flags]
    done = subprocess.run(cmd, env={**child_env(a.threads), **(env or {})}, capture_output=True, text=True)
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    shutil.rmtree(out, ignore_errors=True)  # the paper net's checkpoint is ~0.5 GB
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return step_lines_rate(log, a.warmup, a.batch)


def run_peer(src: Path, settings: dict, a: argparse.Namespace) -> float:
    cmd = [sys.executable, str(HERE / "examples_peer.py"), str(src), "--steps", str(a.steps), "--warmup",
           str(a.warmup), "--batch", str(a.batch), "--amp", settings["amp"], "--workers", str(a.workers),
           "--device", a.device]
    done = subprocess.run(cmd, env=child_env(a.threads, settings["keep_freed"]), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images/s"]


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def summarise(rates: dict[str, list[float]], flop_per_image: float = 0.0, matmul: dict | None = None,
              failures: dict[str, str] | None = None, default_precision: str = "fp32") -> list[dict]:
    """One row per configuration (median images/s, share of the matmul ceiling where measured), then one
    per comparison whose two sides were both measured (median and range of the per-round ratios). A
    round that failed is NaN in `rates`, its reason in `failures`: the row says how many rounds failed
    and why, and the comparisons use the rounds both sides completed. A configuration "as it comes"
    runs in `default_precision`, what `--amp auto` resolves to on this machine."""
    import statistics

    failures = failures or {}
    rows = []
    for name, values in rates.items():
        good = finite(values)
        if not good:
            rows.append({"measure": name, "images/s": float("nan"), "range": "", "vs": "",
                         "ratio": f"failed: {failures.get(name, 'no result')}"})
            continue
        row = {"measure": name, "images/s": statistics.median(good),
               "range": f"{min(good):.1f}-{max(good):.1f}", "vs": "", "ratio": ""}
        precision = default_precision if "as it comes" in name else "bf16" if "bf16" in name else "fp32"
        if matmul and precision in matmul and not name.startswith("peer"):
            rate = matmul[precision]
            row["vs"] = f"{rate / 1e12:.2f} TFLOP/s {precision} matmul"
            row["ratio"] = f"{statistics.median(good) * flop_per_image / rate:.1%} of it"
        if len(good) < len(values):
            row["ratio"] = (row["ratio"] + "; " if row["ratio"] else "") + \
                f"{len(values) - len(good)} of {len(values)} rounds failed: {failures.get(name, '')}"
        rows.append(row)
    for ours, base, what in COMPARISONS:
        r = paired(rates.get(ours, []), rates.get(base, []))
        if r is not None:
            rows.append({"measure": f"{ours} / {base}: {what}", "images/s": r["ours"], "range": "",
                         "vs": f"{r['base']:.1f}", "ratio": ratio_text(r)})
    # rate without / rate with = time with / time without, so 1 - 1/ratio is the LRN's share of the step
    r = paired(rates.get("alexnet bf16 channels_last (no LRN)", []), rates.get("alexnet bf16 channels_last", []))
    if r is not None:
        share = [1 - 1 / x for x in (r["ratio"], r["low"], r["high"])]
        rows.append({"measure": "LRN's share of the bf16 channels_last step (1 - rate with / rate without)",
                     "images/s": float("nan"), "range": "", "vs": "",
                     "ratio": f"{share[0]:.0%} ({share[1]:.0%}-{share[2]:.0%})"})
    return rows


def paired(ours: list[float], base: list[float]) -> dict | None:
    """`pair_ratio` over the rounds both sides completed, with both sides' medians ("ours", "base");
    None when there is no such round."""
    import statistics

    pairs = [(o, b) for o, b in zip(ours, base) if math.isfinite(o) and math.isfinite(b)]
    if not pairs:
        return None
    r = pair_ratio([o for o, _ in pairs], [b for _, b in pairs])
    return {**r, "ours": statistics.median(o for o, _ in pairs), "base": statistics.median(b for _, b in pairs)}


def failing(name: str, run: Callable[[], float], failures: dict[str, str]) -> Callable[[], float]:
    """`run`, printing its rate; when it raises, the last line of why (the failed command's own last
    error line) goes into `failures` and the round's rate is NaN: one configuration that crashes is a
    row saying so, not the end of the benchmark."""
    def logged() -> float:
        try:
            rate = run()
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            failures[name] = (lines[-1] if lines else type(e).__name__)[:200]
            print(f"  {name}: failed: {failures[name]}", flush=True)
            return float("nan")
        print(f"  {name}: {rate:.1f} img/s", flush=True)
        return rate
    return logged


def pick_configs(spec: str, cuda: bool) -> list[str]:
    names = {"default": CUDA_DEFAULT if cuda else CPU_ATTRIBUTION, "attribution": CPU_ATTRIBUTION, "cuda": CUDA_DEFAULT,
             "shares": CPU_SHARES,
             "full": CPU_FULL + ([c for c in CUDA_DEFAULT if c not in CPU_FULL] if cuda else [])}
    chosen = names.get(spec) or [s.strip() for s in spec.split(",")]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"bench/train.py: error: unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    return chosen


def measure_matmul(device: str) -> dict:
    import torch

    from ceiling import matmul_rate

    dev = torch.device(device)
    sizes = (4096, 8192) if dev.type == "cuda" else (1024, 2048)
    return {name: matmul_rate(dtype, dev, sizes, 3)[0] for name, dtype in
            (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=640, help="generated JPEGs (~500x375; at least enough for "
                                                           "one epoch longer than the run)")
    p.add_argument("--batch", type=int, default=0, help="default: 64 on CPU, 128 on CUDA")
    p.add_argument("--warmup", type=int, default=2, help="steps left out at the start of each run")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default="default", help="default, attribution, cuda, full, or names from CONFIGS, "
                                                        "comma-separated")
    p.add_argument("--threads", type=int, default=0, help="both sides' thread count (default: OMP_NUM_THREADS, "
                                                          "else every usable core)")
    p.add_argument("--workers", type=int, default=0, help="the peer's DataLoader workers (default: min(4, cores))")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    a = p.parse_args()
    import torch

    from alexnet.machine import fixed_thread_count, usable_cores

    a.device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    cuda = a.device.startswith("cuda")
    a.batch = a.batch or (128 if cuda else 64)
    # every timed step inside the first epoch on both sides: no epoch's end (the project's checkpoint,
    # the peer's new workers) between them, and the project logs every step but an epoch's last
    a.images = max(a.images, (a.warmup + a.steps + 1) * a.batch)
    a.threads = a.threads or fixed_thread_count() or usable_cores()
    a.workers = a.workers or min(4, usable_cores())
    chosen = pick_configs(a.configs, cuda)
    with tempfile.TemporaryDirectory() as tmp:
        src, store, scratch = Path(tmp) / "src", Path(tmp) / "store", Path(tmp) / "scratch"
        make_folder(src, a.images)
        subprocess.run([sys.executable, "-m", "alexnet.cli", "prepare", str(src), str(store), "--quiet"],
                       env=child_env(a.threads), check=True, stdout=subprocess.DEVNULL)
        scratch.mkdir()

        failures: dict[str, str] = {}

        def measure(name: str):
            side, settings, *env = CONFIGS[name]
            run = (lambda: run_peer(src, settings, a)) if side == "peer" else \
                (lambda: run_alexnet(store, scratch, settings, a, *env))
            return failing(name, run, failures)

        rates = interleave({name: measure(name) for name in chosen}, a.rounds)
    matmul = measure_matmul(a.device)
    from ceiling import training_flop_per_image

    from alexnet.runtime import resolve_device, use_bf16_autocast

    default = "bf16" if use_bf16_autocast("auto", resolve_device(a.device)) else "fp32"
    rows = summarise(rates, training_flop_per_image(), matmul, failures, default)
    report("train", f"training images/s, paper net, batch {a.batch}, {a.warmup}+{a.steps} steps, {a.images} JPEGs, "
           f"{a.device}, {a.threads} threads, peer workers {a.workers}, {a.rounds} interleaved rounds", rows, a.out)


if __name__ == "__main__":
    main()
