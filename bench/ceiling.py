"""The machine's best matmul rate, and the training images/s it would allow the paper net.

    python bench/ceiling.py [--device auto] [--sizes 1024,2048,4096] [--repeats 5] [--out FILE]

A square `torch.mm` of side n is 2 n^3 FLOP; the rate is the best of `repeats` calls over a few sizes
(best, not median: the ceiling is what the hardware can do, not what it usually does on a busy host).
One training step of an image costs about 3 x 2 x multiply-adds FLOP (forward, and a backward that
computes the gradients of both inputs and weights), 3 x 2 x 724 M for the paper net (§3.5), so
rate / (6 x 724 M) is the images/s no implementation can beat on this device and precision.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import report, sync  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_rate(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096),
                repeats: int = 5) -> tuple[float, int]:
    """Best FLOP/s of a square matmul over `sizes` (best of `repeats` each) and the size that reached it."""
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernel choice, first touch of the output
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            rate = 2.0 * n**3 / (time.perf_counter() - start)
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def training_flop_per_image() -> float:
    """3 x 2 x the paper net's multiply-adds per image (forward, backward to inputs and to weights)."""
    from alexnet.model import AlexNet, multiply_adds

    return 3 * 2 * float(multiply_adds(AlexNet()))


def ceiling_rows(device: torch.device, sizes: tuple[int, ...], repeats: int) -> list[dict]:
    flop = training_flop_per_image()
    rows = []
    for name, dtype in DTYPES.items():
        rate, n = matmul_rate(dtype, device, sizes, repeats)
        rows.append({"precision": name, "best matmul GFLOP/s": rate / 1e9, "at n": n,
                     "paper net training ceiling img/s": rate / flop})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="1024,2048,4096", help="square matmul sides, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="", help="append the rows to this JSON-lines file")
    args = p.parse_args()
    from alexnet.runtime import resolve_device

    device = resolve_device(args.device)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = ceiling_rows(device, sizes, args.repeats)
    report("ceiling", f"best square matmul on {device} (best of {args.repeats}; training FLOP per image "
           f"{training_flop_per_image() / 1e9:.2f} G)", rows, args.out)


if __name__ == "__main__":
    main()
