"""`alexnet import caffe`: full-size random bvlc_alexnet files written byte by byte from caffe.proto's
field numbers, imported, and compared with a float64 NumPy forward pass of Caffe's layers."""

import numpy as np
import pytest
import torch

from alexnet.cli.commands import main
from alexnet.pretrained.caffe import import_caffe
from tests.pretrained import reference as ref


@pytest.fixture(scope="module")
def caffe_files(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights = ref.random_caffe_weights(rng)
    # a smooth BGR mean image, 1x3x256x256 as imagenet_mean.binaryproto holds it
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    mean_bgr = np.stack([100 + 20 * yy, 115 + 10 * xx, 125 - 15 * yy * xx]).astype(np.float32)
    folder = tmp_path_factory.mktemp("caffe")
    files = ref.write_caffe_files(folder / "new", weights, mean_bgr)
    return weights, mean_bgr, files, folder


@pytest.fixture(scope="module")
def imported(caffe_files):
    weights, mean_bgr, (proto, model, mean), folder = caffe_files
    from alexnet.pretrained import write_checkpoint

    payload, notes = import_caffe(proto, model, mean)
    assert notes == []
    out = folder / "bvlc.pt"
    write_checkpoint(payload, out)
    return payload, out


def photos(tmp_path):
    """The photograph, and a crop of it (another framing of real content) as PNG."""
    from PIL import Image

    path = ref.photo_path()
    crop = tmp_path / "crop.png"
    Image.open(path).convert("RGB").crop((100, 150, 420, 500)).save(crop)
    return [path, crop]


def test_caffe_net_computes_what_caffe_computes_on_photographs(caffe_files, imported, tmp_path):
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data.augment import BatchTransforms
    from alexnet.data.image import load_image

    weights, mean_bgr, _, _ = caffe_files
    payload = load_checkpoint(imported[1])
    c = payload["config"]["model"]
    assert (c["input_size"], c["conv1_padding"], c["towers"], c["lrn_k"], c["lrn_alpha"]) == (227, 0, 2, 1.0, 1e-4)
    assert c["lrn_alpha_over_n"] and not c["lrn_within_towers"] and c["dropout_style"] == "inverted"
    net = model_from_checkpoint(payload)
    transforms = BatchTransforms(payload["mean"].numpy(), np.ones(3), np.eye(3), 227)
    for path in photos(tmp_path):
        pixels = np.array(load_image(path, 256)[0])  # RGB uint8 256x256, as predict reads it
        with torch.no_grad():
            got = net(transforms.test(torch.from_numpy(pixels[None]))).double().numpy()[0]
        crop = pixels[14:241, 14:241].astype(np.float64)  # the centre 227 of 256
        bgr = crop[..., ::-1].transpose(2, 0, 1) - mean_bgr[:, 14:241, 14:241]
        want = ref.caffe_forward(bgr, weights)
        assert want.std() > 1.0  # the random net is far from constant on real pixels
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        assert got.argmax() == want.argmax()


def test_old_v1_layers_form_with_legacy_blobs_gives_the_same_weights(caffe_files, imported, tmp_path, capsys):
    """bvlc_alexnet.caffemodel itself is in the V1 form; imported here without --mean, which is said."""
    weights, mean_bgr, _, folder = caffe_files
    proto, model, _ = ref.write_caffe_files(folder / "v1", weights, mean_bgr, v1=True)
    out = tmp_path / "v1.pt"
    assert main(["import", "caffe", "--prototxt", str(proto), "--weights", str(model), "--out", str(out)]) == 0
    assert "104, G 117, R 123" in capsys.readouterr().out
    old, new = torch.load(out, weights_only=True), imported[0]
    assert old["config"] == new["config"]
    for k, v in new["model"].items():
        assert torch.equal(old["model"][k], v), k
    # conv1's kernels are Caffe's with the input channels reversed (BGR -> RGB); the mean likewise
    np.testing.assert_array_equal(new["model"]["conv1.weight"].numpy(), weights["conv1"][0][:, ::-1])
    np.testing.assert_array_equal(new["mean"].numpy(), mean_bgr[::-1].transpose(1, 2, 0))
    assert old["mean"].shape == (256, 256, 3) and torch.equal(old["mean"][37, 200], torch.tensor([123.0, 117.0, 104.0]))
    assert old["mean"].unique().tolist() == [104.0, 117.0, 123.0]


def test_predict_prints_ilsvrc_names_of_the_imported_net(caffe_files, imported, capsys):
    from alexnet.evaluate.predict import predict_files
    from alexnet.pretrained.classes import ilsvrc2012_classes

    path = ref.photo_path()
    result = predict_files(imported[1], [str(path)], device="cpu")[0]
    wnids, names = ilsvrc2012_classes()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (wnids[-1], names[-1]) == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")
    top = result["top"][0]
    assert (top["wnid"], top["name"]) == (wnids[top["label"]], names[top["label"]])
    assert main(["predict", str(imported[1]), str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{top['name']} ({top['wnid']})" in out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alexnet import: error: ")
    return err


def test_wrong_caffe_files_are_refused_with_one_line(caffe_files, tmp_path, capsys):
    weights, mean_bgr, (proto, model, mean), _ = caffe_files
    args = ["import", "caffe", "--out", str(tmp_path / "x.pt")]
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(model.read_bytes()[: 5_000_000])
    assert "truncated.caffemodel" in _error(capsys, args + ["--prototxt", str(proto), "--weights", str(truncated)])
    # CaffeNet pools before it normalises: another architecture
    caffenet = [("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("norm1", "LRN")] + ref.LAYERS[4:]
    other = tmp_path / "caffenet.prototxt"
    other.write_text(ref.deploy_prototxt(layers=caffenet))
    err = _error(capsys, args + ["--prototxt", str(other), "--weights", str(model)])
    assert "'pool1' is Pooling where AlexNet has LRN" in err
    # every layer is looked for before any is read, so small blobs elsewhere do not hide the gap
    small = {n: (np.zeros(2), np.zeros(1)) for n in weights}
    no_fc7 = tmp_path / "no_fc7.caffemodel"
    no_fc7.write_bytes(ref.caffemodel([(n, k, list(small[n]) if n in small and n != "fc7" else [])
                                       for n, k in ref.LAYERS], v1=False))
    assert "no weights for layer 'fc7'" in _error(capsys, args + ["--prototxt", str(proto), "--weights", str(no_fc7)])
    wrong = dict(small, conv1=weights["conv1"], conv2=weights["conv2"],
                 conv3=(weights["conv3"][0][:383], weights["conv3"][1][:383]))
    bad_shape = tmp_path / "bad_shape.caffemodel"
    bad_shape.write_bytes(ref.caffemodel([(n, k, list(wrong[n]) if n in wrong else []) for n, k in ref.LAYERS], False))
    err = _error(capsys, args + ["--prototxt", str(proto), "--weights", str(bad_shape)])
    assert "conv3 weight has shape 383x256x3x3" in err
    garbage = tmp_path / "mean.binaryproto"
    garbage.write_bytes(ref.blob(np.zeros((3, 8)), legacy=False))
    assert "a mean image is 1x3xSxS" in _error(capsys, args + ["--prototxt", str(proto), "--weights", str(model),
                                                               "--mean", str(garbage)])
    assert not (tmp_path / "x.pt").exists()
