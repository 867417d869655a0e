"""Thread placement: `alexnet` commands with the project's own choice of threads against the best of
OMP_NUM_THREADS=1 and =2 set by hand, on an idle machine and beside a CPU hog (`python -c "while True:
pass"`), as a user on a busy laptop or a shared server runs them (issue: "Threads fight").

Each command runs as a fresh process (start-up included, as a user sees it), every setting once a
round, in the order auto, 1, 2 and reversed every other round (2, 1, auto), so that drift in the
machine's load hits every setting alike. The table gives the median seconds of each setting, the
thread counts auto chose (recorded by the same probe the CLI makes, at its start), and each hand
setting's time over auto's as the median of the per-round ratios with their range; "best by hand /
auto" takes the hand setting with the lower median (>= 0.95 is the target: auto never more than 5%
slower than the best hand setting).

    python bench/threads.py                 # train, eval, features, prepare; idle and busy; 5 rounds
    python bench/threads.py --quick         # train only, 2 rounds
    python bench/threads.py --only tests --rounds 1   # the test suite (about 4 min a run on 2 cores)

The test suite's "auto" is `python -m pytest` as the README runs it (tests/conftest.py plans the
threads as the CLI does); its count is not recorded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, pair_ratio, report  # noqa: E402

SETTINGS = {"auto": {}, "OMP=1": {"OMP_NUM_THREADS": "1"}, "OMP=2": {"OMP_NUM_THREADS": "2"}}


def alexnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "alexnet.cli", *args]


# The `alexnet` command (alexnet.__main__.run) with its thread plan written to a file: the first CPU
# sample before the CLI's imports, and main's own configure_process call, wrapped to record its count
# (main must make the call itself: a count already in OMP_NUM_THREADS would read as the user's).
RECORDING = ("import os, sys\nfrom alexnet import machine\nstarted = machine.read_cpu_sample()\n"
             "real = machine.configure_process\n"
             "def configure(*args, **kwargs):\n    n = real(*args, **kwargs)\n"
             "    open(os.environ['THREADS_BENCH_RECORD'], 'a').write(f'{n}\\n')\n    return n\n"
             "machine.configure_process = configure\nfrom alexnet.cli.commands import main\n"
             "sys.exit(main(sys.argv[1:], started=started))")


def recording(cmd: list[str]) -> list[str]:
    assert cmd[1:3] == ["-m", "alexnet.cli"]
    return [cmd[0], "-c", RECORDING, *cmd[3:]]


def make_store(root: Path) -> tuple[Path, Path, Path]:
    """The demo images (10 classes x 260 + 50), a store at 72 px, and a short `small` run to evaluate."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src, store, run = root / "src", root / "store", root / "run"
    subprocess.run(alexnet("demo-data", str(src), "--train-per-class", "260", "--val-per-class", "50"),
                   env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(alexnet("prepare", str(src), str(store), "--size", "72", "--quiet"), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(alexnet("train", "--data", str(store), "--variant", "small", "--out", str(run), "--epochs", "1",
                           "--quiet"), env=env, check=True, stdout=subprocess.DEVNULL)
    return src, store, run


REPO = Path(__file__).resolve().parent.parent


def commands(src: Path, store: Path, run: Path, scratch: Path) -> dict[str, list[str]]:
    return {
        # the demo's training (small, batch 128) for 60 steps: about 3 epochs of the demo data
        "train": alexnet("train", "--data", str(store), "--variant", "small", "--out", str(scratch / "train"),
                         "--max-steps", "60", "--epochs", "10", "--quiet"),
        "eval": alexnet("eval", str(run), "--crops", "10", "--quiet"),
        "features": alexnet("features", str(run), "--out", str(scratch / "f.npy"), "--quiet"),
        "prepare": alexnet("prepare", str(src), str(scratch / "store"), "--size", "72", "--quiet"),
        "tests": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests")],
    }


def timed(cmd: list[str], env: dict, scratch: Path) -> float:
    for leftover in ("train", "store", "store.partial", "f.npy"):
        shutil.rmtree(scratch / leftover, ignore_errors=True) if (scratch / leftover).is_dir() else \
            (scratch / leftover).unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(name: str, cmd: list[str], rounds: int, scratch: Path, busy: bool) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ALEXNET_THREADS", "MKL_NUM_THREADS")}
    record = scratch / "auto-threads.txt"
    record.unlink(missing_ok=True)
    recorded = recording(cmd) if name != "tests" else cmd
    runs = {setting: (recorded if setting == "auto" else cmd, {**base, **extra, "THREADS_BENCH_RECORD": str(record)})
            for setting, extra in SETTINGS.items()}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        times = interleave({s: (lambda c=c, e=e: timed(c, e, scratch)) for s, (c, e) in runs.items()}, rounds)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return summarise(name, busy, times, record.read_text().split() if record.exists() else [])


def summarise(name: str, busy: bool, times: dict[str, list[float]], chosen: list[str]) -> dict:
    """Median seconds per setting and each hand setting against auto (per-round ratios: > 1 where auto
    was faster); "best by hand / auto" uses the hand setting with the lower median."""
    med = {s: statistics.median(t) for s, t in times.items()}
    hand = {s: pair_ratio(times["auto"], times[s], higher_is_better=False) for s in times if s != "auto"}
    best = min(hand, key=lambda s: med[s])
    counts = sorted(set(chosen), key=int)
    row = {"command": name, "machine": "busy (1 hog)" if busy else "idle", **{f"{s} s": v for s, v in med.items()},
           "auto chose": "/".join(counts) if counts else "?"}
    for s, r in hand.items():
        row[f"{s} / auto"] = f"{r['ratio']:.2f} ({r['low']:.2f}-{r['high']:.2f})"
    row["best by hand / auto"] = hand[best]["ratio"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="train only, 2 rounds")
    ap.add_argument("--only", nargs="+", help="commands to time (train eval features prepare; tests only when named)")
    ap.add_argument("--machine", choices=("idle", "busy", "both"), default="both",
                    help="time beside nothing, beside a CPU hog, or both")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "threads.jsonl"))
    args = ap.parse_args()
    only = ["train"] if args.quick else args.only
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src, store, run = make_store(root)
        scratch = root / "scratch"
        scratch.mkdir()
        rows = []
        for name, cmd in commands(src, store, run, scratch).items():
            if (only and name not in only) or (not only and name == "tests"):
                continue
            for busy in {"idle": (False,), "busy": (True,), "both": (False, True)}[args.machine]:
                rows.append(measure(name, cmd, rounds, scratch, busy))
                print(rows[-1], flush=True)
    report("threads", f"alexnet commands, threads chosen by the project vs by hand, {os.cpu_count()} cores, "
           f"{rounds} interleaved rounds (ratios: median of the rounds, range in brackets)", rows, args.out)


if __name__ == "__main__":
    main()
