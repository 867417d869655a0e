"""What both importers share: reading a file once with a clear error, and the checkpoint payload that
every command of this project reads (the same keys a training run writes), checked here by the rules
those commands apply, so that an import never writes a checkpoint they would refuse."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from alexnet.config import Config, ConfigError, ModelConfig, conv_channels, from_dict, to_dict
from alexnet.errors import UserError
from alexnet.torch_file import MAX_BYTES, tensor_problem


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    return path.read_bytes()


def checked_model(variant: str, model: ModelConfig, where: str) -> ModelConfig:
    """`model` as every other command will read it back: validated by the config's own rules (RULES,
    through from_dict as a checkpoint's config is read), and building a net whose layers have exactly
    the kernel counts it states (7 kernels in 2 towers would build 8: refused)."""
    try:
        config = from_dict(to_dict(Config(variant=variant, model=model)))
    except ConfigError as e:
        raise UserError(f"{where}: the net it describes is not one this alexnet builds: {e}") from None
    built = conv_channels(config.model)
    if config.model.width != 1.0 or built != list(config.model.channels):
        raise UserError(f"{where}: conv1..conv5 have {list(config.model.channels)} kernels, which "
                        f"{config.model.towers} tower(s) cannot split evenly (the net would have {built})")
    try:
        shapes = state_shapes(config.model)
    except (RuntimeError, ValueError, OverflowError) as e:  # sizes beyond what torch can index
        raise UserError(f"{where}: the net it describes cannot be built: {str(e).splitlines()[0]}") from None
    size = 4 * sum(math.prod(shape) for shape in shapes.values())
    if size > MAX_BYTES:
        raise UserError(f"{where}: the net it describes would hold {size / 2**30:,.1f} GiB of float32 weights, more "
                        f"than the {MAX_BYTES / 2**30:.0f} GiB a weights file may hold (bvlc_alexnet's: 0.2 GiB)")
    return config.model


def state_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the net's state dict (built on the meta device: no memory, no init)."""
    from alexnet.model import AlexNet

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in AlexNet(model).state_dict().items()}


def _check_tensor(name: str, value: torch.Tensor, where: str) -> None:
    problem = tensor_problem(name, value)
    if problem:
        raise UserError(f"{where}: {problem}")
    if value.device.type != "cpu" or not value.dtype.is_floating_point:
        raise UserError(f"{where}: {name} is a {value.dtype} tensor on {value.device}, not floating-point values")
    bad = value.numel() - int(torch.isfinite(value).sum())
    if bad:
        raise UserError(f"{where}: {name} holds {bad:,} NaN or infinite values; refused")


def build_payload(variant: str, model: ModelConfig, state: dict[str, torch.Tensor], mean: np.ndarray,
                  classes: list[str], names: list[str], source: dict) -> dict:
    """An ordinary checkpoint payload (plain dicts, lists, strings, numbers and tensors): `mean` is the
    (S, S, 3) RGB image on the 0..255 scale the net's input has subtracted, S the image size whose
    centre patch the net sees (resize the shorter side to S, then the centre input_size square).
    Refused unless every command can read it back: a config the rules admit, weights of exactly the
    net's shapes, finite weights and mean."""
    where = str(source.get("weights"))
    model = checked_model(variant, model, where)
    expected = state_shapes(model)
    for name, value in state.items():
        if name not in expected or expected[name] != tuple(value.shape):
            raise UserError(f"{where}: {name} does not fit the net it maps to")
        _check_tensor(name, value, where)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise UserError(f"{where}: no weights for {missing[0]}")
    if mean.ndim != 3 or mean.shape[0] != mean.shape[1] or mean.shape[2] != 3 or mean.shape[0] < model.input_size:
        raise UserError(f"the mean image is {mean.shape}; it must be square RGB, at least the net's input "
                        f"({model.input_size})")
    if not np.isfinite(mean).all():
        raise UserError(f"{source.get('mean', where)}: the mean image holds NaN or infinite values; refused")
    return {"config": to_dict(Config(variant=variant, model=model)),
            "model": {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()},
            "classes": list(classes), "class_names": list(names), "image_size": int(mean.shape[0]),
            "mean": torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)), "data": None,
            "source": source}
