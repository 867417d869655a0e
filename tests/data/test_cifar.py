"""CIFAR-10 batches are data: a batch that names anything but data is refused before it runs."""

import os
import pathlib
import pickle

import numpy as np
import pytest

from alexnet.cli.commands import main
from alexnet.data.cifar import TRAIN_BATCHES, load_cifar10, write_cifar_batches
from alexnet.errors import UserError


class RunsCommand:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TouchesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def small_cifar(root):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    return write_cifar_batches(root, images, labels, [f"c{i}" for i in range(10)], images[:4], labels[:4])


@pytest.mark.parametrize("protocol", [3, 4])
def test_batches_pickled_with_protocol_3_or_4_load(tmp_path, protocol):
    root = small_cifar(tmp_path / "c")
    want = load_cifar10(root)
    for name in TRAIN_BATCHES:
        obj = pickle.loads((root / name).read_bytes())
        (root / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    data = load_cifar10(root)
    np.testing.assert_array_equal(data["train"][0], want["train"][0])
    np.testing.assert_array_equal(data["train"][1], np.arange(20) % 10)
    assert data["classes"][3] == "c3"


@pytest.mark.parametrize("payload", [RunsCommand, TouchesFile])
@pytest.mark.parametrize("where", ["data_batch_3", "batches.meta"])
def test_a_crafted_batch_is_refused_and_never_runs(tmp_path, payload, where):
    root = small_cifar(tmp_path / "c")
    marker = tmp_path / "marker"
    (root / where).write_bytes(pickle.dumps({b"data": payload(marker), b"labels": [], b"label_names": []}))
    with pytest.raises(UserError, match="not a CIFAR-10 batch") as e:
        load_cifar10(root)
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_experiment_relu_vs_tanh_refuses_a_crafted_batch(tmp_path, capsys):
    root = small_cifar(tmp_path / "c")
    marker = tmp_path / "marker"
    (root / "data_batch_1").write_bytes(pickle.dumps(RunsCommand(marker)))
    code = main(["experiment", "relu-vs-tanh", "--cifar", str(root), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "data_batch_1" in err and "refused" in err
    assert not marker.exists()
