"""test_async_producer.py — Producer.produce()/poll()/flush(): confluent-kafka's
asynchronous producer on shmlog.

Owns: delivery reports (exactly once per record, offsets that match what a
consumer reads), linger, batching into one frame, the four codecs (decoded
here with shmlog.compression and the C batch decoder, and through the Kafka
listener by confluent-kafka), BufferFull through callbacks after
message_timeout_ms, flush timeouts, close and fork with queued records, and
bad arguments. Must never: sleep where a bounded wait on a condition works.
"""

import os
import signal
import struct
import time

import pytest

import shmlog
from shmlog import compression, errors
from shmlog._native import ffi, lib

ROW = lib.SHM_ROW_FIELDS


def read_all(log, topic, n, timeout=10.0):
    c = log.consumer([topic], auto_offset_reset="earliest")
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(10_000, timeout=0.05)
    c.close()
    return got


def raw_batches(log, topic, partition):
    """Every DATA frame body (a Kafka RecordBatch v2) of the partition, straight from the ring."""
    ring = log.ring(log.topic_handle(topic), partition, writable=False)
    cur = ffi.new("struct shm_cursor *")
    cur.stuck_pos = 2**64 - 1
    cur.expect_base = -1
    assert lib.shm_ring_seek(ring.h, cur, 0) == 0
    cap = 1 << 22
    buf = ffi.new("uint8_t[]", cap)
    out = ffi.new("struct shm_records_out *")
    batches = []
    while True:
        rc = lib.shm_ring_read_batches(ring.h, cur, buf, cap, 10**9, out)
        assert rc >= 0, rc
        if out.bytes_used == 0:
            return batches
        data = ffi.buffer(buf, out.bytes_used)[:]
        i = 0
        while i < len(data):
            n = struct.unpack_from(">i", data, i + 8)[0] + 12
            batches.append(data[i : i + n])
            i += n


def decode(batch):
    """(codec, [(offset, key, value)]) of one RecordBatch, inflated by shmlog.compression."""
    codec = struct.unpack_from(">h", batch, 21)[0] & 7
    assert lib.shm_batch_validate(batch, len(batch)) == 0, "CRC or framing broken"
    plain = batch
    if codec:
        recs = compression.decompress(codec, batch[61:], 64 << 20)
        plain = batch[:21] + struct.pack(">h", struct.unpack_from(">h", batch, 21)[0] & ~7) + batch[23:61] + recs
    count = struct.unpack_from(">i", plain, 57)[0]
    rows = ffi.new("int64_t[]", count * ROW)
    out = ffi.new("struct shm_records_out *")
    out.rows, out.max_records = rows, count
    buf = ffi.from_buffer(plain)
    assert lib.shm_batch_decode(buf, len(plain), 0, 0, out) >= 0
    recs = []
    for i in range(out.count):
        r = rows[i * ROW : (i + 1) * ROW]
        k = None if r[3] < 0 else plain[r[2] : r[2] + r[3]]
        v = None if r[5] < 0 else plain[r[4] : r[4] + r[5]]
        recs.append((r[0], k, v))
    return codec, recs


def test_delivery_reports_exactly_once_with_the_offsets_consumers_read(inst):
    inst.log.create_topic("t", partitions=3, persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(linger_ms=2, batch_num_messages=97)
    reports = []
    n = 3000
    for i in range(n):
        key = b"k%d" % (i % 11) if i % 3 else None
        p.produce(
            "t",
            b"v%d" % i,
            key=key,
            headers={"i": b"%d" % i} if i % 4 == 0 else None,
            on_delivery=lambda err, msg: reports.append((err, msg)),
        )
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(10) == 0
    assert len(p) == 0
    assert p.poll(0) == 0, "a report served twice"
    assert len(reports) == n and all(e is None for e, _ in reports)
    by_value = {m.value: m for _, m in reports}
    assert len(by_value) == n, "a record reported twice"
    assert len({(m.partition, m.offset) for _, m in reports}) == n, "two records reported at one offset"
    got = read_all(inst.log, "t", n)
    assert len(got) == n
    for m in got:
        r = by_value[m.value]
        assert (r.partition, r.offset, r.key) == (m.partition, m.offset, m.key)
        assert dict(m.headers) == dict(r.headers)
    # keyed records follow murmur2 like send(); order within a partition is produce order
    for part in range(3):
        vals = [int(m.value[1:]) for m in got if m.partition == part]
        assert vals == sorted(vals)
    sync = inst.log.producer()
    for i in range(1, 3000, 3):
        md = sync.send("t", b"x", key=b"k%d" % (i % 11))
        assert md.partition == by_value[b"v%d" % i].partition


def test_batches_are_one_frame_each(inst):
    inst.log.create_topic("t", persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(linger_ms=10_000, batch_num_messages=1000)
    for i in range(5000):
        p.produce("t", b"%d" % i)
    assert p.flush(10) == 0
    b = raw_batches(inst.log, "t", 0)
    assert [len(decode(x)[1]) for x in b] == [1000] * 5
    assert [v for x in b for _, _, v in decode(x)[1]] == [b"%d" % i for i in range(5000)]


def test_linger_sends_without_flush_or_poll(inst):
    inst.log.create_topic("t", persistence="none")
    p = inst.log.producer(linger_ms=20)
    t0 = time.monotonic()
    p.produce("t", b"lonely")
    got = read_all(inst.log, "t", 1, timeout=5)
    assert [m.value for m in got] == [b"lonely"]
    assert time.monotonic() - t0 < 5
    p.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batch_is_a_kafka_record_batch(inst, codec):
    inst.log.create_topic("t", persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(compression_type=codec, linger_ms=10_000)
    reports = []
    vals = [b"value-%d-" % i + b"x" * (i % 50) for i in range(2000)]
    for i, v in enumerate(vals):
        p.produce("t", v, key=b"k%d" % i if i % 2 else None, on_delivery=lambda e, m: reports.append(m.offset))
    assert p.flush(10) == 0
    assert sorted(reports) == list(range(2000))
    batches = raw_batches(inst.log, "t", 0)
    assert batches
    recs = []
    for b in batches:
        c, r = decode(b)
        assert c == compression.codec_of(codec)
        recs += r
    assert [o for o, _, _ in recs] == list(range(2000))
    assert [v for _, _, v in recs] == vals
    assert [k for _, k, _ in recs] == [b"k%d" % i if i % 2 else None for i in range(2000)]
    assert sum(len(b) for b in batches) < sum(map(len, vals)), "compression did not compress"


def test_compressed_batches_read_by_confluent_kafka(inst):
    ck = pytest.importorskip("confluent_kafka")
    from kafka_util import Kafka

    k = Kafka(inst)
    try:
        inst.log.create_topic("ckc", partitions=1, persistence="none", ring_bytes=4 << 20)
        want = []
        for codec in ("gzip", "snappy", "lz4", "zstd"):
            p = inst.log.producer(compression_type=codec)
            for i in range(300):
                v = b"%s-%d" % (codec.encode(), i)
                want.append(v)
                p.produce("ckc", v)
            assert p.flush(10) == 0
            p.close()
        c = ck.Consumer(
            {
                "bootstrap.servers": k.bootstrap,
                "group.id": "g",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.assign([ck.TopicPartition("ckc", 0, 0)])
        got, deadline = [], time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append((m.offset(), m.value()))
        c.close()
        assert [v for _, v in got] == want
        assert [o for o, _ in got] == list(range(len(want)))
    finally:
        k.stop()


def _full_ring(inst, topic):
    """A durable topic whose persister never runs: its ring fills and stays full."""
    inst.log._start_persister = False
    inst.log.create_topic(topic, ring_bytes=1 << 16)
    inst.kill_persister()


def test_buffer_full_reported_through_callbacks_after_message_timeout(inst):
    _full_ring(inst, "full")
    p = inst.log.producer(message_timeout_ms=1500, linger_ms=1, batch_num_messages=50)
    reports = []
    n = 2000  # ~220 KB of records for a 64 KiB ring
    t0 = time.monotonic()
    for i in range(n):
        p.produce("full", b"%04d" % i + b"y" * 100, on_delivery=lambda e, m: reports.append((e, m)))
    assert p.flush(0.1) > 0, "flush(0.1) claims everything was written to a full ring"
    assert p.flush(10) == 0
    assert time.monotonic() - t0 >= 1.5
    assert len(reports) == n
    ok = [m for e, m in reports if e is None]
    bad = [(e, m) for e, m in reports if e is not None]
    assert ok and bad
    assert all(isinstance(e, errors.BufferFull) and m.offset == -1 for e, m in bad)
    assert "message_timeout_ms" in str(bad[0][0])
    # what was acknowledged is exactly what is in the ring, in order, each once
    assert [m.offset for m in ok] == list(range(len(ok)))
    seqs = [int(m.value[:4]) for m in ok]
    assert seqs == sorted(seqs)
    assert len({int(m.value[:4]) for _, m in reports}) == n


def test_flush_timeout_returns_what_is_left(inst):
    _full_ring(inst, "full")
    p = inst.log.producer(message_timeout_ms=60_000)
    for _i in range(2000):
        p.produce("full", b"z" * 100)
    t0 = time.monotonic()
    left = p.flush(0.3)
    took = time.monotonic() - t0
    assert 0 < left <= 2000 and left == len(p)
    assert 0.3 <= took < 3.0, f"flush(0.3) took {took:.2f} s"
    reports = []
    p.produce("full", b"late", on_delivery=lambda e, m: reports.append(e))
    p.close(timeout=0.2)
    assert len(reports) == 1 and isinstance(reports[0], errors.Closed)
    assert len(p) == 0


def test_close_delivers_queued_records(inst):
    inst.log.create_topic("t", persistence="none")
    p = inst.log.producer(linger_ms=60_000)
    reports = []
    for i in range(10):
        p.produce("t", b"%d" % i, on_delivery=lambda e, m: reports.append((e, m.offset)))
    p.close()
    assert reports == [(None, i) for i in range(10)]
    with pytest.raises(errors.Closed):
        p.produce("t", b"after")
    assert len(read_all(inst.log, "t", 10)) == 10


def test_fork_child_starts_with_an_empty_queue(inst):
    inst.log.create_topic("t", persistence="none")
    p = inst.log.producer(linger_ms=60_000)
    for i in range(5):
        p.produce("t", b"parent-%d" % i)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if len(p) == 0 else 3
            p.produce("t", b"child")
            code = code or (0 if p.flush(10) == 0 else 4)
        except BaseException:
            code = 5
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    code = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert code == b"\x00", f"child failed with {code}"
    assert p.flush(10) == 0
    vals = sorted(m.value for m in read_all(inst.log, "t", 6))
    assert vals == sorted([b"child"] + [b"parent-%d" % i for i in range(5)]), vals


def test_threads_produce_concurrently(inst):
    import threading

    inst.log.create_topic("t", partitions=2, persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(linger_ms=1, batch_num_messages=64)
    reports = []

    def run(t):
        for i in range(3000):
            p.produce(
                "t",
                b"%d-%d" % (t, i),
                key=None if i % 2 else b"%d" % t,
                on_delivery=(lambda e, m: reports.append(m)) if i % 3 == 0 else None,
            )

    ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.flush(10) == 0
    got = read_all(inst.log, "t", 12000)
    assert sorted(m.value for m in got) == sorted(b"%d-%d" % (t, i) for t in range(4) for i in range(3000))
    assert len(reports) == 4 * 1000
    pos = {(m.partition, m.offset): m.value for m in got}
    assert all(pos[(m.partition, m.offset)] == m.value for m in reports)
    for t in range(4):  # one thread's records keep their order per partition
        for part in range(2):
            seq = [int(m.value.split(b"-")[1]) for m in got if m.partition == part and m.value.startswith(b"%d-" % t)]
            assert seq == sorted(seq)


def test_express_and_general_calls_keep_one_order(inst):
    """produce()'s C express case (topic, bytes value) and its general path
    (anything else) append to the same batches: one order, each record once."""
    inst.log.create_topic("t", persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(linger_ms=0.5, batch_num_messages=7)
    want = []
    for i in range(3000):
        v = b"%06d" % i
        form = i % 6
        if form == 0:
            p.produce("t", v)  # express, positional
        elif form == 1:
            p.produce("t", value=v)  # express, keyword
        elif form == 2:
            p.produce("t", v, key=None, headers=None, partition=None, timestamp=None, on_delivery=None)
        elif form == 3:
            p.produce(topic="t", value=v)  # general: topic by keyword
        elif form == 4:
            p.produce("t", bytearray(v))  # general: not exact bytes
        else:
            p.produce("t", memoryview(v))
        want.append(v)
    assert p.flush(10) == 0
    assert [m.value for m in read_all(inst.log, "t", len(want))] == want
    assert [m.offset for m in read_all(inst.log, "t", len(want))] == list(range(len(want)))
    p.close()


def test_express_adds_race_the_linger_thread_and_lose_nothing(inst):
    """Two threads in tight express produce() loops while the linger thread
    seals batches every few records: an add and a seal are atomic under the
    GIL (csrc/fastpath.c, accum.c), so no record is added to a sealed batch
    and lost, none is written twice."""
    import threading

    inst.log.create_topic("t", persistence="none", ring_bytes=16 << 20)
    p = inst.log.producer(linger_ms=0.01, batch_num_messages=50)
    n = 40_000

    def run(t):
        for i in range(n):
            p.produce("t", b"%d-%07d" % (t, i))

    ts = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.flush(20) == 0
    got = [m.value for m in read_all(inst.log, "t", 2 * n, timeout=20)]
    assert len(got) == 2 * n and len(set(got)) == 2 * n
    for t in range(2):
        mine = [v for v in got if v.startswith(b"%d-" % t)]
        assert mine == [b"%d-%07d" % (t, i) for i in range(n)]
    p.close()


def test_a_tight_produce_loop_gets_no_buffer_full_while_the_ring_has_room(inst):
    """linger_ms closes batches in the background thread, which a producing
    loop starves of the GIL: the producing thread writes the closed batches
    itself (it used to leave them queued until queue_buffering_max_messages
    raised BufferFull with the ring nearly empty — benchmarks.aio's full run)."""
    inst.log.create_topic("t", persistence="none", ring_bytes=64 << 20)
    p = inst.log.producer(linger_ms=1, queue_buffering_max_messages=20_000)
    n = 300_000
    v = b"x" * 100
    for _ in range(n):
        p.produce("t", v)
    assert p.flush(30) == 0
    d = inst.log.describe_topic("t").partitions[0]
    assert d.end_offset == n and d.overwritten_frames == 0
    p.close()


def test_threads_that_first_produce_to_a_topic_together_share_one_writer(inst, monkeypatch):
    """Two threads whose first produce() to a topic overlap: each used to build
    its own topic writer and the one that lost the dict slot kept filling a
    batch that no linger pass or flush ever saw — its records were lost while
    flush() returned 0 (found by the sanitizer build's slower timing)."""
    import threading

    inst.log.create_topic("t", persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer(linger_ms=5, batch_num_messages=1000)
    real = inst.log.topic_handle
    gate = threading.Barrier(2)

    def slow_handle(name):
        h = real(name)
        if threading.current_thread().name.startswith("first-"):
            try:
                gate.wait(timeout=2)  # both threads are inside _writer() now
            except threading.BrokenBarrierError:
                pass
        return h

    monkeypatch.setattr(inst.log, "topic_handle", slow_handle)

    def run(t):
        for i in range(200):
            p.produce("t", b"%d-%03d" % (t, i))

    ts = [threading.Thread(target=run, args=(t,), name=f"first-{t}") for t in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.flush(10) == 0
    got = sorted(m.value for m in read_all(inst.log, "t", 400, timeout=5))
    assert got == sorted(b"%d-%03d" % (t, i) for t in range(2) for i in range(200))
    p.close()


def test_produce_call_errors_are_pythons(inst):
    inst.log.create_topic("t", persistence="none")
    p = inst.log.producer()
    import inspect
    from shmlog import Producer

    assert list(inspect.signature(Producer.produce).parameters)[:3] == ["self", "topic", "value"]
    assert "confluent-kafka" in Producer.produce.__doc__
    with pytest.raises(TypeError):
        p.produce()
    with pytest.raises(TypeError):
        p.produce("t", b"v", bogus=1)
    with pytest.raises(TypeError):
        p.produce("t", b"v", value=b"w")
    with pytest.raises(TypeError):
        p.produce("t", b"v", None, None, None, None, None, None, "one too many")
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.produce("nope", b"v")
    p.produce("t", b"fine")
    assert p.flush(5) == 0
    p.close()
    with pytest.raises(errors.Closed):
        p.produce("t", b"after close")


def test_bad_arguments(inst):
    inst.log.create_topic("t", partitions=2, persistence="none", max_message_bytes=4096)
    for kw in (
        {"linger_ms": -1},
        {"batch_size": 0},
        {"batch_num_messages": "9"},
        {"message_timeout_ms": -5},
        {"queue_buffering_max_messages": 0},
        {"message_timeout_ms": 1, "delivery_timeout_ms": 1},
    ):
        with pytest.raises(errors.InvalidArgument):
            inst.log.producer(**kw)
    with pytest.raises(errors.InvalidArgument):
        inst.log.producer(compression_type="brotli")
    with pytest.raises(errors.InvalidType):
        inst.log.producer(on_delivery=5)
    p = inst.log.producer(queue_buffering_max_messages=10, linger_ms=60_000, batch_num_messages=5)
    with pytest.raises(errors.InvalidType):
        p.produce("t", "str value")
    with pytest.raises(errors.InvalidType):
        p.produce("t", b"v", key=7)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.produce("t", b"v", partition=2)
    with pytest.raises(errors.InvalidType):
        p.produce("t", b"v", partition="0")
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.produce("nope", b"v")
    with pytest.raises(errors.InvalidArgument):
        p.produce("t", b"v", timestamp=-1)
    with pytest.raises(errors.InvalidType):
        p.produce("t", b"v", on_delivery="cb")
    with pytest.raises(errors.InvalidType):
        p.produce("t", b"v", headers={"h": 1})
    with pytest.raises(errors.RecordTooLarge):
        p.produce("t", b"x" * 5000)
    with pytest.raises(errors.InvalidArgument):
        p.poll(-1)
    with pytest.raises(errors.InvalidArgument):
        p.flush(timeout="1")
    assert len(p) == 0, "a refused record was queued"
    served = []
    for i in range(10):  # written, but their reports are not served yet
        p.produce("t", b"%d" % i, partition=0, on_delivery=lambda e, m: served.append(m.offset))
    with pytest.raises(errors.BufferFull):
        p.produce("t", b"one too many", partition=0)
    assert p.flush(10) == 0 and served == list(range(10))
    p.produce("t", b"room again", partition=0)
    assert p.flush(10) == 0
    assert len(read_all(inst.log, "t", 11)) == 11


def test_timestamps_split_batches(inst):
    inst.log.create_topic("t", persistence="none")
    p = inst.log.producer(linger_ms=60_000)
    p.produce("t", b"a", timestamp=1_000)
    p.produce("t", b"b", timestamp=1_000)
    p.produce("t", b"c", timestamp=2_000)
    p.produce("t", b"d")
    assert p.flush(10) == 0
    got = read_all(inst.log, "t", 4)
    assert [m.timestamp_ms for m in got[:3]] == [1_000, 1_000, 2_000]
    assert abs(got[3].timestamp_ms - time.time() * 1000) < 60_000
    assert len(raw_batches(inst.log, "t", 0)) == 3


def test_deleted_topic_reported_to_every_queued_record(inst):
    inst.log.create_topic("gone", partitions=2, persistence="none")
    p = inst.log.producer(linger_ms=60_000)
    reports = []
    for i in range(20):
        p.produce("gone", b"%d" % i, partition=i % 2, on_delivery=lambda e, m: reports.append(e))
    inst.log.delete_topic("gone")
    assert p.flush(10) == 0
    assert len(reports) == 20 and all(isinstance(e, errors.UnknownTopicOrPartition) for e in reports)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.produce("gone", b"again")
    inst.log.create_topic("gone", persistence="none")
    reports.clear()
    p.produce("gone", b"new", on_delivery=lambda e, m: reports.append((e, m.offset)))
    assert p.flush(10) == 0 and reports == [(None, 0)], "the re-created topic is not written"


def _async_victim(kwargs, topic, path):
    log = shmlog.connect(**kwargs)
    p = log.producer(linger_ms=1, batch_num_messages=37)
    with open(path, "a") as f:

        def cb(err, msg):
            assert err is None
            f.write(f"{msg.offset} {msg.value.decode()}\n")
            f.flush()

        i = 0
        while True:
            p.produce(topic, b"%d" % i, on_delivery=cb)
            i += 1
            if i % 50 == 0:
                p.poll(0)
                time.sleep(0.001)


def test_kill_minus_9_of_an_async_producer_mid_run(inst, tmp_path):
    """Every record whose delivery report ran is in the log at its reported offset;
    the log holds whole batches only: a prefix of what the victim produced, once each."""
    inst.log.create_topic("k9", persistence="none", ring_bytes=16 << 20)
    path = str(tmp_path / "acked")
    vic = inst.process(_async_victim, inst.kwargs, "k9", path)
    vic.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(path) or os.path.getsize(path) < 20_000:
        assert time.monotonic() < deadline and vic.is_alive(), "victim wrote no reports"
        time.sleep(0.01)
    os.kill(vic.pid, signal.SIGKILL)
    vic.join(5)
    end = inst.log.describe_topic("k9").partitions[0].end_offset
    got = read_all(inst.log, "k9", end)
    with open(path) as f:
        acked = [line.split() for line in f.read().splitlines() if line.count(" ") == 1]
    at = {m.offset: m.value for m in got}
    assert len(acked) > 100
    assert all(at.get(int(o)) == v.encode() for o, v in acked), "an acknowledged record is missing or moved"
    vals = [int(m.value) for m in got]
    assert vals == list(range(len(vals))), "not a prefix of what was produced, in order, once each"
    assert [m.offset for m in got] == list(range(len(got)))


def test_producer_default_callback_reports_plain_records(inst):
    inst.log.create_topic("t", persistence="none")
    reports = []
    p = inst.log.producer(on_delivery=lambda e, m: reports.append((e, m.offset)))
    for i in range(500):
        p.produce("t", b"%d" % i)  # the plainest call: no key, no per-record callback
    assert p.flush(10) == 0
    assert reports == [(None, i) for i in range(500)]
