"""cli/status.py — `shmlog status`: a live view of one instance.

Owns: sampling the instance twice per refresh (topic descriptions, group
descriptions, the persister, attached processes) and turning the deltas into
rates: records/s produced per partition (end offsets), records/s committed
per group; ring fill and persistence lag as they stand. Renders with rich's
Live on a terminal, plain text in a pipe, JSON with --json.
Must never: change the instance (it connects with autostart=False).
"""

import sys
import time

from .. import errors
from ..ipc import daemons
from . import common
from .doctor import instance_tokens
from .consumer_groups import lag_text, total_lag

EPILOG = """examples:
  shmlog status                       # refreshes every second until Ctrl-C
  shmlog status --once                # one snapshot (rates over --interval)
  shmlog status --json                # one snapshot as JSON (implies --once unless --count)
  shmlog status --interval 0.5 --count 10
"""


def sample(log, settings) -> dict:
    topics = {}
    for name in log.list_topics():
        try:
            topics[name] = log.describe_topic(name)
        except errors.UnknownTopicOrPartition:
            continue
    groups = {}
    for g in log.list_groups():
        try:
            groups[g] = log.describe_group(g)
        except errors.UnknownGroup:
            continue  # deleted meanwhile
    live, dead = instance_tokens(settings)
    sup_pid = common.supervisor_pid(settings)
    return {
        "t": time.monotonic(),
        "topics": topics,
        "groups": groups,
        "persister_pid": (
            daemons.persister_pid(settings.data_dir) if daemons.persister_running(settings.data_dir) else None
        ),
        "supervisor_pid": sup_pid,
        "addresses": common.supervisor_addresses(settings, running=sup_pid is not None),
        "processes": len(live),
        "dead_tokens": len(dead),
    }


def _committed_sum(d) -> int:
    return sum(p.committed or 0 for p in d.partitions)


def snapshot(settings, before: dict, after: dict) -> dict:
    dt = max(after["t"] - before["t"], 1e-9)
    topics = []
    for name, d in after["topics"].items():
        prev = before["topics"].get(name)
        prev_end = (
            {p.partition: p.end_offset for p in prev.partitions}
            if prev is not None and prev.generation == d.generation
            else {}
        )
        parts = []
        for p in d.partitions:
            rate = (p.end_offset - prev_end[p.partition]) / dt if p.partition in prev_end else None
            parts.append(
                {
                    "partition": p.partition,
                    "start_offset": p.log_start_offset,
                    "end_offset": p.end_offset,
                    "produce_rate": rate,
                    "ring_used_bytes": p.ring_used_bytes,
                    "ring_bytes": p.ring_bytes,
                    "ring_fill": p.ring_used_bytes / max(p.ring_bytes, 1),
                    "persisted_lag_bytes": p.persisted_lag_bytes,
                    "fsynced_lag_bytes": p.fsynced_lag_bytes,
                    "sealed_writes": p.sealed_writes,
                    "overwritten_frames": p.overwritten_frames,
                    "offline": p.offline,
                    "offline_offset": p.offline_offset,
                    "cleaned_to": p.cleaned_to,
                    "cleaner_bytes_reclaimed": p.cleaner_bytes_reclaimed,
                }
            )
        topics.append({"name": name, "persistence": d.config.persistence, "fsync": d.config.fsync, "partitions": parts})
    groups = []
    for g, d in after["groups"].items():
        prev = before["groups"].get(g)
        rate = (_committed_sum(d) - _committed_sum(prev)) / dt if prev is not None else None
        known, unknown = total_lag(d)
        groups.append(
            {
                "group": g,
                "state": d.state,
                "generation": d.generation,
                "rebalances": d.rebalances,
                "lag": None if unknown and unknown == len(d.partitions) else known,
                "lag_unknown_partitions": unknown,
                "lag_text": lag_text(d),
                "commit_rate": rate,
                "members": [
                    {"member_id": m.member_id, "pid": m.pid, "client_id": m.client_id, "partitions": len(m.assignment)}
                    for m in d.members
                ],
            }
        )
    return {
        "instance": settings.instance,
        "data_dir": settings.data_dir,
        "time_ms": int(time.time() * 1000),
        "interval_s": round(dt, 3),
        "persister": {"running": after["persister_pid"] is not None, "pid": after["persister_pid"]},
        "supervisor": {
            "running": after["supervisor_pid"] is not None,
            "pid": after["supervisor_pid"],
            **after["addresses"],
        },
        "processes": after["processes"],
        "dead_tokens": after["dead_tokens"],
        "topics": topics,
        "groups": groups,
    }


def _rate(v) -> str:
    return "-" if v is None else f"{v:,.0f}/s"


def sections(snap) -> list[tuple[str, list[str], list[list]]]:
    """(title, headers, rows) blocks shared by the plain and the rich rendering."""
    p, s = snap["persister"], snap["supervisor"]
    head = (
        f"instance {snap['instance']}  data {snap['data_dir']}  processes {snap['processes']}  "
        f"supervisor {'pid ' + str(s['pid']) if s['running'] else 'not running'}  "
        f"persister {'pid ' + str(p['pid']) if p['running'] else 'not running'}  "
        + "".join(f"{k} {s[k]}  " for k in ("metrics", "kafka") if s.get(k))
        + f"(rates over {snap['interval_s']} s)"
    )
    rows = []
    for t in snap["topics"]:
        for q in t["partitions"]:
            rows.append(
                [
                    t["name"],
                    q["partition"],
                    q["end_offset"],
                    _rate(q["produce_rate"]),
                    f"{100 * q['ring_fill']:.1f}%",
                    common.human_bytes(q["persisted_lag_bytes"]) if t["persistence"] == "disk" else "-",
                    common.human_bytes(q["fsynced_lag_bytes"]) if t["persistence"] == "disk" else "-",
                    q["sealed_writes"],
                ]
            )
    out = [(head, ["TOPIC", "PART", "END OFFSET", "PRODUCE", "RING FILL", "UNPERSISTED", "UNSYNCED", "SEALED"], rows)]
    off = [
        [t["name"], q["partition"], q["offline_offset"], q["offline"]]
        for t in snap["topics"]
        for q in t["partitions"]
        if q.get("offline")
    ]
    cleaned = [
        [t["name"], q["partition"], q["cleaned_to"], common.human_bytes(q["cleaner_bytes_reclaimed"])]
        for t in snap["topics"]
        for q in t["partitions"]
        if q.get("cleaned_to") is not None
    ]
    if cleaned:  # compacted topics: the cleaner's progress
        out.append(("compaction", ["TOPIC", "PART", "CLEANED TO", "RECLAIMED"], cleaned))
    if off:  # quarantined partitions (damaged files): writes refused
        out.append(
            ("OFFLINE partitions (quarantined: damaged segment files)", ["TOPIC", "PART", "FROM OFFSET", "WHY"], off)
        )
    grows = [
        [
            g["group"],
            g["state"],
            len(g["members"]),
            g["lag_text"],
            _rate(g["commit_rate"]),
            g["rebalances"],
            " ".join(f"{m['client_id'] or m['member_id']}(pid {m['pid']}, {m['partitions']}p)" for m in g["members"])
            or "-",
        ]
        for g in snap["groups"]
    ]
    out.append(("groups", ["GROUP", "STATE", "MEMBERS", "LAG", "COMMITS", "REBALANCES", "MEMBER LIST"], grows))
    return out


def render_text(snap) -> str:
    blocks = []
    for title, headers, rows in sections(snap):
        blocks.append(title + "\n" + (common.table(headers, rows) if rows else "(none)"))
    return "\n\n".join(blocks)


def render_rich(snap):
    from rich.console import Group
    from rich.table import Table

    parts = []
    for title, headers, rows in sections(snap):
        t = Table(title=title, title_justify="left", expand=False)
        for h in headers:
            t.add_column(h, justify="left" if h in ("TOPIC", "GROUP", "STATE", "MEMBER LIST") else "right")
        for r in rows:
            t.add_row(*[str(c) for c in r])
        parts.append(t)
    return Group(*parts)


def cmd_status(args):
    if args.interval <= 0:
        raise common.CommandError("--interval must be > 0")
    settings = common.settings(args)
    once = args.once or (args.json and args.count is None)
    count = 1 if once else args.count
    with common.open_log(args) as log:
        prev = sample(log, settings)
        live = None
        if not args.json and count != 1 and sys.stdout.isatty():
            from rich.live import Live

            live = Live(auto_refresh=False, transient=False)
        shown = 0
        try:
            if live is not None:
                live.start()
            while count is None or shown < count:
                time.sleep(args.interval)
                cur = sample(log, settings)
                snap = snapshot(settings, prev, cur)
                prev = cur
                shown += 1
                if args.json:
                    common.print_json(snap)
                elif live is not None:
                    live.update(render_rich(snap), refresh=True)
                else:
                    print(render_text(snap) + ("\n" if count != 1 else ""), flush=True)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a live view ends
        finally:
            if live is not None:
                live.stop()


def register(sub, parent):
    s = sub.add_parser(
        "status", parents=[parent], help="live view: rates, ring fill, persistence lag, groups", epilog=EPILOG
    )
    s.add_argument("--once", action="store_true", help="one snapshot, then exit")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (and rate window)")
    s.add_argument("--count", type=int, default=None, help="exit after this many refreshes")
    s.set_defaults(func=cmd_status)
