"""Runs a whole benchmark session: sets up every peer, builds the plan (table rows x peers x modes,
scaling curves, groups, durability), runs it in interleaved repetitions (every repetition visits every
item, rows rotated so no peer always goes first), summarizes median and min-max, writes the report.
Entry point: run(quick, only, out_dir, reps=None, workloads=None, log=print, progress=True).
Owns: ordering and bookkeeping. Must never: drop a failed run from the summary (a row with any failed
repetition is marked failed and shows no number).
"""

import os
import shutil
import statistics
import tempfile
import time

from . import groups, machine, report, runner, scaling
from . import peers as peer_registry
from . import workloads as W
from .peers.base import ROWS, base_row
from .progress import Progress

SECTIONS = ("rows", "size", "partitions", "topics", "groups", "T5")

CURVES = {  # scaling-curve points; quick keeps the ends of each range
    True: {
        "sizes": (64, 8 << 10, 1 << 20),
        "size_bytes": 2 << 20,
        "size_peers": ("shmlog", "zmq", "iceoryx2"),
        "partitions": (1, 16, 256),
        "rate": 50_000,
        "rate_seconds": 0.2,
        "topics": 250,
    },
    False: {
        "sizes": (64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20),
        "size_bytes": 96 << 20,
        "size_peers": None,
        "partitions": (1, 4, 16, 64, 256),
        "rate": 100_000,
        "rate_seconds": 2.0,
        "topics": 2500,  # x 4 partitions: issue 13.6's 10,000
    },
}


def stats(vals):
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _expand(workloads):
    if not workloads:
        return list(ROWS), list(SECTIONS)
    rows = [r for r in ROWS if any(r == w or r.split("-")[0] == w for w in workloads)]
    sections = [s for s in SECTIONS if s in workloads or (s == "rows" and rows)]
    return rows, sections


def _setup_peers(names, rows, workdir, res, log):
    active = []
    for name in names:
        peer, reason = peer_registry.load(name) if name in peer_registry.PEERS else (None, "unknown peer")
        if peer is not None:
            try:
                active.append(peer)  # teardown must run even if setup fails half-way
                peer.setup(workdir)
            except Exception as e:
                active.pop()
                try:
                    peer.teardown()
                except Exception:
                    pass
                peer, reason = None, f"setup failed: {type(e).__name__}: {e}"
        if peer is None:
            res["skipped"][name] = reason
            log(f"skip {name}: {reason}")
            continue
        modes = {r: peer.modes(base_row(r)) for r in rows}
        res["peers"][name] = {"versions": peer.versions(), "modes": {r: m for r, m in modes.items() if m}}
    return active


def _count(peer, row, mode, quick):
    return max(W.BATCH if row == "T1-batch" else 10, int(W.SIZES[quick][row] * peer.scale(base_row(row), mode)))


def _curve_mode(peer):
    modes = list(peer.modes("T1-msg"))
    return "pipelined" if "pipelined" in modes else modes[0]


def plan(quick, reps, rows, sections, active):
    """[(rep, section, label, fn)]: fn() -> result dict with "ok"; reps interleaved."""
    cv, timeout = CURVES[quick], 30.0 if quick else 300.0
    items = []
    for rep in range(reps):
        if "rows" in sections:
            for row in rows:
                pm = [(p, m) for p in active for m in p.modes(base_row(row))]
                k = rep % len(pm) if pm else 0
                for peer, mode in pm[k:] + pm[:k]:  # rotate who goes first
                    n = _count(peer, row, mode, quick)
                    tag = f"{rep}-{row}-{mode}"
                    items.append(
                        (
                            rep,
                            "rows",
                            dict(row=row, peer=peer.name, mode=mode, n=n),
                            lambda peer=peer, row=row, mode=mode, n=n, tag=tag: runner.run_row(
                                peer, row, mode, quick, tag, timeout, n=n
                            ),
                        )
                    )
        if "size" in sections:
            for size in cv["sizes"]:
                for peer in active:
                    if cv["size_peers"] and peer.name not in cv["size_peers"]:
                        continue
                    mode = _curve_mode(peer)
                    n = max(32, min(int(cv["size_bytes"] // size), _count(peer, "T1-msg", mode, quick)))
                    tag = f"{rep}-size{size}"
                    items.append(
                        (
                            rep,
                            "size",
                            dict(peer=peer.name, mode=mode, size=size, n=n),
                            lambda peer=peer, mode=mode, size=size, n=n, tag=tag: runner.run_row(
                                peer, "T1-msg", mode, quick, tag, timeout, size=size, n=n
                            ),
                        )
                    )
        if "partitions" in sections:
            for parts in cv["partitions"]:
                items.append(
                    (
                        rep,
                        "partitions",
                        dict(partitions=parts, offered=cv["rate"]),
                        lambda parts=parts: scaling.partitions(parts, cv["rate"], cv["rate_seconds"]),
                    )
                )
        if "topics" in sections:
            items.append((rep, "topics", dict(topics=cv["topics"]), lambda: scaling.topics(cv["topics"])))
        if "groups" in sections and groups.available():
            for label, fn in groups.throughput_plan(quick):
                items.append((rep, "groups", label, fn))
        if "T5" in sections:
            from . import durable

            for key, fn in durable.plan(quick):
                items.append((rep, "T5", dict(row=key), fn))
    if "groups" in sections and groups.available():
        items.append((reps, "groups", dict(kind="rebalance"), lambda: groups.rebalance(quick)))
    return items


def _line(section, label, r):
    if not r.get("ok"):
        return "FAILED " + str(r.get("error"))
    if section == "rows":
        return report.fmt_value(label["row"], r["value"])
    if section == "size":
        return f"{r['value']:,.0f} msg/s {r['bytes_per_s'] / 1e6:,.0f} MB/s"
    if section == "partitions":
        return f"{r['rate']:,.0f} msg/s p99 {r['p99_us']:.0f} us cpu {r['cpu_us_per_record']:.1f} us/rec"
    if section == "topics":
        return f"create {r['create_s']:.2f} s, {r['shm_bytes_per_partition'] / 1024:.0f} KiB shm/partition"
    return ", ".join(f"{k}={v:.3g}" for k, v in r.items() if isinstance(v, float) and k != "wall")[:80]


def _label(label):
    return " ".join(str(v) for v in label.values())


def run(quick, only=None, out_dir=None, reps=None, workloads=None, log=print, progress=True):
    out_dir = out_dir or "shmlog-bench-results"
    reps = max(3, reps or 3)
    rows, sections = _expand(workloads)
    names = only or list(peer_registry.PEERS)
    workdir = tempfile.mkdtemp(prefix="shmlogbench-", dir="/tmp")
    t_start = time.monotonic()
    res = {
        "machine": machine.facts(),
        "quick": quick,
        "reps": reps,
        "sizes": W.SIZES[quick],
        "record_bytes": W.RECORD,
        "curves_config": CURVES[quick],
        "peers": {},
        "skipped": {},
        "runs": [],
        "results": {s: [] for s in SECTIONS if s != "rows"},
    }
    bar = None
    try:
        active = _setup_peers(names, rows, workdir, res, log)
        if "groups" in sections and not groups.available():
            res["skipped"]["consumer groups"] = "this shmlog has no consumer-group API (issue 4)"
        items = plan(quick, reps, rows, sections, active)
        bar = Progress(len(items), enabled=progress)
        for rep, section, label, fn in items:
            t = time.monotonic()
            try:
                r = fn()
            except Exception as e:
                r = {"ok": False, "error": f"harness: {type(e).__name__}: {e}", "value": None}
            r = {**label, "rep": rep, **r, "wall": round(time.monotonic() - t, 3)}
            (res["runs"] if section == "rows" else res["results"][section]).append(r)
            bar.step(f"rep {rep} {section} {_label(label)}", _line(section, label, r))
    finally:
        if bar is not None:
            bar.close()
        for peer in locals().get("active", []):
            try:
                peer.teardown()
            except Exception as e:
                log(f"teardown {peer.name}: {e}")
        shutil.rmtree(workdir, ignore_errors=True)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["machine"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
    res["summary"] = summarize(res["runs"])
    res["curves"] = summarize_curves(res["results"])
    res["markdown"] = report.write(res, out_dir)
    return res


def summarize(runs):
    by = {}
    for r in runs:
        by.setdefault((r["row"], r["peer"], r["mode"]), []).append(r)
    out = []
    for (row, peer, mode), rs in by.items():
        bad = [r for r in rs if not r["ok"]]
        s = {
            "row": row,
            "peer": peer,
            "mode": mode,
            "reps": len(rs),
            "n": rs[0].get("n"),
            "ok": not bad,
            "error": bad[0]["error"] if bad else None,
        }
        if not bad:
            if row.startswith("T2"):
                for k in ("p50", "p99", "p99.9", "max"):
                    s[k] = stats([r["value"][k] for r in rs])
                curves = [r["value"]["curve"] for r in rs]
                s["curve"] = [statistics.median(c[i] for c in curves) for i in range(len(curves[0]))]
            else:
                s["value"] = stats([r["value"] for r in rs])
        out.append(s)
    return out


def _group_by(runs, keys, fields):
    by = {}
    for r in runs:
        by.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, rs in by.items():
        bad = [r for r in rs if not r.get("ok")]
        s = {**dict(zip(keys, key)), "reps": len(rs), "ok": not bad, "error": bad[0].get("error") if bad else None}
        if not bad:
            for f in fields:
                vals = [r[f] for r in rs if r.get(f) is not None]
                if vals:
                    s[f] = stats(vals)
        out.append(s)
    return out


def summarize_curves(results):
    out = {
        "size": _group_by(results.get("size", []), ("peer", "mode", "size", "n"), ("value", "bytes_per_s")),
        "partitions": _group_by(
            results.get("partitions", []), ("partitions", "offered"), ("rate", "p50_us", "p99_us", "cpu_us_per_record")
        ),
        "topics": _group_by(
            results.get("topics", []),
            ("topics",),
            (
                "create_s",
                "delete_s",
                "partitions",
                "create_ms_per_partition",
                "delete_ms_per_partition",
                "shm_bytes_per_partition",
                "creator_rss_bytes_per_partition",
            ),
        ),
    }
    if results.get("groups"):
        out["groups"] = groups.summarize(results["groups"])
    if results.get("T5"):
        from . import durable

        out["T5"] = durable.summarize(results["T5"])
    return out
