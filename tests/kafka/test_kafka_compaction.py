"""The Kafka listener over a compacted topic (issue 14, item 3): a
confluent-kafka consumer reads cleaned segments (offset gaps inside and
between batches) from the start and from a compacted-away offset, and a
keyless Produce to a compacted topic is refused as Kafka refuses it
(INVALID_RECORD, "Compacted topic cannot accept message without key")
with nothing stored."""

import time

import pytest
from kafka_util import kafka  # noqa: F401 (the fixture)

from shmlog import storage
from shmlog.storage import compact


def _consume(ck, bootstrap, start, n_end, deadline_s=30):
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "cmp", "enable.auto.commit": False})
    c.assign([ck.TopicPartition("cmp", 0, start)])
    got = []
    deadline = time.monotonic() + deadline_s
    while (not got or got[-1][0] < n_end - 1) and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, m.error()
        got.append((m.offset(), m.key(), m.value()))
    c.close()
    return got


def test_confluent_kafka_reads_a_compacted_topic_and_keyless_produce_is_refused(kafka):  # noqa: F811
    ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
    log = kafka.log
    log.create_topic(
        "cmp",
        partitions=1,
        ring_bytes=1 << 17,
        segment_bytes=1 << 16,
        cleanup_policy="compact",
        min_compaction_lag_ms=86400_000,  # the persister's cleaner leaves it to this test
    )
    p = log.producer()
    latest = {}
    for i in range(300):
        keys = [b"k%02d" % ((i * 7 + j) % 60) for j in range(10)]
        vals = [None if (i + j) % 23 == 0 else b"v%d.%d" % (i, j) + b"x" * 90 for j in range(10)]
        (md,) = p.send_batch("cmp", vals, keys=keys)
        for j, k in enumerate(keys):
            latest[k] = (md.base_offset + j, vals[j])
    p.flush(durable=True)
    h = log.topic_handle("cmp")
    d = storage.partition_dir(log.settings.data_dir, "cmp", 0, h.topic_id)
    res = compact.clean_partition(d, compact.Params(86400_000, 0, 1 << 20), log.ring(h, 0, False).ends()[2], 0)
    assert res.rewritten
    end = log.describe_topic("cmp").partitions[0].end_offset
    native = []
    c = log.consumer(topics=["cmp"], auto_offset_reset="earliest")
    while not native or native[-1][0] < end - 1:
        native += [(m.offset, m.key, m.value) for m in c.poll_batch(10_000, timeout=1.0)]
    c.close()
    assert len(native) < end // 2  # compacted
    got = _consume(ck, kafka.bootstrap, 0, end)
    assert got == native
    assert {k: (o, v) for o, k, v in got} == latest
    # from an offset the cleaner removed: the next surviving record
    have = {o for o, _, _ in got}
    gone = next(o for o in range(1, res.cleaned_to) if o not in have)
    first = _consume(ck, kafka.bootstrap, gone, end)[0][0]
    assert first == min(o for o in have if o > gone)

    # keyless Produce: refused with Kafka's error, nothing stored
    pr = ck.Producer({"bootstrap.servers": kafka.bootstrap, "message.send.max.retries": 0})
    errs = []
    pr.produce("cmp", value=b"no key", on_delivery=lambda e, m: errs.append(e))
    pr.flush(15)
    assert errs and errs[0] is not None
    assert errs[0].code() == ck.KafkaError.INVALID_RECORD, errs[0]
    assert log.describe_topic("cmp").partitions[0].end_offset == end
