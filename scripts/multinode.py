"""Two machines, proven on one: `torchrun --nnodes 2` across two network namespaces.

    python scripts/multinode.py [--workdir DIR] [--steps 4] [--timeout 120]

Makes two hosts, each a network namespace of its own joined to the other by a veth pair (addresses
192.168.77.1 and 192.168.77.2 on that pair only: no traffic leaves the two namespaces), and runs on
each, with its own node rank,

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr 192.168.77.1 --master-port 29500 \\
        -m alexnet.cli train --data STORE --out RUN --variant tiny ... --set model.dropout=0

(gloo over the veth pair), then trains the same global batch in one plain process and compares the
final weights of the two runs (rtol 1e-4, as the two-process test in tests/train/test_train.py). With
dropout off, the data-parallel run must compute what one process computes (alexnet/train/loop.py draws the
crops of a global batch once and slices them). Prints one JSON line with the result and the exact
commands. The namespaces and their processes are removed whatever happens (Ctrl-C, SIGTERM, errors).

Needs root and `ip` (iproute2); the processes inherit the environment (PYTHONPATH included) and use
this Python (sys.executable). Exit status: 0 the runs match, 1 they differ or a run failed,
77 this machine does not allow network namespaces or veth pairs (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

UNSUPPORTED = 77
ADDRESSES = ("192.168.77.1", "192.168.77.2")  # private, on the script's own veth pair only
PORT = 29500


class Unsupported(Exception):
    """The machine forbids what the proof needs (namespaces, veth pairs, root)."""


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode:
        raise Unsupported(f"`ip {' '.join(args)}` failed: {r.stderr.strip() or f'exit status {r.returncode}'}")


class TwoHosts:
    """Two network namespaces joined by a veth pair; `with` removes them on the way out."""

    def __init__(self, tag: str):
        self.names = (f"alexnet-{tag}-a", f"alexnet-{tag}-b")
        self.links = (f"amn{tag}a", f"amn{tag}b")  # interface names: at most 15 characters
        self.created: list[str] = []

    def __enter__(self) -> "TwoHosts":
        if shutil.which("ip") is None:
            raise Unsupported("the `ip` command (iproute2) is not installed")
        try:
            for ns in self.names:
                ip("netns", "add", ns)
                self.created.append(ns)
            ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
            for ns, link, addr in zip(self.names, self.links, ADDRESSES):
                ip("link", "set", link, "netns", ns)
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", link)
                ip("-n", ns, "link", "set", link, "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in self.created:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def bytes_sent(self) -> list[int]:
        """Bytes each host has sent over the veth pair so far."""
        sent = []
        for ns, link in zip(self.names, self.links):
            r = subprocess.run(["ip", "-j", "-s", "-n", ns, "link", "show", "dev", link], capture_output=True, text=True)
            sent.append(json.loads(r.stdout)[0]["stats64"]["tx"]["bytes"] if r.returncode == 0 else -1)
        return sent

    def command(self, node: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[node], *argv]


def torchrun(node: int, train_args: list[str], rendezvous: str = "static") -> list[str]:
    """torchrun for one node: a fixed node rank and master address (static), or the elastic c10d
    rendezvous, where ranks are assigned as nodes arrive."""
    where = (["--node-rank", str(node), "--master-addr", ADDRESSES[0], "--master-port", str(PORT)]
             if rendezvous == "static" else
             ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{ADDRESSES[0]}:{PORT}", "--rdzv-id", "alexnet"]
             + ["--local-addr", ADDRESSES[node]] + (["--rdzv-conf", "is_host=true"] if node == 0 else []))
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", *where,
            "-m", "alexnet.cli", "train", *train_args]


def run_nodes(hosts: TwoHosts, train_args: list[str], rendezvous: str, log_dir: Path, timeout: float) -> list[int]:
    """Start both nodes, wait for both; kill both process groups if one hangs or we are stopped."""
    procs = []
    try:
        for node in (0, 1):
            # gloo picks its interface from the hostname, which resolves to nothing in a namespace
            env = dict(os.environ, GLOO_SOCKET_IFNAME=hosts.links[node], OMP_NUM_THREADS="1")
            log = open(log_dir / f"node{node}.log", "w")
            procs.append(subprocess.Popen(hosts.command(node, torchrun(node, train_args, rendezvous)), env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        stop_nodes(procs)


def stop_nodes(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM first: torchrun then stops its workers, which run in sessions of their own."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        os.killpg(p.pid, signal.SIGTERM)
    for p in running:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def make_store(work: Path) -> Path:
    """64 demo images of 4 classes at 72x72 (the `tiny` net's 64x64 crops), made once per workdir."""
    from alexnet.data.demo_images import make_demo_data
    from alexnet.data.prepare import prepare

    store = work / "store"
    if not (store / "meta.json").exists():
        make_demo_data(work / "src", classes=4, train_per_class=16, val_per_class=2, seed=0)
        prepare(work / "src", store, size=72, workers=1, progress=False, log=lambda *a: None)
    return store


def compare(two: Path, one: Path, rtol: float = 1e-4, atol: float = 1e-6) -> dict:
    import torch

    from alexnet.model.checkpoint import load_checkpoint

    a, b = load_checkpoint(two)["model"], load_checkpoint(one)["model"]
    worst = max(((a[k] - b[k]).abs() - rtol * b[k].abs()).max().item() for k in b)
    same = all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in b)
    return {"match": same, "worst excess over rtol*|w|": worst, "tensors": len(b)}


def common_args(store: Path, steps: int) -> list[str]:
    return ["--data", str(store), "--variant", "tiny", "--epochs", "1", "--batch-size", "16",
            "--max-steps", str(steps), "--set", "model.dropout=0", "--device", "cpu", "--amp", "off", "--quiet"]


def prove(work: Path, steps: int, rendezvous: str, timeout: float) -> dict:
    two, one = work / "two-nodes", work / "one-process"
    for d in (two, one):
        shutil.rmtree(d, ignore_errors=True)
    with TwoHosts(str(os.getpid())) as hosts:
        store = make_store(work)
        single = [sys.executable, "-m", "alexnet.cli", "train", *common_args(store, steps), "--out", str(one)]
        # The reference runs beside the nodes (they mostly wait on start-up and each other).
        reference = subprocess.Popen(single, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        try:
            nodes_args = [*common_args(store, steps), "--out", str(two)]
            codes = run_nodes(hosts, nodes_args, rendezvous, work, timeout)
            result = {"namespaces": hosts.names, "bytes sent over the veth pair": hosts.bytes_sent(),
                      "commands": [shlex.join(torchrun(n, nodes_args, rendezvous)) for n in (0, 1)],
                      "reference": shlex.join(single)}
            reference_out = reference.communicate(timeout=timeout)[0]
        finally:
            if reference.poll() is None:
                reference.kill()
                reference.wait()
    if any(codes) or reference.returncode:
        return {**result, "match": False, "error": f"torchrun exit codes {codes} (logs: {work}/node0.log, "
                f"node1.log), one process {reference.returncode}: {reference_out[-2000:]}"}
    result.update(compare(two / "last.pt", one / "last.pt"), two_nodes=str(two / "last.pt"),
                  one_process=str(one / "last.pt"))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="multinode-work", help="store, runs and node logs go here")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps of each run")
    p.add_argument("--rendezvous", choices=("static", "c10d"), default="static",
                   help="--node-rank/--master-addr (static) or --rdzv-backend c10d")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a hung node is killed")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanup
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = prove(work, args.steps, args.rendezvous, args.timeout)
    except Unsupported as e:
        print(f"multinode: this machine does not allow the two-host setup: {e}", file=sys.stderr)
        return UNSUPPORTED
    except subprocess.TimeoutExpired as e:
        result = {"match": False, "error": f"timed out after {e.timeout:.0f} s: {shlex.join(map(str, e.cmd))}"}
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result))
    return 0 if result["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
