"""A torch.save file (a checkpoint, torchvision's weights) read as data, its sizes checked before
anything is inflated or allocated.

torch.load(weights_only=True) runs no code, but it trusts the sizes a file declares: a zip entry
deflated from 4 GB of zeros to 4 MB is inflated whole (a 4.2 MB .pth reached 4.5 GB of memory), and a
pickle may declare a storage of any size. So, in this order:

1. the archive: torch.save (torch >= 1.6) writes a zip whose entries are all stored, none compressed.
   A compressed entry is refused before it is inflated (what it would inflate to is the file's word);
   the stored entries must add up to at most the file's own size and to at most MAX_BYTES. Files in
   torch's older formats (a pickle stream, a tar) allocate what they declare before reading it, so they
   are refused too: every checkpoint of this project is a zip, and an older .pth becomes one when a
   current torch loads and saves it again.
2. the load, memory-mapped (`mmap=True`): each storage is a slice of the mapped file, never a
   buffer of the size the pickle declares, and torch refuses a tensor that runs past its storage.
3. the tensors: dense (no sparse, quantized or nested ones), with values (not on the meta device),
   none repeating its storage's values (a stride-0 view of 4 bytes can claim 4 GB), at most
   MAX_BYTES in all.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import UserError

# The paper's net is 61 M float32 weights = 244 MB; a training checkpoint adds the momentum of every
# weight and the mean image, ~0.5 GB. 4 GiB leaves room for wider variants and bounds both what an
# archive may declare and what its tensors may claim.
MAX_BYTES = 4 << 30
ZIP_MAGIC = b"PK\x03\x04"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def archive_problem(path: Path) -> str | None:
    """Why the zip at `path` is not one torch.save wrote with sane sizes, or None (read from its
    central directory: nothing is inflated)."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        return f"its zip directory cannot be read ({e})"
    file_size, declared = path.stat().st_size, 0
    for e in entries:
        if e.compress_type != zipfile.ZIP_STORED:
            return (f"its entry '{e.filename}' is compressed ({_size(e.compress_size)} said to inflate to "
                    f"{_size(e.file_size)}); torch.save stores every entry as it is, so this file was made "
                    f"otherwise and is refused before anything is inflated")
        if e.file_size != e.compress_size:
            return f"its entry '{e.filename}' declares {_size(e.file_size)} but holds {_size(e.compress_size)}"
        declared += e.file_size
    if declared > file_size:
        return f"its entries declare {_size(declared)}, more than the file's {_size(file_size)}"
    if declared > MAX_BYTES:
        return f"its entries declare {_size(declared)}, more than the {_size(MAX_BYTES)} a weights file may hold"
    return None


def _load_problem(e: BaseException) -> str:
    """One line of our own for an exception of torch.load (torch's own text advises turning its
    code-free loading off: never passed on)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named:
            return f"it would need code to load ({named.group(1)}); refused, nothing was run"
        return "it would need code to load, or is not a pickle of tensors and plain values; refused, nothing was run"
    if isinstance(e, RecursionError):
        return "its values are nested too deeply"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if "weights_only" in text or len(first) > 200:
        return f"it is not a file torch.save wrote ({type(e).__name__})"
    return f"it is not a file torch.save wrote ({first})"


def _tensors(value: Any) -> list[tuple[str, torch.Tensor]]:
    """(where, tensor) of every tensor in nested dicts, lists, tuples and sets, each object once and
    without recursion (a pickle can nest far deeper than Python's stack, and share or loop)."""
    found, stack, seen = [], [("", value)], set()
    while stack:
        where, v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            found.append((where or "the file", v))
        elif isinstance(v, dict):
            stack.extend((f"{where}/{k}".lstrip("/"), x) for k, x in v.items())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return found


def tensor_problem(where: str, t: torch.Tensor) -> str | None:
    """Why `t` is not a dense tensor of values this project can read, or None."""
    if t.layout != torch.strided or t.is_nested:
        return f"'{where}' is a {str(t.layout).removeprefix('torch.')} tensor; only dense tensors are read"
    if t.is_quantized:
        return f"'{where}' is a quantized tensor ({t.dtype}); only plain tensors are read"
    if t.device.type == "meta":
        return f"'{where}' is a tensor on the meta device: a shape without values"
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        return f"'{where}' repeats its values (a stride of 0 or overlapping rows); refused"
    return None


@contextlib.contextmanager
def _loadable_name(path: Path):
    """A name torch can open for `path`: the path itself, or, where it is not UTF-8 (torch's file
    reader takes a std::string and fails on such a name), the open file as /proc/self/fd/N."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield str(path)


def read_torch_file(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """The object a torch.save file holds, loaded as data after the checks above. Any problem is a
    UserError: '{path} is not {what}: {why}'."""
    path = Path(path)

    def refuse(why: str) -> UserError:
        return UserError(f"{path} is not {what}: {why}")

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror or e}") from None
    if head != ZIP_MAGIC:
        size = path.stat().st_size
        kind = "an empty file" if not size else f"a {size:,}-byte file that is not a zip archive"
        raise refuse(f"{kind}; torch.save has written zip archives since torch 1.6 (older formats are refused: "
                     f"their sizes cannot be checked before loading)")
    problem = archive_problem(path)
    if problem:
        raise refuse(problem)
    try:
        with warnings.catch_warnings(), _loadable_name(path) as name:  # torch's notes on what a file holds:
            warnings.simplefilter("ignore")  # it is judged below
            value = torch.load(name, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix, in our words
        raise refuse(_load_problem(e)) from None
    total = 0
    for where, t in _tensors(value):
        problem = tensor_problem(where, t)
        if problem:
            raise refuse(problem)
        total += t.numel() * t.element_size()
    if total > MAX_BYTES:
        raise refuse(f"its tensors hold {_size(total)}, more than the {_size(MAX_BYTES)} a weights file may hold")
    return value
