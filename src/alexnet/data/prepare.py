"""`alexnet prepare SRC DST`: an ImageNet-style folder (or a plain class-folder tree), written once into a
store training reads fast.

Three steps, each its own function below:
1. scan: find the classes and files (alexnet/data/source.py) and make the plan, whose key is a hash of
   the file list and the settings;
2. convert: decode, resize (§2, alexnet/data/image.py) and write the images chunk by chunk, in worker
   processes (alexnet/data/convert.py), recording finished chunks and the training set's running
   statistics in DST.partial/progress.npz;
3. finalise: write the labels, names, index, statistics, log and, last, meta.json into DST.partial,
   then rename it to DST. Each finalising step rewrites its file whole from the recorded progress, so
   a finalise cut short anywhere is simply run again.

The store (format documented in alexnet/data/store.py) is written into DST.partial and renamed to DST
when complete, so a store at DST is always whole; running the same command again after an interrupt
or a crash continues from where it stopped. DST.lock keeps a second prepare out while one writes. With
--overwrite the old store is moved to DST.old, the new one renamed into place, DST.old deleted; a run
cut off between those renames is repaired by the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from alexnet.data.convert import Chunk, Settings, run_chunks, sync_chunks, worker_pool
from alexnet.data.progress import PROGRESS_FILE, Progress
from alexnet.data.source import Source, name_to_json, scan_source
from alexnet.data.store import FORMAT_VERSION, read_meta
from alexnet.errors import UserError, printable
from alexnet.files import (fsync_dir, fsync_file, remove_leftover_temporaries, save_npy_atomic, save_npz_atomic,
                           store_lock, write_bytes_atomic, write_json_atomic)

CHUNK_SIZE = 256  # most images a worker converts between progress records (~50 MB of raw pixels at 256)
MIN_CHUNK_SIZE = 16
CHUNKS_WANTED = 64  # so that the workers finish together: 1,280 images in 5 chunks of 256 left one of
                    # two workers idle for the last sixth of the run
CHECKPOINT_SECONDS = 10.0  # at most this much converting is redone after a kill


@dataclass
class PrepareReport:
    dst: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str]]  # (relative path, reason)
    converted: list[tuple[str, str]]
    warnings: list[str]
    seconds: float
    resumed_chunks: int = 0


# ---------------------------------------------------------------------------------------------------
# Checks before any work
# ---------------------------------------------------------------------------------------------------


def _check_settings(size: int, fmt: str, quality: int) -> None:
    if fmt not in ("raw", "jpeg"):
        raise UserError(f"unknown store format '{fmt}' (raw or jpeg)")
    if size < 8:
        raise UserError(f"--size {size} is too small")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be within 1..100, got {quality}")


def _sibling(dst: Path, suffix: str) -> Path:
    return dst.parent / (dst.name + suffix)


def _check_paths(src: Path, dst: Path) -> None:
    """Refuse a DST that overlaps SRC: replacing or cleaning it would delete source images."""
    for path in (dst, _sibling(dst, ".partial"), _sibling(dst, ".old")):
        if path == src or src in path.parents:
            raise UserError(f"DST {dst} must not lie inside SRC {src}")
        if path in src.parents:
            raise UserError(f"SRC {src} lies inside {path}, which prepare would replace; choose another DST")


def _recover_overwrite(dst: Path, log) -> None:
    """Repair what an --overwrite cut off between its renames left: DST.old beside the new DST is
    deleted; DST.old without a DST is put back."""
    trash = _sibling(dst, ".old")
    if not trash.exists():
        return
    if not (trash / "meta.json").is_file() and any(trash.iterdir()):
        raise UserError(f"{trash} is in the way and is not a store prepare moved there; move it elsewhere")
    if dst.exists() or not (trash / "meta.json").is_file():
        _delete_store(trash)
        log(f"deleted {trash}, the old store an interrupted --overwrite had replaced")
    else:
        os.replace(trash, dst)
        fsync_dir(dst.parent)
        log(f"put {trash} back at {dst}: an --overwrite was interrupted between its renames")


# ---------------------------------------------------------------------------------------------------
# 1. scan: the plan, and where an earlier run left it
# ---------------------------------------------------------------------------------------------------


def chunk_size(source: Source) -> int:
    """Images per chunk: about CHUNKS_WANTED chunks, MIN_CHUNK_SIZE..CHUNK_SIZE images each. It
    depends on the files alone, not on --workers, so a resumed run may use another worker count."""
    total = sum(len(split.files) for split in source.splits.values())
    return min(CHUNK_SIZE, max(MIN_CHUNK_SIZE, -(-total // CHUNKS_WANTED)))


def plan_key(source: Source, settings: Settings) -> str:
    """A hash of what the store will hold: the format, the settings, every file and label."""
    h = hashlib.sha256()
    s = settings
    h.update(json.dumps([FORMAT_VERSION, s.size, s.fmt, s.quality, s.draft, chunk_size(source),
                         source.classes]).encode())
    for name, split in sorted(source.splits.items()):
        h.update(json.dumps([name, split.files]).encode())  # JSON escapes newlines and odd bytes alike
        h.update(np.asarray(split.labels, np.int64).tobytes())
    return h.hexdigest()


def _create_work(work: Path, source: Source, settings: Settings, key: str, src: Path) -> Progress:
    work.mkdir(parents=True)
    for name, split in source.splits.items():
        (work / name).mkdir()
        if settings.fmt == "raw":
            s = settings.size
            np.lib.format.open_memmap(work / name / "images.npy", mode="w+", dtype=np.uint8,
                                      shape=(len(split.files), s, s, 3))
        else:
            (work / name / "shards").mkdir()
    write_json_atomic(work / "plan.json", {"key": key, "src": str(src), "size": settings.size,
                                           "format": settings.fmt, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Progress(settings.size)


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _resume_or_start(work: Path, source: Source, settings: Settings, key: str, src: Path) -> Progress | None:
    """The progress of an interrupted run of this plan, a fresh partial store, or None when the partial
    store is already finalised and only waits to be renamed. Only a partial store of this user's own
    is resumed: another user's DST.partial in a shared folder could hold links that the writes follow."""
    if os.path.lexists(work) and (work.is_symlink() or os.lstat(work).st_uid != os.geteuid()):
        whose = "a symbolic link" if work.is_symlink() else f"owned by uid {os.lstat(work).st_uid}"
        raise UserError(f"{work} is {whose}, not a partial store of yours: prepare will not write into it; "
                        "delete it or choose another DST")
    if work.exists():
        for folder in {work, *(p.parent for p in work.rglob("*.tmp"))}:  # writes a kill cut short: never
            remove_leftover_temporaries(folder)  # renamed, so never part of the store
        meta, plan = _read_json(work / "meta.json"), _read_json(work / "plan.json")
        if meta.get("plan") == key:
            return None
        if plan.get("key") == key and (work / PROGRESS_FILE).exists():
            return Progress.load(work, settings.size)
        if meta.get("plan") or plan.get("key") not in (None, key):
            raise UserError(f"{work} holds an interrupted prepare of other files or settings; delete it "
                            f"or run the same command as before")
        shutil.rmtree(work)  # cut off before its first record: nothing to keep
    return _create_work(work, source, settings, key, src)


# ---------------------------------------------------------------------------------------------------
# 2. convert
# ---------------------------------------------------------------------------------------------------


def _chunks_to_do(source: Source, state: Progress, src: Path) -> list[Chunk]:
    chunks, n = [], chunk_size(source)
    for name, split in source.splits.items():
        for k, first in enumerate(range(0, len(split.files), n)):
            if (name, k) not in state.done:
                paths = [str(src / p) for p in split.files[first : first + n]]
                chunks.append(Chunk(name, k, first, paths))
    return chunks


def convert(chunks: list[Chunk], state: Progress, settings: Settings, pool, workers: int, bar) -> None:
    """Run the chunks on `pool` (None: in this process), recording each and saving the progress every
    CHECKPOINT_SECONDS and on the way out, whatever ends the run (Ctrl-C, SIGTERM through the CLI, a
    full disk). A save first puts the pixels of the chunks it records on disk (sync_chunks)."""
    work = Path(settings.work)
    last_save, unsynced = time.time(), []
    try:
        for c, result in run_chunks(chunks, settings, pool, workers):
            state.record(result)
            unsynced.append(c)
            bar.update(len(c.paths))
            if time.time() - last_save >= CHECKPOINT_SECONDS:
                _save(state, settings, unsynced)
                last_save = time.time()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as alexnet.cli.guard.Terminated (a subclass): kept
        _save_quietly(state, settings, unsynced)
        raise type(e)(f"prepare interrupted; run the same command again to continue ({work})") from None
    except BrokenProcessPool:
        _save_quietly(state, settings, unsynced)
        raise UserError(f"a worker process died (out of memory?); run the same command again to continue, "
                        f"with fewer --workers ({work})") from None
    except BaseException:
        _save_quietly(state, settings, unsynced)
        raise
    _save(state, settings, unsynced)


def _save(state: Progress, settings: Settings, unsynced: list[Chunk]) -> None:
    sync_chunks(settings, unsynced)
    unsynced.clear()
    state.save(Path(settings.work))


def _save_quietly(state: Progress, settings: Settings, unsynced: list[Chunk]) -> None:
    try:
        _save(state, settings, unsynced)
    except OSError:  # e.g. the disk is still full: the previous save stands
        pass


# ---------------------------------------------------------------------------------------------------
# 3. finalise
# ---------------------------------------------------------------------------------------------------


def _write_split(work: Path, name: str, source: Source, state: Progress, fmt: str) -> int:
    split, records = source.splits[name], state.chunks(name)
    valid = [s for _, rec in records for s in rec["valid"]]
    if not valid:
        if name == "train":
            why = [(split.files[s], w) for _, rec in records for s, w in rec["skipped"]][:1]
            raise UserError("no training image could be read" + "".join(
                f", e.g. {printable(p)}: {w}" for p, w in why) + f"; fix SRC and delete {work}")
        return 0
    folder = work / name
    save_npy_atomic(folder / "labels.npy", np.asarray([split.labels[s] for s in valid], np.int16))
    write_json_atomic(folder / "files.json", [name_to_json(split.files[s]) for s in valid])
    if fmt == "raw":
        fsync_file(folder / "images.npy")
        save_npy_atomic(folder / "slots.npy", np.asarray(valid, np.int64))
    else:
        index = [(k, offset, length) for k, rec in records
                 for offset, length in zip(np.cumsum([0] + rec["lengths"][:-1]).tolist(), rec["lengths"])]
        save_npy_atomic(folder / "index.npy", np.asarray(index, np.int64).reshape(-1, 3))
    return len(valid)


def _write_stats(work: Path, state: Progress, size: int) -> None:
    """§2's mean image and §4.1's RGB covariance with its eigenvectors, from the exact integer sums."""
    n = state.count
    mean = (state.sum_image / n).astype(np.float32)
    pixels = n * size * size
    rgb_mean = state.rgb_sum / pixels
    cov = state.rgb_outer / pixels - np.outer(rgb_mean, rgb_mean)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    eigvecs *= np.sign(eigvecs.sum(0, keepdims=True) + 1e-30)  # a fixed sign: components point to +RGB
    save_npz_atomic(work / "stats.npz", mean=mean, rgb_mean=rgb_mean, rgb_cov=cov, eigvals=eigvals,
                    eigvecs=eigvecs, count=np.int64(n))


def _outcomes(source: Source, state: Progress) -> tuple[list, list]:
    skipped, converted = [], []
    for name, split in source.splits.items():
        for _, rec in state.chunks(name):
            skipped += [(split.files[s], why) for s, why in rec["skipped"]]
            converted += [(split.files[s], note) for s, note in rec["converted"]]
    return skipped, converted


def _write_log(work: Path, plan: dict, skipped, converted, warnings) -> None:
    lines = [f"alexnet prepare {plan['src']} -> size {plan['size']}, format {plan['format']}"]
    lines += [f"skipped\t{printable(p)}\t{why}" for p, why in skipped]
    lines += [f"converted\t{printable(p)}\t{note}" for p, note in converted]
    lines += [f"warning\t{w}" for w in warnings]
    write_bytes_atomic(work / "prepare.log", "".join(line + "\n" for line in lines).encode("utf-8", "replace"))


def finalise(work: Path, source: Source, state: Progress, settings: Settings, key: str) -> dict[str, int]:
    """Write everything but the pixels; meta.json last, which makes the folder a store."""
    counts = {name: _write_split(work, name, source, state, settings.fmt) for name in source.splits}
    _write_stats(work, state, settings.size)
    plan = _read_json(work / "plan.json")
    _write_log(work, plan, *_outcomes(source, state), source.warnings)
    write_json_atomic(work / "meta.json", {
        "format_version": FORMAT_VERSION, "format": settings.fmt, "image_size": settings.size,
        "quality": settings.quality if settings.fmt == "jpeg" else None, "classes": source.classes,
        "class_names": source.class_names, "splits": counts, "source": plan["src"], "created": plan["created"],
        "plan": key})
    return counts


def _delete_store(path: Path) -> None:
    """Delete a store, meta.json last: a deletion cut short still shows whose folder this was."""
    for child in path.iterdir():
        if child.name != "meta.json":
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    (path / "meta.json").unlink(missing_ok=True)
    path.rmdir()


def install(work: Path, dst: Path) -> None:
    """Drop the bookkeeping and rename the finished partial store to DST (moving an old DST aside)."""
    for name in ("plan.json", PROGRESS_FILE):
        (work / name).unlink(missing_ok=True)
    if dst.exists():
        trash = _sibling(dst, ".old")
        os.replace(dst, trash)
        os.replace(work, dst)
        fsync_dir(dst.parent)
        _delete_store(trash)
    else:
        os.replace(work, dst)
        fsync_dir(dst.parent)


def _report_of_finished(work: Path) -> tuple[dict, list, list]:
    """Counts, skipped and converted files of a partial store finalised by an earlier run."""
    counts = _read_json(work / "meta.json")["splits"]
    rows = [line.split("\t") for line in (work / "prepare.log").read_text(errors="replace").splitlines()[1:]]
    return (counts, [(r[1], r[2]) for r in rows if r[0] == "skipped" and len(r) == 3],
            [(r[1], r[2]) for r in rows if r[0] == "converted" and len(r) == 3])


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def prepare(src: str | os.PathLike, dst: str | os.PathLike, size: int = 256, fmt: str = "raw",
            quality: int = 90, workers: int | None = None, val_labels: str | os.PathLike | None = None,
            overwrite: bool = False, draft: bool = True, progress: bool = True, log=print,
            val_fraction: float | None = None, seed: int = 0) -> PrepareReport:
    """Write the store; returns what was written, skipped and converted. See the module docstring.
    `workers` None or 0: all cores. `log` receives the lines worth telling (resume, repairs).
    A plain class-folder tree SRC/<class>/* has `val_fraction` of each class drawn for val by `seed`
    (alexnet.data.source.split_class_tree)."""
    start_time = time.time()
    _check_settings(size, fmt, quality)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_paths(src, dst)
    try:
        if not dst.parent.is_dir():
            dst.parent.mkdir(parents=True)
        with store_lock(dst) as lock:
            if lock.took_over is not None:
                log(f"took over {lock.path}: its owner, pid {lock.took_over.get('pid', '?')}, is gone")
            return _prepare_locked(src, dst, Settings(str(_sibling(dst, ".partial")), size, fmt, quality, draft),
                                   workers, lambda: scan_source(src, val_labels, val_fraction, seed), overwrite,
                                   progress, log, start_time)
    except OSError as e:
        where = f" ({printable(str(e.filename))})" if e.filename else ""
        raise UserError(f"cannot write {dst}: {e.strerror or e}{where}") from None


def _prepare_locked(src: Path, dst: Path, settings: Settings, workers: int | None, scan: Callable[[], Source],
                    overwrite: bool, progress: bool, log, start_time: float) -> PrepareReport:
    _recover_overwrite(dst, log)
    if dst.exists() and not overwrite:
        what = "a store" if (dst / "meta.json").exists() else "something"
        raise UserError(f"{dst} already holds {what}; pass --overwrite to replace it, or choose another DST")
    source = scan()
    work, key = Path(settings.work), plan_key(source, settings)
    state = _resume_or_start(work, source, settings, key, src)
    if state is None:
        log(f"finishing an interrupted prepare: {work} is complete, renaming it to {dst}")
        counts, skipped, converted = _report_of_finished(work)
        install(work, dst)
        return PrepareReport(dst, counts, skipped, converted, source.warnings, time.time() - start_time)
    resumed = len(state.done)
    chunks = _chunks_to_do(source, state, src)
    total = sum(len(s.files) for s in source.splits.values())
    already = total - sum(len(c.paths) for c in chunks)
    if resumed:
        log(f"resuming an interrupted prepare: {resumed} chunk(s), {already} image(s) already done")
    workers = max(1, min(workers if workers and workers > 0 else os.cpu_count() or 1, len(chunks)))
    with worker_pool(workers) as pool, tqdm(total=total, initial=already, unit="img", desc="prepare",
                                            disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar:
        convert(chunks, state, settings, pool, workers, bar)
    counts = finalise(work, source, state, settings, key)
    skipped, converted = _outcomes(source, state)
    install(work, dst)
    read_meta(dst)  # sanity: what we wrote reads back
    return PrepareReport(dst, counts, skipped, converted, source.warnings, time.time() - start_time, resumed)
