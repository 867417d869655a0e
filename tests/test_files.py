"""alexnet.files: atomic writes and the folder lock, checked against what a crash or a second writer
would see on disk."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from alexnet.errors import UserError
from alexnet.files import (FolderLock, atomic_path, atomic_write, run_lock, save_npy_atomic, save_npz_atomic,
                           store_lock, write_json_atomic, write_text_atomic)


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


def test_the_two_lock_places_and_the_owner_they_record(tmp_path):
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run") as lock:
        assert lock.path == tmp_path / "run" / "train.lock"
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["start"]
        with pytest.raises(UserError, match=f"{tmp_path / 'run'} is being trained by pid {os.getpid()}"):
            run_lock(tmp_path / "run").acquire()
    assert not lock.path.exists()
    with store_lock(tmp_path / "store") as lock:
        assert lock.path == tmp_path / "store.lock" and not (tmp_path / "store").exists()
        with pytest.raises(UserError, match=f"{tmp_path / 'store'} is being prepared by pid {os.getpid()}"):
            store_lock(tmp_path / "store").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock or temporary file left


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    lock = tmp_path / "x.lock"
    # this process's pid, but a start time it never had: the owner died and its pid was given to us
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "1"}))
    with FolderLock(lock, target=tmp_path / "x") as taken:
        assert taken.took_over["start"] == "1"
        assert json.loads(lock.read_text())["start"] != "1"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere"}))
    with pytest.raises(UserError, match="on elsewhere"):
        FolderLock(lock).acquire()
    lock.write_text("not json")
    with pytest.raises(UserError, match="is not a lock"):
        FolderLock(lock).acquire()
    assert lock.read_text() == "not json"  # neither is touched


def test_two_newcomers_cannot_both_take_over_one_stale_lock(tmp_path):
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


def test_release_leaves_a_lock_that_is_no_longer_its_own(tmp_path):
    lock = FolderLock(tmp_path / "x.lock").acquire()
    other = {"pid": os.getpid() + 1, "host": socket.gethostname(), "start": "7"}
    lock.path.write_text(json.dumps(other))  # taken over meanwhile by a process that thought we were gone
    lock.release()
    assert json.loads(lock.path.read_text()) == other and not lock.held
