"""Evaluation throughput: `alexnet eval`'s pipeline vs a plain per-image Pillow loop, in one run.

    python bench/eval.py [--images 256] [--batch 64] [--device auto] [--variant paper]

plain: per image, Pillow decode of the JPEG, shorter side to 256, centre 224 crop, float tensor minus
       the mean; batched through the same architecture built with torch.nn.LocalResponseNorm.
ours:  alexnet.evaluate.predict_probabilities on a raw store of the same images (threaded uint8
       loader, test views on the device), centre patch and ten patches.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from common import report, sync  # noqa: E402
from loader import make_folder  # noqa: E402

from alexnet.data import ImageStore  # noqa: E402
from alexnet.data.prepare import prepare  # noqa: E402
from alexnet.evaluate import predict_probabilities  # noqa: E402
from alexnet.model import create_model  # noqa: E402
from alexnet.runtime import keep_freed_memory, resolve_device  # noqa: E402


@torch.no_grad()
def plain_eval(files, model, mean, batch: int, device: torch.device) -> float:
    crop = model.config.input_size
    size = 256 if crop > 64 else 72
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        xs = []
        for f in files[i : i + batch]:
            img = Image.open(f).convert("RGB")
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
            left, top = (img.size[0] - crop) // 2, (img.size[1] - crop) // 2
            x = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) - mean
            xs.append(torch.from_numpy(x).permute(2, 0, 1))
        model(torch.stack(xs).to(device)).softmax(1).cpu()
    sync(device)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--variant", default="paper")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    args = p.parse_args()
    keep_freed_memory()
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_folder(src, args.images)
        model = create_model(args.variant, num_classes=8).eval().to(device)
        size = 256 if model.config.input_size > 64 else 72
        prepare(src, Path(tmp) / "store", size=size, progress=False, log=lambda *a: None)
        store = ImageStore(Path(tmp) / "store", "train")
        crop = model.config.input_size
        off = (size - crop) // 2
        baseline = create_model(args.variant, num_classes=8).eval().to(device)
        for name in ("norm1", "norm2"):
            setattr(baseline, name, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
        files = sorted((src / "train").rglob("*.JPEG"))
        plain_eval(files[: args.batch], baseline, store.mean[off : off + crop, off : off + crop], args.batch, device)
        plain = plain_eval(files, baseline, store.mean[off : off + crop, off : off + crop], args.batch, device)
        for views in (1, 10):
            predict_probabilities(model, store, device, views, args.batch, indices=np.arange(args.batch))  # warm-up
            start = time.perf_counter()
            predict_probabilities(model, store, device, views, args.batch)
            sync(device)
            ours = len(store) / (time.perf_counter() - start)
            rows.append({"variant": args.variant, "views": views, "plain per-image loop img/s": plain if views == 1 else float("nan"),
                         "alexnet eval img/s": ours, "speed-up": f"{ours / plain:.2f}x" if views == 1 else "(10 forward passes an image)"})
    report("eval", f"evaluation throughput, {args.images} images ~500x375, batch {args.batch}, {device}", rows, args.out)


if __name__ == "__main__":
    main()
