"""Training throughput: `alexnet train` vs a plain eager PyTorch loop, in one run.

    python bench/train.py [--images 384] [--batch 64] [--device auto] [--variants paper,small]

plain: the same architecture built from stock modules (torch.nn.LocalResponseNorm with alpha*n,
       nn.Dropout), torch.optim.SGD, a Dataset that decodes, resizes, crops and flips each JPEG with
       Pillow in a DataLoader (2 workers), glibc's default allocator: what a user would write first.
ours:  `alexnet.run.fit` on a raw store of the same images (threaded uint8 loader, augmentation on
       the device, the package's LRN and allocator setting), images/s of the training steps.
Each measurement runs in its own process; the first step of each is left out as warm-up.
On CUDA it also times the paper net at batch 128 in fp32 and bf16 and compares the bf16 rate with a
measured bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import report  # noqa: E402


def plain_loop(src: str, variant: str, batch: int, steps: int, device_name: str) -> float:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from PIL import Image

    from alexnet.model import create_model
    from alexnet.runtime import resolve_device

    device = resolve_device(device_name)
    files = sorted(Path(src).rglob("*.JPEG"))
    classes = sorted({f.parent.name for f in files})
    model = create_model(variant, num_classes=len(classes))
    crop = model.config.input_size
    size = 256 if crop > 64 else 72
    for name in ("norm1", "norm2"):
        setattr(model, name, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    for name in ("drop6", "drop7"):
        setattr(model, name, nn.Dropout(0.5))
    model.to(device)

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            img = Image.open(files[i]).convert("RGB")
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
            top = np.random.randint(0, img.size[1] - crop + 1)
            left = np.random.randint(0, img.size[0] - crop + 1)
            img = img.crop((left, top, left + crop, top + crop))
            if np.random.rand() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) - 120.0).permute(2, 0, 1)
            return x, classes.index(files[i].parent.name)

    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    done, start, n = 0, None, 0
    while done <= steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if done == 0:
                start = time.perf_counter()  # after the first (warm-up) step
            else:
                n += len(y)
            done += 1
            if done > steps:
                break
    return n / (time.perf_counter() - start)


def ours(store: str, variant: str, batch: int, steps: int, device_name: str, amp: str = "auto") -> float:
    """Images/s of the training loop over `steps` steps, from the run's own step timer (loading,
    augmentation and the optimizer included; the checkpoint writes and the first step left out)."""
    from alexnet.checkpoint import load_checkpoint
    from alexnet.config import resolve
    from alexnet.run import fit
    from alexnet.runtime import keep_freed_memory

    keep_freed_memory()  # as `alexnet train` does at its entry (fit itself leaves the allocator alone)

    def config(max_steps):
        return resolve({"variant": variant, "schedule": {"kind": "step"},
                        "train": {"epochs": 1, "batch_size": batch, "max_steps": max_steps,
                                  "device": device_name, "amp": amp, "log_every": 1}})

    with tempfile.TemporaryDirectory() as out:
        fit(config(1), store, out, progress=False, echo=False)  # warm-up step (allocations, kernels)
        first = load_checkpoint(Path(out) / "last.pt")["running"]
        fit(config(steps + 1), None, out, resume=True, progress=False, echo=False)
        both = load_checkpoint(Path(out) / "last.pt")["running"]
    return (both["count"] - first["count"]) / (both["seconds"] - first["seconds"])


def bf16_matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def _child(args: list[str], keep_memory: bool) -> float:
    env = dict(os.environ, ALEXNET_KEEP_FREED_MEMORY="1" if keep_memory else "0")
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after one warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", default="paper,small")
    p.add_argument("--out", default="")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "plain":
            src, variant, batch, steps, device = rest
            print(plain_loop(src, variant, int(batch), int(steps), device))
        elif kind == "ours":
            store, variant, batch, steps, device, amp = rest
            print(ours(store, variant, int(batch), int(steps), device, amp))
        else:
            print(bf16_matmul_tflops())
        return

    import torch

    from alexnet.data.prepare import prepare
    from loader import make_folder

    cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_folder(src, args.images)
        stores = {}
        for variant in args.variants.split(","):
            size = 72 if variant in ("small", "tiny") else 256
            if size not in stores:
                stores[size] = str(Path(tmp) / f"store{size}")
                prepare(src, stores[size], size=size, progress=False, log=lambda *a: None)
            n = [str(args.batch), str(args.steps), args.device]
            plain = _child(["plain", str(src), variant, *n], keep_memory=False)
            mine = _child(["ours", stores[size], variant, *n, "auto"], keep_memory=True)
            rows.append({"variant": variant, "batch": args.batch, "plain eager loop img/s": plain,
                         "alexnet train img/s": mine, "speed-up": f"{mine / plain:.2f}x"})
            print(rows[-1], flush=True)
        if cuda:
            peak = _child(["matmul"], keep_memory=True)
            for amp in ("off", "bf16"):
                rate = _child(["ours", stores[256], "paper", "128", str(args.steps), "cuda", amp], keep_memory=True)
                flops = rate * 3 * 2 * 724.4e6  # forward + backward ~ 3x the forward's 2*724M FLOP
                rows.append({"variant": f"paper, CUDA, {'bf16' if amp == 'bf16' else 'fp32'}", "batch": 128,
                             "plain eager loop img/s": float("nan"), "alexnet train img/s": rate,
                             "speed-up": f"{flops / 1e12:.1f} TFLOP/s = {flops / 1e12 / peak:.1%} of bf16 matmul {peak:.0f}"})
    report("train", f"training throughput, {args.images} images", rows, args.out)


if __name__ == "__main__":
    main()
