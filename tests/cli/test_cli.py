import subprocess
import sys

import pytest

from alexnet.cli.commands import main
from alexnet.cli.parser import build_parser


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in subcommands():
        assert name in out


@pytest.mark.parametrize("name", subcommands())
def test_a_commands_own_parser_is_the_whole_parsers_part(name):
    # main builds only the named command's parser (a faster start); it must be the same parser
    def sub(parser):
        action = next(a for a in parser._actions if a.dest == "command")
        return action.choices[name]
    alone, whole = sub(build_parser(name)), sub(build_parser())
    assert alone.format_help() == whole.format_help()
    assert [a.dest for a in alone._actions] == [a.dest for a in whole._actions]


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith("usage: alexnet ") and usage.split()[2] in (name, name.replace("neighbours", "neighbors"))


def test_summary_prints_the_papers_count(capsys):
    assert main(["summary", "--variant", "paper", "--batch", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224 parameters" in out and "96x55x55" in out and "256x6x6" in out


def test_console_script_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "alexnet.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("alexnet ")


def test_user_error_is_one_line_not_a_traceback(capsys):
    assert main(["summary", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet summary: error:") and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# Settings' flags, generated from alexnet/config.py
# ---------------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    (["--set", "model.towers=3"], "model.towers=3: must be 1 or 2"),
    (["--batch-size", "0"], "train.batch_size=0: must be >= 1"),
    (["--lr", "-1"], "optim.lr=-1.0: must be > 0"),
    (["--set", "model.dropout=1.5"], "model.dropout=1.5: must be in [0, 1)"),
    (["--set", "model.pool_size=0"], "model.pool_size=0: must be >= 1"),
    (["--epochs", "0"], "train.epochs=0: must be >= 1"),
    (["--workers", "-1"], "data.workers=-1: must be >= 0"),
    (["--set", "model.width=0"], "model.width=0.0: must be > 0"),
    (["--set", "model.lrn_size=4"], "model.lrn_size=4: must be odd"),
    (["--crop-size", "20"], "model.input_size=20: must be >= 63"),
    (["--model.lrn-k", "0"], "model.lrn_k=0.0: must be > 0"),
    (["--eval-crops", "5"], "train.eval_crops=5: must be 1 or 10"),
    (["--schedule", "cosine"], "schedule.kind: 'cosine' is not one of 'plateau', 'step'"),
    (["--batch-size", "many"], "train.batch_size: expected an integer, got 'many'"),
    (["--variant", "vgg"], "unknown variant 'vgg'"),
    (["--model-parallel", "2", "--variant", "one-tower"], "train.model_parallel=2: needs model.towers = 2"),
]


@pytest.mark.parametrize("flags, message", BAD_SETTINGS, ids=[" ".join(f) for f, _ in BAD_SETTINGS])
def test_bad_settings_are_one_line_and_leave_no_run_folder(flags, message, demo_store, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--variant", "tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "32", "--device", "cpu"]
    code = main(["train", "--data", str(demo_store), "--out", str(out), "--quiet", *base, *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("alexnet train: error: ") and message in err, err
    assert "Traceback" not in err and not out.exists()


def test_help_imports_no_torch_and_python_m_alexnet_works():
    code = ("import sys\nfrom alexnet.cli.commands import main\nfor argv in ([], ['train', '--help'], ['experiment', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "False" and "--batch-size" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: alexnet train")


def test_every_setting_has_a_flag_documented_by_its_help_in_config_py(capsys):
    from alexnet.config import SECTIONS
    from alexnet.config import field_types
    from alexnet.cli.flags import setting_docs

    docs = setting_docs()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help at any space
    for section, cls in SECTIONS.items():
        for key in field_types(cls):
            assert docs[f"{section}.{key}"], f"{section}.{key} has no help in config.py"
            assert f"--{section}.{key.replace('_', '-')}" in text
    assert docs["model.towers"].startswith("§3.2: two GPUs") and docs["optim.momentum"] == "§5"
    assert docs["model.lrn_alpha_over_n"].startswith("cuda-convnet (the authors' code) divides alpha by n")
    assert "§3.2: two GPUs; conv2, conv4, conv5 see only their own tower. 1 = footnote 2's net (default: 2)" in text


def test_old_flag_names_set_the_same_settings():
    from alexnet.config import resolve
    from alexnet.cli.flags import setting_overrides

    argv = ["train", "--variant", "tiny", "--epochs", "3", "--batch-size", "16", "--lr", "0.1", "--crop-size", "96",
            "--workers", "2", "--device", "cpu", "--seed", "5", "--amp", "off", "--channels-last", "on", "--compile",
            "--schedule", "step", "--patience", "2", "--eval-crops", "10", "--checkpoint-every", "7",
            "--max-steps", "9", "--model-parallel", "2", "--devices", "cpu,cpu"]
    c = resolve(setting_overrides(build_parser().parse_args(argv)))
    assert c.variant == "tiny" and c.model.width == 0.125
    assert (c.train.epochs, c.train.batch_size, c.optim.lr, c.model.input_size, c.data.workers) == (3, 16, 0.1, 96, 2)
    assert (c.train.device, c.train.seed, c.train.amp, c.train.channels_last, c.train.compile) == ("cpu", 5, "off", "on", True)
    assert (c.schedule.kind, c.schedule.patience, c.train.eval_crops) == ("step", 2, 10)
    assert (c.train.checkpoint_every, c.train.max_steps, c.train.model_parallel, c.train.devices) == (7, 9, 2, "cpu,cpu")


def test_only_flags_given_are_applied_and_set_wins():
    from alexnet.cli.flags import setting_overrides

    assert setting_overrides(build_parser().parse_args(["train"])) == {}
    args = build_parser().parse_args(["train", "--lr", "0.1", "--no-model.lrn", "--schedule.milestones", "5,9",
                                      "--set", "optim.lr=0.3"])
    assert setting_overrides(args) == {"optim": {"lr": "0.3"}, "model": {"lrn": False},
                                       "schedule": {"milestones": "5,9"}}
    args = build_parser().parse_args(["experiment", "no-lrn", "--epochs", "2", "--device", "cpu"])
    assert setting_overrides(args) == {"train": {"epochs": "2", "device": "cpu"}} and args.device == "cpu"


@pytest.mark.parametrize("command", ["train", "experiment"])
def test_a_boolean_setting_takes_a_true_or_false_word_too(command, capsys):
    from alexnet.cli.flags import setting_overrides

    def flags(*argv):
        args = build_parser(command).parse_args([command, *argv])
        return setting_overrides(args), getattr(args, "names", [])

    for word, value in [("false", False), ("OFF", False), ("no", False), ("0", False),
                        ("true", True), ("on", True), ("Yes", True), ("1", True)]:
        assert flags("--data.flip", word) == flags(f"--data.flip={word}") == ({"data": {"flip": value}}, [])
    assert flags("--no-data.flip") == ({"data": {"flip": False}}, [])
    assert flags("--data.flip", "--lr", "0.1") == ({"data": {"flip": True}, "optim": {"lr": "0.1"}}, [])
    assert flags("--channels-last", "on") == ({"train": {"channels_last": "on"}}, [])  # a Literal: its own word
    if command == "experiment":  # a word that is not true/false stays a positional: an experiment's name
        assert flags("--model.lrn", "no-lrn") == ({"model": {"lrn": True}}, ["no-lrn"])
    with pytest.raises(SystemExit):
        flags("--data.flip=maybe")
    assert "--data.flip/--no-data.flip: ignored explicit argument 'maybe'" in capsys.readouterr().err
    if command == "train":  # a negated flag takes no word
        with pytest.raises(SystemExit):
            flags("--no-data.flip", "false")
        assert "unrecognized arguments: false" in capsys.readouterr().err


def test_resume_refuses_to_change_the_net_or_the_data(tiny_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    for flags, message in [(["--crop-size", "48"], "model.input_size=48: a resumed run keeps its net and data"),
                           (["--variant", "paper"], "variant=paper: a resumed run keeps"),
                           (["--set", "data.flip=false"], "data.flip=False: a resumed run keeps")]:
        assert main(["train", "--resume", str(tiny_run), "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()} == before


def test_config_that_is_a_folder_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet train: error: config file {tmp_path} is a folder; give a TOML file\n"


def test_report_writes_one_page_or_says_why_not(tiny_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(tiny_run), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"alexnet report: error: {tmp_path} is not a run folder "
                                               "(it has none of config.toml, metrics.jsonl, best.pt, last.pt)")



def test_prepare_uses_every_usable_core_unless_the_thread_count_was_fixed(monkeypatch):
    # worker processes keep their share of a busy machine (no barrier), unlike compute threads
    import argparse

    from alexnet import machine

    from alexnet.cli import commands as cli

    monkeypatch.setattr(machine, "usable_cores", lambda: 6)
    assert cli._prepare_workers(argparse.Namespace(threads=1, threads_fixed=False)) == 6
    assert cli._prepare_workers(argparse.Namespace(threads=3, threads_fixed=True)) == 3


def test_commands_without_torch_computation_skip_the_load_probe(tmp_path, monkeypatch):
    from alexnet import machine

    def probed(*args, **kwargs):
        raise AssertionError("probed the load for a thread count the command never uses")

    import os

    # a copy of the environment without the thread settings, so that what main sets (OMP_ and
    # MKL_NUM_THREADS) does not leak into later tests' subprocesses
    unset = ("OMP_NUM_THREADS", "ALEXNET_THREADS", "MKL_NUM_THREADS")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in unset})
    monkeypatch.setattr(machine, "read_cpu_sample", probed)
    assert main(["demo-data", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "1",
                 "--val-per-class", "1", "--quiet"]) == 0
    for name in unset:  # set by the command above
        os.environ.pop(name, None)
    with pytest.raises(AssertionError, match="probed"):
        main(["summary", "--variant", "tiny", "--batch", "0"])  # a torch command does probe
