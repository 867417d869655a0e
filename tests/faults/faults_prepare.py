"""`alexnet prepare` under faults (tests/faults/faults.py): real signals at random moments (workers must die
with their parent), deaths at every rename and unlink (a `python -c` child, tests/faults/faults_child.py),
two writers of one store, a full disk (tmpfs). Each ends with the same command run again until it
succeeds and a byte-for-byte comparison with an uninterrupted prepare."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

from faults_lib import (PREPARE_SIZE, Fault, Outcome, Tally, child, cli, expected_codes, fill,
                        one_line_error, run_proc, run_two, store_diff, survivors, tmpfs, tree_files)

MAX_ATTEMPTS = 12
CHILD_CHUNK = 64  # small chunks in the child: many renames to hit


def leftovers(dst: Path) -> list[str]:
    return [f"left: {p.name}" for p in (dst.with_name(dst.name + s) for s in (".partial", ".old", ".lock"))
            if p.exists()]


def check_killed(o: Outcome, dst: Path, fault: Fault, sig: str, wants: list[dict]) -> None:
    """After a kill: the workers gone, the exit code a shell expects, DST absent or whole."""
    alive = survivors(o.descendants)
    if alive:
        fault.lost.append(f"left: {len(alive)} process(es) of the killed prepare alive after 10 s: {alive}")
    if o.rc not in expected_codes(sig) and o.rc != 0:
        if o.rc == -{"SIGINT": 2, "SIGTERM": 15}.get(sig, 0):  # before its handler: the shell says 130/143
            fault.kind += " (died of it before its handler)"
            if dst.with_name(dst.name + ".lock").exists():
                fault.lost.append(f"left: DST.lock after {sig}")
        else:
            fault.misbehaved.append(f"exit {o.rc} after {sig}: {(o.error_lines() or [''])[-1][:160]}")
    if sig != "SIGKILL" and o.rc in expected_codes(sig):
        if len(o.error_lines()) != 1 or "Traceback" in o.err:
            fault.misbehaved.append(f"not one line after {sig}: {' / '.join(o.error_lines()[-8:])[:900]}")
        if dst.with_name(dst.name + ".lock").exists():
            fault.lost.append("left: DST.lock after a clean stop")
    if dst.exists() and not any(not store_diff(dst, w) for w in wants):
        fault.lost.append(f"DST exists but is not whole: {store_diff(dst, wants[0])[:3]}")


def rerun(argv: list[str], dst: Path, want: dict, faults: list[Fault], tally: Tally) -> None:
    """The same command again until it succeeds (or says DST already holds the finished store)."""
    problems = []
    for _ in range(MAX_ATTEMPTS):
        o = run_proc(argv)
        if o.rc == 0:
            break
        if o.rc == 2 and "already holds a store" in o.err and not store_diff(dst, want):
            break
        problems.append(f"re-run failed (exit {o.rc}): {(o.error_lines() or ['?'])[-1][:160]}")
        break
    else:
        problems.append("not finished after repeated re-runs")
    if not problems:
        problems += store_diff(dst, want)
        problems += leftovers(dst)
    for f in faults:
        f.lost += problems
        tally.add(f)
    return o


# ---------------------------------------------------------------------------------------------------
# Real signals at random moments
# ---------------------------------------------------------------------------------------------------


def random_chain(ws, tally: Tally, rng: random.Random, name: str) -> None:
    fmt = rng.choice(["raw", "jpeg"])
    dst = ws.fresh(name) / "store"
    argv = cli("prepare", ws.src_big, dst, "--size", PREPARE_SIZE, "--workers", "2", "--quiet", "--format", fmt)
    want = ws.ref_big[fmt]
    faults: list[Fault] = []
    for _ in range(MAX_ATTEMPTS):
        if len(faults) >= 3 or (faults and rng.random() < 0.35):
            break
        sig = rng.choice(["SIGKILL", "SIGINT", "SIGTERM"])
        delay = rng.uniform(0.1, ws.t_prepare[fmt] * 1.05)
        o = run_proc(argv, kill=(sig, delay))
        if o.killed is None:
            if o.rc == 0 or (o.rc == 2 and "already holds a store" in o.err):
                break
            continue
        fault = Fault("prepare", f"{sig} at {delay:.2f} s ({fmt}, {len(o.descendants)} child process(es))")
        check_killed(o, dst, fault, sig, [want])
        faults.append(fault)
    if faults:
        rerun(argv, dst, want, faults, tally)


# ---------------------------------------------------------------------------------------------------
# Exact windows, in a child
# ---------------------------------------------------------------------------------------------------


def child_spec(ws, dst: Path, fmt: str, overwrite: bool, src: Path | None = None, workers: int = 1) -> dict:
    argv = ["prepare", str(src or ws.src_small), str(dst), "--size", str(PREPARE_SIZE), "--workers", str(workers),
            "--quiet", "--format", fmt] + (["--overwrite"] if overwrite else [])
    return {"argv": argv, "chunk_size": CHILD_CHUNK, "checkpoint_seconds": 0.0, "scope": "all", "target": None,
            "count": None}


def count_events(ws, fmt: str, overwrite: bool) -> tuple[list, dict]:
    """Every rename/unlink/rmdir of an uninterrupted child run, and the store it wrote."""
    folder = ws.fresh(f"count-prepare-{fmt}-{overwrite}")
    dst = folder / "store"
    if overwrite:
        shutil.copytree(ws.old_store, dst)
    spec = child_spec(ws, dst, fmt, overwrite) | {"count": str(folder / "events.json")}
    o = run_proc(child("prepare", spec))
    assert o.rc == 0, o.err
    return json.loads((folder / "events.json").read_text()), tree_files(dst)


def exact_points(ws, fmt: str, overwrite: bool) -> tuple[list[dict], list[dict]]:
    events = ws.prepare_events[(fmt, overwrite)]
    finalise_from = next(i for i, e in enumerate(events) if e[0] == "finalise")
    fs = [(i, e) for i, e in enumerate(events) if e[0] == "fs"]
    always, others = [], []
    for n, (i, e) in enumerate(fs, 1):
        for when in ("before", "after"):
            how = "exit" if (n + (when == "after")) % 3 else "sigkill"
            stage = "finalise" if i > finalise_from else "convert"
            point = {"n": n, "when": when, "how": how, "fmt": fmt, "overwrite": overwrite,
                     "kind": f"{how} {when} {e[1]} (#{n}, {stage}, {fmt}{', --overwrite' if overwrite else ''})"}
            is_install = e[1] in ("replace store.partial", "replace store", "rmdir store.old")
            (always if is_install and when == "before" else others).append(point)
    return always, others


def exact_fault(ws, tally: Tally, point: dict, name: str, family: str = "prepare") -> None:
    fmt, overwrite = point["fmt"], point["overwrite"]
    dst = ws.fresh(name) / "store"
    if overwrite:
        shutil.copytree(ws.old_store, dst)
    spec = child_spec(ws, dst, fmt, overwrite)
    o = run_proc(child("prepare", spec | {"target": "fs", "n": point["n"], "when": point["when"],
                                          "how": point["how"]}))
    fault = Fault(family, point["kind"])
    want = ws.ref_child[fmt]
    expected = {"exit": 137, "sigkill": -9, "enospc": 2}[point["how"]]
    if o.rc != expected:
        fault.misbehaved.append(f"exit {o.rc}, not {expected}: {(o.error_lines() or [''])[-1][:160]}")
    if point["how"] == "enospc":
        fault.misbehaved += [p for p in one_line_error(o) if not p.startswith("exit")]
    olds = [want] + ([tree_files(ws.old_store)] if overwrite else [])
    if dst.exists() and not any(not store_diff(dst, w) for w in olds):
        fault.lost.append(f"DST exists but is neither the old nor the new store: {store_diff(dst, want)[:3]}")
    if dst.exists() and not overwrite and not store_diff(dst, want):  # killed after its last rename
        fault.lost += [x for x in leftovers(dst) if not x.endswith(".lock")]
        tally.add(fault)
        return
    rerun(child("prepare", spec), dst, want, [fault], tally)


# ---------------------------------------------------------------------------------------------------
# Two writers, a full disk
# ---------------------------------------------------------------------------------------------------


def _stale_lock(lock: Path) -> None:
    dead = subprocess.run(["python3", "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "start": "1"}) + "\n")


def two_preparers(ws, tally: Tally, rng: random.Random, name: str, stale: bool) -> None:
    """Two prepares into one DST at once: one writes the store, the other exits 2 in one line. With
    `stale`, a lock a killed prepare left is there first and both take-over checks are slowed (0.3 s),
    so both see it stale at the same time."""
    fmt = rng.choice(["raw", "jpeg"])
    dst = ws.fresh(name) / "store"
    if stale:
        _stale_lock(dst.with_name("store.lock"))
        spec = child_spec(ws, dst, fmt, False, ws.src_big, 2) | {"slow_stale_check": 0.3, "chunk_size": 256,
                                                                 "checkpoint_seconds": 10.0}
        argvs, want = [child("prepare", spec)] * 2, ws.ref_big[fmt]
        kind, stagger = f"two prepares taking over one stale lock at once (check slowed 0.3 s, {fmt})", 0.0
    else:
        argv = cli("prepare", ws.src_big, dst, "--size", PREPARE_SIZE, "--workers", "2", "--quiet", "--format", fmt)
        argvs, want = [argv] * 2, ws.ref_big[fmt]
        stagger = rng.uniform(0, 0.8)
        kind = f"two prepares into one DST, second {stagger:.2f} s later ({fmt})"
    results = run_two(argvs, stagger)
    fault = Fault("writers", kind)
    codes = sorted(r[2] for r in results)
    if codes != [0, 2]:
        fault.lost.append(f"exit codes {codes}, not one 0 and one 2: "
                          + " / ".join(r[1].strip().splitlines()[-1][:120] for r in results if r[1].strip()))
    for _, stderr, rc in results:
        lines = [x for x in stderr.splitlines() if x.strip()]
        if rc == 2 and (len(lines) != 1 or "Traceback" in stderr):
            fault.misbehaved.append(f"refusal not one line: {' / '.join(lines)[:200]}")
        elif rc == 2 and not any(w in lines[0] for w in ("is being prepared by", "already holds a store")):
            fault.lost.append(f"both held the lock: the second failed with: {lines[0][:300]}")
        elif rc == 2:
            tally.note(f"{kind}: refused with: {lines[0][:150]}")
    fault.lost += store_diff(dst, want) + leftovers(dst)
    tally.add(fault)


def full_disk(ws, tally: Tally, rng: random.Random, name: str, frequent_progress: bool) -> bool:
    """prepare into a tmpfs filled to leave a random share of the store's size: one line, exit 2, the
    progress kept; with the space freed the same command finishes the same store. With
    `frequent_progress`, a child that records its progress after every 64-image chunk (so there is
    progress to keep); else the CLI as it is."""
    fmt = rng.choice(["raw", "jpeg"])
    want = ws.ref_child[fmt] if frequent_progress else ws.ref_small[fmt]
    size = sum(len(v) for v in want.values())
    with tmpfs(size + (2 << 20)) as mnt:
        if mnt is None:
            return False
        leave = rng.randint(0, int(size * 0.95))
        ballast = fill(mnt, leave)
        dst = mnt / "store"
        if frequent_progress:
            argv = child("prepare", child_spec(ws, dst, fmt, False, workers=2))
        else:
            argv = cli("prepare", ws.src_small, dst, "--size", PREPARE_SIZE, "--workers", "2", "--quiet",
                       "--format", fmt)
        o = run_proc(argv, kill=("SIGKILL", 1e9))  # never sent: only to watch the workers
        how = "progress every chunk" if frequent_progress else "CLI"
        fault = Fault("disk", f"prepare: disk full, {leave // 1024} of {size // 1024} KB left ({fmt}, {how})")
        if o.rc == 0:
            tally.note(f"{fault.kind}: finished anyway (no fault)")
            return True
        fault.misbehaved += one_line_error(o)
        alive = survivors(o.descendants, 5)
        if alive:
            fault.lost.append(f"left: {len(alive)} worker process(es)")
        if dst.exists():
            fault.lost.append("DST exists after a failed prepare")
        if dst.with_name("store.lock").exists():
            fault.lost.append("left: DST.lock")
        ballast.unlink()
        o = rerun(argv, dst, want, [fault], tally)
        m = re.search(r"resuming an interrupted prepare: (\d+) chunk", o.out)
        tally.note(f"{fault.kind}: the re-run {'resumed ' + m.group(1) + ' chunk(s)' if m else 'started over'}")
    return True
