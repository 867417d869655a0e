"""Feeding the device: batches of uint8 store images, read by background threads while the device
works on the previous batch (§4.1 did its augmentation "on the CPU while the GPU is training on the
previous batch of images"; here the CPU only gathers uint8 and the augmentation runs on the device).

Which images go in which batch is a pure function of (seed, epoch, step, rank, world) (`train_plan`,
`eval_plan`), so a resumed run, or one split over several processes, reads exactly the same batches.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from alexnet.machine import usable_cores


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the n training images in `epoch`: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_plan(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This process's indices for each step of an epoch. `batch_size` is the global batch: step k takes
    the k-th `batch_size` images of the epoch's order, and process `rank` takes its 1/world of them.
    The last incomplete batch is dropped, so every step has a full batch on every process."""
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} does not split over {world} processes")
    if n < batch_size:
        raise ValueError(f"the split has {n} images, fewer than one batch of {batch_size}")
    order = epoch_order(n, epoch, seed)
    local = batch_size // world
    return [order[k * batch_size + rank * local : k * batch_size + (rank + 1) * local]
            for k in range(n // batch_size)]


def eval_plan(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Every image once, in store order, process `rank` taking images rank, rank+world, ...; the last
    batch may be short."""
    mine = np.arange(rank, n, world)
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def loader_workers(store_format: str, configured: int = 0, cores: int | None = None) -> int:
    """`data.workers` resolved: the count configured, else 2 threads for a raw store (a memory copy per
    image: two keep up) and one per core, up to 16, for a jpeg store, whose decoding is the work (at
    thousands of images/s on a GPU it needs every core). `cores`: the cores this process may use
    (default: all usable ones; under torchrun its share, `alexnet.runtime.thread_share`)."""
    if configured:
        return configured
    if store_format == "raw":
        return 2
    return max(1, min(16, cores or usable_cores()))


class PinnedRing:
    """`slots` host buffers that batches are gathered into and copied to the device from without
    blocking the host. The copy out of a buffer is queued on the device's stream and runs when the
    device gets to it, so buffer k % slots is handed to batch k only once the copy that batch
    k - slots made from it has completed (`wait`, on the event `copied` recorded after it)."""

    def __init__(self, slots: int, shape: tuple[int, ...], pin: bool):
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(slots)]
        self.events: list[object | None] = [None] * slots

    def wait(self, k: int) -> float:
        """Block until buffer k % slots is free for batch k; returns the seconds waited."""
        event = self.events[k % len(self.buffers)]
        if event is None:
            return 0.0
        start = time.perf_counter()
        event.synchronize()
        return time.perf_counter() - start

    def buffer(self, k: int, rows: int) -> torch.Tensor:
        return self.buffers[k % len(self.buffers)][:rows]

    def copied(self, k: int, event) -> None:
        """Batch k's copy out of its buffer is queued; `event` completes when it has run."""
        self.events[k % len(self.buffers)] = event


class BatchLoader:
    """Iterates `plan` (a list of index arrays) as (uint8 (B, S, S, 3) images, int64 (B,) labels,
    indices) with the tensors on `device`. `workers` threads gather whole batches ahead of use: the
    `max(prefetch, workers)` batches after the one awaited are in flight, so every thread has a batch
    to gather. On CUDA they gather into a `PinnedRing` and the batches are copied without blocking
    the host, on `device`'s own stream (whatever the current device is).

    `waited`: seconds the consumer waited for batches the threads had not finished (the loader not
    keeping up); `device_waited`: seconds it waited for the device to finish copying out of a buffer
    before that buffer could be refilled (the device, not the loader, being behind)."""

    def __init__(self, store, plan: list[np.ndarray], device: torch.device | str = "cpu",
                 workers: int = 4, prefetch: int = 3):
        self.store = store
        self.plan = plan
        self.device = torch.device(device)
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self.ahead = max(self.prefetch, self.workers)
        self.waited = 0.0
        self.device_waited = 0.0

    def __len__(self) -> int:
        return len(self.plan)

    def _asynchronous(self) -> bool:
        """Whether batches go through a `PinnedRing` and an asynchronous copy (`_copy`)."""
        return self.device.type == "cuda"

    def _ring(self) -> PinnedRing:
        s = self.store.image_size
        biggest = max((len(p) for p in self.plan), default=0)
        # ahead + 1 batches in flight, one being copied and one more: batch k + ahead takes the
        # buffer of batch k - 2, whose copy was queued two batches ago
        slots = self.ahead + 2
        if self.device.type != "cuda":
            return PinnedRing(slots, (biggest, s, s, 3), pin=False)
        with torch.cuda.device(self.device):  # pinned memory in this device's context, not cuda:0's
            return PinnedRing(slots, (biggest, s, s, 3), pin=True)

    def _copy(self, host: torch.Tensor) -> tuple[torch.Tensor, object]:
        """The batch on the device, copied without blocking, and an event recorded after the copy on
        the stream it is queued on: `device`'s current stream, not the current device's (with
        --device cuda:1 an event on cuda:0's idle stream would complete at once, and the buffer
        would be refilled before the copy read it)."""
        with torch.cuda.device(self.device):
            images = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        return images, event

    def _gather(self, k: int, ring: PinnedRing | None) -> np.ndarray | torch.Tensor:
        idx = self.plan[k]
        if ring is None:
            return self.store.get_batch(idx)
        out = ring.buffer(k, len(idx))
        self.store.get_batch(idx, out=out.numpy())
        return out

    def __iter__(self):
        ring = self._ring() if self._asynchronous() else None
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="alexnet-loader")
        pending: deque[Future] = deque()
        try:
            next_k = 0
            for k in range(len(self.plan)):
                while next_k < len(self.plan) and next_k <= k + self.ahead:
                    if ring is not None:
                        self.device_waited += ring.wait(next_k)
                    pending.append(pool.submit(self._gather, next_k, ring))
                    next_k += 1
                start = time.perf_counter()
                batch = pending.popleft().result()
                self.waited += time.perf_counter() - start
                labels = torch.from_numpy(self.store.labels[self.plan[k]])
                if ring is not None:
                    images, event = self._copy(batch)
                    ring.copied(k, event)
                    labels = labels.to(self.device, non_blocking=True)
                else:
                    images = torch.from_numpy(batch).to(self.device)
                yield images, labels, self.plan[k]
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
