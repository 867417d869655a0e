"""§3.3's LRN as one fused C kernel on the CPU (lrn_kernel.c), compiled on first use and loaded with
ctypes (alexnet.native: about 1.3 s to build here, cached). Without a compiler, or with
ALEXNET_LRN_KERNEL=0, `load()` gives None (`status()` says why) and alexnet.lrn computes the layer
with torch operations instead (same formula; tests/test_lrn_native.py compares the two and both with
float64).

Why: the torch version passes each activation-sized tensor through memory about seven times (square,
window sum, +k, log, exp, products) and keeps the scale and scale^-beta for the backward pass; the
kernel reads the input once and writes the output once, and the backward pass computes the scale
again from the input in cache. bench/lrn.py and bench/peer.py measure it against the torch version.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from alexnet import native
from alexnet.runtime import capturing_graph


def _bind(lib: ctypes.CDLL) -> None:
    p, n, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    for name in ("lrn_forward_f32", "lrn_forward_bf16"):
        getattr(lib, name).argtypes = [p, p, n, n, n, n, f, f, n]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("lrn_backward_f32", "lrn_backward_bf16"):
        getattr(lib, name).argtypes = [p, p, p, n, n, n, n, f, f, n]
        getattr(lib, name).restype = ctypes.c_int


KERNEL = native.Kernel(Path(__file__).with_name("lrn_kernel.c"), "lrn", "ALEXNET_LRN_KERNEL", _bind,
                       "LRN runs as torch operations")
load, status = KERNEL.load, KERNEL.status


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


def _run(function, tensors: list[Tensor], rows: int, row_elements: int, *args) -> None:
    if not native.run_split(function, tensors, rows, row_elements, *args):
        raise ValueError(f"the LRN kernel refused a layer of {row_elements} maps (see applies())")


def forward(x: Tensor, size: int, alpha: float, k: float, groups: int, relu: bool = False) -> Tensor:
    """The LRN of a channels-last x for which applies() holds (of max(x, 0) with relu), in x's dtype and
    layout."""
    lib = load()
    b, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    fn = lib.lrn_forward_f32 if x.dtype == torch.float32 else lib.lrn_forward_bf16
    _run(fn, [x, y], b * h * w, c, c, groups, size, alpha, k, int(relu))
    return y


def backward(x: Tensor, grad: Tensor, size: int, alpha: float, k: float, groups: int, relu: bool = False) -> Tensor:
    """The gradient with respect to x (channels last, as grad must be) of forward(x, ..., relu)."""
    lib = load()
    b, c, h, w = x.shape
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    fn = lib.lrn_backward_f32 if x.dtype == torch.float32 else lib.lrn_backward_bf16
    _run(fn, [x, grad, dx], b * h * w, c, c, groups, size, alpha, k, int(relu))
    return dx
