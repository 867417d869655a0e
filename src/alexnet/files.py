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


def remove_leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (`create_temp`'s NAME.XXXXXXXX.tmp) that writes cut short by a kill left
    in `folder`; call it holding the folder's lock, when no write of ours can be under way. Only plain
    files are removed, never what a link points to. Returns what was removed."""
    removed = []
    for path in Path(folder).glob("*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` (UTF-8; bytes of names that are not UTF-8 as \\xNN) to the log `path`, created
    if need be: never through a link planted at its name, never into a FIFO or a device."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     new_file_mode())
    except OSError as e:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        what = f"it is {_kind(mode)}" if not stat.S_ISREG(mode) else e.strerror or str(e)
        raise UserError(f"cannot append to {printable(path)}: {what}, not a log file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{printable(path)} is {_kind(mode)}, not a log file to append to")
        os.write(fd, text.encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


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
          stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
          stat.S_IFLNK: "a symbolic link"}


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


_HELD_LOCKS: set[int] = set()  # descriptors of the FolderLocks this process holds


def _close_inherited_locks() -> None:
    """In a forked child (prepare's worker processes): its copies of the parent's lock descriptors
    closed, so that the lock ends with the process that took it, not with its last worker."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _running(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


class FolderLock:
    """An exclusive lock on writing `target` (a run folder being trained, a store being prepared):
    `fcntl.flock` on the file `path`, which the kernel releases when its holder ends, however it
    ends (kill -9 and power cuts included), so a lock is never left stale and never guessed at. The
    file also says who holds it (pid, host, since when), for the one-line refusal of a second writer;
    what an earlier, dead holder wrote there is `took_over` ({} if it said nothing readable). Opened
    without following a link; anything but a regular file at `path` is refused. Use as a context
    manager."""

    def __init__(self, path: str | os.PathLike, target: str | os.PathLike | None = None, doing: str = "written"):
        self.path = Path(path)
        self.target = Path(target) if target is not None else self.path.parent
        self.doing = doing  # "{target} is being {doing} by pid ..."
        self.took_over: dict | None = None
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise UserError(f"cannot open the lock {printable(self.path)}: {e.strerror or e} (a link or another "
                            f"user's file there is refused)") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UserError(f"the lock {printable(self.path)} is {_kind(mode)}, not a file; remove it if nothing is "
                            f"writing {printable(self.target)}")
        return fd

    @staticmethod
    def _owner(fd: int) -> dict:
        try:
            owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> FolderLock:
        for _ in range(100):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = {}
                for _ in range(50):  # the holder writes its name right after taking the lock, over its
                    owner = self._owner(fd)  # dead predecessor's
                    if _running(owner.get("pid")) or owner.get("host", socket.gethostname()) != socket.gethostname():
                        break
                    time.sleep(0.01)
                os.close(fd)
                raise UserError(f"{printable(self.target)} is being {self.doing} by pid {owner.get('pid', '?')} on "
                                f"{owner.get('host', '?')} (since {owner.get('since', '?')}); wait for it to finish or "
                                f"stop it") from None
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and our flock: take the new file
                os.close(fd)
                continue
            self.took_over = self._owner(fd) if os.fstat(fd).st_size else None
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
            self._fd = fd
            _HELD_LOCKS.add(fd)
            return self
        raise UserError(f"cannot take the lock {printable(self.path)}: it keeps changing hands")

    def release(self) -> None:
        """Remove the lock file, then let the lock go (in that order, so that no newcomer locks a file
        that is about to vanish: one that opened it before the removal finds it gone, and retries)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            _HELD_LOCKS.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

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
