"""test_kafka_matrix.py — the client x feature cells the happy-path client
tests leave open: every codec written by every Python client and kcat
(stored byte for byte, read back by the same client AND by shmlog's native
consumer, which decodes all four), and the cooperative (incremental) group
protocol with librdkafka. Each test is a cell of the README's conformance
table (tools/conformance-table). Every wait is bounded; a client that is not
installed skips with the reason.
"""

import asyncio
import time
import uuid

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)
from test_kafka_clients import kcat, native_records, need_kcat

from shmlog import compression
from shmlog._native import lib

CODECS = ("gzip", "snappy", "lz4", "zstd")
N = 50


def _values(codec):
    # compressible and distinct: a codec that dropped or reordered one shows
    return [f"{codec}-{i:04d}-".encode() + b"v" * 200 for i in range(N)]


def _check_native(log, topic, codec):
    """shmlog's own consumer decodes what the client compressed, in order."""
    got = native_records(log, topic, 1, N)
    assert [m.value for m in got] == _values(codec)
    assert [m.offset for m in got] == list(range(N))


def _stored_attr_codecs(kafka, topic):
    """The compression codec of each stored batch, from the raw Fetch the listener serves."""
    from test_kafka_protocol import call, fetch_body

    c = kafka.raw()
    r = call(c, 1, 11, fetch_body(topic, 0, 0, max_bytes=1 << 24))
    recs = bytes(r["Responses"][0]["Partitions"][0]["Records"])
    c.close()
    codecs, pos = set(), 0
    while pos + 61 <= len(recs):
        length = int.from_bytes(recs[pos + 8 : pos + 12], "big")
        codecs.add(int.from_bytes(recs[pos + lib.SHM_RB_ATTRIBUTES : pos + 23], "big") & lib.SHM_RB_ATTR_CODEC_MASK)
        pos += 12 + length
    return codecs


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.conformance(client="confluent-kafka", feature="codecs")
def test_confluent_kafka_codecs(kafka, codec):
    import confluent_kafka as ck

    topic = f"ck-{codec}"
    kafka.log.create_topic(topic, ring_bytes=1 << 20, persistence="none")
    p = ck.Producer({"bootstrap.servers": kafka.bootstrap, "compression.type": codec, "linger.ms": 50})
    for v in _values(codec):
        p.produce(topic, v, partition=0)
    assert p.flush(20) == 0
    assert _stored_attr_codecs(kafka, topic) == {compression.CODECS[codec]}
    _check_native(kafka.log, topic, codec)
    c = ck.Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": f"g{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest"}
    )
    c.assign([ck.TopicPartition(topic, 0, 0)])
    got, deadline = [], time.monotonic() + 20
    while len(got) < N and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    assert got == _values(codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.conformance(client="kafka-python", feature="codecs")
def test_kafka_python_codecs(kafka, codec):
    import kafka as kp

    if codec == "snappy":
        pytest.importorskip("snappy", reason="kafka-python's snappy needs python-snappy")
    topic = f"kp-{codec}"
    kafka.log.create_topic(topic, ring_bytes=1 << 20, persistence="none")
    p = kp.KafkaProducer(bootstrap_servers=kafka.bootstrap, compression_type=codec, linger_ms=50)
    for v in _values(codec):
        p.send(topic, v, partition=0)
    p.flush(20)
    p.close()
    assert _stored_attr_codecs(kafka, topic) == {compression.CODECS[codec]}
    _check_native(kafka.log, topic, codec)
    c = kp.KafkaConsumer(bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10000)
    c.assign([kp.TopicPartition(topic, 0)])
    got = [m.value for _, m in zip(range(N), c)]
    c.close()
    assert got == _values(codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.conformance(client="aiokafka", feature="codecs")
def test_aiokafka_codecs(kafka, codec):
    import aiokafka

    topic = f"ak-{codec}"
    kafka.log.create_topic(topic, ring_bytes=1 << 20, persistence="none")

    async def run():
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, compression_type=codec, linger_ms=50)
        await p.start()
        try:
            batch = [await p.send(topic, v, partition=0) for v in _values(codec)]
            await asyncio.wait_for(asyncio.gather(*batch), 20)
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest")
        await c.start()
        try:
            c.assign([aiokafka.TopicPartition(topic, 0)])
            await c.seek_to_beginning()
            got = []
            while len(got) < N:
                recs = await asyncio.wait_for(c.getmany(timeout_ms=500), 20)
                got += [m.value for ms in recs.values() for m in ms]
            return got
        finally:
            await c.stop()

    try:
        got = asyncio.run(asyncio.wait_for(run(), 60))
    except RuntimeError as e:  # aiokafka raises this for a codec whose library is missing
        if "Libraries for" in str(e):
            pytest.skip(str(e))
        raise
    assert got == _values(codec)
    assert _stored_attr_codecs(kafka, topic) == {compression.CODECS[codec]}
    _check_native(kafka.log, topic, codec)


@need_kcat
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.conformance(client="kcat", feature="codecs")
def test_kcat_codecs(kafka, codec):
    topic = f"kc-{codec}"
    kafka.log.create_topic(topic, ring_bytes=1 << 20, persistence="none")
    vals = [v.decode() for v in _values(codec)]
    kcat(kafka, "-P", "-t", topic, "-p", "0", "-z", codec, input="\n".join(vals) + "\n")
    assert _stored_attr_codecs(kafka, topic) == {compression.CODECS[codec]}
    _check_native(kafka.log, topic, codec)
    out = kcat(kafka, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q")
    assert out.split() == vals


@pytest.mark.conformance(client="confluent-kafka", feature="groups cooperative")
def test_confluent_kafka_cooperative_sticky_group(kafka):
    """Two members with partition.assignment.strategy=cooperative-sticky: the
    second join moves partitions incrementally (the first member keeps what it
    is not giving up, and is never revoked everything), every record is read
    exactly once across the two, and commits of both land."""
    import confluent_kafka as ck

    topic, group = "coop", f"coop-{uuid.uuid4().hex[:6]}"
    kafka.log.create_topic(topic, partitions=4, ring_bytes=1 << 20, persistence="none")
    with kafka.log.producer() as p:
        for i in range(400):
            p.send(topic, f"{i}".encode(), partition=i % 4)
    events = {"a": [], "b": []}

    def member(name):
        def on_assign(c, parts):
            events[name].append(("assign", sorted(tp.partition for tp in parts)))
            c.incremental_assign(parts)

        def on_revoke(c, parts):
            events[name].append(("revoke", sorted(tp.partition for tp in parts)))
            c.incremental_unassign(parts)

        c = ck.Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )
        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        return c

    got = []

    def drain(cs, until, seconds):
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline:
            for c in cs:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    got.append(int(m.value()))
                    c.commit(m, asynchronous=False)

    a = member("a")
    drain([a], lambda: len(got) >= 200, 30)
    assert events["a"] and events["a"][0] == ("assign", [0, 1, 2, 3])
    b = member("b")
    drain([a, b], lambda: any(e[0] == "assign" and e[1] for e in events["b"]), 30)
    drain([a, b], lambda: len(got) >= 400, 30)
    for c in (a, b):
        c.close()
    assert sorted(got) == list(range(400)), "a record was lost or read twice"
    revoked = [e[1] for e in events["a"] if e[0] == "revoke"]
    assert revoked and all(len(r) < 4 for r in revoked), f"cooperative: a gave up only some partitions: {events}"
    b_parts = sorted(p for e in events["b"] if e[0] == "assign" for p in e[1])
    assert b_parts and set(b_parts) <= set(sum(revoked, []))
    committed = kafka.log.committed_offsets(group)
    assert sum(committed.values()) == 400
