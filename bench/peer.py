"""The paper net against torchvision's AlexNet, in one run, and its share of the machine's matmul rate.

    python bench/peer.py [--batch 64,128] [--quick] [--channels-last on] [--repeats 4] [--out FILE]
    python bench/peer.py --profile [--precision fp32] [--batch 64]   # where a training step goes
    python bench/peer.py --lrn-at REV    # the paper net against itself with the LRN of commit REV

*ours*: `alexnet.model.net.AlexNet` (variant paper: LRN, two towers, 724 M multiply-adds). *torchvision*:
torchvision's AlexNet architecture written out below in plain PyTorch (no LRN, one tower, 714 M),
since torchvision cannot be imported here. For each precision (fp32, bf16 autocast), mode (a
training step = forward, backward and an SGD step; forward alone = eval mode under no_grad) and
batch, the two nets run alternately A B A B on the same random batch; images/s is each net's median
and the ratio (ours / torchvision, > 1: ours is faster) is the median of the pair ratios, so load
from other processes hits both sides alike. The allocator setting the project uses in training
(`alexnet.runtime.keep_freed_memory`, ALEXNET_KEEP_FREED_MEMORY=0 turns it off) applies to both.
After the table, the training rows are set against the matmul ceiling of bench/ceiling.py.

On the CPU the paper net computes in channels_last whatever its input's layout (alexnet.model.net: max
pooling 3-6x faster there), so the default NCHW rows compare it with torchvision's net as that net
runs when handed NCHW batches; `--channels-last on` puts torchvision's in channels_last too.

`--lrn-at REV` replaces torchvision's net by the paper net with the LRN layer of another commit
(src/alexnet/model/lrn.py as `git show REV:` gives it): a before/after of that layer inside the whole net, in
one process, where two runs of the table a while apart would mix the change with the machine's drift.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ceiling import ceiling_rows, training_flop_per_image  # noqa: E402
from common import environment, markdown_table, sync, write_results  # noqa: E402


def torchvision_alexnet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    """torchvision.models.AlexNet (One weird trick, Krizhevsky 2014), layer for layer."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(1), classifier)


def multiply_adds(net: nn.Module, side: int = 224) -> int:
    """Multiply-adds of one image through the conv and linear layers, counted from their outputs."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += module.weight.numel() * (output.shape[-1] * output.shape[-2] if output.dim() == 4 else 1)

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, side, side))
    for h in hooks:
        h.remove()
    return total


def paper_alexnet(lrn: bool = True) -> nn.Module:
    from alexnet.config import ModelConfig
    from alexnet.model import AlexNet

    return AlexNet(ModelConfig(lrn=lrn))


def paper_alexnet_with_lrn_at(rev: str) -> nn.Module:
    """The paper net whose LRN layers compute with the LRN module as it was at commit `rev`
    (src/alexnet/model/lrn.py; src/alexnet/lrn.py before the packages by concern; a version that
    imports the C kernel's loader, removed since, cannot be loaded)."""
    from alexnet.model.lrn import LocalResponseNorm

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in ("src/alexnet/model/lrn.py", "src/alexnet/lrn.py"):
        shown = subprocess.run(["git", "-C", repo, "show", f"{rev}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
    if shown.returncode:
        raise SystemExit(f"bench/peer.py: error: --lrn-at {rev}: {shown.stderr.strip() or 'git show failed'}")
    source = shown.stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write(source)
        f.flush()
        spec = importlib.util.spec_from_file_location(f"lrn_at_{rev}", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    net = paper_alexnet()
    for m in net.modules():
        if isinstance(m, LocalResponseNorm):
            # relu: the net's ReLU, which this commit's layer takes inside its kernel; before it, in front
            m.forward = lambda x, relu=False, m=m: module.local_response_norm(
                torch.relu(x) if relu else x, m.size, m.alpha, m.beta, m.k, m.groups)
    return net


class Runner:
    """One net, its optimizer and a batch: `step()` runs one training step or one forward pass."""

    def __init__(self, net: nn.Module, batch: int, train: bool, bf16: bool, channels_last: bool,
                 device: torch.device, optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(device, memory_format=fmt).train(train)
        self.train, self.bf16, self.device = train, bf16, device
        # The same plain SGD for both nets by default: the comparison is of the nets.
        self.opt = (optimizer(self.net) if optimizer else
                    torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4))
        g = torch.Generator().manual_seed(0)
        self.x = (torch.randn(batch, 3, 224, 224, generator=g) * 50).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if not self.train:
                with torch.no_grad():
                    self.net(self.x)
                return
            loss = F.cross_entropy(self.net(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.step()
        sync(self.device)
        return time.perf_counter() - start


def compare(batch: int, train: bool, bf16: bool, channels_last: bool, device: torch.device,
            repeats: int, compiled: bool = False, lrn: bool = True, lrn_at: str = "") -> dict:
    """Ours and torchvision's (or, with `lrn_at`, ours with that commit's LRN) alternately, `repeats`
    pairs after one warm-up step each (with `compiled`, both nets through torch.compile and two
    warm-up steps, whose time is reported)."""
    torch.manual_seed(0)
    ours = Runner(paper_alexnet(lrn), batch, train, bf16, channels_last, device)
    peer = Runner(paper_alexnet_with_lrn_at(lrn_at) if lrn_at else torchvision_alexnet(), batch, train, bf16,
                  channels_last, device)
    warm_up = {}
    for name, runner in (("ours", ours), ("torchvision", peer)):
        if compiled:
            runner.net = torch.compile(runner.net)
        warm_up[name] = sum(runner.timed() for _ in range(2 if compiled else 1))
    t_ours, t_peer = [], []
    for i in range(repeats):
        first, second = (ours, peer) if i % 2 == 0 else (peer, ours)  # A B B A: neither always goes first
        a, b = first.timed(), second.timed()
        t_ours.append(a if first is ours else b)
        t_peer.append(b if first is ours else a)
    ratios = [p / o for o, p in zip(t_ours, t_peer)]
    return {"mode": "train step" if train else "forward", "precision": "bf16 autocast" if bf16 else "fp32",
            "layout": "channels_last" if channels_last else "NCHW", "batch": batch,
            **({} if lrn else {"ours": "without LRN"}),
            **({"compiled": "yes", "warm-up s (ours, tv)": f"{warm_up['ours']:.0f}, {warm_up['torchvision']:.0f}"}
               if compiled else {}),
            **({"peer": f"paper net, LRN at {lrn_at}"} if lrn_at else {}),
            "ours img/s": batch / statistics.median(t_ours), "torchvision img/s": batch / statistics.median(t_peer),
            "ours / torchvision": statistics.median(ratios),
            "pair ratio range": f"{min(ratios):.2f}-{max(ratios):.2f}"}


def share_of_ceiling(rows: list[dict], ceiling: list[dict]) -> list[dict]:
    """Training rows of each net as a fraction of the images/s the best matmul rate allows."""
    limit = {c["precision"]: c["paper net training ceiling img/s"] for c in ceiling}
    peer_cost = multiply_adds(torchvision_alexnet()) / multiply_adds(paper_alexnet())
    out = []
    for r in rows:
        if r["mode"] != "train step":
            continue
        top = limit["bf16" if r["precision"].startswith("bf16") else "fp32"]
        out.append({"precision": r["precision"], "layout": r["layout"], "batch": r["batch"],
                    "ceiling img/s": top, "ours img/s": r["ours img/s"], "ours share": r["ours img/s"] / top,
                    "torchvision share": r["torchvision img/s"] * peer_cost / top})
    return out


def mark_layers(net: nn.Module) -> None:
    """Wrap each layer's forward in a profiler range named after its kind ("forward conv", ...)."""
    from torch.profiler import record_function

    kinds = {"conv": "conv", "norm": "LRN", "pool": "max pool", "fc": "fully connected", "drop": "dropout"}
    for name, module in net.named_children():
        kind = next((k for prefix, k in kinds.items() if name.startswith(prefix)), name)
        ranges = []
        module.register_forward_pre_hook(lambda m, i, kind=kind, ranges=ranges: ranges.append(
            record_function(f"forward {kind}").__enter__()))
        module.register_forward_hook(lambda m, i, o, ranges=ranges: ranges.pop().__exit__(None, None, None))


BACKWARD_KINDS = {"Convolution": "conv", "_LocalResponseNorm": "LRN", "LrnBackward": "LRN", "alexnet::lrn": "LRN", "MaxPool": "max pool", "Addmm": "fully connected",
                  "Mm": "fully connected", "Relu": "relu", "Threshold": "relu", "Mul": "dropout",
                  "Log": "loss", "Nll": "loss"}


def step_kind(name: str) -> str:
    """The part of a training step a top-level profiler event belongs to."""
    if name.startswith("forward "):
        return name
    if name.startswith("autograd::engine::evaluate_function: "):
        op = name.split(": ", 1)[1]
        return "backward " + next((k for prefix, k in BACKWARD_KINDS.items() if op.startswith(prefix)), "other")
    if name.startswith("Optimizer."):
        return "optimizer"
    if name in ("aten::relu", "aten::relu_"):
        return "forward relu"
    return "other"


def profile_step(batch: int, bf16: bool, channels_last: bool, device: torch.device, rows: int = 20) -> list[dict]:
    """Print torch.profiler's table by op for one training step of the paper net, then by layer kind
    (returned as rows). The step uses the optimizer `alexnet train` uses (§5's update rule,
    alexnet.train.optim)."""
    from torch.profiler import ProfilerActivity, profile

    from alexnet.config import OptimConfig
    from alexnet.train.optim import make_optimizer

    runner = Runner(paper_alexnet(), batch, True, bf16, channels_last, device,
                    lambda net: make_optimizer(net, OptimConfig()))
    runner.step()
    mark_layers(runner.net)
    runner.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = runner.timed()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))
    if device.type == "cuda":
        return []
    kinds: dict[str, float] = {}
    for evt in prof.events():
        if evt.cpu_parent is None:
            kinds[step_kind(evt.name)] = kinds.get(step_kind(evt.name), 0.0) + evt.cpu_time_total / 1e3
    precision = "bf16" if bf16 else "fp32"
    table = [{"precision": precision, "layout": "channels_last" if channels_last else "NCHW", "batch": batch,
              "part of the step": k, "ms": round(v, 1), "share": f"{v / (wall * 1e3):.1%}"}
             for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    print(f"\none training step, batch {batch}, {'bf16 autocast' if bf16 else 'fp32'}: {wall * 1e3:.0f} ms "
          f"({batch / wall:.1f} img/s, under the profiler)")
    print(markdown_table(table))
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="64,128", help="batch sizes, comma-separated")
    p.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 or both")
    p.add_argument("--mode", default="train,forward", help="train, forward or both")
    p.add_argument("--repeats", type=int, default=4, help="timed pairs per row")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="both nets and inputs in channels_last (auto: on CUDA, as alexnet train)")
    p.add_argument("--quick", action="store_true", help="batch 16, 2 pairs, small matmuls (a smoke run)")
    p.add_argument("--profile", action="store_true", help="profile one training step of the paper net instead")
    p.add_argument("--compile", action="store_true", help="both nets through torch.compile (warm-up time reported)")
    p.add_argument("--no-lrn", action="store_true", help="the paper net without its LRN layers (to see what they cost)")
    p.add_argument("--lrn-at", default="", metavar="REV",
                   help="in torchvision's place, the paper net with the LRN of commit REV (a before/after)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="", help="append the rows to this JSON-lines file")
    args = p.parse_args()
    from alexnet.machine import keep_freed_memory
    from alexnet.runtime import resolve_device

    keep_freed_memory()
    device = resolve_device(args.device)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    batches = [16] if args.quick else [int(b) for b in args.batch.split(",")]
    repeats = 2 if args.quick else args.repeats
    precisions, modes = args.precision.split(","), args.mode.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or not set(modes) <= {"train", "forward"}:
        p.error(f"--precision takes fp32,bf16 and --mode train,forward; got '{args.precision}', '{args.mode}'")
    if args.profile:
        for precision in precisions:
            table = profile_step(batches[0], precision == "bf16", channels_last, device)
            if args.out and table:
                write_results(args.out, "profile", table)
        return None
    rows = []
    for precision in precisions:
        for mode in modes:
            for batch in batches:
                rows.append(compare(batch, mode == "train", precision == "bf16", channels_last, device, repeats,
                                    args.compile, not args.no_lrn, args.lrn_at))
                print(rows[-1], flush=True)
    if args.lrn_at:
        print(f"\npaper net (this commit's LRN) vs the same with the LRN at {args.lrn_at} (the 'torchvision' "
              f"columns), interleaved, median of {repeats} pairs; {environment()}")
        return print(markdown_table(rows))
    ceiling = ceiling_rows(device, (512, 1024) if args.quick else (1024, 2048, 4096), 2 if args.quick else 5)
    shares = share_of_ceiling(rows, ceiling)
    allocator = "kept (mallopt)" if os.environ.get("ALEXNET_KEEP_FREED_MEMORY", "1") != "0" else "glibc default"
    print(f"\npaper net vs torchvision's AlexNet, interleaved, median of {repeats} pairs; allocator {allocator}; "
          f"{environment()}")
    print(markdown_table(rows))
    print(f"\nbest matmul rate and the training images/s it allows ({training_flop_per_image() / 1e9:.2f} GFLOP "
          f"per image, 3 x 2 x multiply-adds)")
    print(markdown_table(ceiling))
    print(markdown_table(shares))
    if args.out:
        write_results(args.out, "peer", rows)
        write_results(args.out, "ceiling", ceiling + shares)


if __name__ == "__main__":
    main()
