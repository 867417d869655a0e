"""`python -m alexnet ...` and the `alexnet` command: the first CPU sample of the thread probe
(alexnet.machine.plan_threads) is taken before the CLI's imports, so the probe's wait overlaps them."""

import sys


def run() -> int:
    from alexnet.machine import read_cpu_sample  # imports no torch, nor numpy

    started = read_cpu_sample()
    from alexnet.cli.commands import main

    return main(started=started)


if __name__ == "__main__":
    sys.exit(run())
