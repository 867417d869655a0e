"""`alexnet import torchvision`: a full-size random state dict in torchvision's layout, imported, and
compared with a float64 NumPy forward pass of torchvision's alexnet (eval mode)."""

import numpy as np
import pytest
import torch

from alexnet.cli.commands import main
from tests.pretrained import reference as ref

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SHAPES = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
          "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
          "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in SHAPES.items():
        fan_in = int(np.prod(shape[1:]))
        state[f"{key}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"{key}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt-test.pth"
    torch.save(state, path)
    return state, path


def test_torchvision_net_computes_what_torchvision_computes_on_a_photograph(tv_file, tmp_path, capsys):
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data.augment import BatchTransforms
    from alexnet.data.image import load_image

    state, path = tv_file
    out = tmp_path / "tv.pt"
    assert main(["import", "torchvision", str(path), "--out", str(out)]) == 0
    assert "torchvision AlexNet, 224x224" in capsys.readouterr().out
    payload = load_checkpoint(out)
    net = model_from_checkpoint(payload)
    transforms = BatchTransforms(payload["mean"].numpy(), np.ones(3), np.eye(3), 224)
    pixels = np.array(load_image(ref.photo_path(), 256)[0])
    with torch.no_grad():
        got = net(transforms.test(torch.from_numpy(pixels[None]))).double().numpy()[0]
    crop = pixels[16:240, 16:240].astype(np.float64)  # torchvision: resize 256, CenterCrop(224)
    x = ((crop / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    want = ref.torchvision_forward(x, state)
    assert want.std() > 1.0
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # the preprocessing travels with the net: alexnet.load and net.transforms() are all a user needs
    import alexnet

    loaded = alexnet.load(out)
    assert loaded.input_scale is not None and loaded.image_size == 256
    np.testing.assert_allclose(loaded.input_mean[100, 7].numpy(), 255 * MEAN, rtol=1e-6)
    with torch.no_grad():
        again = loaded(loaded.transforms()(ref.photo_path())[None]).double().numpy()[0]
    assert np.abs(again - want).max() <= 1e-4 * np.abs(want).max()


def test_adaptive_pool_averages_to_6x6_for_other_input_sizes(tv_file):
    """torchvision's AdaptiveAvgPool2d((6, 6)) is identity at 224; at 256 pool5 is 7x7 and it averages."""
    import dataclasses

    from alexnet.model import AlexNet
    from alexnet.pretrained.torchvision import convert_state, torchvision_config

    state, path = tv_file
    net = AlexNet(dataclasses.replace(torchvision_config(), input_size=256)).eval()
    assert net.map_sizes["pool5"] == 7
    net.load_state_dict(convert_state(state, str(path)))
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, (3, 256, 256))
    with torch.no_grad():  # the net scales by 1/(255 s): feed it 255 s x to compare with normalised x
        got = net(torch.from_numpy(x * 255 * STD[:, None, None])[None].float()).double().numpy()[0]
    want = ref.torchvision_forward(x, state)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_wrong_state_dicts_are_refused_with_one_line(tv_file, tmp_path, capsys):
    state, _ = tv_file

    def error(obj) -> str:
        path = tmp_path / "bad.pth"
        torch.save(obj, path) if not isinstance(obj, bytes) else path.write_bytes(obj)
        assert main(["import", "torchvision", str(path), "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("alexnet import: error: ")
        return err

    assert "no features.8.weight (conv4.weight)" in error({k: v for k, v in state.items() if k != "features.8.weight"})
    misshaped = dict(state, **{"classifier.1.weight": torch.zeros(4096, 9217)})
    assert "classifier.1.weight has shape (4096, 9217)" in error(misshaped)
    assert "loads without code" in error({"net": torch.nn.Linear(2, 2)})  # a pickled module: never unpickled
    assert "loads without code" in error(b"not a torch file at all")
    assert not (tmp_path / "x.pt").exists()
