"""§6 fine-tuning from Python: `alexnet.finetune(source, data, out)`, what `alexnet train --finetune`
does, on a store or on a plain class-folder tree.

The source is a checkpoint, a run folder or a net (`alexnet.load`, or any net carrying its mean image,
written as OUT/source.pt first). A class-folder tree is prepared once into OUT/store (§2, at the
source's image size, `val_fraction` of each class held out by `seed`: alexnet.data.prepare). Then `fit`
trains: every layer but fc8 from the source, fc8 afresh for the new classes, the source's mean image
subtracted unless `preprocessing="store"` (its log says which, in one line).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from alexnet.data.prepare import prepare
from alexnet.data.store import ImageStore
from alexnet.errors import UserError
from alexnet.model.checkpoint import load, load_checkpoint, net_payload, save_checkpoint
from alexnet.model.net import AlexNet
from alexnet.train.run import fit, resolve_run


def source_checkpoint(source: str | os.PathLike | AlexNet, out: Path) -> str:
    """The checkpoint to fine-tune from: `source` itself, or a net in memory written to OUT/source.pt."""
    if not isinstance(source, AlexNet):
        return str(load_checkpoint(source)["path"])  # refused here, in one line, if it is not one
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "source.pt", net_payload(source))
    return str(out / "source.pt")


def store_of(data: str | os.PathLike, out: Path, image_size: int, val_fraction: float | None, seed: int,
             progress: bool) -> Path:
    """`data` if it is a store; a class-folder tree prepared into OUT/store (once: a store there already
    made from the same tree is used again)."""
    data = Path(data)
    if (data / "meta.json").is_file():
        return data
    store = out / "store"
    if (store / "meta.json").is_file():
        made_from = Path(ImageStore(store, "train").meta.get("source", ""))
        if made_from != data.resolve():
            raise UserError(f"{store} was prepared from {made_from}, not {data}; choose another out")
        return store
    prepare(data, store, size=image_size, val_fraction=val_fraction, seed=seed, progress=progress,
            log=lambda msg: None)
    return store


def finetune(source: str | os.PathLike | AlexNet, data: str | os.PathLike, out: str | os.PathLike,
             epochs: int = 10, batch_size: int | None = None, lr: float | None = None,
             preprocessing: str = "source", val_fraction: float | None = None, seed: int = 0,
             settings: dict[str, Any] | None = None, progress: bool = False, echo: bool = True) -> AlexNet:
    """Fine-tune `source` on `data` (a store, or a class-folder tree ROOT/<class>/*) into the run folder
    `out`, and return the best net (eval mode, on the CPU, with its preprocessing and the new classes).
    `epochs` (§6 names none; 10 by default), `batch_size` (the recipe's, at most the training images),
    `lr` and any other setting as `settings={"optim.momentum": 0.9, ...}` override the source's recipe;
    `preprocessing` "source" (its mean image, which its weights expect) or "store". `out` is a new run
    folder (an interrupted one continues with `alexnet train --resume OUT`)."""
    if preprocessing not in ("source", "store"):
        raise UserError(f"preprocessing is 'source' (the source net's mean image) or 'store', got {preprocessing!r}")
    out = Path(out)
    if (out / "last.pt").exists():
        raise UserError(f"{out} already holds a run; continue it with `alexnet train --resume {out}` or choose "
                        f"another out")
    checkpoint = source_checkpoint(source, out)
    payload = load_checkpoint(checkpoint)
    store = store_of(data, out, payload["image_size"], val_fraction, seed, progress)
    overrides: dict[str, Any] = {"train": {"epochs": epochs}, "data": {"finetune_mean": preprocessing}}
    if lr is not None:
        overrides["optim"] = {"lr": lr}
    if batch_size is not None:
        overrides["train"]["batch_size"] = batch_size
    for dotted, value in (settings or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise UserError(f"a setting is named section.key (e.g. 'optim.momentum'), not {dotted!r}")
        overrides.setdefault(section, {})[key] = value
    config, _ = resolve_run(out, None, checkpoint, None, overrides)
    if batch_size is None:  # a small tree has fewer images than the recipe's batch
        images = len(ImageStore(store, "train"))
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                       batch_size=min(config.train.batch_size, images)))
    fit(config, store, out, progress=progress, echo=echo, finetune=checkpoint)
    return load(out)
