"""CIFAR-10 in its standard python-pickle batches (data_batch_1..5, test_batch, batches.meta), read
from a path; nothing is downloaded. Used by the Fig. 1 experiment (alexnet/experiments/fig1.py, §3.1).

The batches are pickles, and a pickle can name any callable to run while it loads. They are read with
`SafeUnpickler`, which admits only what a CIFAR-10 batch holds (dicts, lists, bytes, str, int and
NumPy arrays); a file that names anything else is refused before anything in it runs.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from alexnet.errors import UserError
from alexnet.files import write_bytes_atomic

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

# What pickle.dump writes for CIFAR's dicts of lists, bytes and NumPy arrays: the array reconstruction
# of NumPy 1 (numpy.core) and NumPy 2 (numpy._core), and builtins. Nothing that can run a command.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"), ("builtins", "str"), ("builtins", "int"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def safe_load(path: Path):
    """The object in a CIFAR-10 pickle file, refused (UserError) if it names anything but data."""
    try:
        data = path.read_bytes()
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError) as e:
        raise UserError(f"{path} is not a CIFAR-10 batch (refused: {e})") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = safe_load(path)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a CIFAR-10 batch: {type(e).__name__} {e}") from None
    if len(data) != len(labels):
        raise UserError(f"{path} has {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path} has labels outside 0..9")
    return data, labels


def load_cifar10(path: str | os.PathLike) -> dict:
    """{"train": (uint8 (N, 32, 32, 3), int64 (N,)), "test": (...) or None, "classes": names}."""
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserError(f"CIFAR-10 folder {path} does not exist")
    missing = [n for n in TRAIN_BATCHES if not (root / n).is_file()]
    if missing:
        raise UserError(f"{root} is not a CIFAR-10 python folder: {', '.join(missing)} missing "
                        f"(expected data_batch_1..5, test_batch, batches.meta)")
    parts = [_read_batch(root / n) for n in TRAIN_BATCHES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _read_batch(root / "test_batch") if (root / "test_batch").is_file() else None
    classes = [str(i) for i in range(10)]
    if (root / "batches.meta").is_file():
        meta = safe_load(root / "batches.meta")
        names = meta.get(b"label_names", classes) if isinstance(meta, dict) else None
        if not isinstance(names, list):
            raise UserError(f"{root / 'batches.meta'} is not CIFAR-10's batches.meta (no list of label_names)")
        classes = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    return {"train": train, "test": test, "classes": classes}


def write_cifar_batches(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray, classes: list[str],
                        test_images: np.ndarray, test_labels: np.ndarray) -> Path:
    """Write images (N, 32, 32, 3) uint8 in CIFAR-10's python format (five train batches)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
        write_bytes_atomic(root / name, pickle.dumps(
            {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))]}))

    for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        dump(TRAIN_BATCHES[i], images[part], labels[part])
    dump("test_batch", test_images, test_labels)
    write_bytes_atomic(root / "batches.meta", pickle.dumps({b"label_names": [c.encode() for c in classes],
                                                            b"num_vis": 3072}))
    return root
