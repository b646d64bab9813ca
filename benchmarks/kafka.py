"""kafka.py — the Kafka listener benchmark: Kafka clients against shmlog's
Kafka listener, next to the native shmlog API, in one run.

Owns: its workloads, its private instance and listener process, and
benchmarks/results/kafka.{md,json}. Rows: producer and consumer throughput
of 100-byte records for confluent-kafka, kafka-python and the native API
(per-message calls on every side), and produce-to-consume latency (one
record every millisecond, consumer in another process, p50/p99). Ratios are
native / client for rates and client / native for latency (> 1: native is
better). Every consumer checks each record's sequence number; a row that
lost or reordered anything is FAILED.

Run: `python -m benchmarks.kafka [--quick]` (needs `pip install -e '.[kafka]'`).
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import struct
import tempfile
import time
import uuid

CTX = mp.get_context("fork")
SEQ = struct.Struct(">Q")
RECORD = 100
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _payload(i: int) -> bytes:
    return SEQ.pack(i) + b"x" * (RECORD - SEQ.size)


def _payloads(n: int) -> list:
    """Every record of a run, made before the clock starts (the same for every client)."""
    return [_payload(i) for i in range(n)]


def _listener_main(kw, conn):
    import shmlog
    import shmlog.kafka

    log = shmlog.connect(**kw)
    run = shmlog.kafka.start(log, "127.0.0.1", 0)
    conn.send(run.port)
    conn.recv()  # until the parent says stop
    run.stop()
    log.close()


@contextlib.contextmanager
def instance():
    """A private instance and its Kafka listener in a child process; yields (kw, bootstrap)."""
    import shmlog

    tmp = tempfile.mkdtemp(prefix="shmlogbench-kafka-")
    tag = uuid.uuid4().hex[:8]
    kw = dict(instance=f"kbench{tag}", data_dir=os.path.join(tmp, "data"), shm_prefix=f"shmlogbench-{tag}.")
    log = shmlog.connect(**kw)
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_listener_main, args=(kw, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the Kafka listener did not start")
        yield log, kw, f"127.0.0.1:{parent.recv()}"
    finally:
        parent.send("stop")
        proc.join(15)
        if proc.is_alive():
            proc.kill()
        log.destroy()
        for n in os.listdir("/dev/shm"):
            if n.startswith(kw["shm_prefix"]):
                os.unlink("/dev/shm/" + n)


def _topic(log, name):
    log.create_topic(name, partitions=1, ring_bytes=64 << 20, persistence="none")


def _check(seqs, n):
    return len(seqs) == n and seqs == list(range(n))


# ------------------------------------------------------------ producers


def produce_confluent(bootstrap, topic, n):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    values = _payloads(n)
    produce = p.produce
    t0 = time.perf_counter()
    for v in values:
        while True:
            try:
                produce(topic, v, partition=0)
                break
            except BufferError:
                p.poll(0.001)
    left = p.flush(60)
    dt = time.perf_counter() - t0
    return n / dt, left == 0


def produce_kafka_python(bootstrap, topic, n):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)  # defaults: idempotent, acks=all
    values = _payloads(n)
    t0 = time.perf_counter()
    for v in values:
        p.send(topic, v, partition=0)
    p.flush(120)
    dt = time.perf_counter() - t0
    p.close(10)
    return n / dt, True


def produce_native(log, topic, n):
    values = _payloads(n)
    with log.producer() as p:
        send = p.send
        t0 = time.perf_counter()
        for v in values:
            send(topic, v, partition=0)
        dt = time.perf_counter() - t0
    return n / dt, True


# ------------------------------------------------------------ consumers


def consume_confluent(bootstrap, topic, n):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False, "fetch.wait.max.ms": 10}
    )
    c.assign([TopicPartition(topic, 0, 0)])
    seqs = []
    t0 = time.perf_counter()
    deadline = time.monotonic() + 120
    while len(seqs) < n and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            seqs.append(SEQ.unpack_from(m.value())[0])
    dt = time.perf_counter() - t0
    c.close()
    return n / dt, _check(seqs, n)


def consume_kafka_python(bootstrap, topic, n):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    seqs = []
    t0 = time.perf_counter()
    deadline = time.monotonic() + 120
    while len(seqs) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=1000).values():
            seqs += [SEQ.unpack_from(r.value)[0] for r in recs]
    dt = time.perf_counter() - t0
    c.close()
    return n / dt, _check(seqs, n)


def consume_native(log, topic, n):
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([(topic, 0, 0)])
        seqs = []
        t0 = time.perf_counter()
        deadline = time.monotonic() + 120
        while len(seqs) < n and time.monotonic() < deadline:
            m = c.poll(timeout=1.0)
            if m is not None:
                seqs.append(SEQ.unpack_from(m.value)[0])
        dt = time.perf_counter() - t0
    return n / dt, _check(seqs, n)


# ------------------------------------------------------------ latency


def _lat_consumer(kind, target, topic, n, conn):
    """Child: reads n records, each carrying its send time; sends back latencies in µs."""
    import shmlog

    lat, seqs = [], []

    def note(v):
        now = time.monotonic_ns()
        seqs.append(SEQ.unpack_from(v)[0])
        lat.append((now - SEQ.unpack_from(v, 8)[0]) / 1000)

    deadline = time.monotonic() + 120
    if kind == "native":
        log = shmlog.connect(**target)
        with log.consumer(auto_offset_reset="earliest") as c:
            c.assign([(topic, 0, 0)])
            conn.send("ready")
            while len(seqs) < n and time.monotonic() < deadline:
                m = c.poll(timeout=0.5)
                if m is not None:
                    note(m.value)
        log.close()
    elif kind == "confluent":
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": target,
                "group.id": "lat",
                "fetch.wait.max.ms": 100,
                "fetch.min.bytes": 1,
                "fetch.queue.backoff.ms": 0,
            }
        )
        c.assign([TopicPartition(topic, 0, 0)])
        c.poll(0.5)
        conn.send("ready")
        while len(seqs) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                note(m.value())
        c.close()
    else:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=target, enable_auto_commit=False, fetch_max_wait_ms=100)
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        c.poll(timeout_ms=200)
        conn.send("ready")
        while len(seqs) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    note(r.value)
        c.close()
    conn.send((lat, _check(seqs, n)))


def latency(kind, log, kw, bootstrap, topic, n):
    parent, child = CTX.Pipe()
    proc = CTX.Process(
        target=_lat_consumer, args=(kind, kw if kind == "native" else bootstrap, topic, n, child), daemon=True
    )
    proc.start()
    if not parent.poll(60):
        proc.kill()
        return None, False
    parent.recv()
    time.sleep(0.3)
    pad = b"x" * (RECORD - 16)
    if kind == "native":
        sender = log.producer()
        send = lambda i: sender.send(topic, SEQ.pack(i) + SEQ.pack(time.monotonic_ns()) + pad, partition=0)  # noqa: E731
        done = sender.close
    elif kind == "confluent":
        from confluent_kafka import Producer

        sender = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

        def send(i):
            sender.produce(topic, SEQ.pack(i) + SEQ.pack(time.monotonic_ns()) + pad, partition=0)
            sender.poll(0)

        done = lambda: sender.flush(30)  # noqa: E731
    else:
        from kafka import KafkaProducer

        sender = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        send = lambda i: sender.send(topic, SEQ.pack(i) + SEQ.pack(time.monotonic_ns()) + pad, partition=0)  # noqa: E731
        done = lambda: sender.close(10)  # noqa: E731
    for i in range(n):
        send(i)
        time.sleep(0.001)
    done()
    ok = parent.poll(60)
    lat, good = parent.recv() if ok else ([], False)
    proc.join(10)
    if not lat:
        return None, False
    lat.sort()
    return {"p50_us": statistics.median(lat), "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}, good


# ------------------------------------------------------------ run


def run(quick: bool):
    sizes = {
        "confluent": 200_000 if quick else 1_000_000,
        "kafka-python": 20_000 if quick else 100_000,
        "native": 200_000 if quick else 1_000_000,
    }
    lat_n = 300 if quick else 2000
    rows = []
    with instance() as (log, kw, bootstrap):
        for client in ("native", "confluent", "kafka-python"):
            n = sizes[client]
            topic = f"thr-{client}"
            _topic(log, topic)
            if client == "native":
                prate, pok = produce_native(log, topic, n)
                crate, cok = consume_native(log, topic, n)
            elif client == "confluent":
                prate, pok = produce_confluent(bootstrap, topic, n)
                crate, cok = consume_confluent(bootstrap, topic, n)
            else:
                prate, pok = produce_kafka_python(bootstrap, topic, n)
                crate, cok = consume_kafka_python(bootstrap, topic, n)
            ltopic = f"lat-{client}"
            _topic(log, ltopic)
            lat, lok = latency(client, log, kw, bootstrap, ltopic, lat_n)
            rows.append(
                {
                    "client": client,
                    "records": n,
                    "produce_msgs_s": prate,
                    "consume_msgs_s": crate,
                    "latency": lat,
                    "ok": pok and cok and lok,
                }
            )
            print(
                f"{client}: produce {prate:,.0f}/s consume {crate:,.0f}/s latency {lat} ok={rows[-1]['ok']}", flush=True
            )
    native = rows[0]
    for r in rows:
        r["produce_ratio_native_over_client"] = native["produce_msgs_s"] / r["produce_msgs_s"]
        r["consume_ratio_native_over_client"] = native["consume_msgs_s"] / r["consume_msgs_s"]
        if r["latency"] and native["latency"]:
            r["latency_p50_ratio_client_over_native"] = r["latency"]["p50_us"] / native["latency"]["p50_us"]
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": quick,
        "record_bytes": RECORD,
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "rows": rows,
    }


def markdown(res) -> str:
    lines = [
        f"# Kafka listener benchmark ({res['when']}{', quick' if res['quick'] else ''})",
        "",
        f"{res['record_bytes']}-byte records, one partition, per-message calls on every side; "
        f"{res['cpus']} CPUs, load {res['load_avg'][0]:.1f}. Ratios: native / client for rates, "
        "client / native for latency (> 1: the native API is better).",
        "",
        "| client | records | produce msgs/s | consume msgs/s | latency p50 / p99 µs | produce ratio | "
        "consume ratio | p50 ratio | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        lat = r["latency"]
        lat_s = f"{lat['p50_us']:.0f} / {lat['p99_us']:.0f}" if lat else "n/a"
        pr = r.get("latency_p50_ratio_client_over_native")
        lines.append(
            f"| {r['client']} | {r['records']:,} | {r['produce_msgs_s']:,.0f} | {r['consume_msgs_s']:,.0f} | "
            f"{lat_s} | {r['produce_ratio_native_over_client']:.2f}× | "
            f"{r['consume_ratio_native_over_client']:.2f}× | {f'{pr:.1f}×' if pr else 'n/a'} | "
            f"{'ok' if r['ok'] else 'FAILED'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kafka", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args(argv)
    res = run(a.quick)
    os.makedirs(a.out, exist_ok=True)
    md = markdown(res)
    with open(os.path.join(a.out, "kafka.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(a.out, "kafka.md"), "w") as f:
        f.write(md)
    print(md)
    return 0 if all(r["ok"] for r in res["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
