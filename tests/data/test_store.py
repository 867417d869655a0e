"""A damaged store is refused in one line when it is opened (or, for a corrupt JPEG, when read)."""

import json

import numpy as np
import pytest

from alexnet.data import ImageStore
from alexnet.data.prepare import prepare
from alexnet.errors import UserError


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from tests.conftest import save, smooth_image

    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(["n01", "n02", "n03"]):
        for i in range(4):
            save(smooth_image(rng, 30 + 5 * i, 24), root / "src" / "train" / wnid / f"{i}.JPEG")
    for fmt in ("raw", "jpeg"):
        prepare(root / "src", root / fmt, size=16, fmt=fmt, workers=1, progress=False, log=lambda *a: None)
    return root


def damaged(stores, tmp_path, fmt="raw"):
    import shutil

    shutil.copytree(stores / fmt, tmp_path / "store")
    return tmp_path / "store"


def refused(root, match, split="train"):
    with pytest.raises(UserError, match=match) as e:
        ImageStore(root, split)
    assert "\n" not in str(e.value)


def rewrite_npz(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del arrays[k]
    np.savez(path, **arrays)


def test_an_intact_store_opens(stores):
    s = ImageStore(stores / "jpeg")
    assert len(s) == 12 and s.get_batch(np.arange(12)).shape == (12, 16, 16, 3)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_missing_or_garbage_statistics(stores, tmp_path, fmt):
    root = damaged(stores, tmp_path, fmt)
    (root / "stats.npz").write_bytes(b"not a zip file at all")
    refused(root, "stats.npz")
    (root / "stats.npz").unlink()
    refused(root, "stats.npz")


@pytest.mark.parametrize("key,value", [("mean", np.full((16, 16, 3), np.nan, np.float32)),
                                       ("eigvals", np.array([np.inf, 1.0, 0.5])),
                                       ("eigvecs", None), ("mean", np.zeros((8, 8, 3), np.float32))])
def test_statistics_that_are_not_finite_or_not_the_right_shape(stores, tmp_path, key, value):
    root = damaged(stores, tmp_path)
    rewrite_npz(root / "stats.npz", **{key: value})
    refused(root, key)


def test_meta_without_splits_or_with_a_wrong_type(stores, tmp_path):
    root = damaged(stores, tmp_path)
    meta = json.loads((root / "meta.json").read_text())
    for change, match in (({"splits": None}, "no 'splits'"), ({"image_size": "16"}, "image_size"),
                          ({"splits": {"train": -1}}, "not a count"), ({"format": "png"}, "unknown format")):
        broken = {**meta, **change}
        broken = {k: v for k, v in broken.items() if v is not None}
        (root / "meta.json").write_text(json.dumps(broken))
        refused(root, match)
    (root / "meta.json").write_text("[1, 2")
    refused(root, "meta.json cannot be read")


def test_labels_missing_or_out_of_range(stores, tmp_path):
    root = damaged(stores, tmp_path)
    labels = np.load(root / "train" / "labels.npy")
    np.save(root / "train" / "labels.npy", np.where(np.arange(12) == 5, 3, labels).astype(np.int16))
    refused(root, "outside 0..2")
    np.save(root / "train" / "labels.npy", np.where(np.arange(12) == 5, -1, labels).astype(np.int16))
    refused(root, "outside 0..2")
    np.save(root / "train" / "labels.npy", np.array([object()] * 12))
    refused(root, "labels.npy")
    (root / "train" / "labels.npy").unlink()
    refused(root, "labels.npy")


def test_slots_outside_the_image_file(stores, tmp_path):
    root = damaged(stores, tmp_path)
    slots = np.load(root / "train" / "slots.npy")
    np.save(root / "train" / "slots.npy", np.where(np.arange(12) == 2, -1, slots))
    refused(root, "slots.npy points outside")
    np.save(root / "train" / "slots.npy", np.where(np.arange(12) == 2, 12, slots))
    refused(root, "slots.npy points outside")
    np.save(root / "train" / "slots.npy", slots[:-1])
    refused(root, "slots.npy")


def test_truncated_raw_images(stores, tmp_path):
    root = damaged(stores, tmp_path)
    path = root / "train" / "images.npy"
    path.write_bytes(path.read_bytes()[:-100])
    refused(root, "images.npy")


def test_missing_short_or_corrupt_jpeg_shards(stores, tmp_path):
    root = damaged(stores, tmp_path, "jpeg")
    shard = root / "train" / "shards" / "000000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    refused(root, "shorter than its index")
    shard.unlink()
    refused(root, "000000.bin is missing")
    shard.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    s = ImageStore(root)  # the lengths agree; the bytes are not a JPEG: refused when read
    with pytest.raises(UserError, match="not a readable JPEG") as e:
        s.get_batch([0])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not a readable JPEG"):
        s[3]


def test_names_file_damaged(stores, tmp_path):
    root = damaged(stores, tmp_path)
    (root / "train" / "files.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(UserError, match="2 names for 12 images"):
        ImageStore(root).files
    (root / "train" / "files.json").write_text("[\"a\", 3")
    with pytest.raises(UserError, match="files.json"):
        ImageStore(root).files


def test_a_version_1_store_is_refused_with_advice(stores, tmp_path):
    root = damaged(stores, tmp_path)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    refused(root, "format version 1, this alexnet reads version 2; prepare it again")
