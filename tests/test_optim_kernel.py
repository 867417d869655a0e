"""§5's update rule through sgd_kernel.c: the same bits as the torch passes it replaces, the paper's
rule against NumPy float64, and the torch passes wherever the kernel does not apply."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from alexnet import native, optim
from alexnet.optim import PaperSGD

needs_kernel = pytest.mark.skipif(optim.KERNEL.load() is None, reason=f"SGD kernel: {optim.KERNEL.status()}")


@pytest.fixture
def kernel_off(monkeypatch):
    """A switch for the rest of the test: kernel_off() and PaperSGD runs the torch passes."""
    def off():
        monkeypatch.setattr(optim.KERNEL, "_library", None)
        monkeypatch.setattr(optim.KERNEL, "_status", "off for the test")
    return off


@pytest.fixture
def calls(monkeypatch):
    """The tensors' shapes the kernel was run on."""
    seen = []
    real = native.run_split

    def spy(function, tensors, *args):
        seen.append(tuple(tensors[0].shape))
        return real(function, tensors, *args)

    monkeypatch.setattr(native, "run_split", spy)
    return seen


def make_params(seed: int) -> list[nn.Parameter]:
    """Shapes with vector tails, a channels-last convolution weight (the net's layout on the CPU), and
    one large enough to be split over threads."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(6, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    return [nn.Parameter(t) for t in (torch.randn(7, 3, generator=g), torch.randn(13, generator=g), conv,
                                      torch.randn(3001, 37, generator=g))]


def train(params: list[nn.Parameter], lrs: list[float], seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    opt = PaperSGD([{"params": params[:1] + params[2:], "weight_decay": 0.0005},
                    {"params": params[1:2], "weight_decay": 0.0}], lr=lrs[0], momentum=0.9)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last if p.dim() == 4 else
                                                         torch.contiguous_format)
        opt.step()
    return [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]


@needs_kernel
def test_the_kernel_gives_the_bits_of_the_torch_passes(kernel_off, calls, monkeypatch):
    """Switching the kernel on or off changes no bit of a run (bit-exact resume across machines with
    and without a compiler), across a learning-rate drop, in one thread and split over two."""
    lrs = [0.01] * 6 + [0.001] * 6
    monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with_kernel = train(make_params(0), lrs)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 4 * len(lrs)
    kernel_off()
    without = train(make_params(0), lrs)
    assert len(calls) == 4 * len(lrs)
    for a, b in zip(with_kernel[0] + with_kernel[1], without[0] + without[1]):
        assert torch.equal(a, b)
    assert with_kernel[0][2].is_contiguous(memory_format=torch.channels_last)


@needs_kernel
def test_the_kernel_computes_the_papers_rule(calls):
    """Against v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v in float64 (biases without decay)."""
    lrs = [0.01] * 8 + [0.001] * 8
    params = make_params(3)
    w0 = [p.detach().double().numpy().copy() for p in params]
    got, _ = train(params, lrs, seed=4)
    assert calls
    g = torch.Generator().manual_seed(4)
    grads = [[torch.randn(p.shape, generator=g).double().numpy() for p in params] for _ in lrs]
    for i, w in enumerate(w0):
        v = np.zeros_like(w)
        wd = 0.0 if i == 1 else 0.0005
        for step, lr in enumerate(lrs):
            v = 0.9 * v - wd * lr * w - lr * grads[step][i]
            w = w + v
        np.testing.assert_allclose(got[i].double().numpy(), w, rtol=1e-5, atol=1e-6)


def test_tensors_the_kernel_cannot_take_go_through_torch(calls):
    """float64, and a parameter whose memory is not laid out as the kernel's flat pass reads it (a
    transposed view): the torch passes update them, the kernel the others, all by the paper's rule."""
    dense = nn.Parameter(torch.ones(4, 5))
    wide = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    strided = nn.Parameter(torch.ones(6, 4).t())
    opt = PaperSGD([dense, wide, strided], lr=0.1, momentum=0.9, weight_decay=0.5)
    for p in (dense, wide, strided):
        p.grad = torch.full_like(p, 2.0)
    assert strided.grad.stride() == strided.stride() == (1, 4)
    opt.step()
    opt.step()
    # v1 = -0.5*0.1*1 - 0.1*2 = -0.25, w1 = 0.75; v2 = 0.9*v1 - 0.05*0.75 - 0.2 = -0.4625, w2 = 0.2875
    for p in (dense, wide, strided):
        torch.testing.assert_close(p.detach(), torch.full_like(p, 0.2875))
    assert calls == ([(4, 5)] * 2 if optim.KERNEL.load() is not None else [])


def test_switched_off_by_the_environment_and_said_in_the_log(monkeypatch, demo_store, tmp_path):
    from alexnet.config import resolve
    from alexnet.run import fit

    monkeypatch.setattr(optim.KERNEL, "_library", None)
    monkeypatch.setattr(optim.KERNEL, "_status", native.NOT_LOADED)
    monkeypatch.setenv("ALEXNET_SGD_KERNEL", "0")
    assert optim.KERNEL.load() is None and "ALEXNET_SGD_KERNEL=0" in optim.KERNEL.status()
    config = resolve({"variant": "tiny", "train": {"epochs": 1, "max_steps": 2, "batch_size": 32, "device": "cpu"}})
    fit(config, demo_store, tmp_path / "off", progress=False, echo=False)
    log = (tmp_path / "off" / "train.log").read_text()
    assert "update rule as torch operations" in log and "ALEXNET_SGD_KERNEL=0" in log


def test_a_cpu_without_fma_keeps_the_torch_passes():
    """Without FMA the kernel's fmaf would be a library call per element, and torch rounds twice:
    binding refuses it, and load() says why."""
    class NoFma:
        def __init__(self):
            self.paper_sgd_f32 = type("Function", (), {})()
            self.paper_sgd_has_fma = lambda: 0

    with pytest.raises(OSError, match="no fused multiply-add"):
        optim._bind(NoFma())
    if optim.KERNEL.load() is not None:
        assert optim.KERNEL.load().paper_sgd_has_fma() == 1  # this machine: AVX2 or better
