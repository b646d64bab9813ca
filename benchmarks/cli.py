"""Command line of the benchmark suite: `python -m benchmarks` and `shmlog bench` (which calls
cli_main). Owns argument parsing and the exit code; must never print numbers the report does not hold."""

import argparse
import os
import sys

DEFAULT_OUT = "shmlog-bench-results"  # in the current directory; the README run writes benchmarks/results


def parser(prog="python -m benchmarks", quick_default=False):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="shmlog side by side with local IPC peers: tables, "
        "scaling curves, groups, durability; results.{json,md} and PNG plots.",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        default=quick_default,
        help="small sizes, 3 reps, < 1 minute" + (" (the default here)" if quick_default else ""),
    )
    mode.add_argument(
        "--full",
        dest="quick",
        action="store_false",
        help="README sizes, < 15 minutes on 2 cores" + ("" if quick_default else " (the default)"),
    )
    ap.add_argument("--peers", help="comma list: shmlog,mpqueue,zmq,fasterfifo,redis,iceoryx2,pipe (default: all)")
    ap.add_argument(
        "--workloads",
        help="comma list of rows (T1,T2,T3,T4, or T1-msg, T2-spin, ...) and sections "
        "(rows,size,partitions,topics,groups,T5); default: all",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default ./{DEFAULT_OUT})")
    ap.add_argument("--reps", type=int, help="repetitions per row (min 3, default 3)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ap.add_argument("--print", dest="print_md", action="store_true", help="print the markdown report at the end")
    return ap


def cli_main(argv=None, prog="python -m benchmarks", quick_default=False):
    """Runs the suite; returns 0 if every row verified, 1 if any row failed, 2 on bad arguments."""
    a = parser(prog, quick_default).parse_args(argv)
    if a.reps is not None and a.reps < 3:
        print(f"{prog}: --reps must be at least 3 (got {a.reps})", file=sys.stderr)
        return 2
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    from .harness import SECTIONS, run
    from .peers import PEERS
    from .peers.base import ROWS

    known = set(ROWS) | {r.split("-")[0] for r in ROWS} | set(SECTIONS)
    for what, names, valid in (("peer", split(a.peers), PEERS), ("workload", split(a.workloads), known)):
        unknown = [x for x in names or () if x not in valid]
        if unknown:
            print(
                f"{prog}: unknown {what} {', '.join(unknown)} (choose from {', '.join(sorted(valid))})", file=sys.stderr
            )
            return 2
    res = run(
        a.quick,
        split(a.peers),
        a.out,
        reps=a.reps,
        workloads=split(a.workloads),
        log=lambda m: print(m, file=sys.stderr),
        progress=a.progress,
    )
    if a.print_md:
        print(res["markdown"])
    bad = [s for s in res["summary"] if not s["ok"]]
    for s in bad:
        print(f"FAILED {s['row']} {s['peer']} {s['mode']}: {s['error']}", file=sys.stderr)
    plots = res.get("plots") or []
    print(f"results: {os.path.join(a.out, 'results.md')} (+ results.json{''.join(', ' + p for p in plots)})")
    return 0 if not bad else 1
