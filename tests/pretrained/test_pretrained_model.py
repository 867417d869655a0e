"""The ModelConfig settings imported weights use, on small nets: inverted dropout, Caffe's rounded-up
pooling, the input scale and the adaptive pool."""

import numpy as np
import pytest
import torch

from alexnet.config import Config, ConfigError, ModelConfig, validate
from alexnet.model import AlexNet, PaperDropout, map_sizes


def test_inverted_dropout_scales_while_training_and_is_identity_at_test():
    x = torch.full((4, 1000), 3.0)
    drop = PaperDropout(0.25, inverted=True)
    kept = drop.train()(x)
    assert set(kept.unique().tolist()) <= {0.0, 4.0}  # 3 / (1 - 0.25)
    assert 0.6 < (kept > 0).float().mean() < 0.9
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(PaperDropout(0.25).eval()(x), x * 0.75)


@pytest.mark.parametrize("size", [227, 231, 235, 238])
def test_ceil_pooling_sizes_match_caffe_and_the_net(size):
    config = ModelConfig(input_size=size, width=0.125, fc_width=16, num_classes=5, conv1_padding=0, pool_ceil=True)
    sizes = map_sizes(config)

    def caffe(n):  # Caffe's PoolingLayer: ceil((n + 2 pad - k) / s) + 1, no window starting past the end
        return int(np.ceil((n - 3) / 2)) + 1

    c1 = (size - 11) // 4 + 1
    assert (sizes["pool1"], sizes["pool2"]) == (caffe(c1), caffe(caffe(c1)))
    net = AlexNet(config).eval()
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 3, size, size)).shape[-1] == sizes["pool5"]
    if size == 231:  # conv1 56 maps: Caffe pools to 28, torch's default floor to 27
        assert sizes["pool1"] == 28 and map_sizes(ModelConfig(input_size=size, conv1_padding=0))["pool1"] == 27


def test_input_scale_multiplies_each_channel_and_adaptive_pool_sets_the_feature_size():
    base = ModelConfig(input_size=96, width=0.125, fc_width=16, num_classes=5, towers=1, lrn=False)
    scaled = ModelConfig(**{**base.__dict__, "input_scale": (0.5, 2.0, 4.0), "adaptive_pool": 3})
    a, b = AlexNet(base).eval(), AlexNet(scaled).eval()
    assert b.feature_dim == a.conv5.out_channels * 9 and "input_scale" not in b.state_dict()
    a.load_state_dict({k: v for k, v in b.state_dict().items() if not k.startswith("fc6")}, strict=False)
    x = torch.randn(2, 3, 96, 96) * 50
    with torch.no_grad():
        scale = torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1, 1)
        want = torch.nn.functional.adaptive_avg_pool2d(a.forward_features(x * scale), 3)
        torch.testing.assert_close(b.forward_features(x), want)
    assert a.map_sizes["pool5"] == 2 and b.forward_features(x).shape[-1] == 3  # 96 -> pool5 2x2, averaged up to 3x3


def test_bad_convention_values_are_config_errors():
    for bad in ({"conv1_padding": -1}, {"input_scale": (1.0, 2.0)}, {"input_scale": (1.0, 0.0, 1.0)},
                {"adaptive_pool": -6}):
        with pytest.raises(ConfigError, match=f"model.{next(iter(bad))}="):
            validate(Config(model=ModelConfig(**bad)))
    validate(Config(model=ModelConfig(input_scale=(1.0, 1.0, 1.0), adaptive_pool=6, conv1_padding=0, input_size=227)))
