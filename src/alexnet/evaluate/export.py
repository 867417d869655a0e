"""`alexnet export`: the trained net as ONNX, with the mean subtraction inside the graph.

Input "image": (batch, 3, S, S) float32 RGB on the 0..255 scale, the centre S x S patch of an image
whose shorter side was resized to the store's size (§2); output "logits" (batch, classes). The class
WordNet ids and names travel in the model's metadata."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.model.net import AlexNet
from alexnet.data.augment import center_crop
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import check_fits
from alexnet.files import atomic_path


class WithMean(nn.Module):
    """The net with the training mean (its centre patch, §2) subtracted from its input first."""

    def __init__(self, model: nn.Module, mean_patch: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean_patch.permute(2, 0, 1)[None].contiguous())  # (1, 3, S, S)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image - self.mean)


def deployable(source: str | os.PathLike | AlexNet) -> tuple[WithMean, dict]:
    """The net of a checkpoint (or a net that carries its mean image, as `alexnet.load` gives it) with
    its mean inside, in eval mode, and the checkpoint (for a net: its path, classes, class_names,
    image_size and mean). A net given is copied (to the CPU), never changed."""
    if isinstance(source, AlexNet):
        if source.input_mean is None:
            raise UserError("this net has no mean image to put in the graph (a fresh net): load a trained one, or "
                            "give it one with net.set_preprocessing(mean)")
        model = copy.deepcopy(source).cpu().float()
        classes = model.classes or [str(i) for i in range(model.config.num_classes)]
        info = {"path": model.checkpoint or "a net in memory", "classes": classes,
                "class_names": model.class_names or classes, "image_size": model.image_size,
                "mean": model.input_mean}
    else:
        payload = load_checkpoint(source)
        check_fits(payload)
        model = model_from_checkpoint(payload)
        info = payload
    mean_patch = center_crop(model.input_mean[None].float(), model.config.input_size)[0]
    model.input_mean = None  # the patch inside WithMean is what the graph subtracts
    return WithMean(model, mean_patch).eval(), info


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter narrates its passes on stdout, logs about its own internals ("torchvision is not
    installed") and warns; hush all three while it runs and put the logger's level back after."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(checkpoint: str | os.PathLike | AlexNet, out: str | os.PathLike, verify: bool = True,
                say: Callable[[str], None] = lambda msg: None) -> dict:
    """`alexnet export` and `alexnet.export_onnx(net, path)`: write the ONNX file of a checkpoint or of a
    net that carries its mean image (atomically) and, when onnxruntime is installed, the largest difference
    between its outputs and PyTorch's on random images. `say` hears, once the checkpoint is read, that
    the export (silent, half a minute on a CPU) has begun."""
    missing = missing_onnx_packages()
    if missing:
        raise UserError(f"ONNX export needs the package{'s' * (len(missing) > 1)} {' and '.join(missing)}, which "
                        f"{'are' if len(missing) > 1 else 'is'} not installed: pip install {' '.join(missing)} "
                        f"(or pip install 'alexnet[onnx]')")
    wrapped, payload = deployable(checkpoint)
    say(f"exporting {payload['path']} to ONNX{' and checking it with onnxruntime' if verify else ''} "
        "(half a minute on a CPU)...")
    crop = wrapped.model.config.input_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, tmp_suffix=".partial.onnx") as tmp:
        _write_onnx(wrapped, payload, tmp)
    result = {"onnx": str(out), "input": (None, 3, crop, crop), "max_abs_diff": None}
    if verify:
        try:
            import onnxruntime as ort
        except ImportError:
            return result
        x = torch.rand(5, 3, crop, crop, generator=torch.Generator().manual_seed(0)) * 255
        with torch.no_grad():
            ref = wrapped(x).numpy()
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
        result["max_abs_diff"] = float(abs(got - ref).max())
        result["max_abs_logit"] = float(abs(ref).max())
    return result


def missing_onnx_packages() -> list[str]:
    """The packages torch's ONNX exporter (the dynamo one: torch.export, then onnxscript) needs and this
    environment lacks. The TorchScript exporter is no fallback: in torch 2.13 it fails on the LRN's log()."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _write_onnx(wrapped: WithMean, payload: dict, path: Path) -> None:
    """The graph (torch's dynamo exporter) with the classes and the expected input in its metadata."""
    crop = wrapped.model.config.input_size
    example = torch.rand(2, 3, crop, crop) * 255
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(wrapped, (example,), path, input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, dynamo=True,
                          external_data=False, verbose=False)
    import onnx

    proto = onnx.load(path)
    meta = {"classes": json.dumps(payload["classes"]), "class_names": json.dumps(payload["class_names"]),
            "image_size": str(payload["image_size"]), "input": f"(batch, 3, {crop}, {crop}) RGB 0..255, "
            f"centre patch of an image resized to shorter side {payload['image_size']}"}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, path)
