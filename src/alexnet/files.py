"""Writing files so that a crash never leaves one half-written, nor another user a way in; and a lock
on a folder being written.

Every file is written to a temporary name beside it, flushed and fsync'ed, then renamed over NAME and
the folder fsync'ed: NAME is the old file or the whole new one, even after a power cut. On an error,
Ctrl-C or SIGTERM the temporary file is removed. It is created exclusively (mkstemp, O_EXCL, 0600):
in a folder others write (/tmp), a link planted at a predictable NAME.PID.tmp had the write go to a
file of their choosing. `check_output_path` refuses an output that is not a file to replace (a
device, a FIFO, a folder) or is the command's own input. The one place that does it (checkpoints,
metrics, stores, figures, exports): it imports only alexnet.errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import signal
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np

from alexnet.errors import UserError, printable

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


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the process's umask."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        os.umask(umask := os.umask(0o022))  # no /proc: read it by setting it, and put it straight back
    return 0o666 & ~umask


def create_temp(path: str | os.PathLike, tmp_suffix: str = ".tmp") -> tuple[int, Path]:
    """(fd, name) of a new, empty, mode-0600 file NAME.<random><tmp_suffix> beside `path`, made with
    O_EXCL (never an existing name, never through a symbolic link); two processes writing one file (two
    `experiment` commands rewriting one results table) each rename their own whole file."""
    path = Path(path)
    _check_replaceable(path)  # before any work: never a temporary file beside /dev/null
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=tmp_suffix)
    except NotADirectoryError:  # FILE/x.pt: no folder there to write into
        _check_folders_above(path)  # which one, where it can tell
        raise UserError(f"cannot write {printable(path)}: {printable(path.parent)} is not a folder") from None
    return fd, Path(tmp)


def _publish(tmp: Path, path: Path, durable: bool = True) -> None:
    """Make the written temporary file the new `path`: checked to be a regular file (the writer's, not
    something swapped in), fsync'ed (`durable`), given the ordinary mode, renamed over `path` (only a
    file or a symbolic link: never a device or a FIFO), and the folder fsync'ed (`durable`)."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{printable(tmp)} is no longer the file being written; nothing was replaced")
        if durable:
            os.fsync(fd)
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    _check_replaceable(path)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, tmp_suffix: str = ".tmp") -> Iterator[Path]:
    """The name of a new, empty temporary file beside `path` (create_temp, ending in `tmp_suffix` for a
    writer that picks its format by suffix) for a writer that wants a name to overwrite (an exporter, a
    compiler, a memory map); when the block ends it is fsync'ed and renamed over `path`."""
    path = Path(path)
    fd, tmp = create_temp(path, tmp_suffix)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", tmp_suffix: str = ".tmp", durable: bool = True,
                 **open_kwargs) -> Iterator[IO]:
    """`open(path, mode)` that writes a temporary file (create_temp) and, when the block ends without
    an error, fsyncs and renames it over `path`, then fsyncs the folder (both only when `durable`: not
    for files made again in a moment, such as generated demo images). Ctrl-C and SIGTERM wait while
    the block writes and act at its end (signals_held), so a writer that calls back into Python from
    C (torch.save) is never cut in the middle (it reported that as a RuntimeError)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes a whole new file; mode {mode!r} is not a 'w' mode")
    path = Path(path)
    fd, tmp = create_temp(path, tmp_suffix)
    try:
        with signals_held(), open(tmp, mode, opener=lambda *_: fd, **open_kwargs) as f:  # f.name: tmp
            yield f
        _publish(tmp, path, durable)  # after a held Ctrl-C's KeyboardInterrupt, not published
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def signals_held(signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold `signals` while the block runs, then deliver them to the handlers that were there; a default
    SIGTERM (which would kill the process, its temporary file left) as SystemExit(143). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                raise SystemExit(128 + sig)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_write(path, durable=durable) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """UTF-8, line ends as given (newline="": a CSV's \\r\\n stays \\r\\n)."""
    with atomic_write(path, "w", durable=durable, encoding="utf-8", newline="") as f:
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
# What an output path may be
# ---------------------------------------------------------------------------------------------------

_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFREG: "a file", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _check_replaceable(path: Path) -> os.stat_result | None:
    """The stat of what `path` names (through a link), None when nothing; a UserError unless a regular file:
    a rename would put a file in place of a device (as root, --out /dev/full), a FIFO or a socket."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{printable(path)} is {_kind(st.st_mode)}, not a regular file: refusing to write "
                        "there; give the name of a file")
    return st


def _check_folders_above(path: Path) -> None:
    """The nearest existing folder above `path` must be a folder (--out FILE/x.pt: FILE is a file)."""
    for parent in path.parents:
        try:
            kind = None if stat.S_ISDIR((st := os.stat(parent)).st_mode) else _kind(st.st_mode)
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.islink(parent):
                continue
            kind = "a symbolic link to nothing"
        if kind:
            raise UserError(f"cannot write {printable(path)}: {printable(parent)} is {kind}, not a folder")
        return


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      what: str = "the output") -> Path:
    """Refuse in one line (UserError), before any work, an output path that writing would misuse: one
    under a file (FILE/x.pt), one naming anything but a regular file or a symbolic link to one (a
    device, a FIFO, a socket, a folder), or a file among `inputs` (the same name, a symbolic link
    either way, a hard link: the same device and inode), which the write would destroy."""
    path = Path(path)
    _check_folders_above(path)
    st = _check_replaceable(path)
    if st is None:
        return path  # nothing there yet: no input can be lost
    for source in inputs:
        if source is None:
            continue
        try:
            other = os.stat(source)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({printable(source)})"
            raise UserError(f"{what} {printable(path)} is also an input of this command{same}: writing it "
                            "would destroy it; give another file name")
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse in one line a folder to write into that is not one (a file, a device) or that sits under
    a file (--out FILE/run); a folder not there yet is fine (it will be made). Returns it as a Path."""
    path = Path(path)
    _check_folders_above(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{printable(path)} is not a folder but {_kind(st.st_mode)}; give a folder to write into")
    return path


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
