"""alexnet.lrn's channel-window sum (§3.3's sum over n adjacent maps), in every way it is computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.lrn import _power, _shifted_window_sum, channel_window_sum, local_response_norm


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
    np.testing.assert_allclose(_shifted_window_sum(t.contiguous(memory_format=layout), size, groups).numpy(), ref,
                               rtol=1e-13)


def test_window_sum_stays_float32_under_autocast():
    """A bf16 matmul would round the sum of squares; autocast must not reach the band product."""
    t = torch.rand(2, 16, 5, 5) * 100
    ref = np_window_sum(t.double().numpy(), 5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = channel_window_sum(t, 5, 2)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


def test_power_by_exp_log_matches_pow():
    s = 2.0 + torch.rand(1000, dtype=torch.float64) * 50
    for exponent in (-0.75, -0.5, -1.3):
        np.testing.assert_allclose(_power(s, exponent).numpy(), s.numpy() ** exponent, rtol=1e-13)
        np.testing.assert_allclose(_power(s.clone(), exponent, in_place=True).numpy(), s.numpy() ** exponent,
                                   rtol=1e-13)
    s32 = s.float()
    np.testing.assert_allclose(_power(s32, -0.75).numpy(), s.numpy() ** -0.75, rtol=1e-6)


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
