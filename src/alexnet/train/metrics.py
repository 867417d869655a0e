"""A run's metrics, in the formats people open them with.

    RUN/metrics.jsonl   one JSON object per epoch (the run's own record; `alexnet plot` and the report
                        read it)
    RUN/metrics.csv     the same rows as a table: the header is the union of the rows' keys in the order
                        they first appear, a missing value an empty cell (spreadsheets, pandas)
    RUN/tensorboard/    TensorBoard event files, when the optional `tensorboard` package is installed
                        (`pip install 'alexnet[tensorboard]'`): the epoch rows as `epoch/<key>` and the
                        per-step scalars of `log_step` as `step/<key>`, both against the global step

Both text files are rewritten whole, through a temporary file, fsync and rename, on every epoch: a run
of 90 epochs writes ~30 KB each time, and a kill at any moment leaves either the previous complete file
or the new one, never a row cut short (a CSV row cut inside a number still parses, as a wrong value).
On resume the history held by the checkpoint is written back, so rows of epochs after the checkpoint
disappear; TensorBoard is told the same with a purge after the resumed step, which hides every event
an earlier session logged beyond it. Scalars are logged at the number of optimizer steps done so far.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from alexnet.files import write_text_atomic

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def parse_history(data: bytes | str) -> tuple[list[dict[str, Any]], int]:
    """The epoch rows of a metrics.jsonl text (objects with an integer "epoch"), and how many lines could
    not be read (a damaged or hand-edited file costs those lines, never the reader): the one reader of
    the file, for `alexnet plot`, `figures` and `report`."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_history(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], int] | None:
    """`parse_history` of RUN/metrics.jsonl; None where the run has no such file (or it cannot be read)."""
    try:
        return parse_history((Path(run_dir) / JSONL_NAME).read_bytes())
    except OSError:
        return None


def csv_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in the order in which each first appears."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # csv writes a float with repr(), which reads back to the same float
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _summary_writer_class():
    """torch's SummaryWriter, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class MetricsLog:
    """What a run appends its epoch rows and step scalars to. Open it once per session, in the main
    process only, with the history the run starts from (empty, or the checkpoint's on resume) and the
    global step it starts at; `close()` it at the end (or use it as a context manager)."""

    def __init__(self, run_dir: str | os.PathLike, history: Iterable[dict[str, Any]] = (), global_step: int = 0,
                 tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / JSONL_NAME
        self.csv_path = self.run_dir / CSV_NAME
        self.rows: list[dict[str, Any]] = [dict(row) for row in history]
        self.columns = csv_columns(self.rows)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self.writer = None
        self._folder_fd: int | None = None
        writer_class = _summary_writer_class() if tensorboard else None
        logdir = self._logdir() if writer_class is not None else None
        if logdir is not None:
            # Steps are logged at the count of optimizer steps done, so a checkpoint at `global_step`
            # holds steps 1..global_step: events an earlier session logged after it are hidden (this
            # session repeats them); a fresh run hides those of a run killed before its first checkpoint.
            self.writer = writer_class(logdir, purge_step=global_step + 1)

    def _logdir(self) -> str | None:
        """RUN/tensorboard as a name TensorBoard can take. It encodes its paths as UTF-8, which a folder
        named with other bytes (b"\\xff", kept by Python as a lone surrogate) is not: that folder is
        then reached through this process's open handle on it (/proc/self/fd/N), or, where there is no
        /proc, not logged to TensorBoard (the metrics files are written all the same)."""
        folder = self.run_dir / TENSORBOARD_DIR
        try:
            str(folder).encode("utf-8")
            return str(folder)
        except UnicodeEncodeError:
            pass
        folder.mkdir(exist_ok=True)
        self._folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        alias = f"/proc/self/fd/{self._folder_fd}"
        if os.path.isdir(alias):
            return alias
        os.close(self._folder_fd)
        self._folder_fd = None
        return None

    @property
    def tensorboard_dir(self) -> Path | None:
        """Where the event files go, or None when tensorboard is not installed (or was turned off)."""
        return self.run_dir / TENSORBOARD_DIR if self.writer is not None else None

    def append(self, row: dict[str, Any], global_step: int) -> None:
        """One epoch's row: to both files and, as `epoch/<key>` at `global_step`, to TensorBoard."""
        row = dict(row)
        self.rows.append(row)
        self.columns = csv_columns([dict.fromkeys(self.columns), row])
        self._write_files()
        if self.writer is not None:
            for key, value in row.items():
                number = _scalar(value)
                if number is not None:
                    self.writer.add_scalar(f"epoch/{key}", number, global_step)
            self.writer.flush()

    def log_step(self, global_step: int, scalars: dict[str, Any]) -> None:
        """Per-step scalars (loss, lr, img_s, data_s, compute_s, ...) as `step/<key>`, TensorBoard only:
        the text files keep one row per epoch."""
        if self.writer is None:
            return
        for key, value in scalars.items():
            number = _scalar(value)
            if number is not None and math.isfinite(number):
                self.writer.add_scalar(f"step/{key}", number, global_step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _write_files(self) -> None:
        write_text_atomic(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self.rows))
        write_text_atomic(self.csv_path, rows_to_csv(self.rows, self.columns))
