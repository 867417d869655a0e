"""A step-time model of the paper net's training step on a GPU, before any GPU has run it.

    python bench/gpu_model.py [--gpu h100-sxm|h100-pcie|h200] [--batch 128] [--matmul-efficiency 0.5]
                              [--conv1-efficiency 0.25] [--memory-efficiency 0.8] [--launch-us 5]

Each part of a bf16 + channels_last training step is timed as the slower of its arithmetic at the
GPU's published dense bf16 rate and its memory traffic at the published bandwidth, each times an
efficiency (the assumptions, printed with the table): convolutions and fully connected layers from
their multiply-adds (forward, and a backward of both gradients; conv1 has no input gradient), their
weights and activations; ReLU, LRN, pooling and dropout from the bytes they move; the optimizer from
the bytes per parameter of §5's update, with float32 master weights (the bf16 copy written by the
update) or with autocast's cast of every weight every step; plus a launch cost per kernel, which CUDA
graphs remove. The shapes come from the net itself (a forward of one image with hooks), so the model
follows the code. The GPU run (`bench/gpu_check.py`) checks the prediction; the parts whose share it
gets most wrong are where the assumptions are.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

# Published dense (no sparsity) bf16 tensor rates and memory bandwidths, NVIDIA's data sheets.
GPUS = {
    "h100-sxm": (989e12, 3.35e12),
    "h100-pcie": (756e12, 2.0e12),
    "h200": (989e12, 4.8e12),
}
BF16 = 2  # bytes


@dataclass
class Part:
    name: str
    kind: str  # matmul | memory | optimizer | launch
    flop: float  # per step
    bytes: float  # per step
    kernels: int  # per step, forward + backward
    macs: float = 0.0  # per image, forward


def layer_shapes(variant: str = "paper") -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, input numel, output numel) per image for each leaf layer, in forward order."""
    from alexnet.model.net import create_model

    net = create_model(variant).eval()
    seen: list[tuple[str, nn.Module, int, int]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, m, i[0].numel(), o.numel())))
             for name, m in net.named_modules() if not list(m.children()) and name]
    size = net.config.input_size
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return seen


def step_parts(batch: int, master_weights: bool = True, variant: str = "paper", eager_lrn: bool = False) -> list[Part]:
    """Every part of one training step at `batch`, its FLOP and bytes. `eager_lrn`: the LRN as the
    eager CUDA path runs it, ~10 float32 elementwise passes each way (two reads and a write each)."""
    parts: list[Part] = []
    params = 0
    for name, m, n_in, n_out in layer_shapes(variant):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.numel()
            params += w + (m.bias.numel() if m.bias is not None else 0)
            macs = n_out * (w // m.weight.shape[0]) if isinstance(m, nn.Conv2d) else w
            passes = 2 if name == "conv1" else 3  # forward, weight gradient, input gradient (none for conv1)
            act = (n_in + n_out) * batch * BF16
            parts.append(Part(name, "matmul", 2.0 * macs * batch * passes, passes * (w * BF16 + act), passes, macs))
        elif isinstance(m, nn.MaxPool2d):  # forward: in, out, int64 indices; backward: zero-fill + scatter
            parts.append(Part(name, "memory", 0, batch * (BF16 * (n_in + n_out) + 8 * n_out
                                                          + BF16 * n_out + 8 * n_out + 2 * BF16 * n_in), 3))
        elif type(m).__name__ == "LocalResponseNorm" and eager_lrn:
            parts.append(Part(name, "memory", 0, batch * 20 * 3 * 4 * n_in, 20))
        elif type(m).__name__ == "LocalResponseNorm":  # fused: forward x -> y; backward x, g -> dx
            parts.append(Part(name, "memory", 0, batch * BF16 * 5 * n_in, 2))
        elif isinstance(m, nn.ReLU):  # forward x -> y; backward y, g -> dx
            parts.append(Part(name, "memory", 0, batch * BF16 * 5 * n_in, 2))
        elif type(m).__name__ == "PaperDropout":  # forward x -> y and a byte mask; backward g, mask -> dx
            parts.append(Part(name, "memory", 0, batch * (BF16 * 4 * n_in + 2 * n_in), 3))
    # §5's update, fused: read w32, v32, g; write w32, v32 (and the bf16 copy with master weights). Without
    # master weights, autocast casts each weight to bf16 each step (4 + 2 bytes) and its gradient back (2 + 4).
    per_param = 4 + 4 + 2 + 4 + 4 + 2 if master_weights else 4 + 4 + 4 + 4 + 4 + (4 + 2) + (2 + 4)
    parts.append(Part("optimizer", "optimizer", 0, params * per_param, 2 if master_weights else 2 + 2 * 16))
    parts.append(Part("loss, softmax, input copy", "memory", 0, batch * (1000 * 4 * 4 + 3 * 224 * 224 * (1 + BF16)), 6))
    return parts


def part_seconds(p: Part, flops: float, bandwidth: float, args) -> float:
    eff = args.conv1_efficiency if p.name == "conv1" else args.matmul_efficiency
    compute = p.flop / (flops * eff) if p.flop else 0.0
    return max(compute, p.bytes / (bandwidth * args.memory_efficiency))


def model_table(args) -> tuple[list[tuple[str, float, float]], float, float]:
    """[(part, ms, share)], the predicted step in ms, and the images/s the matmul rate allows at the
    project's 3 x 2 x multiply-adds FLOP an image (bench/ceiling.py's convention)."""
    flops, bandwidth = GPUS[args.gpu]
    parts = step_parts(args.batch, master_weights=not args.autocast_casts, eager_lrn=args.eager_lrn)
    times = [(p.name, part_seconds(p, flops, bandwidth, args)) for p in parts]
    launches = sum(p.kernels for p in parts) * args.launch_us * 1e-6
    times.append(("kernel launches (0 with CUDA graphs)", launches))
    total = sum(t for _, t in times)
    ceiling = flops / (6 * sum(p.macs for p in parts))
    return [(name, 1e3 * t, t / total) for name, t in times], 1e3 * total, ceiling


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100-sxm")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--matmul-efficiency", type=float, default=0.5, help="share of the dense bf16 rate convolutions reach")
    ap.add_argument("--conv1-efficiency", type=float, default=0.25, help="conv1: 3 input maps, 11x11 stride 4")
    ap.add_argument("--memory-efficiency", type=float, default=0.8, help="share of the bandwidth elementwise passes reach")
    ap.add_argument("--launch-us", type=float, default=5.0, help="host cost of one kernel launch, microseconds")
    ap.add_argument("--cores", type=int, default=16, help="CPU cores feeding the GPU (the lent machines have 16)")
    ap.add_argument("--decode-per-core", type=float, default=2671.0,
                    help="images/s one core decodes from the jpeg store (bench/results/latest.md, q90 at 256px)")
    ap.add_argument("--autocast-casts", action="store_true", help="float32 weights cast by autocast every step")
    ap.add_argument("--eager-lrn", action="store_true", help="the LRN unfused: ~10 float32 passes each way")
    args = ap.parse_args(argv)
    rows, step_ms, ceiling = model_table(args)
    print(f"paper net, bf16 + channels_last, batch {args.batch}, {args.gpu}: predicted step {step_ms:.2f} ms, "
          f"{args.batch / step_ms * 1e3:,.0f} img/s = {args.batch / step_ms * 1e3 / ceiling:.2f} of the "
          f"{ceiling:,.0f} img/s the dense bf16 rate allows")
    print(f"loader bound: {args.cores} cores x {args.decode_per_core:,.0f} img/s = "
          f"{args.cores * args.decode_per_core:,.0f} img/s from the jpeg store (the raw store: memory-bound)")
    print(f"assumptions: matmul {args.matmul_efficiency:.0%} of peak (conv1 {args.conv1_efficiency:.0%}), "
          f"memory {args.memory_efficiency:.0%} of bandwidth, {args.launch_us:g} us a launch\n")
    print("| part | ms | share |\n|---|---|---|")
    for name, ms, share in rows:
        print(f"| {name} | {ms:.3f} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
