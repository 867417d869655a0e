"""alexnet.files: atomic writes and the folder lock, checked against what a crash or a second writer
would see on disk."""

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from alexnet.errors import UserError
from alexnet.files import (FolderLock, atomic_path, atomic_write, run_lock, save_npy_atomic, save_npz_atomic,
                           store_lock, write_bytes_atomic, write_json_atomic, write_text_atomic)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "y.onnx", tmp_suffix=".partial.onnx") as tmp:
            tmp.write_bytes(b"graph")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with pytest.raises(ValueError, match="not a 'w' mode"):
        with atomic_write(path, "ab"):
            pass


def test_the_helpers_write_what_their_readers_read_back(tmp_path):
    write_text_atomic(tmp_path / "t.csv", "a,b\r\n1,2\r\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\r\n1,2\r\n"  # line ends as given
    write_json_atomic(tmp_path / "j.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"k": [1, 2]}
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    save_npy_atomic(tmp_path / "a.npy", a)
    save_npz_atomic(tmp_path / "b.npz", a=a, n=np.int64(3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), a)
    with np.load(tmp_path / "b.npz") as z:
        np.testing.assert_array_equal(z["a"], a) and z["n"] == 3
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"by name")
    assert (tmp_path / "c.bin").read_bytes() == b"by name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz", "c.bin", "j.json", "t.csv"]


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


HOLD_A_LOCK = """
import os, sys, time
from alexnet.files import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
started, ready = os.pipe()
worker = os.fork()
if worker == 0:  # a worker (as prepare's): it must not keep the lock once its parent is gone
    os.write(ready, b"1")  # the fork handlers (which drop the lock) have run by the time fork returns here
    time.sleep(60)
    os._exit(0)
os.read(started, 1)
print("held", worker, flush=True)
time.sleep(60)
"""


def test_the_two_lock_places_and_the_owner_they_record(tmp_path):
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run") as lock:
        assert lock.path == tmp_path / "run" / "train.lock"
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["since"]
        with pytest.raises(UserError, match=f"{tmp_path / 'run'} is being trained by pid {os.getpid()}"):
            run_lock(tmp_path / "run").acquire()
    assert not lock.path.exists()
    with store_lock(tmp_path / "store") as lock:
        assert lock.path == tmp_path / "store.lock" and not (tmp_path / "store").exists()
        with pytest.raises(UserError, match=f"{tmp_path / 'store'} is being prepared by pid {os.getpid()}"):
            store_lock(tmp_path / "store").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock or temporary file left


def test_a_lock_is_held_while_its_process_lives_and_free_once_it_is_killed(tmp_path):
    """flock: the kernel lets the lock go when the holder dies, kill -9 included, even while a worker it
    forked lives on; what the dead holder wrote is what the newcomer took over. No pid or start time
    is guessed at."""
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    said, worker = holder.stdout.readline().split()
    try:
        assert said == "held"
        with pytest.raises(UserError, match=f"is being written by pid {holder.pid} on {socket.gethostname()}"):
            FolderLock(lock).acquire()
        holder.kill()
        holder.wait()
        assert json.loads(lock.read_text())["pid"] == holder.pid  # left behind by kill -9
        with FolderLock(lock) as taken:  # while the worker still runs
            os.kill(int(worker), 0)
            assert taken.took_over["pid"] == holder.pid
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker), signal.SIGKILL)
    lock.write_text("not json, left by anything")
    with FolderLock(lock) as taken:
        assert taken.took_over == {}
    assert not lock.exists()


def test_two_newcomers_cannot_both_take_one_free_lock(tmp_path):
    lock = tmp_path / "x.lock"
    for _ in range(10):
        lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
        barrier, won, refused = threading.Barrier(4), [], []

        def newcomer():
            barrier.wait()
            try:
                won.append(FolderLock(lock).acquire())
            except UserError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=newcomer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 3, refused
        assert all(f"by pid {os.getpid()}" in e for e in refused)
        won[0].release()
        assert not lock.exists()


def test_a_link_or_a_fifo_at_the_lock_is_refused(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "a.lock").symlink_to(target)
    with pytest.raises(UserError, match="cannot open the lock"):
        FolderLock(tmp_path / "a.lock").acquire()
    os.mkfifo(tmp_path / "b.lock")
    with pytest.raises(UserError, match="not a file"):
        FolderLock(tmp_path / "b.lock").acquire()
    assert target.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------
# A folder another user can write into (the shared-machine issue): planted links, devices, FIFOs
# ---------------------------------------------------------------------------------------------------

OTHER_UID = 2002  # another local user of a shared machine


def _as_other_user(path):
    """Make `path` (a planted symbolic link) another user's where the test runs as root."""
    if os.geteuid() == 0:
        os.lchown(path, OTHER_UID, OTHER_UID)


def _shared_folder(tmp_path):
    """A folder everyone may write into (a group's project folder: no sticky bit, so the kernel's
    protected_symlinks does not step in), and a file of the victim's elsewhere."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim = tmp_path / "home" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"the victim's own file\n")
    return shared, victim


def _plant(shared, victim, name):
    """Symbolic links to the victim's file at every name a writer of `name` could have predicted: NAME.tmp,
    NAME.partial, and NAME.PID.tmp / .partial / .partial.onnx / .partial.png for the next pids."""
    suffixes = (".tmp", ".partial", ".partial.onnx", ".partial.png", ".partial.npy")
    names = [f"{name}{s}" for s in suffixes]
    names += [f"{name}.{pid}{s}" for pid in range(os.getpid(), os.getpid() + 3) for s in suffixes]
    for n in names:
        (shared / n).symlink_to(victim)
        _as_other_user(shared / n)
    return names


def test_a_symbolic_link_planted_at_any_predictable_temporary_name_changes_nothing(tmp_path):
    import torch

    from alexnet.report.canvas import new_figure, save_figure
    from alexnet.model.checkpoint import save_checkpoint

    shared, victim = _shared_folder(tmp_path)
    writers = {
        "a.bin": lambda p: write_text_atomic(p, "text"),
        "a.json": lambda p: write_json_atomic(p, {"k": 1}),
        "a.npy": lambda p: save_npy_atomic(p, np.arange(3)),
        "a.pt": lambda p: save_checkpoint(p, {"weights": torch.arange(3.0)}),
        "a.png": lambda p: save_figure(new_figure(figsize=(1, 1))[0], p),
    }
    planted = {name: _plant(shared, victim, name) for name in [*writers, "a.onnx", "a.mem"]}
    for name, write in writers.items():
        write(shared / name)
    with atomic_path(shared / "a.onnx", tmp_suffix=".partial.onnx") as tmp:  # an exporter's way: by name
        assert tmp.name.endswith(".partial.onnx") and not tmp.is_symlink()
        tmp.write_bytes(b"graph")
    with atomic_path(shared / "a.mem", tmp_suffix=".partial") as tmp:  # features' memory map
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(2, 2))[:] = 1
    assert victim.read_bytes() == b"the victim's own file\n"
    for name, links in planted.items():
        assert (shared / name).is_file() and not (shared / name).is_symlink(), name
        assert all((shared / n).is_symlink() for n in links), name  # neither followed nor renamed
    assert (shared / "a.onnx").read_bytes() == b"graph" and np.load(shared / "a.mem").sum() == 4
    left = {p.name for p in shared.iterdir()} - set(writers) - {"a.onnx", "a.mem"}
    assert left == {n for links in planted.values() for n in links}  # no temporary file of ours is left


def test_a_temporary_file_is_private_until_it_is_renamed_with_the_ordinary_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "x.bin") as f:
            (tmp,) = [p for p in tmp_path.iterdir()]
            assert tmp.name.startswith("x.bin.") and tmp.name.endswith(".tmp")
            assert tmp.stat().st_mode & 0o777 == 0o600  # no one else reads a checkpoint half-written
            f.write(b"x")
        assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o640  # 0666 less the umask, as open() gives
    finally:
        os.umask(old)


def _one_line(e) -> str:
    assert "\n" not in str(e)
    return str(e)


def test_an_output_that_is_a_device_a_fifo_or_a_folder_is_refused_and_left_as_it_is(tmp_path):
    import stat

    from alexnet.files import check_output_path

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    (tmp_path / "link-to-fifo").symlink_to(fifo)
    for path, kind in [(fifo, "a FIFO"), ("/dev/null", "a character device"), (tmp_path / "folder", "a folder"),
                       (tmp_path / "link-to-fifo", "a FIFO")]:
        with pytest.raises(UserError, match=f"{path} is {kind}.*not a regular file") as e:
            check_output_path(path)
        _one_line(e.value)
        with pytest.raises(UserError, match="not a regular file"):  # the writers check too, after the work
            write_bytes_atomic(path, b"data")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link-to-fifo"]  # no temporary left
    (tmp_path / "old.pt").write_bytes(b"old")
    (tmp_path / "link.pt").symlink_to(tmp_path / "old.pt")
    for fine in (tmp_path / "new.pt", tmp_path / "old.pt", tmp_path / "link.pt", tmp_path / "sub" / "new.pt"):
        assert check_output_path(fine) == fine


def test_an_output_under_a_file_is_one_line(tmp_path):
    from alexnet.files import check_output_folder, check_output_path

    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file" / "x.pt", tmp_path / "file" / "deeper" / "x.pt"):
        with pytest.raises(UserError, match=f"cannot write {path}: {tmp_path / 'file'} is a file, not a folder"):
            check_output_path(path)
        with pytest.raises(UserError, match="file is a file, not a folder"):
            write_bytes_atomic(path, b"")  # mkstemp's NotADirectoryError, as one line
        with pytest.raises(UserError, match="is a file, not a folder"):
            check_output_folder(path)
    with pytest.raises(UserError, match="is not a folder but a file; give a folder"):
        check_output_folder(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is a symbolic link to nothing"):
        check_output_path(tmp_path / "dangling" / "x.pt")


def test_an_output_that_is_an_input_is_refused_by_name_link_or_hard_link(tmp_path):
    from alexnet.files import check_output_path

    weights = tmp_path / "m.caffemodel"
    weights.write_bytes(b"weights")
    os.link(weights, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(weights)
    (tmp_path / "input-link").symlink_to(tmp_path / "target.pt")
    (tmp_path / "target.pt").write_bytes(b"the input, through the link")
    cases = [(weights, weights, ""), (tmp_path / "hard.pt", weights, f" ({weights})"),
             (tmp_path / "soft.pt", weights, f" ({weights})"), (tmp_path / "target.pt", tmp_path / "input-link", "")]
    for out, source, named in cases:
        with pytest.raises(UserError, match="is also an input of this command") as e:
            check_output_path(out, [None, tmp_path / "absent", source], what="--out")
        assert _one_line(e.value).startswith(f"--out {out} is also an input") and (not named or named in str(e.value))
    assert weights.read_bytes() == b"weights"
    assert check_output_path(tmp_path / "new.pt", [weights]) == tmp_path / "new.pt"


def test_signals_during_a_write_act_when_it_is_over(tmp_path):
    import signal

    from alexnet.files import signals_held

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)  # held: no KeyboardInterrupt inside the block
            assert got == []
            inside = True
        assert False, "the held Ctrl-C raises when the block ends"  # noqa: B011
    except KeyboardInterrupt:
        assert inside and got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(KeyboardInterrupt):  # and an interrupted write leaves nothing behind
        with atomic_write(tmp_path / "x.pt") as f:
            f.write(b"part")
            signal.raise_signal(signal.SIGINT)
            f.write(b" and the rest")
    assert list(tmp_path.iterdir()) == []


def test_a_log_is_appended_to_and_never_through_a_planted_link(tmp_path):
    from alexnet.files import append_text

    append_text(tmp_path / "train.log", "one\n")
    append_text(tmp_path / "train.log", "two \udcff\n")  # a name's byte that is not UTF-8
    assert (tmp_path / "train.log").read_bytes() == b"one\ntwo \\udcff\n"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "planted.log").symlink_to(victim)
    _as_other_user(tmp_path / "planted.log")
    with pytest.raises(UserError, match="it is a symbolic link, not a log file"):
        append_text(tmp_path / "planted.log", "x\n")
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(UserError, match="it is a FIFO \\(named pipe\\), not a log file"):
        append_text(tmp_path / "fifo.log", "x\n")
    assert victim.read_text() == "keep"
