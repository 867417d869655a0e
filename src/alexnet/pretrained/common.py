"""What both importers share: reading a file once with a clear error, and the checkpoint payload that
every command of this project reads (the same keys a training run writes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from alexnet.config import Config, ModelConfig, to_dict
from alexnet.errors import UserError


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    return path.read_bytes()


def state_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the net's state dict (built on the meta device: no memory, no init)."""
    from alexnet.model import AlexNet

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in AlexNet(model).state_dict().items()}


def build_payload(variant: str, model: ModelConfig, state: dict[str, torch.Tensor], mean: np.ndarray,
                  classes: list[str], names: list[str], source: dict) -> dict:
    """An ordinary checkpoint payload (plain dicts, lists, strings, numbers and tensors): `mean` is the
    (S, S, 3) RGB image on the 0..255 scale the net's input has subtracted, S the image size whose
    centre patch the net sees (resize the shorter side to S, then the centre input_size square)."""
    expected = state_shapes(model)
    for name, value in state.items():
        if name not in expected or expected[name] != tuple(value.shape):
            raise UserError(f"{source.get('weights')}: {name} does not fit the net it maps to")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise UserError(f"{source.get('weights')}: no weights for {missing[0]}")
    if mean.ndim != 3 or mean.shape[0] != mean.shape[1] or mean.shape[2] != 3 or mean.shape[0] < model.input_size:
        raise UserError(f"the mean image is {mean.shape}; it must be square RGB, at least the net's input "
                        f"({model.input_size})")
    return {"config": to_dict(Config(variant=variant, model=model)),
            "model": {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()},
            "classes": list(classes), "class_names": list(names), "image_size": int(mean.shape[0]),
            "mean": torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)), "data": None,
            "source": source}
