"""Errors that are the user's to fix, and how names appear in what the user reads. The CLI prints
errors as one line, never as a traceback."""

from __future__ import annotations

import os
import re


class UserError(Exception):
    """Bad input from the user: a wrong path, a store from another version, a bad setting."""


# What a terminal would act on instead of showing: C0 and C1 controls (ESC starts a sequence that can
# clear the screen or retitle the window), DEL, and the line separators and bidirectional overrides
# that reorder or split what follows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def utf8_text(name: str | bytes | os.PathLike) -> str:
    """A name as text that UTF-8 can hold (a page, a figure, a JSON or TensorBoard string): the bytes of
    a name that is not UTF-8 (os.fsdecode's lone surrogates) as \\xNN, every other character as it is."""
    name = os.fspath(name)
    if isinstance(name, str):
        escaped_only = all("\udc80" <= c <= "\udcff" for c in name if "\ud800" <= c <= "\udfff")
        name = name.encode("utf-8", "surrogateescape" if escaped_only else "backslashreplace")
    return name.decode("utf-8", "backslashreplace")


def printable(name: str | bytes | os.PathLike) -> str:
    """A name (a file, a class folder, a class name from a checkpoint) for a terminal or a log: as
    utf8_text, and control characters as \\xNN or \\uNNNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                        utf8_text(name))
