"""A lock file that says who is writing a folder, so that a second writer is refused, not mixed in."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from alexnet.errors import UserError


class FolderLock:
    """FOLDER/NAME, created with O_CREAT|O_EXCL and holding the owner's pid and host: a second
    writer of the same folder (a run being trained, a store being prepared) is refused in one line
    naming the owner. A lock whose pid is dead on this host is stale and taken over; the
    check-and-take runs under a flock of the folder, so two newcomers cannot both take over one
    stale lock."""

    def __init__(self, folder: str | os.PathLike, name: str = "write.lock", doing: str = "written"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.doing = doing  # "{folder} is being {doing} by pid ..."
        self.held = False

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        guard = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if self.path.exists():
                owner = self._owner()
                if owner is not None and not _is_stale(owner):
                    raise UserError(f"{self.folder} is being {self.doing} by pid {owner['pid']} on {owner['host']} "
                                    f"(since {owner.get('since', '?')}); wait for it or stop it (if that process is gone, "
                                    f"delete {self.path})")
                self.path.unlink()
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
        finally:
            os.close(guard)  # closing releases the flock
        return self

    def _owner(self) -> dict | None:
        """The lock's owner, or None for a lock a killed process left empty or cut short."""
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _is_stale(owner: dict) -> bool:
    """A lock of this host whose process has ended (another host's lock cannot be checked from here)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False
