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


@pytest.mark.conformance(client="kafka-python", feature="transactions")
def test_kafka_python_transactional_producer(kafka):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    kafka.log.create_topic("t", partitions=2)
    p = kp.KafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id="kp-1")
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(6):
            p.send("t", b"k%d" % i, partition=i % 2)
        p.commit_transaction()
        p.begin_transaction()
        p.send("t", b"gone", partition=0)
        p.flush(5)  # written, then aborted (unflushed records an abort just drops)
        p.abort_transaction()
    finally:
        p.close(5)
    assert _native(kafka, "t", "read_committed") == sorted(b"k%d" % i for i in range(6))
    assert len(_native(kafka, "t", "read_uncommitted")) == 7


@pytest.mark.conformance(client="aiokafka", feature="transactions")
def test_aiokafka_transactional_producer_and_read_committed_consumer(kafka):
    aiokafka = pytest.importorskip("aiokafka", reason="pip install aiokafka")
    import asyncio

    kafka.log.create_topic("t")

    async def main():
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id="aio-1")
        await p.start()
        try:
            async with p.transaction():
                for i in range(4):
                    await p.send("t", b"a%d" % i, partition=0)
            await p.begin_transaction()
            await p.send("t", b"gone", partition=0)
            await p.abort_transaction()
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(
            "t", bootstrap_servers=kafka.bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
        )
        await c.start()
        try:
            out = []
            deadline = time.monotonic() + 15
            while len(out) < 4 and time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=200)
                out += [m.value for ms in batch.values() for m in ms]
            await asyncio.sleep(0.5)
            out += [m.value for ms in (await c.getmany(timeout_ms=200)).values() for m in ms]
            return out
        finally:
            await c.stop()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"a%d" % i for i in range(4)]


def _txn_batch(pid, epoch, seq=0, value=b"v"):
    """A transactional RecordBatch (kafka-python's builder, the transactional bit set, CRC redone)."""
    from kafka_util import batch
    from shmlog._native import crc32c

    tx = bytearray(batch([(None, value, [])], producer_id=pid, producer_epoch=epoch, base_sequence=seq))
    tx[21:23] = (int.from_bytes(tx[21:23], "big") | 0x10).to_bytes(2, "big")
    tx[17:21] = crc32c(memoryview(tx)[21:]).to_bytes(4, "big")
    return bytes(tx)


def _add(tid, pid, epoch, topic="t", partitions=(0,)):
    return {
        "V3AndBelowTransactionalId": tid,
        "V3AndBelowProducerId": pid,
        "V3AndBelowProducerEpoch": epoch,
        "V3AndBelowTopics": [{"Name": topic, "Partitions": list(partitions)}],
    }


def test_transaction_apis_refuse_unknown_ids_old_epochs_and_unadded_partitions(kafka):
    from test_kafka_protocol import call, produce_body, produce_result

    kafka.log.create_topic("t")
    c = kafka.raw()
    end = {"TransactionalId": "nobody", "ProducerId": 5, "ProducerEpoch": 0, "Committed": True}
    assert call(c, 26, 3, end)["ErrorCode"] == 49  # INVALID_PRODUCER_ID_MAPPING
    r = call(c, 22, 2, {"TransactionalId": "x", "TransactionTimeoutMs": 60000})
    pid, epoch = r["ProducerId"], r["ProducerEpoch"]
    # a transactional batch to a partition not added: INVALID_TXN_STATE, nothing stored
    tx = _txn_batch(pid, epoch)
    assert produce_result(call(c, 0, 8, produce_body("t", 0, tx)))["ErrorCode"] == 48
    add = _add("x", pid, epoch)
    ok = call(c, 24, 3, add)["ResultsByTopicV3AndBelow"][0]["ResultsByPartition"][0]
    assert ok["PartitionErrorCode"] == 0
    assert produce_result(call(c, 0, 8, produce_body("t", 0, tx)))["ErrorCode"] == 0
    stale = dict(add, V3AndBelowProducerEpoch=epoch - 1 if epoch else epoch + 5)
    res = call(c, 24, 3, stale)["ResultsByTopicV3AndBelow"][0]["ResultsByPartition"][0]
    assert res["PartitionErrorCode"] == 90  # PRODUCER_FENCED
    unknown = dict(add, V3AndBelowTopics=[{"Name": "t", "Partitions": [7]}])
    res = call(c, 24, 3, unknown)["ResultsByTopicV3AndBelow"][0]["ResultsByPartition"][0]
    assert res["PartitionErrorCode"] == 3
    assert call(c, 26, 3, dict(end, TransactionalId="x", ProducerId=pid, ProducerEpoch=epoch))["ErrorCode"] == 0
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 2  # the record and its COMMIT marker


def test_idempotence_survives_a_listener_restart(inst):
    """A retried batch after the listener restarted is still a duplicate: the
    new listener learns the producer's last batches from the log."""
    from kafka_util import Kafka, batch
    from test_kafka_protocol import call, produce_body, produce_result

    inst.log.create_topic("t")
    k = Kafka(inst)
    try:
        c = k.raw()
        r = call(c, 22, 1, {"TransactionalId": None, "TransactionTimeoutMs": 60000})
        pid = r["ProducerId"]
        b0 = batch([(None, b"a", []), (None, b"b", [])], producer_id=pid, producer_epoch=0, base_sequence=0)
        assert produce_result(call(c, 0, 8, produce_body("t", 0, b0)))["BaseOffset"] == 0
        c.close()
    finally:
        k.stop()
    k = Kafka(inst)  # a new listener: nothing in memory
    try:
        c = k.raw()
        again = produce_result(call(c, 0, 8, produce_body("t", 0, b0)))
        assert again["ErrorCode"] == 0 and again["BaseOffset"] == 0  # the retry, recognised
        gap = batch([(None, b"c", [])], producer_id=pid, producer_epoch=0, base_sequence=7)
        assert produce_result(call(c, 0, 8, produce_body("t", 0, gap)))["ErrorCode"] == 45
        nxt = batch([(None, b"c", [])], producer_id=pid, producer_epoch=0, base_sequence=2)
        assert produce_result(call(c, 0, 8, produce_body("t", 0, nxt)))["BaseOffset"] == 2
    finally:
        k.stop()
    assert inst.log.describe_topic("t").partitions[0].end_offset == 3


def test_a_kafka_clients_transaction_past_its_timeout_is_aborted_by_the_listener(kafka):
    """A Kafka client is no local process: the listener's own expiry (every
    0.5 s) aborts its transaction at TransactionTimeoutMs, and read_committed
    readers go on."""
    from test_kafka_protocol import call, produce_body, produce_result

    kafka.log.create_topic("t")
    c = kafka.raw()
    r = call(c, 22, 2, {"TransactionalId": "slow", "TransactionTimeoutMs": 300})
    pid, epoch = r["ProducerId"], r["ProducerEpoch"]
    call(c, 24, 3, _add("slow", pid, epoch))
    assert produce_result(call(c, 0, 8, produce_body("t", 0, _txn_batch(pid, epoch))))["ErrorCode"] == 0
    assert kafka.log.transactions.last_stable_offset("t", 0) == 0
    deadline = time.monotonic() + 10
    while kafka.log.transactions.last_stable_offset("t", 0) == 0:
        assert time.monotonic() < deadline, "the listener never expired the transaction"
        time.sleep(0.05)
    assert kafka.log.transactions.last_stable_offset("t", 0) == 2  # the record and the ABORT marker
    assert _native(kafka, "t", "read_committed") == []
    end = {"TransactionalId": "slow", "ProducerId": pid, "ProducerEpoch": epoch, "Committed": True}
    assert call(c, 26, 3, end)["ErrorCode"] == 90  # its producer is fenced
