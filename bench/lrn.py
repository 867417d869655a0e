"""LRN (§3.3) forward+backward: torch.nn.LocalResponseNorm vs this package's, at the paper's shapes.

    python bench/lrn.py [--batch 64] [--layout cl|nchw] [--dtypes float32,bfloat16] [--rounds 7] [--compile]

torch's module is given alpha*n (it divides alpha by n) so all compute the paper's formula, within
towers for ours (groups=2, as the paper net's norm1 and norm2). "autograd formula" is the formula
with shifted adds over the channels and torch.pow, differentiated by autograd. This package's two
paths: "alexnet torch operations" (`lrn_torch`: band-matrix window sum, hand-written backward) and
"alexnet operator" (`alexnet::lrn`, the torch.library operator of alexnet/model/lrn_op.py, built on
first use); "alexnet local_response_norm" is what the net runs (the operator where it builds and
ALEXNET_LRN_OP is not 0). The implementations run in turn, `--rounds` times (A B C C B A ...); each
row gives the median time and the medians of the per-round speed-ups over the autograd formula and
over the torch operations, so load from other processes hits all alike. `--compile` adds this
package's layer through torch.compile (the operator as one node on the CPU where it builds) and the
formula through torch.compile (what inductor fuses on CUDA).
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
from common import report, sync  # noqa: E402

from alexnet.model import lrn, lrn_op  # noqa: E402
from alexnet.machine import keep_freed_memory  # noqa: E402
from alexnet.runtime import resolve_device


def autograd_formula(x):
    """The formula in eager ops: the window sum as shifted adds within each of the two towers."""
    towers = (x * x).unflatten(1, (2, x.shape[1] // 2))
    n = towers.shape[2]
    window = towers.clone()
    for d in (1, 2):
        window.narrow(2, d, n - d).add_(towers.narrow(2, 0, n - d))
        window.narrow(2, 0, n - d).add_(towers.narrow(2, d, n - d))
    return x * window.flatten(1, 2).mul_(1e-4).add_(2.0).pow(-0.75)


def interleaved(steps: dict, device: torch.device, rounds: int) -> dict[str, list[float]]:
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--layout", choices=("cl", "nchw"), default="cl", help="channels_last (as the net on CPU) or NCHW")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--compile", action="store_true", help="also this package's LRN through torch.compile")
    p.add_argument("--out", default="", help="append results to this JSON-lines file")
    args = p.parse_args()
    kept = keep_freed_memory()
    device = resolve_device(args.device)
    fmt = torch.channels_last if args.layout == "cl" else torch.contiguous_format
    torch_lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
    paper = (5, 1e-4, 0.75, 2.0, 2)
    impls = {"torch.nn.LocalResponseNorm": torch_lrn, "autograd formula": autograd_formula,
             "alexnet torch operations": lambda x: lrn.lrn_torch(x, *paper),
             "alexnet local_response_norm": lambda x: lrn.local_response_norm(x, *paper)}
    if device.type == "cpu" and lrn_op.load():
        impls["alexnet operator"] = lambda x: lrn_op.lrn(x, *paper)
    else:
        print(f"the LRN operator does not run: {lrn_op.status()}")
    if args.compile:
        impls["alexnet local_response_norm, torch.compile"] = torch.compile(impls["alexnet local_response_norm"])
        impls["alexnet formula, torch.compile"] = torch.compile(lambda x: lrn.lrn_formula(x, *paper))
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for layer, shape in (("norm1", (args.batch, 96, 55, 55)), ("norm2", (args.batch, 256, 27, 27))):
            x0 = (torch.randn(shape, device=device) * 20).relu().to(dtype).contiguous(memory_format=fmt)
            g = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=fmt)

            def step(fn, x0=x0, g=g):
                x = x0.clone().requires_grad_()
                fn(x).backward(g)
            runnable = {}
            for name, fn in impls.items():
                try:
                    step(fn)
                    runnable[name] = lambda fn=fn: step(fn)
                except (RuntimeError, NotImplementedError) as e:  # torch's has no bf16 avg_pool3d on CPU
                    print(f"{name} {dtype_name}: fails: {str(e).splitlines()[0][:70]}")
            times = interleaved(runnable, device, args.rounds)
            for name, t in times.items():
                row = {"dtype": dtype_name, "layer": layer, "batch": args.batch, "layout": args.layout, "impl": name,
                       "ms": statistics.median(t) * 1000}
                for base in ("autograd formula", "alexnet torch operations"):
                    row[f"speed-up over {base}"] = f"{statistics.median(b / s for b, s in zip(times[base], t)):.2f}x"
                rows.append(row)
    report("lrn", f"LRN forward+backward, batch {args.batch}, {device}, keep_freed_memory={kept}", rows, args.out)


if __name__ == "__main__":
    main()
