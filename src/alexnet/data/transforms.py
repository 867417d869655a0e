"""The preprocessing a net expects, one image at a time, as `AlexNet.transforms()` returns it.

An image becomes the net's input in two steps, the same for `alexnet predict`, `alexnet.extract`,
`alexnet.evaluate` and `net.transforms()`, so all four feed the net the same bits:

1. §2: `store_pixels` - "rescaled the image such that the shorter side was of length S, and then
   cropped out the central S x S patch" (alexnet.data.image: Lanczos, EXIF orientation applied, any
   mode converted to RGB), from a path, a PIL image or an H x W x 3 uint8 array;
2. §4.1: the centre patch or the ten patches of it, minus the mean image the net was trained with
   (alexnet.data.augment.BatchTransforms.test).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alexnet.config import DataConfig
from alexnet.data.augment import BatchTransforms
from alexnet.data.image import ORIENTATIONS, BadImage, load_image, resize_and_center_crop, to_rgb
from alexnet.errors import UserError, printable


def store_pixels(image, size: int) -> np.ndarray:
    """§2: the (size, size, 3) uint8 RGB square of an image as a store holds it. `image`: a path (read
    as `alexnet prepare` and `alexnet predict` read files), a PIL image (its EXIF orientation applied
    too), an (H, W, 3), (H, W) or (H, W, 4) uint8 array or tensor. Raises BadImage for a file that is
    not an image and UserError for an array that is not 8-bit pixels."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, size)[0]
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise UserError(f"an image array must be H x W x 3 (or H x W, H x W x 4) uint8 on 0..255, got "
                            f"{image.dtype} {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    if not isinstance(image, Image.Image):
        raise UserError(f"an image is a path, a PIL image or an H x W x 3 uint8 array, not {type(image).__name__}")
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation in ORIENTATIONS:
        image = image.transpose(ORIENTATIONS[orientation])
    return np.asarray(resize_and_center_crop(to_rgb(image, []), size), dtype=np.uint8)


def image_name(image, index: int) -> str:
    """How a message names an input: its path, or its place in the list."""
    return printable(str(image)) if isinstance(image, (str, os.PathLike)) else f"image {index}"


class Preprocess:
    """`net.transforms(views)`: an image -> the net's input, float32 contiguous NCHW on the CPU: (3, c, c)
    for the centre patch, (10, 3, c, c) for §4.1's ten (the five unmirrored ones, (5, 3, c, c), for a run
    trained without reflections: what `predict` averages). `batch(pixels)` does many (B, S, S, 3) store
    images at once."""

    def __init__(self, mean, crop: int, views: int = 1, config: DataConfig = DataConfig()):
        if views not in (1, 10):
            raise UserError(f"views must be 1 (the centre patch) or 10 (§4.1's ten patches), got {views}")
        mean = torch.as_tensor(mean).detach().to("cpu", torch.float32)
        self.test = BatchTransforms(mean, np.ones(3), np.eye(3), crop, config)  # no PCA: no noise at test time
        self.image_size, self.crop, self.views, self.config = int(mean.shape[0]), crop, views, config
        self.patches = 5 if views == 10 and not config.flip else views

    def batch(self, pixels) -> Tensor:
        """(B, S, S, 3) uint8 store images -> (B * patches, 3, c, c), image-major."""
        x = self.test.test(pixels, self.views)
        if self.patches != self.views:  # ten_crop's order: the five patches, then their reflections
            x = x.unflatten(0, (-1, self.views))[:, : self.patches].flatten(0, 1)
        return x.contiguous()

    def __call__(self, image) -> Tensor:
        try:
            pixels = store_pixels(image, self.image_size)
        except BadImage as e:
            raise UserError(f"{image_name(image, 0)}: {e}") from None
        x = self.batch(torch.from_numpy(np.stack([pixels])))  # a writable copy (Pillow's arrays are read-only)
        return x[0] if self.views == 1 else x

    def __repr__(self) -> str:
        return (f"Preprocess(shorter side to {self.image_size}, centre {self.image_size} square, "
                f"{'centre patch' if self.views == 1 else f'{self.patches} patches'} {self.crop}x{self.crop}, "
                f"minus the mean image)")

