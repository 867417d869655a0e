"""Feeding the device: batches of uint8 store images, read by background threads while the device
works on the previous batch (§4.1 did its augmentation "on the CPU while the GPU is training on the
previous batch of images"; here the CPU only gathers uint8 and the augmentation runs on the device).

Which images go in which batch is a pure function of (seed, epoch, step, rank, world) (`train_plan`,
`eval_plan`), so a resumed run, or one split over several processes, reads exactly the same batches.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


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


class BatchLoader:
    """Iterates `plan` (a list of index arrays) as (uint8 (B, S, S, 3) images, int64 (B,) labels,
    indices) with the tensors on `device`. `workers` threads gather whole batches ahead of use, at most
    `prefetch` of them; on CUDA into a ring of pinned buffers, copied without blocking the host."""

    def __init__(self, store, plan: list[np.ndarray], device: torch.device | str = "cpu",
                 workers: int = 4, prefetch: int = 3):
        self.store = store
        self.plan = plan
        self.device = torch.device(device)
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        s = self.store.image_size
        cuda = self.device.type == "cuda"
        slots = self.prefetch + 2
        biggest = max((len(p) for p in self.plan), default=0)
        buffers = [torch.empty((biggest, s, s, 3), dtype=torch.uint8, pin_memory=True) for _ in range(slots)] if cuda else None
        events: list[torch.cuda.Event | None] = [None] * slots

        def gather(k: int) -> np.ndarray | torch.Tensor:
            idx = self.plan[k]
            if not cuda:
                return self.store.get_batch(idx)
            slot = k % slots
            if events[slot] is not None:
                events[slot].synchronize()  # the copy out of this buffer, `slots` batches ago, is done
            out = buffers[slot][: len(idx)]
            self.store.get_batch(idx, out=out.numpy())
            return out

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="alexnet-loader")
        pending: deque[Future] = deque()
        try:
            next_k = 0
            for k in range(len(self.plan)):
                while next_k < len(self.plan) and next_k <= k + self.prefetch:
                    pending.append(pool.submit(gather, next_k))
                    next_k += 1
                batch = pending.popleft().result()
                labels = torch.from_numpy(self.store.labels[self.plan[k]])
                if cuda:
                    images = batch.to(self.device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    events[k % slots] = event
                    labels = labels.to(self.device, non_blocking=True)
                else:
                    images = torch.from_numpy(batch).to(self.device)
                yield images, labels, self.plan[k]
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
