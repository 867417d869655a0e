"""alexnet.model.lrn_op: §3.3's LRN as the torch operator alexnet::lrn (csrc/lrn.cpp), checked by
torch.library.opcheck, against an independent float64 computation of the formula and its gradient,
against the torch path, under torch.compile and torch.export; the switch that turns it off; the
private build folder."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from alexnet.errors import UserError
from alexnet.model import lrn_op
from alexnet.model.lrn import LocalResponseNorm, lrn_torch, local_response_norm

CL, NCHW = torch.channels_last, torch.contiguous_format


@pytest.fixture(scope="module")
def op():
    """The operator, built as the package builds it (whatever ALEXNET_LRN_OP says in this
    environment); skipped only where it genuinely does not build, after checking that the torch path
    is what runs then."""
    lrn_op.forget()
    environ = {k: v for k, v in os.environ.items() if k != lrn_op.SWITCH}
    if not lrn_op.load(environ):
        x = torch.rand(2, 8, 3, 3)
        assert torch.equal(local_response_norm(x, groups=2), lrn_torch(x, 5, 1e-4, 0.75, 2.0, 2))
        pytest.skip(f"the LRN operator does not build on this machine: {lrn_op.status()}")
    yield torch.ops.alexnet
    lrn_op.forget()


@pytest.fixture
def fresh():
    """The operator's load decided again in the test, and again after it (as in a new process)."""
    lrn_op.forget()
    yield
    lrn_op.forget()


def maps(shape, dtype=torch.float32, layout=CL, seed=0, scale=40.0):
    """ReLU-like maps as the net feeds the layer (zeros included), in `layout`."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).relu().to(dtype).contiguous(memory_format=layout)


def lrn64(a: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """§3.3 in float64 with the formula's own bounds, j from max(0, i - n/2) to min(N - 1, i + n/2)
    within each group, written map by map (differentiable: autograd gives the reference gradient)."""
    n = a.shape[1] // groups
    out = []
    for q in range(groups):
        tower = a[:, q * n:(q + 1) * n]
        sq = tower * tower
        for i in range(n):
            s = sq[:, max(0, i - size // 2): min(n - 1, i + size // 2) + 1].sum(1)
            out.append(tower[:, i] / (k + alpha * s) ** beta)
    return torch.stack(out, 1)


SHAPES = [(12, 5, 2), (7, 3, 1), (97, 5, 1), (96, 5, 2), (10, 1, 2)]  # (C, n, groups): odd C, C % 16 != 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [CL, NCHW], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("channels,size,groups", SHAPES)
def test_opcheck(op, dtype, layout, channels, size, groups):
    """Schema, fake tensors (shape, dtype, strides), the autograd registration and AOT dispatch."""
    x = maps((2, channels, 5, 3), dtype, layout).requires_grad_()
    torch.library.opcheck(op.lrn.default, (x, size, 1e-3, 0.75, 2.0, groups))
    g = maps((2, channels, 5, 3), dtype, layout, seed=1) - 20
    torch.library.opcheck(op.lrn_backward.default, (g, x.detach(), size, 1e-3, 0.75, 2.0, groups))


@pytest.mark.parametrize("layout", [CL, NCHW], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("beta", [0.75, 0.6])  # the sqrt path and the pow path
@pytest.mark.parametrize("channels,size,groups", SHAPES)
def test_matches_float64_forward_and_gradient(op, layout, beta, channels, size, groups):
    # 41 x 3 pixels: two full NCHW tiles of 16 and a short one; alpha large, so the cross-map
    # term of the gradient matters
    a = maps((2, channels, 41, 3), torch.float64, layout)
    alpha, k = 1e-3, 2.0
    ref = lrn64(a.clone().requires_grad_(), size, alpha, beta, k, groups)
    x = a.float().contiguous(memory_format=layout).requires_grad_()
    out = local_response_norm(x, size, alpha, beta, k, groups)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-6)
    g = torch.randn(a.shape, dtype=torch.float64)
    out.backward(g.float())
    b = a.clone().requires_grad_()
    (lrn64(b, size, alpha, beta, k, groups) * g).sum().backward()
    torch.testing.assert_close(x.grad.double(), b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", [CL, NCHW], ids=["channels_last", "nchw"])
def test_bf16_is_the_float32_result_rounded_once(op, layout):
    """The layer computes in float32 whatever its input: in bf16 the output and the gradient are the
    float32 ones rounded to the nearest even bf16 (as torch rounds)."""
    a = maps((3, 97, 6, 5), torch.bfloat16, layout)
    g = (torch.randn(a.shape) * 3).to(torch.bfloat16).contiguous(memory_format=layout)
    y, y32 = (op.lrn(t, 5, 1e-3, 0.75, 2.0, 1) for t in (a, a.float()))
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=layout)
    assert torch.equal(y, y32.to(torch.bfloat16))
    dx, dx32 = op.lrn_backward(g, a, 5, 1e-3, 0.75, 2.0, 1), op.lrn_backward(g.float(), a.float(), 5, 1e-3, 0.75, 2.0, 1)
    assert dx32.abs().max() > 0 and torch.equal(dx, dx32.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [CL, NCHW], ids=["channels_last", "nchw"])
def test_agrees_with_the_torch_path(op, dtype, layout):
    """The paper's norm1 shape per tower (96 maps, groups 2), forward and gradient, op against
    today's torch operations (band-matrix window sum, hand-written backward)."""
    a = maps((2, 96, 13, 13), dtype, layout)
    g = torch.randn(a.shape).to(dtype).contiguous(memory_format=layout)
    x, t = a.clone().requires_grad_(), a.clone().requires_grad_()
    y = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2)
    y_torch = lrn_torch(t, 5, 1e-4, 0.75, 2.0, 2)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 1e-2}
    torch.testing.assert_close(y, y_torch, **tol)
    y.backward(g)
    y_torch.backward(g)
    torch.testing.assert_close(x.grad, t.grad, **tol)


def test_same_bits_on_any_thread_count_and_grad_in_another_layout(op):
    """at::parallel_for splits pixels, never a pixel's window: the thread count changes no bit. A
    gradient in the other memory format is read as it is."""
    a = maps((4, 96, 27, 27))
    g = torch.randn(a.shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op.lrn(a, 5, 1e-4, 0.75, 2.0, 2), op.lrn_backward(g, a, 5, 1e-4, 0.75, 2.0, 2)
        torch.set_num_threads(2)
        two = op.lrn(a, 5, 1e-4, 0.75, 2.0, 2), op.lrn_backward(g.contiguous(memory_format=CL), a, 5, 1e-4, 0.75, 2.0, 2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert op.lrn(a[:0], 5, 1e-4, 0.75, 2.0, 2).shape == (0, 96, 27, 27)
    strided = a[:, :, ::2]  # neither layout: read as contiguous
    torch.testing.assert_close(op.lrn(strided, 5, 1e-4, 0.75, 2.0, 2), op.lrn(strided.contiguous(), 5, 1e-4, 0.75, 2.0, 2))


@pytest.mark.parametrize("layout", [CL, NCHW], ids=["channels_last", "nchw"])
def test_a_non_finite_input_stays_in_its_pixel(op, layout):
    """A NaN or inf in one pixel's maps reaches no other pixel, forward or backward (the buffers hold
    several pixels side by side): here at the edges of the groups, next to the zeros between rows."""
    a = maps((1, 12, 4, 5), layout=layout)
    a[0, 5, 1, 2], a[0, 11, 2, 2] = float("nan"), float("inf")
    g = torch.randn(a.shape)
    bad = torch.zeros(1, 1, 4, 5, dtype=torch.bool)
    bad[0, 0, 1, 2] = bad[0, 0, 2, 2] = True
    for out in (op.lrn(a, 5, 1e-3, 0.75, 2.0, 2), op.lrn_backward(g, a, 5, 1e-3, 0.75, 2.0, 2)):
        assert out.masked_select(~bad).isfinite().all()


def test_refuses_what_it_does_not_compute(op):
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        op.lrn(torch.rand(1, 4, 2, 2, dtype=torch.float64), 5, 1e-4, 0.75, 2.0, 1)
    with pytest.raises(RuntimeError, match="odd window"):
        op.lrn(torch.rand(1, 4, 2, 2), 4, 1e-4, 0.75, 2.0, 1)
    with pytest.raises(RuntimeError, match="do not split"):
        op.lrn(torch.rand(1, 5, 2, 2), 3, 1e-4, 0.75, 2.0, 2)
    a = maps((1, 6, 2, 2), torch.float64)  # float64 keeps the torch path
    torch.testing.assert_close(local_response_norm(a, 3, 1e-3, 0.75, 2.0, 2), lrn64(a, 3, 1e-3, 0.75, 2.0, 2))


def _graph_backend(graphs: list):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return backend


def test_compile_sees_the_operator_whole(op):
    """torch.compile(fullgraph=True) on the CPU keeps alexnet::lrn as one node (measured faster than
    inductor's fusion of the formula, bench/docs/native.md), forward and backward, same results."""
    a = maps((2, 96, 7, 7))
    g = torch.randn(a.shape)
    graphs: list = []
    fn = torch.compile(lambda t: local_response_norm(torch.relu(t), 5, 1e-4, 0.75, 2.0, 2), fullgraph=True,
                       backend=_graph_backend(graphs))
    x, y = a.clone().requires_grad_(), a.clone().requires_grad_()
    out = fn(x)
    assert len(graphs) == 1 and "alexnet.lrn" in graphs[0].code
    ref = local_response_norm(torch.relu(y), 5, 1e-4, 0.75, 2.0, 2)
    assert torch.equal(out, ref)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, y.grad)
    # and through inductor, which calls the operator as an external kernel
    compiled = torch.compile(lambda t: local_response_norm(t, 5, 1e-4, 0.75, 2.0, 2), fullgraph=True)
    x, y = a.clone().requires_grad_(), a.clone().requires_grad_()
    out, ref = compiled(x), local_response_norm(y, 5, 1e-4, 0.75, 2.0, 2)
    assert torch.equal(out, ref)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, y.grad)


def test_export(op):
    """torch.export of the layer gives plain torch operations (the formula: an exported or ONNX graph
    runs where this package's library is not), computing the same; a module that calls the operator
    itself exports it as one node (its fake implementation gives the shapes)."""
    a = maps((2, 12, 5, 4))
    exported = torch.export.export(LocalResponseNorm(5, 1e-3, 0.75, 2.0, groups=2), (a,))
    assert "alexnet" not in str(exported.graph)
    torch.testing.assert_close(exported.module()(a), local_response_norm(a, 5, 1e-3, 0.75, 2.0, 2), rtol=1e-6, atol=1e-6)

    class CallsTheOperator(torch.nn.Module):
        def forward(self, t):
            return lrn_op.lrn(t, 5, 1e-3, 0.75, 2.0, 2)

    exported = torch.export.export(CallsTheOperator(), (a,))
    assert "alexnet.lrn.default" in str(exported.graph)
    assert torch.equal(exported.module()(a), op.lrn(a, 5, 1e-3, 0.75, 2.0, 2))


def test_the_switch_turns_it_off(op, fresh, monkeypatch):
    """ALEXNET_LRN_OP=0: the torch operations, bit for bit, whether or not the operator builds."""
    monkeypatch.setenv(lrn_op.SWITCH, "0")
    a = maps((2, 12, 5, 4)).requires_grad_()
    out = local_response_norm(a, 5, 1e-3, 0.75, 2.0, 2)
    assert "off" in lrn_op.status() and not lrn_op.load()
    assert torch.equal(out, lrn_torch(a, 5, 1e-3, 0.75, 2.0, 2))
    monkeypatch.setenv(lrn_op.SWITCH, "1")
    lrn_op.forget()
    assert lrn_op.load() and "loaded from" in lrn_op.status()


def _open_folder(tmp_path, name: str, owner: int | None = None):
    folder = tmp_path / name
    folder.mkdir()
    folder.chmod(0o777)  # mkdir's mode is cut by the umask
    if owner is not None:
        folder.chmod(0o700)
        os.chown(folder, owner, owner)
    return folder


def test_the_build_folder_is_private(tmp_path, fresh, caplog):
    """torch's default build folder sits in /tmp, where another user could plant the library this
    process loads: a group- or world-writable folder, another user's or a link is refused; the
    torch path runs after one warning line (no traceback), or, with ALEXNET_LRN_OP=1, a UserError."""
    folder = lrn_op.build_folder({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert folder.parent == tmp_path / "cache" / "alexnet" / "torch_extensions"
    assert folder.name.startswith(torch.__version__.replace("+", "_") + "-")
    assert (folder.stat().st_mode & 0o777) == 0o700 and folder.parent.stat().st_mode & 0o777 == 0o700
    shared = _open_folder(tmp_path, "shared")
    refused = [shared, shared.parent / "link"]
    refused[1].symlink_to(shared)
    if os.geteuid() == 0:  # another user's folder, closed to others but not ours
        refused.append(_open_folder(tmp_path, "theirs", owner=2002))
    for bad in refused:
        with pytest.raises(UserError, match="not a folder of this user's own"):
            lrn_op.build_folder({"TORCH_EXTENSIONS_DIR": str(bad)})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alexnet.model.lrn_op"):
        assert not lrn_op.load({"TORCH_EXTENSIONS_DIR": str(shared)})
    assert [r.getMessage().count("\n") for r in caplog.records] == [0] and "did not build" in caplog.text
    assert "not a folder of this user's own" in lrn_op.status() and not list(shared.iterdir())
    a = maps((2, 12, 5, 4))
    assert torch.equal(local_response_norm(a, 5, 1e-3, 0.75, 2.0, 2), lrn_torch(a, 5, 1e-3, 0.75, 2.0, 2))
    lrn_op.forget()
    with pytest.raises(UserError, match="ALEXNET_LRN_OP=1 but the LRN operator did not build"):
        lrn_op.load({"TORCH_EXTENSIONS_DIR": str(shared), lrn_op.SWITCH: "1"})


def test_without_a_compiler_the_torch_path_runs_after_one_warning_line(tmp_path):
    """A machine with no ninja or C++ compiler (here: an empty PATH) trains as before: one warning
    line, no traceback, the torch operations' results."""
    import subprocess
    import sys

    code = ("import torch; from alexnet.model.lrn import local_response_norm, lrn_torch; "
            "x = torch.rand(2, 12, 5, 4); "
            "assert torch.equal(local_response_norm(x, 5, 1e-3, 0.75, 2.0, 2), lrn_torch(x, 5, 1e-3, 0.75, 2.0, 2)); "
            "print('same')")
    env = {k: v for k, v in os.environ.items() if k != lrn_op.SWITCH}
    env.update(PATH=str(tmp_path / "empty"), TORCH_EXTENSIONS_DIR=str(tmp_path / "build"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr
    assert done.stderr.count("\n") == 1 and "the LRN operator did not build" in done.stderr, done.stderr


def test_numpy_reference_agrees_with_lrn64():
    """The float64 reference of these tests against the literal NumPy loop of the paper's formula."""
    a = maps((2, 7, 3, 2), torch.float64)
    ref = np.empty_like(a.numpy())
    for i in range(7):
        ref[:, i] = a.numpy()[:, i] / (2.0 + 1e-3 * (a.numpy()[:, max(0, i - 1): i + 2] ** 2).sum(1)) ** 0.75
    np.testing.assert_allclose(lrn64(a, 3, 1e-3, 0.75, 2.0, 1).numpy(), ref, rtol=1e-14)
