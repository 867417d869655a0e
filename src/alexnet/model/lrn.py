"""§3.3 Local response normalisation, the layer that costs most per multiply-add.

    b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2) ** beta

Three ways to compute it, one seam (`local_response_norm`), chosen by measurement
(bench/docs/native.md):

- On the CPU, in float32 and bfloat16, the torch operator `alexnet::lrn` (lrn_op.py, csrc/lrn.cpp):
  a few pixels' maps at a time read once into float32 buffers, computed in one pass, written once;
  the backward computes the scale again from the input (nothing else is kept). It earns its keep end to end (a paper-net training step 1.11x over the torch operations
  below in float32, 1.21x in bf16) and under `torch.compile` too, where inductor sees it as one
  node: the compiled formula ran 20-24x slower than it (forward + backward, norm1 and norm2).
- Elsewhere (CUDA, float64, ALEXNET_LRN_OP=0, no compiler to build the operator with) eager torch
  operations with a hand-written backward (`lrn_torch`). The window sum over channels, the one
  costly part that is not elementwise, is on the CPU a matrix product with a band matrix, `(B*H*W,
  C) @ (C, C)` on a channels_last tensor or `(C, C) @ (C, H*W)` per image on a contiguous one, with
  alpha folded into the band: one GEMM in place of the 2(n/2)+1 strided passes of shifted adds. On
  CUDA the shifted adds stay: elementwise passes are cheap there, and a TF32 matmul would round the
  sum. Each tower's maps are their own block of the band (groups).
- Under `torch.compile` off the CPU's operator, and always under `torch.export` (an exported or
  ONNX graph must run where this package's library is not), the plain formula (`lrn_formula`),
  which inductor fuses, forward and backward, into a few elementwise loops.

`torch.fx` records the layer as one call (`torch.fx.wrap`), so the net traces whole; the choice of
path is made inside the call, never in the net's `forward`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from alexnet.model import lrn_op


def _window_band(blocks: Tensor, size: int, weight: float, dtype: torch.dtype) -> Tensor | None:
    """For the maps along dim 1 of `blocks`, the (n, n) symmetric band: weight where |i - j| <= size
    // 2, else 0; the cut-off at the first and last map (§3.3's max(0, .) and min(N-1, .)) is the
    band's missing corners. None off the CPU (shifted adds there)."""
    if blocks.device.type != "cpu":
        return None
    i = torch.arange(blocks.shape[1], device=blocks.device)
    return ((i[:, None] - i[None, :]).abs() <= size // 2).to(dtype) * weight


def _is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _dense(t: Tensor) -> Tensor:
    """t contiguous in its own layout (channels_last stays channels_last)."""
    return t.contiguous(memory_format=torch.channels_last if _is_channels_last(t) else torch.contiguous_format)


def _blocks(t: Tensor, groups: int) -> Tensor:
    """A dense (B, C, H, W) tensor as a stack of independent window-sum problems along dim 0, with the
    maps of one group along dim 1, as a view: (B*H*W*groups, C/groups) rows in channels_last,
    (B*groups, C/groups, H*W) otherwise."""
    b, c, h, w = t.shape
    if _is_channels_last(t):
        return t.permute(0, 2, 3, 1).reshape(b * h * w * groups, c // groups)
    return t.view(b * groups, c // groups, h * w)


def _unblocks(blocks: Tensor, like: Tensor) -> Tensor:
    """_blocks undone: the (B, C, H, W) tensor in `like`'s layout whose blocks `blocks` are."""
    b, c, h, w = like.shape
    if _is_channels_last(like):
        return blocks.view(b, h, w, c).permute(0, 3, 1, 2)
    return blocks.view(b, c, h, w)


def _window_sum(blocks: Tensor, size: int, weight: float, band: Tensor | None) -> Tensor:
    """weight * the sum over the `size` maps centred on each map, along dim 1 of `blocks`: a product
    with the band (on the CPU; autocast off, a bf16 product would round the sum) or shifted adds."""
    if band is not None:
        with torch.autocast(blocks.device.type, enabled=False):
            return torch.matmul(band, blocks) if blocks.dim() == 3 else torch.matmul(blocks, band)
    half, n = size // 2, blocks.shape[1]
    out = blocks.clone()
    for d in range(1, min(half, n - 1) + 1):
        out.narrow(1, d, n - d).add_(blocks.narrow(1, 0, n - d))  # j = i - d
        out.narrow(1, 0, n - d).add_(blocks.narrow(1, d, n - d))  # j = i + d
    return out if weight == 1.0 else out.mul_(weight)


def channel_window_sum(t: Tensor, size: int, groups: int = 1, weight: float = 1.0) -> Tensor:
    """weight * the sum of (B, C, H, W) `t` over the `size` maps centred on each map, within each of
    `groups` blocks of C/groups maps, in `t`'s dtype and memory format."""
    t = _dense(t)
    blocks = _blocks(t, groups)
    return _unblocks(_window_sum(blocks, size, weight, _window_band(blocks, size, weight, t.dtype)), t)


def _at_least_float32(x: Tensor) -> Tensor:
    """In bf16, k + alpha*sum ~ 2.07 would be rounded to steps of 1/64, about the size of the whole
    normalisation effect: LRN computes in float32 (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _normalise(x: Tensor, size: int, alpha: float, beta: float, k: float,
               groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """The output for a dense x, and the scale and scale^-beta (float32 or wider) the backward needs."""
    xs = _blocks(x, groups)
    xc = _at_least_float32(xs)
    s = _window_sum(xc * xc, size, alpha, _window_band(xs, size, alpha, xc.dtype)).add_(k)
    inv = s.pow(-beta)
    return _unblocks((xc * inv).to(x.dtype), x), _unblocks(s, x), _unblocks(inv, x)


def _gradient(grad: Tensor, x: Tensor, scale: Tensor, inv: Tensor, size: int, alpha: float, beta: float,
              groups: int) -> Tensor:
    """grad_a_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1), for
    dense x, scale, inv and grad in one layout."""
    xs, gs, ss, invs = (_blocks(t, groups) for t in (x, grad, scale, inv))
    weight = -2.0 * alpha * beta
    xc = _at_least_float32(xs)
    g_inv = _at_least_float32(gs) * invs  # bf16 * float32 in one op is slower than two ops
    t = _window_sum((g_inv * xc).div_(ss), size, weight, _window_band(xs, size, weight, ss.dtype))
    return _unblocks(g_inv.addcmul_(xc, t).to(x.dtype), x)


def lrn_formula(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    """§3.3 as plain differentiable torch operations in at least float32: what `torch.compile` traces.
    The window sum is 2(n/2)+1 shifted slices of the zero-padded squares, so that inductor fuses the
    whole layer (and the backward it derives) into a few elementwise loops, on the CPU and on CUDA,
    instead of the eager path's hand-written autograd function, which dynamo cannot trace."""
    b, c, h, w = x.shape
    xc = _at_least_float32(x)
    squares = (xc * xc).unflatten(1, (groups, c // groups))
    half, n = size // 2, c // groups
    padded = torch.nn.functional.pad(squares, (0, 0, 0, 0, half, half))
    window = padded.narrow(2, 0, n)
    for d in range(1, size):
        window = window + padded.narrow(2, d, n)
    scale = window.flatten(1, 2) * alpha + k
    return (xc * scale.pow(-beta)).to(x.dtype)


class _LocalResponseNorm(torch.autograd.Function):
    """The formula with a hand-written backward: autograd through the eager formula keeps five
    intermediates alive and recomputes a pow; this keeps the input, scale and scale^-beta.

    d b_i / d a_j = delta_ij s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1)  for j in i's window, so
    grad_a_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1), and the
    window is symmetric, so the sum is the same channel-window sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        x = _dense(x)
        ctx.constants = (size, alpha, beta, groups)
        out, scale, inv = _normalise(x, size, alpha, beta, k, groups)
        ctx.save_for_backward(x, scale, inv)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        size, alpha, beta, groups = ctx.constants
        x, scale, inv = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
        return _gradient(grad, x, scale, inv, size, alpha, beta, groups), None, None, None, None, None


def lrn_torch(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    """§3.3 as eager torch operations: the band-matrix window sum and, when a gradient is wanted, the
    hand-written backward (the path wherever the operator does not run: off the CPU, float64,
    ALEXNET_LRN_OP=0, no compiler)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _LocalResponseNorm.apply(x, size, alpha, beta, k, groups)
    return _normalise(_dense(x), size, alpha, beta, k, groups)[0]


@torch.compiler.assume_constant_result  # dynamo calls it (building the operator) and keeps the answer
def _op_loaded() -> bool:
    return lrn_op.load()


def _op_applies(x: Tensor) -> bool:
    """Whether alexnet::lrn computes x: CPU float32 or bfloat16 maps, the operator built (lrn_op)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4 and _op_loaded()


@torch.fx.wrap
def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        groups: int = 1) -> Tensor:
    """§3.3 on (B, C, H, W) maps, alpha on the plain sum (torch's F.local_response_norm takes n*alpha).
    With groups > 1 the window stays within each group of C/groups maps (each tower normalises its own).
    Computed in at least float32 whatever the input dtype; the output has the input's dtype and layout."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} maps do not split into {groups} groups")
    if torch.compiler.is_compiling() and (torch.compiler.is_exporting() or not _op_applies(x)):
        return lrn_formula(x, size, alpha, beta, k, groups)  # for inductor to fuse; plain ops to export
    if _op_applies(x):
        return lrn_op.lrn(x, size, alpha, beta, k, groups)
    return lrn_torch(x, size, alpha, beta, k, groups)


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size n must be odd (a window centred on each map), got {size}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: Tensor) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
