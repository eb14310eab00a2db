"""`python -m snapgroup` is the `snapgroup` command."""

import sys

from snapgroup.cli import main

sys.exit(main())
