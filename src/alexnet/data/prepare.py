"""`alexnet prepare SRC DST`: an ImageNet-style folder, written once into a store training reads fast.

§2: "Given a rectangular image, we first rescaled the image such that the shorter side was of length
256, and then cropped out the central 256x256 patch". Each image is decoded (with the JPEG decoder's
own 1/2, 1/4, 1/8 downscaling while the image stays at least twice the target, as Pillow's thumbnail
does), converted to RGB, resized with an antialiasing (Lanczos) filter and centre-cropped.

The store (format documented in alexnet/data/store.py) is written into DST.partial and renamed to DST
when complete, so a store at DST is always whole. The work is split into chunks; finished chunks and
the running training-set statistics are checkpointed in DST.partial/progress.pkl, and running the same
command again after an interrupt or a crash continues from there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet.data.store import FORMAT_VERSION, read_meta, write_json_atomic
from alexnet.errors import UserError

RESAMPLE = Image.Resampling.LANCZOS
CLASS_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt", "val.txt", "ILSVRC2012_val_labels.txt")


class BadImage(Exception):
    """An input file that cannot be turned into an RGB image."""


# ---------------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------------


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept (rounded)."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def resize_and_center_crop(img: Image.Image, size: int) -> Image.Image:
    """§2: shorter side to `size`, then the central `size` x `size` patch."""
    w, h = resized_shape(*img.size, size)
    if (w, h) != img.size:
        img = img.resize((w, h), RESAMPLE)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int, draft: bool = True) -> tuple[np.ndarray, str | None]:
    """The `size` x `size` x 3 uint8 RGB store image of one file, and a note when the file needed a
    conversion (greyscale, CMYK, a PNG under a .JPEG name ...). Raises BadImage if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"cannot read the file: {e.strerror or e}") from None
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        notes = []
        suffix = Path(path).suffix.lower()
        if img.format != "JPEG" or suffix not in (".jpeg", ".jpg"):
            notes.append(f"{img.format} data in a '{Path(path).suffix}' file")
        if draft and img.format == "JPEG":
            # Let libjpeg downscale in the DCT while both sides stay >= 2*size (Pillow's reducing_gap).
            img.draft(img.mode, (2 * size, 2 * size))
        img.load()
        if img.mode != "RGB":
            notes.append(f"{img.mode} converted to RGB")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # composite transparency on white, not on black
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img)
            img = img.convert("RGB")
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadImage(f"corrupt or truncated: {e}") from None
    out = np.asarray(resize_and_center_crop(img, size), dtype=np.uint8)
    return out, ("; ".join(notes) or None)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


try:  # libjpeg-turbo without Pillow's image objects: the same pixels, 2.7x faster at 256x256 (bench/README.md)
    import simplejpeg
except ImportError:  # e.g. a GPU machine without it: Pillow decodes the same pixels, slower
    simplejpeg = None


def decode_jpeg(data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB JPEG of the store as an (H, W, 3) uint8 array, decoded into `out` if given."""
    if simplejpeg is not None:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
    img = Image.open(io.BytesIO(data))
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if out is None:
        return pixels
    out[...] = pixels
    return out


# ---------------------------------------------------------------------------------------------------
# The source tree
# ---------------------------------------------------------------------------------------------------


@dataclass
class SourceSplit:
    files: list[str]  # paths relative to SRC, in store order
    labels: list[int]


@dataclass
class Source:
    classes: list[str]  # folder names (WordNet ids for ImageNet), sorted: label i is classes[i]
    class_names: list[str]
    splits: dict[str, SourceSplit]
    warnings: list[str] = field(default_factory=list)


def _files_in(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and not e.is_dir())


def _read_class_names(src: Path, classes: list[str]) -> list[str]:
    for name in CLASS_NAME_FILES:
        path = src / name
        if path.is_file():
            names = {}
            for line in path.read_text(errors="replace").splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    names[parts[0]] = parts[1]
            return [names.get(c, c) for c in classes]
    return list(classes)


def read_val_labels(path: Path, classes: list[str]) -> dict[str, int]:
    """Labels of a flat validation folder, by file stem. Reads ILSVRC's LOC_val_solution.csv
    (ImageId,PredictionString whose first word is the WordNet id) or lines "FILE LABEL" where LABEL is
    a WordNet id or an index into the sorted class list (Caffe's val.txt)."""
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    text = path.read_text(errors="replace")
    if text.startswith("ImageId"):
        rows = ((r["ImageId"], r["PredictionString"].split()[0]) for r in csv.DictReader(io.StringIO(text)))
    else:
        rows = (tuple(line.split()[:2]) for line in text.splitlines() if line.strip())
    for n, row in enumerate(rows, 1):
        if len(row) != 2:
            raise UserError(f"{path}: line {n} is not 'FILE LABEL'")
        name, label = row
        stem = Path(name).stem
        if label in index:
            labels[stem] = index[label]
        elif label.isdigit() and int(label) < len(classes):
            labels[stem] = int(label)
        else:
            raise UserError(f"{path}: line {n}: label '{label}' is neither a class of train/ nor a class index")
    return labels


def scan_source(src: str | os.PathLike, val_labels: str | os.PathLike | None = None) -> Source:
    """Find the classes and files of an ImageNet-style tree: SRC/train/<class>/*, and SRC/val/<class>/*
    or a flat SRC/val/ with a labels file."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise UserError(f"source {src} is not a folder")
    train = src / "train"
    if not train.is_dir():
        raise UserError(f"{src} has no train/ folder; expected SRC/train/<class>/<images> (and SRC/val/)")
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{train} has no class folders; expected {train}/<class>/<images>")
    warnings = []
    splits: dict[str, SourceSplit] = {}
    files, labels = [], []
    for label, c in enumerate(classes):
        names = _files_in(train / c)
        if not names:
            warnings.append(f"class folder train/{c} is empty: label {label} keeps its place but has no images")
        files += [f"train/{c}/{n}" for n in names]
        labels += [label] * len(names)
    if not files:
        raise UserError(f"{train} has class folders but no files in them")
    splits["train"] = SourceSplit(files, labels)

    val = src / "val"
    if val.is_dir():
        subdirs = sorted(e.name for e in os.scandir(val) if e.is_dir() and not e.name.startswith("."))
        flat = _files_in(val)
        files, labels = [], []
        if subdirs:
            index = {c: i for i, c in enumerate(classes)}
            unknown = [d for d in subdirs if d not in index]
            if unknown:
                raise UserError(f"val/ has class folders that train/ lacks: {', '.join(unknown[:5])}")
            for c in subdirs:
                names = _files_in(val / c)
                if not names:
                    warnings.append(f"class folder val/{c} is empty")
                files += [f"val/{c}/{n}" for n in names]
                labels += [index[c]] * len(names)
        elif flat:
            path = Path(val_labels) if val_labels else next(
                (p for p in (src / n for n in VAL_LABEL_FILES) if p.is_file()), None)
            if path is None or not path.is_file():
                raise UserError(f"{val} holds images but no class folders; give its labels with --val-labels "
                                f"(LOC_val_solution.csv, or lines 'FILE LABEL'), or put one of "
                                f"{', '.join(VAL_LABEL_FILES)} in {src}")
            by_stem = read_val_labels(path, classes)
            missing = [n for n in flat if Path(n).stem not in by_stem]
            if missing:
                raise UserError(f"{path} has no label for {len(missing)} file(s) of val/, e.g. {missing[0]}")
            files = [f"val/{n}" for n in flat]
            labels = [by_stem[Path(n).stem] for n in flat]
        if files:
            splits["val"] = SourceSplit(files, labels)
        else:
            warnings.append("val/ is empty: the store has no validation split")
    else:
        warnings.append("no val/ folder: the store has no validation split")
    return Source(classes, _read_class_names(src, classes), splits, warnings)


# ---------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    split: str
    index: int
    start: int  # first slot
    paths: list[str]  # absolute paths


def _process_chunk(chunk: Chunk, work: str, size: int, fmt: str, quality: int, draft: bool, stats: bool) -> dict:
    """Decode, resize and write one chunk; return what the parent records (and the chunk's statistics
    as exact integer sums: uint8 pixels make every sum fit int64 even for all of ImageNet)."""
    out = Path(work) / chunk.split
    valid, skipped, converted = [], [], []
    sum_image = np.zeros((size, size, 3), np.int64) if stats else None
    rgb_sum = np.zeros(3, np.int64)
    rgb_outer = np.zeros((3, 3), np.int64)
    blobs = []
    if fmt == "raw":
        meta = json.loads((out / "layout.json").read_text())
        fd = os.open(out / "images.npy", os.O_WRONLY)
    try:
        for i, path in enumerate(chunk.paths):
            slot = chunk.start + i
            try:
                pixels, note = load_image(path, size, draft)
            except BadImage as e:
                skipped.append((slot, str(e)))
                continue
            if note:
                converted.append((slot, note))
            if fmt == "raw":
                os.pwrite(fd, pixels.tobytes(), meta["offset"] + slot * pixels.nbytes)
            else:
                blob = encode_jpeg(pixels, quality)
                blobs.append(blob)
                pixels = decode_jpeg(blob)  # statistics of exactly what training will read
            valid.append(slot)
            if stats:
                sum_image += pixels
                # float64 BLAS is exact here (every partial sum is an integer below 2^53) and 2.5x
                # faster than numpy's int64 matmul; the running totals are kept as int64.
                flat = pixels.reshape(-1, 3).astype(np.float64)
                rgb_sum += flat.sum(0).astype(np.int64)
                rgb_outer += (flat.T @ flat).astype(np.int64)
    finally:
        if fmt == "raw":
            os.close(fd)
    lengths = [len(b) for b in blobs]
    if fmt == "jpeg":
        shard = out / "shards" / f"{chunk.index:06d}.bin"
        tmp = shard.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for b in blobs:
                f.write(b)
        os.replace(tmp, shard)
    return {"split": chunk.split, "index": chunk.index, "valid": valid, "skipped": skipped,
            "converted": converted, "lengths": lengths, "count": len(valid) if stats else 0,
            "sum_image": sum_image, "rgb_sum": rgb_sum, "rgb_outer": rgb_outer}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and saves progress


# ---------------------------------------------------------------------------------------------------
# The prepare run
# ---------------------------------------------------------------------------------------------------


@dataclass
class PrepareReport:
    dst: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str]]  # (relative path, reason)
    converted: list[tuple[str, str]]
    warnings: list[str]
    seconds: float
    resumed_chunks: int = 0


def _plan_key(source: Source, size: int, fmt: str, quality: int, draft: bool, chunk_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, size, fmt, quality, draft, chunk_size, source.classes]).encode())
    for name, split in sorted(source.splits.items()):
        h.update(name.encode())
        h.update("\n".join(split.files).encode())
        h.update(np.asarray(split.labels, np.int64).tobytes())
    return h.hexdigest()


def _save_progress(work: Path, state: dict) -> None:
    tmp = work / "progress.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, work / "progress.pkl")


def prepare(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: int = 256,
    fmt: str = "raw",
    quality: int = 90,
    workers: int | None = None,
    chunk_size: int = 256,
    val_labels: str | os.PathLike | None = None,
    overwrite: bool = False,
    draft: bool = True,
    progress: bool = True,
    log=print,
    checkpoint_seconds: float = 10.0,
    _stop_after_chunks: int | None = None,
) -> PrepareReport:
    """Write the store; returns what was written, skipped and converted. See the module docstring."""
    start_time = time.time()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if fmt not in ("raw", "jpeg"):
        raise UserError(f"unknown store format '{fmt}' (raw or jpeg)")
    if size < 8:
        raise UserError(f"--size {size} is too small")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be within 1..100, got {quality}")
    if dst.exists():
        if not overwrite:
            what = "a store" if (dst / "meta.json").exists() else "something"
            raise UserError(f"{dst} already holds {what}; pass --overwrite to replace it, or choose another DST")
    if dst == src or src in dst.parents:
        raise UserError(f"DST {dst} must not lie inside SRC {src}")
    source = scan_source(src, val_labels)
    work = dst.parent / (dst.name + ".partial")
    key = _plan_key(source, size, fmt, quality, draft, chunk_size)
    state = None
    if work.exists():
        plan_path = work / "plan.json"
        old = json.loads(plan_path.read_text()) if plan_path.exists() else {}
        if old.get("key") == key and (work / "progress.pkl").exists():
            with open(work / "progress.pkl", "rb") as f:
                state = pickle.load(f)
        elif old.get("key") not in (None, key):
            raise UserError(f"{work} holds an interrupted prepare of other files or settings; delete it "
                            f"or run the same command as before")
        else:
            shutil.rmtree(work)
    if state is None:
        work.mkdir(parents=True, exist_ok=True)
        for name, split in source.splits.items():
            (work / name).mkdir(exist_ok=True)
            if fmt == "raw":
                arr = np.lib.format.open_memmap(work / name / "images.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(split.files), size, size, 3))
                write_json_atomic(work / name / "layout.json", {"offset": int(arr.offset)})
                del arr
            else:
                (work / name / "shards").mkdir(exist_ok=True)
        write_json_atomic(work / "plan.json", {"key": key, "src": str(src), "size": size, "format": fmt})
        state = {"done": {}, "count": 0, "sum_image": np.zeros((size, size, 3), np.int64),
                 "rgb_sum": np.zeros(3, np.int64), "rgb_outer": np.zeros((3, 3), np.int64)}
    resumed = len(state["done"])

    chunks = []
    for name, split in source.splits.items():
        for k, first in enumerate(range(0, len(split.files), chunk_size)):
            if (name, k) not in state["done"]:
                paths = [str(src / p) for p in split.files[first : first + chunk_size]]
                chunks.append(Chunk(name, k, first, paths))
    total = sum(len(s.files) for s in source.splits.values())
    already = total - sum(len(c.paths) for c in chunks)
    if resumed:
        log(f"resuming an interrupted prepare: {resumed} chunk(s), {already} image(s) already done")
    if workers is None or workers <= 0:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, len(chunks)))

    def record(result: dict) -> None:
        state["done"][(result["split"], result["index"])] = {
            k: result[k] for k in ("valid", "skipped", "converted", "lengths")}
        if result["split"] == "train":
            state["count"] += result["count"]
            state["sum_image"] += result["sum_image"]
            state["rgb_sum"] += result["rgb_sum"]
            state["rgb_outer"] += result["rgb_outer"]

    from tqdm import tqdm

    bar = tqdm(total=total, initial=already, unit="img", desc="prepare", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    args = (str(work), size, fmt, quality, draft)

    def completed(pool):
        """(chunk, result) as chunks finish: in this process, or on a pool with 2 chunks per worker queued."""
        if pool is None:
            for c in chunks:
                yield c, _process_chunk(c, *args, c.split == "train")
            return
        pending: dict[Future, Chunk] = {}
        queue = list(reversed(chunks))
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                c = queue.pop()
                pending[pool.submit(_process_chunk, c, *args, c.split == "train")] = c
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()

    last_save = time.time()
    finished_chunks = 0
    interrupted = False
    pool = None
    try:
        if workers > 1 and chunks:
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_ignore_sigint)
        for c, result in completed(pool):
            record(result)
            bar.update(len(c.paths))
            finished_chunks += 1
            if time.time() - last_save >= checkpoint_seconds:
                _save_progress(work, state)
                last_save = time.time()
            if _stop_after_chunks is not None and finished_chunks >= _stop_after_chunks:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        _save_progress(work, state)
    if interrupted:
        raise KeyboardInterrupt(f"prepare interrupted; run the same command again to continue ({work})")

    return _finalize(source, state, work, dst, size, fmt, quality, overwrite, start_time, resumed, log)


def _finalize(source: Source, state: dict, work: Path, dst: Path, size: int, fmt: str, quality: int,
              overwrite: bool, start_time: float, resumed: int, log) -> PrepareReport:
    counts, skipped, converted = {}, [], []
    for name, split in source.splits.items():
        keys = sorted(k for k in state["done"] if k[0] == name)
        valid = [s for k in keys for s in state["done"][k]["valid"]]
        for k in keys:
            skipped += [(split.files[s], why) for s, why in state["done"][k]["skipped"]]
            converted += [(split.files[s], note) for s, note in state["done"][k]["converted"]]
        counts[name] = len(valid)
        if not valid:
            if name == "train":
                raise UserError("no training image could be read; see the skipped files above")
            continue
        np.save(work / name / "labels.npy", np.asarray([split.labels[s] for s in valid], np.int16))
        (work / name / "files.txt").write_text("".join(split.files[s] + "\n" for s in valid))
        if fmt == "raw":
            np.save(work / name / "slots.npy", np.asarray(valid, np.int64))
            (work / name / "layout.json").unlink()
        else:
            index = []
            for k in keys:
                offset = 0
                for length in state["done"][k]["lengths"]:
                    index.append((k[1], offset, length))
                    offset += length
            np.save(work / name / "index.npy", np.asarray(index, np.int64).reshape(-1, 3))

    n = state["count"]
    mean = (state["sum_image"] / n).astype(np.float32)
    pixels = n * size * size
    rgb_mean = state["rgb_sum"] / pixels
    cov = state["rgb_outer"] / pixels - np.outer(rgb_mean, rgb_mean)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    eigvecs *= np.sign(eigvecs.sum(0, keepdims=True) + 1e-30)  # a fixed sign: components point to +RGB
    np.savez(work / "stats.npz", mean=mean, rgb_mean=rgb_mean, rgb_cov=cov, eigvals=eigvals, eigvecs=eigvecs,
             count=np.int64(n))
    with open(work / "prepare.log", "w") as f:
        f.write(f"alexnet prepare {source_desc(work)}\n")
        for path, why in skipped:
            f.write(f"skipped\t{path}\t{why}\n")
        for path, note in converted:
            f.write(f"converted\t{path}\t{note}\n")
        for w in source.warnings:
            f.write(f"warning\t{w}\n")
    meta = {"format_version": FORMAT_VERSION, "format": fmt, "image_size": size, "quality": quality if fmt == "jpeg" else None,
            "classes": source.classes, "class_names": source.class_names, "splits": counts,
            "source": json.loads((work / "plan.json").read_text())["src"], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(work / "meta.json", meta)  # the store is complete once meta.json exists
    for name in ("plan.json", "progress.pkl"):
        (work / name).unlink(missing_ok=True)
    if dst.exists() and overwrite:
        trash = dst.parent / (dst.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(work, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, dst)
    read_meta(dst)  # sanity: what we wrote reads back
    return PrepareReport(dst, counts, skipped, converted, source.warnings, time.time() - start_time, resumed)


def source_desc(work: Path) -> str:
    plan = json.loads((work / "plan.json").read_text())
    return f"{plan['src']} -> size {plan['size']}, format {plan['format']}"
