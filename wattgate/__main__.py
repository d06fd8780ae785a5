"""``python -m wattgate`` runs the console script."""

import sys

from wattgate.cli import main

sys.exit(main())
