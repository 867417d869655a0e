"""#26 under DDP, with gloo and two CPU processes started as torchrun starts them (RANK, WORLD_SIZE,
MASTER_ADDR...; by hand, so that no agent stops one process when the other exits and what each
process does on its own shows): the processes agree on stopping every `log_every` steps, never per
step; a NaN loss in one of them stops both with the same line; a process that fails alone (out of
memory) makes the other stop with its reason, both exiting 2."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo over TCP on Linux")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(script: Path, *args: str, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`script` in two processes of one gloo group; their return codes, stdout and stderr."""
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO / "src"))
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


CADENCE = """
import json, os, sys, torch
from alexnet.config import resolve
from alexnet.train.distributed import leave_processes
from alexnet.train.run import fit
calls = {"all_reduce": 0}
all_reduce = torch.distributed.all_reduce
def counted(*a, **kw):
    calls["all_reduce"] += 1
    return all_reduce(*a, **kw)
torch.distributed.all_reduce = counted
checks = []
import alexnet.train.distributed as d
agree = d.Processes.agree
def agreeing(self, flags):
    out = agree(self, flags)
    checks.append(self.checks)
    return out
d.Processes.agree = agreeing
config = resolve({"variant": "tiny", "train": {"epochs": 1, "batch_size": 32, "max_steps": 20, "log_every": 5,
                                               "device": "cpu", "amp": "off"}})
r = fit(config, sys.argv[1], sys.argv[2], progress=False, echo=False)
leave_processes()
print(json.dumps({"status": r["status"], "checks": checks[-1], "all_reduce": calls["all_reduce"]}))
"""


def test_processes_agree_on_stopping_every_log_every_steps_not_every_step(demo_store, tmp_path):
    """#26: `should_stop` all-reduced a flag and read it back every step, two host syncs a step. Now
    20 steps with log_every 5 make 4 checks (steps 5, 10, 15 and 20), plus the one at the start
    (the run's lock), and those are all the all-reduces the training loop makes itself."""
    script = tmp_path / "cadence.py"
    script.write_text(CADENCE)
    results = run_two(script, str(demo_store), str(tmp_path / "run"))
    assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
    counts = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
    assert counts[0] == counts[1] == {"status": "stopped at max_steps", "checks": 5, "all_reduce": 5}


TRAIN = """
import os, sys, torch
from alexnet.cli.commands import main
rank = int(os.environ["RANK"])
FAULT = {fault!r}
if rank == 1 and FAULT == "nan":
    import torch.nn.functional as F
    cross_entropy, calls = F.cross_entropy, [0]
    def nan_loss(*a, **kw):  # the loss reads NaN from step 7 on; its gradient stays finite
        calls[0] += 1
        loss = cross_entropy(*a, **kw)
        return loss + float("nan") * loss.detach() if calls[0] >= 7 else loss
    F.cross_entropy = nan_loss
if rank == 1 and FAULT == "oom":
    import alexnet.train.loop as loop
    step, calls = loop.Trainer._step, [0]
    def out_of_memory(self, *a):  # this process alone runs out of memory in step 3
        calls[0] += 1
        if calls[0] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, *a)
    loop.Trainer._step = out_of_memory
sys.exit(main(["train", "--data", sys.argv[1], "--out", sys.argv[2], "--variant", "tiny", "--device", "cpu",
               "--amp", "off", "--quiet", "--batch-size", "32", "--epochs", "1", "--train.log-every", "5"]))
"""


def error_line(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("alexnet train: error:"))


def test_a_nan_loss_in_one_process_stops_both_with_the_same_line(demo_store, tmp_path):
    """#26: a NaN loss was decided per process: the one that saw it left, the other waited in its next
    all-reduce. Rank 1's loss reads NaN from step 7 (rank 0's stays finite): at the check of step 10
    both stop with one line, exit 2."""
    script = tmp_path / "nan.py"
    script.write_text(TRAIN.format(fault="nan"))
    results = run_two(script, str(demo_store), str(tmp_path / "run"))
    assert [r.returncode for r in results] == [2, 2], [r.stderr[-3000:] for r in results]
    lines = [error_line(r) for r in results]
    assert lines[0] == lines[1]
    assert "the loss became NaN or infinite in one of the 2 processes in epoch 1 near step 10" in lines[0]


def test_a_process_out_of_memory_alone_stops_the_other_with_its_reason(demo_store, tmp_path):
    """#26: rank 1 runs out of memory in step 3 while rank 0 waits in that step's gradient all-reduce.
    Rank 1 posts its reason and leaves; rank 0's all-reduce fails, and it stops with rank 1's line."""
    script = tmp_path / "oom.py"
    script.write_text(TRAIN.format(fault="oom"))
    results = run_two(script, str(demo_store), str(tmp_path / "run"))
    assert [r.returncode for r in results] == [2, 2], [r.stderr[-3000:] for r in results]
    own, told = error_line(results[1]), error_line(results[0])
    assert own.startswith("alexnet train: error: out of memory on cpu at batch 16 per process")
    assert told == own.replace("error: ", "error: rank 1: ", 1) + " (every process stopped)"
