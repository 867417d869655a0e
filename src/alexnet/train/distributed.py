"""The processes of a run: one, or N under `torchrun` (DDP), and the devices each one uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from alexnet.errors import UserError
from alexnet.runtime import resolve_device


@dataclass
class Processes:
    """This process's place among the run's processes, and the collectives the loop needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def model_parallel_devices(names: str, device: torch.device) -> tuple[torch.device, torch.device]:
    """The two devices of --model-parallel 2: as given, else the first two GPUs, else the device twice."""
    if names:
        parts = [resolve_device(n.strip()) for n in names.split(",")]
        if len(parts) != 2:
            raise UserError(f"--devices needs two devices for --model-parallel 2, got '{names}'")
        return parts[0], parts[1]
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        return torch.device("cuda", 0), torch.device("cuda", 1)
    return device, device


def setup_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), pick this process's
    device (its LOCAL_RANK-th GPU), and share the CPU's threads among local processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), resolve_device(device_name)
    procs = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


def leave_processes() -> None:
    """At the end of a torchrun command: wait for every process, then leave the process group. A
    process that exited with its gloo group still open could abort its peer's teardown ("terminate
    called without an active exception", SIGABRT), and the peer's torchrun then waited for it until
    scripts/multinode.py's 120 s timeout (seen twice in full test-suite runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

