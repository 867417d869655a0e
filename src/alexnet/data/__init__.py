"""§2 The dataset and §4.1 data augmentation: images into a store once, batches out of it.

    prepare.py      `alexnet prepare`: scan (source.py), convert in worker processes (convert.py,
                    image.py: decode, shorter side to S, centre crop), finalise (mean image, RGB PCA)
    store.py        `ImageStore`: the store's format and reader
    augment.py      §4.1's batch transforms on the device: crops, reflections, PCA lighting, ten patches
    transforms.py   one image -> a net's input (§2's square, §4.1's patches minus the mean): net.transforms()
    folder.py       a plain class-folder tree as a Dataset; batches of store pixels from any images
    loader.py       threads that feed batches of uint8 images to the device
    progress.py     progress and the log of a long preparation
    cifar.py        CIFAR-10's python batches, read safely (Fig. 1)
    digits.py       scikit-learn's UCI digits as an image tree (real data, no download)
    demo_images.py  the demo's generated classes of shapes and textures

Nothing here imports training, evaluation or the CLI.
"""

from alexnet.data.store import ImageStore

__all__ = ["ImageStore"]
