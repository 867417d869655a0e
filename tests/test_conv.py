"""alexnet.conv.Conv2d: nn.Conv2d, with conv1's CPU weight gradient summed over slices of the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet import conv
from alexnet.conv import Conv2d
from alexnet.model import AlexNet


def float64_gradients(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    out = F.conv2d(x.double(), w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    (out * g.double()).sum().backward()
    return w.grad, b.grad


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("batch,groups", [(130, 1), (65, 1), (129, 3)])  # slices of 64: the last one short
def test_weight_gradient_in_slices_is_the_whole_batchs(monkeypatch, layout, batch, groups):
    monkeypatch.setattr(conv, "SLICE_ABOVE_OUTPUTS", 0)  # a small layer, taken as a large one
    torch.manual_seed(batch)
    layer = Conv2d(6, 9, 5, stride=3, padding=2, groups=groups).to(memory_format=layout)
    x = torch.randn(batch, 6, 17, 17).contiguous(memory_format=layout) * 50  # images: no gradient
    slices = []
    real = conv._convolution_backward
    monkeypatch.setattr(conv, "_convolution_backward", lambda *a: slices.append(a[1].shape[0]) or real(*a))
    out = layer(x)
    g = torch.randn(out.shape)
    (out * g).sum().backward()
    assert slices == [min(64, batch - i) for i in range(0, batch, 64)]
    ref_w, ref_b = float64_gradients(layer, x, g)
    for got, ref in ((layer.weight.grad, ref_w), (layer.bias.grad, ref_b)):  # float32 sums of ~10^4 terms
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    with torch.no_grad():
        torch.testing.assert_close(out, F.conv2d(x, layer.weight, layer.bias, 3, 2, 1, groups), rtol=0, atol=0)


def test_everywhere_else_it_is_nn_conv2d(monkeypatch):
    monkeypatch.setattr(conv, "SLICE_ABOVE_OUTPUTS", 65 * 4 * 4 * 4 - 1)  # a batch of 65 is over it
    layer = Conv2d(3, 4, 3)
    calls = []
    monkeypatch.setattr(conv._WeightGradientInSlices, "apply", lambda *a: calls.append(1))
    big, small = torch.randn(65, 3, 6, 6), torch.randn(64, 3, 6, 6)
    layer(small)  # a batch of at most WEIGHT_GRADIENT_BATCH
    layer(torch.randn(65, 3, 5, 6))  # an output of fewer than SLICE_ABOVE_OUTPUTS values
    layer(big.requires_grad_())  # an input that needs a gradient (conv2-conv5)
    with torch.no_grad():
        layer(big.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(big.detach())
    layer.double()(big.detach().double())
    assert calls == []
    layer.float()(big.detach())
    assert calls == [1]
    assert isinstance(layer, nn.Conv2d) and list(layer.state_dict()) == list(nn.Conv2d(3, 4, 3).state_dict())


def test_the_net_takes_its_first_layer_in_slices_and_learns_the_same(monkeypatch):
    """A paper-net step at a batch over 64: conv1's gradients match the plain convolution's. At the
    paper's batch of 128 conv1's output is over SLICE_ABOVE_OUTPUTS, below it at 96."""
    x = torch.randn(1, 3, 224, 224)
    assert AlexNet().conv1._outputs(x.expand(128, -1, -1, -1)) > conv.SLICE_ABOVE_OUTPUTS
    assert AlexNet().conv1._outputs(x.expand(96, -1, -1, -1)) < conv.SLICE_ABOVE_OUTPUTS
    monkeypatch.setattr(conv, "SLICE_ABOVE_OUTPUTS", 0)
    slices = []
    real = conv._convolution_backward
    monkeypatch.setattr(conv, "_convolution_backward", lambda *a: slices.append(a[1].shape[0]) or real(*a))
    torch.manual_seed(0)
    net = AlexNet()
    x, y = torch.randn(66, 3, 224, 224) * 50, torch.randint(0, 1000, (66,))
    grads = []
    for sliced in (True, False):
        if not sliced:
            monkeypatch.setattr(conv, "WEIGHT_GRADIENT_BATCH", 10**9)
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        F.cross_entropy(net(x), y).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert slices == [64, 2]  # conv1 only, and only in the first step
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
