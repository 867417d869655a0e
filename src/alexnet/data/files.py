"""Writing files so that a crash never leaves one half-written, and a lock on a folder being written.

Every file is written to `NAME.tmp`, flushed and fsync'ed, then renamed over NAME (and the folder
fsync'ed), so NAME is either the old file or the whole new one, even after a power cut.
"""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import numpy as np

from alexnet.errors import UserError


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux clock ticks since boot), which tells a live process from
    a new one that was given a dead one's pid; None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return start is None or _process_start(pid) in (None, start)


class FolderLock:
    """An exclusive lock on writing `target`: the file `target.lock` holding the owner's pid, host and
    process start time, created atomically (a hard link of a complete file, which fails if it exists).
    A lock whose owner on this host is gone is stale and taken over. Use as a context manager."""

    def __init__(self, target: str | os.PathLike, what: str = "prepare"):
        target = Path(target)
        self.path = target.with_name(target.name + ".lock")
        self.what = what
        self.took_over: dict | None = None  # the stale lock replaced, if any
        self._held = False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def acquire(self) -> "FolderLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        write_bytes_atomic(tmp, (json.dumps(me) + "\n").encode())
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self._held = True
                    return self
                except FileExistsError:
                    pass
                owner = self._owner()
                if owner == {}:
                    continue  # released meanwhile
                if owner is None:
                    raise UserError(f"{self.path} exists but is not a lock this alexnet wrote; delete it if no "
                                    f"`alexnet {self.what}` is writing there")
                if owner.get("host") == me["host"] and not _alive(owner["pid"], owner.get("start")):
                    self.path.unlink(missing_ok=True)  # stale: its owner died (kill -9, power cut)
                    self.took_over = owner
                    continue
                raise UserError(f"another `alexnet {self.what}` (pid {owner['pid']} on {owner.get('host')}) is "
                                f"writing {self.path.with_suffix('')} (lock {self.path}); wait for it to finish")
            raise UserError(f"cannot take the lock {self.path}: it keeps changing hands")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self._held = False
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
