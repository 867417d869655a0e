"""Process-level settings and device choices shared by the commands."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from alexnet.errors import UserError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    glibc serves every block over 32 MB with its own mmap and unmaps it on free, so each large
    activation of a CPU training step is page-faulted in again on the next step: a fresh 148 MB
    tensor (conv1's maps at batch 128) cost 65 ms to fill against 9 ms for a reused one, and a paper
    net training step ran at 16.8 images/s with it against 31.3 without (bench/README.md). Set
    ALEXNET_KEEP_FREED_MEMORY=0 to leave the allocator alone."""
    if os.environ.get("ALEXNET_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"'{name}' is not a device (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but this machine has no CUDA GPU visible to torch")
    return device
