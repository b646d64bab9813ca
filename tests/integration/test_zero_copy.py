"""test_zero_copy.py — Consumer(copy=False) (issue 13.3; csrc/ring.c B7).

Owns: values as read-only memoryviews, valid until the poll after they were
all returned; a stale view raises instead of reading another record's bytes;
a large record on an overflow="block" topic is viewed in the ring itself (no
copy) and no producer overwrites it while the view is out, even when the ring
is full and a producer is waiting; a view kept exported past its poll stops
the consumer with a clear error and loses nothing.
Must never: leave a producer thread running (each joins with a bound).
"""

import threading
import time

import numpy as np
import pytest

from shmlog import errors
from shmlog._native import address_of, lib

BIG = 200 << 10  # a 1 MiB ring holds five (max_message_bytes is ring / 4)


def _drain(c, n, timeout=5):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(n - len(got), timeout=0.2)
    return got


def test_values_are_read_only_views_and_a_stale_one_raises(inst):
    inst.log.create_topic("v", ring_bytes=1 << 20, persistence="none")
    with inst.log.producer() as p:
        for i in range(20):
            p.send("v", b"value-%02d" % i, key=b"k", partition=0)
    c = inst.log.consumer(topics=["v"], auto_offset_reset="earliest", copy=False)
    batch = _drain(c, 10)
    assert [bytes(m.value) for m in batch] == [b"value-%02d" % i for i in range(10)]
    assert all(isinstance(m.value, memoryview) and m.value.readonly for m in batch)
    assert all(m.key == b"k" for m in batch)  # keys are bytes
    with pytest.raises(TypeError):
        batch[0].value[0] = 1
    vals = c.poll_values(10, timeout=1)
    assert [bytes(v) for v in vals] == [b"value-%02d" % i for i in range(10, 20)]
    with pytest.raises(ValueError, match="released"):
        bytes(batch[3].value)  # the poll after it released it
    assert c.poll(timeout=0) is None
    with pytest.raises(ValueError, match="released"):
        bytes(vals[0])
    c.close()


def test_a_large_record_on_a_block_topic_is_viewed_in_the_ring_and_held_from_producers(inst):
    """The view's bytes are the ring's own; while it is out a producer that
    needs its space waits (BufferFull after max_block_ms), the bytes stay the
    record's; the next poll gives the space back and the producer goes on."""
    inst.log.create_topic("big", ring_bytes=1 << 20, persistence="none", overflow="block")
    c = inst.log.consumer(topics=["big"], auto_offset_reset="earliest", copy=False)
    prod = inst.log.producer(max_block_ms=300)
    prod.send("big", b"\x01" * BIG, partition=0)
    assert c.poll(timeout=2).value[0] == 1  # the first read: through the buffer, marks the partition large
    prod.send("big", b"\x02" * BIG, partition=0)
    m = c.poll(timeout=2)
    assert m.offset == 1 and isinstance(m.value, memoryview)
    part = c._single
    arr = np.frombuffer(m.value, np.uint8)
    ring_lo = address_of(part.ring.base)
    assert ring_lo < arr.ctypes.data < ring_lo + lib.SHM_RING_HEADER_BYTES + (1 << 20)  # in the ring: no copy
    del arr
    sent = 0
    with pytest.raises(errors.BufferFull, match="consumer is behind"):
        for _ in range(8):  # 1 MiB ring: the fifth after the viewed one would overwrite it
            prod.send("big", b"\x03" * BIG, partition=0)
            sent += 1
    assert bytes(m.value) == b"\x02" * BIG  # untouched
    done = []

    def produce():
        p2 = inst.log.producer(max_block_ms=5000)
        p2.send("big", b"\x04" * BIG, partition=0)
        done.append(time.monotonic())
        p2.close()

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.3)
    assert not done and bytes(m.value) == b"\x02" * BIG  # still held by the view
    got = [c.poll(timeout=2).value[0] for _ in range(sent)]  # the first poll gives the frame back
    with pytest.raises(ValueError, match="released"):
        bytes(m.value)
    t.join(10)
    assert done, "the producer was not released by the next poll"
    assert got == [3] * sent
    assert c.poll(timeout=2).value[0] == 4
    c.close()


def test_a_view_still_exported_stops_the_consumer_with_nothing_lost(inst):
    inst.log.create_topic("ex", ring_bytes=1 << 20, persistence="none", overflow="block")
    with inst.log.producer() as p:
        for i in range(3):
            p.send("ex", bytes([i]) * 1000, partition=0)
    c = inst.log.consumer(topics=["ex"], auto_offset_reset="earliest", copy=False, max_poll_records=1)
    first = _drain(c, 1)[0]
    arr = np.frombuffer(first.value, np.uint8)  # an export of the view
    with pytest.raises(errors.InvalidArgument, match="still exported"):
        c.poll_batch(10, timeout=0.5)
    assert arr[0] == 0 and len(arr) == 1000  # still the record's bytes
    del arr
    rest = _drain(c, 2)
    assert [(m.offset, m.value[0]) for m in rest] == [(1, 1), (2, 2)]
    c.close()


def test_copy_false_on_an_overwrite_topic_views_the_consumers_buffer(inst):
    """An overwrite ring protects nothing from producers: the values are views
    of the consumer's own read buffer, even for large records."""
    inst.log.create_topic("ow", ring_bytes=1 << 20, persistence="none")
    c = inst.log.consumer(topics=["ow"], auto_offset_reset="earliest", copy=False)
    with inst.log.producer() as p:
        p.send("ow", b"\x07" * BIG, partition=0)
        assert bytes(c.poll(timeout=2).value) == b"\x07" * BIG
        p.send("ow", b"\x08" * BIG, partition=0)
        m = c.poll(timeout=2)
    arr = np.frombuffer(m.value, np.uint8)
    ring_lo = address_of(c._single.ring.base)
    assert not ring_lo <= arr.ctypes.data < ring_lo + (2 << 20)
    assert arr[0] == 8
    del arr
    c.close()
