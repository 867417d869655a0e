"""Crafted weight files for `alexnet import`: each refused in one line (exit 2), and no checkpoint
written that another command would refuse. A narrow Caffe AlexNet (bvlc_alexnet's layers with fewer
kernels) keeps the files small; each case changes one thing of an import that succeeds."""

import numpy as np
import pytest
import torch

from alexnet.cli.commands import main
from tests.pretrained import reference as ref

NARROW = {"conv1": (16, 11, 4, 0, 1), "conv2": (32, 5, 1, 2, 2), "conv3": (48, 3, 1, 1, 1),
          "conv4": (48, 3, 1, 1, 2), "conv5": (32, 3, 1, 1, 2)}
FC = 64
SHAPES = {"conv1": (16, 3, 11, 11), "conv2": (32, 8, 5, 5), "conv3": (48, 32, 3, 3), "conv4": (48, 24, 3, 3),
          "conv5": (32, 24, 3, 3), "fc6": (FC, 32 * 36), "fc7": (FC, FC), "fc8": (1000, FC)}


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    rng = np.random.default_rng(5)
    weights = {n: ((rng.standard_normal(s) * 0.05).astype(np.float32), rng.normal(0, 0.1, s[0]).astype(np.float32))
               for n, s in SHAPES.items()}
    folder = tmp_path_factory.mktemp("crafted")
    (folder / "deploy.prototxt").write_text(ref.deploy_prototxt(conv=NARROW, fc=FC))
    (folder / "w.caffemodel").write_bytes(caffemodel(weights))
    return folder, weights


def caffemodel(weights, conv1_weight: bytes | None = None) -> bytes:
    """The narrow net's caffemodel; `conv1_weight` replaces conv1's weight blob by raw BlobProto bytes."""
    out = [ref.field(1, "AlexNet")]
    for name, kind in ref.LAYERS:
        blobs = [ref.blob(b, legacy=False) for b in weights.get(name, ())]
        if name == "conv1" and conv1_weight is not None:
            blobs[0] = conv1_weight
        out.append(ref.field(100, ref.field(1, name) + ref.field(2, kind) + b"".join(ref.field(7, b) for b in blobs)))
    return b"".join(out)


def shaped_blob(dims, floats=b"", doubles=b"") -> bytes:
    """BlobProto with shape (7: BlobShape, dim 1 packed int64, two's complement for negatives), data 5 or
    double_data 8."""
    head = ref.field(7, ref.field(1, b"".join(ref.varint(d & (2**64 - 1)) for d in dims)))
    return head + (ref.field(5, floats) if floats else b"") + (ref.field(8, doubles) if doubles else b"")


def refused(capsys, tmp_path, prototxt, weights, mean=None) -> str:
    out = tmp_path / "x.pt"
    argv = ["import", "caffe", "--prototxt", str(prototxt), "--weights", str(weights), "--out", str(out)]
    assert main(argv + (["--mean", str(mean)] if mean else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alexnet import: error: "), err
    assert not out.exists()
    return err


def test_the_unchanged_narrow_net_imports(narrow, tmp_path, capsys):
    folder, _ = narrow
    assert main(["import", "caffe", "--prototxt", str(folder / "deploy.prototxt"), "--weights",
                 str(folder / "w.caffemodel"), "--out", str(tmp_path / "ok.pt")]) == 0
    assert main(["predict", str(tmp_path / "ok.pt"), str(ref.photo_path()), "--device", "cpu"]) == 0


@pytest.mark.parametrize("change, why", [
    (("beta: 0.75", "beta: inf"), "model.lrn_beta=inf: must be a finite number"),
    (("beta: 0.75", "beta: 0.75 k: -1"), "model.lrn_k=-1.0: must be > 0"),
    (("alpha: 0.0001", "alpha: nan"), "LRN layers differ"),  # NaN != NaN: refused before the rules
    (("kernel_size: 3 stride: 2", "kernel_size: 3 stride: 0"), "model.pool_stride=0: must be >= 1"),
    ((f"num_output: {FC} ", "num_output: 0 "), "model.fc_width=0: must be >= 1"),
    ((f"num_output: {FC} ", "num_output: 4294967295 "), "the net it describes cannot be built"),
    (("num_output: 1000 ", "num_output: 4294967295 "), "GiB of float32 weights, more than the 4 GiB"),
    (("dim: 227 dim: 227", "dim: 9223372036854775807 dim: 9223372036854775807"), "input size 9223372036854775807"),
    (("dim: 10 dim: 3 dim: 227 dim: 227", "dim: 10 dim: 3 dim: -227 dim: -227"), "input size -227"),
])
def test_prototxt_values_the_config_rules_refuse(narrow, tmp_path, capsys, change, why):
    folder, _ = narrow
    text = (folder / "deploy.prototxt").read_text()
    assert change[0] in text
    (tmp_path / "bad.prototxt").write_text(text.replace(change[0], change[1]))
    assert why in refused(capsys, tmp_path, tmp_path / "bad.prototxt", folder / "w.caffemodel")


def test_conv_outputs_that_the_towers_cannot_split_are_refused(narrow, tmp_path, capsys):
    """conv2 `num_output: 7` with `group: 2`: Caffe itself refuses it; the net would build 8 maps."""
    folder, weights = narrow
    (tmp_path / "c7.prototxt").write_text(ref.deploy_prototxt(conv=dict(NARROW, conv2=(7, 5, 1, 2, 2)), fc=FC))
    eight = dict(weights, conv2=(np.zeros((8, 8, 5, 5), np.float32), np.zeros(8, np.float32)))  # what the net has
    (tmp_path / "c7.caffemodel").write_bytes(caffemodel(eight))
    err = refused(capsys, tmp_path, tmp_path / "c7.prototxt", tmp_path / "c7.caffemodel")
    assert "conv num_output [16, 7, 48, 48, 32] are not multiples of their groups" in err


def test_a_prototxt_nested_a_thousand_deep_is_one_line(narrow, tmp_path, capsys):
    folder, _ = narrow
    deep = (folder / "deploy.prototxt").read_text() + "layer { " * 1000 + "}" * 1000
    (tmp_path / "deep.prototxt").write_text(deep)
    assert "nested too deeply" in refused(capsys, tmp_path, tmp_path / "deep.prototxt", folder / "w.caffemodel")


@pytest.mark.parametrize("blob, why", [
    (shaped_blob([-16, -3], np.zeros(48, "<f4").tobytes()), "has shape -16x-3: a blob of AlexNet has at most 4 axes, "
                                                            "none negative"),
    (shaped_blob([1] * 70, np.zeros(1, "<f4").tobytes()), "has shape of 70 axes"),
    (shaped_blob([2**62, 4]), "holds 0 values for its shape 4611686018427387904x4 (18446744073709551616)"),
    (shaped_blob([16, 3, 11, 11], doubles=np.full(5808, 1e300, "<f8").tobytes()), "5,808 NaN or infinite values"),
    (shaped_blob([16, 3, 11, 11], np.full(5808, np.nan, "<f4").tobytes()), "5,808 NaN or infinite values"),
])
def test_crafted_blobs_are_refused(narrow, tmp_path, capsys, blob, why):
    folder, weights = narrow
    (tmp_path / "bad.caffemodel").write_bytes(caffemodel(weights, conv1_weight=blob))
    err = refused(capsys, tmp_path, folder / "deploy.prototxt", tmp_path / "bad.caffemodel")
    assert "bad.caffemodel: conv1 weight" in err and why in err


def test_a_non_finite_mean_is_refused(narrow, tmp_path, capsys):
    folder, _ = narrow
    mean = np.full((3, 256, 256), 110, np.float32)
    mean[1, 7, 9] = np.inf
    (tmp_path / "mean.binaryproto").write_bytes(ref.mean_binaryproto(mean))
    err = refused(capsys, tmp_path, folder / "deploy.prototxt", folder / "w.caffemodel", tmp_path / "mean.binaryproto")
    assert "mean.binaryproto holds 1 NaN or infinite values" in err


def test_torchvision_weights_that_are_not_finite_are_refused(tmp_path, capsys):
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
              "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}
    state = {}
    for key, shape in shapes.items():
        state[f"{key}.weight"] = torch.zeros(shape)
        state[f"{key}.bias"] = torch.zeros(shape[0])
    state["features.3.bias"] = torch.full((192,), 1e300, dtype=torch.float64)  # inf in float32
    torch.save(state, tmp_path / "inf.pth")
    assert main(["import", "torchvision", str(tmp_path / "inf.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conv2.bias holds 192 NaN or infinite values" in err
    assert not (tmp_path / "x.pt").exists()
