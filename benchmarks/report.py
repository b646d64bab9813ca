"""Writes results.json and results.md (markdown tables with each peer's ratio to shmlog)."""
import json
import os

UNITS = {"T1-msg": "msgs/s", "T1-batch": "msgs/s", "T3": "GB/s (1e9 B/s)"}
TITLES = {"T1-msg": "T1 per-message: 100 B records, 1 producer -> 1 consumer",
          "T1-batch": "T1 batch: 100 B records, 1000 records per send call",
          "T2": "T2 ping-pong round trip: 64 B records, microseconds",
          "T3": "T3 large records: 1 MiB records, 1 producer -> 1 consumer"}


def _num(v, row):
    return f"{v:,.0f}" if row.startswith("T1") else f"{v:.2f}"


def _ref(summary, row):
    """shmlog reference: best throughput mode; for T2 the blocking 'park' mode (peers block too)."""
    ok = [s for s in summary if s["row"] == row and s["peer"] == "shmlog" and s["ok"]]
    if row == "T2":
        ok = [s for s in ok if s["mode"] == "park"] or ok
        return min(ok, key=lambda s: s["p50"]["median"], default=None)
    return max(ok, key=lambda s: s["value"]["median"], default=None)


def markdown(res):
    m = res["machine"]
    lines = [f"# shmlog benchmarks ({'quick' if res['quick'] else 'full'})", "",
             f"{m['date']} · {m['cpu']} · {m['cores']} cores · Linux {m['kernel']} · Python {m['python']} · "
             f"git {m['git'][:12]} · load avg (1/5/15 min) {m.get('loadavg_start')} at start, "
             f"{m.get('loadavg_end')} at end", "",
             "Versions: " + ", ".join(f"{k} {v}" for p in res["peers"].values() for k, v in p["versions"].items()),
             "", f"{res['reps']} interleaved repetitions per row; median, [min-max] over repetitions. "
             "Producers and consumers are separate processes (fork). Throughput = records / (consumer's time "
             "after verifying the last record - producer's time before sending the first), one system-wide "
             "monotonic clock. Every consumer checks each record's sequence number; a row that lost or "
             "reordered anything is FAILED and shows no number.", ""]
    for name, why in res["skipped"].items():
        lines.append(f"- skipped **{name}**: {why}")
    summary = res["summary"]
    for row in TITLES:
        rows = [s for s in summary if s["row"] == row]
        if not rows:
            continue
        ref = _ref(summary, row)
        lines += ["", f"## {TITLES[row]} (n={res['sizes'][row]:,})", ""]
        if row == "T2":
            note = f"p50 ÷ shmlog {ref['mode']} p50 (lower is better)" if ref else "no shmlog reference"
            lines += [f"| peer | mode | p50 | p99 | p99.9 | max | p50 range | {note} |",
                      "|---|---|---:|---:|---:|---:|---|---:|"]
            for s in rows:
                if not s["ok"]:
                    lines.append(f"| {s['peer']} | {s['mode']} | FAILED | | | | {s['error']} | |")
                    continue
                q = {k: s[k]["median"] for k in ("p50", "p99", "p99.9", "max")}
                ratio = f"{q['p50'] / ref['p50']['median']:.2f}×" if ref else "-"
                lines.append(f"| {s['peer']} | {s['mode']} | {q['p50']:.1f} | {q['p99']:.1f} | {q['p99.9']:.1f} | "
                             f"{q['max']:.0f} | {s['p50']['min']:.1f}-{s['p50']['max']:.1f} | {ratio} |")
        else:
            note = f"÷ shmlog {ref['mode']} (higher is better)" if ref else "no shmlog reference"
            lines += [f"| peer | mode | {UNITS[row]} | range | {note} |", "|---|---|---:|---|---:|"]
            for s in rows:
                if not s["ok"]:
                    lines.append(f"| {s['peer']} | {s['mode']} | FAILED | {s['error']} | |")
                    continue
                v = s["value"]
                ratio = f"{v['median'] / ref['value']['median']:.2f}×" if ref else "-"
                lines.append(f"| {s['peer']} | {s['mode']} | {_num(v['median'], row)} | "
                             f"{_num(v['min'], row)}-{_num(v['max'], row)} | {ratio} |")
    lines += ["", "## Modes", ""]
    for name, p in res["peers"].items():
        for row, modes in p["modes"].items():
            for mode, desc in modes.items():
                lines.append(f"- {name} {row} `{mode}`: {desc}")
    if res.get("durable"):
        from .durable import report as durable_report
        lines += ["", durable_report(res["durable"]),
                  "T5 modes: shmlog send_batch(1000) -> poll_columns, 64 MiB ring; Redis 7 on a unix "
                  "socket, appendonly yes, appendfsync everysec, redis-py pipelined XADD (1000 per "
                  "round trip) -> XREAD count=10000; ingest = producer alone until flush(durable=True); "
                  "disk = a plain 32 MiB write loop + one fsync on the same filesystem."]
    return "\n".join(lines) + "\n"


def write(res, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    md = markdown(res)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({k: v for k, v in res.items() if k != "markdown"}, f, indent=1, default=float)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
    try:
        from .plot import plot
        plot(res, out_dir)
    except Exception as e:  # a plot must never cost the numbers
        print(f"plot skipped: {type(e).__name__}: {e}")
    return md
