"""cli/consumer_groups.py — `shmlog group list|describe|delete|reset-offsets`, like kafka-consumer-groups.sh.

Owns: the lag and member tables, and the reset plan (which partitions, which
new offset) that is printed as a dry run unless --execute. Must never: move
a group's offsets without --execute, or while the group has live members
(Log.reset_offsets refuses that with GroupNotEmpty).
"""

from .. import errors
from . import common
from .consume import start_offsets

EPILOG = """examples:
  shmlog group list
  shmlog group describe billing                             # lag per partition, members
  shmlog group delete billing                               # refused while it has live members
  shmlog group reset-offsets billing --all-topics --to-earliest            # the plan only (dry run)
  shmlog group reset-offsets billing --topic orders --to-latest --execute
  shmlog group reset-offsets billing --topic orders:0,2 --to-offset 1000 --execute
  shmlog group reset-offsets billing --topic orders --to-datetime 2026-11-25T09:00:00 --execute
  shmlog group reset-offsets billing --topic orders --shift-by -100 --execute
"""


def total_lag(d) -> tuple[int, int]:
    """(sum of the known lags, partitions whose lag is unknown: nothing committed yet)."""
    return sum(p.lag for p in d.partitions if p.lag is not None), sum(1 for p in d.partitions if p.lag is None)


def lag_text(d) -> str:
    """The group's lag as it is known: `12`, `12 + unknown on 2 partitions`, or `unknown`."""
    known, unknown = total_lag(d)
    if unknown and unknown == len(d.partitions):
        return "unknown"
    return f"{known}" + (f" + unknown on {unknown} partition{'s' if unknown > 1 else ''}" if unknown else "")


def cmd_list(args):
    with common.open_log(args) as log:
        rows = []
        for g in log.list_groups():
            try:
                d = log.describe_group(g)
            except errors.UnknownGroup:
                continue  # deleted meanwhile
            known, unknown = total_lag(d)
            rows.append(
                {
                    "group": g,
                    "state": d.state,
                    "members": len(d.members),
                    "lag": None if unknown and unknown == len(d.partitions) else known,
                    "lag_unknown_partitions": unknown,
                    "generation": d.generation,
                    "_lag_text": lag_text(d),
                }
            )
        text = (
            common.table(
                ["GROUP", "STATE", "MEMBERS", "LAG", "GENERATION"],
                [(r["group"], r["state"], r["members"], r["_lag_text"], r["generation"]) for r in rows],
            )
            if rows
            else "(no groups)"
        )
        for r in rows:
            del r["_lag_text"]
        common.emit(args, rows, text)


def describe_text(d) -> str:
    head = (
        f"group {d.group}  state {d.state}  generation {d.generation}  assignor {d.assignor}  "
        f"rebalances {d.rebalances}  members {len(d.members)}  lag {lag_text(d)}"
    )
    parts = (
        common.table(
            ["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID"],
            [(p.topic, p.partition, p.committed, p.end_offset, p.lag, p.member_id) for p in d.partitions],
        )
        if d.partitions
        else "(no committed offsets or assignments)"
    )
    members = (
        common.table(
            ["MEMBER-ID", "INSTANCE-ID", "PID", "CLIENT-ID", "PARTITIONS"],
            [
                (
                    m.member_id,
                    m.group_instance_id,
                    m.pid,
                    m.client_id,
                    ",".join(f"{t}:{p}" for t, p in m.assignment) or "-",
                )
                for m in d.members
            ],
        )
        if d.members
        else "(no live members)"
    )
    return f"{head}\n\n{parts}\n\n{members}"


def cmd_describe(args):
    with common.open_log(args) as log:
        d = log.describe_group(args.group)
        common.emit(args, d, describe_text(d))


def _parse_topic_spec(spec: str):
    """'orders' -> ('orders', None); 'orders:0,2' -> ('orders', [0, 2])."""
    name, sep, parts = spec.partition(":")
    if not sep:
        return name, None
    try:
        return name, sorted({int(p) for p in parts.split(",") if p.strip()})
    except ValueError:
        raise common.CommandError(f"--topic {spec!r}: use TOPIC or TOPIC:P1,P2") from None


def _targets(log, args):
    """[(topic, partition)] the reset covers."""
    if args.all_topics:
        d = log.describe_group(args.group)
        tps = sorted({(p.topic, p.partition) for p in d.partitions} | set(log.committed_offsets(args.group)))
        if not tps:
            raise common.CommandError(
                f"group {args.group!r} has no committed offsets or assignments: name the topics with --topic"
            )
        return tps
    out = []
    for spec in args.topic:
        name, parts = _parse_topic_spec(spec)
        n = log.topic_handle(name).partitions
        for p in parts if parts is not None else range(n):
            if not 0 <= p < n:
                raise errors.UnknownTopicOrPartition(f"topic {name!r} has partitions 0..{n - 1}, not {p}")
            out.append((name, p))
    return out


def plan_reset(log, args, committed: dict) -> list[dict]:
    tps = _targets(log, args)
    if args.to_earliest:
        kind, n = "beginning", None
    elif args.to_latest:
        kind, n = "end", None
    elif args.to_offset is not None:
        kind, n = "abs", args.to_offset
    elif args.to_datetime is not None:
        kind, n = "time", common.parse_time_ms(args.to_datetime)
    else:
        kind, n = "shift", args.shift_by
    plan = []
    for t, p in tps:
        cur = committed.get((t, p))
        if kind == "shift":
            if cur is None:
                raise common.CommandError(f"{t}:{p} has no committed offset to shift; use --to-earliest/--to-latest")
            ((_, _, new),) = start_offsets(log, [t], p, "abs", max(cur + n, 0))
        else:
            ((_, _, new),) = start_offsets(log, [t], p, kind, n)
        plan.append({"topic": t, "partition": p, "current_offset": cur, "new_offset": new})
    return plan


def cmd_reset(args):
    with common.open_log(args) as log:
        committed = log.committed_offsets(args.group)
        plan = plan_reset(log, args, committed)
        if args.execute:
            log.reset_offsets(args.group, {(r["topic"], r["partition"]): r["new_offset"] for r in plan})
        text = common.table(["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"], [list(r.values()) for r in plan])
        text += "\nreset done." if args.execute else "\ndry run: nothing changed; add --execute to apply this plan."
        common.emit(args, {"group": args.group, "executed": args.execute, "plan": plan}, text)


def cmd_delete(args):
    """Like kafka-consumer-groups.sh --delete: refused while the group has live members."""
    with common.open_log(args, writes=True) as log:
        log.delete_group(args.group)
    common.emit(args, {"group": args.group, "deleted": True}, f"deleted group {args.group!r}")


def register(sub, parent):
    g = sub.add_parser(
        "group",
        parents=[parent],
        help="consumer groups: list, lag, reset offsets",
        description="Consumer groups (like kafka-consumer-groups.sh).",
        epilog=EPILOG,
    )
    gs = g.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    gs.add_parser(
        "list", parents=[parent], help="groups with state, members and total lag", epilog=EPILOG
    ).set_defaults(func=cmd_list)
    d = gs.add_parser("describe", parents=[parent], help="lag per partition and the members", epilog=EPILOG)
    d.add_argument("group")
    d.set_defaults(func=cmd_describe)
    x = gs.add_parser(
        "delete",
        parents=[parent],
        help="delete a group and its committed offsets (refused while it has live members)",
        epilog=EPILOG,
    )
    x.add_argument("group")
    x.set_defaults(func=cmd_delete)
    r = gs.add_parser(
        "reset-offsets", parents=[parent], help="move committed offsets (dry run unless --execute)", epilog=EPILOG
    )
    r.add_argument("group")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--topic", action="append", metavar="TOPIC[:P,P]", help="repeatable")
    which.add_argument("--all-topics", action="store_true", help="every partition the group has offsets for")
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=int, metavar="N", help="clamped to the partition's range")
    to.add_argument("--to-datetime", metavar="TIME", help="ISO-8601 (local time unless it names a zone) or ms")
    to.add_argument("--shift-by", type=int, metavar="N", help="move the committed offset by N (may be < 0)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="apply the plan")
    mode.add_argument("--dry-run", action="store_true", help="print the plan only (the default)")
    r.set_defaults(func=cmd_reset)
