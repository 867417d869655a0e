"""Checkpoints: written atomically, read back with clear errors, and enough to rebuild the model alone
(config, class names and the mean image travel with the weights, so `predict` needs no store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from alexnet import __version__
from alexnet.config import Config, ConfigError, from_dict
from alexnet.errors import UserError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    payload = {"format": "alexnet-checkpoint", "version": CHECKPOINT_VERSION, "alexnet": __version__, **payload}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
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
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path} cannot be read as a checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != "alexnet-checkpoint":
        raise UserError(f"{path} is not an alexnet checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is a version {payload.get('version')} checkpoint; this alexnet reads version "
                        f"{CHECKPOINT_VERSION}")
    payload["path"] = str(path)
    return payload


def checkpoint_config(payload: dict[str, Any]) -> Config:
    try:
        return from_dict(payload["config"])
    except ConfigError as e:
        raise UserError(f"{payload.get('path')}: its config does not fit this alexnet: {e}") from None


def model_from_checkpoint(payload: dict[str, Any]):
    """The trained AlexNet of a checkpoint, in eval mode, on the CPU."""
    from alexnet.model import AlexNet

    config = checkpoint_config(payload)
    model = AlexNet(config.model)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise UserError(f"{payload.get('path')}: weights do not fit the saved config: {str(e).splitlines()[0]}") from None
    return model.eval()
