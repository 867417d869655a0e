"""conv1's weight gradient per image against the batch size: one convolution_backward over the whole
batch against alexnet.conv's slices of WEIGHT_GRADIENT_BATCH images.

    python bench/conv.py [--batches 32,64,96,112,128,256] [--kernels 64,96] [--dtypes float32,bfloat16] [--rounds 3]

conv1 as in the paper net (11x11x3, stride 4, padding 2, 224x224 input, channels_last as the net
runs on the CPU) with 96 kernels and, for comparison, torchvision's 64. Only the weight and bias
gradients are computed (conv1's input, the images, needs none). Each row: the median of `--rounds`
timings of each way, taken in turn, in ms an image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402

from alexnet import conv  # noqa: E402
from alexnet.runtime import keep_freed_memory  # noqa: E402


def weight_gradient(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, per_call: int) -> None:
    for first in range(0, x.shape[0], per_call):
        part = slice(first, first + per_call)
        torch.ops.aten.convolution_backward(grad[part], x[part], weight, [weight.shape[0]], [4, 4], [2, 2], [1, 1],
                                            False, [0, 0], 1, [False, True, True])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="32,64,96,112,128,256")
    p.add_argument("--kernels", default="64,96")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    keep_freed_memory()
    rows = []
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        for kernels in (int(k) for k in args.kernels.split(",")):
            weight = (torch.randn(kernels, 3, 11, 11) * 0.01).to(dtype).contiguous(memory_format=torch.channels_last)
            for batch in (int(b) for b in args.batches.split(",")):
                x = (torch.randn(batch, 3, 224, 224) * 50).to(dtype).contiguous(memory_format=torch.channels_last)
                grad = torch.randn(batch, kernels, 55, 55).to(dtype).contiguous(memory_format=torch.channels_last)
                ways = {"whole batch": batch, f"slices of {conv.WEIGHT_GRADIENT_BATCH}": conv.WEIGHT_GRADIENT_BATCH}
                times: dict[str, list[float]] = {name: [] for name in ways}
                for r in range(args.rounds + 1):
                    for name, per_call in (ways.items() if r % 2 else reversed(ways.items())):
                        start = time.perf_counter()
                        weight_gradient(grad, x, weight, per_call)
                        if r:  # the first round warms up
                            times[name].append((time.perf_counter() - start) * 1000 / batch)
                whole, sliced = (statistics.median(t) for t in times.values())
                rows.append({"dtype": str(dtype).replace("torch.", ""), "kernels": kernels, "batch": batch,
                             "whole batch ms/image": whole, f"slices of {conv.WEIGHT_GRADIENT_BATCH} ms/image": sliced,
                             "slices / whole": f"{whole / sliced:.2f}x"})
    report("conv1-weight-gradient", f"conv1 weight gradient, {torch.get_num_threads()} threads", rows, args.out)


if __name__ == "__main__":
    main()
