"""Small C kernels for the CPU, compiled on first use with the machine's C compiler and loaded with
ctypes: no Python headers, no torch headers, about a second each to build. Two use it: §3.3's LRN
(lrn_kernel.c, alexnet.lrn_native) and §5's update rule (sgd_kernel.c, alexnet.optim). Without a
compiler, or switched off by its environment variable, a kernel's `load()` gives None (`status()`
says why) and its caller computes the same formula with torch operations.

A compiled library is cached under $ALEXNET_CACHE_DIR, else $XDG_CACHE_HOME/alexnet, else
~/.cache/alexnet, named by a hash of the source, the compiler and its flags, and written whole
(compiled to a temporary name, fsynced, renamed), so processes that start together (torchrun's ranks)
each see either no library or a whole one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sysconfig
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from alexnet.files import atomic_path

# -ffp-contract=off: no fused multiply-adds, so every CPU (AVX-512, AVX2, baseline clone) rounds alike.
FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-shared")
LIBRARIES = ("-lm",)  # sqrtf, fmaf where the CPU has no instruction for them
# Elements below which the calling thread does a whole call alone: a million take ~2 ms of one thread
# (norm1's forward at batch 64: 18.6 M in 16.8 ms on two).
PARALLEL_MIN_ELEMENTS = 1 << 20
NOT_LOADED = "not loaded yet"


def cache_dir() -> Path:
    if os.environ.get("ALEXNET_CACHE_DIR"):
        return Path(os.environ["ALEXNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet"


def _compiler() -> str | None:
    """$CC, else the compiler Python was built with, else cc/gcc/clang on the PATH."""
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _compile(cc: str, source_path: Path, name: str) -> Path:
    source = source_path.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, timeout=30).stdout
    key = hashlib.sha256(source + version + " ".join(FLAGS + LIBRARIES).encode() + cc.encode()).hexdigest()[:16]
    lib = cache_dir() / f"{name}-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(lib) as tmp:
            done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(source_path), *LIBRARIES], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode != 0:
                raise OSError(f"{Path(cc).name} failed: {done.stderr.strip()[-500:]}")
    return lib


class Kernel:
    """One C source, compiled and loaded on the first `load()`; `bind` declares its functions' ctypes
    signatures; `switch` is the environment variable that turns it off ("0"); `fallback` says what
    runs instead, for status()."""

    def __init__(self, source: Path, name: str, switch: str, bind: Callable[[ctypes.CDLL], None], fallback: str):
        self.source, self.name, self.switch, self.bind, self.fallback = source, name, switch, bind, fallback
        self._lock = threading.Lock()
        self._library: ctypes.CDLL | None = None
        self._status = NOT_LOADED
        _kernels.append(self)

    def load(self) -> ctypes.CDLL | None:
        """The library, compiled and loaded on the first call; None where it cannot be (status())."""
        if self._status != NOT_LOADED:
            return self._library
        with self._lock:
            if self._status == NOT_LOADED:
                self._library, self._status = self._build()
        return self._library

    def _build(self) -> tuple[ctypes.CDLL | None, str]:
        if os.environ.get(self.switch, "1") == "0":
            return None, f"off ({self.switch}=0)"
        cc = _compiler()
        if cc is None:
            return None, f"no C compiler found (set CC): {self.fallback}"
        try:
            path = _compile(cc, self.source, self.name)
            library = ctypes.CDLL(str(path))
            self.bind(library)
            return library, f"loaded {path}"
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            return None, f"not built ({e}): {self.fallback}"

    def status(self) -> str:
        """What load() did: the library's path, or why the torch operations run instead."""
        return self._status

    def forget(self) -> None:
        """As in a new process: the next load() looks again (the environment, the cache)."""
        self._library, self._status = None, NOT_LOADED


_kernels: list[Kernel] = []
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _workers(count: int) -> ThreadPoolExecutor:
    """`count` threads kept between calls, so that a many-core machine does not start dozens of threads
    for every layer."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="alexnet-kernel"), count
        return _pool


def _after_fork_in_child() -> None:
    """The parent's threads (and whoever held a lock) do not exist in a forked child."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()
    for kernel in _kernels:
        kernel._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_split(function, tensors: list[Tensor], rows: int, row_elements: int, *args) -> bool:
    """function(pointers into each tensor at row r, rows taken, *args) over [0, rows), split in
    contiguous row ranges over torch's intra-op thread count: this thread takes the first, pooled
    threads the others (ctypes lets go of the GIL). True when every part returned 0."""
    if rows == 0:
        return True
    threads = 1 if rows * row_elements < PARALLEL_MIN_ELEMENTS else max(1, min(torch.get_num_threads(), rows))
    step = -(-rows // threads)
    size = tensors[0].element_size()

    def part(first: int) -> int:
        return function(*(t.data_ptr() + first * row_elements * size for t in tensors), min(step, rows - first), *args)

    others = [_workers(threads - 1).submit(part, first) for first in range(step, rows, step)] if threads > 1 else []
    failed = part(0) != 0
    return not (any([f.result() != 0 for f in others]) or failed)
