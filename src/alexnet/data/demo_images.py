"""`alexnet demo-data DIR`: a small ImageNet-style tree of JPEGs that a small net can learn.

Sixteen classes of shapes and textures (disc, square, triangle, ring, cross, four stripe or dot
patterns, star, hexagon, crescent, arrow, ...) in random colours, positions and sizes, on noisy
backgrounds, in images of mixed sizes and aspect ratios. Colours are random per image, so the class
is in the shape, not the colour. Like ImageNet, a few files are awkward: a greyscale JPEG, a CMYK JPEG
and a PNG under a .JPEG name. Layout: DIR/train/<wnid>/<wnid>_<k>.JPEG, DIR/val/<wnid>/...,
DIR/LOC_synset_mapping.txt.

`hard=True` (`--hard`) adds what a real photograph has and the label does not depend on, so that the
small net errs often enough (10-30%) for the ablations to differ: a cluttered background (a colour
gradient and distractor lines and blobs), the object at any scale (24-40% of the short side), position
and rotation, a texture only on a patch of the image, rectangles occluding part of the object, lower
contrast and blur. (An earlier setting, objects at 16-38% with stronger noise and blur, left `small`
at 41-56% error: docs/experiments/ablations-hard-demo.md.)
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from alexnet.data.cifar import write_cifar_batches
from alexnet.data.image import resize_and_center_crop
from alexnet.errors import UserError
from alexnet.files import write_bytes_atomic, write_text_atomic

CLASSES = ["disc", "square", "triangle", "ring", "cross", "horizontal stripes", "vertical stripes",
           "checkerboard", "diagonal stripes", "dots", "star", "hexagon", "crescent", "arrow",
           "concentric rings", "grid"]
TEXTURES = {"horizontal stripes", "vertical stripes", "checkerboard", "diagonal stripes", "dots",
            "concentric rings", "grid"}


def wnid(k: int) -> str:
    return f"n9{k:07d}"  # WordNet-id-shaped names outside WordNet's real range


def _colour_pair(rng: np.random.Generator, contrast: int = 200) -> tuple[tuple[int, ...], tuple[int, ...]]:
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(fg.astype(int) - bg).sum() > contrast:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at the given radii, evenly spaced in angle, starting at `angle`."""
    n = len(radii)
    return [(cx + r * math.cos(angle + i * 2 * math.pi / n), cy + r * math.sin(angle + i * 2 * math.pi / n))
            for i, r in enumerate(radii)]


def _rotated(points: list[tuple[float, float]], cx: float, cy: float, r: float, a: float):
    """Points given in units of r around the centre, rotated by a."""
    c, s = math.cos(a), math.sin(a)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


CROSS = [(-1, -.3), (-.3, -.3), (-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
         (-.3, .3), (-1, .3)]
ARROW = [(-1, -.25), (.2, -.25), (.2, -.7), (1, 0), (.2, .7), (.2, .25), (-1, .25)]


def _draw_shape(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, a: float, fg, bg) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "disc":
        d.ellipse(box, fill=fg)
    elif kind == "square":
        d.polygon(_polygon(cx, cy, [r * math.sqrt(2)] * 4, a + math.pi / 4), fill=fg)
    elif kind == "triangle":
        d.polygon(_polygon(cx, cy, [r] * 3, a), fill=fg)
    elif kind == "ring":
        d.ellipse(box, outline=fg, width=max(2, int(r * 0.3)))
    elif kind == "cross":
        d.polygon(_rotated(CROSS, cx, cy, r, a), fill=fg)
    elif kind == "star":
        d.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, a), fill=fg)
    elif kind == "hexagon":
        d.polygon(_polygon(cx, cy, [r] * 6, a), fill=fg)
    elif kind == "crescent":
        d.ellipse(box, fill=fg)
        ox, oy = cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a)
        d.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=bg)
    elif kind == "arrow":
        d.polygon(_rotated(ARROW, cx, cy, r, a), fill=fg)
    else:
        raise ValueError(kind)


def _texture_mask(kind: str, h: int, w: int, period: float, tilt: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # a small tilt (hard data) turns the lattice without changing which class it is
    xx, yy = xx * math.cos(tilt) - yy * math.sin(tilt), xx * math.sin(tilt) + yy * math.cos(tilt)
    phase = rng.uniform(0, period)
    if kind == "horizontal stripes":
        return ((yy + phase) % period) < period / 2
    if kind == "vertical stripes":
        return ((xx + phase) % period) < period / 2
    if kind == "diagonal stripes":
        return ((xx + yy + phase) % (period * 1.4)) < period * 0.7
    if kind == "checkerboard":
        return (((xx + phase) // period + (yy + phase) // period) % 2) == 0
    if kind == "grid":
        return (((xx + phase) % period) < period * 0.22) | (((yy + phase) % period) < period * 0.22)
    if kind == "concentric rings":
        cx, cy = w / 2 + rng.uniform(-0.2, 0.2) * w, h / 2 + rng.uniform(-0.2, 0.2) * h
        return (np.hypot(xx - cx, yy - cy) % period) < period / 2
    fx, fy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2  # dots
    return fx * fx + fy * fy < (period * 0.3) ** 2


def _clutter(img: Image.Image, rng: np.random.Generator, short: int) -> Image.Image:
    """A colour gradient under a few distractor lines and blobs, none as large as the smallest object."""
    w, h = img.size
    other = rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    t = t[None, :, None] if len(t) == w else t[:, None, None]
    base = np.asarray(img).astype(np.float32)
    img = Image.fromarray((base * (1 - 0.5 * t) + other * 0.5 * t).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            a, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * short
            d.line([x, y, x + length * math.cos(a), y + length * math.sin(a)], fill=colour,
                   width=int(rng.integers(1, 4)))
        else:
            s = rng.uniform(0.02, 0.06) * short
            d.ellipse([x - s, y - s, x + s, y + s], fill=colour)
    return img


def _occlude(img: Image.Image, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """One or two rectangles over part of the object (up to about a quarter of its box)."""
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 3))):
        x, y = cx + rng.uniform(-1, 1) * r, cy + rng.uniform(-1, 1) * r
        sw, sh = rng.uniform(0.15, 0.5) * r, rng.uniform(0.15, 0.5) * r
        d.rectangle([x - sw / 2, y - sh / 2, x + sw / 2, y + sh / 2], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))


def draw_example(k: int, rng: np.random.Generator, hard: bool = False) -> Image.Image:
    """One image of class k (mod the number of CLASSES), of a random size and aspect ratio."""
    short = int(rng.integers(64, 200))
    aspect = float(rng.uniform(0.6, 1.7))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    fg, bg = _colour_pair(rng, 150 if hard else 200)
    img = Image.new("RGB", (w, h), bg)
    if hard:
        img = _clutter(img, rng, short)
        r = rng.uniform(0.24, 0.40) * short
        # anywhere inside the centre square, which the store's centre crop keeps (§2)
        cx, cy = w / 2 + rng.uniform(-1, 1) * (short / 2 - r), h / 2 + rng.uniform(-1, 1) * (short / 2 - r)
        angle = rng.uniform(0, 2 * math.pi)
    else:
        cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * short, h / 2 + rng.uniform(-0.1, 0.1) * short
        r = rng.uniform(0.22, 0.4) * short
        angle = rng.uniform(0, 2 * math.pi) if CLASSES[k % len(CLASSES)] in ("triangle", "crescent", "arrow") else 0.0
    period = max(4.0, short * rng.uniform(0.1, 0.16))
    kind = CLASSES[k % len(CLASSES)]
    if kind in TEXTURES:
        tilt = rng.uniform(-0.25, 0.25) if hard else 0.0
        mask = _texture_mask(kind, h, w, period, tilt, rng)
        if hard:  # the texture fills a patch around the object's place, not the whole image
            yy, xx = np.mgrid[0:h, 0:w]
            mask &= (np.abs(xx - cx) < 1.4 * r) & (np.abs(yy - cy) < 1.4 * r)
        img = Image.fromarray(np.where(mask[..., None], np.array(fg, np.uint8), np.asarray(img)))
    else:
        _draw_shape(ImageDraw.Draw(img), kind, cx, cy, r, angle, fg, bg)
    if hard:
        _occlude(img, cx, cy, r, rng)
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    pixels = np.asarray(img).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _check_counts(root: Path, **counts: int) -> None:
    for name, n in counts.items():
        least = 0 if name == "val_per_class" else 1
        if n < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {n}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder; choose a new folder to write the demo data into")


def _encode(img: Image.Image, odd: str, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if odd == "L":
        img.convert("L").save(buf, "JPEG", quality=90)
    elif odd == "CMYK":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
    elif odd == "PNG":
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def class_name(k: int) -> str:
    """CLASSES[k], numbered past the last ("disc 2"): such a class draws as CLASSES[k mod 16] does."""
    return CLASSES[k % len(CLASSES)] + ("" if k < len(CLASSES) else f" {k // len(CLASSES) + 1}")


def make_demo_data(root: str | os.PathLike, classes: int = 10, train_per_class: int = 100,
                   val_per_class: int = 20, seed: int = 0, odd_files: bool = True, hard: bool = False,
                   progress: bool = False) -> Path:
    """Write the demo tree under `root` and return it. Deterministic for a seed."""
    root = Path(root)
    _check_counts(root, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    odd = {(1, "L"), (2, "CMYK"), (3, "PNG")} if odd_files else set()
    with tqdm(total=classes * (train_per_class + val_per_class), unit="img", desc="demo images",
              disable=not progress, leave=False) as bar:
        for k in range(classes):
            for split, n in (("train", train_per_class), ("val", val_per_class)):
                folder = root / split / wnid(k)
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    kind = next((o for c, o in odd if c == k and split == "train" and i == 0), "")
                    img = draw_example(k, rng, hard)
                    # a new file renamed into place: never written through a link planted in a shared folder
                    write_bytes_atomic(folder / f"{wnid(k)}_{i:04d}.JPEG", _encode(img, kind, rng), durable=False)
                    bar.update()
    # written last: its presence says the tree is whole (`alexnet demo` skips generation when it is there)
    write_text_atomic(root / "LOC_synset_mapping.txt", "".join(f"{wnid(k)} {class_name(k)}\n" for k in range(classes)))
    return root


def make_demo_cifar(root: str | os.PathLike, train_per_class: int = 500, test_per_class: int = 100,
                    seed: int = 0, classes: int = 10, hard: bool = False, progress: bool = False) -> Path:
    """The demo classes at 32x32 in CIFAR-10's python-pickle format (data_batch_1..5, test_batch,
    batches.meta), for the Fig. 1 experiment where no CIFAR-10 copy is at hand."""
    _check_counts(Path(root), classes=classes, train_per_class=train_per_class, val_per_class=test_per_class)
    if classes > 10:
        raise UserError(f"--cifar writes CIFAR-10's format, whose labels are 0..9: --classes must be at most 10, "
                        f"got {classes}")
    rng = np.random.default_rng(seed)
    bar = tqdm(total=classes * (train_per_class + test_per_class), unit="img", desc="demo images",
               disable=not progress, leave=False)

    def draw(per_class):
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        images = []
        for k in labels:
            images.append(np.asarray(resize_and_center_crop(draw_example(int(k), rng, hard), 32)))
            bar.update()
        return np.stack(images), labels

    with bar:
        train, test = draw(train_per_class), draw(test_per_class)
    return write_cifar_batches(root, *train, [class_name(k) for k in range(classes)], *test)
