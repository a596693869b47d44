"""``python -m lowrank_lab ...``: see :mod:`lowrank_lab.cli`."""

import sys

from lowrank_lab.cli import main

sys.exit(main())
