"""CLI: python -m benchmarks [--quick] [--peers a,b] [--workloads T1,T2,T3] [--out DIR] [--reps N]."""
import argparse
import os

from . import run


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 reps, < 1 minute")
    ap.add_argument("--peers", help="comma list: shmlog,mpqueue,zmq,fasterfifo (default: all)")
    ap.add_argument("--workloads", help="comma list of T1,T2,T3,T5 or rows T1-msg,T1-batch (default: all)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--reps", type=int, help="repetitions per row (min 3; default 3 quick, 5 full)")
    a = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    res = run(a.quick, split(a.peers), a.out, reps=a.reps, workloads=split(a.workloads))
    print()
    print(res["markdown"])
    return 0 if all(s["ok"] for s in res["summary"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
