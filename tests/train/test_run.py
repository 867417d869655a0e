"""The run folder (alexnet/train/run.py): files are data never code, one trainer per run, best.pt never
behind last.pt, resumes that do what they say, stores that do not fit and full disks as one line."""

import builtins
import errno
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet.train.run as run_module
from alexnet.model.checkpoint import load_checkpoint, save_checkpoint
from alexnet.cli.commands import main
from alexnet.config import resolve, resume_config
from alexnet.errors import UserError
from alexnet.files import run_lock
from alexnet.train.run import fit

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**train):
    return resolve({"variant": "tiny", "train": {"epochs": 2, "batch_size": 32, "log_every": 3, **train}})


def tiny_flags(store):
    return ["--data", str(store), "--variant", "tiny", "--epochs", "2", "--batch-size", "32", "--quiet"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


class WouldRunCode:
    """Unpickling this calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture(scope="module")
def full_run(demo_store, tmp_path_factory):
    """An uninterrupted two-epoch tiny run: what every interrupted and resumed run must end as."""
    out = tmp_path_factory.mktemp("full") / "run"
    fit(tiny_config(), demo_store, out, progress=False, echo=False)
    return out


# ---------------------------------------------------------------------------------------------------
# A file is data, never code
# ---------------------------------------------------------------------------------------------------


def test_the_projects_own_checkpoints_load_as_plain_data(tiny_run):
    for name in ("last.pt", "best.pt"):
        payload = torch.load(tiny_run / name, weights_only=True)
        assert payload["format"] == "alexnet-checkpoint" and payload["best_epoch"] >= 1
    last = torch.load(tiny_run / "last.pt", weights_only=True)
    assert len(last["history"]) == 2 and isinstance(last["running"], dict) and "optimizer" in last


def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(demo_store, tiny_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = dict(torch.load(tiny_run / "last.pt", weights_only=True), model=WouldRunCode(marker))
    torch.save(evil, tmp_path / "evil.pt")
    (tmp_path / "evilrun").mkdir()
    shutil.copy(tmp_path / "evil.pt", tmp_path / "evilrun" / "last.pt")
    from alexnet.experiments.ablations import experiment_config, settings_hash

    recipe = settings_hash(experiment_config("baseline", "tiny", {"train": {"device": "cpu"}}), str(demo_store))
    planted = tmp_path / "results" / "runs" / f"{demo_store.name}-tiny-baseline-{recipe}"  # a results folder's run
    planted.mkdir(parents=True)
    shutil.copy(tmp_path / "evil.pt", planted / "last.pt")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")

    with pytest.raises(UserError, match="would need code to load") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(e.value) and not marker.exists()

    store, evil_pt = str(demo_store), str(tmp_path / "evil.pt")
    commands = [
        ["train", "--resume", str(tmp_path / "evilrun"), "--quiet"],
        ["train", "--finetune", evil_pt, "--data", store, "--out", str(tmp_path / "ft"), "--quiet"],
        ["eval", evil_pt, "--data", store, "--quiet", "--device", "cpu"],
        ["predict", evil_pt, str(tmp_path / "red.png"), "--device", "cpu"],
        ["features", evil_pt, "--data", store, "--out", str(tmp_path / "f.npy"), "--quiet", "--device", "cpu"],
        ["export", evil_pt, "--onnx", str(tmp_path / "evil.onnx")],
        ["figures", evil_pt, "--data", store, "--out", str(tmp_path / "figs"), "--quiet", "--device", "cpu"],
        ["experiment", "baseline", "--data", store, "--base", "tiny", "--results", str(tmp_path / "results"),
         "--quiet", "--device", "cpu"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert "would need code to load" in error_line(capsys), argv
        assert not marker.exists(), argv
    assert not (tmp_path / "ft").exists()  # a refused fine-tuning leaves no run folder


# ---------------------------------------------------------------------------------------------------
# One trainer per run
# ---------------------------------------------------------------------------------------------------


def _run_cli(args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "alexnet.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_second_trainer_of_a_run_is_refused_naming_the_first(demo_store, tmp_path, capsys):
    out = tmp_path / "run"
    first = _run_cli(["train", *tiny_flags(demo_store), "--epochs", "50", "--out", str(out), "--checkpoint-every", "2"])
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()[0]
        owner = json.loads((out / "train.lock").read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        for argv in (["train", *tiny_flags(demo_store), "--out", str(out)], ["train", "--resume", str(out), "--quiet"]):
            assert main(argv) == 2
            assert f"is being trained by pid {first.pid}" in error_line(capsys)
        assert json.loads((out / "train.lock").read_text())["pid"] == first.pid  # the refused did not touch it
    finally:
        first.terminate()
        log, _ = first.communicate(timeout=120)
    assert first.returncode == 143, log
    assert not (out / "train.lock").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, len(lines) + 1))  # one writer only


def test_a_lock_left_by_a_killed_trainer_is_taken_over(demo_store, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    r = fit(tiny_config(max_steps=2), demo_store, out, progress=False, echo=False)
    assert r["status"] == "stopped at max_steps" and not (out / "train.lock").exists()
    (out / "train.lock").write_text("")  # killed between creating the lock and writing it
    with run_lock(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (out / "train.lock").exists()


# ---------------------------------------------------------------------------------------------------
# best.pt and last.pt
# ---------------------------------------------------------------------------------------------------


class SimulatedKill(BaseException):
    pass


def test_a_kill_between_the_two_checkpoints_of_an_improving_epoch_leaves_best_right(demo_store, full_run,
                                                                                   tmp_path, monkeypatch):
    history = load_checkpoint(full_run / "last.pt")["history"]
    assert history[1]["val_top1_err"] < history[0]["val_top1_err"]  # epoch 2 improves: it writes best.pt
    assert load_checkpoint(full_run / "best.pt")["epoch"] == 2
    written = []

    def save_then_die(path, payload):
        save_checkpoint(path, payload)
        written.append((Path(path).name, payload["epoch"]))
        if payload["epoch"] == 2 and payload["step"] == 0:
            raise SimulatedKill  # the process dies after the first file of epoch 2's pair

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    out = tmp_path / "run"
    with pytest.raises(SimulatedKill):
        fit(tiny_config(), demo_store, out, progress=False, echo=False)
    assert written == [("best.pt", 1), ("last.pt", 1), ("best.pt", 2)]
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # last.pt is behind; best.pt is never
    r = fit(tiny_config(), None, out, resume=True, progress=False, echo=False)
    assert r["status"] == "finished" and r["best_epoch"] == 2
    assert load_checkpoint(out / "best.pt")["epoch"] == 2
    assert_same_weights(load_checkpoint(full_run / "best.pt")["model"], load_checkpoint(out / "best.pt")["model"])
    assert_same_weights(load_checkpoint(full_run / "last.pt")["model"], load_checkpoint(out / "last.pt")["model"])


def test_a_missing_or_older_best_is_repaired_on_resume(demo_store, tmp_path):
    out = tmp_path / "run"
    fit(tiny_config(epochs=1), demo_store, out, progress=False, echo=False)
    good = load_checkpoint(out / "best.pt")["model"]
    (out / "best.pt").unlink()
    r = fit(tiny_config(epochs=1), None, out, resume=True, progress=False, echo=False)
    assert r["status"] == "finished" and r["epochs"] == 1
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 and "optimizer" not in best
    assert_same_weights(good, best["model"])
    assert "rewrote" in (out / "train.log").read_text()


# ---------------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------------


def test_the_advice_printed_after_max_steps_continues_the_run(demo_store, full_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny_flags(demo_store), "--out", str(out), "--max-steps", "7"]) == 0
    printed = capsys.readouterr().out
    advice = re.search(r"continue with (--resume \S+)\)", printed)
    assert advice and "stopped at max_steps: epoch 1, step 7" in printed
    assert main(["train", *shlex.split(advice.group(1)), "--quiet"]) == 0
    assert "finished: 2 epoch(s)" in capsys.readouterr().out
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["config"]["train"]["max_steps"] == 0
    assert_same_weights(load_checkpoint(full_run / "last.pt")["model"], last["model"])
    # a new --max-steps on the resume is a new limit
    assert main(["train", "--resume", str(out), "--epochs", "3", "--max-steps", "70", "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["global_step"] == 70
    assert main(["train", "--resume", str(out), "--epochs", "3", "--max-steps", "60", "--quiet"]) == 2
    assert "--max-steps 60 is already reached" in error_line(capsys) and not (out / "train.lock").exists()


def test_resume_refuses_settings_that_change_the_net_or_the_data(demo_store, tmp_path, capsys):
    out = tmp_path / "run"
    fit(tiny_config(max_steps=2), demo_store, out, progress=False, echo=False)
    before = (out / "last.pt").read_bytes()
    for flags, named in [(["--variant", "paper"], "variant=paper"), (["--crop-size", "48"], "model.input_size=48"),
                         (["--set", "model.dropout=0.1"], "model.dropout=0.1"),
                         (["--set", "data.flip=false"], "data.flip=False")]:
        assert main(["train", "--resume", str(out), *flags, "--quiet"]) == 2, flags
        err = error_line(capsys)
        assert "a resumed run keeps its net and data" in err and named in err, err
    assert (out / "last.pt").read_bytes() == before
    # settings of the loop and the loader may change
    assert main(["train", "--resume", str(out), "--workers", "1", "--max-steps", "3", "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["global_step"] == 3
    saved = tiny_config()
    assert resume_config(saved, {"train": {"epochs": 9}, "data": {"workers": 3}}).train.epochs == 9
    with pytest.raises(UserError, match="model.lrn=False"):
        resume_config(saved, {"model": {"lrn": False}})


# ---------------------------------------------------------------------------------------------------
# Stores that do not fit, full disks, half-written files
# ---------------------------------------------------------------------------------------------------


def _damaged_copy(demo_store, tmp_path, damage) -> Path:
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    damage(store)
    return store


def _bad_val_label(store):
    labels = np.load(store / "val" / "labels.npy")
    labels[5] = 12
    np.save(store / "val" / "labels.npy", labels)


def _nan_mean(store):
    with np.load(store / "stats.npz") as z:
        stats = {k: z[k] for k in z.files}
    stats["mean"][3, 4, 1] = np.nan
    np.savez(store / "stats.npz", **stats)


def _val_images_gone(store):
    (store / "val" / "images.npy").unlink()


@pytest.mark.parametrize("damage, message", [(_bad_val_label, "labels outside 0..9"),
                                             (_nan_mean, "non-finite values in mean"),
                                             (_val_images_gone, r"damaged.*val/images.npy")])
def test_a_store_that_does_not_fit_is_refused_before_an_epoch(demo_store, tmp_path, capsys, damage, message):
    store = _damaged_copy(demo_store, tmp_path, damage)
    start = time.perf_counter()
    assert main(["train", *tiny_flags(store), "--out", str(tmp_path / "run")]) == 2
    assert re.search(message, error_line(capsys))
    assert not (tmp_path / "run").exists()  # nothing trained, no folder left behind
    assert time.perf_counter() - start < 30


def test_a_failed_start_leaves_no_run_folder(demo_store, tmp_path):
    with pytest.raises(UserError, match="larger than the store"):
        fit(resolve({"variant": "paper"}), demo_store, tmp_path / "a" / "b", progress=False, echo=False)
    assert not (tmp_path / "a" / "b").exists()


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(demo_store, tmp_path, capsys,
                                                                               monkeypatch):
    out = tmp_path / "run"
    fit(tiny_config(max_steps=2), demo_store, out, progress=False, echo=False)
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def fill_the_disk(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fill_the_disk)
    assert main(["train", "--resume", str(out), "--max-steps", "4", "--quiet"]) == 2
    err = error_line(capsys)
    assert "the disk is full" in err and "the previous one is intact" in err and str(out / "last.pt") in err
    assert (out / "last.pt").read_bytes() == before
    names = {p.name for p in out.iterdir()} - {"tensorboard"}  # no half-written or temporary file left
    assert names == {"config.toml", "last.pt", "metrics.jsonl", "metrics.csv", "train.log"}
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "last.pt")["global_step"] == 2


def test_a_full_disk_while_logging_is_one_line_and_frees_the_run(demo_store, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    fit(tiny_config(max_steps=2), demo_store, out, progress=False, echo=False)

    def full(self, msg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "train.log"))

    monkeypatch.setattr(run_module.RunLog, "__call__", full)
    assert main(["train", "--resume", str(out), "--max-steps", "4", "--quiet"]) == 2
    err = error_line(capsys)
    assert f"the disk holding {out} is full" in err and f"--resume {out}" in err
    assert not (out / "train.lock").exists()


def test_save_checkpoint_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.arange(5.0)}})
    tmp = events[1][1] if len(events) == 3 else ""
    assert events == [("fsync", "file"), ("replace", tmp, "x.pt"), ("fsync", "dir")]
    assert re.fullmatch(r"x\.pt\.\w+\.tmp", tmp)  # a new name of mkstemp's, never a guessable one
    assert torch.equal(load_checkpoint(tmp_path / "x.pt")["model"]["w"], torch.arange(5.0))


def test_a_real_full_disk_while_saving_is_one_line(tmp_path):
    """On a real full filesystem torch's writer raises RuntimeError('unexpected pos') around the
    OSError(ENOSPC); that too must be one line, with nothing half-written left behind."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(UserError, match="the disk is full; nothing was written") as e:
            save_checkpoint(small / "last.pt", {"model": {"w": torch.zeros(100_000)}})  # 400 KB > 256 KB
        assert "\n" not in str(e.value) and list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_temporaries_a_kill_left_in_the_run_folder_are_gone_after_the_resume(demo_store, tmp_path):
    """A kill between a checkpoint's exclusive temporary and its rename leaves last.pt.XXXXXXXX.tmp
    (a name no later run can guess); the next run of the folder, holding its lock, removes it."""
    out = tmp_path / "run"
    fit(tiny_config(max_steps=2), demo_store, out, progress=False, echo=False)
    (out / "last.pt.k1lled00.tmp").write_bytes(b"half a checkpoint")
    victim = tmp_path / "victim.tmp"
    victim.write_text("keep")
    (out / "planted.tmp").symlink_to(victim)
    fit(tiny_config(max_steps=3), None, out, resume=True, progress=False, echo=False)
    assert not (out / "last.pt.k1lled00.tmp").exists() and victim.read_text() == "keep"
