"""bench/gpu_model.py's step-time model: its arithmetic follows the net (multiply-adds, parameters)."""

import argparse

import pytest

from alexnet.model.net import count_parameters, create_model, multiply_adds


def _args(**kw):
    base = dict(gpu="h100-sxm", batch=128, matmul_efficiency=0.5, conv1_efficiency=0.25, memory_efficiency=0.8,
                launch_us=5.0, autocast_casts=False, eager_lrn=False, cores=16, decode_per_core=2671.0)
    return argparse.Namespace(**{**base, **kw})


def test_the_model_counts_the_nets_own_multiply_adds_and_parameters(bench):
    model = bench("gpu_model")
    parts = model.step_parts(batch=4)
    net = create_model("paper")
    assert sum(p.macs for p in parts) == multiply_adds(net)
    matmul = [p for p in parts if p.kind == "matmul"]
    conv1 = next(p for p in matmul if p.name == "conv1")
    # forward + both gradients, but conv1's input (the images) needs none: 6 x MACs less 2 x conv1's
    assert sum(p.flop for p in matmul) == pytest.approx(4 * (6 * multiply_adds(net) - 2 * conv1.macs))
    optimizer = next(p for p in parts if p.name == "optimizer")
    assert optimizer.bytes == count_parameters(net) * 20
    casts = next(p for p in model.step_parts(batch=4, master_weights=False) if p.name == "optimizer")
    assert casts.bytes == count_parameters(net) * 32


def test_shares_sum_to_one_and_a_part_is_the_slower_of_its_flop_and_bytes(bench):
    model = bench("gpu_model")
    rows, step_ms, ceiling = model.model_table(_args())
    assert sum(share for _, _, share in rows) == pytest.approx(1.0)
    assert sum(ms for _, ms, _ in rows) == pytest.approx(step_ms)
    assert ceiling == pytest.approx(989e12 / (6 * multiply_adds(create_model("paper"))))
    # twice the bandwidth halves every memory-bound part and leaves a compute-bound one alone
    fast = dict((name, ms) for name, ms, _ in model.model_table(_args(memory_efficiency=1.6))[0])
    slow = dict((name, ms) for name, ms, _ in rows)
    assert fast["relu1"] == pytest.approx(slow["relu1"] / 2)
    assert fast["conv2"] == pytest.approx(slow["conv2"])
    assert dict((n, ms) for n, ms, _ in model.model_table(_args(launch_us=0.0))[0])[
        "kernel launches (0 with CUDA graphs)"] == 0.0
