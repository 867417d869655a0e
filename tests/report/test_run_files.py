"""A run folder another user can write into (a run under /tmp, a shared project folder), and names
that are not UTF-8: `alexnet report` reads only the run's own plain files, and report, figures and
train --plot draw and write any name a file system holds."""

import base64
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet.report.page import write_run_report
from alexnet.report.run_files import NotReadHere, read_run_file
from alexnet.cli.commands import main

OTHER_UID = 2002  # another local user


def _plant(link, target):
    """A symbolic link another user made (theirs where the test runs as root)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, OTHER_UID, OTHER_UID)


def test_only_plain_files_of_the_run_are_read(tmp_path):
    run, home = tmp_path / "run", tmp_path / "home"
    (run / "figures").mkdir(parents=True)
    home.mkdir()
    (home / "secret").write_bytes(b"the victim's secret")
    (run / "config.toml").write_bytes(b"variant = 'tiny'\n")
    (run / "figures" / "own.png").write_bytes(b"png")
    assert read_run_file(run, "config.toml")[0] == b"variant = 'tiny'\n"
    assert read_run_file(run, "figures/own.png")[0] == b"png"
    _plant(run / "metrics.jsonl", home / "secret")
    _plant(run / "elsewhere", home)
    os.mkfifo(run / "fifo")  # opened without blocking, and refused
    os.link(home / "secret", run / "hard")
    for name, why in [("metrics.jsonl", "metrics.jsonl is a symbolic link; not followed"),
                      ("elsewhere/secret", "elsewhere is a symbolic link; not followed"),
                      ("fifo", "fifo is not a regular file; not read"),
                      ("hard", "hard has 1 other name(s) (hard links)")]:
        with pytest.raises(NotReadHere, match=re.escape(why)):
            read_run_file(run, name)
    with pytest.raises(FileNotFoundError):
        read_run_file(run, "absent.toml")


@pytest.fixture
def planted_run(tiny_run, tmp_path):
    """A copy of the tiny run in a folder others can write into, with another user's links in it: the
    config, the metrics and Fig. 4's PNG pointing at the victim's files, and best.pt at a private
    checkpoint of theirs (last.pt stays the run's own)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = shared / "run"
    shutil.copytree(tiny_run, run)
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("TOP SECRET: the victim's ssh key\n")
    buf = np.zeros((4, 4, 3), np.uint8)
    buf[0, 0] = 200
    Image.fromarray(buf).save(home / "private.png")  # a PNG, newer than the checkpoint: it would be embedded
    shutil.copy(tiny_run / "best.pt", home / "private.pt")
    (run / "config.toml").unlink()
    (run / "metrics.jsonl").unlink()
    (run / "best.pt").unlink()
    _plant(run / "config.toml", home / "secret.txt")
    _plant(run / "metrics.jsonl", home / "secret.txt")
    _plant(run / "figures" / "neighbours.png", home / "private.png")
    _plant(run / "best.pt", home / "private.pt")
    return run, home


def test_the_report_follows_no_link_planted_in_the_run_folder(planted_run, demo_store, tmp_path, capsys):
    run, home = planted_run
    assert main(["report", str(run), "--data", str(demo_store), "--out", str(tmp_path / "page.html"),
                 "--device", "cpu", "--quiet"]) == 0
    page = (tmp_path / "page.html").read_text()
    assert "TOP SECRET" not in page
    assert base64.b64encode((home / "private.png").read_bytes()).decode() not in page
    assert str(home) not in page  # not even the name of the checkpoint it would have read
    for name in ("config.toml", "metrics.jsonl", "best.pt", "figures/neighbours.png"):
        assert f"{name} is a symbolic link; not followed" in page, name
    assert f"{run / 'last.pt'}" in page  # the run's own checkpoint, read instead of the planted best.pt
    assert "Traceback" not in capsys.readouterr().err


def test_the_report_says_on_stderr_which_files_it_did_not_read(planted_run, demo_store, tmp_path, capsys):
    run, _ = planted_run
    write_run_report(run, tmp_path / "page.html", data=demo_store)
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("note:")] == [
        f"note: {run}: {name} is a symbolic link; not followed (it could lead out of the run folder)"
        for name in ("config.toml", "metrics.jsonl", "best.pt", "figures/neighbours.png")]


def test_a_planted_link_to_a_folder_is_not_followed_either(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(elsewhere / "neighbours.png")
    _plant(run / "figures", elsewhere)
    page = write_run_report(run, tmp_path / "page.html").read_text()
    assert base64.b64encode((elsewhere / "neighbours.png").read_bytes()).decode() not in page
    assert "figures is a symbolic link; not followed" in page


# ---------------------------------------------------------------------------------------------------
# Names that are not UTF-8
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """A folder named b"\\xff" holding a store whose first class folder is b"n01\\xff" (its class name
    too: no synset file), and a run of the tiny net on it (trained in a UTF-8 folder, then moved)."""
    from alexnet.data.demo_images import make_demo_data

    root = os.fsencode(tmp_path_factory.mktemp("odd")) + b"/\xff"
    os.mkdir(root)
    src = os.fsdecode(root + b"/src")
    make_demo_data(src, classes=3, train_per_class=12, val_per_class=4, seed=0, progress=False)
    os.remove(os.path.join(src, "LOC_synset_mapping.txt"))
    for split in ("train", "val"):
        first = sorted(os.listdir(os.fsencode(src) + b"/" + split.encode()))[0]
        os.rename(os.fsencode(src) + b"/" + split.encode() + b"/" + first,
                  os.fsencode(src) + b"/" + split.encode() + b"/n01\xff")
    store = os.fsdecode(root + b"/store")
    assert main(["prepare", src, store, "--size", "72", "--quiet", "--workers", "1"]) == 0
    plain = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", "--data", store, "--out", str(plain), "--variant", "tiny", "--epochs", "1",
                 "--batch-size", "16", "--plot", "--quiet"]) == 0  # a title and a class named b"...\xff"
    assert (plain / "curves.png").is_file()
    run = os.fsdecode(root + b"/run")
    shutil.copytree(plain, run)
    return root, store, run, plain


def test_report_and_figures_take_names_that_are_not_utf8(odd_names, capsys):
    root, store, run, plain = odd_names
    assert main(["report", run, "--quiet", "--device", "cpu"]) == 0
    page = open(os.fsencode(run) + b"/report.html", encoding="utf-8").read()  # UTF-8 throughout
    assert "n01\\xff" in page and "\\xff/run" in page
    figures = os.fsdecode(root + b"/figures")
    # (the checkpoint from a UTF-8 path: torch.load itself cannot open a path that is not UTF-8)
    assert main(["figures", str(plain), "--data", store, "--out", figures, "--quiet", "--device", "cpu"]) == 0
    assert sorted(os.listdir(os.fsencode(figures))) == [b"curves.png", b"kernels.png", b"neighbours.png",
                                                          b"top5.png"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_strict_utf8_terminal_gets_the_name_escaped_not_a_traceback(odd_names, tmp_path):
    _, _, run, _ = odd_names
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "alexnet.cli", "plot", run, "--out", str(tmp_path / "c.png")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("wrote ") and (tmp_path / "c.png").is_file()


def test_train_out_not_utf8_is_one_line_and_makes_nothing(odd_names, capsys):
    root, store, _, _ = odd_names
    out = os.fsdecode(root + b"/run\xfe")
    assert main(["train", "--data", store, "--out", out, "--variant", "tiny", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\\xfe: the run folder's name is not UTF-8" in err
    assert not os.path.exists(out)


def test_tensorboard_logs_into_a_folder_named_in_other_bytes(tmp_path):
    pytest.importorskip("tensorboard")
    from alexnet.train.metrics import MetricsLog

    run = os.fsdecode(os.fsencode(tmp_path) + b"/run\xff")
    with MetricsLog(run, global_step=0) as log:
        log.append({"epoch": 1, "train_loss": 1.5}, 10)
        assert log.tensorboard_dir is not None
    events = os.listdir(os.fsencode(run) + b"/tensorboard")
    assert len(events) == 1 and events[0].startswith(b"events.out.tfevents")
    assert stat.S_ISREG(os.stat(os.fsencode(run) + b"/tensorboard/" + events[0]).st_mode)
