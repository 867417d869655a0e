"""Every command on an imported checkpoint (predict is in test_pretrained_caffe): export, features, eval,
figures, neighbors and train --finetune, on a narrow Caffe AlexNet (bvlc_alexnet's layers and
conventions with fewer kernels) so the commands stay fast."""

import json

import numpy as np
import pytest
import torch

from alexnet.cli.commands import main
from tests.pretrained import reference as ref

NARROW = {"conv1": (16, 11, 4, 0, 1), "conv2": (32, 5, 1, 2, 2), "conv3": (48, 3, 1, 1, 1),
          "conv4": (48, 3, 1, 1, 2), "conv5": (32, 3, 1, 1, 2)}
FC = 64


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory, store256):
    """Imported with the store's own mean image as its mean.binaryproto (BGR), so that commands which
    subtract the store's mean and those which subtract the checkpoint's see the same input."""
    from alexnet.data import ImageStore

    rng = np.random.default_rng(3)
    shapes = {"conv1": (16, 3, 11, 11), "conv2": (32, 8, 5, 5), "conv3": (48, 32, 3, 3), "conv4": (48, 24, 3, 3),
              "conv5": (32, 24, 3, 3), "fc6": (FC, 32 * 36), "fc7": (FC, FC), "fc8": (1000, FC)}
    weights = {n: ((rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32),
                   rng.normal(0, 0.1, s[0]).astype(np.float32)) for n, s in shapes.items()}
    folder = tmp_path_factory.mktemp("narrow")
    (folder / "deploy.prototxt").write_text(ref.deploy_prototxt(conv=NARROW, fc=FC))
    layers = [(n, k, list(weights[n]) if n in weights else []) for n, k in ref.LAYERS]
    (folder / "w.caffemodel").write_bytes(ref.caffemodel(layers, v1=True))
    mean_rgb = ImageStore(store256, "train").mean  # (256, 256, 3)
    (folder / "mean.binaryproto").write_bytes(ref.mean_binaryproto(mean_rgb[..., ::-1].transpose(2, 0, 1)))
    out = folder / "narrow.pt"
    assert main(["import", "caffe", "--prototxt", str(folder / "deploy.prototxt"), "--weights",
                 str(folder / "w.caffemodel"), "--mean", str(folder / "mean.binaryproto"), "--out", str(out)]) == 0
    assert np.array_equal(torch.load(out, weights_only=True)["mean"].numpy(), mean_rgb)
    return out


def _photo_tree(root, all_classes: bool):
    """Crops of the photograph as 3 classes at 256x256 (the imported net's image size); all_classes adds
    the other 997 ILSVRC-2012 class folders, empty, so the store's classes are the net's."""
    from PIL import Image

    from alexnet.data.prepare import prepare
    from alexnet.pretrained.classes import ilsvrc2012_classes

    photo = Image.open(ref.photo_path()).convert("RGB")
    for c, wnid in enumerate(["n01440764", "n01443537", "n15075141"]):
        for i in range(4):
            split = "val" if i == 3 else "train"
            box = (40 * c + 10 * i, 30 * i, 300 + 40 * c, 380 + 20 * i)
            (root / "src" / split / wnid).mkdir(parents=True, exist_ok=True)
            photo.crop(box).save(root / "src" / split / wnid / f"{wnid}_{i}.JPEG")
    if all_classes:
        for wnid in ilsvrc2012_classes()[0]:
            (root / "src" / "train" / wnid).mkdir(exist_ok=True)
    prepare(root / "src", root / "store", size=256, workers=1, progress=False, log=lambda *a: None)
    return root / "store"


@pytest.fixture(scope="module")
def store256(tmp_path_factory):
    return _photo_tree(tmp_path_factory.mktemp("s256"), all_classes=False)


@pytest.fixture(scope="module")
def imagenet_like_store(tmp_path_factory):
    """The same images under the 1,000 ILSVRC-2012 classes (the same train images: the same mean)."""
    return _photo_tree(tmp_path_factory.mktemp("s1000"), all_classes=True)


def test_export_onnx_of_an_imported_net_matches_pytorch(narrow_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from alexnet.evaluate.export import export_onnx

    result = export_onnx(narrow_checkpoint, tmp_path / "net.onnx")
    assert result["input"] == (None, 3, 227, 227)
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["max_abs_logit"])


@pytest.mark.parametrize("absent", [("onnxscript",), ("onnx", "onnxscript")])
def test_export_without_the_onnx_packages_names_the_missing_one(narrow_checkpoint, tmp_path, monkeypatch, capsys,
                                                               absent):
    import sys

    for name in absent:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    assert main(["export", str(narrow_checkpoint), "--onnx", str(tmp_path / "net.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install {' '.join(absent)}" in err, err
    assert "log" not in err and not (tmp_path / "net.onnx").exists()


def test_features_of_an_imported_net_are_its_fc7(narrow_checkpoint, store256, tmp_path):
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import ImageStore
    from alexnet.data.augment import BatchTransforms

    out = tmp_path / "f.npy"
    assert main(["features", str(narrow_checkpoint), "--data", str(store256), "--split", "val", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    features = np.load(out)
    store = ImageStore(store256, "val")
    net = model_from_checkpoint(load_checkpoint(narrow_checkpoint))
    images = torch.from_numpy(np.stack([np.asarray(store[i][0]) for i in range(len(store))]))
    with torch.no_grad():
        want = net.embed(BatchTransforms.for_store(store, 227).test(images)).numpy()
    assert features.shape == (3, FC) and (features > 0).any()
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-4)


def test_an_imported_caffe_net_carries_its_mean_image_and_predicts_as_the_command_does(narrow_checkpoint, store256):
    import alexnet
    from alexnet.data import ImageStore
    from alexnet.evaluate.predict import predict_files

    net = alexnet.load(narrow_checkpoint)
    np.testing.assert_array_equal(net.input_mean.numpy(), ImageStore(store256, "train").mean)  # the binaryproto's
    assert len(net.classes) == 1000 and net.class_names[0].startswith("tench")
    x = net.transforms()(ref.photo_path())
    assert x.shape == (3, 227, 227)
    with torch.no_grad():
        probs = net(x[None]).softmax(1)[0]
    cli = predict_files(narrow_checkpoint, [ref.photo_path()], device="cpu")[0]["top"]
    assert [t["label"] for t in cli] == probs.topk(5).indices.tolist()
    np.testing.assert_allclose([t["probability"] for t in cli], probs.topk(5).values.numpy(), rtol=1e-5, atol=1e-6)


def test_finetune_copies_every_imported_layer_but_fc8(narrow_checkpoint, store256, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(store256), "--finetune", str(narrow_checkpoint), "--out", str(out),
                 "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--lr", "1e-30", "--device", "cpu",
                 "--schedule", "step", "--workers", "1", "--quiet"]) == 0
    imported = torch.load(narrow_checkpoint, weights_only=True)
    tuned = torch.load(out / "last.pt", weights_only=True)
    for key, value in imported["model"].items():
        if key.startswith("fc8."):
            assert tuned["model"][key].shape[0] == 3
        else:  # lr 1e-30: the step is too small to change a float32 weight
            assert torch.equal(tuned["model"][key], value), key
    model = tuned["config"]["model"]
    assert (model["conv1_padding"], model["pool_ceil"], model["dropout_style"]) == (0, True, "inverted")
    assert torch.equal(tuned["mean"], imported["mean"])  # the source's preprocessing, kept


@pytest.mark.parametrize("views", [1, 10])
def test_eval_of_an_imported_net_sees_what_predict_sees(narrow_checkpoint, imagenet_like_store, views, capsys):
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import ImageStore
    from alexnet.evaluate.error_rates import predict_probabilities
    from alexnet.evaluate.predict import predict_files

    store = ImageStore(imagenet_like_store, "val")
    assert store.classes == load_checkpoint(narrow_checkpoint)["classes"]
    net = model_from_checkpoint(load_checkpoint(narrow_checkpoint))
    probs = predict_probabilities(net, store, torch.device("cpu"), views)
    files = [str(imagenet_like_store.parent / "src" / f) for f in store.files]
    for row, result in zip(probs, predict_files(narrow_checkpoint, files, views, device="cpu")):
        for t in result["top"]:
            assert abs(row[t["label"]] - t["probability"]) <= 1e-4 * max(1e-3, t["probability"]) + 1e-6
    assert main(["eval", str(narrow_checkpoint), "--data", str(imagenet_like_store), "--crops", str(views),
                 "--device", "cpu", "--quiet"]) == 0
    assert f"val (3 images, {'centre patch' if views == 1 else 'average of 10 patches'})" in capsys.readouterr().out


def test_figures_and_neighbours_run_on_an_imported_net(narrow_checkpoint, imagenet_like_store, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(narrow_checkpoint), "--data", str(imagenet_like_store), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert (out / "kernels.png").is_file() and (out / "top5.png").is_file()
    for split in ("train", "val"):
        assert main(["features", str(narrow_checkpoint), "--data", str(imagenet_like_store), "--split", split,
                     "--out", str(tmp_path / f"{split}.npy"), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["neighbors", "--database", str(tmp_path / "train.npy"), "--queries", str(tmp_path / "val.npy"),
                 "-k", "2", "--device", "cpu", "--json", str(tmp_path / "nn.json"), "--quiet"]) == 0
    result = json.loads((tmp_path / "nn.json").read_text())
    train, val = np.load(tmp_path / "train.npy"), np.load(tmp_path / "val.npy")
    for entry in result:  # the nearest training vectors by Euclidean distance, computed here directly
        d = np.linalg.norm(train - val[entry["query"]], axis=1)
        assert entry["neighbours"] == list(np.argsort(d, kind="stable")[:2])
