"""The 1,000 ILSVRC-2012 classes in the label order both public weight sets use (sorted WordNet ids,
label 0 = n01440764 tench ... label 999 = n15075141 toilet tissue), shipped with the package so that
`predict` prints names without a download. The file is Caffe's `synset_words.txt` (data/ilsvrc12)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from alexnet.errors import UserError

NUM_CLASSES = 1000


def _parse(text: str, where: str) -> tuple[list[str], list[str]]:
    wnids, names = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise UserError(f"{where} line {number} does not start with a WordNet id (nNNNNNNNN): {line[:40]!r}")
        wnids.append(wnid)
        names.append(name.strip() or wnid)
    return wnids, names


def _check(wnids: list[str], where: str) -> None:
    if len(wnids) != NUM_CLASSES:
        raise UserError(f"{where} lists {len(wnids)} classes; the ImageNet weights have {NUM_CLASSES} outputs")
    if len(set(wnids)) != NUM_CLASSES:
        raise UserError(f"{where} lists a WordNet id twice")


def ilsvrc2012_classes() -> tuple[list[str], list[str]]:
    """(wnids, names) of the 1,000 classes, label i = line i."""
    text = resources.files("alexnet.pretrained").joinpath("ilsvrc2012_synsets.txt").read_text()
    return _parse(text, "ilsvrc2012_synsets.txt")


def read_synsets(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """A user's synset_words.txt / LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca" per line) for
    other names; its ids must be the 1,000 classes in the order of the weights' outputs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"synsets file {path} does not exist")
    wnids, names = _parse(path.read_text(errors="replace"), str(path))
    _check(wnids, str(path))
    standard = ilsvrc2012_classes()[0]
    if wnids != standard:
        known = set(standard)
        stranger = next((w for w in wnids if w not in known), None)
        if stranger:
            raise UserError(f"{path} names {stranger}, which is not an ILSVRC-2012 class")
        raise UserError(f"{path} lists the classes in another order than the weights' outputs (sorted WordNet ids)")
    return wnids, names


def class_list(synsets: str | os.PathLike | None) -> tuple[list[str], list[str]]:
    return read_synsets(synsets) if synsets else ilsvrc2012_classes()
