"""The convert step of `alexnet prepare`: chunks of source files decoded, resized and written into the
partial store, in this process or in worker processes.

Workers die with the process that started them: they ask Linux for SIGKILL when their parent dies
(prctl PR_SET_PDEATHSIG), and a watchdog thread exits them if their parent pid changes (other
systems, or a parent that died before the request). They ignore SIGINT and SIGTERM: the parent
handles both, saves its progress and shuts the pool down.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

import numpy as np

from alexnet.data.image import BadImage, encode_jpeg, load_image
from alexnet.files import create_temp, fsync_dir, fsync_file, new_file_mode

PR_SET_PDEATHSIG = 1


@dataclass
class Chunk:
    split: str
    index: int
    start: int  # first slot
    paths: list[str]  # absolute paths


@dataclass
class Settings:
    work: str  # the partial store folder
    size: int
    fmt: str  # "raw" or "jpeg"
    quality: int
    draft: bool


PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # the distinct entries of the RGB outer product


def rgb_second_moments(pixels: np.ndarray) -> np.ndarray:
    """(3, 3) int64: the sum over the image's pixels of p p^T, exact. Each product of two uint8 values
    fits a uint16 and a 256x256 image's sum of them a uint32 (65,536 x 65,025 < 2^32); larger images
    are summed in blocks of 2^16 pixels. From contiguous uint8 planes: 3x faster than float64 BLAS
    (exact too, but it widens every value to 8 bytes first), 1.5x faster than from uint16 planes."""
    planes = np.ascontiguousarray(pixels.reshape(-1, 3).T)
    out = np.zeros((3, 3), np.int64)
    for first in range(0, planes.shape[1], 1 << 16):
        block = planes[:, first : first + (1 << 16)]
        for i, j in PAIRS:
            out[i, j] += int(np.multiply(block[i], block[j], dtype=np.uint16).sum(dtype=np.uint32))
    out[1, 0], out[2, 0], out[2, 1] = out[0, 1], out[0, 2], out[1, 2]
    return out


class ChunkSums:
    """A chunk's training-set statistics as exact integer sums, kept in the worker and merged by the
    parent (integer sums: the order of merging cannot change the result). Images are added into a
    uint16 sum (257 images of 255 fit; half the memory traffic of uint32), folded into the int64 total
    every FOLD images."""

    FOLD = 257

    def __init__(self, size: int):
        self.count = 0
        self._recent = np.zeros((size, size, 3), np.uint16)
        self._total = np.zeros((size, size, 3), np.int64)
        self.rgb_outer = np.zeros((3, 3), np.int64)

    def add(self, pixels: np.ndarray) -> None:
        np.add(self._recent, pixels, out=self._recent)
        self.count += 1
        if self.count % self.FOLD == 0:
            self._fold()
        self.rgb_outer += rgb_second_moments(pixels)

    def _fold(self) -> None:
        self._total += self._recent
        self._recent[...] = 0

    @property
    def sum_image(self) -> np.ndarray:
        """(S, S, 3) int64: the sum of the images added."""
        if self.count % self.FOLD:
            self._fold()
        return self._total

    def rgb_sum(self) -> np.ndarray:
        return self.sum_image.sum((0, 1))


def npy_header_bytes(path: Path) -> int:
    """Where the data of a .npy file starts."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        read(f)
        return f.tell()


def _write_shard(path: Path, blobs: list[bytes]) -> None:
    """Written whole under a temporary name and renamed; fsync'ed later by `sync_chunks`, before the
    progress record that lists it (a shard lost in a crash belongs to a chunk that is done again)."""
    fd, tmp = create_temp(path)  # a new name, never one planted beforehand (alexnet.files)
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(blobs)
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shard_path(work: str | os.PathLike, split: str, index: int) -> Path:
    return Path(work) / split / "shards" / f"{index:06d}.bin"


def sync_chunks(s: Settings, chunks: list[Chunk]) -> None:
    """Put the written pixels of `chunks` on disk, before a progress record lists them as done. One
    fdatasync of each split's image file (raw), or of each shard and its folder (jpeg), in the parent
    every few seconds instead of one per chunk in the workers (15 ms each, in the workers' time)."""
    if s.fmt == "raw":
        for split in sorted({c.split for c in chunks}):
            fd = os.open(Path(s.work) / split / "images.npy", os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return
    for c in chunks:
        fsync_file(shard_path(s.work, c.split, c.index))
    for split in sorted({c.split for c in chunks}):
        fsync_dir(Path(s.work) / split / "shards")


def process_chunk(chunk: Chunk, s: Settings) -> dict:
    """Decode, resize and write one chunk; return what the parent records: the slots written, skipped
    and converted, the JPEG lengths, and for the training split the chunk's statistics."""
    out = Path(s.work) / chunk.split
    stats = chunk.split == "train"
    valid, skipped, converted, blobs = [], [], [], []
    sums = ChunkSums(s.size)
    fd = os.open(out / "images.npy", os.O_WRONLY) if s.fmt == "raw" else None
    try:
        offset = npy_header_bytes(out / "images.npy") if fd is not None else 0
        for i, path in enumerate(chunk.paths):
            slot = chunk.start + i
            try:
                pixels, note = load_image(path, s.size, s.draft)
            except BadImage as e:
                skipped.append((slot, str(e)))
                continue
            if note:
                converted.append((slot, note))
            # A jpeg store's statistics are of the pixels before encoding, the same as a raw store's of
            # the same files: decoding every image again for them cost 8% of prepare, and at q90 the
            # decoded pixels' mean image differs by 0.33 levels on average, the RGB eigenvalues by
            # 0.5-3.6% (1,280 photo-like images, bench/docs/prepare.md "prepare").
            if fd is not None:
                os.pwrite(fd, pixels.data, offset + slot * pixels.nbytes)
            else:
                blobs.append(encode_jpeg(pixels, s.quality))
            valid.append(slot)
            if stats:
                sums.add(pixels)
    finally:
        if fd is not None:
            os.close(fd)
    if s.fmt == "jpeg":
        _write_shard(shard_path(s.work, chunk.split, chunk.index), blobs)
    return {"split": chunk.split, "index": chunk.index, "valid": valid, "skipped": skipped,
            "converted": converted, "lengths": [len(b) for b in blobs], "count": sums.count,
            "sum_image": sums.sum_image.astype(np.uint32),  # half the bytes through the pipe; a chunk fits
            "rgb_sum": sums.rgb_sum(), "rgb_outer": sums.rgb_outer}


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def init_worker(parent: int) -> None:
    """A worker's first act: die with the parent, and leave SIGINT/SIGTERM to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    if os.getppid() != parent:  # the parent died before the request above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="alexnet-parent-watch").start()


def start_pool(workers: int) -> ProcessPoolExecutor | None:
    """`workers` processes, started now; None for one (run_chunks then converts in this process).
    Forked when this process runs no other Python thread (on Linux): a fork starts in milliseconds, a
    spawned worker pays an interpreter and its imports first (0.3-0.9 s each, the whole run of a few
    hundred images). Spawned otherwise. The workers only decode, resize and write files."""
    if workers <= 1:
        return None
    fork = sys.platform == "linux" and threading.active_count() == 1
    sys.stdout.flush()  # a forked worker would write what is still buffered again when it exits
    sys.stderr.flush()
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork" if fork else "spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    pool.submit(os.getpid).result()  # forks every worker now, before the caller starts a thread
    return pool


def run_chunks(chunks: list[Chunk], s: Settings, pool: ProcessPoolExecutor | None,
               workers: int = 1) -> Iterator[tuple[Chunk, dict]]:
    """(chunk, result) as chunks finish: in this process, or on `pool` of `workers` processes with two
    chunks per worker queued. Leaving the loop early (an interrupt) cancels what is queued."""
    if pool is None:
        for c in chunks:
            yield c, process_chunk(c, s)
        return
    pending: dict[Future, Chunk] = {}
    try:
        queue = list(reversed(chunks))
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                c = queue.pop()
                pending[pool.submit(process_chunk, c, s)] = c
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        for fut in pending:
            fut.cancel()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """start_pool's pool, shut down on the way out: waiting for the workers after a whole run, at once
    (queued chunks cancelled) after an error or an interrupt."""
    pool = start_pool(workers)
    finished = False
    try:
        yield pool
        finished = True
    finally:
        if pool is not None:
            pool.shutdown(wait=finished, cancel_futures=True)
