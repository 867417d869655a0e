import subprocess
import sys

import pytest

from alexnet.cli import build_parser, main


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
