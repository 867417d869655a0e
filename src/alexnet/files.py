"""Writing files so that a crash never leaves one half-written, and a lock on a folder being written.

Every file is written to a temporary name beside it (`NAME.PID.tmp` unless told otherwise), flushed and
fsync'ed, then renamed over NAME and the folder fsync'ed: NAME is either the old file or the whole new
one, even after a power cut. On an error the temporary file is removed. This module is the one place
that does it (checkpoints, metrics, stores, figures, exports); it imports nothing of alexnet but its
errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from alexnet.errors import UserError

# errors of a filesystem that cannot fsync a folder at all: the rename is still atomic there
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR}


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames inside `folder` durable (the new name survives a power cut, not only the data)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened (some platforms): the files themselves are synced
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written by someone else (a memory map, an exporter) to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _tmp_path(path: Path, tmp_suffix: str) -> Path:
    """NAME.PID.tmp: two processes writing the same file (two `experiment` commands rewriting one
    results table) each rename their own whole file, and neither removes the other's."""
    return path.with_name(f"{path.name}.{os.getpid()}{tmp_suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, tmp_suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (an exporter, a saver that
    picks the format from the suffix); when the block ends it is fsync'ed and renamed over `path`."""
    path = Path(path)
    tmp = _tmp_path(path, tmp_suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", tmp_suffix: str = ".tmp",
                 **open_kwargs) -> Iterator[IO]:
    """`open(path, mode)` that writes a temporary file and, when the block ends without an error,
    fsyncs and renames it over `path`, then fsyncs the folder (atomic_path)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes a whole new file; mode {mode!r} is not a 'w' mode")
    with atomic_path(path, tmp_suffix) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8, line ends as given (newline="": a CSV's \\r\\n stays \\r\\n)."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


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


# ---------------------------------------------------------------------------------------------------
# The folder lock
# ---------------------------------------------------------------------------------------------------


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


_MISSING, _EMPTY, _FOREIGN = "missing", "empty", "foreign"


class FolderLock:
    """An exclusive lock on writing `target` (a run folder being trained, a store being prepared): the
    file `path` holding the owner's pid, host, process start time and since when. It is created
    atomically, as a hard link of a complete file (which fails if the lock exists), so no reader ever
    sees half a lock. A second writer is refused in one line naming the owner. A lock whose owner on
    this host is gone (a pid that is dead, or reused by a younger process) is stale and taken over, as
    is an empty one; the check-and-take runs under a flock of the lock's folder, so two newcomers cannot
    both take over one stale lock. Another host's lock cannot be checked from here and is respected.
    Use as a context manager; `took_over` is the stale owner replaced, if any ({} for an empty lock)."""

    def __init__(self, path: str | os.PathLike, target: str | os.PathLike | None = None, doing: str = "written"):
        self.path = Path(path)
        self.target = Path(target) if target is not None else self.path.parent
        self.doing = doing  # "{target} is being {doing} by pid ..."
        self.took_over: dict | None = None
        self._me: dict | None = None

    def _read(self) -> dict | str:
        """The owner, or _MISSING, _EMPTY (a lock a killed process left empty) or _FOREIGN."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return _MISSING
        except (OSError, UnicodeDecodeError):
            return _FOREIGN
        if not text.strip():
            return _EMPTY
        try:
            owner = json.loads(text)
        except ValueError:
            return _FOREIGN
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else _FOREIGN

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        guard = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when `guard` is closed
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                os.fchmod(fd, 0o644)  # readable by every user, who is told whose it is
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._take(me, Path(tmp))
            finally:
                os.unlink(tmp)
        finally:
            os.close(guard)
        fsync_dir(self.path.parent)
        self._me = me
        return self

    def _take(self, me: dict, tmp: Path) -> None:
        for _ in range(3):
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                pass
            owner = self._read()
            if owner == _MISSING:
                continue  # released meanwhile
            if owner == _FOREIGN:
                raise UserError(f"{self.path} exists but is not a lock alexnet wrote; delete it if nothing is "
                                f"writing {self.target}")
            if owner == _EMPTY or (owner.get("host") == me["host"] and not _alive(owner["pid"], owner.get("start"))):
                self.path.unlink(missing_ok=True)  # stale: its owner died (kill -9, power cut)
                self.took_over = {} if owner == _EMPTY else owner
                continue
            raise UserError(f"{self.target} is being {self.doing} by pid {owner['pid']} on {owner.get('host')} "
                            f"(since {owner.get('since', '?')}); wait for it to finish or stop it (if that process "
                            f"is gone, delete {self.path})")
        raise UserError(f"cannot take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        """Remove the lock if it is still this process's own (never one a newcomer took over)."""
        if self._me is not None:
            owner = self._read()
            if isinstance(owner, dict) and owner["pid"] == self._me["pid"] and owner.get("start") == self._me["start"]:
                self.path.unlink(missing_ok=True)
            self._me = None

    @property
    def held(self) -> bool:
        return self._me is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def run_lock(run: str | os.PathLike) -> FolderLock:
    """RUN/train.lock: one trainer per run folder."""
    return FolderLock(Path(run) / "train.lock", target=run, doing="trained")


def store_lock(dst: str | os.PathLike) -> FolderLock:
    """DST.lock, beside the store (DST itself appears only when the store is complete): one prepare per
    store."""
    dst = Path(dst)
    return FolderLock(dst.with_name(dst.name + ".lock"), target=dst, doing="prepared")
