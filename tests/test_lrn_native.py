"""alexnet.lrn_native: the fused C kernel of §3.3's LRN, against float64 NumPy, against the torch
operations it replaces, and how it is built, cached and bypassed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alexnet import lrn_native, native
from alexnet.lrn import local_response_norm

needs_kernel = pytest.mark.skipif(lrn_native.load() is None, reason=f"LRN kernel: {lrn_native.status()}")


def np_lrn_and_gradient(a: np.ndarray, g: np.ndarray, size: int, alpha: float, k: float, groups: int):
    """float64, straight from the formula: b_i = a_i / s_i^3/4, s_i = k + alpha sum_{j in window(i)} a_j^2
    within each group, and the gradient sum_i g_i db_i/da_j (with window(i) the formula's bounds)."""
    c = a.shape[1]
    n = c // groups
    lo = [(i // n) * n for i in range(c)]
    window = [range(max(lo[i], i - size // 2), min(lo[i] + n - 1, i + size // 2) + 1) for i in range(c)]
    s = np.stack([k + alpha * sum(a[:, j] ** 2 for j in window[i]) for i in range(c)], 1)
    b = a / s**0.75
    grad = g * s**-0.75
    for i in range(c):  # d b_i / d a_j = -0.75 a_i s_i^-1.75 * 2 alpha a_j, for j in window(i)
        for j in window[i]:
            grad[:, j] -= g[:, i] * a[:, i] * 1.5 * alpha * s[:, i] ** -1.75 * a[:, j]
    return b, grad


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@needs_kernel
@pytest.mark.parametrize("channels,size,groups", [(12, 5, 2), (7, 3, 1), (96, 5, 1), (256, 5, 2), (3, 7, 1), (8, 1, 2)])
def test_kernel_matches_the_formula_and_its_gradient(channels, size, groups, monkeypatch):
    monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", 1)  # rows split over threads, the last part short
    torch.manual_seed(channels)
    a = channels_last(torch.rand(3, channels, 5, 7) * 60)
    g = channels_last(torch.randn(a.shape))
    alpha, k = 1e-3, 2.0  # large alpha: the cross-map term of the gradient matters
    ref, ref_grad = np_lrn_and_gradient(a.double().numpy(), g.double().numpy(), size, alpha, k, groups)
    x = a.clone().requires_grad_()
    out = local_response_norm(x, size, alpha, 0.75, k, groups)
    out.backward(g)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=2e-5, atol=2e-6)
    assert np.abs(ref - a.numpy() / k**0.75).max() > 1.0  # the normalisation does something here
    with torch.no_grad():
        torch.testing.assert_close(local_response_norm(a, size, alpha, 0.75, k, groups), out.detach(), rtol=0, atol=0)


@needs_kernel
def test_kernel_and_torch_operations_agree_in_float32_and_bf16(monkeypatch):
    """The kernel is what the net runs on the CPU, the torch operations what it runs elsewhere and in
    exported graphs: one layer, two ways, within float32 rounding; in bf16 both round one float32
    result."""
    torch.manual_seed(0)
    a = channels_last(torch.rand(4, 96, 9, 9) * 80).bfloat16()  # values a bf16 holds exactly
    g = channels_last(torch.randn(a.shape)).bfloat16()
    results = {}
    for path in ("kernel", "torch"):
        if path == "torch":
            monkeypatch.setattr(lrn_native, "applies", lambda *a: False)
        for dtype in (torch.float32, torch.bfloat16):
            x = a.to(dtype, copy=True).requires_grad_()
            out = local_response_norm(x, groups=2)
            out.backward(g.to(dtype))
            results[path, dtype] = out.detach(), x.grad
    for i in (0, 1):
        torch.testing.assert_close(results["kernel", torch.float32][i], results["torch", torch.float32][i],
                                   rtol=1e-6, atol=1e-6)
        for path in ("kernel", "torch"):
            torch.testing.assert_close(results[path, torch.bfloat16][i],
                                       results[path, torch.float32][i].bfloat16(), rtol=0, atol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_inside_the_kernel_is_relu_then_the_layer(dtype, monkeypatch):
    """relu=True (what the net runs: §3.3 normalises the ReLU's output) gives the bits of torch.relu
    followed by the layer, forward and backward, the gradient zero where the input was not positive,
    and the float64 formula on max(x, 0); x itself is left as it was. Off the kernel, the same."""
    monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", 1)
    torch.manual_seed(1)
    a = channels_last(torch.randn(3, 12, 5, 7) * 40).to(dtype)
    a[0, :, 0, 0] = 0.0  # the ReLU's edge: no gradient through an input of exactly 0
    g = channels_last(torch.randn(a.shape)).to(dtype)
    alpha, k = 1e-3, 2.0
    results = {}
    for path in ("fused", "relu first", "torch operations"):
        if path == "torch operations":
            monkeypatch.setattr(lrn_native, "applies", lambda *args: False)
        x = a.clone().requires_grad_()
        out = (local_response_norm(torch.relu(x), 5, alpha, 0.75, k, 2) if path == "relu first" else
               local_response_norm(x, 5, alpha, 0.75, k, 2, relu=True))
        out.backward(g)
        results[path] = out.detach(), x.grad
        assert torch.equal(x.detach(), a)
    for got, expected in zip(results["fused"], results["relu first"]):
        assert torch.equal(got, expected)
    fused_grad = results["fused"][1]
    assert (fused_grad[a <= 0] == 0).all() and (fused_grad[a > 0] != 0).any()
    ref, ref_grad = np_lrn_and_gradient(a.double().clamp_min(0).numpy(), g.double().numpy(), 5, alpha, k, 2)
    ref_grad = ref_grad * (a.double().numpy() > 0)
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for path in ("fused", "torch operations"):
        np.testing.assert_allclose(results[path][0].double().numpy(), ref, **tol)
        np.testing.assert_allclose(results[path][1].double().numpy(), ref_grad, **{k: v * 10 for k, v in tol.items()})


@needs_kernel
def test_the_net_runs_its_relus_inside_the_lrn_kernel_with_the_same_bits(monkeypatch):
    from alexnet.config import VARIANTS
    from alexnet.model import AlexNet

    class ReluThenLayer(AlexNet):
        def _normalised(self, norm, x):
            return norm(self.act(x))

    torch.manual_seed(0)
    net = AlexNet(VARIANTS["tiny"])
    other = ReluThenLayer(VARIANTS["tiny"])
    other.load_state_dict(net.state_dict())
    calls = []
    real = lrn_native.forward
    monkeypatch.setattr(lrn_native, "forward", lambda *args: calls.append(args[-1]) or real(*args))
    x = torch.rand(4, 3, 64, 64) * 255 - 120
    grads = []
    for model in (net, other):
        torch.manual_seed(1)  # the same dropout masks
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert calls == [True, True, False, False]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_kernel_applies_only_where_it_computes_the_layer():
    cl = channels_last(torch.rand(2, 8, 4, 4))
    built = lrn_native.load() is not None
    assert lrn_native.applies(cl, 5, 0.75, 2) == built
    assert lrn_native.applies(cl.bfloat16(), 5, 0.75, 1) == built
    assert not lrn_native.applies(torch.rand(2, 8, 4, 4), 5, 0.75, 2)  # NCHW: torch operations
    assert not lrn_native.applies(cl.double(), 5, 0.75, 2)
    assert not lrn_native.applies(cl, 5, 0.5, 2)  # the kernel's power is the paper's 3/4
    assert not lrn_native.applies(cl, 4, 0.75, 2)  # a window centred on each map
    assert not lrn_native.applies(cl, 5, 0.75, 3)
    assert not lrn_native.applies(torch.rand(8, 4), 5, 0.75, 1)
    wide = channels_last(torch.rand(1, lrn_native.MAX_MAPS_A_GROUP + 2, 1, 1))
    assert lrn_native.applies(wide, 5, 0.75, 2) == built and not lrn_native.applies(wide, 5, 0.75, 1)
    empty = channels_last(torch.rand(0, 8, 3, 3))
    assert local_response_norm(empty).shape == empty.shape
    seen = []

    def record(t):
        seen.append(lrn_native.applies(t, 5, 0.75, 1))
        return t * 2

    torch.jit.trace(record, (cl,), check_trace=False)
    assert seen == [False]  # a traced graph (ONNX export) keeps torch operations


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """lrn_native as in a new process, with its cache in tmp_path."""
    monkeypatch.setattr(lrn_native.KERNEL, "_library", None)
    monkeypatch.setattr(lrn_native.KERNEL, "_status", "not loaded yet")
    monkeypatch.setenv("ALEXNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ALEXNET_LRN_KERNEL", raising=False)
    return tmp_path / "cache"


def test_without_a_working_compiler_the_layer_runs_as_torch_operations(fresh, monkeypatch, tmp_path):
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: no such thing' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    a = channels_last(torch.rand(2, 12, 3, 3) * 50)
    out = local_response_norm(a, groups=2)
    assert lrn_native.load() is None and "not built" in lrn_native.status() and "no such thing" in lrn_native.status()
    assert not lrn_native.applies(a, 5, 0.75, 2)
    ref, _ = np_lrn_and_gradient(a.double().numpy(), np.zeros(a.shape), 5, 1e-4, 2.0, 2)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    assert not list(fresh.glob("*"))  # no half-built library left behind


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("ALEXNET_LRN_KERNEL", "0")
    assert lrn_native.load() is None and "ALEXNET_LRN_KERNEL=0" in lrn_native.status()
    assert not lrn_native.applies(channels_last(torch.rand(2, 8, 3, 3)), 5, 0.75, 1)


@needs_kernel
def test_built_once_then_loaded_from_the_cache(fresh, monkeypatch):
    assert lrn_native.load() is not None
    built = sorted(fresh.iterdir())
    assert [p.suffix for p in built] == [".so"] and built[0].name.startswith("lrn-")
    assert str(built[0]) in lrn_native.status()
    # a second process: no compile, the same file
    monkeypatch.setattr(lrn_native.KERNEL, "_library", None)
    monkeypatch.setattr(lrn_native.KERNEL, "_status", "not loaded yet")
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(native.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    assert lrn_native.load() is not None
    assert calls == [[calls[0][0], "--version"]] and sorted(fresh.iterdir()) == built


@needs_kernel
def test_processes_starting_together_each_get_a_whole_library(tmp_path):
    """torchrun's ranks load the kernel at the same moment from an empty cache: each compiles to its
    own temporary name and renames it whole, so every one computes the layer."""
    code = ("import torch; from alexnet import lrn_native; from alexnet.lrn import local_response_norm;"
            "x = torch.rand(2, 8, 3, 3).contiguous(memory_format=torch.channels_last);"
            "y = local_response_norm(x); assert lrn_native.load() is not None, lrn_native.status(); print('ok')")
    env = {**os.environ, "ALEXNET_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [next((tmp_path / "cache").iterdir()).name]


@needs_kernel
def test_a_paper_net_step_is_the_same_with_the_kernel_and_without(monkeypatch):
    """The net (channels last on the CPU) runs both LRN layers through the kernel; its loss and every
    gradient match the torch operations' to float32 rounding."""
    from alexnet.model import AlexNet

    torch.manual_seed(0)
    net = AlexNet()
    images, labels = torch.randn(2, 3, 224, 224) * 50, torch.tensor([3, 7])
    calls = []
    real_forward = lrn_native.forward
    monkeypatch.setattr(lrn_native, "forward", lambda *a, **kw: calls.append(1) or real_forward(*a, **kw))
    steps = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(lrn_native, "applies", lambda *a: False)
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        steps.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    assert len(calls) == 2  # norm1 and norm2, with the kernel only
    torch.testing.assert_close(steps[0][0], steps[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(steps[0][1], steps[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def _layer_in_threads(x, result):
    torch.set_num_threads(2)
    native.PARALLEL_MIN_ELEMENTS = 1
    result.put(float(local_response_norm(x).sum()))


@needs_kernel
def test_a_forked_child_runs_the_kernel_on_threads_of_its_own(monkeypatch):
    """The kernel's worker threads are kept between calls; a child forked after they started (a
    DataLoader worker, a test that forks) has none of them and must start its own, not wait forever."""
    import multiprocessing

    monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", 1)
    torch.set_num_threads(2)
    x = channels_last(torch.rand(2, 8, 3, 3))
    expected = float(local_response_norm(x).sum())
    assert native._pool is not None  # the parent's threads exist
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_layer_in_threads, args=(x, result))
    child.start()
    child.join(timeout=120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0 and result.get(timeout=5) == pytest.approx(expected, rel=1e-6)


@needs_kernel
def test_compiled_the_layer_and_the_net_stay_one_graph():
    """Under torch.compile (`--compile`) applies() says no before it reaches the library, so dynamo
    traces the torch operations whole: one graph, no break, for the layer and for a net."""
    from alexnet.config import VARIANTS
    from alexnet.model import AlexNet

    x = channels_last(torch.rand(2, 96, 3, 3) * 80)
    for t in (x, x.clone().requires_grad_()):
        explained = torch._dynamo.explain(lambda t: local_response_norm(t, groups=2))(t)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    explained = torch._dynamo.explain(AlexNet(VARIANTS["tiny"]))(torch.rand(4, 3, 64, 64) * 255)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_training_says_when_the_lrn_runs_without_its_kernel(fresh, monkeypatch, demo_store, tmp_path):
    """Nobody should find out from the clock that the kernel was not built: `alexnet train` on the
    CPU says so in its log, with the reason; with the kernel it says nothing of it."""
    from alexnet.config import resolve
    from alexnet.run import fit

    config = resolve({"variant": "tiny", "train": {"epochs": 1, "max_steps": 2, "batch_size": 32, "device": "cpu"}})
    monkeypatch.setenv("ALEXNET_LRN_KERNEL", "0")
    fit(config, demo_store, tmp_path / "off", progress=False, echo=False)
    log = (tmp_path / "off" / "train.log").read_text()
    assert "LRN as torch operations" in log and "ALEXNET_LRN_KERNEL=0" in log
    monkeypatch.setattr(lrn_native.KERNEL, "_status", "not loaded yet")
    monkeypatch.delenv("ALEXNET_LRN_KERNEL")
    if lrn_native.load() is not None:
        fit(config, demo_store, tmp_path / "on", progress=False, echo=False)
        assert "LRN as torch operations" not in (tmp_path / "on" / "train.log").read_text()
