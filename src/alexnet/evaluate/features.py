"""§6.1 features: the 4096-d last hidden layer (fc7 after its ReLU) of every image of a split.

Written as a plain .npy (N, D) file, streamed batch by batch through a memory map (ImageNet's train
split is 1.28 M x 4096 float32 = 21 GB, more than one wants in RAM), into FILE.partial and renamed
when complete; a FILE.json beside it says which checkpoint, store and split the rows come from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from alexnet.config import DataConfig
from alexnet.data import ImageStore
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import check_fits, store_outputs
from alexnet.files import atomic_path, write_json_atomic
from alexnet.runtime import INFERENCE_PRECISION_SWITCH, resolve_device

DTYPES = ("float32", "float16")


def _npy(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def extract_features(model: torch.nn.Module, store, out: str | os.PathLike, device: torch.device,
                     batch_size: int = 256, dtype: str = "float32", data_config: DataConfig | None = None,
                     progress: bool = False, meta: dict | None = None, precision: str | None = None) -> Path:
    """Centre-patch fc7 features of every image of `store`, in store order, written to `out` (.npy).
    Computed in `precision` ("bf16", "float32", "auto": `inference_autocast`); left to None, float32
    features are computed in float32 (on CUDA without TF32) and float16 ones under bf16 autocast on
    CUDA, unless ALEXNET_INFERENCE_PRECISION says otherwise."""
    if dtype not in DTYPES:
        raise UserError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if batch_size < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")
    if precision is None and not os.environ.get(INFERENCE_PRECISION_SWITCH, "").strip():
        precision = "float32" if dtype == "float32" else "auto"
    out = _npy(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dim = model.config.fc_width
    with atomic_path(out, tmp_suffix=".partial") as tmp:  # renamed into place once every row is written
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(len(store), dim))
        try:
            store_outputs(model, store, device, output="features", batch_size=batch_size,
                          data_config=data_config, out=array, progress=progress, desc="features",
                          precision=precision)
            array.flush()
        finally:
            del array
        info = {"n": len(store), "dim": dim, "dtype": dtype, "split": store.split, "data": str(store.root),
                "layer": "fc7 after ReLU (§6.1)", **(meta or {})}
        write_json_atomic(out.with_suffix(".json"), info)
    return out


def write_features(checkpoint: str | os.PathLike, data: str | os.PathLike | None, split: str,
                   out: str | os.PathLike, device: str = "auto", batch_size: int = 256, dtype: str = "float32",
                   progress: bool = False, precision: str | None = None) -> dict:
    """`alexnet features`: a checkpoint's fc7 vectors of one split of a store it fits, to `out`, computed
    in `precision` (`extract_features`).
    Returns {"path", "n", "dim", "dtype", "split", "data"}."""
    payload = load_checkpoint(checkpoint)
    data = data or payload.get("data")
    if not data:
        raise UserError("give the store with --data")
    store = ImageStore(data, split)
    check_fits(payload, store, same_classes=False)  # fc7 of a net trained elsewhere (ImageNet weights) is the point
    model = model_from_checkpoint(payload)
    path = extract_features(model, store, out, resolve_device(device), batch_size, dtype,
                            checkpoint_config(payload).data, progress=progress, meta={"checkpoint": payload["path"]},
                            precision=precision)
    return {"path": path, "n": len(store), "dim": model.config.fc_width, "dtype": dtype, "split": split,
            "data": str(data)}


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(N, D) features as a read-only memory map, and what `extract_features` recorded about them."""
    path = _npy(path)
    if not path.is_file():
        raise UserError(f"feature file {path} does not exist; write it with `alexnet features`")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise UserError(f"{path} is not a feature file: {e}") from None
    if array.ndim != 2:
        raise UserError(f"{path} holds a {array.ndim}-d array, not (images, features)")
    if array.dtype.kind != "f" or array.dtype.itemsize > 8:
        raise UserError(f"{path} holds {array.dtype} values, not float16/32/64 features")
    if array.shape[1] == 0:
        raise UserError(f"{path} holds rows of 0 features")
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{meta_path} cannot be read: {why}") from None
    return array, _checked_meta(meta if isinstance(meta, dict) else {}, array, meta_path)


def _checked_meta(meta: dict, array: np.ndarray, meta_path: Path) -> dict:
    """What `extract_features` recorded, each value of the type it wrote and agreeing with the array:
    the store it names is opened and its files printed, so a crafted sidecar is refused here."""
    for key in ("data", "split", "checkpoint", "dtype", "layer"):
        if key in meta and not isinstance(meta[key], str):
            raise UserError(f"{meta_path}: '{key}' is {type(meta[key]).__name__}, not a string")
    for key, actual in (("n", array.shape[0]), ("dim", array.shape[1])):
        if key in meta and (type(meta[key]) is not int or meta[key] != actual):
            raise UserError(f"{meta_path} says {key} = {meta[key]!r}, but the features have {actual}: the files do "
                            f"not belong together")
    return meta
