"""§3.3 Local response normalisation, the layer that costs most per multiply-add.

    b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2) ** beta

On the CPU, a float32 or bf16 layer in channels_last (the net's layout there) runs as one fused C
kernel (alexnet/lrn_native.py, lrn_kernel.c) where the machine has a C compiler to build it: one pass
in, one pass out, the backward computing the scale again from the input. What follows is the same
layer as torch operations, for everything else: CUDA, NCHW, float64, traced, compiled or exported
graphs, and machines without a compiler.

The window sum over channels is the one costly part that is not elementwise. On the CPU it is a
matrix product with a band matrix over the channels, `(B*H*W, C) @ (C, C)` on a channels_last tensor
or `(C, C) @ (C, H*W)` per image on a contiguous one, with alpha folded into the band: one GEMM in
place of the 2(n/2)+1 strided passes of shifted adds. Elsewhere (CUDA) the shifted adds stay:
elementwise passes are cheap there, and a TF32 matmul would round the sum. Each tower's maps are
their own block of the band (groups).

On the CPU, in channels_last (the net's layout there), the layer runs chunk by chunk over the rows,
so that the seven passes of a chunk (square, window sum, +k, log, exp, the products) meet in the
cores' L2 cache instead of streaming the whole activation through memory seven times, and each band
product covers only the maps a window reaches: forward+backward at batch 64, 2 threads, 1.06x
(norm1) and 1.21x (norm2) in float32, 1.19x and 1.30x with bf16 input, against the same layer as
one chunk and one whole-band product (bench/lrn.py); 1.02-1.10x a paper-net step (bench/peer.py
--lrn-at). A contiguous (NCHW) tensor runs whole: chunked it was no faster.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from alexnet import lrn_native

# Float32 bytes of activation a chunk holds per intra-op thread: each thread's share of a pass then
# fits its L2 with the other tensors of the chunk. 0.5-2 MB a thread were level (bench/lrn.py
# --chunks at 1 and 2 threads); 0.25 MB lost to the per-op overhead, one chunk to memory traffic.
CHUNK_BYTES_PER_THREAD = 1 << 20
# Output maps per band product (_band_product).
BAND_BLOCK = 32


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


def _window_sum(blocks: Tensor, size: int, weight: float, band: Tensor | None, out: Tensor | None = None) -> Tensor:
    """weight * the sum over the `size` maps centred on each map, along dim 1 of `blocks` (into `out`
    if given): products with the band (on the CPU) or shifted adds (band None)."""
    if band is not None:
        return _band_product(blocks, band, size, out)
    half, n = size // 2, blocks.shape[1]
    out = blocks.clone() if out is None else out.copy_(blocks)
    for d in range(1, min(half, n - 1) + 1):
        out.narrow(1, d, n - d).add_(blocks.narrow(1, 0, n - d))  # j = i - d
        out.narrow(1, 0, n - d).add_(blocks.narrow(1, d, n - d))  # j = i + d
    return out if weight == 1.0 else out.mul_(weight)


def _band_product(blocks: Tensor, band: Tensor, size: int, out: Tensor | None = None) -> Tensor:
    """The window sum as products with the band, BAND_BLOCK output maps at a time, each from only the
    maps its windows reach: the band is zero elsewhere (norm2's 128 maps a tower: 36 of 128 products a
    map, forward+backward 1.12x faster than one whole-band product; bench/lrn.py --band-block 128).
    Compiled, one product: dynamo breaks the graph at a strided `out=`. Autocast stays off: a bf16
    product would round the sum."""
    n, half = blocks.shape[1], size // 2
    with torch.autocast(blocks.device.type, enabled=False):
        if blocks.dim() == 3:
            return torch.matmul(band, blocks, out=out)
        if n <= BAND_BLOCK or torch.compiler.is_compiling():
            return torch.matmul(blocks, band, out=out)
        out = torch.empty_like(blocks) if out is None else out
        for first in range(0, n, BAND_BLOCK):
            width = min(BAND_BLOCK, n - first)
            lo, hi = max(0, first - half), min(n, first + width + half)
            torch.matmul(blocks[:, lo:hi], band[lo:hi, first:first + width], out=out[:, first:first + width])
    return out


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


_vml_resolved = False


def _resolve_vml_once() -> None:
    """oneMKL picks each VML function's kernel (torch.log and torch.exp on the CPU go to it) on that
    function's first call, and first calls on two threads at once can run one thread's chunk through
    a low-accuracy kernel (pytorch/pytorch#188792). Seen here: the first LRN of a process off by up to
    1.1e-3 in about 1 process of 20, the log of its first chunk off by 4e-5. One tiny call per function
    and precision, on this thread, resolves the kernel first (the upstream fix does the same)."""
    global _vml_resolved
    if not _vml_resolved:
        for dtype in (torch.float32, torch.float64):
            one = torch.ones(1, dtype=dtype)
            torch.exp(torch.log(one))
        _vml_resolved = True


def _power(scale: Tensor, exponent: float, out: Tensor | None = None) -> Tensor:
    """scale ** exponent, into `out` (which may be scale itself). On the CPU as exp(exponent *
    log(scale)): three vectorised passes take about half the time of torch.pow with a fractional
    exponent (bench/lrn.py), and agree to 1e-7."""
    if scale.device.type != "cpu":
        return torch.pow(scale, exponent, out=out)
    _resolve_vml_once()
    return torch.log(scale, out=out).mul_(exponent).exp_()


def _chunks(blocks: Tensor) -> list[slice]:
    """Slices of dim 0 of `blocks`: for channels_last rows on the CPU, CHUNK_BYTES_PER_THREAD of float32
    per intra-op thread each; otherwise one slice, the whole. Traced or compiled, one slice too: a loop
    over the batch would fix the batch size into an exported graph (ONNX) and unroll under inductor."""
    rows = blocks.shape[0]
    if blocks.device.type != "cpu" or blocks.dim() == 3 or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return [slice(0, rows)]
    step = max(1, CHUNK_BYTES_PER_THREAD * torch.get_num_threads() // (4 * max(1, blocks.shape[1])))
    return [slice(r, r + step) for r in range(0, rows, step)]


def _normalise(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int,
               keep: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The output for a dense x, and the scale and scale^-beta (float32 or wider) the backward needs
    (with `keep`; else maybe not). In chunks, each result is written into its slice of the whole; as
    one chunk, functional: with out= code dynamo's recompile for a new batch size (`--compile`) took
    169 s instead of 3.7 (bench/README.md)."""
    xs = _blocks(x, groups)
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    band = _window_band(xs, size, alpha, wide)
    parts = _chunks(xs)
    if len(parts) == 1:
        xc = _at_least_float32(xs)
        s = _window_sum(xc * xc, size, alpha, band).add_(k)
        i = _power(s, -beta, out=None if keep else s)
        return _unblocks((xc * i).to(x.dtype), x), _unblocks(s, x), _unblocks(i, x)
    out = torch.empty_like(x)
    scale, inv = (torch.empty_like(x, dtype=wide), torch.empty_like(x, dtype=wide)) if keep else (None, None)
    outs = _blocks(out, groups)
    scales, invs = (_blocks(scale, groups), _blocks(inv, groups)) if keep else (None, None)
    for part in parts:
        xc = _at_least_float32(xs[part])
        s = _window_sum(xc * xc, size, alpha, band, out=scales[part] if keep else None).add_(k)
        i = _power(s, -beta, out=invs[part] if keep else s)
        if outs.dtype == xc.dtype:
            torch.mul(xc, i, out=outs[part])
        else:
            outs[part].copy_(xc * i)
    return out, scale, inv


def _gradient(grad: Tensor, x: Tensor, scale: Tensor, inv: Tensor, size: int, alpha: float, beta: float,
              groups: int) -> Tensor:
    """grad_a_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1), for
    dense x, scale, inv and grad in one layout; in chunks or whole as _normalise."""
    xs, gs, ss, invs = (_blocks(t, groups) for t in (x, grad, scale, inv))
    weight = -2.0 * alpha * beta
    band = _window_band(xs, size, weight, scale.dtype)
    parts = _chunks(xs)
    if len(parts) == 1:
        xc = _at_least_float32(xs)
        g_inv = _at_least_float32(gs) * invs  # bf16 * float32 in one op is slower than two ops
        t = _window_sum((g_inv * xc).div_(ss), size, weight, band)
        return _unblocks(g_inv.addcmul_(xc, t).to(x.dtype), x)
    out = torch.empty_like(x)
    outs = _blocks(out, groups)
    for part in parts:
        xc = _at_least_float32(xs[part])
        g_inv = _at_least_float32(gs[part]) * invs[part]
        t = _window_sum((g_inv * xc).div_(ss[part]), size, weight, band)
        if outs.dtype == xc.dtype:
            torch.addcmul(g_inv, xc, t, out=outs[part])
        else:
            outs[part].copy_(g_inv.addcmul_(xc, t))
    return out


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
    intermediates alive and recomputes a pow; this keeps the input, scale and scale^-beta (the fused
    kernel: the input alone).

    d b_i / d a_j = delta_ij s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1)  for j in i's window, so
    grad_a_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1), and the
    window is symmetric, so the sum is the same channel-window sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int,
                relu: bool = False) -> Tensor:
        x = _dense(x)
        ctx.constants = (size, alpha, beta, k, groups, relu)
        if lrn_native.applies(x, size, beta, groups):  # the fused kernel keeps only the input
            ctx.save_for_backward(x)
            return lrn_native.forward(x, size, alpha, k, groups, relu)
        assert not relu, "local_response_norm applies the ReLU where the kernel does not run"
        out, scale, inv = _normalise(x, size, alpha, beta, k, groups, keep=True)
        ctx.save_for_backward(x, scale, inv)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        size, alpha, beta, k, groups, relu = ctx.constants
        x, *kept = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
        if not kept:
            dx = lrn_native.backward(x, grad.to(x.dtype), size, alpha, k, groups, relu)
        else:
            dx = _gradient(grad, x, *kept, size, alpha, beta, groups)
        return dx, None, None, None, None, None, None


def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        groups: int = 1, relu: bool = False) -> Tensor:
    """§3.3 on (B, C, H, W) maps, alpha on the plain sum (torch's F.local_response_norm takes n*alpha).
    With groups > 1 the window stays within each group of C/groups maps (each tower normalises its own).
    Computed in at least float32 whatever the input dtype; the output has the input's dtype.
    relu=True normalises max(x, 0) ("applied ... after applying the ReLU", §3.3): inside the fused
    kernel where it runs, which spares the ReLU's own passes over memory (a paper-net training step
    1.01-1.03x in fp32 on the CPU, bench/README.md), else torch.relu first; x is left as it is."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} maps do not split into {groups} groups")
    if torch.compiler.is_compiling():  # the formula, for inductor to fuse and differentiate
        return lrn_formula(torch.relu(x) if relu else x, size, alpha, beta, k, groups)
    if relu and not lrn_native.applies(_dense(x), size, beta, groups):
        x, relu = torch.relu(x), False
    if x.requires_grad and torch.is_grad_enabled():
        return _LocalResponseNorm.apply(x, size, alpha, beta, k, groups, relu)
    x = _dense(x)
    if lrn_native.applies(x, size, beta, groups):
        return lrn_native.forward(x, size, alpha, k, groups, relu)
    return _normalise(x, size, alpha, beta, k, groups, keep=False)[0]


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size n must be odd (a window centred on each map), got {size}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups, relu)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
