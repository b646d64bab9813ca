"""python -m benchmarks [--quick|--full] [--peers a,b] [--workloads T1,T2,...] [--out DIR] [--reps N]."""

import sys

from .cli import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
