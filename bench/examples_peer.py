"""The peer users run: pytorch/examples' ImageNet `main.py -a alexnet`, its training loop written out.

    python bench/examples_peer.py DATA [--steps 8] [--warmup 2] [--batch 64] [--amp off|bf16]
                                       [--workers 2] [--device auto] [--lr 0.01]

DATA holds train/<class>/*.JPEG (an ImageFolder). What main.py does for `-a alexnet`, with
torchvision written out since it cannot be imported here:
  - datasets.ImageFolder: the class folders sorted, each image opened with Pillow and converted to RGB;
  - transforms RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3, ten tries then the centre crop),
    RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet mean, std), per image in the workers;
  - DataLoader(batch, shuffle=True, num_workers, pin_memory on CUDA), a new iterator each epoch;
  - torchvision.models.alexnet() (bench/peer.py), nn.CrossEntropyLoss, SGD(lr, momentum 0.9,
    weight decay 1e-4); each step: forward, loss, top-1/top-5 accuracy, loss.item(), zero_grad,
    backward, step.
`--amp bf16` wraps the forward and the loss in bf16 autocast (main.py has no such flag: it is the line
a user would add). The allocator and thread settings come from the environment the caller gives
(GLIBC_TUNABLES, OMP_NUM_THREADS), as for a user. Prints one JSON line: images/s of the steps after
the warm-up ones, from the end of the last warm-up step to the end of the last step (loading, the
epoch's new workers and the optimizer included; no validation, as in the project's own step timer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer import torchvision_alexnet  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def random_resized_crop_box(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return top, left, h, w
    in_ratio = width / height  # fallback: the centre crop of the whole image, aspect clamped to `ratio`
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageFolderTrain(torch.utils.data.Dataset):
    """datasets.ImageFolder(root/train, transforms.Compose([RandomResizedCrop(224),
    RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)]))."""

    def __init__(self, root: str | Path, size: int = 224):
        root = Path(root)
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(str(f), i) for i, c in enumerate(self.classes) for f in sorted((root / c).rglob("*"))
                        if f.suffix.lower() in EXTENSIONS]
        self.size = size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:  # torchvision's pil_loader
            img = Image.open(f).convert("RGB")
        top, left, h, w = random_resized_crop_box(*img.size)
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.Resampling.BILINEAR)
        if torch.rand(1) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        x = x.to(torch.get_default_dtype()).div(255)  # ToTensor
        return x.sub_(self.mean).div_(self.std), target  # Normalize


class ImageFolderVal(torch.utils.data.Dataset):
    """main.py's validation set: Resize(256) (shorter side, bilinear), CenterCrop(224), ToTensor(),
    Normalize(mean, std)."""

    def __init__(self, root: str | Path, size: int = 224, resize: int = 256):
        self.train = ImageFolderTrain(root, size)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.train.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        long = int(self.resize * long / short)  # torchvision's Resize(int): the longer side truncated
        img = img.resize((self.resize, long) if w <= h else (long, self.resize), Image.Resampling.BILINEAR)
        size = self.train.size
        left, top = int(round((img.size[0] - size) / 2.0)), int(round((img.size[1] - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        x = x.to(torch.get_default_dtype()).div(255)
        return x.sub_(self.train.mean).div_(self.train.std), target


def validate_images_per_s(loader: torch.utils.data.DataLoader, model: nn.Module, device: torch.device,
                          bf16: bool = False) -> float:
    """main.py's validate(): every batch of `loader` through `model` in eval mode under no_grad, with
    the loss and top-1/top-5 accuracy; images/s over the whole pass (the workers' start included)."""
    criterion = nn.CrossEntropyLoss().to(device)
    model.eval()
    start, seen = time.perf_counter(), 0
    with torch.no_grad():
        for images, target in loader:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(images)
                loss = criterion(output, target)
            accuracy(output, target)
            loss.item()
            seen += len(target)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[torch.Tensor]:
    """main.py's accuracy(): precision@k in percent."""
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        _, pred = output.topk(maxk, 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / target.size(0)) for k in topk]


def train_images_per_s(data: str | Path, steps: int, warmup: int, batch: int, bf16: bool, workers: int,
                       device: torch.device, lr: float = 0.01, seed: int = 0) -> dict:
    """main.py's train() over epochs until warmup + steps steps; images/s of the last `steps`."""
    random.seed(seed)
    torch.manual_seed(seed)
    dataset = ImageFolderTrain(Path(data) / "train")
    model = torchvision_alexnet(num_classes=1000).to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    model.train()
    done, start, losses = 0, 0.0, []
    while done < warmup + steps:
        for images, target in loader:  # a new iterator (and new workers) each epoch, as main.py
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(images)
                loss = criterion(output, target)
            accuracy(output, target)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            if done == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"images/s": steps * batch / seconds, "steps": steps, "batch": batch, "seconds": seconds,
            "last loss": losses[-1], "threads": torch.get_num_threads(), "workers": workers,
            "glibc tunables": os.environ.get("GLIBC_TUNABLES", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder with train/<class>/ images")
    p.add_argument("--steps", type=int, default=8, help="timed steps, after the warm-up ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--amp", choices=("off", "bf16"), default="off")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (main.py's -j, default 4 there)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    result = train_images_per_s(args.data, args.steps, args.warmup, args.batch, args.amp == "bf16", args.workers,
                                torch.device(name), args.lr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
