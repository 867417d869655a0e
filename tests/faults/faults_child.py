"""What tests/faults/faults.py runs in a `python -c` child to hit a window exactly: `alexnet train` or
`alexnet prepare` (through alexnet.cli.commands.main) with one call wrapped so that its Nth use dies
(os._exit, SIGKILL to itself), is signalled, or fails with ENOSPC, before or after the real call.

spec (JSON, argv[1]):
  train:   {"argv": [...], "target": "save" | "torch.save" | "replace" | "lock" | null, "n": N,
            "when": "before" | "after", "how": HOW, "count": FILE | null}
           save = alexnet.train.run.save_checkpoint (best.pt then last.pt), torch.save = inside
           save_checkpoint's write of PATH.tmp, replace = os.replace (checkpoints and metrics.jsonl),
           lock = taking RUN/train.lock (the start of a run)
  prepare: {"argv": [...], "chunk_size": N, "checkpoint_seconds": S, "scope": "finalise" | "all",
            "target": "fs" | null, "n": N, "when": ..., "how": ..., "count": FILE | null}
  either:  "slow_stale_check": S makes the lock's opening of its file take S seconds longer
           counts os.replace / os.unlink / os.rmdir, from finalise on or from the start
HOW: exit (os._exit(137), as SIGKILL: nothing else runs), sigkill, sigint / sigterm (one signal: stop
and save), sigint2 / sigterm2 (two: stop at once), enospc (OSError ENOSPC), torn (torch.save only:
half the bytes reach PATH.tmp, then os._exit).
With "count", the events of the whole run are written there as JSON (the sampling space).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import time
from pathlib import Path


class Injector:
    def __init__(self, spec: dict):
        self.spec = spec
        self.events: list[list] = []
        self.counts: dict[str, int] = {}

    def tick(self, target: str, *detail) -> bool:
        """Record one use of `target`; True if it is the one to hit."""
        self.events.append([target, *detail])
        self.counts[target] = self.counts.get(target, 0) + 1
        return self.spec.get("target") == target and self.counts[target] == self.spec.get("n")

    def inject(self, filename: str = "") -> None:
        how = self.spec["how"]
        me = os.getpid()
        if how == "exit":
            os._exit(137)
        if how == "sigkill":
            os.kill(me, signal.SIGKILL)
            time.sleep(60)
        if how in ("sigint", "sigterm", "sigint2", "sigterm2"):
            sig = signal.SIGINT if how.startswith("sigint") else signal.SIGTERM
            os.kill(me, sig)
            if how.endswith("2"):
                os.kill(me, sig)  # the second one stops at once (its handler raises here)
            return
        if how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        raise ValueError(f"unknown fault {how}")

    def wrap(self, real, target: str, name_of=lambda a: ""):
        def wrapped(*a, **k):
            name = name_of(a)
            hit = self.tick(target, name)
            if hit and self.spec["when"] == "before":
                self.inject(name)
            result = real(*a, **k)
            if hit and self.spec["when"] == "after":
                self.inject(name)
            return result

        return wrapped

    def save_events(self) -> None:
        if self.spec.get("count"):
            Path(self.spec["count"]).write_text(json.dumps(self.events))


def _slow(module, name: str, seconds: float) -> None:
    """Widen a check-then-act window: the check takes `seconds` (a busy machine can pause any process
    that long)."""
    real = getattr(module, name)

    def slow(*a, **k):
        result = real(*a, **k)
        time.sleep(seconds)
        return result

    setattr(module, name, slow)


def _base(a) -> str:
    return os.path.basename(os.fsdecode(a[0])) if a else ""


def train(arg: str) -> int:
    spec = json.loads(arg)
    import torch

    import alexnet.train.run as run_module
    from alexnet.cli.commands import main

    import alexnet.files as files_module

    if spec.get("slow_stale_check"):  # both newcomers hold the stale lock file open before either locks it
        _slow(files_module.FolderLock, "_open", spec["slow_stale_check"])
    inj = Injector(spec)
    real_save, real_torch_save = run_module.save_checkpoint, torch.save

    def save_checkpoint(path, payload):
        hit = inj.tick("save", Path(path).name, payload["epoch"], payload["step"])
        if hit and spec["when"] == "before":
            inj.inject(str(path))
        real_save(path, payload)
        if hit and spec["when"] == "after":
            inj.inject(str(path))

    def torch_save(obj, f, *a, **k):
        # PATH.<random>.tmp (alexnet.files.create_temp) as PATH.tmp: the same name in every run
        name = re.sub(r"\.[^.]+\.tmp$", ".tmp", Path(str(getattr(f, "name", "?"))).name)
        if not inj.tick("torch.save", name):
            return real_torch_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_torch_save(obj, buf, *a, **k)
        data = buf.getvalue()
        how = spec["how"]
        if how in ("torn", "enospc"):  # half of it reaches the file first
            f.write(data[: len(data) // 2])
            f.flush()
            if how == "torn":
                os.fsync(f.fileno())
                os._exit(137)
            inj.inject(str(f.name))
        f.write(data)
        inj.inject(str(f.name))  # signals while the file is open and full, before fsync and rename

    run_module.save_checkpoint = save_checkpoint
    torch.save = torch_save
    files_module.FolderLock.acquire = inj.wrap(files_module.FolderLock.acquire, "lock")
    os.replace = inj.wrap(os.replace, "replace", lambda a: os.path.basename(os.fsdecode(a[1])))
    try:
        return main(spec["argv"])
    finally:
        inj.save_events()


def prepare(arg: str) -> int:
    spec = json.loads(arg)
    import alexnet.data.prepare as prepare_module
    from alexnet.cli.commands import main

    if spec.get("slow_stale_check"):
        import alexnet.files

        _slow(alexnet.files.FolderLock, "_open", spec["slow_stale_check"])
    prepare_module.CHUNK_SIZE = spec["chunk_size"]
    prepare_module.CHECKPOINT_SECONDS = spec["checkpoint_seconds"]
    inj = Injector(spec)
    active = [spec["scope"] == "all"]
    real_finalise = prepare_module.finalise

    def finalise(*a, **k):
        active[0] = True
        inj.events.append(["finalise"])
        return real_finalise(*a, **k)

    prepare_module.finalise = finalise

    def only_active(real, op):
        wrapped = inj.wrap(real, "fs", lambda a: f"{op} {_base(a)}")
        return lambda *a, **k: wrapped(*a, **k) if active[0] else real(*a, **k)

    for name in ("replace", "unlink", "rmdir"):
        setattr(os, name, only_active(getattr(os, name), name))
    try:
        return main(spec["argv"])
    finally:
        inj.save_events()
