"""benchmarks/transactions.py — what a transaction costs a producer, in one run.

Owns: its rows and benchmarks/results/transactions.{md,json}. Rows, 100-byte
records, one partition, a private instance and its Kafka listener
(benchmarks.kafka.instance):
- native: `send` per record outside any transaction (benchmarks.kafka's
  native row), against
  `begin_transaction` / `send` x k / `commit_transaction` for k = 1, 10, 100,
  on an ephemeral topic and on a durable one (fsync="interval:100": the
  commit fsyncs its decision, the records follow the topic's policy);
- confluent-kafka through the listener: `produce` + `flush` without a
  transaction, against transactions of 100 records (`produce` x 100,
  `commit_transaction`).
Every row is checked afterwards: a read_committed consumer reads exactly the
records sent, in order. Ratios are to the same topic's non-transactional row.

Run: `python -m benchmarks.transactions [--quick]`.
"""

import argparse
import json
import os
import time

from .kafka import OUT, _payloads, instance, produce_native

SIZES = (1, 10, 100)


def _native_txn(log, topic, n, k, tid):
    values = _payloads(n)
    p = log.producer(transactional_id=tid)
    p.init_transactions()
    send = p.send
    t0 = time.perf_counter()
    for i in range(0, n, k):
        p.begin_transaction()
        for v in values[i : i + k]:
            send(topic, v, partition=0)
        p.commit_transaction()
    dt = time.perf_counter() - t0
    p.close()
    return n / dt


def _confluent(bootstrap, topic, n, k, tid):
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 1, "queue.buffering.max.messages": 1_000_000}
    if k:
        conf["transactional.id"] = tid
    p = Producer(conf)
    if k:
        p.init_transactions(30)
    values = _payloads(n)
    t0 = time.perf_counter()
    if not k:
        for v in values:
            p.produce(topic, v, partition=0)
        p.flush(60)
    else:
        for i in range(0, n, k):
            p.begin_transaction()
            for v in values[i : i + k]:
                p.produce(topic, v, partition=0)
            p.commit_transaction(30)
    return n / (time.perf_counter() - t0)


def _verify(log, topic, n):
    """A read_committed reader gets n records, sequence numbers 0..n-1 in order, per row."""
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    got = []
    while True:
        vs = c.poll_values(100_000, timeout=0.5)
        if not vs:
            break
        got += [int.from_bytes(v[:8], "big") for v in vs]
    c.close()
    return got == list(range(n))


def run(quick: bool) -> dict:
    n = 2_000 if quick else 20_000
    rows = []
    with instance() as (log, _kw, bootstrap):
        for persistence in ("none", "disk"):
            topic = f"plain-{persistence}"
            log.create_topic(topic, ring_bytes=64 << 20, persistence=persistence)
            base, _ = produce_native(log, topic, n)
            rows.append(dict(client="native", topic=persistence, per_txn=0, rate=base, ok=_verify(log, topic, n)))
            for k in SIZES:
                topic = f"txn{k}-{persistence}"
                log.create_topic(topic, ring_bytes=64 << 20, persistence=persistence)
                m = n if k > 1 else n // 10  # one record per transaction: fewer of them
                r = _native_txn(log, topic, m, k, f"bench-{persistence}-{k}")
                rows.append(
                    dict(client="native", topic=persistence, per_txn=k, rate=r, ok=_verify(log, topic, m), base=base)
                )
        ck_n = n // 4
        log.create_topic("ck-plain", ring_bytes=64 << 20, persistence="disk")
        base = _confluent(bootstrap, "ck-plain", ck_n, 0, "")
        rows.append(
            dict(client="confluent-kafka", topic="disk", per_txn=0, rate=base, ok=_verify(log, "ck-plain", ck_n))
        )
        log.create_topic("ck-txn", ring_bytes=64 << 20, persistence="disk")
        r = _confluent(bootstrap, "ck-txn", ck_n, 100, "bench-ck")
        rows.append(
            dict(
                client="confluent-kafka", topic="disk", per_txn=100, rate=r, ok=_verify(log, "ck-txn", ck_n), base=base
            )
        )
    return {"n": n, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def markdown(res) -> str:
    out = [
        f"# Transactions: produce throughput, 100 B records ({res['when']}, n = {res['n']:,} native)",
        "",
        "| client | topic | records per transaction | records/s | transactions/s | ÷ no transaction | checked |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        k = r["per_txn"]
        ratio = f"{r['rate'] / r['base']:.3f}×" if k else "1.000×"
        tps = f"{r['rate'] / k:,.0f}" if k else "—"
        topic = {"none": "ephemeral", "disk": "durable"}[r["topic"]]
        out.append(
            f"| {r['client']} | {topic} | {k or 'none'} | {r['rate']:,.0f} | {tps} | {ratio} | "
            f"{'ok' if r['ok'] else '**FAILED**'} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    res = run(args.quick)
    os.makedirs(OUT, exist_ok=True)
    md = markdown(res)
    with open(os.path.join(OUT, "transactions.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "transactions.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
