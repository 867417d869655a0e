"""Real data at hand: scikit-learn's copy of the UCI handwritten digits (1,797 images of 8x8, 10
classes, written by 43 people; `sklearn.datasets.load_digits`, shipped inside scikit-learn, so nothing
is downloaded), as an ImageNet-style tree of JPEGs or in CIFAR-10's python batches.

`make_digits_tree(DIR)` writes DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG: each 8x8 image
upscaled (bilinear) to a square of a random side (40-120 px), grey as RGB, light ink on black as
MNIST, at a random JPEG quality; `make_digits_cifar(DIR)` writes the same split at 32x32. The split is
stratified (the same share of every class in val) and fixed by the seed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.data.cifar import write_cifar_batches
from alexnet.errors import UserError
from alexnet.files import write_bytes_atomic, write_text_atomic

CLASSES = [str(d) for d in range(10)]
MAX_VALUE = 16  # load_digits counts set pixels of a 4x4 block of the 32x32 bitmap: 0..16


def wnid(digit: int) -> str:
    return f"n8{digit:07d}"  # WordNet-id-shaped names outside WordNet's real range (the demo uses n9...)


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 (N, 8, 8) in 0..255 (ink bright) and their labels int64 (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the UCI digits come with scikit-learn, which is not installed "
                        "(pip install scikit-learn, or pip install 'alexnet[digits]')") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255 / MAX_VALUE)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each sorted: of every class, round(val_fraction * its count) at random
    (for `seed`) go to val, the rest to train."""
    if not 0 < val_fraction < 1:
        raise UserError(f"the validation share must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        val.append(rng.permutation(members)[:int(round(val_fraction * len(members)))])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def upscale(pixels: np.ndarray, side: int) -> Image.Image:
    """An 8x8 uint8 digit as an RGB image of side x side (bilinear, as a scanned digit is smooth)."""
    return Image.fromarray(pixels).resize((side, side), Image.BILINEAR).convert("RGB")


def _check_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder; choose a new folder to write the digits into")


def make_digits_tree(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
                     sides: tuple[int, int] = (40, 120)) -> Path:
    """Write the digits as DIR/train/<wnid>/<wnid>_<index>.JPEG and DIR/val/... (index: the image's
    row in load_digits) with DIR/LOC_synset_mapping.txt, and return DIR. Deterministic for a seed."""
    root = Path(root)
    _check_folder(root)
    images, labels = load_digit_arrays()
    rng = np.random.default_rng(seed)
    for split, rows in zip(("train", "val"), stratified_split(labels, val_fraction, seed)):
        for c in range(len(CLASSES)):
            (root / split / wnid(c)).mkdir(parents=True, exist_ok=True)
        for i in rows:
            img = upscale(images[i], int(rng.integers(sides[0], sides[1] + 1)))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
            write_bytes_atomic(root / split / wnid(labels[i]) / f"{wnid(labels[i])}_{i:04d}.JPEG", buf.getvalue(),
                               durable=False)  # a new file renamed into place, never through a planted link
    write_text_atomic(root / "LOC_synset_mapping.txt", "".join(f"{wnid(c)} digit {c}\n" for c in range(len(CLASSES))))
    return root


def make_digits_cifar(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """The same split as `make_digits_tree` (same `val_fraction` and `seed`) at 32x32 in CIFAR-10's
    python batches (data_batch_1..5 = train, test_batch = val, batches.meta), e.g. for Fig. 1."""
    root = Path(root)
    _check_folder(root)
    images, labels = load_digit_arrays()
    train, val = stratified_split(labels, val_fraction, seed)

    def at32(rows: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(upscale(images[i], 32)) for i in rows])

    return write_cifar_batches(root, at32(train), labels[train], CLASSES, at32(val), labels[val])
