"""cli/topics.py — `shmlog topic create|list|describe|alter|delete`.

Owns: the topic subcommands' arguments and output. Must never: change a
topic other than through Log.create_topic / alter_topic / delete_topic.
"""

import msgspec

from .. import config, errors
from . import common

EPILOG = """examples:
  shmlog topic create orders -p 4 --ring-bytes 67108864 --fsync interval:100
  shmlog topic create ticks --persistence none --ring-bytes 16MiB
  shmlog topic list
  shmlog topic describe orders --json
  shmlog topic alter orders --retention-ms 86400000 --partitions 8
  shmlog topic delete orders
"""

# option -> (Log.create_topic / alter_topic keyword, type); -1 means "no limit" for retention
CONFIG_OPTIONS = {
    "partitions": int,
    "ring_bytes": int,
    "persistence": str,
    "fsync": str,
    "retention_ms": int,
    "retention_bytes": int,
    "max_message_bytes": int,
    "segment_bytes": int,
    "segment_ms": int,
    "overflow": str,
    "cleanup_policy": str,
    "delete_retention_ms": int,
    "min_compaction_lag_ms": int,
}
UNLIMITED = ("retention_ms", "retention_bytes")


def _add_config_options(p, defaults: bool):
    def d(v):
        return v if defaults else None

    D = config.TOPIC_DEFAULTS
    p.add_argument(
        "-p",
        "--partitions",
        type=int,
        default=d(D.partitions),
        help="partition count" + ("" if defaults else " (can only grow)"),
    )
    p.add_argument(
        "--ring-bytes",
        type=common.parse_size,
        default=d(D.ring_bytes),
        help="ring size per partition, a power of two (bytes, or with a unit: 64MiB, 1G)",
    )
    p.add_argument(
        "--persistence",
        choices=sorted(config.PERSISTENCE),
        default=d(D.persistence),
        help="disk: segment files, replayable after a restart; none: the ring only",
    )
    p.add_argument("--fsync", default=d(D.fsync), help="never | always | interval:MS")
    p.add_argument("--retention-ms", type=int, default=d(D.retention_ms), help="-1: keep forever")
    p.add_argument("--retention-bytes", type=common.parse_size, default=None, help="per partition; -1: no limit")
    p.add_argument("--max-message-bytes", type=common.parse_size, default=None, help="default: ring bytes / 4")
    p.add_argument(
        "--segment-bytes", type=common.parse_size, default=d(D.segment_bytes), help="segment file size before a roll"
    )
    p.add_argument("--segment-ms", type=int, default=d(D.segment_ms), help="segment age before a roll")
    p.add_argument(
        "--overflow",
        choices=sorted(config.OVERFLOW),
        default=d(D.overflow),
        help="persistence none: overwrite the oldest records when full, or block producers until "
        "the slowest live consumer has read them",
    )
    p.add_argument(
        "--cleanup-policy",
        choices=sorted(config.CLEANUP_POLICIES),
        default=d(D.cleanup_policy),
        help="delete: retention removes old segments; compact: keep the latest record per key (durable topics)",
    )
    p.add_argument(
        "--delete-retention-ms",
        type=int,
        default=d(D.delete_retention_ms),
        help="compacted topics: how long a tombstone outlives compaction",
    )
    p.add_argument(
        "--min-compaction-lag-ms",
        type=int,
        default=d(D.min_compaction_lag_ms),
        help="compacted topics: records younger than this are never compacted",
    )


def _config_from(args) -> dict:
    out = {}
    for name in CONFIG_OPTIONS:
        v = getattr(args, name)
        if v is None:
            continue
        if name in UNLIMITED and v == -1:
            v = None
        out[name] = v
    return out


def describe_text(d) -> str:
    cfg = msgspec.structs.asdict(d.config)
    head = f"topic {d.name}  generation {d.generation}\n  " + "  ".join(f"{k}={v}" for k, v in cfg.items())
    rows: list[tuple] = [
        (
            p.partition,
            p.log_start_offset,
            p.end_offset,
            p.end_offset - p.log_start_offset,
            f"{100 * p.ring_used_bytes / max(p.ring_bytes, 1):.1f}%",
            common.human_bytes(p.resident_bytes),
            p.persisted_lag_bytes,
            p.fsynced_lag_bytes,
            p.sealed_writes,
        )
        for p in d.partitions
    ]
    headers = ["PARTITION", "START", "END", "RECORDS", "RING FILL", "RESIDENT", "UNPERSISTED B", "UNSYNCED B", "SEALED"]
    if d.config.overflow == "block":  # lossless ephemeral: who holds producers back, and for how long
        headers += ["SLOWEST READER LAG B", "READER PID", "BLOCKED MS"]
        rows = [
            (
                *r,
                "-" if p.slowest_reader_lag_bytes is None else p.slowest_reader_lag_bytes,
                p.slowest_reader_pid or "-",
                p.blocked_ms,
            )
            for r, p in zip(rows, d.partitions)
        ]
    return head + "\n" + common.table(headers, rows)


def cmd_create(args):
    with common.open_log(args, writes=True) as log:
        d = log.create_topic(args.name, **_config_from(args))
        common.emit(args, d, f"created topic {args.name!r} with {d.config.partitions} partition(s)")


def cmd_list(args):
    with common.open_log(args) as log:
        rows = []
        for name in log.list_topics():
            try:
                h = log.topic_handle(name)
            except errors.UnknownTopicOrPartition:
                continue  # deleted meanwhile
            c = h.config
            rows.append(
                {
                    "name": name,
                    "partitions": c.partitions,
                    "persistence": c.persistence,
                    "ring_bytes": c.ring_bytes,
                    "fsync": c.fsync,
                }
            )
        text = (
            common.table(["NAME", "PARTITIONS", "PERSISTENCE", "RING BYTES", "FSYNC"], [list(r.values()) for r in rows])
            if rows
            else "(no topics)"
        )
        common.emit(args, rows, text)


def cmd_describe(args):
    with common.open_log(args) as log:
        d = log.describe_topic(args.name)
        common.emit(args, d, describe_text(d))


def cmd_alter(args):
    changes = _config_from(args)
    if not changes:
        raise common.CommandError("nothing to alter: name at least one setting, e.g. --retention-ms")
    with common.open_log(args, writes=True) as log:
        alter = getattr(log, "alter_topic", None)
        if alter is None:
            raise errors.NotSupported("this build of shmlog cannot alter topics (Log.alter_topic is missing)")
        d = alter(args.name, **changes)
        if not hasattr(d, "partitions"):
            d = log.describe_topic(args.name)
        common.emit(
            args,
            d,
            f"altered topic {args.name!r}: "
            + ", ".join(f"{k}={'unlimited' if v is None else v}" for k, v in changes.items()),
        )


def cmd_delete(args):
    with common.open_log(args, writes=True) as log:
        log.delete_topic(args.name)
        common.emit(args, {"deleted": args.name}, f"deleted topic {args.name!r}")


def register(sub, parent):
    t = sub.add_parser(
        "topic",
        parents=[parent],
        help="create, list, describe, alter, delete topics",
        description="Topics: named logs of one or more partitions.",
        epilog=EPILOG,
    )
    ts = t.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    c = ts.add_parser("create", parents=[parent], help="create a topic", epilog=EPILOG)
    c.add_argument("name")
    _add_config_options(c, defaults=True)
    c.set_defaults(func=cmd_create)
    ts.add_parser("list", parents=[parent], help="list topics", epilog=EPILOG).set_defaults(func=cmd_list)
    x = ts.add_parser(
        "describe", parents=[parent], help="config, offsets, ring fill and lag per partition", epilog=EPILOG
    )
    x.add_argument("name")
    x.set_defaults(func=cmd_describe)
    a = ts.add_parser(
        "alter",
        parents=[parent],
        help="change a topic's settings (Log.alter_topic decides what may change)",
        epilog=EPILOG,
    )
    a.add_argument("name")
    _add_config_options(a, defaults=False)
    a.set_defaults(func=cmd_alter)
    x = ts.add_parser("delete", parents=[parent], help="delete a topic, its rings and its files", epilog=EPILOG)
    x.add_argument("name")
    x.set_defaults(func=cmd_delete)
