"""test_api.py — the public Python API (docs/DESIGN.md "Public Python API") end to end,
one instance per test (the `inst` fixture).
"""

import faulthandler
import mmap
import os
import struct
import time

import numpy as np
import pytest

import shmlog
from shmlog import errors
from shmlog._native import lib

RING = 1 << 16
SHM = "/dev/shm"


def drain(c, n, timeout=5.0, max_messages=10_000):
    """Polls until n messages arrived (or timeout); returns them."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(max_messages=max_messages, timeout=0.05)
    return got


def ring_path(inst, topic, partition=0):
    d = inst.log.describe_topic(topic)
    return SHM + inst.log.settings.ring_name(d.generation, partition)


def ring_frames(inst, topic, partition=0):
    """[(position, length, kind, record_count)] of the committed frames from position 0."""
    frames = []
    with open(ring_path(inst, topic, partition), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        pos, data = 0, lib.SHM_RING_HEADER_BYTES
        while pos + 16 <= len(m) - data:
            commit, length, kind, _ = struct.unpack_from("<QIHH", m, data + pos)
            if commit != pos ^ lib.SHM_COMMIT_XOR:
                break
            count = struct.unpack_from(">i", m, data + pos + 16 + 57)[0] if kind == lib.SHM_FRAME_DATA else 0
            frames.append((pos, length, kind, count))
            pos += (length + 7) & ~7
    return frames


# ---------------------------------------------------------------- topics


def test_minus_one_retention_means_no_limit_as_in_kafka(inst):
    """Kafka's retention.ms / retention.bytes = -1 is "keep forever"; the
    Python API used to refuse it (the CLI and the listener mapped it)."""
    d = inst.log.create_topic("forever", persistence="none", ring_bytes=RING, retention_ms=-1, retention_bytes=-1)
    assert d.config.retention_ms is None and d.config.retention_bytes is None
    inst.log.alter_topic("forever", retention_ms=60_000)
    assert inst.log.describe_topic("forever").config.retention_ms == 60_000
    assert inst.log.alter_topic("forever", retention_ms=-1).config.retention_ms is None
    for bad in (-2, 0, True):
        with pytest.raises((errors.InvalidArgument, errors.InvalidType)):
            inst.log.create_topic("bad", persistence="none", ring_bytes=RING, retention_ms=bad)


def test_create_list_describe_delete(inst):
    log = inst.log
    assert log.list_topics() == []
    d = log.create_topic(
        "orders",
        persistence="none",
        partitions=3,
        ring_bytes=RING,
        retention_ms=None,
        retention_bytes=1 << 20,
        fsync="never",
    )
    assert isinstance(d, shmlog.TopicDescription)
    assert d.name == "orders" and d.generation > 0
    assert d.config.partitions == 3 and d.config.ring_bytes == RING
    assert d.config.retention_ms is None and d.config.retention_bytes == 1 << 20
    assert d.config.fsync == "never" and d.config.persistence == "none"
    assert d.config.max_message_bytes == RING // 4
    assert [p.partition for p in d.partitions] == [0, 1, 2]
    for p in d.partitions:
        assert (p.log_start_offset, p.end_offset, p.ring_used_bytes, p.sealed_writes) == (0, 0, 0, 0)
        assert p.ring_bytes == RING
    rings = [n for n in inst.segments() if f".g{d.generation}.p" in n]
    assert len(rings) == 3
    assert os.stat(f"{SHM}/{rings[0]}").st_size == lib.SHM_RING_HEADER_BYTES + RING

    log.create_topic("alpha", persistence="none", ring_bytes=RING, fsync="interval:250")
    assert log.list_topics() == ["alpha", "orders"]
    assert log.describe_topic("alpha").config.fsync == "interval:250"
    other = inst.connect()
    assert other.list_topics() == ["alpha", "orders"]
    assert other.describe_topic("orders").generation == d.generation

    with log.producer() as p:
        for _ in range(4):
            p.send("orders", b"x", partition=1)
    d1 = log.describe_topic("orders")
    assert d1.partitions[1].end_offset == 4 and d1.partitions[1].ring_used_bytes > 0
    assert d1.partitions[0].end_offset == 0

    log.delete_topic("orders")
    assert log.list_topics() == ["alpha"]
    assert other.list_topics() == ["alpha"]
    assert not [n for n in inst.segments() if f".g{d.generation}.p" in n]
    with pytest.raises(errors.UnknownTopicOrPartition):
        log.describe_topic("orders")
    with pytest.raises(errors.UnknownTopicOrPartition):
        other.describe_topic("orders")
    with pytest.raises(errors.UnknownTopicOrPartition):
        log.delete_topic("orders")

    # a recreated topic is a new life: new generation, offsets from 0
    d2 = log.create_topic("orders", persistence="none", partitions=1, ring_bytes=RING)
    assert d2.generation != d.generation
    with log.producer() as p:
        assert p.send("orders", b"y").offset == 0
    other.close()


def test_duplicate_topic_name(inst):
    inst.log.create_topic("dup", persistence="none", partitions=2, ring_bytes=RING)
    with pytest.raises(errors.TopicExists):
        inst.log.create_topic("dup", persistence="none", partitions=2, ring_bytes=RING)
    with pytest.raises(errors.TopicExists):
        inst.connect().create_topic("dup", persistence="none", partitions=5, ring_bytes=RING)
    assert inst.log.list_topics() == ["dup"]
    assert inst.log.describe_topic("dup").config.partitions == 2
    assert issubclass(errors.TopicExists, shmlog.ShmlogError)


# ---------------------------------------------------------------- producing


def test_send_returns_offsets(inst):
    inst.log.create_topic("t", persistence="none", partitions=2, ring_bytes=RING)
    with inst.log.producer() as p:
        mds = [p.send("t", b"v%d" % i, partition=0) for i in range(10)]
        assert [m.offset for m in mds] == list(range(10))
        assert all(isinstance(m, shmlog.RecordMetadata) and m.topic == "t" and m.partition == 0 for m in mds)
        assert p.send("t", b"other", partition=1).offset == 0  # per-partition offsets
        assert p.send("t", None, partition=0).offset == 10  # tombstone
        assert p.send("t", bytearray(b"ba"), partition=0).offset == 11
        assert p.send("t", memoryview(b"mv"), partition=0).offset == 12
        md = p.send("t", b"keyless", partition=1)
        assert (md.partition, md.offset) == (1, 1)
        md = p.send("t", b"keyless")  # sticky partition
        assert md.partition in (0, 1) and md.offset == (13 if md.partition == 0 else 2)
        p.flush()
        nxt = 13 + (md.partition == 0)
    # a second producer (another connection) continues the same offsets
    with inst.connect().producer() as p2:
        assert p2.send("t", b"more", partition=0).offset == nxt
    c = inst.log.consumer(topics=["t"], auto_offset_reset="earliest")
    c.assign([("t", 0)])
    got = drain(c, nxt + 1)
    assert [m.offset for m in got] == list(range(nxt + 1))
    assert got[10].value is None and got[11].value == b"ba" and got[12].value == b"mv"
    assert got[nxt].value == b"more"


def test_key_partitioning_is_stable(inst):
    inst.log.create_topic("k", persistence="none", partitions=8, ring_bytes=RING)
    keys = [f"key-{i}".encode() for i in range(50)]
    with inst.log.producer() as p1, inst.connect().producer() as p2:
        first = {k: p1.send("k", b"v", key=k).partition for k in keys}
        for _ in range(2):
            for k in keys:
                assert p1.send("k", b"v", key=k).partition == first[k]
                assert p2.send("k", b"v", key=k).partition == first[k]
    for k in keys:
        assert first[k] == (lib.shm_murmur2(k, len(k)) & 0x7FFFFFFF) % 8
    assert len(set(first.values())) > 4  # the hash actually spreads keys
    c = inst.log.consumer(topics=["k"], auto_offset_reset="earliest")
    for m in drain(c, 150):
        assert m.partition == first[m.key]


def test_headers_round_trip(inst):
    inst.log.create_topic("h", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send("h", b"1", headers={"a": b"x", "none": None, "empty": b""})
        p.send("h", b"2", headers=[("dup", b"1"), ("dup", b"2"), ("ü", bytearray(b"u"))])
        p.send("h", b"3", headers=[])
        p.send("h", b"4", headers={})
        p.send("h", b"5", key=b"k", headers=(("t", memoryview(b"tup")),))
    c = inst.log.consumer(topics=["h"], auto_offset_reset="earliest")
    ms = drain(c, 5)
    assert [m.headers for m in ms] == [
        (("a", b"x"), ("none", None), ("empty", b"")),
        (("dup", b"1"), ("dup", b"2"), ("ü", b"u")),
        (),
        (),
        (("t", b"tup"),),
    ]
    assert ms[4].key == b"k"


def test_timestamps(inst):
    inst.log.create_topic("ts", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        before = int(time.time() * 1000)
        p.send("ts", b"now")
        after = int(time.time() * 1000)
        p.send("ts", b"explicit", timestamp_ms=1_234_567_890_123)
        p.send("ts", b"zero", timestamp_ms=0)
        p.send_batch("ts", [b"b1", b"b2"], timestamp_ms=42, partition=0)
        p.send_batch("ts", [b"b3"], partition=0)
    c = inst.log.consumer(topics=["ts"], auto_offset_reset="earliest")
    ms = drain(c, 6)
    assert before - 5 <= ms[0].timestamp_ms <= after + 5
    assert ms[1].timestamp_ms == 1_234_567_890_123
    assert ms[2].timestamp_ms == 0
    assert ms[3].timestamp_ms == ms[4].timestamp_ms == 42
    assert abs(ms[5].timestamp_ms - time.time() * 1000) < 60_000


def test_send_batch_is_one_frame(inst):
    inst.log.create_topic("b", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send("b", b"first", partition=0)
        values = [b"v%d" % i for i in range(25)] + [None, b""]
        mds = p.send_batch("b", values, partition=0)
        assert len(mds) == 1
        md = mds[0]
        assert isinstance(md, shmlog.BatchMetadata)
        assert (md.topic, md.partition, md.base_offset, md.count) == ("b", 0, 1, len(values))
        assert p.send("b", b"after", partition=0).offset == 1 + len(values)
        assert p.send_batch("b", []) == []
        # keyless batch without a partition: still one frame
        assert len(p.send_batch("b", (b"g%d" % i for i in range(5)))) == 1
    frames = ring_frames(inst, "b")
    assert [(k, n) for _, _, k, n in frames] == [
        (lib.SHM_FRAME_DATA, 1),
        (lib.SHM_FRAME_DATA, 27),
        (lib.SHM_FRAME_DATA, 1),
        (lib.SHM_FRAME_DATA, 5),
    ]
    assert inst.log.describe_topic("b").partitions[0].ring_used_bytes == frames[-1][0] + ((frames[-1][1] + 7) & ~7)
    c = inst.log.consumer(topics=["b"], auto_offset_reset="earliest")
    ms = drain(c, 1 + 27 + 1 + 5)
    assert [m.offset for m in ms] == list(range(34))
    assert [m.value for m in ms[1:28]] == values


def test_send_batch_with_keys_groups_by_partition(inst):
    n = 4
    inst.log.create_topic("kb", persistence="none", partitions=n, ring_bytes=RING)
    keys = [f"k{i % 10}".encode() for i in range(40)]
    values = [b"v%d" % i for i in range(40)]
    want = {}
    for k, v in zip(keys, values):
        want.setdefault((lib.shm_murmur2(k, len(k)) & 0x7FFFFFFF) % n, []).append((k, v))
    with inst.log.producer() as p:
        mds = p.send_batch("kb", values, keys=keys)
    assert [m.partition for m in mds] == sorted(want)  # partition order
    for m in mds:
        assert m.base_offset == 0 and m.count == len(want[m.partition])
        assert [k for _, _, k, _ in ring_frames(inst, "kb", m.partition)] == [lib.SHM_FRAME_DATA]
    c = inst.log.consumer(topics=["kb"], auto_offset_reset="earliest")
    got = {}
    for m in drain(c, 40):
        got.setdefault(m.partition, []).append((m.key, m.value))
    assert got == want  # order kept within each
    # explicit partition with keys: one frame, keys kept
    with inst.log.producer() as p:
        mds = p.send_batch("kb", [b"a", b"b"], keys=[b"x", None], partition=3)
    assert len(mds) == 1 and mds[0].partition == 3 and mds[0].count == 2


def test_send_packed_with_numpy_lengths(inst):
    inst.log.create_topic("pk", persistence="none", ring_bytes=RING)
    values = [b"alpha", b"", b"gamma-gamma", None, b"d"]
    data = b"".join(v for v in values if v)
    lengths = np.array([-1 if v is None else len(v) for v in values], dtype=np.int64)
    with inst.log.producer() as p:
        mds = p.send_packed("pk", data, lengths, partition=0)
        assert len(mds) == 1 and (mds[0].base_offset, mds[0].count) == (0, 5)
        # array('q') and a bytearray work too
        from array import array

        mds = p.send_packed("pk", bytearray(b"xyz"), array("q", [1, 2]), partition=0)
        assert (mds[0].base_offset, mds[0].count) == (5, 2)
        assert p.send_packed("pk", b"", np.array([], dtype=np.int64)) == []
        with pytest.raises(errors.InvalidArgument):
            p.send_packed("pk", b"abc", np.array([1, 1], dtype=np.int64), partition=0)
        with pytest.raises(errors.InvalidArgument):
            p.send_packed("pk", b"abc", np.array([4, -2], dtype=np.int64), partition=0)
    c = inst.log.consumer(topics=["pk"], auto_offset_reset="earliest")
    ms = drain(c, 7)
    assert [m.value for m in ms] == values + [b"x", b"yz"]
    assert [m.offset for m in ms] == list(range(7))


# ---------------------------------------------------------------- consuming


def test_poll_poll_batch_columns_and_iteration(inst):
    inst.log.create_topic("c", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send_batch("c", [b"r%d" % i for i in range(10)], partition=0)
        p.send("c", b"k-rec", key=b"kk", partition=0)
    c = inst.log.consumer(topics=["c"], auto_offset_reset="earliest")
    m = c.poll(timeout=2)
    assert isinstance(m, shmlog.Message)
    assert (m.topic, m.partition, m.offset, m.key, m.value, m.headers) == ("c", 0, 0, None, b"r0", ())
    batch = c.poll_batch(max_messages=3, timeout=1)  # pending records first
    assert [x.offset for x in batch] == [1, 2, 3]
    rest = drain(c, 7)
    assert [x.offset for x in rest] == list(range(4, 11))
    assert rest[-1].key == b"kk"
    t0 = time.monotonic()
    assert c.poll(timeout=0.1) is None
    assert c.poll_batch(timeout=0) == []
    assert c.poll_columns(timeout=0) is None
    assert 0.09 <= time.monotonic() - t0 < 2

    # columns
    c.seek("c", 0, 0)
    cols = c.poll_columns(max_messages=100, timeout=1)
    assert isinstance(cols, shmlog.Columns)
    assert (cols.topic, cols.partition) == ("c", 0)
    assert len(cols) == 11
    assert list(cols.offsets) == list(range(11))
    assert [cols.value(i) for i in range(11)] == [b"r%d" % i for i in range(10)] + [b"k-rec"]
    assert list(cols.key_lengths[:10]) == [-1] * 10 and cols.key_lengths[10] == 2
    s, n = int(cols.key_starts[10]), int(cols.key_lengths[10])
    assert bytes(cols.values[s : s + n]) == b"kk"
    assert all(abs(int(t) - time.time() * 1000) < 60_000 for t in cols.timestamps_ms)
    assert c.position("c", 0) == 11

    # iteration ends after consumer_timeout_ms without records
    it = inst.log.consumer(topics=["c"], auto_offset_reset="earliest", consumer_timeout_ms=100)
    t0 = time.monotonic()
    assert [x.offset for x in it] == list(range(11))
    assert time.monotonic() - t0 < 3


def test_poll_columns_keeps_its_buffers(inst):
    inst.log.create_topic("cb", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send_batch("cb", [b"a" * 10, b"b" * 10], partition=0)
    c = inst.log.consumer(topics=["cb"], auto_offset_reset="earliest")
    cols = c.poll_columns(timeout=1)
    with inst.log.producer() as p:
        p.send_batch("cb", [b"c" * 10, b"d" * 10], partition=0)
    more = c.poll_batch(timeout=1)  # reuses the consumer's own buffers
    assert [m.value for m in more] == [b"c" * 10, b"d" * 10]
    assert [cols.value(i) for i in range(2)] == [b"a" * 10, b"b" * 10]


@pytest.mark.parametrize("how", ["poll", "poll_batch", "poll_columns"])
def test_record_larger_than_the_read_buffer(inst, how):
    inst.log.create_topic("large", persistence="none", ring_bytes=1 << 25)  # max_message_bytes 8 MiB
    big = bytes(range(256)) * (5 << 12)  # 5 MiB > the 4 MiB default buffer
    with inst.log.producer() as p:
        p.send("large", big, key=b"k1", partition=0)
        p.send("large", b"small", partition=0)
        p.send("large", big[::-1], partition=0)
    c = inst.log.consumer(topics=["large"], auto_offset_reset="earliest")
    got = []
    for _ in range(20):
        if how == "poll":
            m = c.poll(timeout=0.2)
            got += [m.value] if m else []
        elif how == "poll_batch":
            got += [m.value for m in c.poll_batch(timeout=0.2)]
        else:
            cols = c.poll_columns(timeout=0.2)
            got += [] if cols is None else [cols.value(i) for i in range(len(cols))]
        if len(got) >= 3:
            break
    assert len(got) == 3 and got[0] == big and got[1] == b"small" and got[2] == big[::-1]


def test_poll_wakes_on_a_record_from_another_process(inst):
    inst.log.create_topic("wake", persistence="none", ring_bytes=RING)

    def child(kw):
        time.sleep(0.2)
        with shmlog.connect(**kw) as log, log.producer() as p:
            p.send("wake", b"hello", partition=0)

    c = inst.log.consumer(topics=["wake"], auto_offset_reset="latest")
    proc = inst.process(child, inst.kwargs)
    proc.start()
    t0 = time.monotonic()
    m = c.poll(timeout=10)
    assert m is not None and m.value == b"hello"
    assert time.monotonic() - t0 < 5
    proc.join(5)
    assert proc.exitcode == 0


def test_assign_seek_position(inst):
    inst.log.create_topic("s", persistence="none", partitions=2, ring_bytes=RING)
    with inst.log.producer() as p:
        p.send_batch("s", [b"%d" % i for i in range(20)], partition=0)
        p.send_batch("s", [b"p1-%d" % i for i in range(3)], partition=1)
    c = inst.log.consumer()
    c.assign([("s", 0, 5), ("s", 1)])
    assert c.assignment() == [("s", 0), ("s", 1)]
    assert c.position("s", 0) == 5
    ms = []
    while len(ms) < 15:
        got = c.poll_batch(timeout=1)
        assert got
        ms += [m for m in got if m.partition == 0]
    assert [m.offset for m in ms] == list(range(5, 20))
    assert c.position("s", 0) == 20
    # partition 1 had no offset: default reset "latest" -> nothing old
    assert c.position("s", 1) == 3

    # position while poll() holds pending records of a batch
    c.seek("s", 0, 0)
    assert c.position("s", 0) == 0
    m = c.poll(timeout=1)
    assert m.offset == 0
    assert c.position("s", 0) == 1
    assert c.poll(timeout=1).offset == 1
    assert c.position("s", 0) == 2
    # seek drops what poll() had pending, and goes where it was told
    c.seek("s", 0, 17)
    assert c.position("s", 0) == 17
    assert [m.offset for m in drain(c, 3)] == [17, 18, 19]
    # seek to an offset in the middle of a batch returns from exactly that offset
    for off in (7, 13, 19, 0):
        c.seek("s", 0, off)
        m = c.poll(timeout=1)
        assert (m.partition, m.offset, m.value) == (0, off, b"%d" % off)
    # poll_batch in small steps inside one frame
    c.seek("s", 0, 2)
    steps = [[m.offset for m in c.poll_batch(max_messages=4, timeout=1)] for _ in range(5)]
    assert steps == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
    c.seek_to_beginning("s", 0)
    assert c.poll(timeout=1).offset == 0
    c.seek_to_end("s", 0)
    assert c.poll(timeout=0.05) is None
    assert c.end_offsets() == {("s", 0): 20, ("s", 1): 3}
    assert c.beginning_offsets([("s", 1)]) == {("s", 1): 0}
    with pytest.raises(errors.UnknownTopicOrPartition):
        c.seek("s", 5, 0)
    with pytest.raises(errors.InvalidArgument):
        c.seek("s", 0, -1)


def test_seek_past_end_applies_reset_policy(inst):
    inst.log.create_topic("r", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send_batch("r", [b"a", b"b", b"c"], partition=0)
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("r", 0, 1000)])
    assert c.poll(timeout=1).offset == 0
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([("r", 0, 1000)])
    with pytest.raises(errors.OffsetOutOfRange):
        c.poll(timeout=0.1)


def test_auto_offset_reset(inst):
    inst.log.create_topic("ar", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        for i in range(5):
            p.send("ar", b"old%d" % i, partition=0)
        early = inst.log.consumer(topics=["ar"], auto_offset_reset="earliest")
        late = inst.log.consumer(topics="ar", auto_offset_reset="latest")
        default = inst.log.consumer(topics=["ar"])
        assert late.position("ar", 0) == 5
        p.send("ar", b"new", partition=0)
    assert [m.value for m in drain(early, 6)] == [b"old0", b"old1", b"old2", b"old3", b"old4", b"new"]
    assert [(m.offset, m.value) for m in drain(late, 1)] == [(5, b"new")]
    assert late.poll(timeout=0.05) is None
    assert [m.offset for m in drain(default, 1)] == [5]  # Kafka's default: latest


def test_lapped_consumer_on_ephemeral_topic_resets(inst):
    inst.log.create_topic("lap", persistence="none", ring_bytes=RING)
    c = inst.log.consumer(topics=["lap"], auto_offset_reset="earliest")
    with inst.log.producer() as p:
        for i in range(300):  # ~300 KiB through a 64 KiB ring
            p.send("lap", bytes([i % 256]) * 1000, partition=0)
    d = inst.log.describe_topic("lap").partitions[0]
    assert d.log_start_offset > 0 and d.end_offset == 300 and d.overwritten_frames > 0
    ms = drain(c, 300 - d.log_start_offset)
    offs = [m.offset for m in ms]
    assert offs[0] >= d.log_start_offset and offs == list(range(offs[0], 300))
    assert all(m.value == bytes([m.offset % 256]) * 1000 for m in ms)


# ---------------------------------------------------------------- lifecycle


def test_delete_topic_under_live_producer_other_connection(inst):
    inst.log.create_topic("gone", persistence="none", ring_bytes=RING)
    p = inst.log.producer()
    assert p.send("gone", b"a").offset == 0
    assert p.send_batch("gone", [b"b"], partition=0)[0].base_offset == 1
    inst.connect().delete_topic("gone")
    with pytest.raises(errors.TopicDeleted):
        p.send("gone", b"after delete")
    assert issubclass(errors.TopicDeleted, errors.UnknownTopicOrPartition)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.send("gone", b"again")
    # recreated: the same producer writes to the new life from offset 0
    inst.connect().create_topic("gone", persistence="none", ring_bytes=RING)
    assert p.send("gone", b"new life", partition=0).offset == 0
    p.close()


def test_delete_topic_under_live_batch_producer(inst):
    inst.log.create_topic("gone2", persistence="none", ring_bytes=RING)
    p = inst.log.producer()
    p.send_batch("gone2", [b"a", b"b"], partition=0)
    inst.connect().delete_topic("gone2")
    with pytest.raises(errors.TopicDeleted):
        p.send_batch("gone2", [b"c"], partition=0)
    p.close()


def _in_child(inst, fn):
    """Runs fn() in a forked child; returns its exit code (negative: killed by that signal)."""
    proc = inst.process(fn)
    proc.start()
    proc.join(30)
    return proc.exitcode


def test_delete_topic_under_live_producer_same_connection(inst):
    def child():
        faulthandler.disable()  # a crash here is what the test looks for
        log = shmlog.connect(**inst.kwargs)
        log.create_topic("same", persistence="none", ring_bytes=RING)
        p = log.producer()
        p.send("same", b"a", partition=0)
        log.delete_topic("same")
        try:
            p.send("same", b"b", partition=0)
        except errors.TopicDeleted:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(3)

    assert _in_child(inst, child) == 0


def test_delete_topic_under_live_consumer_same_connection(inst):
    def child():
        faulthandler.disable()  # a crash here is what the test looks for
        log = shmlog.connect(**inst.kwargs)
        log.create_topic("same", persistence="none", ring_bytes=RING)
        c = log.consumer(topics=["same"], auto_offset_reset="earliest")
        with log.producer() as p:
            p.send("same", b"a", partition=0)
        assert c.poll(timeout=1).value == b"a"
        log.delete_topic("same")
        try:
            c.poll(timeout=0.1)
        except errors.ShmlogError:
            pass
        os._exit(0)

    assert _in_child(inst, child) == 0


def test_context_managers_and_closed(inst):
    inst.log.create_topic("cm", persistence="none", ring_bytes=RING)
    with inst.connect() as log:
        with log.producer() as p:
            p.send("cm", b"x", partition=0)
        with log.consumer(topics=["cm"], auto_offset_reset="earliest") as c:
            assert c.poll(timeout=1).value == b"x"
    with pytest.raises(errors.Closed):
        p.send("cm", b"y")
    with pytest.raises(errors.Closed):
        p.send("cm", b"y", key=b"k", headers={"a": b"b"})
    with pytest.raises(errors.Closed):
        p.send_batch("cm", [b"y"])
    with pytest.raises(errors.Closed):
        p.send_packed("cm", b"y", np.array([1], dtype=np.int64))
    with pytest.raises(errors.Closed):
        p.flush()
    for call in (
        lambda: c.poll(timeout=0),
        lambda: c.poll_batch(timeout=0),
        lambda: c.poll_columns(timeout=0),
        lambda: c.assign([("cm", 0)]),
    ):
        with pytest.raises(errors.Closed):
            call()
    with pytest.raises(errors.Closed):
        log.list_topics()
    with pytest.raises(errors.Closed):
        log.create_topic("cm2", persistence="none", ring_bytes=RING)
    with pytest.raises(errors.Closed):
        log.describe_topic("cm")
    p.close()  # idempotent
    c.close()
    log.close()
    assert inst.log.list_topics() == ["cm"]  # closing one connection touches nothing shared


def test_closing_the_log_closes_its_clients(inst):
    inst.log.create_topic("lc", persistence="none", ring_bytes=RING)
    log = inst.connect()
    p = log.producer()
    p.send("lc", b"x", partition=0)
    c = log.consumer(topics=["lc"])
    log.close()
    with pytest.raises(errors.Closed):
        p.send("lc", b"x", partition=0)
    with pytest.raises(errors.Closed):
        c.poll(timeout=0)


def test_closed_producers_release_their_slots(inst):
    # more producers than slots, one after another: each close() gives its slot back
    inst.log.create_topic("slots", persistence="none", ring_bytes=RING)
    for i in range(lib.SHM_PRODUCER_SLOTS + 8):
        with inst.log.producer() as p:
            assert p.send("slots", b"x", partition=0).offset == i


def test_closed_consumer_seek_and_position_raise_closed(inst):
    inst.log.create_topic("cs", persistence="none", ring_bytes=RING)
    c = inst.log.consumer(topics=["cs"])
    c.close()
    with pytest.raises(errors.Closed):
        c.seek("cs", 0, 0)
    with pytest.raises(errors.Closed):
        c.position("cs", 0)


def test_env_vars_pick_instance_and_data_dir(tmp_path, monkeypatch):
    import uuid

    tag = uuid.uuid4().hex[:10]
    prefix = f"shmlogtest-env-{tag}."
    name = f"env{tag}"
    data = tmp_path / "envdata"
    monkeypatch.setenv("SHMLOG_INSTANCE", name)
    monkeypatch.setenv("SHMLOG_DATA_DIR", str(data))
    monkeypatch.delenv("SHMLOG_SHM_PREFIX", raising=False)
    logs = []
    try:
        log = shmlog.connect(shm_prefix=prefix, unblock_timeout_ms=100)
        logs.append(log)
        assert log.settings.instance == name
        assert log.settings.data_dir == str(data)
        assert data.is_dir()
        assert os.path.exists(f"{SHM}/{prefix}{name}.ctl")
        log.create_topic("envt", persistence="none", ring_bytes=RING)
        # the prefix from the environment too; same instance, same topics
        monkeypatch.setenv("SHMLOG_SHM_PREFIX", prefix)
        log2 = shmlog.connect()
        logs.append(log2)
        assert log2.settings.shm_prefix == prefix and log2.list_topics() == ["envt"]
        # explicit arguments win over the environment
        other = f"exp{tag}"
        log3 = shmlog.connect(instance=other, data_dir=str(tmp_path / "exp"))
        logs.append(log3)
        assert log3.settings.instance == other and log3.list_topics() == []
        assert os.path.exists(f"{SHM}/{prefix}{other}.ctl")
    finally:
        for lg in logs:
            try:
                lg.close()
            except Exception:
                pass
        for n in os.listdir(SHM):
            if n.startswith(prefix):
                try:
                    os.unlink(f"{SHM}/{n}")
                except FileNotFoundError:
                    pass
    assert not [n for n in os.listdir(SHM) if n.startswith(prefix)]
