"""shmlog benchmark suite: side-by-side runs of shmlog against local IPC peers. python -m benchmarks --help.
Public entry points: run(...) -> results dict, cli_main(argv) -> exit code (what `shmlog bench` calls)."""


def run(quick, only=None, out_dir=None, reps=None, workloads=None, log=print, progress=False):
    """Run workloads x peers; write results.json + results.md + plots into out_dir; return the results dict."""
    from .harness import run as _run

    return _run(quick, only, out_dir, reps=reps, workloads=workloads, log=log, progress=progress)


def cli_main(argv=None, prog="shmlog bench", quick_default=True):
    """`shmlog bench`: quick mode unless --full; progress bar on stderr; returns the exit code."""
    from .cli import cli_main as _main

    return _main(argv, prog=prog, quick_default=quick_default)
