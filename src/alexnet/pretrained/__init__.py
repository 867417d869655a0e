"""The public ImageNet weights of AlexNet as ordinary checkpoints of this project (`alexnet import`).

`caffe` reads Caffe's bvlc_alexnet (the paper's two-tower net) without Caffe, `torchvision` reads
torchvision's state dict (the 2014 single-tower variant); `classes` ships the 1,000 ILSVRC-2012
class ids and names. Each source's conventions become ModelConfig values (alexnet.config), so every
command treats the result like a checkpoint it trained itself. docs/pretrained.md tells the story.
"""

from __future__ import annotations

import os

from alexnet.model.checkpoint import save_checkpoint


def write_checkpoint(payload: dict, out: str | os.PathLike) -> None:
    """The payload of `import_caffe` / `import_torchvision`, written atomically like a training run's."""
    save_checkpoint(out, payload)
