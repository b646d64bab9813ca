"""benchmarks/isolation.py — what read_committed (the default) costs a reader:
poll_values and per-message poll() over the same N records of 100 B, read
with isolation_level="read_committed" and "read_uncommitted", interleaved,
in one process (the reader's own cost, no transport in the way); and the
same with a committed transaction every 100 records, so markers and the
abort index are in the path. Run: python -m benchmarks.isolation [N]."""

import statistics
import sys
import tempfile
import time
import uuid

import shmlog

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
ROUNDS = 5


def _fill(log, topic, n, transactional):
    if not transactional:
        p = log.producer()
        vals = [b"x" * 100] * 1000
        for _ in range(n // 1000):
            p.send_batch(topic, vals, partition=0)
        return
    p = log.producer(transactional_id="bench")
    p.init_transactions()
    vals = [b"x" * 100] * 100
    for i in range(n // 100):
        p.begin_transaction()
        p.send_batch(topic, vals, partition=0)
        if i % 10 == 9:
            p.abort_transaction()  # one in ten aborted: the abort index has entries to check
        else:
            p.commit_transaction()


def _read(log, topic, isolation, per_message):
    c = log.consumer(auto_offset_reset="earliest", isolation_level=isolation)
    c.assign([(topic, 0, 0)])
    got, t0 = 0, time.perf_counter()
    if per_message:
        while c.poll(0) is not None:
            got += 1
    else:
        while True:
            vs = c.poll_values(10_000, timeout=0)
            if not vs:
                break
            got += len(vs)
    dt = time.perf_counter() - t0
    c.close()
    return got, dt


def main():
    tag = uuid.uuid4().hex[:8]
    kw = dict(instance=f"b{tag}", data_dir=tempfile.mkdtemp(), shm_prefix=f"shmlogbench-{tag}.", autostart=False)
    log = shmlog.connect(**kw)
    try:
        rows = []
        for transactional in (False, True):
            topic = "txn" if transactional else "plain"
            log.create_topic(topic, ring_bytes=1 << 30, persistence="none")
            _fill(log, topic, N, transactional)
            for per_message in (False, True):
                for isolation in ("read_committed", "read_uncommitted"):
                    ns = []
                    for _ in range(ROUNDS):
                        got, dt = _read(log, topic, isolation, per_message)
                        ns.append(dt / got * 1e9)
                    rows.append(
                        (topic, "poll" if per_message else "poll_values", isolation, got, statistics.median(ns))
                    )
        print(f"# read_committed vs read_uncommitted, {N:,} records of 100 B, median of {ROUNDS}")
        print("| records | call | isolation | records read | ns/record |")
        print("|---|---|---|---:|---:|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,} | {r[4]:.1f} |")
    finally:
        log.destroy()


if __name__ == "__main__":
    main()
