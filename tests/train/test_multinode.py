"""Two hosts in network namespaces joined by a veth pair, `torchrun --nnodes 2` with gloo across them:
the same weights as one process trained on the same global batches (scripts/multinode.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.model.checkpoint import load_checkpoint
from alexnet.config import resolve
from alexnet.model import AlexNet

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "multinode.py"
UNSUPPORTED = 77
STEPS = 4


def run_script(*args: str, **env_changes: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(env_changes)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux's")
def test_two_nodes_over_a_veth_pair_compute_what_one_process_computes(tmp_path):
    r = run_script("--workdir", str(tmp_path), "--steps", str(STEPS), "--timeout", "120")
    if r.returncode == UNSUPPORTED:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert "x 2 processes" in (tmp_path / "two-nodes" / "train.log").read_text()
    two = load_checkpoint(tmp_path / "two-nodes" / "last.pt")
    one = load_checkpoint(tmp_path / "one-process" / "last.pt")
    assert two["global_step"] == one["global_step"] == STEPS
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    init = AlexNet(resolve({"variant": "tiny", "model": {"num_classes": 4}}).model).state_dict()
    assert (two["model"]["fc8.weight"] - init["fc8.weight"]).abs().max() > 1e-4  # the steps moved the weights
    # Summing two arbitrary fp32 gradients, each host must send the other all of its own every step.
    gradient_bytes = 4 * sum(w.numel() for w in one["model"].values())
    assert min(result["bytes sent over the veth pair"]) >= STEPS * gradient_bytes
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in result["namespaces"])  # removed on the way out


def test_without_the_ip_tool_the_script_says_why_and_exits_77(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run_script("--workdir", str(tmp_path / "w"), PATH=str(empty))
    assert r.returncode == UNSUPPORTED, r.stdout + r.stderr
    assert "`ip` command" in r.stderr and "Traceback" not in r.stderr
