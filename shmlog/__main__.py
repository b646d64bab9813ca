"""python -m shmlog: the command line (shmlog/cli/)."""

import sys

from .cli import main

sys.exit(main())
