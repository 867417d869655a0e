"""#26 (9): the precision a trained net runs in for eval, features and predict. On the CPU it is
float32 as it always was; on CUDA bf16 autocast unless the caller or ALEXNET_INFERENCE_PRECISION
asks for float32, which is then full float32 (TF32 off), and `features --dtype float32` is float32
throughout. The CUDA tests compare with the CPU's numbers."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from alexnet.errors import UserError
from alexnet.evaluate import error_rates, features
from alexnet.evaluate.error_rates import inference_autocast
from alexnet.runtime import INFERENCE_PRECISION_SWITCH, full_float32, inference_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_the_precision_is_float32_on_the_cpu_and_bf16_on_cuda_unless_asked(monkeypatch):
    monkeypatch.delenv(INFERENCE_PRECISION_SWITCH, raising=False)
    assert inference_precision(None, CPU) == inference_precision("auto", CPU) == "float32"
    assert inference_precision(None, CUDA) == "bf16"
    assert inference_precision("float32", CUDA) == "float32" and inference_precision("bf16", CPU) == "bf16"
    monkeypatch.setenv(INFERENCE_PRECISION_SWITCH, "float32")
    assert inference_precision(None, CUDA) == "float32" and inference_precision("bf16", CUDA) == "bf16"
    monkeypatch.setenv(INFERENCE_PRECISION_SWITCH, "fp16")
    with pytest.raises(UserError, match="must be one of auto, bf16, float32"):
        inference_precision(None, CUDA)


def test_the_switch_chooses_the_context_the_net_runs_in(monkeypatch):
    monkeypatch.delenv(INFERENCE_PRECISION_SWITCH, raising=False)
    assert inference_autocast(CPU) is nullcontext  # the CPU path unchanged
    assert inference_autocast(CUDA, "float32") is full_float32
    with inference_autocast(CPU, "bf16")() as ctx:
        assert torch.is_autocast_enabled("cpu") and ctx.fast_dtype == torch.bfloat16
    monkeypatch.setenv(INFERENCE_PRECISION_SWITCH, "float32")
    assert inference_autocast(CUDA) is full_float32
    monkeypatch.setenv(INFERENCE_PRECISION_SWITCH, "bf16")
    assert inference_autocast(CUDA, "float32") is full_float32  # the caller's choice wins over the switch


def test_full_float32_turns_tf32_off_for_the_block_only():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        with full_float32():
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


@pytest.mark.parametrize("dtype, switch, precision", [("float32", "", "float32"), ("float16", "", "auto"),
                                                      ("float32", "bf16", None)])
def test_float32_features_are_computed_in_float32(tiny_run, demo_store, tmp_path, monkeypatch, dtype, switch,
                                                  precision):
    """`features --dtype float32` asks for float32 computation too (bf16 vectors stored as float32
    were what CUDA gave); the switch, where set, decides."""
    from alexnet.data import ImageStore
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint

    monkeypatch.setenv(INFERENCE_PRECISION_SWITCH, switch)
    asked = []

    def store_outputs(*args, precision=None, out=None, **kw):
        asked.append(precision)
        out[:] = 0
        return out

    monkeypatch.setattr(features, "store_outputs", store_outputs)
    model = model_from_checkpoint(load_checkpoint(tiny_run / "last.pt"))
    features.extract_features(model, ImageStore(demo_store, "val"), tmp_path / "f.npy", CPU, dtype=dtype)
    assert asked == [precision]


def test_eval_passes_its_precision_to_the_loop(tiny_run, demo_store, monkeypatch):
    chosen = []
    batch_outputs = error_rates.batch_outputs

    def spy(*args, autocast, **kw):
        chosen.append(autocast)
        return batch_outputs(*args, autocast=autocast, **kw)

    monkeypatch.setattr(error_rates, "batch_outputs", spy)
    error_rates.evaluate([tiny_run / "last.pt"], demo_store, device="cpu", progress=False, precision="float32")
    error_rates.evaluate([tiny_run / "last.pt"], demo_store, device="cpu", progress=False, precision="bf16")
    assert chosen[0] is nullcontext and chosen[1] is not nullcontext


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float32_on_cuda_is_the_cpus_float32(tiny_run, demo_store):
    """eval in float32 on CUDA gives the CPU's error rates; fc7 features agree to float32 rounding,
    where bf16 ones differ by bf16's (1e-2 relative)."""
    from alexnet.data import ImageStore
    from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint

    cpu = error_rates.evaluate([tiny_run / "last.pt"], demo_store, device="cpu", progress=False)
    gpu = error_rates.evaluate([tiny_run / "last.pt"], demo_store, device="cuda", progress=False, precision="float32")
    one = 1 / cpu["n"]  # a near-tie may fall the other way under another order of float32 sums
    assert abs(gpu["top1_err"] - cpu["top1_err"]) <= one and abs(gpu["top5_err"] - cpu["top5_err"]) <= one
    store = ImageStore(demo_store, "val")
    model = model_from_checkpoint(load_checkpoint(tiny_run / "last.pt"))
    want = error_rates.store_outputs(model, store, CPU, output="features")
    model = model_from_checkpoint(load_checkpoint(tiny_run / "last.pt"))
    f32 = error_rates.store_outputs(model, store, torch.device("cuda"), output="features", precision="float32")
    bf16 = error_rates.store_outputs(model, store, torch.device("cuda"), output="features", precision="bf16")
    scale = np.abs(want).max()
    assert np.abs(f32 - want).max() < 1e-4 * scale < np.abs(bf16 - want).max()
