"""`alexnet demo-data DIR`: a small ImageNet-style tree of JPEGs that a small net can learn.

Ten classes of shapes and textures (disc, square, triangle, ring, cross, and four stripe or dot
patterns) in random colours, positions and sizes, on noisy backgrounds, in images of mixed sizes and
aspect ratios. Colours are random per image, so the class is in the shape, not the colour. Like
ImageNet, a few files are awkward: a greyscale JPEG, a CMYK JPEG and a PNG under a .JPEG name.
Layout: DIR/train/<wnid>/<wnid>_<k>.JPEG, DIR/val/<wnid>/..., DIR/LOC_synset_mapping.txt.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet.data.cifar import write_cifar_batches
from alexnet.data.image import resize_and_center_crop
from alexnet.errors import UserError

CLASSES = ["disc", "square", "triangle", "ring", "cross", "horizontal stripes", "vertical stripes",
           "checkerboard", "diagonal stripes", "dots"]


def wnid(k: int) -> str:
    return f"n9{k:07d}"  # WordNet-id-shaped names outside WordNet's real range


def _colour_pair(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(fg.astype(int) - bg).sum() > 200:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def draw_example(k: int, rng: np.random.Generator) -> Image.Image:
    """One image of class k (mod 10), of a random size and aspect ratio."""
    short = int(rng.integers(64, 200))
    aspect = float(rng.uniform(0.6, 1.7))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    fg, bg = _colour_pair(rng)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * short, h / 2 + rng.uniform(-0.1, 0.1) * short
    r = rng.uniform(0.22, 0.4) * short
    period = max(4.0, short * rng.uniform(0.1, 0.16))
    kind = CLASSES[k % len(CLASSES)]
    if kind == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "triangle":
        a = rng.uniform(0, 2 * math.pi)
        d.polygon([(cx + r * math.cos(a + i * 2 * math.pi / 3), cy + r * math.sin(a + i * 2 * math.pi / 3))
                   for i in range(3)], fill=fg)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, int(r * 0.3)))
    elif kind == "cross":
        t = r * 0.3
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, period)
        if kind == "horizontal stripes":
            mask = ((yy + phase) % period) < period / 2
        elif kind == "vertical stripes":
            mask = ((xx + phase) % period) < period / 2
        elif kind == "diagonal stripes":
            mask = ((xx + yy + phase) % (period * 1.4)) < period * 0.7
        elif kind == "checkerboard":
            mask = (((xx + phase) // period + (yy + phase) // period) % 2) == 0
        else:  # dots
            fx, fy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2
            mask = fx * fx + fy * fy < (period * 0.3) ** 2
        img = Image.fromarray(np.where(mask[..., None], np.array(fg, np.uint8), np.array(bg, np.uint8)))
    pixels = np.asarray(img).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _check_counts(root: Path, **counts: int) -> None:
    for name, n in counts.items():
        least = 0 if name == "val_per_class" else 1
        if n < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {n}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder; choose a new folder to write the demo data into")


def make_demo_data(root: str | os.PathLike, classes: int = 10, train_per_class: int = 100,
                   val_per_class: int = 20, seed: int = 0, odd_files: bool = True) -> Path:
    """Write the demo tree under `root` and return it. Deterministic for a seed."""
    root = Path(root)
    _check_counts(root, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class)
    rng = np.random.default_rng(seed)
    (root / "LOC_synset_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(classes):
        name = CLASSES[k % len(CLASSES)] + ("" if k < len(CLASSES) else f" {k // len(CLASSES)}")
        lines.append(f"{wnid(k)} {name}\n")
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid(k)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = draw_example(k, rng)
                path = folder / f"{wnid(k)}_{i:04d}.JPEG"
                buf = io.BytesIO()
                if odd_files and split == "train" and i == 0 and k == 1:
                    img.convert("L").save(buf, "JPEG", quality=90)
                elif odd_files and split == "train" and i == 0 and k == 2:
                    img.convert("CMYK").save(buf, "JPEG", quality=90)
                elif odd_files and split == "train" and i == 0 and k == 3:
                    img.save(buf, "PNG")
                else:
                    img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
                path.write_bytes(buf.getvalue())
    (root / "LOC_synset_mapping.txt").write_text("".join(lines))
    return root


def make_demo_cifar(root: str | os.PathLike, train_per_class: int = 500, test_per_class: int = 100,
                    seed: int = 0) -> Path:
    """The demo classes at 32x32 in CIFAR-10's python-pickle format (data_batch_1..5, test_batch,
    batches.meta), for the Fig. 1 experiment where no CIFAR-10 copy is at hand."""
    _check_counts(root, classes=len(CLASSES), train_per_class=train_per_class, val_per_class=test_per_class)
    rng = np.random.default_rng(seed)

    def draw(per_class):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        rng.shuffle(labels)
        images = np.stack([np.asarray(resize_and_center_crop(draw_example(int(k), rng), 32)) for k in labels])
        return images, labels

    train, test = draw(train_per_class), draw(test_per_class)
    return write_cifar_batches(root, *train, CLASSES, *test)
