import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from alexnet.cli.commands import main  # noqa: E402
from alexnet.data.cifar import load_cifar10  # noqa: E402
from alexnet.data.digits import (load_digit_arrays, make_digits_cifar, make_digits_tree,  # noqa: E402
                                 stratified_split, wnid)
from alexnet.errors import UserError  # noqa: E402


def bilinear_float64(src: np.ndarray, side: int) -> np.ndarray:
    """Centre-aligned bilinear upscaling of an 8x8 image, edges clamped (what PIL's BILINEAR does when
    enlarging), in float64."""
    c = np.clip((np.arange(side) + 0.5) * src.shape[0] / side - 0.5, 0, src.shape[0] - 1)
    i0 = np.floor(c).astype(int)
    i1 = np.minimum(i0 + 1, src.shape[0] - 1)
    w = c - i0
    s = src.astype(np.float64)
    rows = s[i0] * (1 - w)[:, None] + s[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None] + rows[:, i1] * w[None]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_digits_tree(tmp_path_factory.mktemp("digits") / "src", seed=3)


def test_arrays_are_load_digits_scaled_to_bytes(digits):
    images, labels = load_digit_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    np.testing.assert_allclose(images, digits[0] * 255 / 16, atol=0.5)
    assert np.array_equal(labels, digits[1])


def test_split_is_stratified_disjoint_and_fixed_by_the_seed(digits):
    labels = digits[1]
    train, val = stratified_split(labels, 0.2, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    for c in range(10):
        n = (labels == c).sum()
        assert (labels[val] == c).sum() == round(0.2 * n)
    again = stratified_split(labels, 0.2, seed=1)
    other = stratified_split(labels, 0.2, seed=2)
    assert np.array_equal(val, again[1]) and not np.array_equal(val, other[1])


def test_tree_holds_every_digit_once_in_its_class_folder(tree, digits):
    labels = digits[1]
    _, val = stratified_split(labels, 0.2, seed=3)
    seen = {}
    for split in ("train", "val"):
        for path in (tree / split).glob("*/*.JPEG"):
            i = int(path.stem.split("_")[1])
            assert path.parent.name == wnid(labels[i])
            seen[i] = split
    assert sorted(seen) == list(range(len(labels)))
    assert sorted(i for i, s in seen.items() if s == "val") == list(val)
    mapping = (tree / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in mapping] == [wnid(c) for c in range(10)]


def test_jpegs_are_the_source_digits_upscaled(tree, digits):
    """Each JPEG is its load_digits row enlarged (within JPEG's error), grey in RGB, of mixed sizes,
    and nearer to its own row than to any other digit's."""
    images = digits[0] * 255 / 16
    paths = sorted(tree.glob("*/*/*.JPEG"))[::60]
    sides = set()
    for path in paths:
        i = int(path.stem.split("_")[1])
        rgb = np.asarray(Image.open(path)).astype(np.float64)
        assert rgb.ndim == 3 and rgb.shape[0] == rgb.shape[1] and 40 <= rgb.shape[0] <= 120
        assert np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() <= 6  # grey
        sides.add(rgb.shape[0])
        err = np.abs(rgb[..., 1] - bilinear_float64(images[i], rgb.shape[0])).mean()
        assert err < 3.0, (path, err)
        small = np.asarray(Image.fromarray(rgb[..., 1].astype(np.uint8)).resize((8, 8), Image.BOX), np.float64)
        assert np.abs(images - small).mean(axis=(1, 2)).argmin() == i
    assert len(sides) > 5


def test_same_seed_same_files(tree, tmp_path):
    again = make_digits_tree(tmp_path / "again", seed=3)
    for path in sorted(tree.glob("val/*/*.JPEG"))[:20]:
        assert (again / path.relative_to(tree)).read_bytes() == path.read_bytes()


def test_cifar_batches_hold_the_same_split(tmp_path, digits):
    images, labels = digits[0] * 255 / 16, digits[1]
    train, val = stratified_split(labels, 0.2, seed=3)
    data = load_cifar10(make_digits_cifar(tmp_path / "cifar", seed=3))
    x, y = data["train"]
    assert x.shape == (len(train), 32, 32, 3) and np.array_equal(y, labels[train])
    assert np.array_equal(data["test"][1], labels[val]) and data["classes"] == [str(c) for c in range(10)]
    for k in range(0, len(train), 97):
        # the 8x8 source rounded to bytes (0.5), the output too (0.5), and PIL's fixed-point weights
        assert np.abs(x[k, ..., 0] - bilinear_float64(images[train[k]], 32)).max() <= 1.5


def test_cli_writes_digits(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--digits", "--seed", "3"]) == 0
    assert "1,797" in capsys.readouterr().out
    assert len(list((tmp_path / "d").glob("*/*/*.JPEG"))) == 1797


def test_missing_scikit_learn_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    with pytest.raises(UserError, match="scikit-learn"):
        load_digit_arrays()
    assert main(["demo-data", str(tmp_path / "d"), "--digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scikit-learn" in err[0]
    assert not Path(tmp_path / "d" / "train").exists()
