"""The network of §3 against the paper's numbers and an independent NumPy float64 computation."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from alexnet.config import ModelConfig
from alexnet.model import (
    VARIANTS,
    AlexNet,
    LocalResponseNorm,
    PaperDropout,
    count_parameters,
    create_model,
    local_response_norm,
    multiply_adds,
)

# ---------------------------------------------------------------------------------------------------
# Independent float64 reference: the paper's formulas written with plain NumPy loops and windows.
# ---------------------------------------------------------------------------------------------------


def np_lrn(a: np.ndarray, k=2.0, n=5, alpha=1e-4, beta=0.75, groups=1) -> np.ndarray:
    """§3.3 literally: b^i = a^i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} (a^j)^2)^beta,
    each of `groups` towers on its own N = C/groups maps."""
    if groups > 1:
        return np.concatenate([np_lrn(part, k, n, alpha, beta) for part in np.split(a, groups, axis=1)], axis=1)
    N = a.shape[1]
    b = np.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(axis=1)
        b[:, i] = a[:, i] / (k + alpha * s) ** beta
    return b


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride=1, pad=0, groups=1) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kh), axis=(2, 3))[:, :, ::stride, ::stride]
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    outs = []
    for g in range(groups):
        xg = win[:, g * cin : (g + 1) * cin]  # (B, cin, H, W, kh, kw)
        wg = w[g * cout : (g + 1) * cout]  # (cout, cin, kh, kw)
        outs.append(np.einsum("bchwij,ocij->bohw", xg, wg))
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def np_maxpool(x: np.ndarray, z=3, s=2) -> np.ndarray:
    win = np.lib.stride_tricks.sliding_window_view(x, (z, z), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(-1, -2))


def np_alexnet(model: AlexNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode forward of Fig. 2 in NumPy float64: (fc7 after ReLU, logits)."""
    P = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    t = model.config.towers
    g = t if model.config.lrn_within_towers else 1
    h = np_maxpool(np_lrn(relu(np_conv(x, P["conv1.weight"], P["conv1.bias"], stride=4, pad=2)), groups=g))
    h = np_maxpool(np_lrn(relu(np_conv(h, P["conv2.weight"], P["conv2.bias"], pad=2, groups=t)), groups=g))
    h = relu(np_conv(h, P["conv3.weight"], P["conv3.bias"], pad=1))
    h = relu(np_conv(h, P["conv4.weight"], P["conv4.bias"], pad=1, groups=t))
    h = np_maxpool(relu(np_conv(h, P["conv5.weight"], P["conv5.bias"], pad=1, groups=t)))
    h = h.reshape(len(h), -1)
    h = relu(h @ P["fc6.weight"].T + P["fc6.bias"]) * 0.5  # §4.2: test time multiplies by 0.5
    fc7 = relu(h @ P["fc7.weight"].T + P["fc7.bias"])
    return fc7, (fc7 * 0.5) @ P["fc8.weight"].T + P["fc8.bias"]


# ---------------------------------------------------------------------------------------------------


def test_parameter_count_and_multiply_adds_match_the_paper():
    model = AlexNet()
    assert count_parameters(model) == 60_965_224
    assert round(multiply_adds(model) / 1e6) == 724


def test_every_map_size_and_neuron_count_matches_fig2():
    model = AlexNet().eval()
    shapes = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert shapes["conv1"] == (96, 55, 55)
    assert shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27)
    assert shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13)
    assert shapes["conv4"] == (384, 13, 13)
    assert shapes["conv5"] == (256, 13, 13)
    assert shapes["pool5"] == (256, 6, 6)
    assert shapes["fc6"] == shapes["fc7"] == (4096,)
    # Fig. 2 caption: 253,440-186,624-64,896-64,896-43,264-4096-4096-1000 neurons.
    neurons = [math.prod(shapes[n]) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")]
    assert neurons == [290_400, 186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]
    # The caption's first number, 253,440, is not 96*55*55 = 290,400 (a known misprint of the paper);
    # every other count agrees.
    assert model.map_sizes == {"input": 224, "conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13,
                               "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6}


def test_kernel_shapes_and_tower_split():
    m = AlexNet()
    assert m.conv1.weight.shape == (96, 3, 11, 11) and m.conv1.stride == (4, 4)
    assert m.conv2.weight.shape == (256, 48, 5, 5) and m.conv2.groups == 2
    assert m.conv3.weight.shape == (384, 256, 3, 3) and m.conv3.groups == 1
    assert m.conv4.weight.shape == (384, 192, 3, 3) and m.conv4.groups == 2
    assert m.conv5.weight.shape == (256, 192, 3, 3) and m.conv5.groups == 2
    # §3.5: conv2's kernels on one GPU see only the maps of conv1 on the same GPU.
    x = torch.randn(1, 96, 27, 27, requires_grad=True)
    m.conv2(x)[:, :128].sum().backward()
    assert x.grad[:, 48:].abs().max() == 0 and x.grad[:, :48].abs().max() > 0
    # conv3 connects to all of conv2's maps.
    x = torch.randn(1, 256, 13, 13, requires_grad=True)
    m.conv3(x)[:, :192].sum().backward()
    assert x.grad[:, 128:].abs().max() > 0


@pytest.mark.parametrize("variant", ["tiny", "one-tower-tiny", "lrn-across-towers"])
def test_forward_matches_independent_float64_computation(variant):
    torch.manual_seed(0)
    if variant == "tiny":
        model = create_model("tiny", num_classes=7)
    elif variant == "one-tower-tiny":
        model = AlexNet(VARIANTS["tiny"], towers=1, num_classes=7)
    else:
        model = AlexNet(VARIANTS["tiny"], lrn_within_towers=False, num_classes=7)
    model = model.double().eval()
    # Re-draw weights larger than the paper's init so every layer, LRN included, is far from trivial.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64) * 60
    fc7_ref, logits_ref = np_alexnet(model, x.numpy())
    with torch.no_grad():
        fc7, logits = model.embed(x), model(x)
    assert fc7.shape == (3, model.config.fc_width)
    np.testing.assert_allclose(fc7.numpy(), fc7_ref, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(logits.numpy(), logits_ref, rtol=1e-10, atol=1e-8)


# ---------------------------------------------------------------------------------------------------
# §3.3 Local response normalisation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 7, 96])
def test_lrn_matches_the_formula_in_float64(channels):
    torch.manual_seed(channels)
    a = torch.rand(2, channels, 5, 4, dtype=torch.float64) * 80  # ReLU outputs: non-negative, large
    ref = np_lrn(a.numpy())
    np.testing.assert_allclose(local_response_norm(a).numpy(), ref, rtol=1e-12)
    # The training path (custom autograd Function) computes the same values.
    out = local_response_norm(a.clone().requires_grad_())
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12)
    # The effect is not negligible at these activations (else the test would prove little).
    assert np.abs(ref - a.numpy() / 2**0.75).max() > 1.0


def test_lrn_within_towers_stops_at_the_tower_boundary():
    torch.manual_seed(0)
    a = torch.rand(2, 12, 3, 3, dtype=torch.float64) * 80
    grouped = local_response_norm(a, groups=2)
    np.testing.assert_allclose(grouped.numpy(), np_lrn(a.numpy(), groups=2), rtol=1e-12)
    # map 5 (last of tower 1) must not see map 6 (first of tower 2), and vice versa
    b = a.clone()
    b[:, 6:] *= 3
    torch.testing.assert_close(local_response_norm(b, groups=2)[:, :6], grouped[:, :6])
    assert not torch.allclose(local_response_norm(b)[:, :6], local_response_norm(a)[:, :6])
    x = a.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 1e-3, 0.75, 2.0, groups=2), (x,))
    assert AlexNet().norm1.groups == 2 and AlexNet(lrn_within_towers=False).norm1.groups == 1
    assert create_model("one-tower").norm1.groups == 1


def test_lrn_gradient_matches_finite_differences():
    torch.manual_seed(0)
    a = (torch.rand(2, 9, 3, 3, dtype=torch.float64) * 60).requires_grad_()
    # Large alpha so the cross-channel term of the gradient matters.
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 1e-3, 0.75, 2.0), (a,))
    # and equals autograd through the plain formula
    g = torch.randn(2, 9, 3, 3, dtype=torch.float64)
    (local_response_norm(a, 5, 1e-3, 0.75, 2.0) * g).sum().backward()
    b = a.detach().clone().requires_grad_()
    sq = b * b
    s = torch.stack([sq[:, max(0, i - 2) : i + 3].sum(1) for i in range(9)], 1)
    (b / (2.0 + 1e-3 * s) ** 0.75 * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_torch_lrn_divides_alpha_by_n():
    a = torch.rand(2, 16, 6, 6, dtype=torch.float64) * 50
    ours = local_response_norm(a, 5, 1e-4, 0.75, 2.0)
    theirs = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)(a)
    torch.testing.assert_close(ours, theirs)
    # and the config switch that reproduces the authors' code uses alpha / n
    m = AlexNet(VARIANTS["tiny"], lrn_alpha_over_n=True)
    assert m.norm1.alpha == pytest.approx(1e-4 / 5)
    assert AlexNet(VARIANTS["tiny"]).norm1.alpha == 1e-4


def test_lrn_in_bfloat16_stays_close_to_float32():
    torch.manual_seed(0)
    a = torch.rand(4, 32, 8, 8) * 100
    ref = local_response_norm(a)
    out = local_response_norm(a.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    x = a.bfloat16().requires_grad_()
    local_response_norm(x).float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_lrn_works_on_channels_last_input():
    a = torch.rand(2, 12, 5, 5, dtype=torch.float64) * 30
    cl = a.contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.testing.assert_close(local_response_norm(cl), local_response_norm(a))
    local_response_norm(cl).sum().backward()
    b = a.clone().requires_grad_()
    local_response_norm(b).sum().backward()
    torch.testing.assert_close(cl.grad, b.grad)


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(4)


# ---------------------------------------------------------------------------------------------------
# §4.2 Dropout and §5 initialisation
# ---------------------------------------------------------------------------------------------------


def test_dropout_zeroes_half_while_training_and_halves_at_test_time():
    torch.manual_seed(0)
    d = PaperDropout(0.5)
    x = torch.rand(200_000) + 1.0
    y = d.train()(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.5) < 0.01
    torch.testing.assert_close(y[~dropped], x[~dropped])  # survivors are not rescaled
    torch.testing.assert_close(d.eval()(x), x * 0.5)


def test_eval_forward_is_fc8_of_half_the_embedding():
    torch.manual_seed(0)
    m = create_model("tiny", num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64) * 50
    with torch.no_grad():
        e = m.embed(x)
        assert (e >= 0).all()  # after the ReLU
        torch.testing.assert_close(m(x), m.fc8(e * 0.5))


def test_initialisation_follows_section_5():
    torch.manual_seed(0)
    m = AlexNet()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = getattr(m, name).weight
        assert abs(w.mean().item()) < 1e-3, name
        assert w.std().item() == pytest.approx(0.01, rel=0.05), name
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert torch.all(getattr(m, name).bias == 1.0), name
    for name in ("conv1", "conv3", "fc8"):
        assert torch.all(getattr(m, name).bias == 0.0), name


# ---------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------


def test_registry_builds_every_variant_and_runs_it():
    for name, cfg in VARIANTS.items():
        m = create_model(name, num_classes=3).eval()
        with torch.no_grad():
            out = m(torch.randn(2, 3, cfg.input_size, cfg.input_size))
        assert out.shape == (2, 3), name


def test_one_tower_is_footnote_2s_net():
    m = create_model("one-tower")
    assert [getattr(m, f"conv{i}").out_channels for i in range(1, 6)] == [48, 128, 192, 192, 256]
    assert all(getattr(m, f"conv{i}").groups == 1 for i in range(1, 6))
    assert m.fc6.in_features == 256 * 36 and m.fc6.out_features == 4096


def test_six_conv_adds_one_layer_over_pool5():
    six, paper = create_model("six-conv"), AlexNet()
    assert count_parameters(six) - count_parameters(paper) == 256 * 256 * 9 + 256
    assert six.conv6.in_channels == 256 and six.fc6.in_features == 9216


def test_width_and_input_size_change_the_geometry():
    m = AlexNet(width=0.5, input_size=128, num_classes=10)
    assert m.conv1.out_channels == 48 and m.conv2.groups == 2 and m.conv2.in_channels == 48
    # 128: conv1 (128+4-11)//4+1 = 31, pools 15, 7, 3
    assert m.map_sizes["conv1"] == 31 and m.map_sizes["pool5"] == 3
    assert m.fc6.in_features == 128 * 9
    assert m(torch.randn(1, 3, 128, 128)).shape == (1, 10)


def test_non_overlapping_pooling_keeps_the_map_sizes():
    # §3.4: s=z=2 "produces output of equivalent dimensions".
    m = AlexNet(pool_size=2, pool_stride=2)
    assert m.map_sizes == AlexNet().map_sizes


@pytest.mark.parametrize("removed", [3, 4, 5])
def test_removing_a_conv_layer(removed):
    m = AlexNet(VARIANTS["tiny"], remove_conv=removed, num_classes=4)
    assert getattr(m, f"conv{removed}") is None
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    assert count_parameters(m) < count_parameters(AlexNet(VARIANTS["tiny"], num_classes=4))


def test_bad_geometry_and_settings_get_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        AlexNet(input_size=48)
    assert AlexNet(VARIANTS["tiny"], input_size=63).map_sizes["pool5"] == 1
    with pytest.raises(ValueError, match="unknown variant"):
        create_model("vgg")
    with pytest.raises(ValueError, match="remove_conv"):
        AlexNet(remove_conv=2)


def test_tanh_variant_uses_tanh():
    m = AlexNet(VARIANTS["tiny"], nonlinearity="tanh", init_bias=0.0).eval()
    with torch.no_grad():
        e = m.embed(torch.randn(2, 3, 64, 64) * 50)
    assert (e < 0).any() and (e.abs() <= 1).all()


def test_model_config_defaults_are_the_papers():
    c = ModelConfig()
    assert (c.lrn_k, c.lrn_size, c.lrn_alpha, c.lrn_beta) == (2.0, 5, 1e-4, 0.75)
    assert (c.pool_size, c.pool_stride, c.dropout, c.init_std) == (3, 2, 0.5, 0.01)


def test_paper_init_leaves_the_top_layers_nearly_independent_of_the_input():
    """The measured reason the paper's init stalls on small nets (README): with N(0, 0.01^2) weights
    and biases of 1, fc7's response to the image is under 1% of its bias-driven activity; the
    "scaled" init keeps it of the same order."""
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 14, 14) * 255, size=(224, 224), mode="bicubic")
    x = x - x.mean(0, keepdim=True)
    ratios = {}
    for scheme in ("paper", "scaled"):
        m = AlexNet(init_scheme=scheme).eval()
        with torch.no_grad():
            fc7 = m.embed(x)
        ratios[scheme] = (fc7.std(0).mean() / fc7.mean()).item()
    assert ratios["paper"] < 0.02
    assert ratios["scaled"] > 0.1 and ratios["scaled"] > 10 * ratios["paper"]


@pytest.mark.parametrize("changes", [{}, {"input_size": 63, "pool_size": 2, "pool_stride": 2, "extra_conv": True},
                                     {"input_size": 100, "towers": 1, "remove_conv": 4, "width": 0.3}])
def test_layer_spec_and_config_geometry_are_what_the_net_computes(changes):
    """config.map_sizes (the geometry settings are validated against) and model.layer_spec (the net is
    built from) agree with the shapes a forward pass actually produces."""
    from alexnet.config import map_sizes
    from alexnet.model import ConvSpec, layer_spec

    config = dataclasses.replace(VARIANTS["tiny"], **changes)
    model = AlexNet(config, num_classes=5).eval()
    shapes = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.randn(1, 3, config.input_size, config.input_size))
    sizes = map_sizes(model.config)
    for name, spec in layer_spec(model.config).items():
        layer = getattr(model, name)
        if spec is None:
            assert layer is None and name not in shapes
        elif isinstance(spec, ConvSpec):
            assert layer.weight.shape == (spec.out_ch, spec.in_ch // spec.groups, spec.kernel, spec.kernel)
            assert shapes[name] == (spec.out_ch, sizes[name], sizes[name]), name
        else:
            assert (layer.in_features, layer.out_features) == spec and shapes[name] == (spec[1],)
    for pool in ("pool1", "pool2", "pool5"):
        assert shapes[pool][1:] == (sizes[pool], sizes[pool])


def test_layers_are_named_modules_in_the_papers_order_and_hooks_see_each_ones_own_output():
    """No layer works in place, so a hook on conv3 keeps its values before the ReLU and relu3's after;
    the net traces with torch.fx (no branch on the device in forward) and the trace computes the same."""
    net = create_model("paper").eval()
    names = [n for n, _ in net.named_children()]
    assert names[:8] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]
    assert names[-7:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    seen = {}
    for name in ("pool2", "conv3", "relu3"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.clone()))
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        logits = net(x)
        want = torch.nn.functional.conv2d(seen["pool2"], net.conv3.weight, net.conv3.bias, padding=1)
    torch.testing.assert_close(seen["conv3"], want, rtol=1e-4, atol=1e-4)
    assert (seen["conv3"] < 0).any()
    torch.testing.assert_close(seen["relu3"], seen["conv3"].clamp(min=0))
    traced = torch.fx.symbolic_trace(net)
    calls = [n.target if n.op == "call_module" else n.target.__name__ for n in traced.graph.nodes
             if n.op in ("call_module", "call_function")]
    assert calls[:5] == ["conv1", "relu1", "local_response_norm", "pool1", "conv2"]  # the LRN: one call
    with torch.no_grad():
        torch.testing.assert_close(traced(x), logits)
