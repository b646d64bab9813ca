"""aio.py — `python -m benchmarks.aio [--quick] [--reps N] [--out DIR]`: the
asynchronous producer and the asyncio consumer beside the calls they are
measured against, in one run, repetitions interleaved.

Owns: four rows on 100 B records, one topic each, one private instance:
  send       Producer.send per record (synchronous, offset known at return)
  produce    Producer.produce per record, then flush() (one frame per batch)
  poll_batch Consumer.poll_batch(10000) over records already in the ring
  aio        AIOConsumer.getmany(max_records=10000) over the same records
and the two ratios the issue targets (produce / send >= 2, aio / poll_batch
>= 0.7). Every consumer row checks each record's sequence number; a run that
lost or reordered one raises instead of reporting. Must never: share a
topic between rows or count set-up (topic creation, pre-filling) in a rate.
(The cross-process rows are in the main suite: T1-msg "produce", T1-batch "aio".)
"""

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid

import numpy as np

SIZE = 100


def _records(n):
    pad = b"x" * (SIZE - 8)
    return [i.to_bytes(8, "little") + pad for i in range(n)]


def _check(vals, start):
    seq = np.frombuffer(b"".join(v[:8] for v in vals), "<u8")
    if len(seq) and not (seq == np.arange(start, start + len(seq), dtype=np.uint64)).all():
        raise AssertionError("records lost or out of order")


def _write(log, topic, recs, method):
    """Per-record send or produce (then flush: the records are written when it returns)."""
    p = log.producer()
    call = getattr(p, method)
    t = time.perf_counter()
    for r in recs:
        call(topic, r)
    if method == "produce" and p.flush(60) != 0:
        raise AssertionError("flush left records queued")
    dt = time.perf_counter() - t
    p.close()
    return len(recs) / dt


def _fill(log, topic, recs):
    p = log.producer()
    for i in range(0, len(recs), 1000):
        p.send_batch(topic, recs[i : i + 1000], partition=0)
    p.close()


def _poll_batch(log, topic, n):
    c = log.consumer([topic], auto_offset_reset="earliest")
    got = 0
    t = time.perf_counter()
    while got < n:
        b = c.poll_batch(10_000, timeout=1.0)
        if not b:
            raise AssertionError(f"poll_batch: {got} of {n} records")
        _check([m.value for m in b], got)
        got += len(b)
    dt = time.perf_counter() - t
    c.close()
    return n / dt


def _aio(log, topic, n):
    from shmlog import aio

    async def run():
        async with aio.AIOConsumer(log, topic, auto_offset_reset="earliest") as c:
            got = 0
            t = time.perf_counter()
            while got < n:
                r = await c.getmany(timeout_ms=1000, max_records=10_000)
                if not r:
                    raise AssertionError(f"getmany: {got} of {n} records")
                for ms in r.values():
                    _check([m.value for m in ms], got)
                    got += len(ms)
            return n / (time.perf_counter() - t)

    return asyncio.run(run())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.aio")
    ap.add_argument("--quick", action="store_true", help="50k records per row instead of 300k")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="directory for aio.json and aio.md")
    a = ap.parse_args(argv)
    import shmlog

    n = 50_000 if a.quick else 300_000
    tag = uuid.uuid4().hex[:8]
    data = tempfile.mkdtemp(prefix="shmlog-bench-aio-")
    prefix = f"shmlogbench-aio-{tag}."
    log = shmlog.connect(instance=f"bench-aio-{tag}", data_dir=data, shm_prefix=prefix, autostart=False)
    recs = _records(n)
    ring = 1 << (int(n * (SIZE + 64) * 1.25)).bit_length()
    rows = {"send": [], "produce": [], "poll_batch": [], "aio": []}
    load = []
    try:
        for rep in range(a.reps):
            load.append(os.getloadavg()[0])
            order = list(rows)[rep % 2 * 2 :] + list(rows)[: rep % 2 * 2]  # alternate who goes first
            for row in order:
                topic = f"{row}-{rep}"
                log.create_topic(topic, persistence="none", ring_bytes=ring)
                if row in ("send", "produce"):
                    rows[row].append(_write(log, topic, recs, row))
                else:
                    _fill(log, topic, recs)
                    rows[row].append(_poll_batch(log, topic, n) if row == "poll_batch" else _aio(log, topic, n))
                log.delete_topic(topic)
    finally:
        log.close()
        for f in glob.glob(f"/dev/shm/{glob.escape(prefix)}*"):
            os.unlink(f)
        shutil.rmtree(data, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    lines = [
        f"100 B records, {n} per row, {a.reps} interleaved repetitions, load average "
        f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores",
        "",
        "| row | median msgs/s | min-max |",
        "|---|---:|---:|",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {med[k] / 1e3:,.0f} k | {min(v) / 1e3:,.0f}-{max(v) / 1e3:,.0f} k |")
    lines += [
        "",
        f"produce / send = {med['produce'] / med['send']:.2f}x (target >= 2x); "
        f"aio / poll_batch = {med['aio'] / med['poll_batch']:.2f} (target >= 0.70)",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "aio.json"), "w") as f:
            json.dump({"n": n, "reps": rows, "median": med, "load": load, "date": time.time()}, f, indent=1)
        with open(os.path.join(a.out, "aio.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
