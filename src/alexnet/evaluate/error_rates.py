"""§6 evaluation: top-1 and top-5 error of one checkpoint or an average of several (the paper's
ensembles), on the centre patch or the average of the ten patches' softmax outputs (§4.1).

One loop runs a trained net over images for every user: `batch_outputs` takes batches of store
images, makes the test views (the centre patch, or §4.1's ten: five without reflections when the
run trained without them), runs the net and averages its outputs
over the views: softmax probabilities (§4.1), logits, or the fc7 vectors of §6.1 (`view_outputs` does
one batch, for images that come from files). Over it, in pytorch/examples' shape:

    validate(...)             loss and top-1/top-5 error of a split (training's validation, `eval`)
    store_batches(...)        the same, batch by batch, for a store's images (figures' neighbours)
    store_outputs(...)        (N, D) outputs of a store's images (`eval` ensembles, `features`, figures)
    evaluate(checkpoints)     `alexnet eval`: error rates, per-class accuracy, ensembles

`check_fits` is the one place that decides whether a checkpoint's net may be run on a store.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from alexnet.config import DataConfig
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.data.loader import BatchLoader, eval_plan, loader_workers
from alexnet.data.store import check_usable
from alexnet.errors import UserError
from alexnet.runtime import full_float32, inference_precision, resolve_device

OUTPUTS = ("probabilities", "logits", "features")


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """How many rows have their label among the k highest scores, for each k (k capped at the class
    count, so top-5 of a 3-class problem is top-3)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]
    return [hits[:, : min(k, scores.shape[1])].any(1).sum() for k in ks]


# ---------------------------------------------------------------------------------------------------
# Does a store fit a checkpoint?
# ---------------------------------------------------------------------------------------------------


def _finite(name: str, value, where: str) -> None:
    if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
        raise UserError(f"{where}: {name} is not finite (NaN or infinite); prepare the store again")


def check_fits(payload: dict, store=None, same_classes: bool = True) -> None:
    """Refuse, in one line, to run a checkpoint's net on a store it does not fit: other classes (unless
    `same_classes` is False, as for §6.1 features of a net trained elsewhere), another image size (a
    64-px net on 256-px images scores near chance without any error), labels outside the classes, or
    non-finite statistics. Without a store, check the checkpoint's own mean image (what `predict`
    subtracts)."""
    where = payload.get("path", "the checkpoint")
    size = payload["image_size"]
    mean = np.asarray(payload["mean"])
    if mean.shape != (size, size, 3):
        raise UserError(f"{where} is damaged: its mean image is {mean.shape}, not ({size}, {size}, 3)")
    _finite("the mean image it carries", mean, where)
    if store is None:
        return
    if same_classes and payload["classes"] != store.classes:
        raise UserError(f"{where} was trained on other classes than the store {store.root} has "
                        f"({len(payload['classes'])} vs {len(store.classes)})")
    if size != store.image_size:
        raise UserError(f"{where} was trained on {size}x{size} images, the store {store.root} holds "
                        f"{store.image_size}x{store.image_size} ones; prepare it with --size {size}")
    check_usable(store)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def autocast_for(device: torch.device, amp: bool) -> Callable:
    """A factory of bf16 autocast contexts on `device`, or of null contexts when `amp` is off."""
    if not amp:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def inference_autocast(device: torch.device, precision: str | None = None) -> Callable:
    """A factory of the contexts a trained net runs in for eval, features, predict and figures, by
    `alexnet.runtime.inference_precision` (None or "auto": ALEXNET_INFERENCE_PRECISION where set, else
    bf16 autocast on CUDA and float32 elsewhere): bf16 autocast, or float32, which on CUDA is full
    float32 (TF32 off for the block), so float32 features and error rates are the CPU's up to the
    order of sums."""
    if inference_precision(precision, device) == "bf16":
        return autocast_for(device, True)
    return full_float32 if device.type == "cuda" else nullcontext


def patch_count(views: int, data_config: DataConfig) -> int:
    """How many patches `views` (1 or 10) averages for a run trained with `data_config`: §4.1's ten are
    five patches and their reflections, so a run trained without reflections (`data.flip = false`)
    is tested on the five unmirrored ones, views it has seen, not on mirrored ones it never saw."""
    return 5 if views == 10 and not data_config.flip else views


def views_text(patches: int | list[int]) -> str:
    """What `patch_count` patches are, for a printed result line (a list: an ensemble's models differ)."""
    if isinstance(patches, list):
        return f"average of {' or '.join(map(str, patches))} patches, each model as its run trained"
    if patches == 1:
        return "centre patch"
    if patches == 5:
        return "average of 5 patches (no reflections: the run trained without them)"
    return f"average of {patches} patches"


def view_outputs(model: torch.nn.Module, images: Tensor, transforms: BatchTransforms, views: int = 1,
                 output: str = "probabilities", autocast: Callable = nullcontext,
                 channels_last: bool = False) -> Tensor:
    """float32 (B, D) outputs of the net for uint8 (B, S, S, 3) images, averaged over the views:
    §4.1 averages the softmax of the ten patches; logits and fc7 vectors are averaged the same way.
    Under `transforms.config.flip = false` ten views are the five unmirrored patches (`patch_count`)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    x = transforms.test(images, views)
    patches = patch_count(views, transforms.config)
    if patches != views:  # ten_crop's order: the five patches, then their reflections
        x = x.unflatten(0, (len(images), views))[:, :patches].flatten(0, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    views = patches
    if not channels_last:
        x = x.contiguous()
    with autocast():
        y = model.embed(x) if output == "features" else model(x)
    y = y.float()
    if output == "probabilities":
        y = y.softmax(1)
    if views > 1:
        y = y.reshape(len(images), views, -1).mean(1)
    return y


def batch_outputs(model: torch.nn.Module, store, transforms: BatchTransforms, device: torch.device,
                  plan: list[np.ndarray], views: int = 1, output: str = "probabilities", *,
                  autocast: Callable = nullcontext, channels_last: bool = False, workers: int | None = None,
                  progress: bool = False, desc: str = "eval") -> Iterator[tuple[Tensor, Tensor, np.ndarray]]:
    """(outputs (B, D) on the device, labels (B,), store indices (B,)) for each batch of `plan`, the
    net in eval mode meanwhile (its mode is restored afterwards). `workers`: loader threads (None:
    training's default for the store, `alexnet.data.loader.loader_workers`)."""
    was_training = model.training
    model.eval()
    workers = workers or loader_workers(getattr(store, "format", "raw"))
    batches = tqdm(BatchLoader(store, plan, device, workers=workers), total=len(plan), unit="batch", desc=desc,
                   disable=not progress, leave=False, file=sys.stderr, dynamic_ncols=True)
    try:
        for images, labels, indices in batches:
            with torch.no_grad():
                y = view_outputs(model, images, transforms, views, output, autocast, channels_last)
            yield y, labels, indices
    finally:
        batches.close()
        model.train(was_training)


def validate(model: torch.nn.Module, store, transforms: BatchTransforms, device: torch.device, views: int = 1,
             batch_size: int = 128, *, autocast: Callable | None = None, amp: bool = False,
             channels_last: bool = False, rank: int = 0, world: int = 1,
             reduce: Callable[[Tensor], object] | None = None, progress: bool = False,
             workers: int | None = None) -> dict:
    """Cross-entropy loss and top-1/top-5 error of the averaged softmax over a whole split (§6).

    `batch_size` patches go through the net at once (batch_size // views images). Under several
    processes each takes its share (`eval_plan`'s rank/world) and `reduce` sums the (4,) float64
    tensor of loss, top-1 hits, top-5 hits and count in place across them (e.g. all_reduce). Give
    the bare model, not a DDP wrapper: the processes' shares may differ by a batch."""
    autocast = autocast or autocast_for(device, amp)
    plan = eval_plan(len(store), max(1, batch_size // views), rank, world)
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 correct, top-5 correct, n
    for probs, labels, _ in batch_outputs(model, store, transforms, device, plan, views, "probabilities",
                                          autocast=autocast, channels_last=channels_last, progress=progress,
                                          desc="validation", workers=workers):
        sums[0] -= probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum()
        c1, c5 = topk_correct(probs, labels, (1, 5))
        sums[1] += c1
        sums[2] += c5
        sums[3] += len(labels)
    if reduce is not None:
        reduce(sums)
    loss, c1, c5, n = sums.tolist()
    return {"loss": loss / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "n": int(n)}


def store_transforms(model: torch.nn.Module, store, data_config: DataConfig | None,
                     device: torch.device) -> BatchTransforms:
    """The test views of `model`'s input size, minus the mean image the model was trained with (its
    checkpoint's `input_mean`, alexnet.model.checkpoint) or else `store`'s."""
    crop = model.config.input_size
    if crop > store.image_size:
        raise UserError(f"the net's input ({crop}) is larger than the store's images ({store.image_size})")
    mean = getattr(model, "input_mean", None)
    if mean is not None and mean.shape == (store.image_size, store.image_size, 3):
        return BatchTransforms(mean, *store.pca, crop, data_config or DataConfig(), device)
    return BatchTransforms.for_store(store, crop, data_config or DataConfig(), device)


def store_batches(model: torch.nn.Module, store, device: torch.device, *, output: str = "probabilities",
                  views: int = 1, indices: np.ndarray | None = None, batch_size: int = 128,
                  amp: bool | None = None, data_config: DataConfig | None = None, progress: bool = False,
                  desc: str = "eval", precision: str | None = None,
                  workers: int | None = None) -> Iterator[tuple[Tensor, Tensor, np.ndarray]]:
    """`batch_outputs` over the store's images `indices` (default: all, in store order), `batch_size`
    patches at a time, with the net's test views of the store, in channels_last (as training's "auto").
    In `precision` (`inference_autocast`: by default bf16 autocast on CUDA, float32 elsewhere); `amp`
    True or False asks for bf16 autocast or none instead."""
    if views not in (1, 10):
        raise UserError(f"the test views must be 1 or 10, got {views}")
    if batch_size < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")
    indices = np.arange(len(store)) if indices is None else np.asarray(indices)
    transforms = store_transforms(model, store, data_config, device)
    model = model.to(device, memory_format=torch.channels_last)
    per_batch = max(1, batch_size // views)
    plan = [indices[i : i + per_batch] for i in range(0, len(indices), per_batch)]
    autocast = inference_autocast(device, precision) if amp is None else autocast_for(device, amp)
    yield from batch_outputs(model, store, transforms, device, plan, views, output, autocast=autocast,
                             channels_last=True, progress=progress, desc=desc, workers=workers)


def store_outputs(model: torch.nn.Module, store, device: torch.device, *, output: str = "probabilities",
                  views: int = 1, indices: np.ndarray | None = None, batch_size: int = 128,
                  amp: bool | None = None, data_config: DataConfig | None = None, out: np.ndarray | None = None,
                  progress: bool = False, desc: str = "eval", precision: str | None = None) -> np.ndarray:
    """(N, D) outputs of `store_batches`, written into `out` when given (a memory map, so a split
    larger than RAM streams to disk)."""
    n = len(store) if indices is None else len(indices)
    width = model.config.fc_width if output == "features" else model.config.num_classes
    if out is None:
        out = np.empty((n, width), np.float32)
    elif out.shape != (n, width):
        raise ValueError(f"out has shape {out.shape}, the outputs ({n}, {width})")
    row = 0
    for y, _, _ in store_batches(model, store, device, output=output, views=views, indices=indices,
                                 batch_size=batch_size, amp=amp, data_config=data_config, progress=progress,
                                 desc=desc, precision=precision):
        out[row : row + len(y)] = y.cpu().numpy()
        row += len(y)
    return out


def predict_probabilities(model: torch.nn.Module, store, device: torch.device, views: int = 1,
                          batch_size: int = 128, amp: bool | None = None, progress: bool = False,
                          indices: np.ndarray | None = None, data_config: DataConfig | None = None,
                          precision: str | None = None) -> np.ndarray:
    """(N, classes) softmax outputs of `model` on a store split, averaged over the views."""
    return store_outputs(model, store, device, output="probabilities", views=views, indices=indices,
                         batch_size=batch_size, amp=amp, data_config=data_config, progress=progress,
                         precision=precision)


# ---------------------------------------------------------------------------------------------------
# `alexnet eval`
# ---------------------------------------------------------------------------------------------------


def error_rates(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1/top-5 error and per-class accuracy of averaged probabilities."""
    p, y = torch.from_numpy(probs), torch.from_numpy(np.asarray(labels, np.int64))
    c1, c5 = (int(c) for c in topk_correct(p, y, (1, 5)))
    top5 = p.topk(min(5, p.shape[1]), 1).indices
    hit1 = (top5[:, 0] == y).numpy()
    hit5 = (top5 == y[:, None]).any(1).numpy()
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        per_class.append({"label": c, "n": n,
                          "top1_accuracy": float(hit1[mask].mean()) if n else None,
                          "top5_accuracy": float(hit5[mask].mean()) if n else None})
    n = len(labels)
    return {"n": n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "per_class": per_class}


def evaluate(checkpoints: list[str | os.PathLike], data: str | os.PathLike | None = None, split: str = "val",
             views: int = 1, batch_size: int = 128, device: str = "auto", progress: bool = True,
             precision: str | None = None) -> dict:
    """Error rates of one checkpoint, or of the average of several checkpoints' softmax outputs.
    "patches" says how many patches `views` averaged (`patch_count`: 5 for a run without reflections).
    `precision`: "bf16", "float32" or "auto" (`inference_autocast`)."""
    if views not in (1, 10):
        raise UserError(f"--crops must be 1 or 10, got {views}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not checkpoints:
        raise UserError("give at least one checkpoint")
    dev = resolve_device(device)
    payloads = [load_checkpoint(c) for c in checkpoints]
    data = data or payloads[0].get("data")
    if not data:
        raise UserError("give the store with --data")
    store = ImageStore(data, split)
    for p in payloads:
        check_fits(p, store)
    total = None
    singles = []
    for p in payloads:
        data_config = checkpoint_config(p).data
        probs = predict_probabilities(model_from_checkpoint(p), store, dev, views, batch_size, progress=progress,
                                      data_config=data_config, precision=precision)
        rates = error_rates(probs, store.labels, len(store.classes))
        singles.append({"checkpoint": p["path"], "patches": patch_count(views, data_config),
                        **{k: v for k, v in rates.items() if k != "per_class"}})
        total = probs if total is None else total + probs
    result = error_rates(total / len(payloads), store.labels, len(store.classes))
    for row, wnid, name in zip(result["per_class"], store.classes, store.class_names):
        row.update(wnid=wnid, name=name)
    patches = sorted({m["patches"] for m in singles})
    return {"data": str(Path(data)), "split": split, "crops": views,
            "patches": patches[0] if len(patches) == 1 else patches,
            "checkpoints": [p["path"] for p in payloads], "models": singles, **result}
