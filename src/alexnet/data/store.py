"""The prepared store: images written once by `alexnet prepare`, read at random by training.

Layout of a store folder (format version 1)::

    meta.json          format_version, format ("raw" or "jpeg"), image_size, classes (WordNet ids,
                       label i = classes[i]), class_names, splits {"train": n, "val": n}, source.
                       Written last: a folder without it is not a store.
    stats.npz          the training set's statistics (§2, §4.1): mean (S,S,3) float32 per-pixel mean
                       image; rgb_mean (3,), rgb_cov (3,3) of all training pixels; eigvals (3,)
                       descending and eigvecs (3,3), one eigenvector per column; count.
    prepare.log        every skipped file with its reason, every converted one, warnings.
    <split>/labels.npy (n,) int16
    <split>/files.txt  the source path (relative to SRC) of each image, one per line
    raw format:  <split>/images.npy (slots, S, S, 3) uint8, a plain .npy read by memory map;
                 <split>/slots.npy (n,) int64, the row of each image (rows of skipped files stay unused)
    jpeg format: <split>/shards/NNNNNN.bin concatenated JPEGs (quality in meta.json);
                 <split>/index.npy (n, 3) int64: shard, byte offset, byte length

Raw is the fast one (a batch is one gather from the page cache, ~196 KB an image at 256: ImageNet's
1.28 M training images take ~250 GB); jpeg is ~10x smaller and costs a decode (~0.6 ms an image a core).
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from pathlib import Path

import numpy as np

from alexnet.errors import UserError

FORMAT_VERSION = 1


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_meta(root: str | os.PathLike) -> dict:
    """The store's meta.json, after checking that `root` is a complete store of this format version."""
    root = Path(root)
    partial = root.parent / (root.name + ".partial")
    if not (root / "meta.json").is_file():
        if partial.is_dir():
            raise UserError(f"{root} is not finished: a prepare was interrupted ({partial}); run the same "
                            f"`alexnet prepare` command again to complete it")
        if not root.exists():
            raise UserError(f"store {root} does not exist; create it with `alexnet prepare SRC {root}`")
        raise UserError(f"{root} is not a prepared store (no meta.json); create one with `alexnet prepare`")
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{root}/meta.json cannot be read: {e}") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"store {root} has format version {version}, this alexnet reads version "
                        f"{FORMAT_VERSION}; prepare it again with this version's `alexnet prepare`")
    return meta


class ImageStore:
    """One split of a store: `len(s)`, `s[i] -> (S x S x 3 uint8 array, int label)`, `s.classes`,
    `s.mean` (S x S x 3 float32), `s.pca` ((3,) eigenvalues, (3, 3) eigenvectors as columns)."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.split = split
        if not self.meta["splits"].get(split):
            have = ", ".join(k for k, v in self.meta["splits"].items() if v) or "none"
            raise UserError(f"store {self.root} has no '{split}' split (it has: {have})")
        self.format: str = self.meta["format"]
        self.image_size: int = self.meta["image_size"]
        self.classes: list[str] = self.meta["classes"]
        self.class_names: list[str] = self.meta.get("class_names", self.classes)
        folder = self.root / split
        self.labels = np.load(folder / "labels.npy").astype(np.int64)
        if len(self.labels) != self.meta["splits"][split]:
            raise UserError(f"store {self.root} is damaged: {split}/labels.npy has {len(self.labels)} entries, "
                            f"meta.json says {self.meta['splits'][split]}")
        if self.format == "raw":
            self._rows = np.load(folder / "slots.npy")
        elif self.format == "jpeg":
            self._rows = np.load(folder / "index.npy")
        else:
            raise UserError(f"store {self.root} has unknown format '{self.format}'")
        self._images = None
        self._fd: int | None = None
        self._shards: dict[int, mmap.mmap] = {}
        self._lock = threading.Lock()  # loader threads share the shard maps
        self._stats = None
        self._files = None

    # -- pickling (loader processes, DDP): reopen the memory maps on the other side
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"], state["_shards"], state["_lock"], state["_fd"] = None, {}, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"ImageStore({str(self.root)!r}, {self.split!r}: {len(self)} images, {len(self.classes)} classes, "
                f"{self.image_size}x{self.image_size}, {self.format})")

    @property
    def images(self) -> np.ndarray:
        """Raw format: the (slots, S, S, 3) uint8 memory map (copy-on-write, so torch can wrap it)."""
        if self._images is None:
            path = self.root / self.split / "images.npy"
            try:
                self._images = np.load(path, mmap_mode="c")
            except (OSError, ValueError) as e:
                raise UserError(f"store {self.root} is damaged: cannot map {path}: {e}") from None
            s = self.image_size
            if self._images.shape[1:] != (s, s, 3) or self._images.dtype != np.uint8:
                raise UserError(f"store {self.root} is damaged: {path} has shape {self._images.shape}")
        return self._images

    def _jpeg_bytes(self, i: int) -> memoryview:
        shard, offset, length = (int(v) for v in self._rows[i])
        m = self._shards.get(shard)
        if m is None:
            with self._lock:
                m = self._shards.get(shard)
                if m is None:
                    with open(self.root / self.split / "shards" / f"{shard:06d}.bin", "rb") as f:
                        m = self._shards[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(m)[offset : offset + length]

    def image(self, i: int) -> np.ndarray:
        if self.format == "raw":
            return np.array(self.images[self._rows[i]])
        from alexnet.data.prepare import decode_jpeg

        return decode_jpeg(self._jpeg_bytes(i))

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = i % len(self)
        return self.image(i), int(self.labels[i])

    def get_batch(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 images for `indices`, written into `out` if given."""
        indices = np.asarray(indices, dtype=np.int64)
        s = self.image_size
        if out is None:
            out = np.empty((len(indices), s, s, 3), np.uint8)
        if self.format == "raw":
            self._read_raw(self._rows[indices], out)
        else:
            from alexnet.data.prepare import decode_jpeg

            for j, i in enumerate(indices):
                decode_jpeg(self._jpeg_bytes(int(i)), out=out[j])
        return out

    def _read_raw(self, rows: np.ndarray, out: np.ndarray) -> None:
        """One pread per image straight into `out`: no page-table faults on first touch, unlike
        reading through the memory map (first pass over a store: 4k vs 40k images/s, bench/README.md)."""
        if self._fd is None:
            _ = self.images  # opens the file and checks its shape first
            self._fd = os.open(self.root / self.split / "images.npy", os.O_RDONLY)
        nbytes = self.image_size * self.image_size * 3
        base = self.images.offset
        view = memoryview(out.reshape(-1))
        for j, r in enumerate(rows):
            if os.preadv(self._fd, [view[j * nbytes : (j + 1) * nbytes]], base + int(r) * nbytes) != nbytes:
                raise UserError(f"store {self.root} is damaged: {self.split}/images.npy is shorter than its header says")

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._files = (self.root / self.split / "files.txt").read_text().splitlines()
        return self._files

    @property
    def stats(self) -> dict[str, np.ndarray]:
        if self._stats is None:
            with np.load(self.root / "stats.npz") as z:
                self._stats = {k: z[k] for k in z.files}
        return self._stats

    @property
    def mean(self) -> np.ndarray:
        """The training set's per-pixel mean image, (S, S, 3) float32 on the 0..255 scale."""
        return self.stats["mean"]

    @property
    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (3,), descending, and eigenvectors (3, 3) as columns of the covariance of the
        training set's RGB pixel values (0..255 scale), §4.1."""
        return self.stats["eigvals"], self.stats["eigvecs"]
