"""Kafka listener, transactions (issue 14.4): confluent-kafka's transactional
producer against the instance's own coordinator (kafka/txn.py), a
read_committed Kafka consumer, native readers of what Kafka clients wrote
and Kafka readers of what native producers wrote, fencing, bad calls.
Every wait is bounded."""

import time

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)
from test_kafka_groups_conformance import _conf

ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")


def _tx_producer(kafka, tid, **extra):
    conf = {"bootstrap.servers": kafka.bootstrap, "transactional.id": tid, "linger.ms": 5}
    conf.update(extra)
    p = ck.Producer(conf)
    p.init_transactions(10)
    return p


def _read_all(kafka, topic, isolation, group, want=None, timeout=15):
    c = ck.Consumer(_conf(kafka, **{"group.id": group, "isolation.level": isolation}))
    c.subscribe([topic])
    out, deadline, idle = [], time.monotonic() + timeout, 0
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                idle += 1
                if (want is None or len(out) >= want) and idle > 10:
                    break
                continue
            idle = 0
            if m.error() is None:
                out.append(m.value())
    finally:
        c.close()
    return out


def _native(kafka, topic, isolation):
    c = kafka.log.consumer(topics=[topic], auto_offset_reset="earliest", isolation_level=isolation)
    out = []
    while True:
        b = c.poll_batch(10_000, timeout=0.3)
        if not b:
            break
        out += [m.value for m in b]
    c.close()
    return sorted(out)


@pytest.mark.conformance(client="confluent-kafka", feature="transactions")
def test_confluent_transactional_producer_commit_and_abort(kafka):
    kafka.log.create_topic("t", partitions=2)
    p = _tx_producer(kafka, "ck-1")
    p.begin_transaction()
    for i in range(10):
        p.produce("t", b"c%d" % i, partition=i % 2)
    p.commit_transaction(10)
    p.begin_transaction()
    for i in range(5):
        p.produce("t", b"a%d" % i, partition=i % 2)
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce("t", b"last", partition=0)
    p.commit_transaction(10)
    want = sorted([b"c%d" % i for i in range(10)] + [b"last"])
    assert sorted(_read_all(kafka, "t", "read_committed", "rc", want=11)) == want
    assert len(_read_all(kafka, "t", "read_uncommitted", "ru", want=16)) == 16
    # the same transactions natively: one coordinator, one abort index
    assert _native(kafka, "t", "read_committed") == want
    assert len(_native(kafka, "t", "read_uncommitted")) == 16


@pytest.mark.conformance(client="confluent-kafka", feature="transactions")
def test_confluent_send_offsets_to_transaction_consume_transform_produce(kafka):
    kafka.log.create_topic("in", partitions=2)
    kafka.log.create_topic("out")
    with kafka.log.producer() as feed:
        for i in range(20):
            feed.send("in", b"%d" % i, partition=i % 2)
    c = ck.Consumer(_conf(kafka, **{"group.id": "ctp", "isolation.level": "read_committed"}))
    c.subscribe(["in"])
    p = _tx_producer(kafka, "ctp-1")
    got, deadline = 0, time.monotonic() + 30
    try:
        while got < 20 and time.monotonic() < deadline:
            ms = c.consume(10, 0.5)
            ms = [m for m in ms if m.error() is None]
            if not ms:
                continue
            p.begin_transaction()
            for m in ms:
                p.produce("out", m.value() + b"!")
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 10)
            p.commit_transaction(10)
            got += len(ms)
    finally:
        c.close()
    assert got == 20
    assert kafka.log.committed_offsets("ctp") == {("in", 0): 10, ("in", 1): 10}
    assert _native(kafka, "out", "read_committed") == sorted(b"%d!" % i for i in range(20))


@pytest.mark.conformance(client="confluent-kafka", feature="transactions")
def test_confluent_a_second_producer_fences_the_first(kafka):
    kafka.log.create_topic("t")
    old = _tx_producer(kafka, "same")
    old.begin_transaction()
    old.produce("t", b"old")
    old.flush(10)
    new = _tx_producer(kafka, "same")  # fences old, aborts its open transaction
    with pytest.raises(ck.KafkaException) as e:
        old.commit_transaction(10)
    assert e.value.args[0].fatal() or "fenced" in str(e.value).lower()
    new.begin_transaction()
    new.produce("t", b"new")
    new.commit_transaction(10)
    assert _read_all(kafka, "t", "read_committed", "rc", want=1) == [b"new"]


@pytest.mark.conformance(client="confluent-kafka", feature="transactions")
def test_confluent_read_committed_consumer_of_native_transactions(kafka):
    kafka.log.create_topic("t")
    p = kafka.log.producer(transactional_id="native")
    p.init_transactions()
    p.begin_transaction()
    p.send("t", b"open")
    c = ck.Consumer(_conf(kafka, **{"group.id": "rc", "isolation.level": "read_committed"}))
    c.subscribe(["t"])
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            assert m is None or m.error() is not None, "read a record of an open transaction"
        p.commit_transaction()
        p.begin_transaction()
        p.send("t", b"aborted")
        p.abort_transaction()
        p.begin_transaction()
        p.send("t", b"second")
        p.commit_transaction()
        out, deadline = [], time.monotonic() + 15
        while len(out) < 2 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m.value())
        assert out == [b"open", b"second"]
        lo, hi = c.get_watermark_offsets(ck.TopicPartition("t", 0), 5)
        assert hi == 6  # records and markers
    finally:
        c.close()
