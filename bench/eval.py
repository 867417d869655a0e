"""Evaluation throughput: `alexnet eval`'s pipeline against pytorch/examples' validate(), interleaved.

    python bench/eval.py [--images 256] [--batch 64] [--rounds 3] [--workers 0] [--device auto]

*peer*: main.py's validation pass (bench/examples_peer.py): a DataLoader with workers over the JPEG
folder, per image Pillow decode, Resize(256), CenterCrop(224), ToTensor, Normalize, torchvision's
AlexNet under no_grad, loss and top-1/top-5 accuracy; a new iterator (new workers) each pass.
*alexnet*: alexnet.evaluate.error_rates.predict_probabilities on a raw store of the same images (threaded uint8
loader, test views on the device), the paper net; the centre patch (1 view) and ten patches (§6).
Both in one process with the project's allocator setting and the device's default precision (bf16
autocast on CUDA, fp32 on CPU, for both). The passes alternate A B, B A, ...; each ratio is the median
of the per-round ratios of images/s (the ten-patch row, ten forward passes an image, against the same
peer pass).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, make_folder, pair_ratio, ratio_text, report, sync  # noqa: E402
from examples_peer import ImageFolderVal, validate_images_per_s  # noqa: E402
from peer import torchvision_alexnet  # noqa: E402

from alexnet.data import ImageStore  # noqa: E402
from alexnet.data.prepare import prepare  # noqa: E402
from alexnet.evaluate.error_rates import predict_probabilities  # noqa: E402
from alexnet.machine import usable_cores  # noqa: E402
from alexnet.model import create_model  # noqa: E402
from alexnet.machine import keep_freed_memory  # noqa: E402
from alexnet.runtime import resolve_device


def ours_images_per_s(model, store, device: torch.device, views: int, batch: int) -> float:
    start = time.perf_counter()
    predict_probabilities(model, store, device, views, batch)
    sync(device)
    return len(store) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="the peer's DataLoader workers (default: min(4, cores))")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    args = p.parse_args()
    keep_freed_memory()
    device = resolve_device(args.device)
    bf16 = device.type == "cuda"  # alexnet's default (amp auto): bf16 autocast on CUDA, fp32 on CPU
    workers = args.workers or min(4, usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_folder(src, args.images)
        prepare(src, Path(tmp) / "store", size=256, progress=False, log=lambda *a: None)
        store = ImageStore(Path(tmp) / "store", "train")
        model = create_model("paper", num_classes=1000).eval().to(device)
        peer_net = torchvision_alexnet(1000).to(device)
        loader = torch.utils.data.DataLoader(ImageFolderVal(src / "train"), batch_size=args.batch, shuffle=False,
                                             num_workers=workers, pin_memory=device.type == "cuda")
        predict_probabilities(model, store, device, 1, args.batch, indices=np.arange(min(args.batch, len(store))))
        rates = interleave({
            "peer": lambda: validate_images_per_s(loader, peer_net, device, bf16),
            "alexnet 1 view": lambda: ours_images_per_s(model, store, device, 1, args.batch),
            "alexnet 10 views": lambda: ours_images_per_s(model, store, device, 10, args.batch),
        }, args.rounds)
    peer = statistics.median(rates["peer"])
    rows = [{"measure": "pytorch/examples validate(), torchvision's AlexNet", "views": 1, "images/s": peer,
             "vs peer": "-"}]
    for views in (1, 10):
        mine = rates[f"alexnet {views} view{'s' if views > 1 else ''}"]
        rows.append({"measure": "alexnet eval pipeline, paper net", "views": views, "images/s": statistics.median(mine),
                     "vs peer": ratio_text(pair_ratio(mine, rates["peer"]))})
    report("eval", f"evaluation images/s, {args.images} JPEGs ~500x375, batch {args.batch}, {device}"
           f"{', bf16 autocast' if bf16 else ''}, peer workers {workers}, {args.rounds} interleaved rounds",
           rows, args.out)


if __name__ == "__main__":
    main()
