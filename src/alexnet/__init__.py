"""alexnet: the system of Krizhevsky, Sutskever & Hinton (2012), ImageNet Classification with Deep
Convolutional Neural Networks, as a package: data store and augmentation (§2, §4.1), the two-tower
network (§3), the training recipe (§5), evaluation and the qualitative analyses (§6)."""

__version__ = "0.1.0"
