"""LRN (§3.3) forward+backward: torch.nn.LocalResponseNorm vs this package's, at the paper's shapes.

    python bench/lrn.py [--batch 128] [--device cpu|cuda] [--repeats 5]

torch's module is given alpha*n (it divides alpha by n) so both compute the paper's formula. The
"autograd" row is the same formula differentiated by autograd, to show what the hand-written
backward buys. The implementations run alternately, a round at a time, and each speed-up is the
median of the per-round ratios to torch's module (bench/common.py `interleave`). Run it twice, with
ALEXNET_KEEP_FREED_MEMORY=0 and without, to see the allocator's share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from common import interleave, pair_ratio, ratio_text, report, sync  # noqa: E402

from alexnet.model import _lrn_scale, local_response_norm  # noqa: E402
from alexnet.runtime import keep_freed_memory, resolve_device  # noqa: E402


def autograd_formula(x):
    return x * _lrn_scale(x, 5, 1e-4, 2.0).pow(-0.75)


def compare(impls: dict, layer: str, shape: tuple, dtype: torch.dtype, device: torch.device,
            repeats: int) -> list[dict]:
    """The implementations alternately (A B C, C B A, ...), `repeats` rounds after a warm-up call each;
    ms: each one's median, speedup: the median of its per-round ratios to the first that runs (torch's)."""
    x0 = (torch.randn(shape, device=device) * 20).relu().to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    steps, rows = {}, []
    for name, fn in impls.items():
        x = x0.clone().requires_grad_()

        def step(x=x, fn=fn):
            x.grad = None
            sync(device)
            start = time.perf_counter()
            fn(x).backward(g)
            sync(device)
            return time.perf_counter() - start
        try:
            step()  # warm-up
        except RuntimeError as e:  # e.g. no bf16 kernel for avg_pool3d on CPU
            rows.append({"dtype": str(dtype).split(".")[1], "layer": layer, "batch": shape[0], "impl": name,
                         "ms": float("nan"), "speedup": f"fails: {str(e).splitlines()[0][:60]}"})
            continue
        steps[name] = step
    times = interleave(steps, repeats)
    base = next(iter(times))
    for name, t in times.items():
        rows.append({"dtype": str(dtype).split(".")[1], "layer": layer, "batch": shape[0], "impl": name,
                     "ms": statistics.median(t) * 1000,
                     "speedup": ratio_text(pair_ratio(t, times[base], higher_is_better=False))})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out", default="", help="append results to this JSON-lines file")
    args = p.parse_args()
    kept = keep_freed_memory()
    device = resolve_device(args.device)
    torch_lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
    impls = {"torch.nn.LocalResponseNorm": torch_lrn, "autograd formula": autograd_formula,
             "alexnet local_response_norm": local_response_norm}
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for layer, shape in (("norm1", (args.batch, 96, 55, 55)), ("norm2", (args.batch, 256, 27, 27))):
            rows += compare(impls, layer, shape, dtype, device, args.repeats)
    report("lrn", f"LRN forward+backward, batch {args.batch}, {device}, keep_freed_memory={kept}", rows, args.out)


if __name__ == "__main__":
    main()
