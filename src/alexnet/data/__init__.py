"""Data (§2, §4.1): `alexnet prepare` writes a store once; `ImageStore` reads it; `augment` holds the
batch transforms that run on the device; `loader` feeds batches of uint8 images to it."""

from alexnet.data.store import ImageStore

__all__ = ["ImageStore"]
