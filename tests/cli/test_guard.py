"""alexnet.cli.guard, through the CLI: on a shared machine (a world-writable folder, another local user)
no command writes into a device or a FIFO, over its own input, or under a file; Ctrl-C and SIGTERM
leave no temporary file and exit 130 and 143; names reach the terminal escaped."""

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from alexnet.cli import commands as cli
from alexnet.cli.commands import main


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"alexnet {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# What an output path may be: every command that writes a file
# ---------------------------------------------------------------------------------------------------

def output_commands(t, out):
    """(command line, ...) of every command with a file to write, that file being `out`; `t` a folder
    with a run folder t/run in it (the inputs need not be valid: the check comes before any work)."""
    return [
        ["import", "caffe", "--prototxt", t / "deploy.prototxt", "--weights", t / "m.caffemodel", "--out", out],
        ["import", "torchvision", t / "w.pth", "--out", out],
        ["export", t / "m.pt", "--onnx", out],
        ["features", t / "m.pt", "--out", out],
        ["eval", t / "m.pt", "--json", out],
        ["neighbors", "--database", t / "db.npy", "--queries", t / "q.npy", "--json", out],
        ["plot", t / "run", "--out", out],
        ["report", t / "run", "--out", out],
    ]


@pytest.mark.parametrize("n", range(8))
def test_a_fifo_or_a_device_at_an_output_is_refused_in_one_line_and_left_as_it_is(tmp_path, capsys, n):
    (tmp_path / "run").mkdir()
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    for out, kind in [(fifo, "a FIFO"), ("/dev/null", "a character device")]:
        argv = output_commands(tmp_path, out)[n]
        assert main(list(map(str, argv))) == 2
        assert f"{out} is {kind} (named pipe), not" in error_line(capsys, argv[0]) or kind == "a character device"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "run"]  # nothing written beside


def test_the_outputs_a_command_picks_itself_are_checked_too(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    os.mkfifo(run / "curves.png")
    os.mkfifo(run / "report.html")
    os.mkfifo(tmp_path / "feats.json")  # features' record of where its rows come from, beside FILE.npy
    figures = tmp_path / "figs"
    figures.mkdir()
    os.mkfifo(figures / "neighbours.png")
    for argv, fifo in [(["plot", run], run / "curves.png"), (["report", run], run / "report.html"),
                       (["features", tmp_path / "m.pt", "--out", tmp_path / "feats"], tmp_path / "feats.json"),
                       (["figures", tmp_path / "m.pt", "--out", figures], figures / "neighbours.png"),
                       (["train", "--data", tmp_path / "store", "--out", run, "--plot"], run / "curves.png")]:
        assert main(list(map(str, argv))) == 2
        assert f"{fifo} is a FIFO" in error_line(capsys, argv[0])
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def _inputs(t):
    (t / "run").mkdir()
    for name in ("deploy.prototxt", "m.caffemodel", "mean.binaryproto", "synsets.txt", "w.pth", "m.pt", "db.npy",
                 "db.json", "q.npy", "run/best.pt", "run/config.toml", "run/metrics.jsonl"):
        (t / name).write_bytes(f"the input {name}".encode())
    os.link(t / "w.pth", t / "hard-link.pt")
    (t / "store" / "train").mkdir(parents=True)
    (t / "store" / "train" / "labels.npy").write_bytes(b"labels")
    return {p.relative_to(t): p.read_bytes() for p in t.rglob("*") if p.is_file()}


def _caffe(t, out, **kw):
    args = {"--prototxt": t / "deploy.prototxt", "--weights": t / "m.caffemodel", "--mean": t / "mean.binaryproto",
            "--synsets": t / "synsets.txt", **kw}
    return ["import", "caffe", *[x for k, v in args.items() for x in (k, v)], "--out", out]


SAME = [
    lambda t: _caffe(t, t / "m.caffemodel"),  # the issue's own: --out the weights it reads
    lambda t: _caffe(t, t / "deploy.prototxt"),
    lambda t: _caffe(t, t / "mean.binaryproto"),
    lambda t: _caffe(t, t / "synsets.txt"),
    lambda t: ["import", "torchvision", t / "w.pth", "--out", t / "hard-link.pt"],  # the same file by another name
    lambda t: ["export", t / "m.pt", "--onnx", t / "m.pt"],
    lambda t: ["export", t / "run", "--onnx", t / "run" / "best.pt"],  # a run folder stands for its checkpoint
    lambda t: ["features", t / "m.pt", "--data", t / "store", "--out", t / "store" / "train" / "labels.npy"],
    lambda t: ["eval", t / "run", "--json", t / "run" / "best.pt"],
    lambda t: ["neighbors", "--database", t / "db.npy", "--queries", t / "q.npy", "--json", t / "db.json"],
    lambda t: ["plot", t / "run", "--out", t / "run" / "metrics.jsonl"],
    lambda t: ["report", t / "run", "--out", t / "run" / "config.toml"],
]


@pytest.mark.parametrize("n", range(len(SAME)))
def test_an_output_that_is_one_of_the_commands_inputs_is_refused(tmp_path, capsys, n):
    before = _inputs(tmp_path)
    argv = SAME[n](tmp_path)
    assert main(list(map(str, argv))) == 2
    assert "is also an input of this command" in error_line(capsys, argv[0])
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


UNDER_A_FILE = [
    lambda t, f: ["import", "torchvision", t / "w.pth", "--out", f / "x.pt"],
    lambda t, f: ["export", t / "m.pt", "--onnx", f / "x.onnx"],
    lambda t, f: ["features", t / "m.pt", "--out", f / "sub" / "x.npy"],
    lambda t, f: ["eval", t / "m.pt", "--json", f / "x.json"],
    lambda t, f: ["report", t / "run", "--out", f / "x.html"],
    lambda t, f: ["figures", t / "m.pt", "--out", f / "figs"],
    lambda t, f: ["train", "--data", t / "store", "--out", f / "run"],
    lambda t, f: ["demo-data", f / "demo"],
    lambda t, f: ["experiment", "baseline", "--data", t / "store", "--results", f / "results"],
]


@pytest.mark.parametrize("n", range(len(UNDER_A_FILE)))
def test_an_output_under_a_file_is_one_line_not_a_traceback(tmp_path, capsys, n):
    (tmp_path / "run").mkdir()
    file = tmp_path / "FILE"
    file.write_text("a file, not a folder")
    argv = UNDER_A_FILE[n](tmp_path, file)
    assert main(list(map(str, argv))) == 2
    assert f"{file} is a file, not a folder" in error_line(capsys, argv[0])
    assert file.read_text() == "a file, not a folder"


def test_figures_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    assert main(["figures", str(tmp_path / "m.pt"), "--out", str(tmp_path / "FILE")]) == 2
    assert "FILE is not a folder but a file; give a folder to write into" in error_line(capsys, "figures")


# ---------------------------------------------------------------------------------------------------
# Signals: no temporary file left, 130 after Ctrl-C, 143 after SIGTERM
# ---------------------------------------------------------------------------------------------------

SLOW_FEATURES = """
    import time
    import alexnet.evaluate.features as features

    def store_outputs(model, store, device, out=None, **kw):  # the rows, one every 50 ms (a big split)
        print("writing", flush=True)
        for i in range(len(out)):
            out[i] = i
            time.sleep(0.05)

    features.store_outputs = store_outputs
"""

SLOW_IMPORT = """
    import time
    import torch
    import alexnet.pretrained.torchvision as tv

    tv.import_torchvision = lambda weights, synsets: ({"weights": torch.zeros(3)}, [])

    def save(obj, f, *a, **k):  # a 245 MB checkpoint, slowly; an interrupt inside torch's C++ writer
        print("writing", flush=True)  # comes out of torch.save as RuntimeError("unexpected pos")
        try:
            for _ in range(20):
                f.write(bytes(1 << 16))
                time.sleep(0.05)
        except KeyboardInterrupt as e:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from e

    torch.save = save
"""


def _signalled(tmp_path, patch: str, argv: list, sig: int) -> subprocess.CompletedProcess:
    """Run `alexnet ARGV` in a child with `patch` applied; send `sig` once it prints "writing"."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(patch) + "\nimport sys\nfrom alexnet.cli.commands import main\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, str(script), *map(str, argv)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if line.strip() == "writing":
            p.send_signal(sig)
            break
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


@pytest.mark.parametrize("sig,code,said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_features_leaves_no_partial_file(tiny_run, demo_store, tmp_path, sig, code, said):
    out = tmp_path / "out"
    out.mkdir()
    r = _signalled(tmp_path, SLOW_FEATURES, ["features", tiny_run, "--data", demo_store, "--split", "val",
                                             "--out", out / "val.npy", "--quiet"], sig)
    assert r.returncode == code and r.stderr.strip() == f"alexnet features: {said}", r.stderr
    assert list(out.iterdir()) == []  # neither val.npy nor a val.npy.*.partial


@pytest.mark.parametrize("sig,code,said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_inside_imports_torch_save_leaves_no_temporary_file(tmp_path, sig, code, said):
    out = tmp_path / "out"
    out.mkdir()
    (out / "alexnet.pt").write_bytes(b"the previous checkpoint")
    r = _signalled(tmp_path, SLOW_IMPORT, ["import", "torchvision", tmp_path / "w.pth", "--out", out / "alexnet.pt"],
                   sig)
    assert r.returncode == code and r.stderr.strip() == f"alexnet import: {said}", r.stderr
    assert [p.name for p in out.iterdir()] == ["alexnet.pt"]  # no alexnet.pt.*.tmp
    assert (out / "alexnet.pt").read_bytes() == b"the previous checkpoint"


def test_an_error_raised_by_an_interrupted_writer_is_the_interrupt(monkeypatch, capsys):
    def command(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # what C++ code between the signal and Python makes of it
            raise RuntimeError("unexpected pos 64 vs 0") from None

    monkeypatch.setitem(cli.COMMANDS, "summary", command)
    assert main(["summary"]) == 130
    assert capsys.readouterr().err.strip() == "alexnet summary: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


# ---------------------------------------------------------------------------------------------------
# Names from folders and checkpoints reach the terminal escaped
# ---------------------------------------------------------------------------------------------------

ESCAPE = "cat\x1b[2J\x1b]0;owned\x07x"  # clear the screen, retitle the window


def test_predict_prints_file_and_class_names_escaped(tiny_run, tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from alexnet.model.checkpoint import save_checkpoint

    payload = torch.load(tiny_run / "best.pt", weights_only=True)
    payload["class_names"] = [ESCAPE] * len(payload["class_names"])
    payload["classes"] = [f"n{i}\x1b[1A" for i in range(len(payload["classes"]))]
    save_checkpoint(tmp_path / "m.pt", {k: v for k, v in payload.items() if k not in ("format", "version")})
    image = tmp_path / f"{ESCAPE}.png"
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(image)
    (tmp_path / f"bad{ESCAPE}.jpg").write_bytes(b"not an image")
    assert main(["predict", str(tmp_path / "m.pt"), str(image), str(tmp_path / f"bad{ESCAPE}.jpg"),
                 "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\x1b" not in stream and "\x07" not in stream
    assert "cat\\x1b[2J\\x1b]0;owned\\x07x" in captured.out and re.search(r"\(n\d+\\x1b\[1A\)", captured.out)
    assert f"cannot read {tmp_path}/badcat\\x1b[2J" in captured.err


def test_prepare_prints_class_folder_names_escaped(tree, tmp_path, capsys):
    (tree / "train" / ESCAPE).mkdir()  # an empty class folder: a warning names it
    assert main(["prepare", str(tree), str(tmp_path / "store"), "--size", "32", "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "class folder train/cat\\x1b[2J\\x1b]0;owned\\x07x is empty" in out


# ---------------------------------------------------------------------------------------------------
# Files written straight into a shared folder, not through a temporary name
# ---------------------------------------------------------------------------------------------------

def _victim(tmp_path):
    victim = tmp_path / "home" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("the victim's own file\n")
    return victim


def _planted(link, target):
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, 2002, 2002)  # another user's link


def test_demo_data_into_a_shared_folder_writes_through_no_planted_link(tmp_path, capsys):
    victim = _victim(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = [shared / "demo" / "train" / "n90000000" / "n90000000_0000.JPEG",
               shared / "demo" / "val" / "n90000001" / "n90000001_0001.JPEG",
               shared / "demo" / "LOC_synset_mapping.txt"]
    for link in planted:
        _planted(link, victim)
    assert main(["demo-data", str(shared / "demo"), "--classes", "2", "--train-per-class", "2",
                 "--val-per-class", "2", "--quiet"]) == 0
    assert victim.read_text() == "the victim's own file\n"
    assert all(p.is_file() and not p.is_symlink() for p in planted)  # the link replaced, its target untouched
    assert not [p for p in (shared / "demo").rglob("*") if p.name.endswith(".tmp")]


def test_experiment_results_are_not_appended_through_a_planted_link(tmp_path):
    from alexnet.errors import UserError
    from alexnet.experiments.ablations import _append_row

    victim = _victim(tmp_path)
    _planted(tmp_path / "results" / "results.jsonl", victim)
    with pytest.raises(UserError, match="results.jsonl is a symbolic link, not followed"):
        _append_row(tmp_path / "results", {"run": "x"})
    os.unlink(tmp_path / "results" / "results.jsonl")
    os.mkfifo(tmp_path / "results" / "results.jsonl")
    with pytest.raises(UserError, match="results.jsonl is a FIFO, not a regular file"):
        _append_row(tmp_path / "results", {"run": "x"})  # and not blocked on the FIFO
    assert victim.read_text() == "the victim's own file\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_prepare_does_not_resume_into_another_users_partial_store(tree, tmp_path, capsys):
    victim = _victim(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    partial = shared / "store.partial"  # made first by another user, with a link where images.npy goes
    (partial / "train").mkdir(parents=True)
    _planted(partial / "train" / "images.npy", victim)
    os.chown(partial, 2002, 2002)
    assert main(["prepare", str(tree), str(shared / "store"), "--size", "32", "--quiet", "--workers", "1"]) == 2
    assert f"{partial} is owned by uid 2002, not a partial store of yours" in error_line(capsys, "prepare")
    assert victim.read_text() == "the victim's own file\n" and (partial / "train" / "images.npy").is_symlink()


SLOW_START = """
    import os
    import time
    import alexnet.train.run as run

    def fit(config, data, out, **k):  # the run's start (store opened, net built, lock taken) takes a while
        os.makedirs(out, exist_ok=True)
        with run.run_lock(out):
            print("writing", flush=True)
            time.sleep(30)

    run.fit = fit
"""


def test_sigterm_while_a_run_starts_exits_143_and_releases_its_lock(demo_store, tmp_path):
    r = _signalled(tmp_path, SLOW_START, ["train", "--data", demo_store, "--out", tmp_path / "run", "--variant",
                                          "tiny", "--quiet"], signal.SIGTERM)
    assert r.returncode == 143 and r.stderr.strip() == "alexnet train: terminated", r.stderr
    assert not (tmp_path / "run" / "train.lock").exists()
