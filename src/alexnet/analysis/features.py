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

from alexnet.errors import UserError


def _npy(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


@torch.no_grad()
def extract_features(model, store, out: str | os.PathLike, device: torch.device, batch_size: int = 256,
                     dtype: str = "float32", data_config=None, progress: bool = False, meta: dict | None = None) -> Path:
    """Centre-patch fc7 features of every image of `store`, in store order, written to `out` (.npy)."""
    from tqdm import tqdm

    from alexnet.config import DataConfig
    from alexnet.data.augment import BatchTransforms
    from alexnet.data.loader import BatchLoader, eval_plan

    out = _npy(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    crop = model.config.input_size
    if crop > store.image_size:
        raise UserError(f"the net's input ({crop}) is larger than the store's images ({store.image_size})")
    transforms = BatchTransforms.for_store(store, crop, data_config or DataConfig(), device)
    dim = model.config.fc_width
    tmp = out.with_name(out.name + ".partial")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(len(store), dim))
    plan = eval_plan(len(store), batch_size)
    amp = device.type == "cuda"
    row = 0
    for images, _, _ in tqdm(BatchLoader(store, plan, device, workers=2), total=len(plan), unit="batch",
                             desc="features", disable=not progress, leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = model.embed(transforms.test(images, 1))
        array[row : row + len(f)] = f.float().cpu().numpy()
        row += len(f)
    array.flush()
    del array
    os.replace(tmp, out)
    info = {"n": len(store), "dim": dim, "dtype": dtype, "split": store.split, "data": str(store.root),
            "layer": "fc7 after ReLU (§6.1)", **(meta or {})}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(N, D) features as a read-only memory map, and what `extract_features` recorded about them."""
    path = _npy(path)
    if not path.is_file():
        raise UserError(f"feature file {path} does not exist; write it with `alexnet features`")
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise UserError(f"{path} is not a feature file: {e}") from None
    if array.ndim != 2:
        raise UserError(f"{path} holds a {array.ndim}-d array, not (images, features)")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return array, meta
