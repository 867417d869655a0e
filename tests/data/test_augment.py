"""§4.1 batch transforms against NumPy slicing and the paper's lighting formula."""

import numpy as np
import pytest
import torch

from alexnet.config import DataConfig
from alexnet.data.augment import (
    BatchTransforms,
    center_crop,
    crop_and_flip,
    crop_params,
    lighting_noise,
    ten_crop,
    ten_crop_offsets,
)


def images(n=6, size=20, seed=0):
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_and_flip_matches_numpy_slicing():
    x = images(8, 20)
    top = torch.tensor([0, 1, 2, 3, 4, 0, 6, 6])
    left = torch.tensor([6, 5, 4, 3, 2, 0, 0, 6])
    flip = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0]).bool()
    out = crop_and_flip(x, top, left, flip, 14)
    assert out.shape == (8, 14, 14, 3) and out.dtype == torch.uint8
    xn = x.numpy()
    for b in range(8):
        ref = xn[b, top[b] : top[b] + 14, left[b] : left[b] + 14]
        if flip[b]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(out[b].numpy(), ref)


def test_crop_and_flip_of_one_image_gives_each_patch_of_it():
    mean = torch.rand(1, 12, 12, 3, dtype=torch.float64)
    top, left, flip = torch.tensor([0, 4, 2]), torch.tensor([4, 0, 1]), torch.tensor([True, False, True])
    out = crop_and_flip(mean, top, left, flip, 8)
    for b in range(3):
        ref = mean[0, top[b] : top[b] + 8, left[b] : left[b] + 8]
        torch.testing.assert_close(out[b], ref.flip(1) if flip[b] else ref)


def test_random_crops_cover_every_position_and_flip_half():
    top, left, flip = crop_params(20_000, 256, 224, gen(1))
    assert top.min() == 0 and top.max() == 32 and left.min() == 0 and left.max() == 32
    assert len(torch.unique(top * 33 + left)) == 33 * 33  # all 1089 positions occur
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    _, _, never = crop_params(100, 256, 224, gen(1), flip=False)
    assert not never.any()


def test_training_augmentation_is_deterministic_under_a_seed():
    t, _ = _transforms()
    x = images(16, 20)
    a, b, c = t.train(x, gen(3)), t.train(x, gen(3)), t.train(x, gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_center_crop_and_the_ten_views():
    x = images(3, 20)
    xn = x.numpy()
    np.testing.assert_array_equal(center_crop(x, 14).numpy(), xn[:, 3:17, 3:17])
    views = ten_crop(x, 14)
    assert views.shape == (3, 10, 14, 14, 3)
    expected = [(0, 0), (0, 6), (6, 0), (6, 6), (3, 3)]
    assert ten_crop_offsets(20, 14) == expected
    for v, (t, l) in enumerate(expected):
        patch = xn[:, t : t + 14, l : l + 14]
        np.testing.assert_array_equal(views[:, v].numpy(), patch)
        np.testing.assert_array_equal(views[:, v + 5].numpy(), patch[:, :, ::-1])
    # the five positions are distinct, and the mirror views differ from the originals
    assert len({tuple(p.flatten().tolist()) for p in views[0, :5].reshape(5, -1)}) == 5


def test_lighting_offset_is_the_papers_formula_with_one_draw_per_image():
    eigvals = torch.tensor([30.0, 5.0, 1.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=gen(0)))
    # what training runs, on black images with a zero mean, the crop the whole image, no reflection,
    # and the printed formula's magnitudes: all that is left is the lighting offset
    config = DataConfig(flip=False, lighting_magnitude="eigenvalue")
    t = BatchTransforms(np.zeros((5, 5, 3)), eigvals.numpy(), q.numpy(), 5, config)
    out = t.train(torch.zeros(4, 5, 5, 3, dtype=torch.uint8), gen(7)).permute(0, 2, 3, 1).double()
    g = gen(7)
    crop_params(4, 5, 5, g, flip=False)  # the crop's draws come first
    alpha = torch.randn(4, 3, generator=g, dtype=torch.float32).double() * 0.1  # then the same draws
    for b in range(4):
        expected = q @ (alpha[b] * eigvals)  # [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
        torch.testing.assert_close(out[b], expected.expand(5, 5, 3), rtol=1e-5, atol=1e-5)


def test_lighting_noise_statistics():
    eigvals = torch.tensor([40.0, 8.0, 2.0])
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(1)))
    noise = lighting_noise(200_000, eigvals, q, 0.1, gen(2)).double()
    assert noise.mean(0).abs().max() < 0.05
    # projected back on the eigenvectors: independent N(0, (0.1 lambda_i)^2)
    alphas = noise @ q.double() / eigvals.double()
    torch.testing.assert_close(alphas.std(0), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.01, atol=0)
    corr = torch.corrcoef(alphas.T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.01
    cov = torch.cov(noise.T)
    torch.testing.assert_close(cov, (q @ torch.diag((0.1 * eigvals) ** 2) @ q.T).double(), rtol=0.02, atol=0.01)


def _transforms(config=DataConfig(), size=20, crop=16):
    rng = np.random.default_rng(9)
    mean = rng.uniform(0, 255, (size, size, 3))
    return BatchTransforms(mean, np.array([400.0, 25.0, 4.0]), np.eye(3), crop, config), mean


def test_train_pipeline_is_crop_minus_aligned_mean_plus_one_colour_shift_per_image():
    t, mean = _transforms()
    x = images(5, 20)
    out = t.train(x, gen(11))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    top, left, flip = crop_params(5, 20, 16, gen(11))
    crops = crop_and_flip(x, top, left, flip, 16).double().numpy()
    mean_crops = crop_and_flip(torch.from_numpy(mean)[None], top, left, flip, 16).numpy()
    residual = out.permute(0, 2, 3, 1).double().numpy() - (crops - mean_crops)
    # what is left is one RGB offset per image, constant over its pixels ...
    per_image = residual.reshape(5, -1, 3)
    assert np.abs(per_image - per_image[:, :1]).max() < 1e-3
    # ... of magnitude sqrt(lambda) * N(0, 0.1): "stddev" scaling, here with eigvecs = identity
    offsets = per_image[:, 0]
    assert np.abs(offsets).max() < 0.1 * 20 * 5 and np.abs(offsets).max() > 0


def test_train_pipeline_switches():
    x = images(4, 20)
    t, mean = _transforms(DataConfig(lighting_std=0.0, flip=False, mean="center"))
    out = t.train(x, gen(5)).permute(0, 2, 3, 1).double().numpy()
    top, left, _ = crop_params(4, 20, 16, gen(5), flip=False)
    for b in range(4):
        ref = x[b, top[b] : top[b] + 16, left[b] : left[b] + 16].double().numpy() - mean[2:18, 2:18]
        np.testing.assert_allclose(out[b], ref, rtol=1e-5, atol=1e-4)
    # the printed formula's eigenvalue scaling is sqrt(lambda) times larger than the code's
    a, _ = _transforms(DataConfig(lighting_magnitude="eigenvalue"))
    b, _ = _transforms(DataConfig(lighting_magnitude="stddev"))
    torch.testing.assert_close(a.magnitudes, b.magnitudes**2)


def test_test_views_subtract_the_mean_at_their_own_positions():
    t, mean = _transforms()
    x = images(2, 20)
    one = t.test(x, 1).permute(0, 2, 3, 1).double().numpy()
    np.testing.assert_allclose(one, x.numpy()[:, 2:18, 2:18] - mean[2:18, 2:18], rtol=1e-5, atol=1e-4)
    ten = t.test(x, 10)
    assert ten.shape == (20, 3, 16, 16)
    views = ten.reshape(2, 10, 3, 16, 16).permute(0, 1, 3, 4, 2).double().numpy()
    for v, (top, left) in enumerate(ten_crop_offsets(20, 16)):
        ref = x.numpy()[:, top : top + 16, left : left + 16] - mean[top : top + 16, left : left + 16]
        np.testing.assert_allclose(views[:, v], ref, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(views[:, v + 5], ref[:, :, ::-1], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        t.test(x, 5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transforms_on_cuda_match_cpu():
    t_cpu, mean = _transforms()
    t_gpu = BatchTransforms(mean, np.array([400.0, 25.0, 4.0]), np.eye(3), 16, DataConfig(), "cuda")
    x = images(8, 20)
    g = torch.Generator("cuda").manual_seed(0)
    out = t_gpu.train(x.cuda(), g)
    assert out.device.type == "cuda"
    torch.testing.assert_close(t_gpu.test(x.cuda(), 10).cpu(), t_cpu.test(x, 10))


# ---------------------------------------------------------------------------------------------------
# Images that are not square, inputs as users have them, the lighting convention
# ---------------------------------------------------------------------------------------------------


def test_training_crops_and_test_views_cover_a_wide_image_whole():
    """On H x W stored images (here 20 x 28, as 256 x 320) the crops reach every column: the right-hand
    W - H columns were never touched when the corners were drawn from the height alone."""
    top, left, _ = crop_params(4000, (20, 28), 16, gen(3))
    assert int(top.max()) == 4 and int(left.max()) == 12 and int(left.min()) == 0
    assert ten_crop_offsets((20, 28), 16) == [(0, 0), (0, 12), (4, 0), (4, 12), (2, 6)]
    assert ten_crop_offsets(20, 16) == ten_crop_offsets((20, 20), 16)
    # the pipelines: every pixel of the image is in some training crop, and in some test view
    ramp = torch.arange(20 * 28, dtype=torch.float32).reshape(1, 20, 28, 1).expand(1, 20, 28, 3)
    config = DataConfig(flip=False, lighting_std=0.0)
    t = BatchTransforms(np.zeros((20, 28, 3)), np.ones(3), np.eye(3), 16, config)
    seen = set(t.train(ramp.expand(300, 20, 28, 3), gen(4))[:, 0].flatten().long().tolist())
    assert seen == set(range(20 * 28))
    views = set(t.test(ramp, views=10)[:, 0].flatten().long().tolist())
    assert views == set(range(20 * 28))
    centre = t.test(ramp)[0, 0]  # the central 16 x 16: rows 2..17, columns 6..21
    assert int(centre[0, 0]) == 2 * 28 + 6 and int(centre[-1, -1]) == 17 * 28 + 21


def test_transforms_take_what_users_have():
    """NHWC uint8 (the store's), NCHW, float 0..255, NumPy and a single image give the same patches."""
    from alexnet.data.augment import image_batch

    t, _ = _transforms()
    x = images(3, 20, seed=4)
    want = t.test(x, views=10)
    for given in (x.permute(0, 3, 1, 2), x.float(), x.numpy(), x.permute(0, 3, 1, 2).double().numpy()):
        torch.testing.assert_close(t.test(given, views=10), want)
        torch.testing.assert_close(t.train(given, gen(5)), t.train(x, gen(5)))
    torch.testing.assert_close(t.test(x[1].numpy()), t.test(x)[1:2])
    assert image_batch(x) is x  # the store's own batches pass through untouched
    with pytest.raises(ValueError, match="3, H, W"):
        image_batch(np.zeros((4, 5, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8 or floating"):
        image_batch(np.zeros((5, 5, 3), np.int32))


def test_the_lighting_convention_is_one_rule_from_the_stores_eigenvalues():
    """The store keeps eigenvalues (variances of 0..255 pixels); BatchTransforms turns them into the
    magnitudes `lighting_noise` multiplies: their square roots by default, themselves as printed."""
    from alexnet.data.augment import lighting_magnitudes

    eigvals = np.array([400.0, 25.0, -1e-9])  # a rounding error below 0 counts as 0
    torch.testing.assert_close(lighting_magnitudes(eigvals), torch.tensor([20.0, 5.0, 0.0]))
    torch.testing.assert_close(lighting_magnitudes(eigvals, "eigenvalue"), torch.tensor([400.0, 25.0, 0.0]))
    for convention in ("stddev", "eigenvalue"):
        t = BatchTransforms(np.zeros((4, 4, 3)), eigvals, np.eye(3), 4, DataConfig(lighting_magnitude=convention))
        torch.testing.assert_close(t.magnitudes, lighting_magnitudes(eigvals, convention))
    with pytest.raises(ValueError, match="3 eigenvalues"):
        BatchTransforms(np.zeros((4, 4, 3)), eigvals[:2], np.eye(3), 4)


def test_with_mean_swaps_the_mean_image_and_resizes_a_constant_one_exactly():
    t, mean = _transforms()
    other, resized = t.with_mean(np.full((32, 32, 3), 7.0))
    assert resized and other.mean.shape == (20, 20, 3) and torch.all(other.mean == 7.0)
    x = images(2, 20, seed=6)
    torch.testing.assert_close(other.test(x), t.test(x) + t.center_mean.permute(2, 0, 1) - 7.0)
    same, resized = t.with_mean(mean)
    assert not resized and torch.equal(same.test(x, views=10), t.test(x, views=10))
