"""LRN (§3.3) forward+backward: torch.nn.LocalResponseNorm vs this package's, at the paper's shapes.

    python bench/lrn.py [--batch 128] [--device cpu|cuda] [--repeats 5]

torch's module is given alpha*n (it divides alpha by n) so both compute the paper's formula. The
"autograd" row is the same formula differentiated by autograd, to show what the hand-written
backward buys. Run it twice, with ALEXNET_KEEP_FREED_MEMORY=0 and without, to see the allocator's share.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from common import report, time_it  # noqa: E402

from alexnet.model import _lrn_scale, local_response_norm  # noqa: E402
from alexnet.runtime import keep_freed_memory, resolve_device  # noqa: E402


def autograd_formula(x):
    return x * _lrn_scale(x, 5, 1e-4, 2.0).pow(-0.75)


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
            x0 = (torch.randn(shape, device=device) * 20).relu().to(dtype)
            g = torch.randn(shape, device=device).to(dtype)
            base = None
            for name, fn in impls.items():
                x = x0.clone().requires_grad_()

                def step(x=x, fn=fn, g=g):
                    x.grad = None
                    fn(x).backward(g)
                try:
                    seconds = time_it(step, device, warmup=1, repeats=args.repeats)
                except RuntimeError as e:  # e.g. no bf16 kernel for avg_pool3d on CPU
                    rows.append({"dtype": dtype_name, "layer": layer, "batch": args.batch, "impl": name, "ms": float("nan"),
                                 "speedup": f"fails: {str(e).splitlines()[0][:60]}"})
                    continue
                base = base or seconds
                rows.append({"dtype": dtype_name, "layer": layer, "batch": args.batch, "impl": name, "ms": seconds * 1000,
                             "speedup": f"{base / seconds:.2f}x"})
    report("lrn", f"LRN forward+backward, batch {args.batch}, {device}, keep_freed_memory={kept}", rows, args.out)


if __name__ == "__main__":
    main()
