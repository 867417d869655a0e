"""Every layer readable by its paper name: `net.features` against independent float64 computations,
a forward hook's view of conv3, a torch.fx feature extractor written here (torchvision's
create_feature_extractor cannot be imported), the two towers, and the mean image travelling with the net."""

import numpy as np
import pytest
import torch

from alexnet.errors import UserError
from alexnet.model import AlexNet, create_model
from alexnet.model.net import LAYER_NAMES, TOWER_LAYERS
from tests.model.test_model import np_alexnet, np_conv, np_lrn, np_maxpool


@pytest.fixture(scope="module")
def net64():
    """`tiny` in float64 with weights large enough that every layer, LRN included, does something."""
    torch.manual_seed(0)
    net = create_model("tiny", num_classes=7).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def x64(n=3):
    return torch.randn(n, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 60


def np_conv3_input(net, x):
    """pool2's maps, by the paper's formulas in NumPy (tests/model/test_model.py)."""
    P = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    h = np_maxpool(np_lrn(relu(np_conv(x, P["conv1.weight"], P["conv1.bias"], stride=4, pad=2)), groups=2))
    return np_maxpool(np_lrn(relu(np_conv(h, P["conv2.weight"], P["conv2.bias"], pad=2, groups=2)), groups=2))


def test_features_match_independent_float64_computations(net64):
    """conv1 before its ReLU and fc7 after it, against NumPy: the paper's formulas, not the net's modules."""
    x = x64()
    with torch.no_grad():
        pre = net64.features(x, ["conv1", "fc7"], relu="pre")
        post = net64.features(x, ["fc7", "conv1"], relu="post")
    P = {k: v.detach().numpy() for k, v in net64.state_dict().items()}
    conv1 = np_conv(x.numpy(), P["conv1.weight"], P["conv1.bias"], stride=4, pad=2)
    assert (conv1 < 0).any()  # a ReLU would change it
    np.testing.assert_allclose(pre["conv1"].numpy(), conv1, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(post["conv1"].numpy(), np.maximum(conv1, 0), rtol=1e-10, atol=1e-8)
    fc7, logits = np_alexnet(net64, x.numpy())
    np.testing.assert_allclose(post["fc7"].numpy(), fc7, rtol=1e-10, atol=1e-8)
    assert (pre["fc7"] < 0).any() and torch.equal(pre["fc7"].clamp(min=0), post["fc7"])
    assert list(post) == ["fc7", "conv1"]  # in the order asked
    with torch.no_grad():
        np.testing.assert_allclose(net64.features(x, "fc8")["fc8"].numpy(), logits, rtol=1e-10, atol=1e-8)


def test_a_forward_hook_on_conv3_keeps_its_values_before_the_relu_in_float64(net64):
    seen = {}
    handle = net64.conv3.register_forward_hook(lambda m, i, o: seen.__setitem__("conv3", o))
    x = x64()
    try:
        with torch.no_grad():
            net64(x)  # the ReLU after conv3 runs after the hook kept `output`: it must not change it
    finally:
        handle.remove()
    P = {k: v.detach().numpy() for k, v in net64.state_dict().items()}
    want = np_conv(np_conv3_input(net64, x.numpy()), P["conv3.weight"], P["conv3.bias"], pad=1)
    assert (want < 0).any()
    np.testing.assert_allclose(seen["conv3"].numpy(), want, rtol=1e-10, atol=1e-8)
    with torch.no_grad():
        assert torch.equal(net64.features(x, "conv3", relu="pre")["conv3"], seen["conv3"])


def fx_feature_extractor(net: torch.nn.Module, return_nodes: list[str]) -> torch.fx.GraphModule:
    """torchvision's create_feature_extractor in a few lines: trace the net, make the named modules'
    nodes the graph's outputs, drop what no output needs."""
    gm = torch.fx.symbolic_trace(net)
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_after(output):
        gm.graph.output({name: nodes[name] for name in return_nodes})
    gm.graph.erase_node(output)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def test_an_fx_feature_extractor_reads_what_features_reads(net64):
    extractor = fx_feature_extractor(net64, ["conv1", "relu3", "pool5", "fc7", "relu7"])
    assert not any(n.target == "fc8" for n in extractor.graph.nodes)  # what no output needs is gone
    x = x64()
    with torch.no_grad():
        got = extractor(x)
        pre = net64.features(x, ["conv1", "fc7"], relu="pre")
        post = net64.features(x, ["conv3", "pool5", "fc7"], relu="post")
    torch.testing.assert_close(got["conv1"], pre["conv1"], rtol=0, atol=0)
    torch.testing.assert_close(got["relu3"], post["conv3"], rtol=0, atol=0)
    torch.testing.assert_close(got["pool5"], post["pool5"], rtol=0, atol=0)
    torch.testing.assert_close(got["fc7"], pre["fc7"], rtol=0, atol=0)
    torch.testing.assert_close(got["relu7"], post["fc7"], rtol=0, atol=0)


def test_every_layer_by_name_and_the_two_towers():
    net = create_model("tiny").eval()
    x = torch.randn(2, 3, 64, 64) * 50
    with torch.no_grad():
        every = net.features(x, [n for n in LAYER_NAMES if getattr(net, n) is not None])
        halves = net.features(x, ["conv2", "fc6", "fc8"], relu="pre", towers=True)
        logits = net(x)
    assert list(every)[:4] == ["conv1", "relu1", "norm1", "pool1"]
    torch.testing.assert_close(every["fc8"], logits)
    assert list(halves) == ["conv2.tower0", "conv2.tower1", "fc6.tower0", "fc6.tower1", "fc8"]  # fc8 is not split
    whole = net.features(x, ["conv2", "fc6"], relu="pre")
    torch.testing.assert_close(torch.cat([halves["conv2.tower0"], halves["conv2.tower1"]], 1), whole["conv2"])
    assert halves["fc6.tower0"].shape == (2, net.config.fc_width // 2)
    assert {"conv1", "pool5", "fc7", "drop6"} <= TOWER_LAYERS and not {"fc8", "conv6"} & TOWER_LAYERS


def test_features_of_a_channels_last_net_are_contiguous_nchw():
    net = create_model("tiny").eval().to(memory_format=torch.channels_last)
    x = (torch.randn(2, 3, 64, 64) * 50).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        feats = net.features(x, ["conv1", "conv5", "fc7"], towers=True)
    for name, value in feats.items():
        assert value.is_contiguous(), name
        value.view(len(value), -1)  # what `.view(B, -1)` needs


def test_bad_layer_names_and_options_are_one_line():
    net = create_model("tiny")
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(UserError, match="'conv9' is not a layer of AlexNet; the layers: conv1, relu1"):
        net.features(x, ["conv9"])
    with pytest.raises(UserError, match="relu must be 'pre'"):
        net.features(x, "conv1", relu="before")
    with pytest.raises(UserError, match="has no conv6"):
        net.features(x, "conv6")
    with pytest.raises(UserError, match="this net has one"):
        create_model("one-tower").features(torch.zeros(1, 3, 224, 224), "conv1", towers=True)
    with pytest.raises(UserError, match="at least one layer"):
        net.features(x, [])


def test_the_mean_image_travels_in_the_state_dict_and_old_state_dicts_still_load():
    net = create_model("tiny")
    assert net.input_mean is None and "input_mean" not in net.state_dict()
    net.set_preprocessing([120.0, 110.0, 100.0])  # per channel, over input_size * 256/224 = 73
    assert net.image_size == 73 and torch.equal(net.input_mean[5, 7], torch.tensor([120.0, 110.0, 100.0]))
    state = net.state_dict()
    assert torch.equal(state["input_mean"], net.input_mean)
    fresh = AlexNet(net.config)
    fresh.load_state_dict(state)  # a fresh net takes the mean the state dict carries
    assert torch.equal(fresh.input_mean, net.input_mean)
    old = {k: v for k, v in state.items() if k != "input_mean"}  # every checkpoint before the mean travelled
    fresh.load_state_dict(old)  # strict, and keeps the mean it has
    assert torch.equal(fresh.input_mean, net.input_mean)
    create_model("tiny").load_state_dict(old)
    with pytest.raises(UserError, match="S x S x 3"):
        net.set_preprocessing(np.zeros((10, 12, 3)))
    with pytest.raises(UserError, match="smaller than the net's input"):
        net.set_preprocessing(np.zeros((32, 32, 3)))
