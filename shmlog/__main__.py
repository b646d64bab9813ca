"""python -m shmlog: the command line (shmlog/cli.py)."""

import sys

from .cli import main

sys.exit(main())
