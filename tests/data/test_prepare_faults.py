"""`alexnet prepare` under faults: crafted progress files, a second writer, kills inside finalise and
--overwrite, overlapping SRC and DST, odd file names, a full disk, signals and orphaned workers."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import alexnet.data.convert as convert_module
import alexnet.data.prepare as prepare_module
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.errors import UserError
from tests.conftest import save, smooth_image
from tests.data.test_cifar import RunsCommand, TouchesFile
from tests.data.test_prepare import interrupt_after, quiet_prepare, reference_store_image

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def one_line_error(capsys, code, expected=2):
    err = capsys.readouterr().err.strip()
    assert code == expected and len(err.splitlines()) == 1, err
    return err


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, meta.json without its creation time."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "created"}).encode()
            out[str(p.relative_to(root))] = data
    return out


# ---------------------------------------------------------------------------------------------------
# A crafted progress file is data
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [RunsCommand, TouchesFile, "object-array"])
def test_a_crafted_progress_file_is_refused_on_resume(tree, tmp_path, monkeypatch, capsys, payload):
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare(tree, tmp_path / "store", size=16)
    progress = tmp_path / "store.partial" / "progress.npz"
    assert progress.exists()
    marker = tmp_path / "marker"
    if payload == "object-array":  # an .npz whose array is a pickle inside
        np.savez(progress, done=np.array([RunsCommand(marker)], dtype=object))
    else:
        import pickle

        progress.write_bytes(pickle.dumps(payload(marker)))
    code = main(["prepare", str(tree), str(tmp_path / "store"), "--size", "16", "--quiet", "--workers", "1"])
    err = one_line_error(capsys, code)
    assert "progress.npz is not a progress file" in err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------------


def test_a_second_prepare_into_the_same_store_is_refused(tree, tmp_path, monkeypatch):
    """The second comer runs as its own process while the first converts its first chunk."""
    dst = tmp_path / "store"
    second = {}
    real = convert_module.process_chunk

    def process_chunk(chunk, settings):
        if not second:
            second.update(vars(subprocess.run(
                [sys.executable, "-m", "alexnet.cli", "prepare", str(tree), str(dst), "--size", "16",
                 "--quiet", "--workers", "1"], env=ENV, capture_output=True, text=True)))
        return real(chunk, settings)

    monkeypatch.setattr(convert_module, "process_chunk", process_chunk)
    report = quiet_prepare(tree, dst, size=16)
    assert second["returncode"] == 2 and len(second["stderr"].strip().splitlines()) == 1
    assert f"{dst} is being prepared by pid {os.getpid()} on {socket.gethostname()}" in second["stderr"]
    assert report.counts == {"train": 18, "val": 6}
    quiet_prepare(tree, tmp_path / "alone", size=16)
    assert tree_files(dst) == tree_files(tmp_path / "alone")  # every image whole, none black
    assert not (tmp_path / "store.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tree, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "store.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lines = []
    prepare_module.prepare(tree, tmp_path / "store", size=16, workers=1, progress=False, log=lines.append)
    assert any(f"pid {dead.pid}, is gone" in line for line in lines) and not lock.exists()
    (tmp_path / "third.lock").symlink_to(tmp_path / "elsewhere")
    err = one_line_error(capsys, main(["prepare", str(tree), str(tmp_path / "third"), "--quiet"]))
    assert "cannot open the lock" in err and not (tmp_path / "elsewhere").exists()


# ---------------------------------------------------------------------------------------------------
# Kills inside finalise and --overwrite
# ---------------------------------------------------------------------------------------------------


class Killed(BaseException):
    """A kill at an exact point: nothing after it runs (not even `except Exception`)."""


def kill_at(monkeypatch, event: int, after: bool) -> list:
    """Raise Killed at the `event`-th rename, unlink or rmdir once finalise has begun (before it
    happens, or just after)."""
    seen, active = [], []
    real_finalise = prepare_module.finalise

    def finalise(*a, **k):
        active.append(True)
        return real_finalise(*a, **k)

    def wrap(real):
        def op(*a, **k):
            if active:
                seen.append(a[0])
                if len(seen) == event and not after:
                    raise Killed
            result = real(*a, **k)
            if active and len(seen) == event and after:
                raise Killed
            return result

        return op

    monkeypatch.setattr(prepare_module, "finalise", finalise)
    for name in ("replace", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    return seen


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_kill_anywhere_in_finalise_or_install_resumes_to_the_same_store(tmp_path, monkeypatch, overwrite):
    rng = np.random.default_rng(4)
    tree = tmp_path / "src"
    for name in ("train/n01/a.png", "train/n02/b.png", "val/n02/c.png"):
        save(smooth_image(rng, 24, 20), tree / name, "PNG")
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test checks: speed
    old = tmp_path / "old"
    quiet_prepare(tree, old, size=20)
    fresh = tmp_path / "fresh"
    quiet_prepare(tree, fresh, size=16)
    want = tree_files(fresh)
    dst = tmp_path / "store"
    with monkeypatch.context() as m:  # count the events of one whole run
        events = kill_at(m, 0, False)
        if overwrite:
            quiet_prepare(tree, dst, size=20)
            events.clear()
        quiet_prepare(tree, dst, size=16, overwrite=overwrite)
    n = len(events)
    assert n >= 9  # 3 files a split, stats, log, meta, 2 unlinks, the rename(s)
    for event in range(1, n + 1):
        for after in (False, True):
            if dst.exists():
                prepare_module._delete_store(dst)
            if overwrite:
                shutil.copytree(old, dst)  # the old store --overwrite replaces
            with monkeypatch.context() as m:
                kill_at(m, event, after)
                try:
                    quiet_prepare(tree, dst, size=16, overwrite=overwrite)
                except Killed:
                    pass
            (tmp_path / "store.lock").unlink(missing_ok=True)  # a killed process leaves its lock behind
            if not (dst.exists() and not overwrite):  # killed after its last rename: nothing left to do
                quiet_prepare(tree, dst, size=16, overwrite=overwrite)
            assert tree_files(dst) == want, (event, after)
            assert not (tmp_path / "store.old").exists() and not (tmp_path / "store.partial").exists()


def test_overwrite_cut_between_its_renames_puts_the_old_store_back_then_replaces_it(tree, tmp_path, monkeypatch):
    dst = tmp_path / "store"
    quiet_prepare(tree, dst, size=20)
    real = os.replace

    def replace(a, b, *rest, **k):
        if Path(a).name == "store.partial":
            raise Killed
        return real(a, b, *rest, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            quiet_prepare(tree, dst, size=16, overwrite=True)
    assert not dst.exists() and (tmp_path / "store.old").is_dir()
    lines = []
    with pytest.raises(UserError, match="--overwrite"):  # without --overwrite: the old store, back
        prepare_module.prepare(tree, dst, size=16, workers=1, progress=False, log=lines.append)
    assert any("put" in line and "store.old back" in line for line in lines)
    assert ImageStore(dst).image_size == 20 and not (tmp_path / "store.old").exists()
    lines.clear()
    prepare_module.prepare(tree, dst, size=16, workers=1, progress=False, overwrite=True, log=lines.append)
    assert any("finishing an interrupted prepare" in line for line in lines)
    assert ImageStore(dst).image_size == 16 and not (tmp_path / "store.old").exists()


@pytest.mark.parametrize("where", ["src-inside-dst", "dst-inside-src", "same"])
def test_overlapping_src_and_dst_are_refused_and_the_source_kept(tree, tmp_path, capsys, where):
    dst = {"src-inside-dst": tree.parent, "dst-inside-src": tree / "train" / "store", "same": tree}[where]
    before = sorted(p for p in tree.rglob("*"))
    code = main(["prepare", str(tree), str(dst), "--overwrite", "--quiet"])
    err = one_line_error(capsys, code)
    assert "inside" in err
    assert sorted(p for p in tree.rglob("*")) == before


# ---------------------------------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------------------------------


def test_newline_and_non_utf8_names_stay_aligned(tree, tmp_path, capsys):
    rng = np.random.default_rng(3)
    odd = {"a\nb.png": smooth_image(rng, 30, 20), os.fsdecode(b"caf\xe9.png"): smooth_image(rng, 25, 40)}
    for name, img in odd.items():
        save(img, tree / "train" / "n02" / name, "PNG")
    assert main(["prepare", str(tree), str(tmp_path / "store"), "--size", "16", "--quiet", "--workers", "1",
                 "--no-draft"]) == 0
    assert "wrote" in capsys.readouterr().out
    s = ImageStore(tmp_path / "store")
    assert len(s.files) == len(s) == 20
    for i, name in enumerate(s.files):
        np.testing.assert_array_equal(s[i][0], reference_store_image(tree / name, 16))
        assert s.classes[s.labels[i]] == name.split("/")[1]
    assert set(odd) <= {f.split("/", 2)[2] for f in s.files}
    text = (tmp_path / "store" / "train" / "files.json").read_text(encoding="utf-8")
    assert {"hex": b"train/n02/caf\xe9.png".hex()} in json.loads(text)


# ---------------------------------------------------------------------------------------------------
# Faults of the machine and of the source: one line each
# ---------------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_run_resumes(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_module, "CHUNK_SIZE", 4)
    real, calls = convert_module.process_chunk, []

    def process_chunk(chunk, settings):
        calls.append(chunk)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(settings.work) / "train" / "images.npy"))
        return real(chunk, settings)

    with monkeypatch.context() as m:
        m.setattr(convert_module, "process_chunk", process_chunk)
        code = main(["prepare", str(tree), str(tmp_path / "store"), "--size", "16", "--quiet", "--workers", "1"])
    err = one_line_error(capsys, code)
    assert "No space left on device" in err
    report = quiet_prepare(tree, tmp_path / "store", size=16)
    assert report.resumed_chunks == 2
    quiet_prepare(tree, tmp_path / "fresh", size=16)
    assert tree_files(tmp_path / "store") == tree_files(tmp_path / "fresh")


def test_an_unwritable_destination_is_one_line(tree, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, main(["prepare", str(tree), str(tmp_path / "file" / "store"), "--quiet"]))
    assert "cannot write" in err


def test_an_unreadable_class_folder_is_one_line(tree, tmp_path, monkeypatch, capsys):
    import alexnet.data.source as source_module

    if os.geteuid() != 0:  # a real one where permissions apply
        os.chmod(tree / "train" / "n02", 0)
    else:  # root reads anything: the error the scan would see
        real = os.scandir

        def scandir(path="."):
            if Path(path).name == "n02":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path)

        monkeypatch.setattr(source_module.os, "scandir", scandir)
    try:
        err = one_line_error(capsys, main(["prepare", str(tree), str(tmp_path / "store"), "--quiet"]))
    finally:
        os.chmod(tree / "train" / "n02", 0o755)
    assert "cannot list" in err and "n02" in err and "ermission denied" in err


def test_symlink_loops_are_skipped_or_one_line(tree, tmp_path, capsys):
    os.symlink("loop.JPEG", tree / "train" / "n01" / "loop.JPEG")  # a file that points at itself
    os.symlink(tree / "train" / "n04", tree / "train" / "n04")  # a class folder that does
    assert main(["prepare", str(tree), str(tmp_path / "store"), "--size", "16", "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped   train/n01/loop.JPEG: cannot read the file: Too many levels of symbolic links" in out
    assert ImageStore(tmp_path / "store").classes == ["n01", "n02", "n03"]


@pytest.mark.parametrize("csv_text,match", [
    ("ImageId,PredictionString\nvn01_0\n", "line 2"),
    ("ImageId,PredictionString\nvn01_0,\n", "line 2"),
    ("ImageId,Other\nvn01_0,n01\n", "PredictionString"),
    ("ImageId,PredictionString\n\"vn01_0,n01 1 2\n", "line 2"),
])
def test_a_malformed_loc_csv_is_one_line(tree, tmp_path, capsys, csv_text, match):
    from tests.data.test_prepare import _flat_val

    _flat_val(tree)
    (tree / "LOC_val_solution.csv").write_text(csv_text)
    err = one_line_error(capsys, main(["prepare", str(tree), str(tmp_path / "store"), "--quiet"]))
    assert "LOC_val_solution.csv" in err and match in err


@pytest.mark.parametrize("argv,match", [(["--classes", "-2"], "--classes must be at least 1"),
                                        (["--train-per-class", "0"], "--train-per-class"),
                                        ("file", "is not a folder")])
def test_demo_data_refuses_bad_counts_and_an_existing_file(tmp_path, capsys, argv, match):
    target = tmp_path / "demo"
    if argv == "file":
        target.write_text("precious")
        argv = []
    err = one_line_error(capsys, main(["demo-data", str(target), *argv]))
    assert match in err
    assert not target.is_dir()


# ---------------------------------------------------------------------------------------------------
# Signals and processes
# ---------------------------------------------------------------------------------------------------


def _bigger(tree):
    rng = np.random.default_rng(5)
    for i in range(600):
        save(smooth_image(rng, 120, 90), tree / "train" / "n02" / f"extra_{i:03d}.JPEG")


def _workers(pid: int) -> dict[int, str]:
    """The pool's worker processes among `pid`'s children: forked (the parent's command line) or
    spawned, not multiprocessing's resource tracker."""
    out = {}
    for c, start in _children(pid).items():
        try:
            if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes():
                out[c] = start
        except OSError:
            pass
    return out


def _children(pid: int) -> dict[int, str]:
    """{pid: start time} of the live processes whose parent is `pid` (read from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out[int(entry)] = fields[19]
    return out


def _alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_progress_and_exit_like_a_unix_tool(tree, tmp_path, sig, code):
    _bigger(tree)
    dst = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "alexnet.cli", "prepare", str(tree), str(dst), "--size", "16",
                             "--workers", "2", "--quiet"], env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(_workers(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0 or (dst / "meta.json").exists():  # done, or the signal came while exiting
        pytest.skip("prepare finished before the signal")
    assert proc.returncode == code and len(err.strip().splitlines()) == 1, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err and "run the same command" in err
    assert (tmp_path / "store.partial" / "progress.npz").exists() and not (tmp_path / "store.lock").exists()


def test_kill_9_leaves_no_orphaned_workers(tree, tmp_path):
    _bigger(tree)
    code = (f"import alexnet.data.prepare as p\np.CHUNK_SIZE = 4\n"
            f"p.prepare({str(tree)!r}, {str(tmp_path / 'store')!r}, size=16, workers=2, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    deadline = time.time() + 60
    workers = {}
    while time.time() < deadline and proc.poll() is None:
        workers = _workers(proc.pid)
        if len(workers) == 2:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("prepare finished before it could be killed")
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(pid, start) for pid, start in workers.items()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid, start) for pid, start in workers.items())
