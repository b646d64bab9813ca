"""`python -m tools.chaos` — run the fault campaign for one or more seeds and print the checker's report.

Owns: the command line and the report. Must never: judge (checker.py) or inject (campaign.py).
"""

import argparse
import json
import os
import shutil
import sys
import time

from . import campaign, checker


def report_text(rep: dict, run_dir: str, secs: float) -> str:
    s = rep["stats"]
    lines = [
        f"seed {rep['seed']}: {rep['faults_total']} faults in {secs:.0f} s, run dir {run_dir}",
        "  faults: " + ", ".join(f"{k} {v}" for k, v in rep["faults"].items()),
        f"  acknowledged: durable {s.get('acked_durable', 0)}, ring {s.get('acked_ring', 0)}, "
        f"kafka {s.get('acked_ring_kafka', 0)}; checked against the read-back: durable "
        f"{s.get('acked_durable_checked', 0)}, ring {s.get('acked_ring_checked', 0)} "
        f"(not checkable: topic re-created or below retention: durable {s.get('acked_durable_not_checkable', 0)})",
        f"  read: consumer {s.get('read_consumer', 0)}, member {s.get('read_member', 0)}, read-back "
        f"{s.get('read_readback', 0)}; refusals {s.get('refusals', 0)}; redelivered within the "
        f"at-least-once window {s.get('redelivered_in_window', 0)}",
        f"  longest gap between acknowledgements {s.get('longest_gap_s', 0)} s, longest not excused by "
        f"a fault on the producer's path {s.get('longest_unexcused_stall_s', 0)} s; final clean stop "
        f"{rep['final_clean_stop']}; plain consumers' ack-to-read latency p50/p99/max "
        f"{s.get('consumer_latency_p50_s')}/{s.get('consumer_latency_p99_s')}/{s.get('consumer_latency_max_s')} s",
        f"  violations: {len(rep['violations'])} " + json.dumps(rep["violations_by_check"]),
    ]
    for v in rep["violations"][:30]:
        lines.append(f"    [{v['check']}] seed {v['seed']}: {v['msg']}")
        for t in v["trace"][:3]:
            lines.append(f"        {t}")
    return "\n".join(lines)


def totals_text(reports: list) -> str:
    """One summary over every seed: what issue 11's note reports."""
    faults, stats = {}, {}
    for rep in reports:
        for k, v in rep["faults"].items():
            faults[k] = faults.get(k, 0) + v
        for k, v in rep["stats"].items():
            if isinstance(v, (int, float)) and not k.startswith("consumer_latency"):
                stats[k] = max(stats.get(k, 0), v) if "longest" in k else stats.get(k, 0) + v
    bad = [rep["seed"] for rep in reports if rep["violations"]]
    by_check = {}
    for rep in reports:
        for k, v in rep["violations_by_check"].items():
            by_check[k] = by_check.get(k, 0) + v
    seeds = [rep["seed"] for rep in reports]
    worst = max(reports, key=lambda r: r["stats"].get("longest_unexcused_stall_s", 0))
    return "\n".join(
        [
            f"total over {len(reports)} seeds ({seeds[0]}-{seeds[-1]}): {sum(faults.values())} faults: "
            + ", ".join(f"{k} {v}" for k, v in faults.items()),
            f"  acknowledged: durable {stats.get('acked_durable', 0)}, ring {stats.get('acked_ring', 0)}, kafka "
            f"{stats.get('acked_ring_kafka', 0)}; checked: durable {stats.get('acked_durable_checked', 0)}, ring "
            f"{stats.get('acked_ring_checked', 0)}; redelivered within the window "
            f"{stats.get('redelivered_in_window', 0)}",
            f"  longest gap between acknowledgements {stats.get('longest_gap_s', 0)} s, longest not excused "
            f"{stats.get('longest_unexcused_stall_s', 0)} s (seed {worst['seed']})",
            f"  violations: {sum(len(r['violations']) for r in reports)} {json.dumps(by_check)}; seeds with "
            f"violations: {bad or 'none'}",
        ]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("--seeds", type=int, default=1, help="how many consecutive seeds to run")
    ap.add_argument("--faults", type=int, default=60, help="faults per seed")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of faults per seed")
    ap.add_argument("--run-dir", default=None, help="default /tmp/shmlog-chaos/<seed>")
    ap.add_argument("--tmpfs-mb", type=int, default=192, help="size of the data dir's tmpfs")
    ap.add_argument("--no-kafka", action="store_true", help="no Kafka listener and client")
    ap.add_argument("--slack", type=float, default=checker.SLACK_S, help="stall bound = unblock timeout + slack")
    ap.add_argument("--only", default=None, help="comma-separated fault kinds (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep run dirs without violations")
    ap.add_argument("--json", default=None, help="write the reports (a list) to this file")
    ap.add_argument("--check-only", metavar="RUN_DIR", help="only run the checker on a finished run")
    args = ap.parse_args(argv)
    if args.check_only:
        rep = checker.check(args.check_only, args.slack)
        print(report_text(rep, args.check_only, 0))
        return 1 if rep["violations"] else 0
    weights = None
    if args.only:
        kinds = args.only.split(",")
        bad = set(kinds) - set(campaign.WEIGHTS)
        if bad:
            ap.error(f"unknown fault kinds {sorted(bad)}; known: {sorted(campaign.WEIGHTS)}")
        weights = {k: (w if k in kinds else 0) for k, w in campaign.WEIGHTS.items()}
    reports, bad = [], 0
    for seed in range(args.seed, args.seed + args.seeds):
        run_dir = (
            args.run_dir
            if args.run_dir and args.seeds == 1
            else os.path.join(args.run_dir or "/tmp/shmlog-chaos", str(seed))
        )
        t0 = time.monotonic()
        campaign.Campaign(
            seed, args.faults, args.duration, run_dir, tmpfs_mb=args.tmpfs_mb, kafka=not args.no_kafka, weights=weights
        ).run()
        rep = checker.check(run_dir, args.slack)
        rep["run_dir"] = run_dir
        reports.append(rep)
        print(report_text(rep, run_dir, time.monotonic() - t0), flush=True)
        if rep["violations"]:
            bad += 1
        elif not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(reports, f, indent=1)
    if len(reports) > 1:
        print(totals_text(reports), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
