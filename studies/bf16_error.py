"""Does bf16 autocast train to float32's error? The evidence for `train.amp = "auto"` (bf16 on CPUs
with AMX and on CUDA, alexnet.runtime): the `small` variant trained with its recipe on the demo data
(as `alexnet demo` does: 10 classes, 40 epochs) and on the UCI digits (10 epochs, as studies/digits.py),
each in float32 and in bf16 autocast, over several seeds; the validation error of last.pt, centre
patch and ten patches (§4.1). bf16 is a sound default where its mean error lies within the seeds'
spread of float32's (|difference of means| <= 2 standard errors of the difference), on both data sets.

    python studies/bf16_error.py [--seeds 0,1,2] [--demo-epochs 40] [--digits-epochs 10] [--work DIR] [--out FILE]

bf16 is asked for (`train.amp=bf16`), so the numbers are the same arithmetic on any CPU with bf16
support; only the time differs (slow without AMX: say which CPU in the notes).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # common.report
from common import report  # noqa: E402
from digits import prepare_digits  # noqa: E402


def prepare_demo(work: Path) -> Path:
    """The demo data as `alexnet demo` makes and prepares it (made once under `work`, reused)."""
    from alexnet.data.demo_images import make_demo_data
    from alexnet.data.prepare import prepare
    from alexnet.cli.demo import DEMO_CLASSES, DEMO_SIZE, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS

    store = work / "demo-store"
    if not (store / "meta.json").exists():
        if not (work / "demo-src" / "LOC_synset_mapping.txt").exists():
            make_demo_data(work / "demo-src", classes=DEMO_CLASSES, train_per_class=DEMO_TRAIN_PER_CLASS,
                           val_per_class=DEMO_VAL_PER_CLASS, progress=False)
        prepare(work / "demo-src", store, size=DEMO_SIZE, progress=False, log=lambda *a: None)
    return store


def train_and_evaluate(store: Path, epochs: int, seed: int, amp: str, out: Path) -> dict:
    from alexnet.config import resolve
    from alexnet.evaluate.error_rates import evaluate
    from alexnet.train.run import fit

    config = resolve({"variant": "small", "train": {"epochs": epochs, "seed": seed, "amp": amp, "device": "cpu"}})
    start = time.perf_counter()
    result = fit(config, store, out, progress=False, echo=False)
    seconds = time.perf_counter() - start
    if result["status"] != "finished":
        raise SystemExit(f"training stopped: {result['status']}")
    errors = {v: evaluate([out / "last.pt"], store, "val", v, device="cpu", progress=False)["top1_err"] for v in (1, 10)}
    return {"err 1 patch": errors[1], "err 10 patches": errors[10], "train s": seconds}


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        for column in ("err 1 patch", "err 10 patches"):
            by_amp = {amp: [r[column] for r in rows if r["data"] == data and r["amp"] == amp] for amp in ("off", "bf16")}
            (m32, se32), (m16, se16) = spread(by_amp["off"]), spread(by_amp["bf16"])
            gap = m16 - m32
            bound = 2 * math.sqrt(se32 ** 2 + se16 ** 2)
            out.append({"data": data, "error": column, "fp32 mean": m32, "fp32 min-max": f"{min(by_amp['off']):.4f}-{max(by_amp['off']):.4f}",
                        "bf16 mean": m16, "bf16 min-max": f"{min(by_amp['bf16']):.4f}-{max(by_amp['bf16']):.4f}",
                        "bf16 - fp32": gap, "2 s.e.": bound, "within spread": abs(gap) <= bound})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--demo-epochs", type=int, default=40, help="the demo's (alexnet.cli.demo.DEMO_EPOCHS)")
    p.add_argument("--digits-epochs", type=int, default=10, help="as studies/digits.py")
    p.add_argument("--data", default="demo,digits", help="demo, digits or both")
    p.add_argument("--work", default="", help="a folder for the data and runs (default: a temporary one)")
    p.add_argument("--out", default="", help="append the rows to this JSON-lines file")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for data in args.data.split(","):
            store, epochs = {"demo": (prepare_demo, args.demo_epochs), "digits": (prepare_digits, args.digits_epochs)}[data]
            store = store(work / data)
            for seed in seeds:
                for amp in (("off", "bf16") if seed % 2 == 0 else ("bf16", "off")):  # order alternates
                    row = {"data": data, "epochs": epochs, "seed": seed, "amp": amp,
                           **train_and_evaluate(store, epochs, seed, amp, work / "runs" / f"{data}-{seed}-{amp}")}
                    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                    rows.append(row)
        report("bf16_error", "bf16 autocast against float32: validation error of `small` (studies/bf16_error.py)",
               rows, args.out)
        report("bf16_error_summary", "mean error by precision, and whether bf16 is within the seeds' spread", summary(rows),
               args.out)


if __name__ == "__main__":
    main()
