"""Checkpoints: written atomically, read back as data, and enough to rebuild the model alone
(config, class names and the mean image travel with the weights, so `predict` needs no store).

A checkpoint holds only plain dicts, lists, strings, numbers and tensors, so it is read with
`torch.load(weights_only=True)`: a file that would need code to load (a pickle naming a function or
a class) is refused, never run; its sizes are checked before it is loaded (alexnet.torch_file) and
its weights must be finite."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from alexnet.config import VERSION, Config, ConfigError, from_dict, to_dict
from alexnet.errors import UserError
from alexnet.files import atomic_write
from alexnet.model.net import AlexNet
from alexnet.torch_file import read_torch_file

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a new PATH.<random>.tmp, flush, fsync, then rename over PATH (alexnet.files.atomic_write):
    a crash or a full disk leaves either the previous checkpoint or the new one, never half of one; a
    Ctrl-C or SIGTERM during torch.save acts once it has returned, and leaves the previous one."""
    path = Path(path)
    payload = {"format": "alexnet-checkpoint", "version": CHECKPOINT_VERSION, "alexnet": VERSION, **payload}
    try:
        with atomic_write(path) as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError):  # torch's zip writer reports a failed write as a RuntimeError
            if not isinstance(e.__context__ or e.__cause__, OSError):
                raise
            e = e.__context__ or e.__cause__
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        kept = "the previous one is intact" if path.exists() else "nothing was written"
        raise UserError(f"cannot write checkpoint {path}: {why}; {kept}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file, or a run folder's best.pt (else last.pt), read as data only."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path} holds no checkpoint (best.pt or last.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    payload = read_torch_file(path, "an alexnet checkpoint", map_location)  # sizes checked first (torch_file)
    if not isinstance(payload, dict) or payload.get("format") != "alexnet-checkpoint":
        raise UserError(f"{path} is not an alexnet checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is a version {payload.get('version')} checkpoint; this alexnet reads version "
                        f"{CHECKPOINT_VERSION}")
    check_weights(payload.get("model"), str(path))
    payload["path"] = str(path)
    return payload


def check_weights(state: Any, where: str) -> None:
    """A state dict of named floating-point tensors with finite values: a NaN or an infinity in one
    weight makes every output NaN, and `predict` would print 'nan%' beside arbitrary labels."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{where}: its weights are not a mapping of layer names to tensors")
    for name, value in state.items():
        if not value.dtype.is_floating_point:
            raise UserError(f"{where}: weight {name} holds {value.dtype} values, not floating-point ones")
        bad = value.numel() - int(torch.isfinite(value).sum())
        if bad:
            raise UserError(f"{where}: weight {name} holds {bad:,} NaN or infinite values; refused")


def checkpoint_config(payload: dict[str, Any]) -> Config:
    try:
        return from_dict(payload["config"])
    except ConfigError as e:
        raise UserError(f"{payload.get('path')}: its config does not fit this alexnet: {e}") from None


def model_from_checkpoint(payload: dict[str, Any]) -> AlexNet:
    """The trained AlexNet of a checkpoint, in eval mode, on the CPU, with what its inputs need: the
    mean image it was trained with (§2; an imported net's is its source's) as its `input_mean` buffer,
    its `classes` and `class_names`, and the run's test-view settings (`data_config`)."""
    config = checkpoint_config(payload)
    model = AlexNet(config.model)
    try:
        model.load_state_dict(payload["model"])  # a state dict with or without the mean image
    except RuntimeError as e:
        raise UserError(f"{payload.get('path')}: weights do not fit the saved config: {str(e).splitlines()[0]}") from None
    if payload.get("mean") is not None:
        model.set_preprocessing(payload["mean"])
    model.classes, model.class_names = payload.get("classes"), payload.get("class_names")
    model.data_config, model.variant = config.data, config.variant
    model.checkpoint = payload.get("path")  # where it came from (fine-tuning starts from this file)
    return model.eval()


def net_payload(net: AlexNet) -> dict[str, Any]:
    """A checkpoint payload of a net in memory (its weights as they are now, its config, classes and mean
    image), which `load` reads back as the same net: what fine-tuning a net from Python starts from."""
    if net.input_mean is None:
        raise UserError("this net has no mean image (a fresh net): give it one with net.set_preprocessing(mean)")
    classes = net.classes or [str(i) for i in range(net.config.num_classes)]
    config = Config(variant=net.variant or "custom", model=net.config, data=net.data_config)
    return {"config": to_dict(config), "classes": list(classes), "class_names": list(net.class_names or classes),
            "model": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()
                      if k != "input_mean"},  # the mean travels as the checkpoint's own "mean"
            "image_size": net.image_size, "mean": net.input_mean.detach().to("cpu", torch.float32), "data": None}


def load(path: str | os.PathLike) -> AlexNet:
    """`alexnet.load`: the net of a checkpoint file (a run's best.pt or last.pt, an `alexnet import`ed
    bvlc_alexnet or torchvision net) or of a run folder (its best.pt, else last.pt), in eval mode, on
    the CPU, carrying its preprocessing (`net.transforms()`) and class names."""
    return model_from_checkpoint(load_checkpoint(path))
