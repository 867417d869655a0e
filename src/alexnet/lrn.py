"""§3.3 Local response normalisation, the layer that costs most per multiply-add.

    b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2) ** beta

The window sum over channels is the one costly part that is not elementwise. On the CPU it is one
matrix product with a 0/1 band matrix over the channels, `(B*H*W, C) @ (C, C)` on a channels_last
tensor or `(C, C) @ (C, H*W)` per image on a contiguous one, with alpha folded into the band: one
GEMM in place of the 2(n/2)+1 strided passes of shifted adds, 1.4x faster LRN forward+backward for
norm1 (bench/lrn.py). Elsewhere (CUDA) the shifted adds stay: elementwise passes are cheap there, and
a TF32 matmul would round the sum. Each tower's maps are their own block of the band (groups).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def _window_band(n: int, size: int, weight: float, like: Tensor) -> Tensor:
    """(n, n) symmetric band: weight where |i - j| <= size // 2, else 0. The cut-off at the first and
    last map (§3.3's max(0, .) and min(N-1, .)) is the band's missing corners."""
    i = torch.arange(n, device=like.device)
    return ((i[:, None] - i[None, :]).abs() <= size // 2).to(like.dtype) * weight


def _shifted_window_sum(t: Tensor, size: int, groups: int) -> Tensor:
    by_group = t.unflatten(1, (groups, t.shape[1] // groups))  # a view whatever the memory format
    half, n = size // 2, by_group.shape[2]
    out = by_group.clone()
    for d in range(1, min(half, n - 1) + 1):
        out.narrow(2, d, n - d).add_(by_group.narrow(2, 0, n - d))  # j = i - d
        out.narrow(2, 0, n - d).add_(by_group.narrow(2, d, n - d))  # j = i + d
    return out.flatten(1, 2)


def channel_window_sum(t: Tensor, size: int, groups: int = 1, weight: float = 1.0) -> Tensor:
    """weight * the sum of (B, C, H, W) `t` over the `size` maps centred on each map, within each of
    `groups` blocks of C/groups maps, in `t`'s dtype and memory format. Autocast stays off: a bf16
    product would round the sum."""
    if t.device.type != "cpu":
        out = _shifted_window_sum(t, size, groups)
        return out if weight == 1.0 else out.mul_(weight)
    b, c, h, w = t.shape
    n = c // groups
    band = _window_band(n, size, weight, t)
    with torch.autocast(t.device.type, enabled=False):
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
            rows = t.permute(0, 2, 3, 1).reshape(b * h * w * groups, n)
            return (rows @ band).view(b, h, w, c).permute(0, 3, 1, 2)
        maps = t.contiguous().view(b * groups, n, h * w)
        return torch.matmul(band, maps).view(b, c, h, w)


def _at_least_float32(x: Tensor) -> Tensor:
    """In bf16, k + alpha*sum ~ 2.07 would be rounded to steps of 1/64, about the size of the whole
    normalisation effect: LRN computes in float32 (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _power(scale: Tensor, exponent: float, in_place: bool = False) -> Tensor:
    """scale ** exponent. On the CPU as exp(exponent * log(scale)): three vectorised passes take about
    half the time of torch.pow with a fractional exponent (bench/lrn.py), and agree to 1e-7."""
    if scale.device.type != "cpu":
        return scale.pow_(exponent) if in_place else scale.pow(exponent)
    return (scale.log_() if in_place else scale.log()).mul_(exponent).exp_()


def _to_dtype_of(x: Tensor, like: Tensor) -> Tensor:
    return x if x.dtype == like.dtype else x.to(like.dtype)


class _LocalResponseNorm(torch.autograd.Function):
    """The formula with a hand-written backward: autograd through the eager formula keeps five
    intermediates alive and recomputes a pow; this keeps the input, scale and scale^-beta.

    d b_i / d a_j = delta_ij s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1)  for j in i's window, so
    grad_a_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1), and the
    window is symmetric, so the sum is the same channel-window sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        xf = _at_least_float32(x)
        scale = channel_window_sum(xf * xf, size, groups, alpha).add_(k)
        inv = _power(scale, -beta)
        ctx.save_for_backward(xf, scale, inv)
        ctx.constants = (size, alpha, beta, groups)
        return _to_dtype_of(xf * inv, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, scale, inv = ctx.saved_tensors
        size, alpha, beta, groups = ctx.constants
        g_inv = _at_least_float32(grad) * inv  # bf16 * float32 in one op is slower than two ops
        t = channel_window_sum((g_inv * x).div_(scale), size, groups, -2.0 * alpha * beta)
        return _to_dtype_of(torch.addcmul(g_inv, x, t), grad), None, None, None, None, None


def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        groups: int = 1) -> Tensor:
    """§3.3 on (B, C, H, W) maps, alpha on the plain sum (torch's F.local_response_norm takes n*alpha).
    With groups > 1 the window stays within each group of C/groups maps (each tower normalises its own).
    Computed in at least float32 whatever the input dtype; the output has the input's dtype."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} maps do not split into {groups} groups")
    if x.requires_grad and torch.is_grad_enabled():
        return _LocalResponseNorm.apply(x, size, alpha, beta, k, groups)
    xf = _at_least_float32(x)
    scale = channel_window_sum(xf * xf, size, groups, alpha).add_(k)
    return _to_dtype_of(xf * _power(scale, -beta, in_place=True), x)


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
