"""test_batch_builders.py — poll_batch's Messages and poll_values' values are
built in C (csrc/fastpath.c messages/values, issue 13.2): they must be the
records poll() returns, field for field, whatever the records hold (keys,
null values, headers, compressed batches, large values), and a decoded row
that points outside the read buffer is an error, never a read outside it."""

import pytest

from shmlog.records import Message


def _records(n):
    out = []
    for i in range(n):
        key = None if i % 3 else f"k{i}".encode()
        value = None if i % 7 == 5 else (b"v%d" % i) * (1 + i % 5)
        headers = [("h", b"x%d" % i), ("null", None)] if i % 4 == 1 else None
        out.append((key, value, headers))
    return out


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_poll_batch_and_poll_values_return_what_poll_returns(inst, compression):
    inst.log.create_topic("bb", partitions=1, ring_bytes=1 << 22, persistence="none")
    p = inst.log.producer(compression_type=compression) if compression != "none" else inst.log.producer()
    recs = _records(3000) + [(b"big", b"L" * (200 << 10), None)]
    for k, v, h in recs:
        p.send("bb", v, key=k, headers=h, partition=0)
    p.flush()
    one = inst.log.consumer(["bb"], auto_offset_reset="earliest")
    want = []
    while (m := one.poll(1.0)) is not None:
        want.append(m)
        if len(want) == len(recs):
            break
    assert [(m.key, m.value) for m in want] == [(k, v) for k, v, _ in recs]
    batch = inst.log.consumer(["bb"], auto_offset_reset="earliest")
    got = []
    while len(got) < len(recs):
        ms = batch.poll_batch(700, timeout=1.0)
        assert ms, "poll_batch returned nothing before the end"
        got += ms
    assert got == want  # every field: topic, partition, offset, key, value, headers, timestamp
    assert all(type(m) is Message and type(m.headers) is tuple for m in got)
    values = inst.log.consumer(["bb"], auto_offset_reset="earliest")
    vals = []
    while len(vals) < len(recs):
        vs = values.poll_values(999, timeout=1.0)
        assert vs, "poll_values returned nothing before the end"
        vals += vs
    assert vals == [m.value for m in want]
    assert values.position("bb", 0) == batch.position("bb", 0) == want[-1].offset + 1
