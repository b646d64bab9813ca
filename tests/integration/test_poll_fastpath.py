"""test_poll_fastpath.py — Consumer.poll's express read in C (csrc/fastpath.c
ConsumerBase.poll, set by Consumer._xbuild; issue 13.2): with one partition in
its ring, outside a group and without views, poll() reads, waits (GIL
released) and builds its Messages in C. It must return exactly what the
general path returns and step aside whenever what it read with changed: a
seek, a pause, a lapped cursor, a large record, a deleted topic, a closed
consumer, a bad timeout."""

import threading
import time

import pytest

from shmlog import errors
from shmlog.client.consumer import LARGE_BYTES


def _reference(log, topic, n):
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    out, end = [], time.monotonic() + 10
    while len(out) < n and time.monotonic() < end:
        out += c.poll_batch(10_000, timeout=0.2)
    c.close()
    return out


def _fields(m):
    return (m.topic, m.partition, m.offset, m.key, m.value, m.headers, m.timestamp_ms)


@pytest.mark.parametrize("wait", ["park", "spin"])
def test_poll_one_at_a_time_returns_what_poll_batch_returns(inst, wait):
    """Keys, headers, null values, timestamps and values on both sides of the large-record
    threshold, read by poll() under every timeout form, equal poll_batch's record for record."""
    log = inst.log
    log.create_topic("x", ring_bytes=4 << 20, persistence="none", overflow="block")
    p = log.producer()
    sizes = [0, 1, 100, LARGE_BYTES - 1, LARGE_BYTES, LARGE_BYTES + 1, 300_000, 7, 100]
    n = 0
    for rnd in range(3):
        for i, size in enumerate(sizes):
            kw = {}
            if i % 3 == 1:
                kw["key"] = b"k%d" % i
            if i % 4 == 2:
                kw["headers"] = [("h", b"%d" % rnd), ("empty", None)]
            if i == 7:
                kw["timestamp_ms"] = 1234 + rnd
            p.send("x", None if i == 8 and rnd == 1 else bytes([65 + i]) * size, partition=0, **kw)
            n += 1
    want = [_fields(m) for m in _reference(log, "x", n)]
    assert len(want) == n
    c = log.consumer(topics=["x"], auto_offset_reset="earliest", wait=wait)
    got = []
    forms = [lambda: c.poll(0), lambda: c.poll(timeout=1.0), lambda: c.poll(1), lambda: c.poll(None), lambda: c.poll()]
    end = time.monotonic() + 10
    while len(got) < n and time.monotonic() < end:
        m = forms[len(got) % len(forms)]()
        if m is not None:
            got.append(_fields(m))
    assert got == want
    assert c.poll(0) is None and c.poll(0.05) is None
    c.close()
    p.close()


def test_wait_releases_the_gil_and_keeps_to_its_timeout(inst):
    """A record sent by another thread of the same process arrives while poll waits in C (the
    wait must not hold the GIL), and a poll that gets nothing returns after about its timeout."""
    log = inst.log
    log.create_topic("w", ring_bytes=1 << 20, persistence="none")
    c = log.consumer(topics=["w"], auto_offset_reset="latest")
    assert c.poll(0) is None and c.poll(0) is None  # the first read places the cursor; the second sets x
    assert c._xpart is not None, "the express read is not set"
    p = log.producer()
    sent = []

    def send():
        sent.append(time.monotonic())
        p.send("w", b"late", partition=0)

    lags = []
    for _ in range(5):  # a wait holding the GIL would hold the sender to the end of its 100 ms slice
        t = threading.Timer(0.02, send)
        t0 = time.monotonic()
        t.start()
        m = c.poll(timeout=5.0)
        got = time.monotonic()
        t.join()
        assert m is not None and m.value == b"late"
        lags.append((sent[-1] - t0, got - sent[-1]))  # (the sender's start, its record's trip)
    assert sorted(s for s, _ in lags)[2] < 0.07, lags
    assert sorted(g for _, g in lags)[2] < 0.04, lags
    assert c._xpart is not None
    for timeout in (0.03, 0.25):  # within one C wait, and over GROUP_WAIT_S (several)
        t0 = time.monotonic()
        assert c.poll(timeout) is None
        took = time.monotonic() - t0
        assert timeout * 0.9 <= took < timeout + 0.5, (timeout, took)
    c.close()
    p.close()


def test_seek_pause_and_reset_between_express_polls(inst):
    """Every change of what the express read reads with happens while it is set (checked), and
    the next poll sees the change: seeks, pause/resume, a general read in between, close."""
    log = inst.log
    log.create_topic("s", ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    for i in range(20):
        p.send("s", b"%d" % i, partition=0)
    c = log.consumer(topics=["s"], auto_offset_reset="earliest", max_poll_records=1)

    def polls(*offsets):
        assert [c.poll(1).offset for _ in offsets] == list(offsets)
        assert c._xpart is not None, "the express read is not set: this step tests nothing"

    polls(0, 1, 2)
    c.seek("s", 0, 7)
    polls(7, 8)
    c.seek_to_beginning("s", 0)
    polls(0, 1)
    c.pause([("s", 0)])
    assert c.poll(0.05) is None and c.poll(0) is None
    c.resume([("s", 0)])
    polls(2, 3)
    assert [m.offset for m in c.poll_batch(3, timeout=1)] == [4, 5, 6]  # the general read in between
    polls(7, 8)
    c.assign([("s", 0, 15)])
    polls(15, 16)
    assert c.position("s", 0) == 17
    c.close()
    with pytest.raises(errors.ShmlogError):
        c.poll(0)


def test_lapped_express_consumer_resets_as_the_general_path_does(inst):
    """An overwrite ring laps the consumer between two express polls: the next poll moves by
    auto_offset_reset (earliest: the log start) instead of reading overwritten bytes."""
    log = inst.log
    log.create_topic("lap", ring_bytes=1 << 16, persistence="none", overflow="overwrite")
    p = log.producer()
    p.send("lap", b"first", partition=0)
    p.send("lap", b"second", partition=0)
    c = log.consumer(topics=["lap"], auto_offset_reset="earliest", max_poll_records=1)
    assert c.poll(1).value == b"first" and c.poll(1).value == b"second"
    assert c._xpart is not None, "the express read is not set: this tests nothing"
    for i in range(5000):
        p.send("lap", b"%08d" % i + b"." * 92, partition=0)
    start = log.describe_topic("lap").partitions[0].log_start_offset
    assert start > 100
    m = c.poll(1)
    assert m is not None and m.offset >= start and m.value == b"%08d" % (m.offset - 2) + b"." * 92
    c.close()


def test_deleted_topic_and_bad_timeouts_go_the_general_way(inst):
    log = inst.log
    log.create_topic("d", ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    p.send("d", b"a", partition=0)
    p.send("d", b"b", partition=0)
    c = log.consumer(auto_offset_reset="earliest", max_poll_records=1)
    c.assign([("d", 0)])
    assert c.poll(1).value == b"a" and c.poll(1).value == b"b"
    assert c._xpart is not None, "the express read is not set: this tests nothing"
    for bad in (-1, -0.5, "1", b"1", [1]):
        with pytest.raises(errors.InvalidArgument):
            c.poll(bad)
    with pytest.raises(TypeError):
        c.poll(1, 2)
    with pytest.raises(TypeError):
        c.poll(timeot=1)
    p.close()
    log.delete_topic("d")
    with pytest.raises(errors.TopicDeleted):
        c.poll(0)
    c.close()


def test_express_polls_do_not_leak(inst):
    """Messages, pending lists and the references the express read holds are all released:
    Python's traced memory does not grow over 60,000 send + poll rounds."""
    import tracemalloc

    log = inst.log
    log.create_topic("leak", ring_bytes=8 << 20, persistence="none", overflow="block")
    p = log.producer()
    c = log.consumer(topics=["leak"], auto_offset_reset="earliest")

    def rounds(n):
        for i in range(n):
            p.send("leak", b"v" * 10, partition=0)
            if i % 3 == 0:
                p.send("leak", b"w", partition=0)  # two records: the second stays pending
            m = c.poll(0)
            assert m is not None, f"record {i} not read"
        while c.poll(0) is not None:
            pass

    rounds(2000)  # warm: every cache and buffer made
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rounds(60_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 << 10, f"traced memory grew by {grown} bytes"
    c.close()
    p.close()
