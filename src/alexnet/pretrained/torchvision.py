"""torchvision's `alexnet` weights (alexnet-owt-*.pth, a state dict) as a checkpoint of this project.

That net is Krizhevsky's 2014 "one weird trick" single-tower variant, not Fig. 2: 64, 192, 384, 256,
256 kernels, no response normalisation, no groups, conv1 padded by 2 for a 224 input, pooling rounded
down, an adaptive average pool to 6x6 after pool5, inverted dropout, and inputs x/255 normalised by
ImageNet's per-channel mean m and std s. (x/255 - m)/s = (x - 255 m) / (255 s): the constant image
255 m is the checkpoint's mean and 1/(255 s) the net's `input_scale`, so the project's pipeline (RGB
0..255 minus the mean) feeds it unchanged.

Only the state dict is read, with torch.load(weights_only=True) after its sizes are checked
(alexnet.torch_file): a .pth is data, never code, and never more memory than its bytes. At test
time dropout does nothing, so torchvision's placement (before fc6 and fc7) and this net's (after fc6
and fc7, §4.2) compute the same; fine-tuning drops fc6's and fc7's outputs as the paper does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from alexnet.config import ModelConfig
from alexnet.errors import UserError
from alexnet.pretrained.classes import class_list
from alexnet.pretrained.common import build_payload, state_shapes
from alexnet.torch_file import read_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's Normalize for its ImageNet weights, RGB on 0..1
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 256  # torchvision's recipe: resize the shorter side to 256, centre crop 224
# torchvision's layer index -> this net's layer name.
KEYS = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
        "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}


def torchvision_config(num_classes: int = 1000) -> ModelConfig:
    """The ModelConfig of torchvision.models.alexnet (its features/avgpool/classifier, eval mode)."""
    return ModelConfig(num_classes=num_classes, input_size=224, channels=(64, 192, 384, 256, 256), towers=1,
                       lrn=False, conv1_padding=2, pool_ceil=False, dropout=0.5, dropout_style="inverted",
                       input_scale=tuple(1.0 / (255.0 * s) for s in IMAGENET_STD), adaptive_pool=6)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    state = read_torch_file(path, "a PyTorch state dict that loads without code")  # sizes checked first
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors)")
    named = next((k for k in state if not isinstance(k, str)), None)
    if named is not None:
        raise UserError(f"{path} is not a state dict: its key {named!r} is not a layer name (a string)")
    return state


def convert_state(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """torchvision's keys -> conv1..fc8, each tensor's shape checked against the net it maps to."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = state_shapes(torchvision_config())
    out = {}
    for theirs, ours in KEYS.items():
        for kind in ("weight", "bias"):
            key = f"{theirs}.{kind}"
            if key not in state:
                raise UserError(f"{where} has no {key} ({ours}.{kind}): not torchvision's alexnet")
            value, want = state[key], expected[f"{ours}.{kind}"]
            if tuple(value.shape) != want:
                raise UserError(f"{where}: {key} has shape {tuple(value.shape)}, torchvision's alexnet has {want}")
            if not value.dtype.is_floating_point:
                raise UserError(f"{where}: {key} holds {value.dtype} values, not floating-point weights")
            out[f"{ours}.{kind}"] = value.detach().to(torch.float32)
    extra = sorted(set(state) - {f"{k}.{kind}" for k in KEYS for kind in ("weight", "bias")})
    if extra:
        raise UserError(f"{where} holds {extra[0]}, which torchvision's alexnet does not have")
    return out


def import_torchvision(weights: str | os.PathLike, synsets: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
    """(checkpoint payload, notes for the user) of torchvision's alexnet weights."""
    state = convert_state(read_state_dict(weights), str(weights))
    classes, names = class_list(synsets)
    if state["fc8.weight"].shape[0] != len(classes):
        raise UserError(f"{weights}: fc8 has {state['fc8.weight'].shape[0]} outputs; the ILSVRC-2012 classes are "
                        f"{len(classes)}")
    mean = np.broadcast_to(np.array([255.0 * m for m in IMAGENET_MEAN], np.float32), (IMAGE_SIZE, IMAGE_SIZE, 3))
    source = {"format": "torchvision", "weights": str(weights),
              "input": "x/255 normalised by mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)"}
    payload = build_payload("torchvision-alexnet", torchvision_config(len(classes)), state, mean.copy(), classes,
                            names, source)
    return payload, []
