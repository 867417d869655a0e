"""One training step of the paper net on random data: LRN implementation x layout x precision.

    python bench/net_step.py [--batch 64] [--device auto] [--repeats 3]

Each configuration runs in its own process, so the allocator setting (ALEXNET_KEEP_FREED_MEMORY) can
differ between rows. Plain torch.optim.SGD; no data loading: this isolates the model's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402

CONFIGS = [  # (lrn, keep freed memory, channels_last, bf16)
    ("torch", False, False, False),
    ("alexnet", False, False, False),
    ("torch", True, False, False),
    ("alexnet", True, False, False),
    ("alexnet", True, True, False),
    ("alexnet", True, True, True),
    ("none", True, True, True),
]


def one(lrn: str, channels_last: bool, bf16: bool, batch: int, device_name: str, repeats: int) -> float:
    import time

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from alexnet.model import AlexNet
    from alexnet.machine import keep_freed_memory
    from alexnet.runtime import resolve_device

    keep_freed_memory()
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = AlexNet()
    if lrn == "torch":
        model.norm1 = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
        model.norm2 = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    elif lrn == "none":
        model.norm1 = model.norm2 = nn.Identity()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = (torch.randn(batch, 3, 224, 224, device=device) * 50).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        lrn, cl, bf = args.one.split(",")
        print(json.dumps(one(lrn, cl == "1", bf == "1", args.batch, args.device, args.repeats)))
        return
    rows = []
    for lrn, keep, cl, bf in CONFIGS:
        env = dict(os.environ, ALEXNET_KEEP_FREED_MEMORY="1" if keep else "0")
        out = subprocess.run([sys.executable, __file__, "--one", f"{lrn},{int(cl)},{int(bf)}",
                              "--batch", str(args.batch), "--device", args.device, "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True).stdout
        rows.append({"LRN": lrn, "keep freed memory": keep, "layout": "channels_last" if cl else "NCHW",
                     "precision": "bf16 autocast" if bf else "fp32", "images/s": float(out.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    report("net_step", f"paper net, one training step, batch {args.batch}", rows)


if __name__ == "__main__":
    main()
