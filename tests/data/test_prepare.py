"""`alexnet prepare`: stored pixels, statistics, bad input, interrupts, formats."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import alexnet.data.convert as convert_module
import alexnet.data.prepare as prepare_module
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.image import load_image, resized_shape
from alexnet.data.prepare import prepare
from alexnet.errors import UserError
from tests.conftest import save, smooth_image


def reference_store_image(path, size: int) -> np.ndarray:
    """§2 by hand: shorter side to `size` (Lanczos), then the central size x size patch."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    big = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS))
    top, left = (nh - size) // 2, (nw - size) // 2
    return big[top : top + size, left : left + size]


def quiet_prepare(src, dst, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return prepare(src, dst, log=lambda *a: None, **kw)


def interrupt_after(monkeypatch, chunks: int) -> None:
    """Ctrl-C while a serial prepare converts chunk number `chunks` + 1."""
    real, calls = convert_module.process_chunk, []

    def process_chunk(chunk, settings):
        if len(calls) == chunks:
            raise KeyboardInterrupt
        calls.append(chunk)
        return real(chunk, settings)

    monkeypatch.setattr(convert_module, "process_chunk", process_chunk)


def test_stored_pixels_labels_and_classes(tree, tmp_path):
    report = quiet_prepare(tree, tmp_path / "store", size=24)
    assert report.counts == {"train": 18, "val": 6} and not report.skipped
    s = ImageStore(tmp_path / "store", "train")
    assert s.classes == ["n01", "n02", "n03"]
    assert s.class_names == ["first thing", "second, other", "third"]
    assert len(s) == 18
    for i in range(len(s)):
        img, label = s[i]
        assert img.shape == (24, 24, 3) and img.dtype == np.uint8
        rel = s.files[i]
        assert rel.startswith(f"train/{s.classes[label]}/")
        np.testing.assert_array_equal(img, reference_store_image(tree / rel, 24))
    v = ImageStore(tmp_path / "store", "val")
    assert len(v) == 6 and list(v.labels) == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(v[3][0], reference_store_image(tree / v.files[3], 24))


def test_shapes_keep_the_aspect_ratio():
    assert resized_shape(500, 375, 256) == (341, 256)
    assert resized_shape(375, 500, 256) == (256, 341)
    assert resized_shape(100, 100, 256) == (256, 256)


def test_jpeg_draft_decoding_stays_close_to_full_decoding(tmp_path):
    rng = np.random.default_rng(1)
    path = save(smooth_image(rng, 800, 600), tmp_path / "big.JPEG", quality=95)
    fast, _ = load_image(path, 64, draft=True)
    full, _ = load_image(path, 64, draft=False)
    assert np.abs(fast.astype(int) - full).mean() < 2.0
    np.testing.assert_array_equal(full, reference_store_image(path, 64))


def test_mean_and_pca_match_numpy_over_the_stored_pixels(tree, tmp_path):
    quiet_prepare(tree, tmp_path / "store", size=16)
    s = ImageStore(tmp_path / "store", "train")
    pixels = s.get_batch(np.arange(len(s))).astype(np.float64)
    np.testing.assert_allclose(s.mean, pixels.mean(0), rtol=1e-6)
    cov = np.cov(pixels.reshape(-1, 3).T, bias=True)
    eigvals, eigvecs = s.pca
    ref_vals, ref_vecs = np.linalg.eigh(cov)
    np.testing.assert_allclose(eigvals, ref_vals[::-1], rtol=1e-9)
    assert eigvals[0] >= eigvals[1] >= eigvals[2]
    for i in range(3):  # same eigenvector up to sign, one per column
        assert abs(abs(eigvecs[:, i] @ ref_vecs[:, 2 - i]) - 1) < 1e-9
    np.testing.assert_allclose(eigvecs @ np.diag(eigvals) @ eigvecs.T, cov, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.stats["rgb_mean"], pixels.reshape(-1, 3).mean(0), rtol=1e-12)


def test_bad_inputs_are_converted_or_skipped_and_reported(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    good = smooth_image(rng, 50, 40)
    save(good, src / "train/n01/good.JPEG")
    cmyk = save(good.convert("CMYK"), src / "train/n01/cmyk.JPEG")
    grey = save(good.convert("L"), src / "train/n01/grey.JPEG")
    png = save(good, src / "train/n01/png_named.JPEG", "PNG")
    rgba = good.convert("RGBA")
    rgba.putalpha(0)
    save(rgba, src / "train/n01/transparent.png", "PNG")
    full = (src / "train/n01/good.JPEG").read_bytes()
    (src / "train/n01/truncated.JPEG").write_bytes(full[: len(full) // 2])
    (src / "train/n01/corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    (src / "train/n01/empty.JPEG").write_bytes(b"")
    (src / "train/n01/notes.txt").write_text("not an image")
    os.symlink(src / "train/n01/missing.JPEG", src / "train/n01/broken_link.JPEG")
    (src / "train/n02").mkdir()  # empty class folder
    save(smooth_image(rng, 40, 40), src / "train/n03/x.JPEG")
    save(smooth_image(rng, 40, 40), src / "val/n03/y.JPEG")

    report = quiet_prepare(src, tmp_path / "store", size=16)
    skipped = {p.split("/")[-1]: why for p, why in report.skipped}
    assert set(skipped) == {"truncated.JPEG", "corrupt.JPEG", "empty.JPEG", "notes.txt", "broken_link.JPEG"}
    assert "truncated" in skipped["truncated.JPEG"] or "corrupt" in skipped["truncated.JPEG"]
    assert "cannot read" in skipped["broken_link.JPEG"]
    assert "not an image" in skipped["notes.txt"] and "empty" in skipped["empty.JPEG"]
    converted = {p.split("/")[-1]: note for p, note in report.converted}
    assert set(converted) == {"cmyk.JPEG", "grey.JPEG", "png_named.JPEG", "transparent.png"}
    assert "CMYK" in converted["cmyk.JPEG"] and "L converted" in converted["grey.JPEG"]
    assert "PNG data" in converted["png_named.JPEG"]
    assert any("train/n02 is empty" in w for w in report.warnings)

    s = ImageStore(tmp_path / "store", "train")
    assert s.classes == ["n01", "n02", "n03"]  # the empty class keeps its label
    assert len(s) == 6 and sorted(set(s.labels)) == [0, 2]
    by_name = {f.split("/")[-1]: s[i][0] for i, f in enumerate(s.files)}
    g = by_name["grey.JPEG"]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    np.testing.assert_array_equal(by_name["cmyk.JPEG"], reference_store_image(cmyk, 16))
    np.testing.assert_array_equal(by_name["png_named.JPEG"], reference_store_image(png, 16))
    assert (by_name["transparent.png"] == 255).all()  # fully transparent -> white, not black
    np.testing.assert_array_equal(by_name["grey.JPEG"], reference_store_image(grey, 16))
    log = (tmp_path / "store" / "prepare.log").read_text()
    for name in skipped:
        assert f"skipped\ttrain/n01/{name}" in log
    # the mean and PCA cover only the images kept
    pixels = s.get_batch(np.arange(len(s))).astype(np.float64)
    np.testing.assert_allclose(s.mean, pixels.mean(0), rtol=1e-6)


@pytest.mark.parametrize("layout", ["missing", "file", "no-train", "no-classes", "empty-classes"])
def test_wrong_source_gets_one_clear_line(tmp_path, capsys, layout):
    src = tmp_path / "src"
    if layout == "file":
        src.write_text("x")
    elif layout == "no-train":
        (src / "images").mkdir(parents=True)
    elif layout == "no-classes":
        (src / "train").mkdir(parents=True)
    elif layout == "empty-classes":
        (src / "train" / "n01").mkdir(parents=True)
    assert main(["prepare", str(src), str(tmp_path / "dst"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet prepare: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "dst").exists()


def _store_arrays(root):
    s = ImageStore(root, "train")
    v = ImageStore(root, "val")
    return (s.get_batch(np.arange(len(s))), s.labels, v.get_batch(np.arange(len(v))), v.labels,
            s.mean, s.pca[0], s.pca[1], s.files)


def _assert_same_store(a, b):
    for x, y in zip(_store_arrays(a), _store_arrays(b)):
        if isinstance(x, list):
            assert x == y
        else:
            np.testing.assert_array_equal(x, y)


def test_interrupted_prepare_resumes_to_the_same_store(tree, tmp_path, monkeypatch):
    dst = tmp_path / "store"
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare(tree, dst, size=16)
    assert not dst.exists() and (tmp_path / "store.partial").is_dir()
    with pytest.raises(UserError, match="interrupted"):
        ImageStore(dst)
    report = quiet_prepare(tree, dst, size=16)
    assert report.resumed_chunks == 3 and report.counts == {"train": 18, "val": 6}
    assert not (tmp_path / "store.partial").exists()
    quiet_prepare(tree, tmp_path / "fresh", size=16)
    _assert_same_store(dst, tmp_path / "fresh")


def test_killed_prepare_resumes_to_the_same_store(tree, tmp_path, monkeypatch):
    """SIGKILL in the middle of a multi-process prepare, then the same command again."""
    rng = np.random.default_rng(5)
    for i in range(300):
        save(smooth_image(rng, 120, 90), tree / "train" / "n02" / f"extra_{i:03d}.JPEG")
    dst = tmp_path / "store"
    code = (f"import alexnet.data.prepare as p\np.CHUNK_SIZE, p.CHECKPOINT_SECONDS = 4, 0\n"
            f"p.prepare({str(tree)!r}, {str(dst)!r}, size=16, workers=2, progress=False)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    progress = tmp_path / "store.partial" / "progress.npz"
    deadline = time.time() + 60
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if dst.exists():  # finished before the kill: nothing to resume, still a valid store
        pytest.skip("prepare finished before it could be killed")
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    report = quiet_prepare(tree, dst, size=16, workers=2)
    assert report.resumed_chunks > 0
    quiet_prepare(tree, tmp_path / "fresh", size=16, workers=2)
    _assert_same_store(dst, tmp_path / "fresh")


def test_partial_prepare_with_other_settings_is_refused(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare(tree, tmp_path / "store", size=16)
    with pytest.raises(UserError, match="other files or settings"):
        quiet_prepare(tree, tmp_path / "store", size=20)


def test_existing_store_needs_overwrite(tree, tmp_path):
    quiet_prepare(tree, tmp_path / "store", size=16)
    with pytest.raises(UserError, match="--overwrite"):
        quiet_prepare(tree, tmp_path / "store", size=16)
    quiet_prepare(tree, tmp_path / "store", size=20, overwrite=True)
    assert ImageStore(tmp_path / "store").image_size == 20
    with pytest.raises(UserError, match="inside SRC"):
        quiet_prepare(tree, tree / "store", size=16)


def test_parallel_workers_write_the_same_store(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 5)
    quiet_prepare(tree, tmp_path / "one", size=16)
    quiet_prepare(tree, tmp_path / "two", size=16, workers=2)
    _assert_same_store(tmp_path / "one", tmp_path / "two")


def _flat_val(tree):
    for f in sorted((tree / "val").rglob("*.png")):
        f.rename(tree / "val" / f.name)
    for d in list((tree / "val").iterdir()):
        if d.is_dir():
            d.rmdir()
    return sorted(p.name for p in (tree / "val").iterdir())


def test_flat_validation_folder_with_ilsvrc_csv(tree, tmp_path):
    names = _flat_val(tree)  # vn01_0.png vn01_1.png vn02_0.png ...
    rows = ["ImageId,PredictionString"] + [f"{n[:-4]},{n[1:4]} 1 2 3 4 {n[1:4]} 5 6 7 8" for n in names]
    (tree / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    quiet_prepare(tree, tmp_path / "store", size=16)
    v = ImageStore(tmp_path / "store", "val")
    assert list(v.labels) == [0, 0, 1, 1, 2, 2] and v.files[0] == "val/vn01_0.png"


def test_flat_validation_folder_with_label_file(tree, tmp_path):
    names = _flat_val(tree)
    lines = [f"{n} {int(n[3]) - 1 if k % 2 else n[1:4]}" for k, n in enumerate(names)]  # indices and wnids mixed
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    quiet_prepare(tree, tmp_path / "store", size=16, val_labels=tmp_path / "labels.txt")
    assert list(ImageStore(tmp_path / "store", "val").labels) == [0, 0, 1, 1, 2, 2]
    (tmp_path / "labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match="no label for 1 file"):
        quiet_prepare(tree, tmp_path / "store2", size=16, val_labels=tmp_path / "labels.txt")
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(UserError, match="--val-labels"):
        quiet_prepare(tree, tmp_path / "store3", size=16)


def test_jpeg_store_is_close_to_raw_and_has_the_raw_stores_stats(tree, tmp_path, monkeypatch):
    quiet_prepare(tree, tmp_path / "raw", size=32)
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 5)
    quiet_prepare(tree, tmp_path / "jpeg", size=32, fmt="jpeg", quality=95)
    raw, jpg = ImageStore(tmp_path / "raw"), ImageStore(tmp_path / "jpeg")
    assert jpg.format == "jpeg" and len(jpg) == len(raw)
    np.testing.assert_array_equal(jpg.labels, raw.labels)
    a = raw.get_batch(np.arange(len(raw))).astype(int)
    b = jpg.get_batch(np.arange(len(jpg)))
    assert np.abs(a - b).mean() < 4
    np.testing.assert_array_equal(jpg[4][0], b[4])
    # the statistics are of the pixels before encoding: a raw store's of the same files, to the bit
    np.testing.assert_array_equal(jpg.mean, raw.mean)
    np.testing.assert_array_equal(jpg.pca[0], raw.pca[0])
    np.testing.assert_allclose(raw.mean, a.astype(np.float64).mean(0), rtol=1e-6)
    # JPEG's error is about as often up as down: the mean image moves by ~ its per-pixel error / sqrt(N)
    # and each channel's mean over the whole set by a fraction of a level
    shift = jpg.mean - b.astype(np.float64).mean(0)
    assert np.abs(shift).mean() < 2 * np.abs(a - b).mean() / np.sqrt(len(b))
    assert np.abs(shift.mean((0, 1))).max() < 0.5


def test_store_from_another_version_is_refused(tree, tmp_path):
    quiet_prepare(tree, tmp_path / "store", size=16)
    meta_path = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format version 0"):
        ImageStore(tmp_path / "store")
    with pytest.raises(UserError, match="does not exist"):
        ImageStore(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a prepared store"):
        ImageStore(tree)


def test_a_write_cut_short_in_finalise_leaves_no_temporary_in_the_resumed_store(tree, tmp_path, monkeypatch):
    """A kill between a file's exclusive temporary (NAME.XXXXXXXX.tmp, files.create_temp) and its
    rename leaves the temporary in DST.partial; the resumed prepare must not carry it into the store."""
    dst = tmp_path / "store"

    def killed_in_finalise(work, *args):
        (work / "train" / "files.json.k1lled00.tmp").write_text("half")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(prepare_module, "finalise", killed_in_finalise)
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare(tree, dst, size=16, workers=1)
    assert (tmp_path / "store.partial" / "train" / "files.json.k1lled00.tmp").exists()
    quiet_prepare(tree, dst, size=16, workers=1)
    assert not list(dst.rglob("*.tmp"))
    quiet_prepare(tree, tmp_path / "fresh", size=16, workers=1)
    _assert_same_store(dst, tmp_path / "fresh")


# ---------------------------------------------------------------------------------------------------
# A plain class-folder tree (SRC/<class>/*): the validation split drawn by a seed
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def plain_tree(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "pets"
    for cls, n in (("cat", 8), ("dog", 12), ("emu", 5)):
        for i in range(n):
            save(smooth_image(rng, 30 + i, 24), root / cls / f"{cls}{i:02d}.jpg")
    return root


def _split_files(store, split):
    return sorted(ImageStore(store, split).files)


def test_a_plain_class_folder_tree_is_prepared_with_a_seeded_validation_split(plain_tree, tmp_path, capsys):
    assert main(["prepare", str(plain_tree), str(tmp_path / "a"), "--size", "16", "--val-fraction", "0.25",
                 "--quiet"]) == 0
    assert "held out for val (--val-fraction 0.25, --seed 0)" in capsys.readouterr().out
    train, val = ImageStore(tmp_path / "a", "train"), ImageStore(tmp_path / "a", "val")
    assert train.classes == ["cat", "dog", "emu"] and len(train) + len(val) == 25
    held = {c: sum(f.startswith(c + "/") for f in val.files) for c in train.classes}
    assert held == {"cat": 2, "dog": 3, "emu": 1}  # round(n * 0.25) of each class
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 1, 2]
    assert not set(train.files) & set(val.files)
    # the same seed draws the same split; another seed another one; the API takes the same arguments
    prepare(plain_tree, tmp_path / "b", size=16, val_fraction=0.25, progress=False, log=lambda *a: None)
    prepare(plain_tree, tmp_path / "c", size=16, val_fraction=0.25, seed=1, progress=False, log=lambda *a: None)
    assert _split_files(tmp_path / "b", "val") == _split_files(tmp_path / "a", "val")
    assert _split_files(tmp_path / "c", "val") != _split_files(tmp_path / "a", "val")
    # the default holds out a tenth; 0 none (no val split, said)
    prepare(plain_tree, tmp_path / "d", size=16, progress=False, log=lambda *a: None)
    assert len(ImageStore(tmp_path / "d", "val")) == 1 + 1 + 0  # round(0.8), round(1.2), round(0.5)
    report = prepare(plain_tree, tmp_path / "e", size=16, val_fraction=0, progress=False, log=lambda *a: None)
    assert report.counts == {"train": 25} and any("no validation split" in w for w in report.warnings)


def test_val_fraction_belongs_to_plain_trees_and_is_a_fraction(plain_tree, tree, tmp_path):
    with pytest.raises(UserError, match="--val-fraction must be in"):
        prepare(plain_tree, tmp_path / "x", size=16, val_fraction=1.0, progress=False)
    with pytest.raises(UserError, match="splits a plain class-folder tree"):
        prepare(tree, tmp_path / "y", size=16, val_fraction=0.2, progress=False)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"expected SRC/<class>/<images>, or SRC/train"):
        prepare(tmp_path / "flat", tmp_path / "z", size=16, progress=False)
