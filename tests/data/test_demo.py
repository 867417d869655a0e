import numpy as np
from PIL import Image

from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.demo_images import CLASSES, make_demo_data, wnid


def test_demo_tree_is_imagenet_shaped_with_mixed_sizes(tmp_path):
    root = make_demo_data(tmp_path / "demo", classes=10, train_per_class=6, val_per_class=2, seed=3)
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert classes == [wnid(k) for k in range(10)]
    assert sorted(p.name for p in (root / "val").iterdir()) == classes
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 60
    sizes = {Image.open(f).size for f in files}
    ratios = {round(w / h, 1) for w, h in sizes}
    assert len(sizes) > 30 and min(ratios) < 0.8 and max(ratios) > 1.3
    formats = {(Image.open(f).format, Image.open(f).mode) for f in files}
    assert {("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"), ("JPEG", "RGB")} <= formats
    names = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert names[0] == f"{wnid(0)} {CLASSES[0]}"


def test_demo_data_is_deterministic(tmp_path):
    a = make_demo_data(tmp_path / "a", classes=2, train_per_class=3, val_per_class=1, seed=5)
    b = make_demo_data(tmp_path / "b", classes=2, train_per_class=3, val_per_class=1, seed=5)
    for f in sorted(a.rglob("*.JPEG")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()


def test_demo_data_prepares_into_a_store(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "demo"), "--classes", "4", "--train-per-class", "5",
                 "--val-per-class", "2"]) == 0
    assert main(["prepare", str(tmp_path / "demo"), str(tmp_path / "store"), "--size", "32", "--quiet",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "20 train, 8 val" in out and "CMYK converted to RGB" in out
    s = ImageStore(tmp_path / "store")
    assert s.class_names[:2] == ["disc", "square"] and len(s) == 20
    assert np.isfinite(s.pca[0]).all() and s.pca[0][0] > 0


def test_sixteen_distinct_classes_then_repeats_under_new_names():
    from alexnet.data.demo_images import class_name, draw_example

    drawn = [np.asarray(draw_example(k, np.random.default_rng(0))) for k in range(len(CLASSES) + 1)]
    assert len(CLASSES) == 16 and len(set(CLASSES)) == 16
    for k in range(1, len(CLASSES)):  # the same random draws, another class: another picture
        assert not np.array_equal(drawn[k], drawn[0])
    np.testing.assert_array_equal(drawn[16], drawn[0])  # class 16 draws as class 0 ...
    assert class_name(16) == "disc 2" and class_name(15) == CLASSES[15]  # ... under its own name


def test_hard_demo_data_is_deterministic_and_shows_progress(tmp_path, capsys):
    a = make_demo_data(tmp_path / "a", classes=3, train_per_class=3, val_per_class=1, seed=5, hard=True,
                       progress=True)
    assert "demo images" in capsys.readouterr().err  # the tqdm bar
    b = make_demo_data(tmp_path / "b", classes=3, train_per_class=3, val_per_class=1, seed=5, hard=True)
    easy = make_demo_data(tmp_path / "e", classes=3, train_per_class=3, val_per_class=1, seed=5)
    files = sorted(a.rglob("*.JPEG"))
    assert len(files) == 12
    for f in files:
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
    assert any(f.read_bytes() != (easy / f.relative_to(a)).read_bytes() for f in files)
    assert main(["demo-data", str(tmp_path / "c"), "--hard", "--classes", "2", "--train-per-class", "1",
                 "--val-per-class", "0", "--quiet"]) == 0
    assert len(list((tmp_path / "c").rglob("*.JPEG"))) == 2


def test_demo_cifar_refuses_more_classes_than_cifar_holds(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "c"), "--cifar", "--classes", "11", "--quiet"]) == 2
    assert "at most 10" in capsys.readouterr().err and not (tmp_path / "c").exists()
