"""Data (§2, §4.1). `alexnet prepare` (prepare.py: scan with source.py, convert with convert.py and
image.py, finalise) writes a store once; `ImageStore` (store.py) reads it; `augment` holds the batch
transforms that run on the device; `loader` feeds batches of uint8 images to it; cifar.py reads
CIFAR-10's batches for Fig. 1; demo.py draws a small learnable data set. Nothing here imports
training, analysis or the CLI."""

from alexnet.data.store import ImageStore

__all__ = ["ImageStore"]
