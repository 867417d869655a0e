"""`python -m alexnet.cli ...`: the `alexnet` command."""

import sys

from alexnet.cli.commands import main

sys.exit(main())
