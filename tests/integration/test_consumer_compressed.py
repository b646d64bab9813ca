"""Native consumers reading compressed batches (issue 11 defects 1-2, issue 15
item 3): every codec, every entry point (poll with one partition and with
several, poll_batch, poll_columns), batches larger than the read, from the
ring and from the segment files, commits and positions in the middle of a
batch, bombs and damaged codec data. Batches come two ways: built here by
hand (kafka-python's record builder for the records, an independent
compressor, the CRC recomputed) and written with the raw send the Kafka
listener uses; and produced by confluent-kafka through the listener."""

import hashlib
import struct
import time
import zlib

import cramjam
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

from kafka_util import kafka  # noqa: F401  (fixture)
from shmlog import errors
from shmlog._native import ffi, lib

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
RING = 1 << 20


def _gzip(b):
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(b) + c.flush()


SQUASH = {
    1: _gzip,
    2: lambda b: bytes(cramjam.snappy.compress_raw(b)),
    3: lz4.frame.compress,
    4: lambda b: zstandard.ZstdCompressor().compress(b),
}


def value(i):
    return b"v%06d-" % i + b"x" * 40


def compressed_batch(values, codec, keys=None, base_ts=1_700_000_000_000, squash=None):
    """A RecordBatch v2 holding values, its records section compressed with
    codec: kafka-python builds the plain batch, the section is compressed
    here, attributes, length and CRC-32C set again."""
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=64 << 20,
    )
    for i, v in enumerate(values):
        b.append(i, base_ts + i, None if keys is None else keys[i], v, [("i", b"%d" % i)])
    plain = bytes(b.build())
    records = (squash or SQUASH[codec])(plain[61:])
    head = bytearray(plain[:61])
    struct.pack_into(">i", head, 8, 61 + len(records) - 12)
    struct.pack_into(">h", head, 21, struct.unpack_from(">h", head, 21)[0] | codec)
    body = bytes(head[21:]) + records
    struct.pack_into(">I", head, 17, calc_crc32c(body))
    return bytes(head[:21]) + body


def write(log, topic, partition, batch):
    with log.producer() as p:
        return p.send_encoded(topic, partition, batch)


def drain(c, how, n, timeout=10.0, size=100):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if how == "poll":
            m = c.poll(0.2)
            if m is not None:
                got.append(m)
        elif how == "batch":
            got += c.poll_batch(size, timeout=0.2)
        else:
            cols = c.poll_columns(size, timeout=0.2)
            if cols is not None:
                got += [(int(o), cols.value(i)) for i, o in enumerate(cols.offsets)]
    return got


def offsets_values(got):
    return [(m.offset, m.value) if hasattr(m, "offset") else m for m in got]


@pytest.mark.parametrize("codec", CODECS)
def test_single_partition_poll_returns_every_compressed_batch(inst, codec):
    """Defect 1: a 10-record compressed batch, then 3 plain records, through
    poll() on a one-partition consumer (the latency path): 0..12, in order."""
    log = inst.log
    log.create_topic("c1", partitions=1, ring_bytes=RING, persistence="none")
    meta = write(log, "c1", 0, compressed_batch([value(i) for i in range(10)], CODECS[codec]))
    assert (meta.base_offset, meta.count) == (0, 10)
    with log.producer() as p:
        for i in range(10, 13):
            p.send("c1", value(i), partition=0)
    with log.consumer(topics=["c1"], auto_offset_reset="earliest") as c:
        got = drain(c, "poll", 13)
        assert [(m.offset, m.value) for m in got] == [(i, value(i)) for i in range(13)]
        assert [m.headers for m in got[:10]] == [(("i", b"%d" % i),) for i in range(10)]
        assert [m.timestamp_ms for m in got[:10]] == [1_700_000_000_000 + i for i in range(10)]
        assert c.poll(0.05) is None and c.position("c1", 0) == 13
    # a consumer waiting on the ring sees a compressed batch arrive (the wait path of poll)
    with log.consumer(topics=["c1"], auto_offset_reset="latest") as c:
        assert c.poll(0.05) is None
        write(log, "c1", 0, compressed_batch([value(i) for i in range(5)], CODECS[codec]))
        got = drain(c, "poll", 5)
        assert [m.offset for m in got] == list(range(13, 18))


@pytest.mark.parametrize("how,size,parts", [("batch", 100, 1), ("poll", None, 3), ("columns", 100, 1), ("batch", 7, 2)])
def test_compressed_batch_larger_than_the_read_is_served_whole(inst, how, size, parts):
    """Defect 2: a batch of 1,200 records read 100 (poll_batch, poll_columns),
    500 (poll on several partitions) or 7 at a time: every record once, in
    order, then the plain records after it."""
    log = inst.log
    log.create_topic("big", partitions=parts, ring_bytes=4 << 20, persistence="none")
    n = 1200
    write(log, "big", 0, compressed_batch([value(i) for i in range(n)], 4))
    with log.producer() as p:
        p.send("big", value(n), partition=0)
    with log.consumer(topics=["big"], auto_offset_reset="earliest") as c:
        got = offsets_values(drain(c, how, n + 1, size=size or 100))
        assert got == [(i, value(i)) for i in range(n + 1)]
        assert c.position("big", 0) == n + 1


def test_commit_in_the_middle_of_a_compressed_batch(inst):
    """Position and commit after part of a batch: a second consumer of the
    group resumes right after the last record returned; no record twice."""
    log = inst.log
    log.create_topic("mid", partitions=1, ring_bytes=RING, persistence="none")
    write(log, "mid", 0, compressed_batch([value(i) for i in range(600)], 1))
    with log.consumer(group="g", topics=["mid"], auto_offset_reset="earliest", enable_auto_commit=False) as c:
        first = drain(c, "batch", 250, size=50)
        assert [m.offset for m in first] == list(range(250))
        assert c.position("mid", 0) == 250
        c.commit()
        assert c.committed("mid", 0) == 250
        # seek back inside the batch: the records are decoded again from the frame
        c.seek("mid", 0, 10)
        assert [m.offset for m in c.poll_batch(3, timeout=1)] == [10, 11, 12]
    with log.consumer(group="g", topics=["mid"], auto_offset_reset="earliest") as c:
        rest = drain(c, "batch", 350, size=64)
        assert [m.offset for m in rest] == list(range(250, 600))


def test_compressed_batches_read_back_from_the_segment_files(inst):
    """The same from disk: compressed batches lapped out of a small ring are
    read from the files (csrc/log.c shm_frames_read), 100 at a time (each
    batch inflates to less than the topic's 16 KiB max_message_bytes)."""
    log = inst.log
    log.create_topic("dc", partitions=1, ring_bytes=1 << 16, segment_bytes=1 << 20, persistence="disk")
    expect = []
    with log.producer() as p:
        for b in range(200):  # 200 x 50 records, ~2.5 KiB each compressed: ~8 laps
            vals = [hashlib.sha256(b"%d" % (b * 1000 + i)).hexdigest().encode() for i in range(50)]
            meta = p.send_encoded("dc", 0, compressed_batch(vals, 1 + b % 4))
            expect += [(meta.base_offset + i, v) for i, v in enumerate(vals)]
        p.flush(durable=True, timeout=30)
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([("dc", 0, 0)])
        assert c._parts[0].ring.ends()[0] > 0, "the ring has lapped: the start is on disk only"
        got = offsets_values(drain(c, "batch", len(expect), timeout=30, size=100))
        assert got == expect


def test_a_bomb_is_refused_and_not_skipped(inst):
    """A batch that inflates past the topic's max_message_bytes is
    CorruptRecord, every time it is read (nothing is skipped silently);
    seek() past it goes on with the next batch."""
    log = inst.log
    log.create_topic("bomb", partitions=1, ring_bytes=RING, max_message_bytes=64 << 10, persistence="none")
    bomb = compressed_batch([b"\0" * (60 << 10), b"\0" * (60 << 10)], 1)
    assert len(bomb) < 1 << 10
    write(log, "bomb", 0, bomb)
    write(log, "bomb", 0, compressed_batch([value(2)], 3))
    for how in ("poll", "batch"):
        with log.consumer(topics=["bomb"], auto_offset_reset="earliest") as c:
            for _ in range(2):
                with pytest.raises(errors.CorruptRecord, match="offsets 0..1"):
                    c.poll(1) if how == "poll" else c.poll_batch(10, timeout=1)
                assert c.position("bomb", 0) == 0
            c.seek("bomb", 0, 2)
            got = drain(c, how, 1)
            assert [(m.offset, m.value) for m in got] == [(2, value(2))]


def test_damaged_codec_data_is_corrupt_record(inst):
    log = inst.log
    log.create_topic("bad", partitions=1, ring_bytes=RING, persistence="none")
    write(log, "bad", 0, compressed_batch([value(0)], 4, squash=lambda b: b"\x28\xb5\x2f\xfd" + b"junk" * 8))
    with log.consumer(topics=["bad"], auto_offset_reset="earliest") as c:
        with pytest.raises(errors.CorruptRecord, match="zstd"):
            c.poll(1)


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_compressed_batches_reach_native_consumers(kafka, codec):
    """confluent-kafka with compression.type=codec through the listener:
    linger lets librdkafka put ~2,000 records in one batch; native poll() on
    one partition and poll_batch(100) on three read them all, in order."""
    ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
    log = kafka.log
    log.create_topic("ckz", partitions=3, ring_bytes=4 << 20, persistence="none")
    p = ck.Producer(
        {"bootstrap.servers": kafka.bootstrap, "compression.type": codec, "linger.ms": 200, "batch.num.messages": 5000}
    )
    n = 2000
    for i in range(n):
        p.produce("ckz", value=value(i), key=b"k", partition=i % 2)
    assert p.flush(30) == 0
    assert stored_codecs(log, "ckz", 0) == {CODECS[codec]}, "librdkafka sent compressed batches"
    with log.consumer(auto_offset_reset="earliest") as c1:
        c1.assign([("ckz", 0)])
        got0 = drain(c1, "poll", n // 2, timeout=20)
    assert [m.value for m in got0] == [value(i) for i in range(0, n, 2)]
    assert [m.offset for m in got0] == list(range(n // 2))
    with log.consumer(topics=["ckz"], auto_offset_reset="earliest") as c3:
        got = drain(c3, "batch", n, timeout=20, size=100)
    by_part = {q: [m for m in got if m.partition == q] for q in (0, 1)}
    assert [m.value for m in by_part[1]] == [value(i) for i in range(1, n, 2)]
    assert [m.offset for m in by_part[0]] == list(range(n // 2))


def stored_codecs(log, topic, partition) -> set:
    """The codecs of the batches stored in a ring, read the way the listener's Fetch reads them."""
    h = log.topic_handle(topic)
    ring = log.ring(h, partition, writable=False)
    cur = ffi.new("struct shm_cursor *")
    cur.stuck_pos = 2**64 - 1
    assert lib.shm_ring_seek(ring.h, cur, 0) == lib.SHM_OK
    cap = 8 << 20
    buf = ffi.new("uint8_t[]", cap)
    out = ffi.new("struct shm_records_out *")
    assert lib.shm_ring_read_batches(ring.h, cur, buf, cap, -1, out) > 0
    raw = ffi.buffer(buf, out.bytes_used)[:]
    codecs, at = set(), 0
    while at < len(raw):
        codecs.add(struct.unpack_from(">h", raw, at + 21)[0] & 7)
        at += 12 + struct.unpack_from(">i", raw, at + 8)[0]
    return codecs


def test_c_read_leaves_the_cursor_on_a_compressed_frame(inst):
    """The C core's half of defect 1: shm_ring_read hands a compressed batch
    over without passing it, so a caller that does not inflate it loses
    nothing (it reads the same frame again)."""
    log = inst.log
    log.create_topic("cc", partitions=1, ring_bytes=RING, persistence="none")
    with log.producer() as p:
        p.send("cc", b"plain", partition=0)
    write(log, "cc", 0, compressed_batch([value(i) for i in range(3)], 1))
    ring = log.ring(log.topic_handle("cc"), 0, writable=False)
    cur = ffi.new("struct shm_cursor *")
    cur.stuck_pos = 2**64 - 1
    assert lib.shm_ring_seek(ring.h, cur, 0) == lib.SHM_OK
    cap = 1 << 16
    buf = ffi.new("uint8_t[]", cap)
    rows = ffi.new("int64_t[]", 64 * lib.SHM_ROW_FIELDS)
    out = ffi.new("struct shm_records_out *")
    out.rows, out.max_records = rows, 64
    assert lib.shm_ring_read(ring.h, cur, buf, cap, 1, -1, out) == 1 and out.compressed == 0
    at = cur.pos
    for _ in range(2):
        assert lib.shm_ring_read(ring.h, cur, buf, cap, 1, -1, out) == 0
        assert out.compressed == 1 and (cur.pos, cur.next_offset) == (at, 1)
        assert lib.shm_batch_base_offset(buf + out.batch_start) == 1


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 4]), st.integers(1, 300)), min_size=1, max_size=12),
    reads=st.lists(
        st.tuples(st.sampled_from(["poll", "batch", "columns", "seek"]), st.integers(1, 400)), min_size=1, max_size=40
    ),
)
def test_random_mix_of_plain_and_compressed_batches_and_reads(inst, batches, reads):
    """Plain and compressed batches of random sizes, read by a random sequence
    of poll / poll_batch(n) / poll_columns(n) and seeks back into the middle
    of a batch: every record comes back once per pass, in order, with its
    value, and position() always names the next one."""
    log = inst.log
    name = f"mix{len(log.list_topics())}"
    log.create_topic(name, partitions=1, ring_bytes=4 << 20, persistence="none")
    n = 0
    with log.producer() as p:
        for codec, count in batches:
            vals = [value(n + i) for i in range(count)]
            if codec:
                p.send_encoded(name, 0, compressed_batch(vals, codec))
            else:
                p.send_batch(name, vals, partition=0)
            n += count
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([(name, 0, 0)])
        expect = 0
        # then drain: a compressed batch comes alone, so one read per batch at most
        for how, size in list(reads) + [("batch", n + 1)] * (2 * len(batches) + 2):
            if how == "seek":
                expect = size % (n + 1)
                c.seek(name, 0, expect)
                continue
            if how == "poll":
                m = c.poll(0.5 if expect < n else 0)
                got = [] if m is None else [(m.offset, m.value)]
            elif how == "batch":
                got = [(m.offset, m.value) for m in c.poll_batch(size, timeout=0.5 if expect < n else 0)]
            elif c._pi < len(c._pending):  # documented: columns cannot follow a partial poll()
                with pytest.raises(errors.InvalidArgument):
                    c.poll_columns(size, timeout=0)
                continue
            else:
                cols = c.poll_columns(size, timeout=0.5 if expect < n else 0)
                got = [] if cols is None else [(int(o), cols.value(i)) for i, o in enumerate(cols.offsets)]
            want = [(o, value(o)) for o in range(expect, min(n, expect + len(got)))]
            assert got == want, (how, size, expect)
            assert expect == n or got, f"nothing returned at {expect} of {n}"
            expect += len(got)
            assert c.position(name, 0) == expect
        assert expect == n
