"""shmlog scaling curves (how cost grows with work), one measurement per call:
  partitions(P): one producer spreads a FIXED total rate over P partitions; one consumer reads them all;
                 delivered rate, end-to-end latency p50/p99 and consumer CPU per record.
  topics(count): time to create (and delete) `count` 4-partition topics with the default 64 MiB rings,
                 and the memory each idle partition holds (/dev/shm blocks, creator's RSS growth).
The record-size curve is runner.stream over every peer; the consumers-in-a-group curve is groups.py.
Every consumer verifies per-partition order and completeness. Must never: leave an instance behind
(each call makes and destroys its own private one).
"""

import contextlib
import os
import resource
import shutil
import struct
import tempfile
import time
import uuid

import numpy as np

from .runner import run_children

HDR = struct.Struct("<QQ")  # sequence number within its partition, send time (monotonic ns)


@contextlib.contextmanager
def private_instance(given=None, **options):
    """A private shmlog instance; yields its connect() kwargs and a Log; always destroyed.
    given: connect() kwargs of an instance someone else owns and cleans up (a test's), used as is."""
    import shmlog

    if given is not None:
        log = shmlog.connect(**given)
        try:
            yield given, log
        finally:
            log.close()
        return
    tmp = tempfile.mkdtemp(prefix="shmlogbench-")
    tag = uuid.uuid4().hex[:8]
    # no supervisor: the data path never uses it, and starting one per private instance
    # would time Python start-ups (connect() still starts the persister for durable topics)
    kw = dict(
        instance=f"bench{tag}",
        data_dir=os.path.join(tmp, "data"),
        shm_prefix=f"shmlogbench-{tag}.",
        autostart=False,
        **options,
    )
    log = None
    try:
        log = shmlog.connect(**kw)
        yield kw, log
    finally:
        try:
            if log is not None:
                log.destroy()
        finally:
            for n in os.listdir("/dev/shm"):
                if n.startswith(kw["shm_prefix"]):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink("/dev/shm/" + n)
            shutil.rmtree(tmp, ignore_errors=True)


def _paced_producer(kw, topic, parts, rate, n, size, ready, deadline):
    import shmlog

    log = shmlog.connect(**kw)
    p = log.producer()
    pad = b"x" * (size - HDR.size)
    seq = [0] * parts
    if not ready.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("consumer not ready")
    send, clock, pack = p.send, time.monotonic_ns, HDR.pack
    t0 = clock()
    period = 1e9 / rate
    for i in range(n):
        if i % 64 == 0:  # pace: never ahead of the fixed total rate
            ahead = t0 + i * period - clock()
            if ahead > 200_000:
                time.sleep(ahead / 1e9)
        part = i % parts
        send(topic, pack(seq[part], clock()) + pad, partition=part)
        seq[part] += 1
    p.flush()
    p.close()
    log.close()
    return {"t0": t0}


def _latency_consumer(kw, topic, parts, n, ready, deadline):
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(topics=[topic], auto_offset_reset="earliest")
    ready.set()
    expected = [0] * parts
    lat = np.empty(n, np.int64)
    got, unpack, clock = 0, HDR.unpack_from, time.monotonic_ns
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    while got < n:
        ms = c.poll_batch(max_messages=10_000, timeout=0.5)
        if not ms:
            if time.monotonic() > deadline:
                raise TimeoutError(f"received {got} of {n} records")
            continue
        t = clock()
        for m in ms:
            seq, sent = unpack(m.value)
            if seq != expected[m.partition]:
                raise AssertionError(
                    f"order/completeness: partition {m.partition} expected seq {expected[m.partition]}, got {seq}"
                )
            expected[m.partition] += 1
            lat[got] = t - sent
            got += 1
    t_end = clock()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    c.close()
    log.close()
    us = lat / 1000.0
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "t_end": t_end,
        "p50": float(np.percentile(us, 50)),
        "p99": float(np.percentile(us, 99)),
        "cpu_us_per_record": cpu * 1e6 / n,
    }


def partitions(parts, rate, seconds, size=100, timeout=120.0, instance=None):
    """Delivered rate, latency and consumer CPU for `parts` partitions at a fixed total `rate`."""
    from .runner import CTX

    n = int(rate * seconds)
    per = max(64 << 10, 1 << int(n // parts * (size + 64) * 1.5).bit_length())  # holds the whole run
    deadline = time.monotonic() + timeout
    with private_instance(instance) as (kw, log):
        log.create_topic("p", partitions=parts, ring_bytes=per, persistence="none")
        ready = CTX.Event()
        c, p = run_children(
            [
                (_latency_consumer, (kw, "p", parts, n, ready, deadline)),
                (_paced_producer, (kw, "p", parts, rate, n, size, ready, deadline)),
            ],
            timeout + 5,
        )
    if not (c["ok"] and p["ok"]):
        return {"ok": False, "error": c.get("error") if not c["ok"] else p.get("error")}
    secs = (c["t_end"] - p["t0"]) / 1e9
    return {
        "ok": True,
        "rate": n / secs,
        "offered": rate,
        "p50_us": c["p50"],
        "p99_us": c["p99"],
        "cpu_us_per_record": c["cpu_us_per_record"],
        "ring_bytes": per,
        "records": n,
    }


def _shm_bytes(prefix):
    total = 0
    for n in os.listdir("/dev/shm"):
        if n.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat("/dev/shm/" + n).st_blocks * 512
    return total


def topics(count, partitions=4, instance=None):
    """Create `count` idle topics of `partitions` partitions with the DEFAULT ring size (64 MiB of
    address space each; memory follows traffic, csrc/ring.c M1-M4), persistence none; measure; delete."""
    import psutil

    me = psutil.Process()
    n = count * partitions
    with private_instance(instance, max_topics=count + 16) as (kw, log):
        shm0, rss0 = _shm_bytes(kw["shm_prefix"]), me.memory_info().rss
        t0 = time.perf_counter()
        for i in range(count):
            log.create_topic(f"idle-{i}", partitions=partitions, persistence="none")
        create_s = time.perf_counter() - t0
        shm1, rss1 = _shm_bytes(kw["shm_prefix"]), me.memory_info().rss
        if len(log.list_topics()) < count:
            return {"ok": False, "error": f"list_topics shows {len(log.list_topics())} of {count} topics"}
        ring_bytes = log.describe_topic("idle-0").config.ring_bytes
        t0 = time.perf_counter()
        for i in range(count):
            log.delete_topic(f"idle-{i}")
        delete_s = time.perf_counter() - t0
    return {
        "ok": True,
        "topics": count,
        "partitions": n,
        "ring_bytes": ring_bytes,
        "create_s": create_s,
        "delete_s": delete_s,
        "create_ms_per_partition": create_s * 1e3 / n,
        "delete_ms_per_partition": delete_s * 1e3 / n,
        "shm_bytes_per_partition": (shm1 - shm0) / n,
        "creator_rss_bytes_per_partition": (rss1 - rss0) / n,
    }
