"""Training under faults (tests/faults/faults.py): real signals at random moments and when a checkpoint's
.tmp appears, deaths and signals at exact calls (a `python -c` child, tests/faults/faults_child.py), two
trainers of one run, a full disk (tmpfs). Each ends with `train --resume RUN` until finished and a
bit-for-bit comparison with the uninterrupted run."""

from __future__ import annotations

import json

import random
import shutil
from pathlib import Path

from faults_lib import (TRAIN_FLAGS, Fault, Outcome, Tally, child, cli, expected_codes, fill, one_line_error,
                        run_diff, run_proc, run_two, tmpfs, whole_files_in_run)

MAX_ATTEMPTS = 12


def start_args(ws, out: Path) -> list[str]:
    """What a user runs next: a resume once there is a last.pt, else the same new run again."""
    if (out / "last.pt").exists():
        return ["train", "--resume", str(out), "--quiet"]
    return ["train", "--data", str(ws.store), "--out", str(out), *TRAIN_FLAGS]


def own_lock_left(out: Path, o: Outcome) -> bool:
    """RUN/train.lock is still there and names this process. A lock an earlier SIGKILL of the chain
    left, which this process died before taking over, is not this process's to release."""
    try:
        return json.loads((out / "train.lock").read_text()).get("pid") == o.pid
    except (OSError, ValueError):
        return False


def after_exit(o: Outcome, out: Path, fault: Fault, sig: str | None) -> None:
    """Checks right after a process of the run ended, killed or not."""
    fault.lost += whole_files_in_run(out)
    if sig is None:
        return
    codes = expected_codes(sig)
    finished = o.rc == 0 and "finished:" in o.out
    if o.rc == -{"SIGINT": 2, "SIGTERM": 15}.get(sig, 0):
        # died of the signal itself, before its handler was installed: the shell says 130/143 all the
        # same; only a lock left behind would be wrong
        fault.kind += " (died of it before its handler)"
        if own_lock_left(out, o):
            fault.lost.append(f"left: train.lock after {sig}")
        if o.error_lines():
            fault.kind += f" [stderr: {' / '.join(o.error_lines()[-3:])[:300]}]"
    elif o.rc not in codes and not finished:
        fault.misbehaved.append(f"exit {o.rc} after {sig}, not {sorted(codes)}")
    if "Traceback" in o.err:
        fault.misbehaved.append("traceback: " + o.error_lines()[-1][:160])
    if sig in ("SIGINT", "SIGTERM") and o.rc in codes and own_lock_left(out, o):
        fault.lost.append("left: train.lock after a clean stop")


def finish(ws, out: Path, faults: list[Fault], tally: Tally) -> None:
    """Resume until finished, then compare with the uninterrupted run; every fault of the chain shares
    the verdict."""
    problems = []
    for _ in range(MAX_ATTEMPTS):
        o = run_proc(cli(*start_args(ws, out)))
        if o.rc == 0 and "finished:" in o.out:
            break
        if o.rc != 0:
            problems.append(f"a plain resume failed (exit {o.rc}): {(o.error_lines() or ['?'])[-1][:160]}")
            break
    else:
        problems.append("not finished after repeated resumes")
    if not problems:
        problems += run_diff(out, ws.ref_run)
    for f in faults:
        f.lost += problems
        tally.add(f)


# ---------------------------------------------------------------------------------------------------
# Real signals at random moments
# ---------------------------------------------------------------------------------------------------


def random_chain(ws, tally: Tally, rng: random.Random, name: str) -> None:
    """Start a run; kill it (SIGKILL, SIGINT or SIGTERM) at a random moment or as a checkpoint's .tmp
    appears; resume and kill again (up to 3 kills); resume until finished; compare."""
    out = ws.fresh(name) / "run"
    faults: list[Fault] = []
    for _ in range(MAX_ATTEMPTS):
        if len(faults) >= 3 or (faults and rng.random() < 0.35):
            break
        args = start_args(ws, out)
        what = "resume" if "--resume" in args else "new run"
        sig = rng.choice(["SIGKILL", "SIGINT", "SIGTERM"])
        if rng.random() < 0.35:
            watch = out / rng.choice(["last.pt.*.tmp", "best.pt.*.tmp"])  # mkstemp's name (alexnet.files)
            o = run_proc(cli(*args), kill=(sig, ws.t_train * 2), watch=watch)
            kind = f"{sig} as {watch.name} appears ({what})"
        else:
            delay = rng.uniform(0.2, ws.t_train)
            o = run_proc(cli(*args), kill=(sig, delay))
            kind = f"{sig} at {delay:.2f} s ({what})"
        if o.killed is None:
            if o.rc == 0 and "finished:" in o.out:
                break
            continue
        fault = Fault("train", kind)
        after_exit(o, out, fault, sig)
        faults.append(fault)
    if faults:
        finish(ws, out, faults, tally)


# ---------------------------------------------------------------------------------------------------
# Exact windows, in a child
# ---------------------------------------------------------------------------------------------------


def exact_points(ws) -> tuple[list[dict], list[dict]]:
    """(always, others): the fault points of one run. `always`: a death between best.pt and last.pt of
    an improving epoch, and a torn last.pt; `others` sampled from every save, write and rename."""
    saves = [e for e in ws.train_events if e[0] == "save"]
    writes = [e for e in ws.train_events if e[0] == "torch.save"]
    renames = [e for e in ws.train_events if e[0] == "replace"]
    always, others = [], []
    for n, (_, name, epoch, step) in enumerate(saves, 1):
        where = f"save #{n} ({name}, epoch {epoch} step {step})"
        if name == "best.pt" and epoch == 2:
            always.append({"target": "save", "n": n, "when": "after", "how": "exit",
                           "kind": f"os._exit between best.pt and last.pt: after {where}"})
        for when, how in (("before", "exit"), ("after", "exit"), ("after", "sigkill"), ("before", "sigint"),
                          ("after", "sigterm"), ("before", "sigint2"), ("before", "sigterm2")):
            others.append({"target": "save", "n": n, "when": when, "how": how, "kind": f"{how} {when} {where}"})
    for n, (_, name) in enumerate(writes, 1):
        where = f"write #{n} ({name})"
        if name == "last.pt.tmp" and n == len(writes) // 2:
            always.append({"target": "torch.save", "n": n, "when": "after", "how": "torn",
                           "kind": f"torn (half written, os._exit) {where}"})
        for how in ("torn", "enospc", "sigint2", "sigterm2"):
            others.append({"target": "torch.save", "n": n, "when": "after", "how": how, "kind": f"{how} in {where}"})
    for how in ("sigterm", "sigint"):  # while the run starts: the lock is held, no checkpoint yet
        always.append({"target": "lock", "n": 1, "when": "after", "how": how,
                       "kind": f"{how} just after train.lock is taken (start of a run)"})
    for n, (_, name) in enumerate(renames, 1):
        where = f"os.replace #{n} (-> {name})"
        for when, how in (("before", "exit"), ("after", "exit"), ("before", "enospc")):
            others.append({"target": "replace", "n": n, "when": when, "how": how, "kind": f"{how} {when} {where}"})
    return always, others


EXPECTED = {"exit": {137}, "torn": {137}, "sigkill": {-9}, "sigint": {130}, "sigterm": {143}, "sigint2": {130},
            "sigterm2": {143}, "enospc": {2}}


def exact_fault(ws, tally: Tally, point: dict, name: str, family: str = "train") -> None:
    out = ws.fresh(name) / "run"
    argv = ["train", "--data", str(ws.store), "--out", str(out), *TRAIN_FLAGS]
    spec = {k: point[k] for k in ("target", "n", "when", "how")} | {"argv": argv, "count": None}
    o = run_proc(child("train", spec))
    fault = Fault(family, point["kind"])
    fault.lost += whole_files_in_run(out)
    finished = o.rc == 0 and "finished:" in o.out
    ok_codes = EXPECTED[point["how"]]
    if o.rc in (-2, -15) and -o.rc + 128 in ok_codes:  # died of the signal before its handler: the shell
        fault.kind += " (died of it before its handler)"  # says 130/143 all the same
        if (out / "train.lock").exists():
            fault.lost.append(f"left: train.lock after {point['how'].upper()}")
    elif o.rc not in ok_codes and not (finished and point["how"] in ("sigint", "sigterm")):
        fault.misbehaved.append(f"exit {o.rc}, not {sorted(ok_codes)}: {(o.error_lines() or [''])[-1][:160]}")
    if point["how"] == "enospc":
        fault.misbehaved += [p for p in one_line_error(o) if not p.startswith("exit")]
    if o.rc in (0, 2, 130, 143) and (out / "train.lock").exists():
        fault.lost.append(f"left: train.lock after exit {o.rc}")
    if finished:
        fault.lost += run_diff(out, ws.ref_run)
        tally.add(fault)
    else:
        finish(ws, out, [fault], tally)


# ---------------------------------------------------------------------------------------------------
# Two trainers, a full disk
# ---------------------------------------------------------------------------------------------------


def two_trainers(ws, tally: Tally, rng: random.Random, name: str, resume: bool) -> None:
    """Two `train` processes on one run folder at once (new runs into one --out, or two --resume of a
    run stopped at a random --max-steps): one finishes, the other exits 2 in one line."""
    out = ws.fresh(name) / "run"
    if resume:
        steps = rng.randint(1, 60)
        o = run_proc(cli("train", "--data", ws.store, "--out", out, *TRAIN_FLAGS, "--max-steps", steps))
        assert o.rc == 0, o.err
        args = ["train", "--resume", str(out), "--quiet"]
        kind = f"two `train --resume` at once (run stopped at step {steps})"
    else:
        args = ["train", "--data", str(ws.store), "--out", str(out), *TRAIN_FLAGS]
        kind = "two `train` into one --out at once"
    stagger = rng.uniform(0, 1.0)
    kind += f", second {stagger:.2f} s later"
    results = run_two([cli(*args)] * 2, stagger)
    fault = Fault("writers", kind)
    codes = sorted(r[2] for r in results)
    epochs = int(TRAIN_FLAGS[TRAIN_FLAGS.index("--epochs") + 1])
    done = f"resumed run at epoch {epochs + 1}, step 0"  # the run was complete when this one took the lock
    if resume and codes == [0, 0] and any(done in stdout for stdout, _, _ in results):
        tally.note(f"{kind}: the first finished before the second took the lock, which found nothing to do")
    elif codes != [0, 2]:
        fault.lost.append(f"exit codes {codes}, not one 0 and one 2")
    for stdout, stderr, rc in results:
        if rc == 2:
            lines = [x for x in stderr.splitlines() if x.strip()]
            if len(lines) != 1 or "Traceback" in stderr:
                fault.misbehaved.append(f"refusal not one line: {' / '.join(lines)[:200]}")
            elif not any(w in lines[0] for w in ("is being trained by", "already holds a run")):
                fault.lost.append(f"both trained: the second failed with: {lines[0][:300]}")
            else:
                tally.note(f"{kind}: refused with: {lines[0][:150]}")
    if (out / "train.lock").exists():
        fault.lost.append("left: train.lock")
    fault.lost += run_diff(out, ws.ref_run)
    tally.add(fault)


def stale_lock_race(ws, tally: Tally, name: str) -> None:
    """Two resumes of a run whose lock a SIGKILL left behind, the stale check slowed down (0.3 s) in
    both, so both see the same stale lock: the take-over must still admit one."""
    import subprocess

    from faults_lib import child_env

    out = ws.fresh(name) / "run"
    o = run_proc(cli("train", "--data", ws.store, "--out", out, *TRAIN_FLAGS, "--max-steps", "7"))
    assert o.rc == 0, o.err
    dead = subprocess.run(["python3", "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import json
    import socket

    (out / "train.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    spec = {"argv": ["train", "--resume", str(out), "--quiet"], "target": None, "count": None,
            "slow_stale_check": 0.3}
    procs = [subprocess.Popen(child("train", spec), env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(), p.returncode) for p in procs]
    fault = Fault("writers", "two `train --resume` taking over one stale lock at once (stale check slowed 0.3 s)")
    codes = sorted(r[2] for r in results)
    if codes != [0, 2]:
        fault.lost.append(f"exit codes {codes}, not one 0 and one 2")
    fault.lost += run_diff(out, ws.ref_run)
    tally.add(fault)


def full_disk(ws, tally: Tally, rng: random.Random, name: str) -> bool:
    """A run on a 3 MB tmpfs, stopped at a random step; the disk filled to leave 0-400 KB; the resume
    must fail in one line and keep last.pt whole; with the space freed it resumes to the same result.
    False where tmpfs cannot be mounted."""
    with tmpfs(3 << 20) as mnt:
        if mnt is None:
            return False
        out = mnt / "run"
        steps = rng.randint(1, 70)
        o = run_proc(cli("train", "--data", ws.store, "--out", out, *TRAIN_FLAGS, "--max-steps", steps))
        assert o.rc == 0, o.err
        before = (out / "last.pt").read_bytes()
        leave = rng.randint(0, 400 << 10)
        ballast = fill(mnt, leave)
        o = run_proc(cli("train", "--resume", out, "--quiet"))
        fault = Fault("disk", f"train: disk full, {leave // 1024} KB left, after step {steps}")
        if o.rc == 0:
            tally.note(f"{fault.kind}: the run finished anyway (no fault)")
            return True
        fault.misbehaved += one_line_error(o)
        fault.lost += whole_files_in_run(out)
        if not (out / "last.pt").exists():
            fault.lost.append("last.pt is gone")
        elif (out / "last.pt").read_bytes() != before:
            from alexnet.model.checkpoint import load_checkpoint

            if load_checkpoint(out / "last.pt")["global_step"] <= steps:
                fault.lost.append("last.pt changed but is not later than before")
            tally.note(f"{fault.kind}: a later last.pt was written before the disk filled")
        if (out / "train.lock").exists():
            fault.lost.append("left: train.lock")
        leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
        if leftovers:
            tally.note(f"{fault.kind}: left {leftovers} until the next resume")
        ballast.unlink()
        finish(ws, out, [fault], tally)
        shutil.rmtree(out, ignore_errors=True)
    return True
