"""cli/demo.py — `shmlog demo`: produce in one process, consume in another, print the rates.

Owns: the demo topic's life (created, then deleted) and the two-process run.
Must never: leave its topic behind, even when the run fails.
"""

import multiprocessing
import time

from .. import errors
from ..client.log import connect

EPILOG = """examples:
  shmlog demo                                  # 1,000,000 records of 100 B, per-message API
  shmlog demo --batch 1000 --count 5000000     # the batch API
"""


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
        print(f"producer: {count:,} records of {size} B in {dt:.3f} s = {count / dt:,.0f} records/s", flush=True)


def _ring_for(args) -> int:
    """A ring that holds the whole run. An ephemeral ring overwrites its oldest
    frames, so a producer that outruns the consumer by more than the ring would
    lap it (the consumer then resets and records are skipped, by design)."""
    per_frame = 16 + 61 + 16 + args.size  # frame header, batch header, one record
    per_record = per_frame if args.batch <= 1 else args.size + 16 + (16 + 61) / args.batch
    need = int(args.count * per_record * 1.25)
    return max(64 << 20, 1 << (need - 1).bit_length())


def cmd_demo(args):
    """Creates a topic, produces from a child process, consumes here, prints the rates."""
    topic = args.topic
    kw = dict(instance=args.instance, data_dir=args.data_dir, shm_prefix=args.shm_prefix)
    with connect(**kw) as log:
        try:
            log.delete_topic(topic)
        except errors.UnknownTopicOrPartition:
            pass
        log.create_topic(topic, partitions=1, ring_bytes=_ring_for(args), persistence=args.persistence)
        try:
            c = log.consumer(topics=[topic], auto_offset_reset="earliest")
            ctx = multiprocessing.get_context("fork")
            ready = ctx.Event()
            prod = ctx.Process(target=_demo_producer, args=(kw, topic, args.count, args.size, args.batch, ready))
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
            print(
                f"consumer: {got:,} records in {dt:.3f} s = {got / max(dt, 1e-9):,.0f} records/s "
                f"({'batch' if args.batch > 1 else 'per-message'} API, other process)"
            )
            if got < args.count:
                raise errors.ShmlogError(f"demo consumed {got} of {args.count} records")
        finally:
            log.delete_topic(topic)


def register(sub, parent):
    d = sub.add_parser(
        "demo", parents=[parent], help="produce in one process, consume in another, print rates", epilog=EPILOG
    )
    d.add_argument("--count", type=int, default=1_000_000)
    d.add_argument("--size", type=int, default=100, help="record size in bytes")
    d.add_argument("--batch", type=int, default=1, help="records per send_batch (1: per-message API)")
    d.add_argument("--topic", default="shmlog-demo")
    d.add_argument("--persistence", default="none", choices=["none", "disk"])
    d.set_defaults(func=cmd_demo)
