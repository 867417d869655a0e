"""§4.1 augmentation and the test views, as pure functions on whole batches, on the batch's device.

Images are (B, H, W, 3) tensors as the store holds them (uint8, 0..255); `BatchTransforms` also takes
what users have (`image_batch`: arrays, one image, channels first, floats on 0..255). Every function
takes an explicit `torch.Generator` where it draws. Crops and the ten patches cover the whole image,
square or not (H x W). `BatchTransforms` strings them together for training (random crop + reflection,
minus the mean image, plus PCA colour noise) and testing (centre or ten patches) and returns
(B, 3, crop, crop) float32 in channels_last memory, which is what a (B, H, W, 3) batch is.

The colour noise's convention, once: `BatchTransforms` takes the PCA as the store keeps it, the
eigenvalues lambda_i of the 3x3 covariance of the training pixels (0..255 scale, variances) and the
eigenvectors p_i as columns (numpy.linalg.eigh's layout); `lighting_magnitudes` turns the eigenvalues
into the magnitudes the noise multiplies, sqrt(lambda_i) by default (the authors' code) or lambda_i
(§4.1's printed formula), as `DataConfig.lighting_magnitude` says; `lighting_noise` takes magnitudes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from alexnet.config import DataConfig


def image_batch(images, device: torch.device | str | None = None) -> Tensor:
    """What users have as the (B, H, W, 3) batch the functions here take: a tensor or a NumPy array, one
    image or a batch, channels last (H, W, 3) or first (3, H, W), uint8 or floats on the 0..255 scale.
    A (B, H, W, 3) tensor comes back as it is (no copy)."""
    t = torch.as_tensor(images)
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or 3 not in (t.shape[1], t.shape[3]):
        raise ValueError(f"images must be (H, W, 3), (3, H, W) or a batch of them, got {tuple(t.shape)}")
    if t.shape[3] != 3:
        t = t.permute(0, 2, 3, 1)
    if t.dtype != torch.uint8 and not t.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating point on the 0..255 scale, got {t.dtype}")
    return t if device is None else t.to(device)


def crop_params(n: int, image_size: int | tuple[int, int], crop: int, generator: torch.Generator,
                flip: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Top and left corners, uniform over the (H - crop + 1) x (W - crop + 1) positions of an H x W
    image (`image_size` an int for a square: 2048 = 32^2 * 2 patches with reflections for 224 of 256,
    §4.1), and a fair coin for the reflection."""
    device = generator.device
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    top = torch.randint(0, h - crop + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - crop + 1, (n,), generator=generator, device=device)
    if flip:
        mirror = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    else:
        mirror = torch.zeros(n, dtype=torch.bool, device=device)
    return top, left, mirror


def _patch_pixels(top: Tensor, left: Tensor, flip: Tensor, crop: int, h: int, w: int, per_image: bool) -> Tensor:
    """(B, crop, crop) row numbers into a (B*h*w, C) view of the images (or a (h*w, C) view of one
    image shared by the batch, per_image=False) that read each patch, mirrored where flip."""
    device = top.device
    ar = torch.arange(crop, device=device)
    rows = top[:, None] + ar  # (B, crop)
    cols = left[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)  # (B, crop)
    pixel = rows[:, :, None] * w + cols[:, None, :]
    if per_image:
        pixel += torch.arange(len(top), device=device)[:, None, None] * (h * w)
    return pixel


def crop_and_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, crop: int) -> Tensor:
    """(B, H, W, C) -> (B, crop, crop, C): image b's patch at (top[b], left[b]), mirrored left-right
    where flip[b]. One `index_select` of pixel rows for the whole batch (4x faster on CPU than
    advanced indexing with three index tensors). A single (1, H, W, C) image gives every patch of it."""
    n, h, w, c = images.shape
    dev = images.device
    pixel = _patch_pixels(top.to(dev), left.to(dev), flip.to(dev), crop, h, w, per_image=n > 1)
    return images.reshape(n * h * w, c).index_select(0, pixel.reshape(-1)).reshape(len(top), crop, crop, c)


def center_crop(images: Tensor, crop: int) -> Tensor:
    """(B, H, W, C) -> (B, crop, crop, C), the central patch (a view, no copy)."""
    h, w = images.shape[1:3]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[:, top : top + crop, left : left + crop]


def ten_crop_offsets(image_size: int | tuple[int, int], crop: int) -> list[tuple[int, int]]:
    """(top, left) of the four corner patches (top-left, top-right, bottom-left, bottom-right) and the
    centre patch of an H x W image (an int: square), §4.1."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    bottom, right = h - crop, w - crop
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]


def ten_crop(images: Tensor, crop: int) -> Tensor:
    """(B, H, W, C) -> (B, 10, crop, crop, C): §4.1's test patches, the five of `ten_crop_offsets`
    and then their horizontal reflections in the same order."""
    views = [images[:, t : t + crop, l : l + crop] for t, l in ten_crop_offsets(tuple(images.shape[1:3]), crop)]
    views += [v.flip(2) for v in views]
    return torch.stack(views, 1)


def lighting_magnitudes(eigvals, convention: str = "stddev") -> Tensor:
    """The l_i of §4.1's noise from the eigenvalues lambda_i of the RGB covariance (variances, 0..255
    scale; a negative rounding error counts as 0): sqrt(lambda_i) for "stddev" (cuda-convnet2's
    `color_stdevs`, the default), lambda_i itself for "eigenvalue" (the formula as printed)."""
    if convention not in ("stddev", "eigenvalue"):
        raise ValueError(f"the lighting magnitude is 'stddev' or 'eigenvalue', got {convention!r}")
    eigvals = torch.as_tensor(eigvals, dtype=torch.float32).clamp_min(0)
    return eigvals.sqrt() if convention == "stddev" else eigvals


def lighting_noise(n: int, magnitudes: Tensor, eigvecs: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """(n, 3) RGB offsets [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with a_i ~ N(0, std^2), one draw per image
    (§4.1). `eigvecs` holds p_i as columns; `magnitudes` the l_i (`lighting_magnitudes` of the eigenvalues)."""
    alpha = torch.randn(n, 3, generator=generator, device=generator.device) * std
    return (alpha * magnitudes.to(alpha.device)) @ eigvecs.to(alpha.device).T


def to_nchw(images: Tensor) -> Tensor:
    """(B, H, W, 3) -> (B, 3, H, W) as a view: channels_last memory, which convolutions like best."""
    return images.permute(0, 3, 1, 2)


class BatchTransforms:
    """The training and test pipelines of §4.1 for one store, with its statistics on `device`."""

    def __init__(self, mean, eigvals, eigvecs, crop: int, config: DataConfig = DataConfig(),
                 device: torch.device | str = "cpu"):
        """`mean`: the (S, S, 3) mean image; `eigvals` (3,), `eigvecs` (3, 3): the PCA of the RGB
        pixels as the store keeps it (`ImageStore.pca`: eigenvalues, eigenvectors as columns)."""
        self.device = torch.device(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)  # (S, S, 3)
        self.image_size = self.mean.shape[0]
        self.crop = crop
        self.config = config
        if np.shape(eigvals) != (3,) or np.shape(eigvecs) != (3, 3):
            raise ValueError(f"the PCA is 3 eigenvalues and a 3x3 matrix of eigenvectors, got "
                             f"{np.shape(eigvals)} and {np.shape(eigvecs)}")
        # §4.1 prints lambda_i; the authors' code scales by its square root (see DataConfig).
        self.magnitudes = lighting_magnitudes(eigvals, config.lighting_magnitude).to(self.device)
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32, device=self.device)
        self.center_mean = center_crop(self.mean[None], crop)[0]

    @classmethod
    def for_store(cls, store, crop: int, config: DataConfig = DataConfig(), device="cpu") -> "BatchTransforms":
        eigvals, eigvecs = store.pca
        return cls(store.mean, eigvals, eigvecs, crop, config, device)

    def with_mean(self, mean) -> tuple[BatchTransforms, bool]:
        """The same pipeline subtracting another (S', S', 3) mean image (a fine-tuned net keeps its
        source's, §2), and whether it had to be resized (bilinear, antialiased) to these images' S x S:
        exact for a mean that is one colour everywhere (the imported nets' per-channel means)."""
        mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        resized = tuple(mean.shape) != tuple(self.mean.shape)
        size = tuple(self.mean.shape[:2])
        if resized and bool((mean == mean[:1, :1]).all()):  # one colour everywhere: the same colour
            mean = mean[:1, :1].expand(*size, 3)
        elif resized:
            mean = torch.nn.functional.interpolate(mean.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                                   antialias=True, align_corners=False)[0].permute(1, 2, 0)
        other = copy.copy(self)
        other.mean = mean.contiguous()
        other.center_mean = center_crop(other.mean[None], self.crop)[0]
        return other, resized

    def train(self, images: Tensor, generator: torch.Generator, start: int = 0, total: int | None = None) -> Tensor:
        """uint8 (B, H, W, 3) (or what `image_batch` takes) -> float32 (B, 3, crop, crop) on the device.

        With `total`, the random draws are made for a batch of `total` images and images get rows
        start..start+B of them: a process holding one slice of a distributed batch draws what a
        single process holding the whole batch would."""
        c = self.config
        images = image_batch(images, self.device)
        n = images.shape[0]
        total = n if total is None else total
        top, left, flip = (t[start : start + n] for t in crop_params(total, tuple(images.shape[1:3]), self.crop,
                                                                     generator, c.flip))
        x = crop_and_flip(images, top, left, flip, self.crop).float()
        if c.mean == "aligned":
            x -= crop_and_flip(self.mean[None], top, left, flip, self.crop)
        else:
            x -= self.center_mean
        if c.lighting_std > 0:
            noise = lighting_noise(total, self.magnitudes, self.eigvecs, c.lighting_std, generator)[start : start + n]
            x += noise[:, None, None, :]
        return to_nchw(x)

    def test(self, images: Tensor, views: int = 1) -> Tensor:
        """uint8 (B, H, W, 3) (or what `image_batch` takes) -> float32 (B, 3, crop, crop) for the centre patch, or
        (B * 10, 3, crop, crop), image-major, for the ten patches."""
        images = image_batch(images, self.device)
        if views == 1:
            return to_nchw(center_crop(images, self.crop).float() - self.center_mean)
        if views != 10:
            raise ValueError(f"test views must be 1 or 10, got {views}")
        x = ten_crop(images, self.crop).float()  # (B, 10, c, c, 3)
        if self.config.mean == "aligned":
            x -= ten_crop(self.mean[None], self.crop)
        else:
            x -= self.center_mean
        return to_nchw(x.flatten(0, 1))
