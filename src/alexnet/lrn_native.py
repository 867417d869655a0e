"""§3.3's LRN as one fused C kernel on the CPU (lrn_kernel.c), compiled on first use with the
machine's C compiler and loaded with ctypes: no Python headers, no torch headers, about 1.3 s to
build here. Without a compiler, or with ALEXNET_LRN_KERNEL=0, `load()` gives None (`status()` says
why) and alexnet.lrn computes the layer with torch operations instead (same formula;
tests/test_lrn_native.py compares the two and both with float64).

Why: the torch version passes each activation-sized tensor through memory about seven times (square,
window sum, +k, log, exp, products) and keeps the scale and scale^-beta for the backward pass; the
kernel reads the input once and writes the output once, and the backward pass computes the scale
again from the input in cache. bench/lrn.py and bench/peer.py measure it against the torch version.

The compiled library is cached under $ALEXNET_CACHE_DIR, else $XDG_CACHE_HOME/alexnet, else
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from alexnet.files import atomic_path
from alexnet.runtime import capturing_graph

SOURCE = Path(__file__).with_name("lrn_kernel.c")
# -ffp-contract=off: no fused multiply-adds, so every CPU (AVX-512, AVX2, baseline clone) rounds alike.
FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-shared")
# Elements below which the calling thread does the whole layer alone: a million take ~2 ms of one
# thread (norm1's forward at batch 64: 18.6 M in 16.8 ms on two).
PARALLEL_MIN_ELEMENTS = 1 << 20

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status = "not loaded yet"


def cache_dir() -> Path:
    if os.environ.get("ALEXNET_CACHE_DIR"):
        return Path(os.environ["ALEXNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet"


def _compiler() -> str | None:
    """$CC, else the compiler Python was built with, else cc/gcc/clang on the PATH."""
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _compile(cc: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, timeout=30).stdout
    key = hashlib.sha256(source + version + " ".join(FLAGS).encode() + cc.encode()).hexdigest()[:16]
    lib = cache_dir() / f"lrn-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(lib) as tmp:
            done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                raise OSError(f"{Path(cc).name} failed: {done.stderr.strip()[-500:]}")
    return lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, n, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    for name in ("lrn_forward_f32", "lrn_forward_bf16"):
        getattr(lib, name).argtypes = [p, p, n, n, n, n, f, f]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("lrn_backward_f32", "lrn_backward_bf16"):
        getattr(lib, name).argtypes = [p, p, p, n, n, n, n, f, f]
        getattr(lib, name).restype = ctypes.c_int
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, compiled and loaded on the first call; None where it cannot be (status())."""
    global _library, _status
    if _status != "not loaded yet":
        return _library
    with _lock:
        if _status != "not loaded yet":
            return _library
        if os.environ.get("ALEXNET_LRN_KERNEL", "1") == "0":
            _status = "off (ALEXNET_LRN_KERNEL=0)"
            return None
        cc = _compiler()
        if cc is None:
            _status = "no C compiler found (set CC): LRN runs as torch operations"
            return None
        try:
            path = _compile(cc)
            _library = _bind(ctypes.CDLL(str(path)))
            _status = f"loaded {path}"
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            _status = f"not built ({e}): LRN runs as torch operations"
    return _library


def status() -> str:
    """What load() did: the library's path, or why the torch operations run instead."""
    return _status


MAX_MAPS_A_GROUP = 4096  # lrn_kernel.c's buffers


def applies(x: Tensor, size: int, beta: float, groups: int) -> bool:
    """Whether the kernel computes this input: CPU, float32 or bf16, dense channels-last rows (the
    net's layout on the CPU), the paper's beta, an odd window, at most MAX_MAPS_A_GROUP maps a group,
    run eagerly (runtime.capturing_graph; a fake or wrapped tensor has no memory to hand to C either),
    and the library built."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and beta == 0.75 and size % 2 == 1 and size <= 129 and x.dim() == 4 and x.shape[1] % groups == 0
            and x.shape[1] // groups <= MAX_MAPS_A_GROUP and x.is_contiguous(memory_format=torch.channels_last)
            and not capturing_graph() and load() is not None)


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _workers(count: int) -> ThreadPoolExecutor:
    """`count` threads kept between calls, so that a many-core machine does not start dozens of threads
    for every layer."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="alexnet-lrn"), count
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's threads (and whoever held the lock) do not exist there."""
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _run(function, tensors: list[Tensor], rows: int, row_elements: int, *args) -> None:
    """function(pointers into each tensor at row r, rows taken, *args) over [0, rows), split in
    contiguous row ranges over torch's intra-op thread count: this thread takes the first, pooled
    threads the others (ctypes lets go of the GIL)."""
    if rows == 0:
        return
    threads = 1 if rows * row_elements < PARALLEL_MIN_ELEMENTS else max(1, min(torch.get_num_threads(), rows))
    step = -(-rows // threads)
    size = tensors[0].element_size()

    def part(first: int) -> int:
        return function(*(t.data_ptr() + first * row_elements * size for t in tensors), min(step, rows - first), *args)

    others = [_workers(threads - 1).submit(part, first) for first in range(step, rows, step)] if threads > 1 else []
    failed = part(0) != 0
    failed = any([f.result() != 0 for f in others]) or failed
    if failed:
        raise ValueError(f"the LRN kernel refused a layer of {row_elements} maps (see applies())")


def forward(x: Tensor, size: int, alpha: float, k: float, groups: int) -> Tensor:
    """The LRN of a channels-last x for which applies() holds, in x's dtype and layout."""
    lib = load()
    b, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    fn = lib.lrn_forward_f32 if x.dtype == torch.float32 else lib.lrn_forward_bf16
    _run(fn, [x, y], b * h * w, c, c, groups, size, alpha, k)
    return y


def backward(x: Tensor, grad: Tensor, size: int, alpha: float, k: float, groups: int) -> Tensor:
    """The gradient with respect to x (channels last, as grad must be) of forward(x)."""
    lib = load()
    b, c, h, w = x.shape
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    fn = lib.lrn_backward_f32 if x.dtype == torch.float32 else lib.lrn_backward_bf16
    _run(fn, [x, grad, dx], b * h * w, c, c, groups, size, alpha, k)
    return dx
