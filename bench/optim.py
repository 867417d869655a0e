"""The optimizer step on the paper net's 61 M parameters: §5's rule through sgd_kernel.c against the
same rule as torch passes (what PaperSGD runs without the kernel) and torch.optim.SGD as
pytorch/examples runs it (the for-each-tensor loop, torch's default on the CPU) and with foreach.

    python bench/optim.py [--rounds 5] [--steps 5] [--threads N] [--out FILE.jsonl]

Each round times `--steps` steps of every optimizer in turn (A B C D, then D C B A); a row's ratio is
the median of its pair ratios against the kernel's time in the same round. The gradients are random
and fixed: the step's cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import interleave, pair_ratio, ratio_text, report  # noqa: E402

from alexnet import optim  # noqa: E402
from alexnet.config import OptimConfig  # noqa: E402
from alexnet.model import AlexNet  # noqa: E402


def timed(opt: torch.optim.Optimizer, steps: int, kernel: bool):
    def run() -> float:
        library, status = optim.KERNEL._library, optim.KERNEL._status
        if not kernel:  # PaperSGD's torch passes, as without a compiler
            optim.KERNEL._library, optim.KERNEL._status = None, "off for the benchmark"
        try:
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            return (time.perf_counter() - start) / steps * 1e3
        finally:
            optim.KERNEL._library, optim.KERNEL._status = library, status
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps timed per optimizer and round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if optim.KERNEL.load() is None:
        sys.exit(f"optim.py: no kernel to measure: {optim.KERNEL.status()}")
    net = AlexNet().to(memory_format=torch.channels_last)  # the layout `alexnet train` uses on the CPU
    params = list(net.parameters())
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    config = OptimConfig()
    groups = optim.parameter_groups(net, config)
    optimizers = {
        "PaperSGD, sgd_kernel.c": (optim.PaperSGD(groups, lr=config.lr, momentum=config.momentum), True),
        "PaperSGD, torch foreach passes": (optim.PaperSGD(groups, lr=config.lr, momentum=config.momentum), False),
        "torch.optim.SGD (CPU default: a loop over tensors)": (torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum), False),
        "torch.optim.SGD(foreach=True)": (torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                                          foreach=True), False),
    }
    for opt, _ in optimizers.values():
        opt.step()  # momentum buffers allocated outside the timing
    times = interleave({name: timed(opt, args.steps, kernel) for name, (opt, kernel) in optimizers.items()},
                       args.rounds)
    kernel_times = times["PaperSGD, sgd_kernel.c"]
    rows = [{"optimizer step": name, "ms (median)": sorted(t)[len(t) // 2],
             "kernel speed-up": ratio_text(pair_ratio(kernel_times, t, higher_is_better=False))}
            for name, t in times.items()]
    report("optim", f"optimizer step on the paper net ({sum(p.numel() for p in params):,} parameters), "
           f"{torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds", rows, args.out)


if __name__ == "__main__":
    main()
