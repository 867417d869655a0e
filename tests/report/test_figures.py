"""Features, figures, predictions and export of a trained checkpoint."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.evaluate.features import extract_features, load_features
from alexnet.report.figures import kernel_mosaic
from alexnet.report.paper import spread_sample, write_figures
from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli.commands import main
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
    m = kernel_mosaic(w, towers=2, columns=16, zoom=2, gap=2, scale="each")
    assert m.min() >= 0 and m.max() <= 1
    tile = 22
    # 3 rows of 16 kernels per tower, a wider gap between the towers
    assert m.shape == (2 * 3 * (tile + 2) + 6, 16 * (tile + 2) - 2, 3)
    first = m[:tile, :tile]
    k0 = w[0].permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
    np.testing.assert_allclose(first, (k0 - k0.min()) / (k0.max() - k0.min()), rtol=1e-5, atol=1e-6)
    gap_row = 3 * (tile + 2) + 2  # inside the gap between the towers' blocks
    assert (m[gap_row] == 1).all()


def test_kernels_share_one_colour_scale_by_default():
    """cuda-convnet's default: the layer's lowest weight at 0, its highest at 1, one linear map for all,
    so a kernel with a tenth of the weights stays faint instead of being stretched."""
    w = np.random.default_rng(0).normal(size=(8, 3, 5, 5))
    w[3] *= 0.1
    m = kernel_mosaic(w, towers=2, columns=4, zoom=3, gap=1)
    w64 = w.astype(np.float64)
    expected = ((w64 - w64.min()) / (w64.max() - w64.min())).transpose(0, 2, 3, 1)
    tile = 15
    for j in (0, 3):  # kernel j of tower 1 sits at column j of the first block
        x = j * (tile + 1)
        np.testing.assert_allclose(m[:tile, x : x + tile], expected[j].repeat(3, 0).repeat(3, 1), atol=1e-12)
    np.testing.assert_allclose(m[-tile:, -tile:], expected[7].repeat(3, 0).repeat(3, 1), atol=1e-12)  # tower 2's last
    faint = m[:tile, 3 * (tile + 1) : 3 * (tile + 1) + tile]
    assert np.ptp(faint) < 0.25 * np.ptp(m[:tile, :tile])


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_kernel_figure_labels_each_tower_and_draws_pixels_unresampled():
    from alexnet.report.figures import kernel_blocks, kernel_figure

    w = np.random.default_rng(1).normal(size=(96, 3, 11, 11))
    fig = kernel_figure(w, towers=2, title="conv1")
    texts = _texts(fig)
    assert "tower 1 (GPU 1): 48 kernels" in texts and "tower 2 (GPU 2): 48 kernels" in texts and "conv1" in texts
    label_y = {t.get_text()[:7]: t.get_position()[1] for t in fig.texts}
    assert label_y["tower 1"] > label_y["tower 2"]  # the upper 48 are tower 1's (GPU 1), as in Fig. 3
    images = fig.images  # figimage: drawn at the figure's own pixels, no interpolation
    assert len(images) == 2 and images[0].oy > images[1].oy
    for img, block in zip(images, kernel_blocks(w, 2, zoom=6)):
        np.testing.assert_array_equal(np.asarray(img.get_array()), block)
    tile = np.asarray(images[1].get_array())[:66, :66]  # kernel 48, each weight a 6x6 square
    scaled = (w[48] - w.min()) / (w.max() - w.min())
    np.testing.assert_allclose(tile, scaled.transpose(1, 2, 0).repeat(6, 0).repeat(6, 1), atol=1e-12)
    single = _texts(kernel_figure(w[:24], towers=1))
    assert "24 kernels (one tower)" in single and not any("GPU" in t for t in single)


LONG = "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier"


def _shown(texts: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]  # the lines of a wrapped name joined back


def test_top5_figure_names_in_full_a_probability_axis_and_the_mistakes():
    from alexnet.report.figures import top5_figure

    names = [LONG, "mite", "container ship, containership, container vessel", "cherry", "$x^2$ a_b", "grille"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    probs = np.array([[0.6, 0.1, 0.1, 0.1, 0.05, 0.05],  # true class 0, guessed: right
                      [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],  # true class 2, guessed 0: a mistake
                      [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])  # true class 1, guessed 5, its bar third of five
    labels = np.array([0, 2, 1])
    fig = top5_figure(images, probs, labels, names)
    shown = _shown(_texts(fig))
    assert shown.count(LONG) == 1 + 3  # under image 0, and among the five of every image
    assert "container ship, containership, container vessel" in shown and "$x^2$ a_b" in shown
    assert all(len(line) <= 44 for t in _texts(fig) if LONG.startswith(t.split("\n")[0]) for line in t.split("\n"))
    bar_axes = [ax for ax in fig.axes if ax.get_xlabel() == "probability"]
    assert len(bar_axes) == 3 and all(ax.get_xlim() == (0, 1) for ax in bar_axes)
    title = fig._suptitle.get_text()
    assert title.startswith("Top-5 predictions") and "2 of 3 are top-1 mistakes" in title
    assert shown.count("top-1 guess wrong") == 2  # images 2 and 3
    for ax, p, label in zip(bar_axes, probs, labels):
        bars = sorted(ax.patches, key=lambda b: b.get_y())  # top to bottom: most probable first
        np.testing.assert_allclose([b.get_width() for b in bars], np.sort(p)[::-1][:5])
        red = [i for i, b in enumerate(bars) if b.get_facecolor()[0] > 0.8 and b.get_facecolor()[2] < 0.3]
        assert red == [list(np.argsort(-p, kind="stable")[:5]).index(label)]


def test_neighbours_figure_names_in_full_at_a_legible_size():
    from alexnet.report.figures import neighbours_figure

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    fig = neighbours_figure(images[:1], [images[1:4]], query_titles=[LONG],
                            neighbour_titles=[["Madagascar cat, ring-tailed lemur, Lemur catta", "mite", "cherry"]])
    shown = _shown(_texts(fig))
    assert LONG in shown and "Madagascar cat, ring-tailed lemur, Lemur catta" in shown
    titles = [ax.title for ax in fig.axes]
    assert all(t.get_fontsize() >= 8 for t in titles)


def test_curves_are_titled_on_a_log_error_axis_with_the_lr_drops_marked(tmp_path):
    from alexnet.report.curves import curves_figure, run_title

    lrs = [0.01, 0.01, 0.01, 0.001, 0.001, 0.0001]
    history = [{"epoch": e, "lr": lr, "train_loss": 2 / e, "train_top1_err": 0.9 / e, "val_loss": 2.1 / e,
                "val_top1_err": 0.95 / e, "val_top5_err": 0.5 / e, "time": "2026-11-20T10:00:00"}
               for e, lr in enumerate(lrs, start=1)]
    title = run_title("small", "/data/my_store", history)
    assert title == "small on my_store, 2026-11-20"
    fig = curves_figure(history, title)
    assert fig._suptitle.get_text() == title
    ax_loss, ax_err, ax_lr = fig.axes[:3]
    assert ax_err.get_yscale() == "log" and ax_lr.get_yscale() == "log" and ax_loss.get_yscale() == "linear"
    for ax in (ax_loss, ax_err, ax_lr):  # a red dotted line between the epochs where the lr fell
        assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_gid() == "lr-drop") == [3.5, 5.5]
    assert [t.get_text() for t in ax_lr.texts] == ["÷10", "÷10"]
    low, high = ax_err.get_ylim()
    assert low < 0.95 / 6 and high <= 1.2  # the whole range of the errors, not 0..1 linear
    history[-1]["val_top5_err"] = 0.0  # a zero error still shows: linear near 0, log above
    fig = curves_figure(history, title)
    assert fig.axes[1].get_yscale() == "symlog" and fig.axes[1].get_ylim()[0] == 0
    top5 = [line for line in fig.axes[1].lines if line.get_label() == "validation top-5"][0]
    assert list(top5.get_xdata()) == [1, 2, 3, 4, 5, 6] and top5.get_ydata()[-1] == 0
    assert run_title("tiny", None, []) == "tiny" and run_title("tiny", None, history) == "tiny, 2026-11-20"


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


def test_figures_show_the_nets_mistakes_and_title_the_curves_by_the_run(tiny_run, demo_store, tmp_path, monkeypatch,
                                                                      capsys):
    import alexnet.report.paper as report
    from alexnet.evaluate.error_rates import predict_probabilities

    seen = {}
    real_top5, real_curves = report.save_top5_figure, report.plot_curves

    def top5(images, probs, labels, names, path):
        seen["top5"] = (images, probs, labels)
        return real_top5(images, probs, labels, names, path)

    def curves(history, path, title):
        seen["title"] = title
        return real_curves(history, path, title)

    monkeypatch.setattr(report, "save_top5_figure", top5)
    monkeypatch.setattr(report, "plot_curves", curves)
    write_figures(tiny_run, demo_store, tmp_path / "figs", device="cpu", n_top5=8, progress=True)
    err = capsys.readouterr().err  # each figure said as it starts (seconds each), the passes over images as bars
    said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("figure ")]
    assert [line[:24] for line in said] == ["figure 1/4: kernels.png ", "figure 2/4: top5.png (Fi",
                                            "figure 3/4: neighbours.p", "figure 4/4: curves.png ("]
    assert "train features:" in err and "eval:" in err
    images, probs, labels = seen["top5"]
    val = ImageStore(demo_store, "val")
    every = predict_probabilities(model_from_checkpoint(load_checkpoint(tiny_run)), val, torch.device("cpu"))
    mistakes = int((every.argmax(1) != val.labels).sum())
    assert mistakes >= 4  # two epochs of the tiny net: enough mistakes to show half of the eight
    assert len(labels) == 8 and int((probs.argmax(1) != labels).sum()) == 4
    for image, p, label in zip(images, probs, labels):  # each the net's output for that very image
        i = next(i for i in range(len(val)) if (val[i][0] == image).all())
        assert val.labels[i] == label
        np.testing.assert_allclose(p, every[i], rtol=1e-4, atol=1e-6)
    last = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert seen["title"] == f"tiny on {demo_store.name}, {last['time'][:10]}"


def test_plot_titles_the_curves_by_the_runs_variant_and_date(tiny_run, tmp_path, monkeypatch, capsys):
    import alexnet.report.curves as figures

    titles = []
    real = figures.plot_curves
    monkeypatch.setattr(figures, "plot_curves", lambda h, path, title: titles.append(title) or real(h, path, title))
    assert main(["plot", str(tiny_run), "--out", str(tmp_path / "c.png")]) == 0
    last = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert titles == [f"tiny, {last['time'][:10]}"] and (tmp_path / "c.png").stat().st_size > 1000


def test_streamed_neighbours_are_the_exact_ones(tiny_run, demo_store, tmp_path):
    from alexnet.report.paper import _nearest_training_images
    from alexnet.model.checkpoint import checkpoint_config

    payload = load_checkpoint(tiny_run)
    model, config = model_from_checkpoint(payload), checkpoint_config(payload)
    train = ImageStore(demo_store, "train")
    database, _ = load_features(extract_features(model, train, tmp_path / "train", torch.device("cpu"), batch_size=64))
    queries = np.asarray(database[[3, 500, 999]]) + 0.01
    found = _nearest_training_images(model, train, queries, 4, torch.device("cpu"), config, None, False)
    d = ((queries[:, None, :].astype(np.float64) - np.asarray(database, np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, np.argsort(d, axis=1, kind="stable")[:, :4])


def test_a_failed_figures_run_leaves_no_png(tiny_run, demo_store, tmp_path, monkeypatch, capsys):
    import alexnet.report.paper as report

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
    from alexnet.report.curves import plot_curves
    from alexnet.report.figures import save_neighbours_figure, save_top5_figure

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
    from alexnet.evaluate.error_rates import predict_probabilities
    from alexnet.evaluate.predict import predict_files

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

    from alexnet.evaluate.export import deployable, export_onnx

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
    captured = capsys.readouterr()
    assert "largest difference" in captured.out
    assert captured.err.startswith("exporting ") and "ONNX" in captured.err  # said before the silent half minute
