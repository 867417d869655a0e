"""Batch plans and the threaded loader; the ImageStore's Python access."""

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from alexnet.data import ImageStore
from alexnet.data.loader import BatchLoader, epoch_order, eval_plan, train_plan
from alexnet.data.prepare import prepare
from alexnet.errors import UserError


@pytest.fixture
def store(tree, tmp_path):
    prepare(tree, tmp_path / "store", size=16, workers=1, progress=False, log=lambda *a: None)
    return ImageStore(tmp_path / "store", "train")


def test_train_plan_visits_each_image_at_most_once_per_epoch():
    plan = train_plan(103, 10, epoch=0, seed=1)
    assert len(plan) == 10 and all(len(b) == 10 for b in plan)
    seen = np.concatenate(plan)
    assert len(np.unique(seen)) == 100  # 3 images of the last incomplete batch are dropped
    assert not np.array_equal(np.concatenate(train_plan(103, 10, epoch=1, seed=1)), seen)
    assert all(np.array_equal(a, b) for a, b in zip(plan, train_plan(103, 10, epoch=0, seed=1)))


def test_distributed_plans_split_each_global_batch():
    full = train_plan(64, 8, epoch=2, seed=3)
    parts = [train_plan(64, 8, epoch=2, seed=3, rank=r, world=4) for r in range(4)]
    for k in range(len(full)):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    with pytest.raises(ValueError, match="does not split"):
        train_plan(64, 10, 0, 0, rank=0, world=4)
    shards = [np.concatenate(eval_plan(11, 2, rank=r, world=3)) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))


def test_epoch_order_is_a_permutation():
    order = epoch_order(50, 4, 7)
    assert sorted(order.tolist()) == list(range(50))


def test_loader_yields_the_planned_images_and_labels(store):
    plan = train_plan(len(store), 4, epoch=0, seed=0)
    batches = list(BatchLoader(store, plan, workers=2, prefetch=2))
    assert len(batches) == len(plan)
    for (imgs, labels, idx), want in zip(batches, plan):
        np.testing.assert_array_equal(idx, want)
        assert imgs.dtype == torch.uint8 and imgs.shape == (4, 16, 16, 3)
        for j, i in enumerate(want):
            img, label = store[int(i)]
            np.testing.assert_array_equal(imgs[j].numpy(), img)
            assert labels[j].item() == label


def test_loader_stops_cleanly_when_abandoned(store):
    before = set(threading.enumerate())
    loader = BatchLoader(store, eval_plan(len(store), 3), workers=2, prefetch=3)
    it = iter(loader)
    next(it)
    started = [t for t in threading.enumerate() if t.name.startswith("alexnet-loader")]
    assert started and all(t.is_alive() for t in started)
    it.close()  # the consumer broke out of its loop: threads must be shut down, nothing raised
    assert set(threading.enumerate()) == before
    assert not any(t.is_alive() for t in started)
    assert len(loader) == 6


def test_store_item_access_and_pickling(store):
    img, label = store[-1]
    np.testing.assert_array_equal(img, store[len(store) - 1][0])
    assert isinstance(label, int)
    with pytest.raises(IndexError):
        store[len(store)]
    batch = store.get_batch([3, 0, 3])
    np.testing.assert_array_equal(batch[0], store[3][0])
    np.testing.assert_array_equal(batch[1], store[0][0])
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[5][0], store[5][0])
    assert "18 images" in repr(store)
    with pytest.raises(UserError, match="no 'test' split"):
        ImageStore(store.root, "test")


class SlowStore:
    """A store whose every batch takes `delay` seconds to gather (a slow decode) and which counts how
    many batches are being gathered at once. Image i is filled with i % 251, label i % 7."""

    image_size = 4

    def __init__(self, n: int, delay: float = 0.05):
        self.labels = np.arange(n, dtype=np.int64) % 7
        self.delay, self.lock, self.now, self.most = delay, threading.Lock(), 0, 0

    def get_batch(self, indices, out=None):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)
        out = np.empty((len(indices), 4, 4, 3), np.uint8) if out is None else out
        for j, i in enumerate(indices):
            out[j] = i % 251
        with self.lock:
            self.now -= 1
        return out


@pytest.mark.parametrize("workers, prefetch", [(6, 1), (3, 5)])
def test_every_loader_thread_has_a_batch_to_gather(workers, prefetch):
    """#26: at most prefetch + 1 batches were gathered at once, so threads beyond that sat idle. Now
    max(prefetch, workers) + 1 are in flight: with a slow decode every thread works at once."""
    store = SlowStore(40 * 2)
    batches = list(BatchLoader(store, eval_plan(80, 2), workers=workers, prefetch=prefetch))
    assert len(batches) == 40
    assert store.most == workers


class FakeCopies:
    """Stands in for a device's stream: `copy` queues the copy of a host buffer and returns a
    placeholder and an event at once; a thread runs the queued copies in order, `lag` seconds each
    (a device busy with earlier steps), reading the buffer only then, as cudaMemcpyAsync does."""

    def __init__(self, lag: float):
        import queue

        self.lag, self.jobs, self.results = lag, queue.Queue(), []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (job := self.jobs.get()) is not None:
            host, slot, event = job
            time.sleep(self.lag)
            slot.append(host.clone())
            event.set()

    def copy(self, host):
        slot, event = [], threading.Event()
        event.synchronize = event.wait  # the loader waits on it as on a torch.cuda.Event
        self.jobs.put((host, slot, event))
        self.results.append(slot)
        return slot, event


def test_a_pinned_buffer_is_refilled_only_after_its_copy_has_run():
    """#26: with the event recorded on another device's idle stream, a buffer was refilled with batch
    k + slots before batch k's asynchronous copy had read it: mixed images, no error. Here the copies
    run late (a fake stream) and every batch that reaches the device is still exactly the planned one."""
    copies = FakeCopies(lag=0.01)

    class Asynchronous(BatchLoader):
        def _asynchronous(self):
            return True

        def _copy(self, host):
            return copies.copy(host)

    store = SlowStore(60, delay=0.0)
    plan = eval_plan(60, 3)
    loader = Asynchronous(store, plan, workers=4, prefetch=1)
    for _ in loader:
        pass
    copies.jobs.put(None)
    copies.thread.join()
    assert len(copies.results) == len(plan)
    for (copied,), idx in zip(copies.results, plan):
        np.testing.assert_array_equal(copied[:, 0, 0, 0].numpy(), idx % 251)
    assert loader.device_waited > 0  # the ring did wait for the late copies


def test_the_ring_waits_for_the_event_of_the_batch_that_last_used_the_buffer():
    from alexnet.data.loader import PinnedRing

    ring = PinnedRing(3, (2, 1, 1, 3), pin=False)
    done = []

    class Event:
        def __init__(self, name):
            self.name = name

        def synchronize(self):
            done.append(self.name)

    assert ring.wait(0) == 0.0 and done == []
    ring.copied(0, Event("copy of batch 0"))
    ring.copied(1, Event("copy of batch 1"))
    ring.wait(4)
    assert done == ["copy of batch 1"]  # buffer 4 % 3 = 1
    assert ring.buffer(4, 1).shape == (1, 1, 1, 3) and ring.buffer(4, 1).data_ptr() == ring.buffers[1].data_ptr()


def test_loader_workers_follow_the_store_and_the_cores():
    from alexnet.data.loader import loader_workers

    assert loader_workers("raw", 0, cores=32) == 2
    assert loader_workers("jpeg", 0, cores=32) == 16 and loader_workers("jpeg", 0, cores=3) == 3
    assert loader_workers("jpeg", 5, cores=32) == 5 and loader_workers("raw", 7) == 7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_loader_batches_on_a_busy_gpu_are_the_planned_ones(device):
    """#26 on the device: on cuda:1 (skipped with fewer than two GPUs) as on cuda:0, with the GPU kept
    busy so that the copies run late, every batch is the planned one; the current device is left as
    it was (no context made on cuda:0 for cuda:1's buffers)."""
    if torch.device(device).index >= torch.cuda.device_count():
        pytest.skip(f"needs {device}")
    current = torch.cuda.current_device()
    store = SlowStore(4096, delay=0.0)
    store.image_size = 4
    plan = eval_plan(4096, 64)
    busy = torch.randn(2048, 2048, device=device)
    seen = []
    for images, labels, idx in BatchLoader(store, plan, device, workers=4, prefetch=1):
        for _ in range(4):
            busy = (busy @ busy).tanh_()  # the device's stream stays behind the host
        assert images.device == torch.device(device) and labels.device == torch.device(device)
        seen.append((images[:, 0, 0, 0].clone(), labels.clone(), idx))
    torch.cuda.synchronize(device)
    for images, labels, idx in seen:
        assert images.cpu().tolist() == (idx % 251).tolist() and labels.cpu().tolist() == (idx % 7).tolist()
    assert torch.cuda.current_device() == current
