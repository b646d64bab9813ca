"""test_wrap.py — a small ring lapped many times.

What must hold (csrc/ring.c, "Invariants"): frames never wrap; the end of
the ring is covered by a PAD frame, or, when fewer than 16 bytes are left, by
nothing (a reader skips to the next lap); a frame is complete iff its commit
word names its own position, so bytes of an older lap are never taken for a
record; readers re-check head after copying, so a record the ring lapped
during the copy is never returned. On an ephemeral topic a full ring
overwrites its oldest frames: a consumer that falls a lap behind gets
OffsetOutOfRange (auto_offset_reset="none") or is moved by its reset policy,
and never receives a torn, stale or padding record.

Every value is a pure function of its offset (one producer, dense offsets):
the first 8 bytes are the offset, the rest a slice of a fixed random pool,
and the length comes from a seeded size table. A reader therefore checks
every record it gets byte for byte.
"""

import multiprocessing
import random
import struct
import time

import pytest

import shmlog
from shmlog.errors import OffsetOutOfRange

CTX = multiprocessing.get_context("fork")
MAX_VALUE = 64 << 10
POOL = random.Random(0x5EED).randbytes(2 * MAX_VALUE + 4096)


def sizes_for(seed: int, n: int) -> list[int]:
    """0 B .. 64 KiB, weighted towards the edges: empty, tiny, medium, large, exactly 64 KiB."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            out.append(0)
        elif r < 0.30:
            out.append(rng.randint(1, 64))
        elif r < 0.50:
            out.append(rng.randint(65, 4096))
        elif r < 0.95:
            out.append(rng.randint(4097, MAX_VALUE - 1))
        else:
            out.append(MAX_VALUE)
    return out


def value_for(offset: int, size: int) -> bytes:
    head = struct.pack("<Q", offset ^ 0xA5A5A5A5A5A5A5A5)
    start = (offset * 7919) % (len(POOL) - MAX_VALUE)
    return (head + POOL[start : start + max(0, size - 8)])[:size]


def _describe(bad: bytes | None, want: bytes) -> str:
    if bad is None:
        return "value None"
    return f"value of {len(bad)} B (expected {len(want)} B), head {bad[:16].hex()} vs {want[:16].hex()}"


# ------------------------------------------------------------------ children


def _paced_producer(kwargs, topic, sizes, ring_bytes, consumed, budget_s):
    """Writes every record, but never more than half a ring ahead of the consumer's
    progress (consumed: records read so far), so a correct ring never laps it."""
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s + 128)  # frame bytes, roughly (header + batch + record)
    deadline = time.monotonic() + budget_s
    for off, s in enumerate(sizes):
        while cum[off + 1] - cum[consumed.value] > ring_bytes // 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer stopped at {consumed.value} while producer at {off}")
            time.sleep(0.0002)
        md = p.send(topic, value_for(off, s), partition=0)
        assert md.offset == off, (md, off)
    p.close()
    log.close()
    return len(sizes)


def _free_producer(kwargs, topic, sizes, budget_s):
    """Writes as fast as it can: a slow reader is lapped again and again."""
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    deadline = time.monotonic() + budget_s
    n = 0
    for off, s in enumerate(sizes):
        md = p.send(topic, value_for(off, s), partition=0)
        assert md.offset == off, (md, off)
        n += 1
        if time.monotonic() > deadline:
            break
    p.close()
    log.close()
    return n


# ------------------------------------------------------------------ tests


def test_random_sizes_many_laps_concurrent(inst, tmp_path):
    """Producer child and consumer (parent) on a 1 MiB ring: ~40 laps of 0..64 KiB records,
    every one read intact and in order, no padding surfacing, no lap ever (reset 'none')."""
    ring = 1 << 20
    topic = "wrap"
    inst.log.create_topic(topic, persistence="none", ring_bytes=ring)
    sizes = sizes_for(1, 2_500)
    consumed = CTX.RawValue("q", 0)
    deadline = time.monotonic() + 50
    child = inst.spawn("producer", _paced_producer, inst.kwargs, topic, sizes, ring, consumed, 45)

    # a read buffer smaller than most records: the consumer must grow it (poll_batch keeps the
    # bigger buffer; poll_columns reads into a fresh one each call)
    c = inst.log.consumer(auto_offset_reset="none", buffer_bytes=8192)
    c.assign([(topic, 0, 0)])
    nxt = 0
    use_columns = False
    while nxt < len(sizes) and time.monotonic() < deadline:
        producer_done = not child[1].is_alive()
        if use_columns:
            cols = c.poll_columns(50, timeout=0.1)
            got = [] if cols is None else [(int(cols.offsets[i]), bytes(cols.value(i))) for i in range(len(cols))]
        else:
            got = [(m.offset, m.value) for m in c.poll_batch(50, timeout=0.1)]
        use_columns = not use_columns
        for off, v in got:
            assert off == nxt, f"got offset {off}, expected {nxt}"
            want = value_for(off, sizes[off])
            assert v == want, f"offset {off}: {_describe(v, want)}"
            nxt += 1
        consumed.value = nxt
        if producer_done and not got:
            break
    assert inst.collect([child], deadline)["producer"] == len(sizes)
    assert nxt == len(sizes), f"consumed {nxt} of {len(sizes)} records"
    assert c.poll(timeout=0.2) is None, "a record after the last one"
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.end_offset == len(sizes)
    laps = sum(sizes) / ring
    assert laps >= 20, laps
    assert info.overwritten_frames > len(sizes) // 2, info
    assert info.log_start_offset > 0 and info.sealed_writes == 0, info


# frame bytes of one record with no key and no headers (Kafka RecordBatch v2 in a 16 B frame header)


def _varint_len(z: int) -> int:
    n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


def frame_bytes(n: int) -> int:
    body = 1 + 1 + 1 + 1 + _varint_len(2 * n) + n + 1  # attrs, ts delta, offset delta, key -1, len, value, 0 headers
    raw = 16 + 61 + _varint_len(2 * body) + body
    return (raw + 7) & ~7


def size_for_frame(frame: int) -> int:
    for n in range(max(0, frame - 100), frame):
        if frame_bytes(n) == frame:
            return n
    raise AssertionError(f"no value size gives a {frame} B frame")


MIN_FRAME = frame_bytes(0)


class _Stepper:
    """Single process: sends one record at a time and reads it back at once."""

    def __init__(self, inst, topic, cap):
        self.log = inst.log
        self.topic = topic
        self.cap = cap
        self.p = inst.log.producer(max_block_ms=2_000)
        self.c = inst.log.consumer(auto_offset_reset="none")
        self.c.assign([(topic, 0, 0)])
        self.ring = inst.log.ring(inst.log.topic_handle(topic), 0, writable=False)
        self.sizes = []
        self.padded_8 = False

    def tail(self) -> int:
        return self.ring.ends()[3]

    def send(self, n):
        off = len(self.sizes)
        before = self.tail()
        md = self.p.send(self.topic, value_for(off, n), partition=0)
        assert md.offset == off
        self.sizes.append(n)
        rem = self.cap - before % self.cap
        f = frame_bytes(n)
        fits, padded = before + f, before + rem + f
        # a frame that does not fit goes to the next lap behind a PAD; one that would leave
        # exactly 8 bytes (no room for a frame header) is padded too (ring.c I6) -- earlier
        # builds left those 8 bytes headerless and readers skipped them: both must read back
        want = (fits, padded) if rem - f == 8 else (padded,) if f > rem else (fits,)
        assert self.tail() in want, (
            f"frame model is off: {n} B value at position {before} "
            f"moved the tail to {self.tail()}, expected one of {want}"
        )
        self.padded_8 = rem - f == 8 and self.tail() == padded
        m = self.c.poll(timeout=1.0)
        assert m is not None, f"record {off} not delivered"
        assert m.offset == off and m.value == value_for(off, n), (
            f"expected record {off}, got {m.offset}: {_describe(m.value, value_for(off, n))}"
        )

    def fill_to(self, r):
        """Sends records until exactly r bytes are left before the end of the ring."""
        for _ in range(200):
            rem = -self.tail() % self.cap  # 0 right at a lap boundary
            need = rem - r
            if need == 0:
                return
            if need < MIN_FRAME:  # cannot land there with one frame: go round
                self.send(1000)
            else:
                self.send(size_for_frame(need if need <= 8192 else min(8192, need - MIN_FRAME)))
                if r == 8 and self.padded_8:
                    return  # 8 bytes are never left (I6): this pad was the edge
        raise AssertionError(f"could not leave {r} bytes at the end of the ring")


def test_exact_boundaries(inst):
    """Lands frames exactly on every interesting distance from the end of a 64 KiB ring:
    0, 8 (less than a frame header), 16 (a bare PAD header), a frame that fits exactly, one
    that misses by 8 bytes; then checks seek() to every offset still held."""
    cap = 1 << 16
    topic = "edges"
    inst.log.create_topic(topic, persistence="none", ring_bytes=cap)
    st = _Stepper(inst, topic, cap)
    big = frame_bytes(5000)
    cases = [
        (8, 0),
        (8, 3000),
        (16, 100),
        (24, 0),
        (MIN_FRAME, 0),
        (MIN_FRAME + 8, 0),
        (big, 5000),
        (big - 8, 5000),
        (0, 7),
        (0, 12_000),
        (40, 64),
        (8, 1),
    ]
    for lap in range(3):
        for r, n in cases:
            st.fill_to(r)
            st.send(n)
            st.send(random.Random(lap * 100 + r).randint(0, 200))
        # a second consumer seeks to every offset the ring still holds; each read starts exactly there
        info = inst.log.describe_topic(topic).partitions[0]
        assert info.log_start_offset > 0, "the ring did not wrap"
        c2 = inst.log.consumer(auto_offset_reset="none")
        c2.assign([(topic, 0, info.log_start_offset)])
        for off in range(info.log_start_offset, info.end_offset):
            c2.seek(topic, 0, off)
            (m,) = c2.poll_batch(1, timeout=1.0) or [None]
            assert m is not None and m.offset == off, f"seek({off}) then read gave {m and m.offset}"
            assert m.value == value_for(off, st.sizes[off]), f"offset {off}: wrong value after seek"
        # and reading from the log start sees everything up to the end, nothing else
        c2.seek(topic, 0, info.log_start_offset)
        offs = []
        while True:
            ms = c2.poll_batch(1000, timeout=0.05)
            if not ms:
                break
            for m in ms:
                assert m.value == value_for(m.offset, st.sizes[m.offset]), f"offset {m.offset}: wrong value"
                offs.append(m.offset)
        assert offs == list(range(info.log_start_offset, info.end_offset))
        c2.close()
    assert st.c.poll(timeout=0.05) is None
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.end_offset == len(st.sizes) and info.sealed_writes == 0


def _setup_lapped(inst, reset):
    cap = 1 << 20
    topic = "lapped"
    inst.log.create_topic(topic, persistence="none", ring_bytes=cap)
    p = inst.log.producer(max_block_ms=2_000)
    sizes = sizes_for(7, 400)
    for off in range(10):
        assert p.send(topic, value_for(off, sizes[off]), partition=0).offset == off
    c = inst.log.consumer(auto_offset_reset=reset)
    c.assign([(topic, 0, 0)])
    got = c.poll_batch(3, timeout=1.0)
    assert [m.offset for m in got] == [0, 1, 2]
    assert all(m.value == value_for(m.offset, sizes[m.offset]) for m in got)
    # the consumer pauses; the ring laps it several times over
    off = 10
    while sum(sizes[3:off]) < 3 * cap:
        assert p.send(topic, value_for(off, sizes[off]), partition=0).offset == off
        off += 1
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.log_start_offset > 3 and info.end_offset == off
    return topic, c, sizes, info


def test_paused_consumer_lapped_none_raises(inst):
    topic, c, sizes, info = _setup_lapped(inst, "none")
    with pytest.raises(OffsetOutOfRange):
        c.poll_batch(100, timeout=1.0)
    # it can go on from a valid offset, and reads everything from there intact
    c.seek(topic, 0, info.log_start_offset)
    offs = []
    while True:
        ms = c.poll_batch(100, timeout=0.1)
        if not ms:
            break
        for m in ms:
            assert m.value == value_for(m.offset, sizes[m.offset]), f"offset {m.offset}: wrong value"
            offs.append(m.offset)
    assert offs == list(range(info.log_start_offset, info.end_offset))


def test_paused_consumer_lapped_earliest_resumes_at_log_start(inst):
    topic, c, sizes, info = _setup_lapped(inst, "earliest")
    offs = []
    while True:
        ms = c.poll_batch(100, timeout=0.1)
        if not ms:
            break
        for m in ms:
            assert m.value == value_for(m.offset, sizes[m.offset]), f"offset {m.offset}: wrong value"
            offs.append(m.offset)
    assert offs == list(range(info.log_start_offset, info.end_offset)), (
        f"resumed at {offs[:1]}, log start was {info.log_start_offset}"
    )
    assert c.position(topic, 0) == info.end_offset


def test_paused_consumer_lapped_latest_resumes_at_end(inst):
    topic, c, sizes, info = _setup_lapped(inst, "latest")
    assert c.poll_batch(100, timeout=0.1) == []
    assert c.position(topic, 0) == info.end_offset
    p = inst.log.producer()
    off = info.end_offset
    p.send(topic, value_for(off, sizes[off]), partition=0)
    (m,) = c.poll_batch(100, timeout=1.0)
    assert (m.offset, m.value) == (off, value_for(off, sizes[off]))


def test_lapped_repeatedly_while_reading_never_torn(inst, tmp_path):
    """A free-running producer child laps a reader that pauses at random (reset 'earliest'):
    whatever the reader gets is intact and in order; it skips forward, never back."""
    cap = 1 << 20
    topic = "race"
    inst.log.create_topic(topic, persistence="none", ring_bytes=cap)
    sizes = sizes_for(11, 30_000)
    deadline = time.monotonic() + 40
    child = inst.spawn("producer", _free_producer, inst.kwargs, topic, sizes, 6.0)
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    rng = random.Random(3)
    last = -1
    jumps = received = 0
    use_columns = False
    while time.monotonic() < deadline:
        producer_done = not child[1].is_alive()
        if use_columns:
            cols = c.poll_columns(rng.randint(1, 64), timeout=0.05)
            got = [] if cols is None else [(int(cols.offsets[i]), bytes(cols.value(i))) for i in range(len(cols))]
        else:
            got = [(m.offset, m.value) for m in c.poll_batch(rng.randint(1, 64), timeout=0.05)]
        use_columns = not use_columns
        for off, v in got:
            assert off > last, f"offset {off} after {last}: went back"
            if off != last + 1:
                jumps += 1
            assert 0 <= off < len(sizes), off
            want = value_for(off, sizes[off])
            assert v == want, f"offset {off}: {_describe(v, want)}"
            last = off
            received += 1
        if producer_done and not got and c.position(topic, 0) >= c.end_offsets()[(topic, 0)]:
            break
        r = rng.random()
        if r < 0.05:
            time.sleep(0.02)  # a long pause: lapped for sure
        elif r < 0.5:
            time.sleep(rng.uniform(0, 0.002))
    produced = inst.collect([child], deadline)["producer"]
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.end_offset == produced
    assert last == produced - 1, f"reader ended at {last}, producer wrote {produced}"
    assert jumps > 0, "the reader was never lapped: the test did not test anything"
    assert received < produced
