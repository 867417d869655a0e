"""The processes of a run: one, or N under `torchrun` (DDP), and the devices each one uses.

Under torchrun the processes must take every decision that ends a step loop together, or the ones
that go on wait in a collective for the one that left. Stopping (Ctrl-C, SIGTERM) and a NaN loss are
agreed on with one all-reduce of a few flags every `train.log_every` steps (`Processes.agree`), never
per step. A process that fails alone (out of memory, any error) cannot be waited for at a step's end:
the others are already inside the step's gradient all-reduce. It writes its one-line reason into the
rendezvous store (`shared_failure`) and leaves the group; a peer whose collective then fails reads it
and stops with the same line. (NCCL may not fail a peer's pending collective when a process exits;
torchrun then stops the others, after its own wait.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from alexnet.errors import UserError
from alexnet.machine import usable_cores
from alexnet.runtime import resolve_device, thread_share

FAILURE_KEY = "alexnet/failure"  # in the rendezvous store: the first failing process's "rank R: reason"


def agreed(error: BaseException) -> BaseException:
    """Mark an error every process raises at the same point (after `Processes.agree`): no process
    needs telling about it (`Processes.shared_failure` passes it through)."""
    error.agreed = True  # type: ignore[attr-defined]
    return error


@dataclass
class Processes:
    """This process's place among the run's processes, and the collectives the loop needs.
    `cores`: the cores this process may use (its share of the machine's under torchrun);
    `checks`: how many times it has agreed with the others (`agree`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cores: int | None = None
    store: object | None = field(default=None, repr=False)
    checks: int = 0

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

    def agree(self, flags: torch.Tensor) -> torch.Tensor:
        """`flags` (1 where this process wants to stop, for some reason) made the largest over every
        process, in place, without a host sync (the caller reads them with its own)."""
        if self.distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            self.checks += 1
        return flags

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.distributed:
            return flag
        t = self.agree(torch.tensor([1.0 if flag else 0.0], device=device))
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def posted_failure(self) -> str | None:
        """The reason a process of this run posted when it failed, or None."""
        if self.store is None:
            return None
        try:
            if self.store.check([FAILURE_KEY]):
                return self.store.get(FAILURE_KEY).decode(errors="replace")
        except Exception:  # the store went with the process that hosted it
            return None
        return None

    def shared_failure(self, error: BaseException) -> BaseException:
        """What this process should raise for `error` under torchrun: the first failure another
        process posted, as the same one line (its collective failed because that process left), else
        `error`, whose one-line reason is posted for the others first. Errors all processes raise
        together (`agreed`), and interrupts, are passed through."""
        if not self.distributed or getattr(error, "agreed", False) or not isinstance(error, Exception):
            return error
        posted = self.posted_failure()
        if posted is not None and not posted.startswith(f"rank {self.rank}:"):
            return agreed(UserError(f"{posted} (every process stopped)"))
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        try:
            if self.store is not None and posted is None:
                self.store.set(FAILURE_KEY, f"rank {self.rank}: {reason}")
        except Exception:
            pass
        return error


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


def _default_store():
    """The store the process group was made with (torchrun's rendezvous store), or None."""
    get = getattr(torch.distributed.distributed_c10d, "_get_default_store", None)
    try:
        return get() if get is not None else None
    except (RuntimeError, ValueError):
        return None


def setup_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), pick this process's
    device (its LOCAL_RANK-th GPU) and make it the current one, and give each local process its share
    of the CPU's cores (threads and loader threads). A single process's GPU becomes the current
    device too: work queued without a device (events, pinned memory) then goes to it, not cuda:0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = resolve_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
            torch.cuda.set_device(device)
        return Processes(), device
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    procs = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                      cores=thread_share(usable_cores(), local))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(procs.cores)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    procs.store = _default_store()
    return procs, device


def leave_processes(wait: bool = True) -> None:
    """At the end of a torchrun command: wait for every process, then leave the process group. A
    process that exited with its gloo group still open could abort its peer's teardown ("terminate
    called without an active exception", SIGABRT), and the peer's torchrun then waited for it until
    scripts/multinode.py's 120 s timeout (seen twice in full test-suite runs). `wait=False` after a
    failure: a peer may be inside a collective that never completes, so leave without the barrier
    (the peer's collective then fails, and it stops with this process's reason)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
