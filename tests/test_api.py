"""The front door (`import alexnet`): load, transforms, predict, extract, rdm, evaluate, fine-tuning on a
class-folder tree, ONNX export and configure, against the commands and independent computations."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.data.image import load_image, resize_and_center_crop
from alexnet.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def net(tiny_run):
    return alexnet.load(tiny_run)


@pytest.fixture
def photos(demo_store, tmp_path):
    """Five val images of the demo store as files of other sizes and shapes (non-square: §2's resize and
    centre crop have work to do), in a folder with a subfolder."""
    store = ImageStore(demo_store, "val")
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    sizes = [(90, 72), (72, 120), (100, 100), (150, 80), (64, 64)]
    for k, (i, size) in enumerate(zip((0, 13, 27, 41, 88), sizes)):
        img = Image.fromarray(store[i][0]).resize(size, Image.Resampling.BICUBIC)
        img.save(root / ("sub" if k == 3 else "") / f"p{k}.png")
    return root


def files_of(folder):
    return sorted(str(p) for p in folder.rglob("*.png"))


def test_load_gives_the_net_with_what_its_inputs_need(net, tiny_run):
    payload = load_checkpoint(tiny_run)
    assert not net.training and net.fc8.weight.device.type == "cpu"
    assert torch.equal(net.input_mean, payload["mean"]) and net.image_size == 72
    assert net.classes == payload["classes"] and net.class_names[0] == "disc"
    assert net.checkpoint == payload["path"] and net.variant == "tiny"
    assert alexnet.list_models() == ["paper", "one-tower", "six-conv", "small", "tiny"]
    fresh = alexnet.create_model("tiny", num_classes=3)
    assert fresh.config.num_classes == 3 and fresh.input_mean is None and fresh.variant == "tiny"


def test_bad_input_is_one_line_naming_what_and_why(net, tmp_path):
    with pytest.raises(alexnet.UserError, match="unknown variant 'vgg' \\(known: paper, one-tower"):
        alexnet.create_model("vgg")
    with pytest.raises(alexnet.UserError, match="'num_class' is not a model setting"):
        alexnet.create_model("tiny", num_class=3)
    with pytest.raises(alexnet.UserError, match="missing.pt does not exist"):
        alexnet.load(tmp_path / "missing.pt")
    with pytest.raises(alexnet.UserError, match="has no mean image"):
        alexnet.create_model("tiny").transforms()
    with pytest.raises(alexnet.UserError, match="nothing.png: cannot read the file"):
        net.transforms()(tmp_path / "nothing.png")
    with pytest.raises(alexnet.UserError, match="uint8"):
        net.transforms()(np.zeros((10, 10, 3), np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(alexnet.UserError, match="the folder holds no image files"):
        alexnet.extract(net, tmp_path / "empty", ["fc7"])


def test_transforms_are_section_2_and_predicts_preprocessing(net, photos):
    """Shorter side to S (Lanczos), centre S x S, centre patch minus the mean image: by hand, and the
    same bits `alexnet predict` feeds the net (its BatchTransforms of the file's store pixels)."""
    path = photos / "p1.png"  # 72 x 120: tall
    x = net.transforms()(path)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and x.is_contiguous()
    img = Image.open(path).convert("RGB").resize((72, 120), Image.Resampling.LANCZOS)  # already shorter side 72
    square = np.asarray(img)[24:96].astype(np.float32)  # the central 72 x 72
    want = torch.from_numpy(square[4:68, 4:68] - net.input_mean[4:68, 4:68].numpy()).permute(2, 0, 1)
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    cli = BatchTransforms(load_checkpoint(net.checkpoint)["mean"], np.ones(3), np.eye(3), 64)
    assert torch.equal(x, cli.test(torch.from_numpy(np.stack([load_image(path, 72)[0]])))[0])
    # a PIL image and an array of it are the same image
    assert torch.equal(net.transforms()(Image.open(path)), x)
    assert torch.equal(net.transforms()(np.asarray(Image.open(path).convert("RGB"))), x)
    ten = net.transforms(views=10)(path)
    assert ten.shape == (10, 3, 64, 64) and torch.equal(ten[4], x)  # the centre patch is the fifth
    assert torch.equal(ten[9], x.flip(2))  # and its reflection the tenth
    wide = Image.fromarray(np.asarray(Image.open(path).convert("RGB")).transpose(1, 0, 2))  # 120 x 72: wide
    assert torch.equal(net.transforms()(wide)[:, :, :], net.transforms()(np.asarray(
        resize_and_center_crop(wide, 72))))


def test_predict_extract_and_the_net_on_its_transforms_agree(net, photos, tiny_run, capsys):
    files = files_of(photos)
    x = torch.stack([net.transforms()(f) for f in files])
    with torch.no_grad():
        probs = net(x).softmax(1)
        fc7 = net.features(x, "fc7")["fc7"]
    results = alexnet.predict(net, photos, top=3)
    assert [r["file"] for r in results] == files  # a folder: its image files in name order
    for r, p in zip(results, probs):
        assert [t["label"] for t in r["top"]] == p.topk(3).indices.tolist()
        np.testing.assert_allclose([t["probability"] for t in r["top"]], p.topk(3).values.numpy(), rtol=1e-5, atol=1e-6)
    assert main(["predict", str(tiny_run), str(photos), "--json", "--device", "cpu", "--top", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)
    for r, c in zip(results, cli):
        assert r["file"] == c["file"] and [t["label"] for t in r["top"]] == [t["label"] for t in c["top"]]
        np.testing.assert_allclose([t["probability"] for t in r["top"]], [t["probability"] for t in c["top"]],
                                   rtol=1e-5, atol=1e-6)
    # extract feeds the net the same bits: the same batch gives the same numbers, to the bit
    arrays = alexnet.extract(net, photos, ["fc7", "fc8"], batch_size=5)
    assert arrays["fc7"].shape == (5, 64) and arrays["fc7"].dtype == np.float32
    np.testing.assert_array_equal(arrays["fc7"], fc7.numpy())
    np.testing.assert_array_equal(torch.from_numpy(arrays["fc8"]).softmax(1).numpy(), probs.numpy())
    # other batches: float32 sums in another order
    np.testing.assert_allclose(alexnet.extract(net, photos, "fc7", batch_size=2)["fc7"], fc7.numpy(), rtol=1e-5,
                               atol=1e-5)
    # in-memory images: the same answers, each named by its place
    pil = [Image.open(f) for f in files]
    assert [r["image"] for r in alexnet.predict(net, pil)] == list(range(5))
    np.testing.assert_allclose(alexnet.extract(net, pil, "fc7")["fc7"], arrays["fc7"], rtol=0, atol=0)


def test_extract_keeps_input_order_and_reads_datasets_and_towers(net, photos, demo_store):
    files = files_of(photos)
    backwards = alexnet.extract(net, files[::-1], ["conv5"], batch_size=1, relu="pre")["conv5"]
    forwards = alexnet.extract(net, files, ["conv5"], batch_size=1, relu="pre")["conv5"]
    np.testing.assert_array_equal(backwards[::-1], forwards)
    x = torch.stack([net.transforms()(f) for f in files])
    with torch.no_grad():
        want = net.features(x, "conv5", relu="pre")["conv5"].numpy()
    np.testing.assert_allclose(forwards, want, rtol=1e-5, atol=1e-5)
    assert forwards.shape == (5, 32, 3, 3)
    store = ImageStore(demo_store, "val")
    got = alexnet.extract(net, store, ["fc7"], batch_size=16)["fc7"]
    x = net.transforms().batch(torch.from_numpy(np.stack([store[i][0] for i in range(len(store))])))
    with torch.no_grad():
        np.testing.assert_allclose(got, net.features(x, "fc7")["fc7"].numpy(), rtol=1e-5, atol=1e-5)
    halves = alexnet.extract(net, files[:2], ["conv1"], towers=True)
    assert sorted(halves) == ["conv1.tower0", "conv1.tower1"] and halves["conv1.tower0"].shape[1] == 6


def test_rdm_is_one_minus_the_pearson_correlation_of_the_rows():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 3, 4, 4)).astype(np.float32)
    got = alexnet.rdm(feats)
    want = 1 - np.corrcoef(feats.reshape(7, -1).astype(np.float64))
    assert got.shape == (7, 7) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(np.diag(got) == 0) and np.allclose(got, got.T)
    np.testing.assert_allclose(alexnet.rdm(torch.from_numpy(feats)), got)
    with pytest.raises(alexnet.UserError, match="row 1 of the features is constant"):
        alexnet.rdm(np.stack([feats[0].ravel(), np.ones(48)]))


def test_evaluate_a_net_is_alexnet_eval_on_a_store_and_on_a_class_folder_tree(net, tiny_run, demo_store, tmp_path):
    from alexnet.evaluate.error_rates import evaluate as evaluate_checkpoints

    want = evaluate_checkpoints([tiny_run], demo_store, views=10, device="cpu", progress=False)
    got = alexnet.evaluate(net, demo_store, views=10)
    assert got["n"] == want["n"] == 100 and got["patches"] == 10
    assert abs(got["top1_err"] - want["top1_err"]) < 1e-9 and abs(got["top5_err"] - want["top5_err"]) < 1e-9
    assert [(r["wnid"], r["n"], r["top1_accuracy"]) for r in got["per_class"]] == \
        [(r["wnid"], r["n"], r["top1_accuracy"]) for r in want["per_class"]]
    store = ImageStore(demo_store, "val")
    for i in range(len(store)):  # the same images as a class-folder tree of lossless files
        pixels, label = store[i]
        folder = tmp_path / "tree" / store.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    tree = alexnet.evaluate(net, tmp_path / "tree", views=1)
    assert tree["top1_err"] == alexnet.evaluate(net, demo_store, views=1)["top1_err"]
    dataset = alexnet.ImageFolder(tmp_path / "tree", net.image_size, classes=net.classes)
    assert len(dataset) == 100 and dataset[0][0].shape == (72, 72, 3)
    assert alexnet.evaluate(net, dataset, views=1)["top1_err"] == tree["top1_err"]


def test_finetuning_from_python_on_a_class_folder_tree(tiny_run, demo_store, tmp_path, capsys):
    """1 epoch of `tiny` on 3 classes of generated images in plain class folders: prepared with a
    seeded validation split, every layer but fc8 from the source, its mean image kept and said so."""
    store = ImageStore(demo_store, "train")
    for label, name in enumerate(("circle", "stripes", "checks")):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(store[label * 100 + i][0]).save(tmp_path / "pets" / name / f"{i}.jpg")
    tuned = alexnet.finetune(tiny_run, tmp_path / "pets", tmp_path / "run", epochs=1, val_fraction=0.25)
    out = capsys.readouterr().out
    assert "preprocessing: the source's mean image subtracted" in out
    assert tuned.classes == ["checks", "circle", "stripes"] and tuned.config.num_classes == 3
    assert torch.equal(tuned.input_mean, load_checkpoint(tiny_run)["mean"])
    source = load_checkpoint(tiny_run)["model"]
    assert tuned.fc8.weight.shape == (3, 64) and not torch.equal(tuned.conv1.weight, source["conv1.weight"])
    assert len(ImageStore(tmp_path / "run" / "store", "val")) == 9  # a quarter of each class
    assert len(alexnet.predict(tuned, tmp_path / "pets")) == 36
    # from a net in memory: written beside the run first; the store's mean when asked
    again = alexnet.finetune(alexnet.load(tiny_run), tmp_path / "run" / "store", tmp_path / "run2", epochs=1,
                             preprocessing="store", settings={"optim.lr": 0.001})
    assert (tmp_path / "run2" / "source.pt").is_file()
    assert "this store's mean image subtracted" in capsys.readouterr().out
    np.testing.assert_array_equal(again.input_mean.numpy(), ImageStore(tmp_path / "run" / "store", "train").mean)
    with pytest.raises(alexnet.UserError, match="already holds a run"):
        alexnet.finetune(tiny_run, tmp_path / "pets", tmp_path / "run", epochs=1)


def test_export_onnx_of_a_net_in_memory(net, tmp_path):
    pytest.importorskip("onnxruntime")
    from alexnet.evaluate.export import deployable

    wrapped, info = deployable(net)
    assert net.input_mean is not None  # the net given is not changed
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x - net.input_mean[4:68, 4:68].permute(2, 0, 1)))
    result = alexnet.export_onnx(net, tmp_path / "net.onnx")
    assert result["max_abs_diff"] < 1e-3 * max(1.0, result["max_abs_logit"])


def test_configure_makes_the_clis_settings(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
        monkeypatch.setenv(name, "")  # restored after the test
    monkeypatch.delenv("OMP_WAIT_POLICY")
    threads = torch.get_num_threads()
    try:
        done = alexnet.configure(threads=1)
        assert done == {"threads": 1, "omp_wait_policy": "PASSIVE", "keep_freed_memory": done["keep_freed_memory"],
                        "torch_was_loaded": True}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(alexnet.UserError, match="at least 1"):
        alexnet.configure(threads=0)
