"""The `alexnet` command: the only code that reads sys.argv, sets process-wide state (threads,
signals) and turns a `UserError` into one line and exit code 2.

    commands.py  one function per subcommand, each calling library code
    parser.py    the argument parser;  flags.py: the setting flags, generated from alexnet/config.py
    guard.py     output paths that must not clobber inputs, devices or links
    demo.py      `alexnet demo`: the whole pipeline on generated data
"""

from alexnet.cli.commands import main
from alexnet.cli.parser import build_parser

__all__ = ["build_parser", "main"]
