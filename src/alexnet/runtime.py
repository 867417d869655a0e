"""Device choices shared by the commands (process-wide settings: alexnet.machine)."""

from __future__ import annotations

import torch

from alexnet.errors import UserError
from alexnet.machine import keep_freed_memory  # noqa: F401  (benchmarks import it from here)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"'{name}' is not a device (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but this machine has no CUDA GPU visible to torch")
    return device
