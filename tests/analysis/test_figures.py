"""Features, figures, predictions and export of a trained checkpoint."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.analysis.features import extract_features, load_features
from alexnet.analysis.figures import kernel_mosaic
from alexnet.analysis.report import spread_sample, write_figures
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli import main
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.errors import UserError


def test_features_are_fc7_of_the_centre_patch_streamed_to_disk(tiny_run, demo_store, tmp_path):
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    store = ImageStore(demo_store, "val")
    path = extract_features(model, store, tmp_path / "val", torch.device("cpu"), batch_size=7)
    assert path.name == "val.npy" and not list(tmp_path.glob("*.partial"))
    feats, meta = load_features(path)
    assert feats.shape == (100, model.config.fc_width) and meta["split"] == "val" and meta["n"] == 100
    t = BatchTransforms.for_store(store, model.config.input_size)
    with torch.no_grad():
        direct = model.embed(t.test(torch.from_numpy(store.get_batch([0, 57, 99]))).contiguous())
    np.testing.assert_allclose(feats[[0, 57, 99]], direct.numpy(), rtol=1e-5, atol=1e-5)
    assert (feats >= 0).all() and feats.std() > 0
    with pytest.raises(UserError, match="does not exist"):
        load_features(tmp_path / "missing.npy")


def test_kernel_mosaic_separates_the_towers():
    w = torch.randn(96, 3, 11, 11)
    m = kernel_mosaic(w, towers=2, columns=16, zoom=2, gap=2)
    assert m.min() >= 0 and m.max() <= 1
    tile = 22
    # 3 rows of 16 kernels per tower, a wider gap between the towers
    assert m.shape == (2 * 3 * (tile + 2) + 6, 16 * (tile + 2) - 2, 3)
    first = m[:tile, :tile]
    k0 = w[0].permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
    np.testing.assert_allclose(first, (k0 - k0.min()) / (k0.max() - k0.min()), rtol=1e-5, atol=1e-6)
    gap_row = 3 * (tile + 2) + 2  # inside the gap between the towers' blocks
    assert (m[gap_row] == 1).all()


def test_spread_sample_takes_classes_in_turn():
    labels = np.repeat(np.arange(5), 20)
    picked = spread_sample(labels, 5)
    assert sorted(labels[picked]) == [0, 1, 2, 3, 4]
    assert len(set(spread_sample(labels, 12).tolist())) == 12


def _not_blank(path, min_side):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert min(img.shape[:2]) >= min_side
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    return img


@pytest.mark.slow
def test_figures_are_written_and_not_blank(tiny_run, demo_store, tmp_path, capsys):
    paths = write_figures(tiny_run / "best.pt", demo_store, tmp_path / "figs", device="cpu")
    assert set(paths) == {"kernels", "top5", "neighbours", "curves"}
    _not_blank(paths["kernels"], 100)
    _not_blank(paths["top5"], 400)
    _not_blank(paths["neighbours"], 400)
    _not_blank(paths["curves"], 300)
    assert all(p.stat().st_size < 1_000_000 for p in paths.values())
    # the training split's features were streamed, not left behind; no staging folder either
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["curves.png", "kernels.png", "neighbours.png",
                                                                      "top5.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["figs"]
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    extract_features(model, ImageStore(demo_store, "train"), tmp_path / "train.npy", torch.device("cpu"))
    assert main(["figures", str(tiny_run), "--out", str(tmp_path / "cli"), "--quiet", "--device", "cpu",
                 "--train-features", str(tmp_path / "train.npy")]) == 0
    assert "wrote" in capsys.readouterr().out
    # the same neighbours from a feature file as from the streamed features
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / "neighbours.png").convert("RGB")),
                                  np.asarray(Image.open(paths["neighbours"]).convert("RGB")))


def test_streamed_neighbours_are_the_exact_ones(tiny_run, demo_store, tmp_path):
    from alexnet.analysis.report import _nearest_training_images
    from alexnet.checkpoint import checkpoint_config

    payload = load_checkpoint(tiny_run)
    model, config = model_from_checkpoint(payload), checkpoint_config(payload)
    train = ImageStore(demo_store, "train")
    database, _ = load_features(extract_features(model, train, tmp_path / "train", torch.device("cpu"), batch_size=64))
    queries = np.asarray(database[[3, 500, 999]]) + 0.01
    found = _nearest_training_images(model, train, queries, 4, torch.device("cpu"), config, None, False)
    d = ((queries[:, None, :].astype(np.float64) - np.asarray(database, np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, np.argsort(d, axis=1, kind="stable")[:, :4])


def test_a_failed_figures_run_leaves_no_png(tiny_run, demo_store, tmp_path, monkeypatch, capsys):
    import alexnet.analysis.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report, "save_neighbours_figure", broken)  # after kernels.png and top5.png were drawn
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_figures(tiny_run, demo_store, tmp_path / "figs", device="cpu")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    np.save(tmp_path / "short.npy", np.zeros((10, 4), np.float32))
    assert main(["figures", str(tiny_run), "--out", str(tmp_path / "figs"), "--quiet", "--device", "cpu",
                 "--train-features", str(tmp_path / "short.npy")]) == 2
    err = capsys.readouterr().err
    assert "has 10 rows, the store's train split 1000" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["short.npy"]


def test_class_names_are_drawn_as_text(tmp_path):
    """`$` and `_` in a class name are characters, not mathtext (which fails on some of them)."""
    from alexnet.analysis.figures import plot_curves, save_neighbours_figure, save_top5_figure

    names = ["$x^2$ and a_b", "$x^2_$", r"cost $\badmacro$", "plain"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(4), 4)
    save_top5_figure(images, probs, np.arange(4), names, tmp_path / "top5.png")
    save_neighbours_figure(images[:2], [images[1:3], images[2:4]], tmp_path / "nn.png", query_titles=names[:2],
                           neighbour_titles=[names[1:3], names[2:4]])
    history = [{"epoch": 1, "train_loss": 2.0, "train_top1_err": 0.8, "lr": 0.01}]
    plot_curves(history, tmp_path / "curves.png", title="$x^2_$ on my_store")
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("top5.png", "nn.png", "curves.png"))


def test_predict_matches_evaluation_and_reports_bad_files(tiny_run, demo_store, tmp_path, capsys):
    from alexnet.evaluate import predict_probabilities
    from alexnet.predict import predict_files

    store = ImageStore(demo_store, "val")
    Image.fromarray(store[3][0]).save(tmp_path / "a.png")
    big = Image.fromarray(store[40][0]).resize((200, 150))
    big.save(tmp_path / "b.JPEG", quality=95)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    results = predict_files(tiny_run, [str(tmp_path / n) for n in ("a.png", "b.JPEG", "bad.jpg")], views=10,
                            device="cpu")
    assert "error" in results[2] and "top" not in results[2]
    top = results[0]["top"]
    assert len(top) == 5 and [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    probs = predict_probabilities(model, store, torch.device("cpu"), views=10, indices=np.array([3]))[0]
    # the same probabilities as evaluation's (the order of near-equal ones may differ in the last bits)
    for t in top:
        assert t["probability"] == pytest.approx(float(probs[t["label"]]), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose([t["probability"] for t in top], np.sort(probs)[::-1][:5], rtol=1e-4, atol=1e-6)
    assert top[0]["name"] == store.class_names[top[0]["label"]]
    assert main(["predict", str(tiny_run), str(tmp_path / "a.png"), str(tmp_path / "bad.jpg"), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "a.png" in captured.out and "%" in captured.out
    assert "cannot read" in captured.err and "bad.jpg" in captured.err and "Traceback" not in captured.err
    assert main(["predict", str(tiny_run), str(tmp_path / "a.png"), "--json", "--crops", "10", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["probability"] == pytest.approx(top[0]["probability"], rel=1e-5)


@pytest.mark.slow
def test_onnx_export_matches_pytorch(tiny_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import logging

    import onnx
    import onnxruntime as ort

    from alexnet.export import deployable, export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.DEBUG)
    result = export_onnx(tiny_run, tmp_path / "net.onnx")
    assert logging.getLogger("torch.onnx").level == logging.DEBUG  # the exporter was hushed only while it ran
    logging.getLogger("torch.onnx").setLevel(logging.NOTSET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]  # no partial file left
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] < 1e-3 * max(1.0, result["max_abs_logit"])
    wrapped, payload = deployable(tiny_run)
    x = torch.rand(3, 3, 64, 64) * 255
    got = ort.InferenceSession(str(tmp_path / "net.onnx")).run(None, {"image": x.numpy()})[0]
    model = model_from_checkpoint(payload)
    mean = payload["mean"][4:68, 4:68].permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = model(x - mean).numpy()  # the mean subtraction is inside the ONNX graph
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(tmp_path / "net.onnx").metadata_props}
    assert json.loads(meta["class_names"])[0] == "disc"
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "cli.onnx")]) == 0
    assert "largest difference" in capsys.readouterr().out
