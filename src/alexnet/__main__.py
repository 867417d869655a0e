"""`python -m alexnet ...`: the `alexnet` command."""

import sys

from alexnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
