"""Shared parts of the fault-injection suite (tests/faults/faults.py): the workspace and its reference
results, running the CLI as a child, reading /proc, comparing stores and runs bit for bit, the
tally of faults, and a tmpfs that really fills up."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The run every trained result is compared with: `tiny` on the small demo store, 4 epochs, every
# epoch improving (seed 2 at lr 0.01; checked by the setup), a mid-epoch checkpoint every 5 steps so
# kills can also land inside those writes.
TRAIN_FLAGS = ["--variant", "tiny", "--epochs", "4", "--batch-size", "32", "--seed", "2", "--lr", "0.01",
               "--checkpoint-every", "5", "--quiet"]
PREPARE_SIZE = 72
TIMING_KEYS = {"images_per_s", "seconds", "time", "path"}  # wall-clock facts, not results


def child_env() -> dict:
    """The children's environment: this checkout's package (or ALEXNET_FAULTS_SRC, to try a patched
    tree), one OpenMP thread (a resumed run is bit-exact only with the same thread count)."""
    src = os.environ.get("ALEXNET_FAULTS_SRC", str(REPO / "src"))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(HERE)]), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "alexnet.cli", *map(str, args)]


def child(code: str, spec: dict) -> list[str]:
    """A `python -c` child that runs tests/faults/faults_child.py's `code` function with `spec`."""
    return [sys.executable, "-c", f"import sys, faults_child; sys.exit(faults_child.{code}(sys.argv[1]))",
            json.dumps(spec)]


# ---------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    killed: str | None  # the signal sent, if it was sent while the process ran
    seconds: float
    descendants: dict[int, str] = field(default_factory=dict)  # pid -> start time, seen before the kill
    pid: int = 0  # the process's own

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of the live processes below `pid` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    starts = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
    out, todo = {}, [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out[c] = starts[c]
            todo.append(c)
    return out


def alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def survivors(procs: dict[int, str], wait_s: float = 10.0) -> list[int]:
    """The processes of `procs` still alive after up to `wait_s` (orphans a kill left behind)."""
    deadline = time.time() + wait_s
    while time.time() < deadline and any(alive(p, s) for p, s in procs.items()):
        time.sleep(0.05)
    return [p for p, s in procs.items() if alive(p, s)]


def run_two(argvs: list[list[str]], stagger: float) -> list[tuple[str, str, int]]:
    """Start two writers, the second `stagger` seconds after the first; (stdout, stderr, exit code) each."""
    procs = []
    for i, argv in enumerate(argvs):
        procs.append(subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        if i == 0:
            time.sleep(stagger)
    return [(*p.communicate(), p.returncode) for p in procs]


def run_proc(argv: list[str], kill: tuple[str, float] | None = None, watch: Path | None = None,
             timeout: float = 300) -> Outcome:
    """Run `argv`; with `kill` = (signal name, seconds), send that signal after that delay (or, with
    `watch`, as soon as a file matching that glob appears, the delay being the give-up time)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, env=child_env(), stdout=out, stderr=err, text=True)
        sent, seen, last_scan = None, {}, 0.0
        if kill is not None:
            sig, delay = kill
            while p.poll() is None:
                now = time.perf_counter()
                fire = any(watch.parent.glob(watch.name)) if watch is not None else now - start >= delay
                if fire or now - start >= delay:
                    if fire and p.poll() is None:
                        if watch is None:  # aiming at a file's short life: no time for /proc
                            seen.update(descendants(p.pid))
                        p.send_signal(getattr(signal, sig))
                        sent = sig
                    break
                if watch is None and now - last_scan > 0.02:
                    seen.update(descendants(p.pid))
                    last_scan = now
                time.sleep(0.0005 if watch is not None else 0.003)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        out.seek(0)
        err.seek(0)
        return Outcome(rc, out.read(), err.read(), sent, time.perf_counter() - start, seen, p.pid)


def expected_codes(sig: str | None) -> set[int]:
    """What a shell would report: 130 after Ctrl-C, 143 after SIGTERM, 137 after SIGKILL."""
    return {None: {0}, "SIGINT": {130}, "SIGTERM": {143}, "SIGKILL": {-9, 137}}[sig]


# ---------------------------------------------------------------------------------------------------
# Comparing results
# ---------------------------------------------------------------------------------------------------


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, meta.json without its creation time."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "created"}).encode()
            out[str(p.relative_to(root))] = data
    return out


def store_diff(got: Path, want: dict[str, bytes]) -> list[str]:
    if not (got / "meta.json").is_file():
        return [f"{got} is not a store"]
    have = tree_files(got)
    problems = [f"{got.name}/{k} missing" for k in sorted(want.keys() - have.keys())]
    problems += [f"{got.name}/{k} extra" for k in sorted(have.keys() - want.keys())]
    problems += [f"{got.name}/{k} differs" for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
    return problems


def value_diff(a, b, where: str = "") -> list[str]:
    """Where two checkpoint payloads differ: every tensor with torch.equal, numbers exactly (NaN equal
    to NaN), wall-clock fields left out."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k} only on one side" for k in sorted(set(a) ^ set(b), key=str) if k not in TIMING_KEYS]
        for k in a.keys() & b.keys():
            if k not in TIMING_KEYS:
                out += value_diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in value_diff(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def run_diff(got: Path, ref: Path) -> list[str]:
    """A finished run against the uninterrupted one: the same files; last.pt and best.pt equal in every
    weight, optimizer buffer, position and metric; metrics.jsonl equal row for row."""
    from alexnet.model.checkpoint import load_checkpoint
    from alexnet.errors import UserError

    names = {p.name for p in got.iterdir()}
    want = {p.name for p in ref.iterdir()}
    problems = [f"{n} left in the run folder" for n in sorted(names - want)]
    problems += [f"{n} missing" for n in sorted(want - names)]
    for name in ("last.pt", "best.pt"):
        if name in names:
            try:
                a, b = load_checkpoint(got / name), load_checkpoint(ref / name)
            except UserError as e:
                problems.append(f"{name} unreadable: {e}")
                continue
            a["running"].pop("seconds", None), b["running"].pop("seconds", None)
            problems += [f"{name}{d}" for d in value_diff(a, b)][:5]
    if "metrics.jsonl" in names:
        rows = [json.loads(x) for x in (got / "metrics.jsonl").read_text().splitlines()]
        ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
        problems += [f"metrics.jsonl{d}" for d in value_diff(rows, ref_rows)][:5]
    return problems


def whole_files_in_run(run: Path) -> list[str]:
    """Files under their real names that are not whole: a checkpoint that does not load, a metrics line
    that does not parse (a .tmp is allowed: its name says it is not whole)."""
    from alexnet.model.checkpoint import load_checkpoint
    from alexnet.errors import UserError

    problems = []
    if not run.is_dir():
        return problems
    for p in run.glob("*.pt"):
        try:
            load_checkpoint(p)
        except UserError as e:
            problems.append(f"{p.name} looks whole but is not: {str(e)[:120]}")
    if (run / "metrics.jsonl").exists():
        for i, line in enumerate((run / "metrics.jsonl").read_text().splitlines()):
            try:
                json.loads(line)
            except ValueError:
                problems.append(f"metrics.jsonl line {i + 1} is cut short")
    return problems


# ---------------------------------------------------------------------------------------------------
# The tally
# ---------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    family: str  # train, prepare, writers, disk, shared
    kind: str  # what was done, e.g. "SIGKILL at 1.3 s", "os._exit before os.replace #7"
    lost: list[str] = field(default_factory=list)  # data: mismatch, half-written file, process or lock left
    misbehaved: list[str] = field(default_factory=list)  # exit code, not one line, traceback


class Tally:
    def __init__(self, verbose: bool = True):
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self.verbose = verbose

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        if self.verbose:
            state = "LOST " + "; ".join(fault.lost) if fault.lost else "ok"
            if fault.misbehaved:
                state += " | MISBEHAVED " + "; ".join(fault.misbehaved)
            print(f"  [{fault.family}] {fault.kind}: {state}", flush=True)
        return fault

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        print(f"  note: {msg}", flush=True)

    def summary(self) -> dict:
        out = {}
        for fam in ("train", "prepare", "writers", "disk", "shared"):
            fs = [f for f in self.faults if f.family == fam]
            if fs:
                out[fam] = {"injected": len(fs), "survived": sum(not f.lost for f in fs),
                            "data_lost": sum(bool(f.lost) for f in fs),
                            "misbehaved": sum(bool(f.misbehaved) for f in fs)}
        fs = self.faults
        out["total"] = {"injected": len(fs), "survived": sum(not f.lost for f in fs),
                        "data_lost": sum(bool(f.lost) for f in fs), "misbehaved": sum(bool(f.misbehaved) for f in fs)}
        return out


def one_line_error(o: Outcome, code: int = 2) -> list[str]:
    """Problems with a refusal: the exit code, a traceback, more than one line."""
    problems = []
    if o.rc != code:
        problems.append(f"exit {o.rc}, not {code}")
    lines = o.error_lines()
    if "Traceback" in o.err:
        problems.append("traceback: " + (lines[-1] if lines else "")[:160])
    elif len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr: {' / '.join(lines)[:200]}")
    return problems


# ---------------------------------------------------------------------------------------------------
# A real full disk
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(size_bytes: int):
    """A tmpfs of `size_bytes` mounted in a fresh folder (unmounted whatever happens); None where this
    machine does not allow it (not root, no mount)."""
    folder = Path(tempfile.mkdtemp(prefix="alexnet-faults-tmpfs-"))
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    except OSError:
        r = None
    if r is None or r.returncode != 0:
        folder.rmdir()
        yield None
        return
    try:
        yield folder
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            folder.rmdir()


def fill(folder: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free on `folder`'s filesystem."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    ballast = folder / "ballast"
    with open(ballast, "wb") as f:
        remaining = max(0, free - leave)
        while remaining > 0:
            n = min(remaining, 1 << 20)
            try:
                f.write(b"\0" * n)
                f.flush()
            except OSError:
                break
            remaining -= n
    return ballast
