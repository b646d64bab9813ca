"""durable.py — durability benchmarks (T5): shmlog durable topics against the
ephemeral ring, against the disk's own write rate, and against Redis Streams
with appendonly/everysec, all in one run.

Owns: its workloads and its report section. Run alone with
`python -m benchmarks.durable [--quick]`; the harness may call run().
Every consumer checks a sequence number in each record; a row that lost or
reordered anything is FAILED.
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import tempfile
import time

import numpy as np

from .peers.redis_streams import start_server, stop_server
from .scaling import private_instance

CTX = mp.get_context("fork")
SEQ = struct.Struct("<Q")


@contextlib.contextmanager
def _topic(**config):
    """A private instance with topic "t"; yields its connect() kwargs; always destroyed."""
    with private_instance() as (kw, log):
        log.create_topic("t", ring_bytes=64 << 20, **config)
        yield kw


def _produce(kw, n, size, batch, t0_q):
    import shmlog

    log = shmlog.connect(**kw)
    p = log.producer()
    pad = b"x" * (size - 8)
    t0_q.put(time.monotonic())
    for base in range(0, n, batch):
        p.send_batch("t", [SEQ.pack(i) + pad for i in range(base, min(base + batch, n))], partition=0)
    p.flush(durable=True, timeout=120)
    t0_q.put(time.monotonic())


def _consume(kw, n, res_q):
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(topics=["t"], auto_offset_reset="earliest")
    got = 0
    while got < n:
        cols = c.poll_columns(100_000, timeout=30)
        if cols is None:
            res_q.put(("error", f"timed out after {got} records"))
            return
        v = cols.values
        starts = cols.value_starts
        seqs = np.frombuffer(v, np.uint8)[(starts[:, None] + np.arange(8)).ravel()].view("<u8")
        if not np.array_equal(seqs, np.arange(got, got + len(cols), dtype=np.uint64)):
            res_q.put(("error", f"order/completeness broken near record {got}"))
            return
        got += len(cols)
    res_q.put(("ok", time.monotonic()))


def _pair(produce, produce_args, consume, consume_args):
    """Runs a consumer and a producer process; msgs/s from the producer's first send
    (it puts its start time) to the consumer's last verified record."""
    n = consume_args[1]
    q, r = CTX.Queue(), CTX.Queue()
    cons = CTX.Process(target=consume, args=(*consume_args, r))
    prod = CTX.Process(target=produce, args=(*produce_args, q))
    cons.start()
    prod.start()
    try:
        t0 = q.get(timeout=60)
        status, t1 = r.get(timeout=600)
    finally:
        prod.join(120)
        cons.join(10)
        for p in (prod, cons):
            if p.is_alive():
                p.kill()
    if status != "ok":
        return {"failed": t1}
    size = produce_args[2]
    return {"msgs_s": n / (t1 - t0), "mb_s": n * size / (t1 - t0) / 1e6}


def shmlog_t1(persistence, fsync, n, size=100, batch=1000):
    """msgs/s from the producer's first send to the consumer's last verified record."""
    with _topic(persistence=persistence, fsync=fsync, retention_bytes=None) as kw:
        return _pair(_produce, (kw, n, size, batch), _consume, (kw, n))


def shmlog_ingest(size, total_bytes, batch):
    """Producer only, durable fsync=interval:100: MB/s until flush(durable=True) returns."""
    with _topic(persistence="disk", fsync="interval:100") as kw:
        n = total_bytes // size
        q = CTX.Queue()
        prod = CTX.Process(target=_produce, args=(kw, n, size, batch, q))
        prod.start()
        t0, t1 = q.get(timeout=60), q.get(timeout=600)
        prod.join(30)
        return {"mb_s": n * size / (t1 - t0) / 1e6}


def disk_write_rate(total_bytes, chunk=32 << 20):
    """The disk's own sequential write rate: a plain write loop + one fsync, same filesystem."""
    tmp = tempfile.mkdtemp(prefix="shmlogbench-")
    buf = os.urandom(1 << 20) * (chunk >> 20)
    try:
        path = os.path.join(tmp, "plain")
        t0 = time.monotonic()
        with open(path, "wb", buffering=0) as f:
            for _ in range(total_bytes // chunk):
                f.write(buf)
            os.fsync(f.fileno())
        return {"mb_s": total_bytes / (time.monotonic() - t0) / 1e6}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ Redis Streams


def _redis_produce(sock, n, size, batch, q):
    import redis

    r = redis.Redis(unix_socket_path=sock)
    pad = b"x" * (size - 8)
    q.put(time.monotonic())
    for base in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + batch, n)):
            pipe.xadd("t", {"v": SEQ.pack(i) + pad})
        pipe.execute()


def _redis_consume(sock, n, res_q):
    import redis

    r = redis.Redis(unix_socket_path=sock)
    last, got = "0-0", 0
    while got < n:
        resp = r.xread({"t": last}, count=10_000, block=30_000)
        if not resp:
            res_q.put(("error", f"timed out after {got}"))
            return
        for _, entries in resp:
            for eid, fields in entries:
                if SEQ.unpack_from(fields[b"v"])[0] != got:
                    res_q.put(("error", f"order broken at {got}"))
                    return
                got += 1
                last = eid
    res_q.put(("ok", time.monotonic()))


def redis_t1(n, size=100, batch=1000):
    if shutil.which("redis-server") is None:
        return {"skipped": "redis-server not installed (apt-get install redis-server)"}
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        return {"skipped": "the redis Python client is not installed (pip install redis)"}
    tmp = tempfile.mkdtemp(prefix="shmlogbench-redis-")
    try:
        proc, sock = start_server(tmp, "--appendonly", "yes", "--appendfsync", "everysec")
        try:
            return _pair(_redis_produce, (sock, n, size, batch), _redis_consume, (sock, n))
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ run + report


def plan(quick: bool = False):
    """[(row name, fn)]; fn() -> {"ok": True, "msgs_s"|"mb_s": ...} or {"ok": False, "error": ...}."""
    n = 30_000 if quick else 3_000_000
    n_redis = 3_000 if quick else 200_000
    ingest = (8 << 20) if quick else (1 << 30)
    rows = {
        "T5 ephemeral (persistence=none)": lambda: shmlog_t1("none", "never", n),
        "T5 durable fsync=never": lambda: shmlog_t1("disk", "never", n),
        "T5 durable fsync=interval:100": lambda: shmlog_t1("disk", "interval:100", n),
        "T5 durable fsync=always": lambda: shmlog_t1("disk", "always", n // 10),
        "T5 redis streams appendfsync=everysec": lambda: redis_t1(n_redis),
        "ingest 1 KiB durable interval:100": lambda: shmlog_ingest(1024, ingest, 64),
        "ingest 64 KiB durable interval:100": lambda: shmlog_ingest(64 << 10, ingest, 1),
        "disk write loop (same fs)": lambda: disk_write_rate(ingest),
    }
    return [(k, (lambda fn=fn: _outcome(fn))) for k, fn in rows.items()]


def _outcome(fn):
    r = fn()
    if "failed" in r:
        return {"ok": False, "error": r["failed"]}
    if "skipped" in r:
        return {"ok": False, "error": "skipped: " + r["skipped"], "skipped": r["skipped"]}
    return {"ok": True, **r}


def summarize(runs) -> dict:
    """{row: {"unit", "median", "min", "max", "mb_s"} | {"failed": why} | {"skipped": why}}"""
    by = {}
    for r in runs:
        by.setdefault(r["row"], []).append(r)
    out = {}
    for k, ss in by.items():
        bad = [s for s in ss if not s["ok"]]
        if bad:
            out[k] = {"skipped": bad[0]["skipped"]} if "skipped" in bad[0] else {"failed": bad[0]["error"]}
            continue
        key = "msgs_s" if "msgs_s" in ss[0] else "mb_s"
        vals = [s[key] for s in ss]
        out[k] = {
            "unit": key,
            "median": statistics.median(vals),
            "min": min(vals),
            "max": max(vals),
            "mb_s": statistics.median(s["mb_s"] for s in ss),
        }
    return out


def run(quick: bool = False, reps: int = 3) -> dict:
    """Standalone run: every row `reps` times, interleaved so noise hits every row alike."""
    items = plan(quick)
    runs = [{"row": k, **fn()} for _ in range(reps) for k, fn in items]
    return summarize(runs)


def report(res: dict) -> str:
    eph = res.get("T5 ephemeral (persistence=none)", {}).get("median")
    disk = res.get("disk write loop (same fs)", {}).get("median")
    lines = [
        "## T5 durability: 100 B records (batch 1000, poll_columns), ingest, Redis",
        "",
        "| row | rate | range | MB/s | ratio |",
        "|---|---:|---|---:|---:|",
    ]
    for k, v in res.items():
        if "median" not in v:
            lines.append(f"| {k} | {'FAILED: ' + v['failed'] if 'failed' in v else 'skipped: ' + v['skipped']} | | | |")
            continue
        unit = "msgs/s" if v["unit"] == "msgs_s" else "MB/s"
        if k.startswith("T5") and eph:
            ratio = f"{v['median'] / eph:.2f}× ephemeral"
        elif k.startswith("ingest") and disk:
            ratio = f"{v['median'] / disk:.2f}× disk"
        else:
            ratio = ""
        lines.append(
            f"| {k} | {v['median']:,.0f} {unit} | {v['min']:,.0f}-{v['max']:,.0f} | {v['mb_s']:,.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(prog="python -m benchmarks.durable")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    res = run(a.quick, a.reps)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "durable.json"), "w") as f:
        json.dump(
            {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "results": res}, f, indent=2
        )
    md = report(res)
    with open(os.path.join(a.out, "durable.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
