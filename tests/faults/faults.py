"""Fault injection: kill, interrupt, race and starve `alexnet train` and `alexnet prepare`, then resume
and compare with an uninterrupted run, bit for bit. Apart from the unit tests (which cover each fault
once); this is the randomized, repeated version (issue 10).

    OMP_NUM_THREADS=1 nice -n 10 python tests/faults/faults.py [--rounds N] [--seed S]
                                                        [--only train|prepare|writers|disk|shared] [--no-tmpfs]

train    SIGKILL / SIGINT / SIGTERM of `alexnet train` (the `tiny` net on a small demo store) at random
         moments and the instant a checkpoint's .tmp appears, up to three kills in a row; and, in a
         `python -c` child, a death, a signal or ENOSPC at an exact call: before/after each
         save_checkpoint (so between best.pt and last.pt), inside each checkpoint's write (half the
         bytes written), before/after each os.replace. Then `train --resume RUN` until finished; last.pt
         and best.pt must equal the uninterrupted run's in every weight and optimizer buffer.
prepare  the same signals at random moments on `prepare --workers 2` (its workers must not outlive it,
         read from /proc); and deaths before/after every rename, unlink and rmdir of a child prepare,
         finalise and --overwrite included. Then the same command until it succeeds; the store must
         equal an uninterrupted prepare's byte for byte.
writers  two prepares into one DST, two trains into one --out, two resumes of one run, and two of each
         taking over one stale lock at once: one succeeds, the other exits 2 in one line.
disk     prepare and train on a small tmpfs filled to leave a random amount of space (real ENOSPC;
         where mounting is not allowed, or with --no-tmpfs, an ENOSPC raised at an exact call): one line,
         exit 2, the earlier checkpoint / the progress kept, then the same result once space is freed.
shared   another user of a folder the commands write into (tests/faults/faults_shared.py): symbolic links to a
         victim's file planted at every predictable temporary name, a FIFO and /dev/null at the output,
         the output naming an input (by name and by hard link), SIGINT/SIGTERM during a write there:
         nothing outside written, nothing replaced, no temporary file left, one line and exit 2.

Prints each fault and a summary (faults injected; survived = resumed to the identical result; data
lost = a mismatch, a half-written file under its real name, a process or lock left behind; misbehaved
= a wrong exit code, a traceback, more than one line) and appends it, with the environment, to
bench/results/faults.jsonl. Default size: about 5-8 min on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "bench"))  # common.environment: the machine line written with every result
sys.path.insert(0, str(REPO / "src"))

import faults_prepare  # noqa: E402
import faults_shared  # noqa: E402
import faults_train  # noqa: E402
from common import environment  # noqa: E402
from faults_lib import (PREPARE_SIZE, TRAIN_FLAGS, Tally, child, cli, run_proc, store_diff, tree_files,  # noqa: E402
                        value_diff)


class Workspace:
    """A temporary folder with the sources, stores and reference results every fault is compared
    with, each made when first needed."""

    def __init__(self, root: Path, tally: Tally):
        self.root, self.tally, self._n = root, tally, 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        folder = self.root / f"{self._n:03d}-{name}"
        folder.mkdir()
        return folder

    def _ok(self, argv) -> float:
        o = run_proc(argv)
        if o.rc != 0:
            raise SystemExit(f"faults: setup failed: {' '.join(map(str, argv))}\n{o.out}\n{o.err}")
        return o.seconds

    def _demo(self, name: str, per_class: int, seed: int) -> Path:
        path = self.root / name
        self._ok(cli("demo-data", path, "--classes", 10, "--train-per-class", per_class, "--val-per-class", 10,
                     "--seed", seed))
        return path

    @functools.cached_property
    def src_small(self) -> Path:  # 600 train + 100 val images: the training store, the disk and child prepares
        return self._demo("src-small", 60, 1)

    @functools.cached_property
    def src_big(self) -> Path:  # 1,500 + 100: prepares long enough to be killed at random
        return self._demo("src-big", 150, 3)

    @functools.cached_property
    def store(self) -> Path:
        self._ok(cli("prepare", self.src_small, self.root / "store", "--size", PREPARE_SIZE, "--quiet"))
        return self.root / "store"

    @functools.cached_property
    def old_store(self) -> Path:  # what --overwrite replaces
        self._ok(cli("prepare", self.src_small, self.root / "old-store", "--size", 64, "--quiet"))
        return self.root / "old-store"

    @functools.cached_property
    def ref_small(self) -> dict:
        dst = self.root / "ref-small-jpeg"
        self._ok(cli("prepare", self.src_small, dst, "--size", PREPARE_SIZE, "--quiet", "--format", "jpeg"))
        return {"raw": tree_files(self.store), "jpeg": tree_files(dst)}

    @functools.cached_property
    def ref_big(self) -> dict:
        out, self.t_prepare = {}, {}
        for fmt in ("raw", "jpeg"):
            dst = self.root / f"ref-big-{fmt}"
            self.t_prepare[fmt] = self._ok(cli("prepare", self.src_big, dst, "--size", PREPARE_SIZE, "--workers", 2,
                                               "--quiet", "--format", fmt))
            out[fmt] = tree_files(dst)
        return out

    @functools.cached_property
    def ref_run(self) -> Path:
        out = self.root / "ref-run"
        self.t_train = self._ok(cli("train", "--data", self.store, "--out", out, *TRAIN_FLAGS))
        errs = [json.loads(x)["val_top1_err"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        better = sum(b < a for a, b in zip([1.0] + errs, errs))
        self.tally.note(f"reference run: {self.t_train:.1f} s, val top-1 error by epoch {errs} "
                        f"({better} improving epochs write best.pt)")
        return out

    @functools.cached_property
    def train_events(self) -> list:
        """Every save, checkpoint write and rename of an uninterrupted run (from a counting child, whose
        result must equal the reference run's: the harness changes nothing)."""
        folder = self.fresh("count-train")
        spec = {"argv": ["train", "--data", str(self.store), "--out", str(folder / "run"), *TRAIN_FLAGS],
                "target": None, "count": str(folder / "events.json")}
        self._ok(child("train", spec))
        diff = faults_train.run_diff(folder / "run", self.ref_run)
        if diff:
            raise SystemExit(f"faults: the counting child's run differs from the CLI's: {diff[:3]}")
        return json.loads((folder / "events.json").read_text())

    @functools.cached_property
    def prepare_events(self) -> dict:
        events, self.ref_child = {}, {}
        for fmt in ("raw", "jpeg"):
            for overwrite in (False, True):
                events[(fmt, overwrite)], files = faults_prepare.count_events(self, fmt, overwrite)
                if overwrite and files != self.ref_child[fmt]:
                    raise SystemExit("faults: --overwrite wrote another store than a fresh prepare")
                self.ref_child[fmt] = files
        return events

    def self_check(self, families: list[str]) -> None:
        """The comparisons can fail: one changed byte of a store, one momentum value one ulp off."""
        import torch

        from alexnet.model.checkpoint import load_checkpoint

        files = dict(self.ref_small["raw"])
        key = next(k for k in files if k.endswith("images.npy"))
        files[key] = files[key][:-1] + bytes([files[key][-1] ^ 1])
        assert store_diff(self.store, files), "store_diff misses a changed byte"
        if {"train", "writers", "disk"} & set(families):
            a = load_checkpoint(self.ref_run / "last.pt")
            b = load_checkpoint(self.ref_run / "last.pt")
            buf = next(iter(b["optimizer"]["state"].values()))["momentum_buffer"]
            first = (0,) * buf.dim()  # (channels_last buffers have no flat view)
            buf[first] = torch.nextafter(buf[first], torch.tensor(1e9))
            assert value_diff(a, b), "value_diff misses a momentum value one ulp off"


# ---------------------------------------------------------------------------------------------------
# The families
# ---------------------------------------------------------------------------------------------------


def run_train(ws, tally, rng, chains: int = 8, exact: int = 10) -> None:
    ws.ref_run
    print(f"train: {chains} chains of random kills", flush=True)
    for i in range(chains):
        faults_train.random_chain(ws, tally, rng, f"train-chain{i}")
    always, others = faults_train.exact_points(ws)
    points = always + rng.sample(others, min(exact, len(others)))
    print(f"train: {len(points)} exact faults in a child (of {len(always) + len(others)} possible)", flush=True)
    for i, p in enumerate(points):
        faults_train.exact_fault(ws, tally, p, f"train-exact{i}")


def run_prepare(ws, tally, rng, chains: int = 8, exact_per_kind: int = 3) -> None:
    ws.ref_big
    print(f"prepare: {chains} chains of random kills", flush=True)
    for i in range(chains):
        faults_prepare.random_chain(ws, tally, rng, f"prepare-chain{i}")
    ws.prepare_events
    points = []
    for fmt in ("raw", "jpeg"):
        for overwrite in (False, True):
            always, others = faults_prepare.exact_points(ws, fmt, overwrite)
            points += always + rng.sample(others, min(exact_per_kind, len(others)))
    print(f"prepare: {len(points)} exact deaths in a child", flush=True)
    for i, p in enumerate(points):
        faults_prepare.exact_fault(ws, tally, p, f"prepare-exact{i}")


def run_writers(ws, tally, rng) -> None:
    ws.ref_run, ws.ref_big, ws.ref_small
    print("writers", flush=True)
    for i in range(2):
        faults_train.two_trainers(ws, tally, rng, f"two-trains{i}", resume=False)
    faults_train.two_trainers(ws, tally, rng, "two-resumes", resume=True)
    faults_train.stale_lock_race(ws, tally, "train-stale-race")
    for i in range(2):
        faults_prepare.two_preparers(ws, tally, rng, f"two-prepares{i}", stale=False)
    faults_prepare.two_preparers(ws, tally, rng, "prepare-stale-race", stale=True)


def run_disk(ws, tally, rng, use_tmpfs: bool, n: int = 3) -> None:
    ws.ref_run, ws.ref_small, ws.prepare_events
    print("disk", flush=True)
    mounted = use_tmpfs
    for i in range(n):
        mounted = mounted and faults_train.full_disk(ws, tally, rng, f"train-disk{i}")
        mounted = mounted and faults_prepare.full_disk(ws, tally, rng, f"prepare-disk{i}", i % 2 == 1)
    if mounted:
        return
    tally.note("no tmpfs (not allowed here, or --no-tmpfs): ENOSPC raised at exact calls instead")
    train_points = [p for p in faults_train.exact_points(ws)[1] if p["how"] == "enospc"]
    for i, p in enumerate(rng.sample(train_points, min(n, len(train_points)))):
        faults_train.exact_fault(ws, tally, p, f"train-enospc{i}", family="disk")
    for i in range(n):
        fmt = rng.choice(["raw", "jpeg"])
        _, others = faults_prepare.exact_points(ws, fmt, False)
        p = dict(rng.choice([x for x in others if x["when"] == "before" and "replace" in x["kind"]]))
        p.update(how="enospc", kind=p["kind"].replace(p["how"], "ENOSPC", 1))
        faults_prepare.exact_fault(ws, tally, p, f"prepare-enospc{i}", family="disk")


def run_shared(ws, tally, rng, signals: int = 4) -> None:
    ws.ref_run
    print("shared", flush=True)
    faults_shared.planted_links(ws, tally, "shared-links")
    faults_shared.special_outputs(ws, tally, "shared-special")
    faults_shared.output_is_input(ws, tally, "shared-same")
    for i in range(signals):
        faults_shared.signal_during_write(ws, tally, rng, f"shared-signal{i}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="repeat every family this many times")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random moments (default: time)")
    parser.add_argument("--only", choices=["train", "prepare", "writers", "disk", "shared"], action="append")
    parser.add_argument("--no-tmpfs", action="store_true", help="fill the disk by raising ENOSPC, not with tmpfs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "faults.jsonl"))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # a shell starts a background job with SIGINT ignored, and children inherit that: a handler here
    # makes every child start with the default action, as in a terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    rng = random.Random(seed)
    families = args.only or ["train", "prepare", "writers", "disk", "shared"]
    tally = Tally()
    root = Path(tempfile.mkdtemp(prefix="alexnet-faults-"))
    ws = Workspace(root, tally)
    start = time.time()
    print(f"faults: seed {seed}, {args.rounds} round(s) of {', '.join(families)}; work in {root}", flush=True)
    try:
        ws.self_check(families)
        for r in range(args.rounds):
            for fam in families:
                if fam == "train":
                    run_train(ws, tally, rng)
                elif fam == "prepare":
                    run_prepare(ws, tally, rng)
                elif fam == "writers":
                    run_writers(ws, tally, rng)
                elif fam == "shared":
                    run_shared(ws, tally, rng)
                else:
                    run_disk(ws, tally, rng, not args.no_tmpfs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summary = tally.summary()
    minutes = (time.time() - start) / 60
    env = environment()
    print(f"\nfaults: seed {seed}, {args.rounds} round(s), {minutes:.1f} min; {env}")
    print("| family | injected | survived | data lost | misbehaved |\n|---|---|---|---|---|")
    for fam, c in summary.items():
        print(f"| {fam} | {c['injected']} | {c['survived']} | {c['data_lost']} | {c['misbehaved']} |")
    bad = [f for f in tally.faults if f.lost or f.misbehaved]
    for f in bad:
        print(f"- [{f.family}] {f.kind}: " + "; ".join(f.lost + f.misbehaved))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"bench": "faults", "env": env, "seed": seed, "rounds": args.rounds, "families": families,
                            "minutes": round(minutes, 2), "summary": summary,
                            "failures": [{"family": x.family, "kind": x.kind, "lost": x.lost,
                                          "misbehaved": x.misbehaved} for x in bad],
                            "notes": tally.notes}) + "\n")
    return 1 if summary["total"]["data_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
