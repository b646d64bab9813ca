"""shmlog benchmark suite: side-by-side runs of shmlog against IPC peers. python -m benchmarks --help."""


def run(quick, only=None, out_dir=None, reps=None, workloads=None, log=print):
    """Run workloads x peers; write results.json + results.md into out_dir; return the results dict."""
    import os
    from .harness import run as _run
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    return _run(quick, only, out_dir, reps=reps, workloads=workloads, log=log)
