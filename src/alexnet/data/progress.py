"""What an interrupted `alexnet prepare` has done: DST.partial/progress.npz.

Plain arrays and one JSON text, read with allow_pickle=False: a progress file is data, and a crafted
one cannot run code (the pickle it replaced could). Written atomically every few seconds and on exit.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from alexnet.errors import UserError
from alexnet.files import save_npz_atomic

PROGRESS_FILE = "progress.npz"
CHUNK_FIELDS = ("valid", "skipped", "converted", "lengths")


class Progress:
    """Finished chunks ({(split, index): {"valid", "skipped", "converted", "lengths"}}) and the running
    integer sums of the training set's statistics."""

    def __init__(self, size: int):
        self.done: dict[tuple[str, int], dict] = {}
        self.count = 0
        self.sum_image = np.zeros((size, size, 3), np.int64)
        self.rgb_sum = np.zeros(3, np.int64)
        self.rgb_outer = np.zeros((3, 3), np.int64)

    def record(self, result: dict) -> None:
        self.done[(result["split"], result["index"])] = {k: result[k] for k in CHUNK_FIELDS}
        if result["split"] == "train":
            self.count += result["count"]
            self.sum_image += result["sum_image"]
            self.rgb_sum += result["rgb_sum"]
            self.rgb_outer += result["rgb_outer"]

    def chunks(self, split: str) -> list[tuple[int, dict]]:
        """(index, record) of the split's finished chunks, in store order."""
        return sorted((k[1], v) for k, v in self.done.items() if k[0] == split)

    def save(self, work: Path) -> None:
        done = [[split, index, rec] for (split, index), rec in sorted(self.done.items())]
        text = np.frombuffer(json.dumps(done).encode(), np.uint8)
        save_npz_atomic(work / PROGRESS_FILE, done=text, count=np.int64(self.count), sum_image=self.sum_image,
                        rgb_sum=self.rgb_sum, rgb_outer=self.rgb_outer)

    @classmethod
    def load(cls, work: Path, size: int) -> "Progress":
        """The saved progress; UserError in one line if the file is not what `save` writes."""
        path = work / PROGRESS_FILE
        p = cls(size)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("done", "count", "sum_image", "rgb_sum", "rgb_outer")}
            for name in ("count", "sum_image", "rgb_sum", "rgb_outer"):
                want = getattr(p, name)
                if arrays[name].dtype != np.int64 or arrays[name].shape != np.shape(want):
                    raise ValueError(f"{name} has shape {arrays[name].shape} and type {arrays[name].dtype}")
            if arrays["done"].dtype != np.uint8:
                raise ValueError("its chunk list is not text")
            for split, index, rec in json.loads(arrays["done"].tobytes()):
                if (not isinstance(split, str) or not isinstance(index, int) or not isinstance(rec, dict)
                        or set(rec) != set(CHUNK_FIELDS) or not all(isinstance(v, list) for v in rec.values())):
                    raise ValueError("its chunk list is not the one prepare writes")
                p.done[(split, index)] = rec
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a progress file of this alexnet ({e}); delete {work} to "
                            f"start the prepare over") from None
        p.count = int(arrays["count"])
        p.sum_image, p.rgb_sum, p.rgb_outer = arrays["sum_image"], arrays["rgb_sum"], arrays["rgb_outer"]
        return p
