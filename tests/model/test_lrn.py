"""alexnet.model.lrn: the channel-window sum (§3.3's sum over n adjacent maps) in every way it is computed,
the layer eager and compiled, against float64 (the CPU operator on its own: test_lrn_op.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.model import lrn
from alexnet.model.lrn import _blocks, _window_sum, channel_window_sum, local_response_norm


def np_window_sum(t: np.ndarray, size: int, groups: int) -> np.ndarray:
    """§3.3's bounds, j from max(0, i - n/2) to min(N - 1, i + n/2), within each group of maps."""
    c = t.shape[1]
    n = c // groups
    out = np.zeros_like(t)
    for i in range(c):
        first, last = (i // n) * n, (i // n) * n + n - 1
        out[:, i] = t[:, max(first, i - size // 2): min(last, i + size // 2) + 1].sum(1)
    return out


@pytest.mark.parametrize("channels,size,groups", [(12, 5, 2), (12, 5, 1), (7, 3, 1), (3, 7, 1), (8, 1, 2), (96, 5, 2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_window_sum_matches_the_bounds_of_the_formula(channels, size, groups, layout):
    torch.manual_seed(channels + size)
    t = torch.rand(2, channels, 4, 3, dtype=torch.float64)
    ref = np_window_sum(t.numpy(), size, groups)
    band = channel_window_sum(t.contiguous(memory_format=layout), size, groups, weight=0.5)
    np.testing.assert_allclose(band.numpy(), 0.5 * ref, rtol=1e-13)
    assert band.is_contiguous(memory_format=layout)
    # the shifted adds used off the CPU compute the same sums
    shifted = _window_sum(_blocks(t.contiguous(memory_format=layout), groups), size, 1.0, None)
    np.testing.assert_allclose(lrn._unblocks(shifted, t.contiguous(memory_format=layout)).numpy(), ref, rtol=1e-13)


def test_window_sum_stays_float32_under_autocast():
    """A bf16 matmul would round the sum of squares; autocast must not reach the band product."""
    t = torch.rand(2, 16, 5, 5) * 100
    ref = np_window_sum(t.double().numpy(), 5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = channel_window_sum(t, 5, 2)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_and_inference_paths_agree(dtype):
    torch.manual_seed(0)
    a = (torch.rand(2, 16, 6, 6) * 80).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        inference = local_response_norm(a, groups=2)
    training = local_response_norm(a.clone().requires_grad_(), groups=2)
    assert inference.dtype == training.dtype == dtype
    torch.testing.assert_close(training.detach(), inference, rtol=0, atol=0)
    # and in bf16 both are the float32 result rounded once
    ref = local_response_norm(a.float(), groups=2)
    torch.testing.assert_close(inference.float(), ref.to(dtype).float(), rtol=0, atol=0)
    # and so is the gradient
    g = torch.randn(a.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    x, x32 = a.clone().requires_grad_(), a.float().requires_grad_()
    local_response_norm(x, groups=2).backward(g)
    local_response_norm(x32, groups=2).backward(g.float())
    assert x.grad.dtype == dtype and x32.grad.abs().max() > 0
    torch.testing.assert_close(x.grad, x32.grad.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lrn_matches_the_formula_and_its_gradient(layout):
    torch.manual_seed(1)
    a = (torch.rand(3, 12, 5, 3, dtype=torch.float64) * 80).contiguous(memory_format=layout)
    alpha = 1e-3  # large, so the cross-map term of the gradient matters
    ref = a.numpy() / (2.0 + alpha * np_window_sum(a.numpy() ** 2, 5, 2)) ** 0.75
    np.testing.assert_allclose(local_response_norm(a, 5, alpha, 0.75, 2.0, groups=2).numpy(), ref, rtol=1e-12)
    x = a.clone().requires_grad_()
    out = local_response_norm(x, 5, alpha, 0.75, 2.0, groups=2)
    assert out.is_contiguous(memory_format=layout)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12)
    g = torch.randn(a.shape, dtype=torch.float64)
    out.backward(g)
    # autograd through the formula, the window sum written out with the formula's bounds per tower
    b = a.clone().requires_grad_()
    sq = b * b
    window = torch.cat([torch.stack([tower[:, max(0, i - 2): i + 3].sum(1) for i in range(6)], 1)
                        for tower in sq.split(6, 1)], 1)
    (b / (2.0 + alpha * window) ** 0.75 * g).sum().backward()
    torch.testing.assert_close(x.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_lrn_traces_as_one_graph():
    """torch.compile (`--compile`) takes the layer whole, for inference and training: no graph break."""
    x = (torch.rand(2, 96, 3, 3) * 80).contiguous(memory_format=torch.channels_last)
    for t in (x, x.clone().requires_grad_()):
        explained = torch._dynamo.explain(lambda t: local_response_norm(t, groups=2))(t)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("layer", [lrn.lrn_formula, local_response_norm], ids=["formula", "layer"])
@pytest.mark.parametrize("relu", [False, True])
def test_the_compiled_layer_matches_float64_forward_and_backward(relu, layer):  # relu: as the net feeds it
    """What `torch.compile` runs against §3.3 in float64, the window stopping at each tower's
    boundary, in channels_last as the net feeds it: `lrn_formula` differentiated by inductor (what it
    fuses on CUDA) and the layer (on the CPU the operator, where it builds)."""
    torch.manual_seed(0)
    a = (torch.randn(2, 12, 3, 4, dtype=torch.float64) * 40).contiguous(memory_format=torch.channels_last)
    alpha = 1e-3  # large, so the cross-map term of the gradient matters
    compiled = torch.compile(lambda t: layer(torch.relu(t) if relu else t, 5, alpha, 0.75, 2.0, 2))
    x = a.float().requires_grad_()
    out = compiled(x)
    b = a.clone().requires_grad_()
    base = torch.relu(b) if relu else b
    sq = base * base
    window = torch.cat([torch.stack([tower[:, max(0, i - 2): i + 3].sum(1) for i in range(6)], 1)
                        for tower in sq.split(6, 1)], 1)
    ref = base / (2.0 + alpha * window) ** 0.75
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-5)
    g = torch.randn(a.shape, dtype=torch.float64)
    out.backward(g.float())
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.double(), b.grad, rtol=1e-5, atol=1e-6)
