"""MetricsLog: metrics.jsonl, metrics.csv and TensorBoard events of a run, consistent through resumes
and kills."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.train.metrics import MetricsLog, parse_history


def read_jsonl(path) -> list[dict]:
    rows, bad = parse_history(Path(path).read_bytes())
    assert bad == 0
    return rows

ROWS = [
    {"epoch": 1, "lr": 0.01, "train_loss": 2.302585092994046, "train_top1_err": 0.9, "time": "2026-11-22T05:00:00"},
    {"epoch": 2, "lr": 0.01, "train_loss": 1.7, "train_top1_err": 0.61, "val_top1_err": 0.625, "time": "t2"},
    {"epoch": 3, "lr": 0.001, "train_loss": 1.1, "train_top1_err": 1 / 3, "val_top1_err": 0.5, "val_top5_err": 0.1,
     "time": "t3"},
]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_csv_matches(run: Path, rows: list[dict]) -> None:
    """The CSV, read back with the csv module, holds exactly `rows`: every value (floats to the last
    bit), an empty cell where a row lacks a column."""
    header, table = read_csv(run / "metrics.csv")
    assert len(table) == len(rows)
    assert set(header) == set().union(*rows)
    for row, cells in zip(rows, table):
        for key in header:
            if key not in row:
                assert cells[key] == ""
            elif isinstance(row[key], str):
                assert cells[key] == row[key]
            else:
                assert float(cells[key]) == row[key] and type(row[key])(cells[key]) == row[key]


def test_csv_and_jsonl_hold_the_same_rows_with_a_stable_header(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for i, row in enumerate(ROWS):
            log.append(row, global_step=10 * (i + 1))
            assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[: i + 1]
            assert_csv_matches(tmp_path, ROWS[: i + 1])
    header, _ = read_csv(tmp_path / "metrics.csv")
    # first-appearance order: a new key goes to the end, earlier columns keep their place
    assert header == ["epoch", "lr", "train_loss", "train_top1_err", "time", "val_top1_err", "val_top5_err"]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_rewrites_both_files_from_the_checkpoints_history(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for i, row in enumerate(ROWS):
            log.append(row, global_step=10 * (i + 1))
    # the checkpoint was written after epoch 1: epochs 2 and 3 are done again, differently
    redone = {"epoch": 2, "lr": 0.01, "train_loss": 1.5, "train_top1_err": 0.55, "extra": 7, "time": "t2b"}
    with MetricsLog(tmp_path, history=ROWS[:1], global_step=10, tensorboard=False) as log:
        assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[:1]
        assert_csv_matches(tmp_path, ROWS[:1])
        assert read_csv(tmp_path / "metrics.csv")[0] == list(ROWS[0])  # the dropped rows' columns are gone
        log.append(redone, global_step=20)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [ROWS[0], redone]
    assert_csv_matches(tmp_path, [ROWS[0], redone])


def test_a_failed_write_leaves_the_previous_complete_files(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path, ROWS[:2], tensorboard=False)
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.jsonl", "metrics.csv")}

    def killed(src, dst):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        log.append(ROWS[2], global_step=30)
    monkeypatch.undo()
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data


WRITER = """
import sys
from alexnet.train.metrics import MetricsLog
log = MetricsLog(sys.argv[1], tensorboard=False)
print("ready", flush=True)
for epoch in range(1, 100000):
    log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "note": "x" * (epoch % 50)}, global_step=epoch)
"""


def test_a_kill_at_any_moment_leaves_whole_files(tmp_path):
    """SIGKILL a writer at a few moments: each file is whole (every line parses, the CSV's last row has
    all its cells and the expected values) and the CSV is at most one epoch behind the JSONL."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    lengths = []
    for delay in (0.05, 0.2, 0.45):
        run = tmp_path / f"run{delay}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows = read_jsonl(run / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(r["train_loss"] == 1.0 / r["epoch"] and r["note"] == "x" * (r["epoch"] % 50) for r in rows)
        _, table = read_csv(run / "metrics.csv")
        assert len(rows) - 1 <= len(table) <= len(rows)
        assert_csv_matches(run, rows[: len(table)])
        lengths.append(len(rows))
    assert lengths[-1] > 1  # the last kill came while it was writing epoch after epoch


def test_without_tensorboard_the_files_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with MetricsLog(tmp_path) as log:
        assert log.tensorboard_dir is None
        log.log_step(1, {"loss": 1.0})
        log.append(ROWS[0], global_step=1)
    assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[:1]
    assert not (tmp_path / "tensorboard").exists()


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_epoch_rows_and_the_step_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    steps = [{"loss": 2.0 - 0.1 * s, "lr": 0.01, "img_s": 100.0 + s, "data_s": 0.01, "compute_s": 0.2}
             for s in range(1, 7)]
    with MetricsLog(tmp_path) as log:
        assert log.tensorboard_dir == tmp_path / "tensorboard"
        for s, scalars in enumerate(steps, start=1):
            log.log_step(s, scalars)
            if s % 3 == 0:
                log.append(ROWS[s // 3 - 1], global_step=s)
    got = _tensorboard_scalars(tmp_path / "tensorboard")
    for key in steps[0]:
        assert [step for step, _ in got[f"step/{key}"]] == list(range(1, 7))
        assert [v for _, v in got[f"step/{key}"]] == pytest.approx([row[key] for row in steps], rel=1e-6)
    assert got["epoch/train_loss"] == [(3, pytest.approx(ROWS[0]["train_loss"])),
                                       (6, pytest.approx(ROWS[1]["train_loss"]))]
    assert [s for s, _ in got["epoch/val_top1_err"]] == [6]
    assert not any("time" in tag for tag in got)  # text values are not scalars


def test_tensorboard_hides_what_a_resumed_run_does_again(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path) as log:
        for s in range(1, 9):
            log.log_step(s, {"loss": 10.0 + s})
        log.append(ROWS[0], global_step=4)
        log.append(ROWS[1], global_step=8)
    time.sleep(1.1)  # event files are named by the second they were opened; keep them apart
    with MetricsLog(tmp_path, history=ROWS[:1], global_step=4) as log:  # resumed from the step-4 checkpoint
        for s in range(5, 7):
            log.log_step(s, {"loss": 20.0 + s})
    got = _tensorboard_scalars(tmp_path / "tensorboard")
    # steps 1..4 are in the checkpoint and stay; 5..8 were done again: the earlier ones are hidden
    assert got["step/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0), (5, 25.0), (6, 26.0)]
    assert got["epoch/train_loss"] == [(4, pytest.approx(ROWS[0]["train_loss"]))]  # kept: the checkpoint has it
    assert not got.get("epoch/val_top1_err")  # only epoch 2 (step 8, done again) had it
