"""Batch plans and the threaded loader; the ImageStore's Python access."""

import pickle
import threading

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
