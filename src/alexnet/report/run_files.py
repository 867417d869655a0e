"""Reading the files of a run folder that someone else may write into (a run under /tmp, a shared
project folder): what `alexnet report` copies into its page.

Only a regular file with no other name, inside the run folder, is read: no symbolic link is followed
anywhere below the folder (each step is opened with O_NOFOLLOW, relative to the one above, so nothing
can be swapped in between the check and the read), a FIFO or a device is not opened for reading (it
could block or never end), and a file with hard links elsewhere is refused, since it may be another
user's file given a name here. A planted `RUN/config.toml -> ~/.ssh/id_rsa` used to be printed in
the page verbatim, and `RUN/figures/neighbours.png -> ~/secret` embedded in it as base64.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from alexnet.errors import UserError


class NotReadHere(UserError):
    """A file of the run folder that is not read: the reason, for a note in the page."""


def open_run_file(run: str | os.PathLike, relative: str) -> int:
    """A read-only descriptor of the regular file RUN/`relative` ("config.toml", "figures/x.png"),
    reached without following a symbolic link below RUN. FileNotFoundError when it is not there;
    NotReadHere when it is not a plain file of the run."""
    parts = Path(relative).parts
    folder = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=folder)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(Path(run, *parts[:i + 1])):
                    raise NotReadHere(f"{Path(*parts[:i + 1])} is a symbolic link; not followed (it could lead "
                                      "out of the run folder)") from None
                raise
            os.close(folder)
            folder = fd
        fd, folder = folder, -1
    finally:
        if folder >= 0:
            os.close(folder)
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"has {st.st_nlink - 1} other name(s) (hard links): it may be a file from elsewhere"
               if st.st_nlink > 1 else None)
    if problem:
        os.close(fd)
        raise NotReadHere(f"{relative} {problem}; not read")
    return fd


def read_run_file(run: str | os.PathLike, relative: str) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file RUN/`relative` and its stat (open_run_file's rules)."""
    with os.fdopen(open_run_file(run, relative), "rb") as f:
        return f.read(), os.fstat(f.fileno())
