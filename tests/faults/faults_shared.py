"""A shared folder under faults (tests/faults/faults.py, family `shared`): another local user (uid 2002 where
this runs as root) who can write into the folder a command writes to. Symbolic links planted at every
temporary name a writer could have predicted, a FIFO or a device at the output, the output naming
the command's own input, and SIGINT / SIGTERM at random moments of a write into that folder.

Data lost: the victim's file changed, an input changed, a FIFO or device replaced, a temporary file
left. Misbehaved: a refusal that is not one line with exit 2, a wrong exit code after a signal, a
traceback."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
from faults_lib import Fault, Outcome, Tally, cli, expected_codes, one_line_error, run_proc

OTHER_UID = 2002
VICTIM_TEXT = b"the victim's own file: nothing may write here\n"
TEMP_SUFFIXES = (".tmp", ".partial", ".partial.onnx", ".partial.png")


def _folder(ws, name: str) -> tuple[Path, Path]:
    """(a folder everyone may write into, without the sticky bit that would let the kernel refuse the
    links; the victim's file elsewhere)."""
    root = ws.fresh(name)
    shared = root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim = root / "home" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM_TEXT)
    return shared, victim


def _plant(link: Path, target: Path) -> None:
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, OTHER_UID, OTHER_UID)


def _outputs(ws, run: Path, shared: Path) -> list[tuple[str, list, Path]]:
    """(what, argv, output) of the commands that write one file."""
    return [
        ("features", cli("features", run, "--data", ws.store, "--split", "val", "--out", shared / "f.npy", "--quiet"),
         shared / "f.npy"),
        ("eval --json", cli("eval", run, "--data", ws.store, "--json", shared / "e.json", "--quiet"), shared / "e.json"),
        ("plot --out", cli("plot", run, "--out", shared / "c.png"), shared / "c.png"),
        ("report --out", cli("report", run, "--data", ws.store, "--out", shared / "r.html", "--quiet"),
         shared / "r.html"),
    ]


def _left(shared: Path, keep: set[str]) -> list[str]:
    return [f"left: {p.name}" for p in shared.iterdir() if p.name not in keep and not p.is_symlink()]


def planted_links(ws, tally: Tally, name: str) -> None:
    """Links to the victim's file at NAME.tmp, NAME.partial... and NAME.PID.<suffix> for the next pids."""
    shared, victim = _folder(ws, name)
    pids = range(os.getpid(), os.getpid() + 400)
    for what, argv, out in _outputs(ws, ws.ref_run, shared):
        for suffix in TEMP_SUFFIXES:
            for n in [f"{out.name}{suffix}"] + [f"{out.name}.{pid}{suffix}" for pid in pids]:
                _plant(shared / n, victim)
        fault = Fault("shared", f"{what}: links planted at {len(TEMP_SUFFIXES) * (len(pids) + 1)} predictable names")
        o = run_proc(argv)
        if o.rc != 0:
            fault.misbehaved.append(f"exit {o.rc}: {(o.error_lines() or ['?'])[-1][:160]}")
        if victim.read_bytes() != VICTIM_TEXT:
            fault.lost.append("the victim's file was written")
        if not out.is_file() or out.is_symlink():
            fault.lost.append(f"{out.name} is not the new regular file")
        fault.lost += _left(shared, {"f.npy", "f.json", "e.json", "c.png", "r.html"})
        tally.add(fault)


def special_outputs(ws, tally: Tally, name: str) -> None:
    """A FIFO, and /dev/null where this runs as root (a rename would turn the device into a file), at
    every command's output: one line, exit 2, the FIFO or device as it was. (Not /dev/null for
    features, which writes FILE.npy beside a FILE without that suffix: /dev/null.npy.)"""
    shared, _ = _folder(ws, name)
    outputs = _outputs(ws, ws.ref_run, shared)
    for what, argv, out in outputs:
        os.mkfifo(out)
        device = os.geteuid() == 0 and what != "features"
        specials = [(out, stat.S_ISFIFO)] + ([(Path("/dev/null"), stat.S_ISCHR)] if device else [])
        for special, kind in specials:
            fault = Fault("shared", f"{what} {special.name if special == out else special}: a "
                                    f"{'FIFO' if special == out else 'device'} at the output")
            o = run_proc([str(special) if a == str(out) else a for a in argv])
            fault.misbehaved += one_line_error(o)
            if not kind(os.stat(special).st_mode):
                fault.lost.append(f"{special} was replaced")
            fault.lost += _left(shared, {o.name for _, _, o in outputs})
            tally.add(fault)


def output_is_input(ws, tally: Tally, name: str) -> None:
    """The output naming a file the command reads (a copy of the run and of the store: a failure must
    not destroy the workspace's references)."""
    root = ws.fresh(name)
    run, store = root / "run", root / "store"
    shutil.copytree(ws.ref_run, run)
    shutil.copytree(ws.store, store)
    os.link(run / "best.pt", root / "hard-link.pt")
    cases = [("features --out STORE/val/labels.npy",
              cli("features", run, "--data", store, "--split", "val", "--out", store / "val" / "labels.npy")),
             ("eval --json RUN/best.pt", cli("eval", run, "--data", store, "--json", run / "best.pt")),
             ("eval --json a hard link of best.pt", cli("eval", run / "best.pt", "--data", store, "--json",
                                                          root / "hard-link.pt")),
             ("plot --out RUN/metrics.jsonl", cli("plot", run, "--out", run / "metrics.jsonl")),
             ("report --out RUN/config.toml", cli("report", run, "--out", run / "config.toml"))]
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for what, argv in cases:
        fault = Fault("shared", f"{what}: the output is an input")
        o = run_proc(argv)
        fault.misbehaved += one_line_error(o)
        fault.lost += [f"changed: {p.relative_to(root)}" for p, data in before.items() if p.read_bytes() != data]
        tally.add(fault)


def signal_during_write(ws, tally: Tally, rng: random.Random, name: str) -> None:
    """SIGINT or SIGTERM at a random moment of `features` writing into the shared folder: 130 or 143
    (or 0 when it finished first), and no temporary file left."""
    shared, _ = _folder(ws, name)
    sig = rng.choice(["SIGINT", "SIGTERM"])
    delay = rng.uniform(0.8, 2.2)  # startup ~1 s, the write of the train split ~1 s on a busy 2-core machine
    o: Outcome = run_proc(cli("features", ws.ref_run, "--data", ws.store, "--split", "train", "--out",
                              shared / "f.npy", "--quiet"), kill=(sig, delay))
    fault = Fault("shared", f"features: {sig} at {delay:.2f} s")
    if o.killed is None:
        fault.kind += " (finished first)"
    elif o.rc == -getattr(signal, sig):  # still starting (imports): nothing written yet, the shell says 130/143
        fault.kind += " (died of it before its handler)"
    elif o.rc not in expected_codes(sig) and o.rc != 0:
        fault.misbehaved.append(f"exit {o.rc} after {sig}, not {sorted(expected_codes(sig))}")
    if "Traceback" in o.err:
        fault.misbehaved.append("traceback: " + o.error_lines()[-1][:160])
    fault.lost += _left(shared, {"f.npy", "f.json"})  # those two only whole: renamed into place complete
    if (shared / "f.npy").exists():
        try:
            np.load(shared / "f.npy", mmap_mode="r")
        except ValueError as e:
            fault.lost.append(f"f.npy is not whole: {e}")
    tally.add(fault)
