"""What `alexnet` does around every command (cli.main): its output paths checked before any work,
and Ctrl-C and SIGTERM turned into exceptions so that every cleanup on the way out runs.

Outputs: each command's files and folders to write, checked against what may be there
(alexnet.files.check_output_path: no device, FIFO or folder in a file's place, no file under a file)
and against the files it reads (an output that is one of its inputs would destroy it: `import caffe
--weights m.caffemodel --out m.caffemodel`). An input folder stands for the files read in it: a run
folder for its checkpoints, config and metrics; a store for every file in it.

Text: stdout and stderr write a name that is not UTF-8 (a lone surrogate of os.fsdecode) as
\\udcNN where they would raise UnicodeEncodeError (a UTF-8 locale's "strict": `wrote /tmp/\\xff/x`).

Signals: SIGINT raises KeyboardInterrupt (as Python's own handler does) and SIGTERM `Terminated`, a
KeyboardInterrupt too, so the `except BaseException` of an atomic write removes its temporary file
either way (a SIGTERM used to kill `features` with its X.npy.PID.partial left behind); the CLI then
exits 130 or 143. An error raised while a signal was being handled (torch's writer reports an
interrupt inside it as RuntimeError "unexpected pos") is reported as that signal. Commands with
handlers of their own (train saves a checkpoint, prepare its progress) install them over these.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from alexnet.errors import UserError, printable, utf8_text
from alexnet.files import check_output_folder, check_output_path

FIGURES = ("kernels.png", "top5.png", "neighbours.png", "curves.png")  # alexnet.report.paper
RUN_INPUTS = ("best.pt", "last.pt", "config.toml", "metrics.jsonl")  # what a run folder is read for


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: the same cleanup, exit 143."""

    exit_code = 143
    said = "terminated"


def _run_files(path: str | None) -> list[Path]:
    """A checkpoint argument (a .pt file or a run folder) as the files it stands for."""
    if not path:
        return []
    p = Path(path)
    return [p / name for name in RUN_INPUTS] if p.is_dir() else [p]


def _store_files(path: str | None, depth: int = 3) -> list[Path]:
    """Every regular file of a store (its splits' arrays, JPEG shards, names, statistics)."""
    found, level = [], [Path(path)] if path else []
    for _ in range(depth):
        below = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            found += [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
            below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        level = below
    return found


def _feature_files(path: str | None) -> list[Path]:
    """A feature file argument as what load_features reads: FILE(.npy) and its .json."""
    if not path:
        return []
    p = Path(path)
    npy = p if p.suffix == ".npy" else p.with_name(p.name + ".npy")
    return [p, npy, npy.with_suffix(".json")]


def _outputs(args: argparse.Namespace) -> tuple[list[tuple[str, str | os.PathLike]], list[Path], list]:
    """(files to write as (flag, path), folders to write into, files read) of the parsed command."""
    c, get = args.command, lambda name: getattr(args, name, None)
    if c == "import":
        return [("--out", args.out)], [], [get("weights"), get("prototxt"), get("mean"), get("synsets")]
    if c == "export":
        return [("--onnx", args.onnx)], [], _run_files(args.checkpoint)
    if c == "features":
        npy = _feature_files(args.out)[1]
        return ([("--out", npy), ("--out", npy.with_suffix(".json"))], [],
                _run_files(args.checkpoint) + _store_files(args.data))
    if c == "eval" and args.json:
        checkpoints = [f for p in args.checkpoints for f in _run_files(p)]
        return [("--json", args.json)], [], checkpoints + _store_files(args.data)
    if c in ("neighbors", "neighbours") and args.json:
        return [("--json", args.json)], [], _feature_files(args.database) + _feature_files(args.queries)
    if c in ("plot", "report"):
        default = Path(args.run) / ("curves.png" if c == "plot" else "report.html")
        return ([("--out", args.out or default)], [],
                _run_files(args.run) + [Path(args.run) / "figures" / "neighbours.png"] + _store_files(get("data")))
    if c == "figures":
        inputs = _run_files(args.checkpoint) + _store_files(args.data) + _feature_files(args.train_features)
        return [("--out", Path(args.out) / name) for name in FIGURES], [Path(args.out)], inputs
    folder = {"train": "out", "demo-data": "dir", "demo": "dir", "experiment": "results"}.get(c)
    if folder and get(folder):
        plot = [("--out", Path(args.out) / "curves.png")] if c == "train" and args.plot else []
        return plot, [Path(get(folder))], []
    return [], [], []


def check_command_paths(args: argparse.Namespace) -> None:
    """Refuse (UserError, one line) an output of the command that is not a file or folder to write,
    or that is one of its inputs."""
    files, folders, inputs = _outputs(args)
    for folder in folders:
        check_output_folder(folder)
    for flag in ("out", "resume") if args.command == "train" else ():
        # RUN/train.log is written as strict UTF-8 (alexnet.train.run.RunLog), and its first line names RUN
        if getattr(args, flag, None) and utf8_text(getattr(args, flag)) != getattr(args, flag):
            raise UserError(f"--{flag} {printable(getattr(args, flag))}: the run folder's name is not UTF-8, "
                            "which train.log cannot record; give a folder whose name is")
    for flag, path in files:
        check_output_path(path, inputs, what=flag)


@contextlib.contextmanager
def guarded(args: argparse.Namespace) -> Iterator[None]:
    """Run a command: its paths checked first; stdout and stderr never failing on a name; SIGINT and
    SIGTERM raising (signals_raise)."""
    check_command_paths(args)
    strict = [s for s in (sys.stdout, sys.stderr) if getattr(s, "errors", "") == "strict" and hasattr(s, "reconfigure")]
    for stream in strict:
        stream.reconfigure(errors="backslashreplace")
    try:
        with signals_raise():
            yield
    finally:
        for stream in strict:
            stream.reconfigure(errors="strict")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt and SIGTERM Terminated while the block runs (the handlers before
    put back after); an Exception raised after either was handled re-raised as that signal's exception,
    the Exception as its cause. Only in the main thread (elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def interrupt(signum, frame):
        got.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Exception as e:
        if not got:
            raise
        raise (Terminated() if signal.SIGTERM in got else KeyboardInterrupt()) from e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
