"""`python -m stride` is the `stride` command."""

import sys

from stride.cli import main

sys.exit(main())
