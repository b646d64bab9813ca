"""Kafka listener, record-level validation of client batches (issue 11
defect 6, and the gzip bomb of defect 12): batches crafted byte by byte with
a valid CRC-32C but malformed records are refused with Kafka's error codes
and nothing is stored; compressed batches are inflated bounded by the topic's
max_message_bytes and their inflated records checked; a lying maxTimestamp
is rewritten as Kafka's broker does; and a mutation campaign checks that
whatever the listener accepts a consumer can read back whole and in order.
Every socket wait is bounded."""

import random
import struct
import zlib

import pytest

from shmlog import compression
from shmlog._native import crc32c
from shmlog.records import _varint as varint

from kafka_util import batch, kafka  # noqa: F401  (fixture)
from test_kafka_protocol import call, fetch_body, produce_body, produce_result

pytest.importorskip("kafka", reason="kafka-python builds the oracle record batches")

TS = 1_700_000_000_000


def record(
    off_delta, key=b"k", value=b"v", ts_delta=0, headers=(), tail=b"", length_adjust=0, key_len=None, header_count=None
):
    """One record, its parts overridable to craft malformed ones."""
    body = b"\x00" + varint(ts_delta) + varint(off_delta)
    body += varint(len(key) if key_len is None and key is not None else (-1 if key is None else key_len))
    body += key or b""
    body += varint(-1 if value is None else len(value)) + (value or b"")
    body += varint(len(headers) if header_count is None else header_count)
    for hk, hv in headers:
        body += varint(len(hk)) + hk + varint(-1 if hv is None else len(hv)) + (hv or b"")
    body += tail
    return varint(len(body) + length_adjust) + body


def raw_batch(records: bytes, count: int, *, last_delta=None, base_ts=TS, max_ts=TS, attr=0):
    """A RecordBatch v2 around a records section, correctly signed (CRC-32C)."""
    last = count - 1 if last_delta is None else last_delta
    after_crc = struct.pack(">hiqqqhii", attr, last, base_ts, max_ts, -1, -1, -1, count) + records
    head = struct.pack(">qiib", 0, len(after_crc) + 9, 0, 2)
    return head + struct.pack(">I", crc32c(after_crc)) + after_crc


def gz(data: bytes) -> bytes:
    return compression.compress(compression.GZIP, data)


def fetch_all(c, topic="t"):
    p = call(c, 1, 11, fetch_body(topic, 0, 0, max_bytes=8 << 20), corr=99)["Responses"][0]["Partitions"][0]
    assert p["ErrorCode"] == 0
    return bytes(p["Records"])


def decode_batches(data: bytes):
    """[(offset, key, value, timestamp)] of every batch in data, by kafka-python (an independent decoder)."""
    from kafka.record.default_records import DefaultRecordBatch

    out, view = [], memoryview(data)
    while len(view) >= 12:
        n = struct.unpack_from(">i", view, 8)[0] + 12
        b = DefaultRecordBatch(bytes(view[:n]))
        assert b.validate_crc()
        out += [(r.offset, r.key, r.value, r.timestamp) for r in b]
        view = view[n:]
    assert len(view) == 0
    return out


MALFORMED = {
    # the consumer saw offsets [0, 0, 0]
    "offset deltas not 0..n-1": (record(0) + record(0) + record(0), 3),
    "offset deltas out of order": (record(0) + record(2) + record(1), 3),
    "fewer records than recordsCount": (record(0) + record(1), 3),
    "more records than recordsCount": (record(0) + record(1) + record(2), 2),
    "trailing bytes": (record(0) + b"\x00\x01\x02", 1),
    "record length past the batch": (record(0, length_adjust=50), 1),
    "record length short of its fields": (record(0, length_adjust=-2), 1),
    "zero-length record": (b"\x00", 1),
    "negative record length": (varint(-5) + record(0), 1),
    "key length past the record": (record(0, key_len=1000), 1),
    "key length below -1": (record(0, key_len=-7), 1),
    "bytes left inside the record": (record(0, tail=b"\xff\xff"), 1),
    "header count past the record": (record(0, header_count=90), 1),
    "negative header count": (record(0, header_count=-2), 1),
    "null header key": (record(0, header_count=1, tail=varint(-1) + varint(0)), 1),
    "unterminated varint": (b"\x08" + b"\x80" * 8, 1),
    "timestamp delta overflows": (record(0, ts_delta=(1 << 63) - 1), 1),
    "timestamp below -1": (record(0, ts_delta=-TS - 5), 1),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_are_refused_and_nothing_is_stored(kafka, case, compressed):
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    c = kafka.raw()
    records, count = MALFORMED[case]
    b = raw_batch(gz(records), count, attr=1) if compressed else raw_batch(records, count)
    r = produce_result(call(c, 0, 8, produce_body("t", 0, b)))
    assert r["ErrorCode"] == 87, (case, r)  # INVALID_RECORD
    assert r["BaseOffset"] == -1 and r["ErrorMessage"]
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 0
    assert fetch_all(c) == b""
    # the listener still takes good batches after it, and they read back whole
    good = batch([(b"a", b"1", []), (b"b", b"2", [])], compression=1 if compressed else 0)
    assert produce_result(call(c, 0, 8, produce_body("t", 0, good), corr=3))["ErrorCode"] == 0
    assert [(o, k, v) for o, k, v, _ in decode_batches(fetch_all(c))] == [(0, b"a", b"1"), (1, b"b", b"2")]
    with kafka.log.consumer(auto_offset_reset="earliest") as cons:
        cons.assign([("t", 0)])
        got = cons.poll_batch(10, timeout=5)
    assert [(m.offset, m.value) for m in got] == [(0, b"1"), (1, b"2")]


def test_produce_v8_names_the_bad_record(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    c = kafka.raw()
    b = raw_batch(record(0) + record(1) + record(1, key_len=500), 3)
    r = produce_result(call(c, 0, 8, produce_body("t", 0, b)))
    assert r["ErrorCode"] == 87
    assert [e["BatchIndex"] for e in r["RecordErrors"]] == [2]


def test_a_damaged_batch_is_still_corrupt_message_not_invalid_record(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    c = kafka.raw()
    for compressed in (False, True):
        b = bytearray(raw_batch(gz(record(0)), 1, attr=1) if compressed else raw_batch(record(0), 1))
        b[-1] ^= 0x40  # CRC no longer matches: checked before anything is inflated
        assert produce_result(call(c, 0, 8, produce_body("t", 0, bytes(b))))["ErrorCode"] == 2


def test_undecodable_compressed_payloads_are_refused(kafka):
    """The consumer used to get a bare zlib.error: now the producer gets INVALID_RECORD."""
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    c = kafka.raw()
    good = record(0) + record(1)
    payloads = {
        1: [b"not gzip at all", gz(good)[:-6]],
        2: [b"\xff\xff\xff\xff\x0f garbage"],
        3: [b"\x04\x22\x4d\x18 broken lz4"],
        4: [b"\x28\xb5\x2f\xfd broken zstd"],
        5: [gz(good)],
        7: [gz(good)],
    }
    for codec, datas in payloads.items():
        for data in datas:
            r = produce_result(call(c, 0, 8, produce_body("t", 0, raw_batch(data, 2, attr=codec))))
            assert r["ErrorCode"] in (87, 43), (codec, data, r)
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 0


def test_gzip_bomb_is_refused_without_inflating_past_the_limit(kafka):
    """A 200 KiB batch inflating to 200 MB passed max_message_bytes: the
    inflated records are bounded by the topic's limit now."""
    kafka.log.create_topic("t", ring_bytes=1 << 22, persistence="none", max_message_bytes=1 << 20)
    c = kafka.raw()
    size = 200 << 20  # one 200 MB value, compressed as a stream
    body_len = 1 + 1 + 1 + 1 + len(varint(size)) + size + 1
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    payload = bomb.compress(varint(body_len) + b"\x00" + varint(0) + varint(0) + varint(-1) + varint(size))
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        payload += bomb.compress(zeros)
    payload += bomb.compress(varint(0)) + bomb.flush()
    assert len(payload) < 300 << 10
    b = raw_batch(payload, 1, attr=1)
    r = produce_result(call(c, 0, 8, produce_body("t", 0, b)))
    assert r["ErrorCode"] == 87 and "inflates past" in r["ErrorMessage"]
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 0
    # just under the limit inflates and is stored
    small = gz(record(0, key=None, value=bytes(900 << 10)))
    assert produce_result(call(c, 0, 8, produce_body("t", 0, raw_batch(small, 1, attr=1)), corr=2))["ErrorCode"] == 0


def test_a_lying_max_timestamp_is_rewritten_as_kafka_does(kafka):
    """maxTimestamp below the records' largest would make retention and time
    lookups skip them: the broker rewrites it (and the CRC), the client's own
    CRC having been checked first."""
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    c = kafka.raw()
    recs = record(0, ts_delta=0) + record(1, ts_delta=7_000) + record(2, ts_delta=3_000)
    for attr, data in ((0, recs), (1, gz(recs))):
        b = raw_batch(data, 3, max_ts=TS, attr=attr)
        assert produce_result(call(c, 0, 8, produce_body("t", 0, b)))["ErrorCode"] == 0
    stored = fetch_all(c)
    n = struct.unpack_from(">i", stored, 8)[0] + 12
    for one in (stored[:n], stored[n:]):
        assert struct.unpack_from(">q", one, 35)[0] == TS + 7_000
    assert [t for _, _, _, t in decode_batches(stored)] == [TS, TS + 7000, TS + 3000] * 2
    # a damaged batch is not re-signed
    bad = bytearray(raw_batch(recs, 3, max_ts=TS))
    bad[-1] ^= 1
    assert produce_result(call(c, 0, 8, produce_body("t", 0, bytes(bad))))["ErrorCode"] == 2


def test_mutated_batches_never_reach_a_consumer_as_garbage(kafka):
    """Chaos: 400 valid batches (plain and gzip), each with random bytes of
    its records section flipped, inserted or cut and then re-signed. Whatever
    the listener accepts must read back through Fetch (kafka-python's decoder)
    and the native consumer as whole records with consecutive offsets."""
    kafka.log.create_topic("t", ring_bytes=1 << 22, persistence="none")
    c = kafka.raw()
    rnd = random.Random(1106)
    accepted = refused = 0
    for i in range(400):
        n = rnd.randint(1, 6)
        recs = b"".join(
            record(
                j,
                key=rnd.randbytes(rnd.randint(0, 5)),
                value=rnd.randbytes(rnd.randint(0, 20)),
                ts_delta=rnd.randint(0, 50),
                headers=[(b"h", b"x")] * rnd.randint(0, 2),
            )
            for j in range(n)
        )
        data = bytearray(recs)
        for _ in range(rnd.randint(1, 3)):
            op, pos = rnd.random(), rnd.randrange(len(data))
            if op < 0.6:
                data[pos] ^= 1 << rnd.randrange(8)
            elif op < 0.8:
                data[pos:pos] = rnd.randbytes(rnd.randint(1, 3))
            else:
                del data[pos : pos + rnd.randint(1, 3)]
        compressed = i % 2 == 1
        b = raw_batch(gz(bytes(data)) if compressed else bytes(data), n, attr=1 if compressed else 0, max_ts=TS + 50)
        code = produce_result(call(c, 0, 8, produce_body("t", 0, b), corr=i))["ErrorCode"]
        assert code in (0, 87), code
        accepted += code == 0
        refused += code == 87
    assert refused > 100 and accepted > 20, (accepted, refused)
    end = kafka.log.describe_topic("t").partitions[0].end_offset
    seen, off = [], 0
    from kafka.record.default_records import DefaultRecordBatch  # noqa: F401

    while off < end:
        p = call(c, 1, 11, fetch_body("t", 0, off, max_bytes=1 << 20), corr=10_000 + off)["Responses"][0]["Partitions"][
            0
        ]
        assert p["ErrorCode"] == 0 and p["Records"]
        seen += [o for o, *_ in decode_batches(bytes(p["Records"])) if o >= off]
        off = seen[-1] + 1
    assert seen == list(range(end))
    with kafka.log.consumer(auto_offset_reset="earliest") as cons:
        cons.assign([("t", 0)])
        got = []
        for _ in range(200):
            got += cons.poll_batch(1000, timeout=0.2)
            if len(got) >= end:
                break
    assert [m.offset for m in got] == list(range(end))
