"""The source tree of `alexnet prepare`: SRC/train/<class>/*, and SRC/val/<class>/* or a flat SRC/val/
with a labels file; or a plain class-folder tree SRC/<class>/* (torchvision's ImageFolder layout),
split into train and val by a seeded draw; and how file names are stored.

File names are whatever bytes the file system holds. Python gives a name that is not UTF-8 as a str
with its odd bytes as lone surrogates (os.fsdecode); those cannot be written as UTF-8 text. A store
keeps each split's names in `<split>/files.json`, a JSON list with one entry per image: the name
relative to SRC as a string when it is valid UTF-8, else {"hex": the name's bytes in hex}. A name with
a newline in it stays one entry (a one-per-line file would shift every later name).
"""

from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.errors import UserError, printable

CLASS_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt", "val.txt", "ILSVRC2012_val_labels.txt")


def name_to_json(name: str) -> str | dict:
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return {"hex": os.fsencode(name).hex()}


def name_from_json(entry) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("hex"), str):
        return os.fsdecode(bytes.fromhex(entry["hex"]))
    raise ValueError(f"a file name entry is {type(entry).__name__}, not a string or {{'hex': ...}}")


@dataclass
class SourceSplit:
    files: list[str]  # paths relative to SRC, in store order
    labels: list[int]


@dataclass
class Source:
    classes: list[str]  # folder names (WordNet ids for ImageNet), sorted: label i is classes[i]
    class_names: list[str]
    splits: dict[str, SourceSplit]
    warnings: list[str] = field(default_factory=list)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise UserError(f"cannot list {printable(str(folder))}: {e.strerror or e}") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop or an unreadable link: not a folder; read (and skipped) as a file
        return False


def _files_in(folder: Path) -> list[str]:
    return sorted(e.name for e in _entries(folder) if not _is_dir(e))


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in _entries(folder) if _is_dir(e))


def _read_class_names(src: Path, classes: list[str]) -> list[str]:
    for name in CLASS_NAME_FILES:
        path = src / name
        if path.is_file():
            names = {}
            for line in path.read_text(errors="replace").splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    names[parts[0]] = parts[1]
            return [names.get(c, c) for c in classes]
    return list(classes)


def _label_rows(path: Path, text: str):
    """(line number, file name, label word) of a labels file."""
    if text.startswith("ImageId"):
        reader = csv.DictReader(io.StringIO(text))
        if "PredictionString" not in (reader.fieldnames or []):
            raise UserError(f"{path}: the header has no PredictionString column (ILSVRC's LOC_val_solution.csv)")
        for n, r in enumerate(reader, 2):
            words = (r.get("PredictionString") or "").split()
            if not r.get("ImageId") or not words:
                raise UserError(f"{path}: line {n} is not 'ImageId,PredictionString' with a WordNet id")
            yield n, r["ImageId"], words[0]
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = line.split()[:2]
            if len(row) != 2:
                raise UserError(f"{path}: line {n} is not 'FILE LABEL'")
            yield n, row[0], row[1]


def read_val_labels(path: Path, classes: list[str]) -> dict[str, int]:
    """Labels of a flat validation folder, by file stem. Reads ILSVRC's LOC_val_solution.csv
    (ImageId,PredictionString whose first word is the WordNet id) or lines "FILE LABEL" where LABEL is
    a WordNet id or an index into the sorted class list (Caffe's val.txt)."""
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        for n, name, label in _label_rows(path, text):
            stem = Path(name).stem
            if label in index:
                labels[stem] = index[label]
            elif label.isdigit() and int(label) < len(classes):
                labels[stem] = int(label)
            else:
                raise UserError(f"{path}: line {n}: label '{label}' is neither a class of train/ nor a class index")
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file: {e}") from None
    return labels


def _class_split(src: Path, split: str, classes: list[str], folders: list[str], warnings: list[str]) -> SourceSplit:
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in folders:
        names = _files_in(src / split / c)
        if not names:
            warnings.append(f"class folder {split}/{c} is empty" + (
                f": label {index[c]} keeps its place but has no images" if split == "train" else ""))
        files += [f"{split}/{c}/{n}" for n in names]
        labels += [index[c]] * len(names)
    return SourceSplit(files, labels)


def _flat_val(src: Path, flat: list[str], classes: list[str], val_labels) -> SourceSplit:
    val = src / "val"
    path = Path(val_labels) if val_labels else next(
        (p for p in (src / n for n in VAL_LABEL_FILES) if p.is_file()), None)
    if path is None or not path.is_file():
        raise UserError(f"{val} holds images but no class folders; give its labels with --val-labels "
                        f"(LOC_val_solution.csv, or lines 'FILE LABEL'), or put one of "
                        f"{', '.join(VAL_LABEL_FILES)} in {src}")
    by_stem = read_val_labels(path, classes)
    missing = [n for n in flat if Path(n).stem not in by_stem]
    if missing:
        raise UserError(f"{path} has no label for {len(missing)} file(s) of val/, e.g. {printable(missing[0])}")
    return SourceSplit([f"val/{n}" for n in flat], [by_stem[Path(n).stem] for n in flat])


VAL_FRACTION = 0.1  # of a plain class-folder tree's images, held out for val/ unless said otherwise


def split_class_tree(src: Path, fraction: float, seed: int) -> Source:
    """A plain class-folder tree SRC/<class>/* split into train and val: in each class, a share
    `fraction` of its files (rounded, at least one left for training) drawn for val by a generator
    seeded with (seed, class name), so a class's split depends on its own files and the seed alone."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {fraction}")
    classes = _subdirs(src)
    warnings: list[str] = []
    splits = {"train": SourceSplit([], []), "val": SourceSplit([], [])}
    for label, c in enumerate(classes):
        names = _files_in(src / c)
        if not names:
            warnings.append(f"class folder {c} is empty: label {label} keeps its place but has no images")
        drawn = list(names)
        random.Random(f"{seed}/{c}").shuffle(drawn)
        held = set(drawn[: min(len(names) - 1, round(len(names) * fraction))]) if names else set()
        for split, members in (("train", [n for n in names if n not in held]), ("val", sorted(held))):
            splits[split].files += [f"{c}/{n}" for n in members]
            splits[split].labels += [label] * len(members)
    if not splits["train"].files:
        raise UserError(f"the class folders of {src} hold no files")
    if not splits["val"].files:
        del splits["val"]
        warnings.append("no image was held out (--val-fraction): the store has no validation split")
    else:
        warnings.append(f"a plain class-folder tree: {len(splits['val'].files)} of its images held out for val "
                        f"(--val-fraction {fraction}, --seed {seed})")
    return Source(classes, _read_class_names(src, classes), splits, warnings)


def scan_source(src: str | os.PathLike, val_labels: str | os.PathLike | None = None,
                val_fraction: float | None = None, seed: int = 0) -> Source:
    """Find the classes and files of an ImageNet-style tree: SRC/train/<class>/*, and SRC/val/<class>/*
    or a flat SRC/val/ with a labels file; or of a plain class-folder tree SRC/<class>/*, whose val
    split is drawn (`split_class_tree`, `val_fraction` default VAL_FRACTION)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise UserError(f"source {src} is not a folder")
    train = src / "train"
    if not train.is_dir():
        if _subdirs(src):
            if val_labels:
                raise UserError("--val-labels labels a flat SRC/val/ folder; a plain class-folder tree has none")
            return split_class_tree(src, VAL_FRACTION if val_fraction is None else val_fraction, seed)
        raise UserError(f"{src} has no class folders; expected SRC/<class>/<images>, or SRC/train/<class>/<images> "
                        f"(and SRC/val/)")
    if val_fraction is not None:
        raise UserError(f"--val-fraction splits a plain class-folder tree (SRC/<class>/*); {src} has a train/ folder "
                        f"(and its own val/)")
    classes = _subdirs(train)
    if not classes:
        raise UserError(f"{train} has no class folders; expected {train}/<class>/<images>")
    warnings: list[str] = []
    splits = {"train": _class_split(src, "train", classes, classes, warnings)}
    if not splits["train"].files:
        raise UserError(f"{train} has class folders but no files in them")
    val = src / "val"
    if val.is_dir():
        subdirs = _subdirs(val)
        unknown = [d for d in subdirs if d not in set(classes)]
        if unknown:
            raise UserError(f"val/ has class folders that train/ lacks: {', '.join(map(printable, unknown[:5]))}")
        if subdirs:
            splits["val"] = _class_split(src, "val", classes, subdirs, warnings)
        elif flat := _files_in(val):
            splits["val"] = _flat_val(src, flat, classes, val_labels)
        if not splits.get("val", SourceSplit([], [])).files:
            splits.pop("val", None)
            warnings.append("val/ is empty: the store has no validation split")
    else:
        warnings.append("no val/ folder: the store has no validation split")
    return Source(classes, _read_class_names(src, classes), splits, warnings)
