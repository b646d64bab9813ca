"""cli.py — the `shmlog` command line (also `python -m shmlog`).

Owns: argument parsing, output formatting (text or --json) and exit codes
for the commands this build has: `demo`, `check` and `topic create|list|describe|delete`.
Must never: hold logic the Python API lacks; every command is a thin call
into shmlog.connect() and its objects. Failures print one line on stderr and
exit non-zero.
"""
import argparse
import json
import multiprocessing
import sys
import time

import msgspec

import os

from . import connect, errors, storage

EPILOG = """examples:
  shmlog demo                                  # produce in one process, consume in another, print rates
  shmlog topic create orders -p 4 --ring-bytes 67108864
  shmlog topic list --json
  shmlog topic describe orders
  shmlog check ~/.local/state/shmlog/default --repair
  shmlog --instance dev topic delete orders
"""


def _connect(args):
    return connect(instance=args.instance, data_dir=args.data_dir, shm_prefix=args.shm_prefix)


def _emit(args, obj, text):
    if args.json:
        print(json.dumps(msgspec.to_builtins(obj)))
    else:
        print(text)


def cmd_topic_create(args):
    with _connect(args) as log:
        d = log.create_topic(args.name, partitions=args.partitions, ring_bytes=args.ring_bytes,
                             persistence=args.persistence, fsync=args.fsync,
                             retention_ms=args.retention_ms, retention_bytes=args.retention_bytes)
        _emit(args, d, f"created topic {args.name!r} with {args.partitions} partition(s)")


def cmd_topic_list(args):
    with _connect(args) as log:
        names = log.list_topics()
        _emit(args, names, "\n".join(names) if names else "(no topics)")


def cmd_topic_describe(args):
    with _connect(args) as log:
        d = log.describe_topic(args.name)
        lines = [f"topic {d.name}  generation {d.generation}  " + "  ".join(
            f"{k}={v}" for k, v in msgspec.structs.asdict(d.config).items())]
        lines.append(f"{'partition':>9} {'start':>12} {'end':>12} {'ring used':>12} {'sealed':>7}")
        for p in d.partitions:
            lines.append(f"{p.partition:>9} {p.log_start_offset:>12} {p.end_offset:>12} "
                         f"{p.ring_used_bytes:>12} {p.sealed_writes:>7}")
        _emit(args, d, "\n".join(lines))


def cmd_topic_delete(args):
    with _connect(args) as log:
        log.delete_topic(args.name)
        _emit(args, {"deleted": args.name}, f"deleted topic {args.name!r}")


def cmd_check(args):
    """Verifies every segment of a data dir offline; --repair truncates torn tails."""
    root = os.path.join(args.data_dir_pos, "topics")
    if not os.path.isdir(root):
        raise errors.InvalidArgument(f"{args.data_dir_pos} has no topics/ directory: not a shmlog data dir")
    report = []
    for topic in sorted(os.listdir(root)):
        for part in sorted(os.listdir(os.path.join(root, topic)), key=lambda x: int(x) if x.isdigit() else -1):
            path = os.path.join(root, topic, part)
            entry = {"topic": topic, "partition": part, "problems": [], "repaired": None}
            if args.repair:
                try:
                    rep = storage.recover_partition(path, repair=True)
                    if rep.truncated_bytes:
                        entry["repaired"] = f"truncated {rep.truncated_bytes} bytes at file position {rep.truncated_at}"
                except errors.CorruptRecord as e:
                    entry["problems"].append(str(e))
            entry["problems"] += [p for p in storage.check_partition(path) if p not in entry["problems"]]
            report.append(entry)
    bad = [e for e in report if e["problems"]]
    if args.json:
        print(json.dumps({"partitions": report, "ok": not bad}))
    else:
        for e in report:
            state = "ok" if not e["problems"] else "DAMAGED"
            print(f"{e['topic']}[{e['partition']}]: {state}" + (f" ({e['repaired']})" if e["repaired"] else ""))
            for p in e["problems"]:
                print(f"  {p}")
    if bad:
        raise SystemExit(1)


def _demo_producer(conn_kwargs, topic, count, size, batch, ready):
    with connect(**conn_kwargs) as log, log.producer() as p:
        value = b"x" * size
        ready.wait(10)
        t0 = time.perf_counter()
        if batch > 1:
            values = [value] * batch
            for _ in range(count // batch):
                p.send_batch(topic, values, partition=0)
        else:
            send = p.send
            for _ in range(count):
                send(topic, value, partition=0)
        dt = time.perf_counter() - t0
        print(f"producer: {count:,} records of {size} B in {dt:.3f} s = {count / dt:,.0f} records/s",
              flush=True)


def cmd_demo(args):
    """Creates a topic, produces from a child process, consumes here, prints the rates."""
    topic = args.topic
    kw = dict(instance=args.instance, data_dir=args.data_dir, shm_prefix=args.shm_prefix)
    with connect(**kw) as log:
        try:
            log.delete_topic(topic)
        except errors.UnknownTopicOrPartition:
            pass
        log.create_topic(topic, partitions=1, ring_bytes=64 << 20, persistence=args.persistence)
        try:
            c = log.consumer(topics=[topic], auto_offset_reset="earliest")
            ctx = multiprocessing.get_context("fork")
            ready = ctx.Event()
            prod = ctx.Process(target=_demo_producer,
                               args=(kw, topic, args.count, args.size, args.batch, ready))
            prod.start()
            ready.set()
            got, t0 = 0, None
            while got < args.count:
                cols = c.poll_columns(100_000, timeout=10) if args.batch > 1 else None
                if args.batch > 1:
                    if cols is None:
                        break
                    n = len(cols)
                else:
                    n = 1 if c.poll(timeout=10) is not None else 0
                    if not n:
                        break
                if t0 is None:
                    t0 = time.perf_counter()
                got += n
            dt = time.perf_counter() - (t0 or time.perf_counter())
            prod.join(30)
            print(f"consumer: {got:,} records in {dt:.3f} s = {got / max(dt, 1e-9):,.0f} records/s "
                  f"({'batch' if args.batch > 1 else 'per-message'} API, other process)")
            if got < args.count:
                raise errors.ShmlogError(f"demo consumed {got} of {args.count} records")
        finally:
            log.delete_topic(topic)


def build_parser():
    ap = argparse.ArgumentParser(prog="shmlog", description="Kafka's model on one host, over shared memory.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    for a, h in (("--instance", "instance name (default $SHMLOG_INSTANCE or 'default')"),
                 ("--data-dir", "data directory (default $SHMLOG_DATA_DIR or ~/.local/state/shmlog/<instance>)"),
                 ("--shm-prefix", "prefix of the instance's /dev/shm names (default 'shmlog.')")):
        common.add_argument(a, default=argparse.SUPPRESS, help=h)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    for a in ("--instance", "--data-dir", "--shm-prefix"):
        ap.add_argument(a, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", parents=[common], help="produce in one process, consume in another, print rates")
    d.add_argument("--count", type=int, default=2_000_000)
    d.add_argument("--size", type=int, default=100, help="record size in bytes")
    d.add_argument("--batch", type=int, default=1, help="records per send_batch (1: per-message API)")
    d.add_argument("--topic", default="shmlog-demo")
    d.add_argument("--persistence", default="none", choices=["none", "disk"])
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("check", parents=[common], help="verify a data directory offline")
    k.add_argument("data_dir_pos", metavar="DATA_DIR")
    k.add_argument("--repair", action="store_true", help="truncate torn segment tails")
    k.set_defaults(func=cmd_check)

    t = sub.add_parser("topic", parents=[common], help="create, list, describe, delete topics")
    ts = t.add_subparsers(dest="topic_command", required=True)
    c = ts.add_parser("create", parents=[common], help="create a topic")
    c.add_argument("name")
    c.add_argument("-p", "--partitions", type=int, default=1)
    c.add_argument("--ring-bytes", type=int, default=64 << 20, help="ring size per partition (power of two)")
    c.add_argument("--persistence", default="disk", choices=["none", "disk"])
    c.add_argument("--fsync", default="interval:100", help="never | always | interval:MS")
    c.add_argument("--retention-ms", type=int, default=7 * 86400_000)
    c.add_argument("--retention-bytes", type=int, default=None)
    c.set_defaults(func=cmd_topic_create)
    ts.add_parser("list", parents=[common], help="list topics").set_defaults(func=cmd_topic_list)
    x = ts.add_parser("describe", parents=[common], help="offsets and ring use per partition")
    x.add_argument("name")
    x.set_defaults(func=cmd_topic_describe)
    x = ts.add_parser("delete", parents=[common], help="delete a topic and its rings")
    x.add_argument("name")
    x.set_defaults(func=cmd_topic_delete)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except errors.ShmlogError as e:
        print(f"shmlog: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
