"""The prepared store: images written once by `alexnet prepare`, read at random by training.

Layout of a store folder (format version 2)::

    meta.json          format_version, format ("raw" or "jpeg"), image_size, classes (WordNet ids,
                       label i = classes[i]), class_names, splits {"train": n, "val": n}, source,
                       created, plan (a hash of the files and settings it was made from).
                       Written last: a folder without it is not a store.
    stats.npz          the training set's statistics (§2, §4.1): mean (S,S,3) float32 per-pixel mean
                       image; rgb_mean (3,), rgb_cov (3,3) of all training pixels; eigvals (3,)
                       descending and eigvecs (3,3), one eigenvector per column; count.
    prepare.log        every skipped file with its reason, every converted one, warnings.
    <split>/labels.npy (n,) int16
    <split>/files.json the source path (relative to SRC) of each image: a JSON list of n entries, a
                       string, or {"hex": ...} for a name that is not UTF-8 (alexnet/data/source.py)
    raw format:  <split>/images.npy (slots, S, S, 3) uint8, a plain .npy read by memory map;
                 <split>/slots.npy (n,) int64, the row of each image (rows of skipped files stay unused)
    jpeg format: <split>/shards/NNNNNN.bin concatenated baseline RGB JPEGs, 4:2:0 (quality in
                 meta.json; any JPEG the decoder reads is read, whoever encoded it);
                 <split>/index.npy (n, 3) int64: shard, byte offset, byte length

Raw is the fast one (a batch is one gather from the page cache, ~196 KB an image at 256: ImageNet's
1.28 M training images take ~250 GB); jpeg is ~10x smaller and costs a decode
(~0.3 ms an image a core at q90, ~25% less at q85: bench/docs/loader.md).
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from alexnet.data.image import decode_jpeg
from alexnet.data.source import name_from_json
from alexnet.errors import UserError

FORMAT_VERSION = 2  # 2: files.json (a JSON list) replaced files.txt (one name a line)


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
    except (OSError, ValueError) as e:
        raise UserError(f"{root}/meta.json cannot be read: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{root}/meta.json is not a store's meta.json")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"store {root} has format version {version}, this alexnet reads version "
                        f"{FORMAT_VERSION}; prepare it again with this version's `alexnet prepare`")
    _check_meta(root, meta)
    return meta


def _check_meta(root: Path, meta: dict) -> None:
    def bad(what: str):
        raise UserError(f"store {root} is damaged: meta.json {what}; prepare it again")

    for key, kind in (("format", str), ("image_size", int), ("classes", list), ("splits", dict)):
        if not isinstance(meta.get(key), kind):
            bad(f"has no '{key}'" if key not in meta else f"has a '{key}' that is not a {kind.__name__}")
    if meta["format"] not in ("raw", "jpeg"):
        bad(f"names an unknown format '{meta['format']}'")
    if meta["image_size"] < 1 or not meta["classes"]:
        bad("has no image size or no classes")
    if not all(isinstance(v, int) and v >= 0 for v in meta["splits"].values()):
        bad("has a split size that is not a count")


def _load_npy(root: Path, path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"store {root} is damaged: cannot read {path.relative_to(root)} "
                        f"({getattr(e, 'strerror', None) or e}); prepare it again") from None


class ImageStore:
    """One split of a store: `len(s)`, `s[i] -> (S x S x 3 uint8 array, int label)`, `s.classes`,
    `s.mean` (S x S x 3 float32), `s.pca` ((3,) eigenvalues, (3, 3) eigenvectors as columns).

    Opening checks, cheaply, that the split's files agree with meta.json (shapes, label range, rows
    within the image file, shards present and long enough) and that the statistics are finite, so a
    damaged store is refused in one line before any training is spent on it."""

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
        self.labels = self._checked_labels(_load_npy(self.root, folder / "labels.npy"))
        if self.format == "raw":
            self._rows = _load_npy(self.root, folder / "slots.npy")
        else:
            self._rows = _load_npy(self.root, folder / "index.npy")
        self._images = None
        self._fd: int | None = None
        self._shards: dict[int, mmap.mmap] = {}
        self._lock = threading.Lock()  # loader threads share the shard maps
        self._files = None
        self._check_rows()
        self._stats = self._load_stats()

    def _damaged(self, what: str) -> UserError:
        return UserError(f"store {self.root} is damaged: {what}; prepare it again")

    def _checked_labels(self, labels: np.ndarray) -> np.ndarray:
        n = self.meta["splits"][self.split]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise self._damaged(f"{self.split}/labels.npy holds {labels.dtype} of shape {labels.shape}")
        if len(labels) != n:
            raise self._damaged(f"{self.split}/labels.npy has {len(labels)} entries, meta.json says {n}")
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise self._damaged(f"{self.split}/labels.npy has labels outside 0..{len(self.classes) - 1} "
                                f"({labels.min()}..{labels.max()})")
        return labels.astype(np.int64)

    def _check_rows(self) -> None:
        rows, n = self._rows, len(self.labels)
        if self.format == "raw":
            if rows.shape != (n,) or rows.dtype.kind not in "iu":
                raise self._damaged(f"{self.split}/slots.npy has shape {rows.shape}, not ({n},)")
            slots = len(self.images)
            if rows.min() < 0 or rows.max() >= slots:
                raise self._damaged(f"{self.split}/slots.npy points outside the {slots} rows of images.npy "
                                    f"({rows.min()}..{rows.max()})")
            return
        if rows.shape != (n, 3) or rows.dtype.kind not in "iu" or (rows < 0).any():
            raise self._damaged(f"{self.split}/index.npy is not ({n}, 3) non-negative integers")
        shards = self.root / self.split / "shards"
        ids, which = np.unique(rows[:, 0], return_inverse=True)
        ends = np.zeros(len(ids), np.int64)
        np.maximum.at(ends, which.reshape(-1), rows[:, 1] + rows[:, 2])
        for shard, end in zip(ids.tolist(), ends.tolist()):
            path = shards / f"{shard:06d}.bin"
            try:
                length = path.stat().st_size
            except OSError:
                raise self._damaged(f"{path.relative_to(self.root)} is missing") from None
            if end > length:
                raise self._damaged(f"{path.relative_to(self.root)} is shorter than its index says")

    def _load_stats(self) -> dict[str, np.ndarray]:
        path = self.root / "stats.npz"
        s = self.image_size
        want = {"mean": (s, s, 3), "rgb_mean": (3,), "eigvals": (3,), "eigvecs": (3, 3)}
        try:
            with np.load(path, allow_pickle=False) as z:
                stats = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise self._damaged(f"cannot read stats.npz ({getattr(e, 'strerror', None) or e})") from None
        for key, shape in want.items():
            if key not in stats or stats[key].shape != shape or stats[key].dtype.kind != "f":
                raise self._damaged(f"stats.npz has no {key} of shape {shape}")
            if not np.isfinite(stats[key]).all():
                raise self._damaged(f"stats.npz holds non-finite values in {key}")
        return stats

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
                self._images = np.load(path, mmap_mode="c", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise self._damaged(f"cannot map {self.split}/images.npy: {e}") from None
            s = self.image_size
            if self._images.shape[1:] != (s, s, 3) or self._images.dtype != np.uint8:
                raise self._damaged(f"{self.split}/images.npy has shape {self._images.shape}")
        return self._images

    def _jpeg_bytes(self, i: int) -> memoryview:
        shard, offset, length = (int(v) for v in self._rows[i])
        m = self._shards.get(shard)
        if m is None:
            with self._lock:
                m = self._shards.get(shard)
                if m is None:
                    path = self.root / self.split / "shards" / f"{shard:06d}.bin"
                    try:
                        with open(path, "rb") as f:
                            m = self._shards[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    except (OSError, ValueError) as e:
                        raise self._damaged(f"cannot read {self.split}/shards/{shard:06d}.bin ({e})") from None
        return memoryview(m)[offset : offset + length]

    def _decode(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        try:
            pixels = decode_jpeg(self._jpeg_bytes(i), out=out)
        except (ValueError, OSError) as e:
            raise self._damaged(f"image {i} of {self.split} (shard {int(self._rows[i][0]):06d}) "
                                f"is not a readable JPEG ({e})") from None
        s = self.image_size
        if pixels.shape != (s, s, 3):
            raise self._damaged(f"image {i} of {self.split} decodes to {pixels.shape}, not ({s}, {s}, 3)")
        return pixels

    def image(self, i: int) -> np.ndarray:
        if self.format == "raw":
            return np.array(self.images[self._rows[i]])
        return self._decode(i)

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
            for j, i in enumerate(indices):
                self._decode(int(i), out=out[j])
        return out

    def _read_raw(self, rows: np.ndarray, out: np.ndarray) -> None:
        """One pread per image straight into `out`: no page-table faults on first touch, unlike
        reading through the memory map (first pass over a store: 4k vs 40k images/s, bench/docs/loader.md)."""
        if self._fd is None:
            _ = self.images  # opens the file and checks its shape first
            self._fd = os.open(self.root / self.split / "images.npy", os.O_RDONLY)
        nbytes = self.image_size * self.image_size * 3
        base = self.images.offset
        view = memoryview(out.reshape(-1))
        for j, r in enumerate(rows):
            if os.preadv(self._fd, [view[j * nbytes : (j + 1) * nbytes]], base + int(r) * nbytes) != nbytes:
                raise self._damaged(f"{self.split}/images.npy is shorter than its header says")

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    @property
    def files(self) -> list[str]:
        """The source path (relative to SRC) of each image; a name that is not UTF-8 comes back as
        os.fsdecode gives it (its odd bytes as surrogates), so SRC / name opens the file."""
        if self._files is None:
            path = self.root / self.split / "files.json"
            try:
                files = [name_from_json(e) for e in json.loads(path.read_text())]
            except (OSError, ValueError, TypeError) as e:
                raise self._damaged(f"cannot read {self.split}/files.json ({e})") from None
            if len(files) != len(self):
                raise self._damaged(f"{self.split}/files.json has {len(files)} names for {len(self)} images")
            self._files = files
        return self._files

    @property
    def stats(self) -> dict[str, np.ndarray]:
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


def check_usable(store: ImageStore, num_classes: int | None = None) -> None:
    """Refuse, in one line and before any work is spent on it, a split whose labels fall outside
    `num_classes` (default: the store's classes), whose first or last image cannot be read, or whose
    statistics are not finite or not its images' shape (a NaN mean makes every output NaN). Training
    and every command that runs a net on a store call it (the one place for these checks)."""
    where = f"store {store.root}"
    n = len(store.classes) if num_classes is None else num_classes
    labels = store.labels
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        raise UserError(f"{where} is damaged: its {store.split} labels run from {labels.min()} to {labels.max()}, "
                        f"outside the {n} classes (0..{n - 1}); prepare it again")
    try:
        mean, (eigvals, eigvecs) = store.mean, store.pca
        if len(store):
            store.get_batch(np.array(sorted({0, len(store) - 1})))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file shows itself as any error
        raise UserError(f"{where} ({store.split} split) cannot be read: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; prepare it again") from None
    size = store.image_size
    if np.shape(mean) != (size, size, 3):
        raise UserError(f"{where} is damaged: its mean image is {np.shape(mean)}, not its images' ({size}, {size}, 3); "
                        f"prepare it again")
    for name, value in (("mean image", mean), ("RGB eigenvalues", eigvals), ("RGB eigenvectors", eigvecs)):
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise UserError(f"{where} is damaged: its {name} is not finite (NaN or infinite); prepare it again")
