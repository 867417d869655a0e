"""Images that are not in a store: a plain class-folder tree as a Dataset, and batches of store pixels
from any images (files, PIL images, arrays, any Dataset), for the library's `extract`, `evaluate`
and `predict`.

`ImageFolder(ROOT, S)` reads ROOT/<class>/<image files>, torchvision's ImageFolder layout: label i is
the i-th class folder in name order (or the i-th of the `classes` given). Its items are an
ImageStore's: the (S, S, 3) uint8 square of §2 and the label, so either kind feeds the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from alexnet.data.image import IMAGE_SUFFIXES, BadImage
from alexnet.data.transforms import image_name, store_pixels
from alexnet.errors import UserError, printable


def class_folders(root: Path) -> list[str]:
    """The class folders of a tree, in name order (hidden ones left out)."""
    if not root.is_dir():
        raise UserError(f"{printable(str(root))} is not a folder" if root.exists() else
                        f"folder {printable(str(root))} does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolder(torch.utils.data.Dataset):
    """A class-folder tree ROOT/<class>/* as a Dataset of (S x S x 3 uint8 image, label), S = `image_size`
    (§2: shorter side to S, the central square). `classes` fixes the label order (a net's classes: the
    tree's folders must be among them); by default the folders in name order. `files`, `labels`,
    `classes`, `class_names` as an ImageStore has them."""

    def __init__(self, root: str | os.PathLike, image_size: int = 256, classes: Sequence[str] | None = None):
        self.root, self.image_size = Path(root), int(image_size)
        folders = class_folders(self.root)
        if not folders:
            raise UserError(f"{printable(str(self.root))} has no class folders; expected ROOT/<class>/<images>")
        self.classes = list(classes) if classes is not None else folders
        index = {c: i for i, c in enumerate(self.classes)}
        stranger = next((f for f in folders if f not in index), None)
        if stranger is not None:
            raise UserError(f"class folder {printable(stranger)} of {printable(str(self.root))} is not one of the "
                            f"{len(self.classes)} classes given (e.g. {', '.join(map(printable, self.classes[:3]))})")
        self.class_names = list(self.classes)
        self.files: list[str] = []
        labels: list[int] = []
        for folder in folders:
            found = sorted(p for p in (self.root / folder).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
            self.files += map(str, found)
            labels += [index[folder]] * len(found)
        if not self.files:
            raise UserError(f"the class folders of {printable(str(self.root))} hold no image files")
        self.labels = np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return store_pixels(self.files[i], self.image_size), int(self.labels[i])
        except BadImage as e:
            raise UserError(f"{printable(self.files[i])}: {e}") from None

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}, {len(self)} images of {len(self.classes)} classes, "
                f"{self.image_size}px)")


def _pixels(item, size: int, index: int) -> tuple[np.ndarray, int | None]:
    """(store pixels, label or None) of one item: an image, or a Dataset's (image, label)."""
    image, label = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    try:
        pixels = store_pixels(image, size)
    except BadImage as e:
        raise UserError(f"{image_name(image, index)}: {e}") from None
    return pixels, None if label is None else int(label)


def pixel_batches(items: Sequence, size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, list]]:
    """(uint8 (B, size, size, 3) tensor, labels (None where an item has none)) for each run of
    `batch_size` items of `items` (images, or (image, label) pairs as a Dataset gives them), in order.
    Files are decoded by torch's thread count of threads (Pillow decodes and resizes without the GIL)."""
    if batch_size < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for start in range(0, len(items), batch_size):
            stop = min(start + batch_size, len(items))
            done = list(pool.map(lambda i: _pixels(items[i], size, i), range(start, stop)))
            yield torch.from_numpy(np.stack([p for p, _ in done])), [label for _, label in done]
