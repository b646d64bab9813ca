"""Large records through poll(): the one-copy path (copy from the ring, then check the lap)."""

import hashlib
import time

import shmlog
from shmlog import errors


def _val(i: int, size: int) -> bytes:
    body = (b"%08d" % i) * (size // 8)
    return hashlib.sha256(body).digest() + body


def _ok(v: bytes) -> bool:
    return hashlib.sha256(v[32:]).digest() == v[:32]


def test_large_and_small_records_mixed(inst):
    inst.log.create_topic("big", persistence="none", ring_bytes=8 << 20)
    p = inst.log.producer()
    c = inst.log.consumer(topics=["big"], auto_offset_reset="earliest")
    sizes = [200_000, 100, 70_000, 70_000, 65_536, 10, 300_000, 0, 150_000]
    sent = []
    for i, n in enumerate(sizes):
        key = b"k%d" % i if i % 3 == 0 else None
        headers = {"h": b"%d" % i} if i == 3 else None  # headers take the general path
        p.send("big", _val(i, n), key=key, headers=headers, partition=0)
        sent.append((_val(i, n), key, (("h", b"%d" % i),) if headers else ()))
    for i, (v, k, h) in enumerate(sent):
        m = c.poll(timeout=1)
        assert (m.offset, m.value, m.key, m.headers) == (i, v, k, h)
    assert c.poll(timeout=0.05) is None
    p.send("big", _val(99, 100_000), partition=0)  # after an empty poll: still exact
    assert c.poll(timeout=1).value == _val(99, 100_000)


def _flat_out(kwargs, seconds):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        p.send("lap", _val(i, 200_000), partition=0)
        i += 1
    return i


def test_lapped_while_copying_never_returns_a_torn_large_record(inst):
    inst.log.create_topic("lap", persistence="none", ring_bytes=1 << 20)
    child = inst.spawn("writer", _flat_out, inst.kwargs, 4.0)
    c = inst.log.consumer(topics=["lap"], auto_offset_reset="earliest")
    got, last, deadline = 0, -1, time.monotonic() + 30
    while child[1].is_alive() and time.monotonic() < deadline:
        m = c.poll(timeout=0.2)
        if m is None:
            continue
        assert _ok(m.value), f"torn record at offset {m.offset}"
        assert m.offset > last
        last, got = m.offset, got + 1
    written = inst.collect([child], deadline)["writer"]
    assert got > 10 and written > got  # it was lapped, and read on
