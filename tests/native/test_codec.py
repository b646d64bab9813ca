"""test_codec.py — CRC-32C, murmur2 and Kafka RecordBatch v2, checked against
known vectors and an independent pure-Python reading of Kafka's spec.

The pure-Python codec below is written from Kafka's documentation of the
v2 format (big-endian 61-byte batch header, CRC-32C over attributes..end,
zig-zag varint records), not from csrc/batch.c, so it checks the bytes the
C encoder produces rather than restating them.
"""

import random
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmlog import errors
from shmlog._native import crc32c, ffi, lib, murmur2
from shmlog.records import decode_headers, encode_headers

# the suite runs on a loaded 2-core box: slow generation is not a failure
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

# ---------------------------------------------------------------- pure-Python references


def _crc32c_table():
    tab = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        tab.append(c)
    return tab


_CRC_TAB = _crc32c_table()


def py_crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TAB[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def py_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2, transcribed from the Java (32-bit wrapping ints)."""
    m, r = 0x5BD1E995, 24
    M = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & M
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & M
        k ^= k >> r
        k = (k * m) & M
        h = (h * m) & M
        h ^= k
    rest = length % 4
    t = length & ~3
    if rest == 3:
        h ^= data[t + 2] << 16
    if rest >= 2:
        h ^= data[t + 1] << 8
    if rest >= 1:
        h ^= data[t]
        h = (h * m) & M
    h ^= h >> 13
    h = (h * m) & M
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def zz_varint(n: int) -> bytes:
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def read_varint(buf, i):
    z = shift = 0
    while True:
        assert i < len(buf), "varint runs past the end"
        assert shift < 70, "varint longer than 10 bytes"
        b = buf[i]
        i += 1
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), i
        shift += 7


HEADER = struct.Struct(">qiibIhiqqqhii")
assert HEADER.size == 61


def py_decode_batch(buf: bytes) -> dict:
    """Kafka RecordBatch v2 -> dict; asserts every structural rule of the spec."""
    (
        base_offset,
        batch_length,
        leader_epoch,
        magic,
        crc,
        attributes,
        last_delta,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_seq,
        count,
    ) = HEADER.unpack_from(buf, 0)
    assert magic == 2
    assert batch_length == len(buf) - 12, "batchLength counts the bytes after itself"
    assert crc == py_crc32c(buf[21:]), "CRC-32C over attributes..end"
    records = []
    i = 61
    for _ in range(count):
        rlen, i = read_varint(buf, i)
        start = i
        rec_attr = buf[i]
        i += 1
        ts_delta, i = read_varint(buf, i)
        off_delta, i = read_varint(buf, i)
        kl, i = read_varint(buf, i)
        key = None if kl < 0 else bytes(buf[i : i + kl])
        i += max(kl, 0)
        vl, i = read_varint(buf, i)
        value = None if vl < 0 else bytes(buf[i : i + vl])
        i += max(vl, 0)
        hn, i = read_varint(buf, i)
        headers = []
        for _ in range(hn):
            hkl, i = read_varint(buf, i)
            hk = bytes(buf[i : i + hkl]).decode()
            i += hkl
            hvl, i = read_varint(buf, i)
            hv = None if hvl < 0 else bytes(buf[i : i + hvl])
            i += max(hvl, 0)
            headers.append((hk, hv))
        assert i - start == rlen, "record length varint must equal the record's bytes"
        records.append(
            dict(
                attributes=rec_attr,
                offset=base_offset + off_delta,
                offset_delta=off_delta,
                timestamp=base_ts + ts_delta,
                key=key,
                value=value,
                headers=tuple(headers),
            )
        )
    assert i == len(buf), "batch must end right after its last record"
    if records:
        assert last_delta == records[-1]["offset_delta"]
    return dict(
        base_offset=base_offset,
        leader_epoch=leader_epoch,
        attributes=attributes,
        last_offset_delta=last_delta,
        base_ts=base_ts,
        max_ts=max_ts,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_seq=base_seq,
        count=count,
        records=records,
    )


def py_encode_batch(
    records,
    base_offset,
    base_ts,
    *,
    attributes=0,
    max_ts=None,
    producer_id=-1,
    producer_epoch=-1,
    base_seq=-1,
    leader_epoch=0,
):
    """records: dicts with value, key, headers (list of pairs), offset_delta, ts_delta."""
    body = bytearray()
    for r in records:
        rec = bytearray(b"\0")
        rec += zz_varint(r.get("ts_delta", 0)) + zz_varint(r["offset_delta"])
        for f in (r.get("key"), r.get("value")):
            rec += zz_varint(-1) if f is None else zz_varint(len(f)) + f
        hs = r.get("headers") or []
        rec += zz_varint(len(hs))
        for hk, hv in hs:
            kb = hk.encode()
            rec += zz_varint(len(kb)) + kb
            rec += zz_varint(-1) if hv is None else zz_varint(len(hv)) + hv
        body += zz_varint(len(rec)) + rec
    last = records[-1]["offset_delta"] if records else 0
    tail = struct.pack(
        ">hiqqqhii",
        attributes,
        last,
        base_ts,
        base_ts if max_ts is None else max_ts,
        producer_id,
        producer_epoch,
        base_seq,
        len(records),
    ) + bytes(body)
    head = struct.pack(">qiib", base_offset, len(tail) + 4 + 1 + 4, leader_epoch, 2)
    return head + struct.pack(">I", py_crc32c(tail)) + tail


# ---------------------------------------------------------------- C codec helpers


class CBatch:
    """Builds a struct shm_batch_in (keeping its buffers alive)."""

    def __init__(self, values, keys=None, headers=None, timestamp_ms=-1):
        self.keep = []
        inp = ffi.new("struct shm_batch_in *")
        inp.count = len(values)
        vblob = b"".join(v for v in values if v)
        vl = ffi.new("int64_t[]", [-1 if v is None else len(v) for v in values] or [0])
        self.keep += [vblob, vl]
        inp.values = ffi.from_buffer(vblob) if vblob else ffi.NULL
        inp.value_lens = vl
        if keys is not None:
            kblob = b"".join(k for k in keys if k)
            kl = ffi.new("int64_t[]", [-1 if k is None else len(k) for k in keys])
            self.keep += [kblob, kl]
            inp.keys = ffi.from_buffer(kblob) if kblob else ffi.NULL
            inp.key_lens = kl
        if headers is not None:
            secs = [encode_headers(h or []) for h in headers]
            hblob = b"".join(secs)
            hl = ffi.new("int64_t[]", [len(s) for s in secs])
            self.keep += [hblob, hl]
            inp.headers = ffi.from_buffer(hblob)
            inp.header_lens = hl
        inp.timestamp_ms = timestamp_ms
        self.inp = inp

    def encode(self, base_offset=0, timestamp_ms=1_700_000_000_000) -> bytes:
        size = lib.shm_batch_encoded_size(self.inp)
        assert size > 0
        dst = ffi.new("uint8_t[]", size)
        n = lib.shm_batch_encode(dst, size, self.inp, base_offset, timestamp_ms)
        assert n == size
        return bytes(ffi.buffer(dst, n))


_OUT_FIELDS = dict(ffi.typeof("struct shm_records_out").fields)
ROW_NAMES = (
    "offsets",
    "timestamps",
    "key_starts",
    "key_lens",
    "value_starts",
    "value_lens",
    "header_starts",
    "header_counts",
)


class Out:
    """A struct shm_records_out with its storage: row-major int64 rows
    (SHM_ROW_FIELDS per record) or, in older builds, one array per field."""

    def __init__(self, n):
        self.n = max(n, 1)
        self.out = ffi.new("struct shm_records_out *")
        self.out.max_records = n
        if "rows" in _OUT_FIELDS:
            self.rows = ffi.new("int64_t[]", self.n * lib.SHM_ROW_FIELDS)
            self.out.rows = self.rows
        else:
            self.arrays = {k: ffi.new("int64_t[]", self.n) for k in ROW_NAMES}
            for k, a in self.arrays.items():
                setattr(self.out, k, a)

    def row(self, j) -> dict:
        """Record j as {field name: value}."""
        if "rows" in _OUT_FIELDS:
            r = self.rows[j * lib.SHM_ROW_FIELDS : (j + 1) * lib.SHM_ROW_FIELDS]
            idx = dict(
                offsets=lib.SHM_ROW_OFFSET,
                timestamps=lib.SHM_ROW_TIMESTAMP,
                key_starts=lib.SHM_ROW_KEY_START,
                key_lens=lib.SHM_ROW_KEY_LEN,
                value_starts=lib.SHM_ROW_VALUE_START,
                value_lens=lib.SHM_ROW_VALUE_LEN,
                header_starts=lib.SHM_ROW_HEADER_START,
                header_counts=lib.SHM_ROW_HEADER_COUNT,
            )
            return {k: r[i] for k, i in idx.items()}
        return {k: self.arrays[k][j] for k in ROW_NAMES}


def c_decode(batch: bytes, *, pad_before=0, min_offset=0, max_records=None):
    """Decodes with shm_batch_decode; returns (rc, records as dicts)."""
    buf = bytes(pad_before) + batch
    cbuf = ffi.from_buffer(buf)
    o = Out(max_records if max_records is not None else len(batch))
    rc = lib.shm_batch_decode(cbuf + pad_before, len(batch), pad_before, min_offset, o.out)
    recs = []
    for j in range(o.out.count):
        r = o.row(j)
        ks, kl, vs, vl = r["key_starts"], r["key_lens"], r["value_starts"], r["value_lens"]
        hs, hc = r["header_starts"], r["header_counts"]
        recs.append(
            dict(
                offset=r["offsets"],
                timestamp=r["timestamps"],
                key=None if kl < 0 else buf[ks : ks + kl],
                value=None if vl < 0 else buf[vs : vs + vl],
                headers=decode_headers(buf, hs) if hc else (),
                header_count=hc,
            )
        )
    return rc, recs, o.out


# ---------------------------------------------------------------- CRC-32C


def test_crc32c_known_vector():
    assert lib.shm_crc32c(0, b"123456789", 9) == 0xE3069283
    assert lib.shm_crc32c_portable(0, b"123456789", 9) == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert py_crc32c(b"123456789") == 0xE3069283
    assert lib.shm_crc32c(0, b"", 0) == 0
    # RFC 3720 (iSCSI) B.4 test vectors
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_hardware_equals_portable_random_lengths_and_alignments():
    rng = random.Random(0xC4C)
    big = bytearray(rng.randbytes(100_000 + 16))
    mv = memoryview(big)
    lengths = [
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        15,
        16,
        17,
        31,
        63,
        64,
        65,
        255,
        256,
        257,
        1023,
        4096,
        4097,
        65536,
        99_999,
        100_000,
    ] + [rng.randrange(0, 100_001) for _ in range(60)]
    for n in lengths:
        for off in range(0, 8):
            cb = ffi.from_buffer(mv[off : off + n])
            hw = lib.shm_crc32c(0, cb, n)
            sw = lib.shm_crc32c_portable(0, cb, n)
            assert hw == sw, f"len {n} offset {off}: hardware {hw:#x} != portable {sw:#x}"
            # and a non-zero seed
            assert lib.shm_crc32c(0xDEADBEEF, cb, n) == lib.shm_crc32c_portable(0xDEADBEEF, cb, n)
    # the references agree on small inputs at every alignment
    for n in (0, 1, 7, 8, 9, 33, 100, 1000):
        for off in range(1, 8):
            chunk = bytes(mv[off : off + n])
            assert lib.shm_crc32c(0, ffi.from_buffer(mv[off : off + n]), n) == py_crc32c(chunk)


def test_crc32c_copy_is_a_copy_and_the_same_checksum_at_every_alignment():
    """shm_crc32c_copy (the producer's fused copy + CRC of large values): the
    bytes land exactly, nothing past them is written, the checksum is
    shm_crc32c's, for source and destination misaligned independently."""
    rng = random.Random(0xC0C)
    src_all = rng.randbytes(200_000 + 16)
    for n in [0, 1, 7, 8, 9, 63, 255, 767, 768, 769, 4096, 24_575, 24_576, 49_153, 100_000, 200_000] + [
        rng.randrange(0, 200_001) for _ in range(20)
    ]:
        for soff, doff in ((0, 0), (1, 0), (0, 3), (5, 7)):
            src = src_all[soff : soff + n]
            dst = ffi.new("uint8_t[]", n + 16)
            ffi.memmove(dst, b"\xee" * (n + 16), n + 16)
            c = lib.shm_crc32c_copy(0x1234, dst + doff, src, n)
            assert c == lib.shm_crc32c_portable(0x1234, src, n), (n, soff, doff)
            out = ffi.buffer(dst, n + 16)[:]
            assert out[doff : doff + n] == src
            assert out[:doff] == b"\xee" * doff and out[doff + n :] == b"\xee" * (16 - doff)


def test_crc32c_incremental_composition():
    rng = random.Random(7)
    for _ in range(100):
        data = rng.randbytes(rng.randrange(0, 5000))
        whole = crc32c(data)
        cut = rng.randrange(0, len(data) + 1)
        a, b = data[:cut], data[cut:]
        assert crc32c(b, crc32c(a)) == whole
        assert lib.shm_crc32c_portable(lib.shm_crc32c_portable(0, a, len(a)), b, len(b)) == whole
        # three pieces, mixing the two implementations
        cut2 = rng.randrange(cut, len(data) + 1)
        c1 = lib.shm_crc32c(0, data[:cut], cut)
        c2 = lib.shm_crc32c_portable(c1, data[cut:cut2], cut2 - cut)
        assert lib.shm_crc32c(c2, data[cut2:], len(data) - cut2) == whole


def test_crc32c_hardware_flag():
    assert lib.shm_crc32c_hardware() in (0, 1)


# ---------------------------------------------------------------- murmur2

KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key,expected", list(KAFKA_MURMUR2.items()))
def test_murmur2_kafka_vectors(key, expected):
    assert lib.shm_murmur2(key, len(key)) == expected
    assert murmur2(key) == expected
    assert py_murmur2(key) == expected


def test_murmur2_matches_reference_on_random_keys():
    rng = random.Random(2)
    for n in list(range(0, 20)) + [rng.randrange(0, 500) for _ in range(200)]:
        k = rng.randbytes(n)
        assert lib.shm_murmur2(k, n) == py_murmur2(k)


def test_producer_partition_is_kafka_default_partitioner(inst):
    n = 7
    inst.log.create_topic("keys", persistence="none", partitions=n, ring_bytes=1 << 16)
    with inst.log.producer() as p:
        for key in (
            list(KAFKA_MURMUR2) + [b"", b"k", b"\x00\xff", "ü".encode()] + [f"user-{i}".encode() for i in range(40)]
        ):
            expect = (py_murmur2(key) & 0x7FFFFFFF) % n
            assert p.send("keys", b"v", key=key).partition == expect, key
            assert p.send("keys", b"v", key=bytearray(key)).partition == expect


# ---------------------------------------------------------------- RecordBatch v2


def _sample_records():
    return dict(
        values=[b"v0", b"", None, b"x" * 300, bytes(range(256))],
        keys=[b"k0", None, b"", b"key-3" * 40, None],
        headers=[[("a", b"1")], None, [("n", None), ("e", b"")], [("ü-ключ", b"\x00" * 200)] * 3, []],
    )


def test_batch_encode_bytes_follow_kafka_spec():
    s = _sample_records()
    ts = 1_712_345_678_901
    raw = CBatch(s["values"], s["keys"], s["headers"]).encode(base_offset=1234, timestamp_ms=ts)
    d = py_decode_batch(raw)
    assert d["base_offset"] == 1234
    assert d["count"] == 5
    assert d["last_offset_delta"] == 4
    assert d["attributes"] == 0  # no compression, CreateTime, not transactional
    assert d["base_ts"] == d["max_ts"] == ts
    assert d["producer_id"] == -1 and d["producer_epoch"] == -1 and d["base_seq"] == -1
    for i, r in enumerate(d["records"]):
        assert r["attributes"] == 0
        assert r["offset_delta"] == i and r["offset"] == 1234 + i
        assert r["timestamp"] == ts
        assert r["value"] == s["values"][i]
        assert r["key"] == s["keys"][i]
        assert r["headers"] == tuple(s["headers"][i] or ())
    # same conventions, independent encoder: byte for byte identical
    recs = [
        dict(value=v, key=k, headers=h, offset_delta=i)
        for i, (v, k, h) in enumerate(zip(s["values"], s["keys"], s["headers"]))
    ]
    assert py_encode_batch(recs, 1234, ts) == raw
    assert lib.shm_batch_validate(raw, len(raw)) == lib.SHM_OK


def test_batch_without_keys_or_headers():
    raw = CBatch([b"a", b"bb", None]).encode(base_offset=0, timestamp_ms=5)
    d = py_decode_batch(raw)
    assert [r["key"] for r in d["records"]] == [None, None, None]
    assert [r["value"] for r in d["records"]] == [b"a", b"bb", None]
    assert all(r["headers"] == () for r in d["records"])
    rc, recs, _ = c_decode(raw)
    assert rc == 3 and [r["value"] for r in recs] == [b"a", b"bb", None]
    assert all(r["key"] is None and r["header_count"] == 0 for r in recs)


def test_batch_round_trip_through_c_decoder():
    s = _sample_records()
    raw = CBatch(s["values"], s["keys"], s["headers"]).encode(base_offset=77, timestamp_ms=99)
    for pad in (0, 3, 100):
        rc, recs, out = c_decode(raw, pad_before=pad)
        assert rc == 5 and out.count == 5
        for i, r in enumerate(recs):
            assert r["offset"] == 77 + i and r["timestamp"] == 99
            assert r["key"] == s["keys"][i] and r["value"] == s["values"][i]
            assert r["headers"] == tuple(s["headers"][i] or ())


def test_batch_decode_min_offset_and_small_output():
    raw = CBatch([b"%d" % i for i in range(10)]).encode(base_offset=100, timestamp_ms=1)
    rc, recs, _ = c_decode(raw, min_offset=104)
    assert rc == 6 and [r["offset"] for r in recs] == list(range(104, 110))
    assert [r["value"] for r in recs] == [b"%d" % i for i in range(4, 10)]
    rc, recs, _ = c_decode(raw, min_offset=1000)
    assert rc == 0 and recs == []
    rc, recs, out = c_decode(raw, max_records=3)
    assert rc == lib.SHM_E_BUFFER_SMALL
    assert [r["offset"] for r in recs] == [100, 101, 102]


def test_c_decoder_reads_independently_encoded_batches():
    # non-zero timestamp deltas, offset gaps (a compacted batch), odd producer fields
    recs = [
        dict(value=b"a", key=b"k", offset_delta=0, ts_delta=0),
        dict(value=None, key=None, offset_delta=3, ts_delta=-5, headers=[("h", None)]),
        dict(value=b"c" * 200, key=b"", offset_delta=9, ts_delta=1000),
    ]
    raw = py_encode_batch(
        recs, 50, 10_000, producer_id=42, producer_epoch=3, base_seq=7, leader_epoch=-1, max_ts=11_000
    )
    assert lib.shm_batch_validate(raw, len(raw)) == lib.SHM_OK
    assert lib.shm_batch_base_offset(raw) == 50 and lib.shm_batch_last_delta(raw) == 9
    rc, out, _ = c_decode(raw)
    assert rc == 3
    assert [r["offset"] for r in out] == [50, 53, 59]
    assert [r["timestamp"] for r in out] == [10_000, 9_995, 11_000]
    assert [r["value"] for r in out] == [b"a", None, b"c" * 200]
    assert [r["key"] for r in out] == [b"k", None, b""]
    assert out[1]["headers"] == (("h", None),)
    # LogAppendTime (attribute bit 3): every record carries maxTimestamp
    raw = py_encode_batch(recs, 50, 10_000, attributes=0x08, max_ts=77_777)
    rc, out, _ = c_decode(raw)
    assert rc == 3 and all(r["timestamp"] == 77_777 for r in out)
    # compressed (gzip) batches are counted, not decoded; control batches yield nothing
    rc, out, o = c_decode(py_encode_batch(recs, 50, 1, attributes=0x01))
    assert rc == 0 and out == [] and o.compressed == 1
    rc, out, o = c_decode(py_encode_batch(recs, 50, 1, attributes=0x20))
    assert rc == 0 and out == [] and o.compressed == 0


def test_batch_set_base_offset_keeps_crc_valid():
    raw = bytearray(CBatch([b"a", b"b"]).encode(base_offset=0, timestamp_ms=1))
    lib.shm_batch_set_base_offset(ffi.from_buffer(raw), 1 << 40)
    assert lib.shm_batch_base_offset(bytes(raw)) == 1 << 40
    assert struct.unpack_from(">q", raw, 0)[0] == 1 << 40
    assert lib.shm_batch_validate(bytes(raw), len(raw)) == lib.SHM_OK  # baseOffset is outside the CRC
    rc, recs, _ = c_decode(bytes(raw))
    assert [r["offset"] for r in recs] == [1 << 40, (1 << 40) + 1]


def test_batch_encode_rejects_bad_input():
    empty = ffi.new("struct shm_batch_in *")
    assert lib.shm_batch_encoded_size(empty) == lib.SHM_E_INVALID
    b = CBatch([b"a"])
    b.inp.value_lens[0] = -2
    assert lib.shm_batch_encoded_size(b.inp) == lib.SHM_E_INVALID
    b = CBatch([b"a"], keys=[b"k"])
    b.inp.key_lens[0] = -5
    assert lib.shm_batch_encoded_size(b.inp) == lib.SHM_E_INVALID
    b = CBatch([b"a"], headers=[[]])
    b.inp.header_lens[0] = 0  # a headers section is at least its count varint
    assert lib.shm_batch_encoded_size(b.inp) == lib.SHM_E_INVALID
    b = CBatch([b"abc", b"def"])
    size = lib.shm_batch_encoded_size(b.inp)
    dst = ffi.new("uint8_t[]", size)
    assert lib.shm_batch_encode(dst, size - 1, b.inp, 0, 0) == lib.SHM_E_BUFFER_SMALL
    assert lib.shm_batch_encode(dst, size, b.inp, 0, 0) == size


def test_packed_check():
    lens = ffi.new("int64_t[]", [3, -1, 0, 2])
    assert lib.shm_packed_check(lens, 4, 5) == 0
    assert lib.shm_packed_check(lens, 4, 6) != 0
    bad = ffi.new("int64_t[]", [3, -2])
    assert lib.shm_packed_check(bad, 2, 1) != 0


_values = st.one_of(st.none(), st.binary(max_size=300))
_hdrs = st.one_of(
    st.none(), st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=40))), max_size=4)
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(
    rows=st.lists(st.tuples(_values, _values, _hdrs), min_size=1, max_size=30),
    base=st.integers(0, 2**62),
    ts=st.integers(0, 2**62),
    with_keys=st.booleans(),
    with_headers=st.booleans(),
)
def test_batch_round_trip_property(rows, base, ts, with_keys, with_headers):
    values = [r[0] for r in rows]
    keys = [r[1] for r in rows] if with_keys else None
    headers = [r[2] for r in rows] if with_headers else None
    raw = CBatch(values, keys, headers).encode(base_offset=base, timestamp_ms=ts)
    assert lib.shm_batch_validate(raw, len(raw)) == lib.SHM_OK
    d = py_decode_batch(raw)
    rc, recs, _ = c_decode(raw, pad_before=5)
    assert rc == len(rows) == d["count"]
    for i, (p, c) in enumerate(zip(d["records"], recs)):
        want_key = keys[i] if keys else None
        want_hdr = tuple(headers[i] or ()) if headers else ()
        assert p["value"] == c["value"] == values[i]
        assert p["key"] == c["key"] == want_key
        assert p["headers"] == c["headers"] == want_hdr
        assert p["offset"] == c["offset"] == base + i
        assert c["timestamp"] == ts


# ---------------------------------------------------------------- headers (shmlog.records)


def _c_headers_encode(pairs):
    n = len(pairs)
    kb = [k.encode() for k, _ in pairs]
    keep = [ffi.from_buffer(k) for k in kb] + [ffi.from_buffer(v) if v else ffi.NULL for _, v in pairs]
    keys = ffi.new("const uint8_t *[]", keep[:n] or [ffi.NULL])
    vals = ffi.new("const uint8_t *[]", keep[n:] or [ffi.NULL])
    kl = ffi.new("int64_t[]", [len(k) for k in kb] or [0])
    vl = ffi.new("int64_t[]", [-1 if v is None else len(v) for _, v in pairs] or [0])
    cap = 16 + sum(len(k) + 10 for k in kb) + sum(len(v or b"") + 10 for _, v in pairs)
    dst = ffi.new("uint8_t[]", cap)
    r = lib.shm_headers_encode(dst, cap, n, keys, kl, vals, vl)
    assert r >= 0
    return bytes(ffi.buffer(dst, r))


def test_headers_encode_decode_forms():
    assert encode_headers({}) == b"\x00"
    assert decode_headers(b"\x00", 0) == ()
    d = {"a": b"1", "b": None, "c": b""}
    sec = encode_headers(d)
    assert decode_headers(sec, 0) == (("a", b"1"), ("b", None), ("c", b""))
    pairs = [("dup", b"1"), ("dup", b"2"), ("ü", bytearray(b"x")), ("m", memoryview(b"mv"))]
    sec = encode_headers(pairs)
    assert decode_headers(b"pad" + sec, 3) == (("dup", b"1"), ("dup", b"2"), ("ü", b"x"), ("m", b"mv"))
    # Kafka's layout: count, then keyLength key valueLength value (zig-zag varints)
    assert encode_headers([("k", b"vv"), ("n", None)]) == b"\x04" + b"\x02k" + b"\x04vv" + b"\x02n" + b"\x01"


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(st.lists(st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=200))), max_size=8))
def test_headers_python_and_c_agree(pairs):
    sec = encode_headers(pairs)
    assert sec == _c_headers_encode(pairs)
    assert decode_headers(sec, 0) == tuple(pairs)
    n = max(len(pairs), 1)
    arr = [ffi.new("int64_t[]", n) for _ in range(4)]
    got = lib.shm_headers_decode(sec, len(sec), n, *arr)
    assert got == len(pairs)
    for j, (k, v) in enumerate(pairs):
        ks, kl, vs, vl = (a[j] for a in arr)
        assert sec[ks : ks + kl] == k.encode()
        assert (None if vl < 0 else sec[vs : vs + vl]) == v


def test_headers_decode_truncated_raises_corrupt():
    sec = encode_headers([("key", b"value")])
    for cut in range(0, len(sec) - 5):  # cut inside the varints/key
        with pytest.raises(errors.CorruptRecord):
            decode_headers(sec[:cut], 0)
    arr = [ffi.new("int64_t[]", 4) for _ in range(4)]
    for cut in range(len(sec)):
        assert lib.shm_headers_decode(sec[:cut], cut, 4, *arr) == lib.SHM_E_CORRUPT


# ---------------------------------------------------------------- through a real ring


def test_ring_frame_bytes_are_kafka_batches(inst):
    """A record sent through the producer lands in the ring as frame header + RecordBatch v2."""
    import mmap

    d = inst.log.create_topic("frames", persistence="none", partitions=1, ring_bytes=1 << 16)
    t0 = int(time.time() * 1000)
    with inst.log.producer() as p:
        p.send("frames", b"hello", key=b"k", headers={"h": b"v"}, timestamp_ms=123456)
        p.send_batch("frames", [b"a", None, b"ccc"], partition=0)
    path = f"/dev/shm/{inst.prefix}{inst.kwargs['instance']}.g{d.generation}.p0"
    assert path == "/dev/shm" + inst.log.settings.ring_name(d.generation, 0)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        data = lib.SHM_RING_HEADER_BYTES
        pos, frames = 0, []
        for _ in range(2):
            commit, length, kind, flags = struct.unpack_from("<QIHH", m, data + pos)
            assert commit == pos ^ lib.SHM_COMMIT_XOR
            assert kind == lib.SHM_FRAME_DATA and flags == 0
            frames.append(py_decode_batch(bytes(m[data + pos + 16 : data + pos + length])))
            pos += (length + 7) & ~7
    a, b = frames
    assert a["base_offset"] == 0 and a["count"] == 1 and a["base_ts"] == 123456
    assert a["records"][0]["key"] == b"k" and a["records"][0]["value"] == b"hello"
    assert a["records"][0]["headers"] == (("h", b"v"),)
    assert b["base_offset"] == 1 and b["count"] == 3 and b["last_offset_delta"] == 2
    assert [r["value"] for r in b["records"]] == [b"a", None, b"ccc"]
    assert abs(b["base_ts"] - t0) < 60_000


def test_batch_with_large_values_fused_crc_is_kafkas():
    """Values of 4 KiB and more are copied and summed in one pass (batch.c,
    FUSED_COPY_MIN): the batch, mixed with small and null values, keys and
    headers, is what Kafka's own reader (kafka-python) accepts, CRC included."""
    from kafka.record.default_records import DefaultRecordBatch

    rng = random.Random(7)
    values = [rng.randbytes(n) for n in (100, 4095, 4096, 5000, 0, 70_000, 3, 200_000)] + [None]
    keys = [b"k%d" % i if i % 2 else None for i in range(len(values))]
    vbytes = b"".join(v or b"" for v in values)
    kbytes = b"".join(k or b"" for k in keys)
    inp = ffi.new("struct shm_batch_in *")
    inp.count = len(values)
    vl = ffi.new("int64_t[]", [-1 if v is None else len(v) for v in values])
    kl = ffi.new("int64_t[]", [-1 if k is None else len(k) for k in keys])
    vb, kb = ffi.from_buffer(vbytes), ffi.from_buffer(kbytes)
    inp.values, inp.value_lens, inp.keys, inp.key_lens = vb, vl, kb, kl
    inp.headers, inp.header_lens, inp.timestamp_ms = ffi.NULL, ffi.NULL, 1_700_000_000_000
    cap = len(vbytes) + 4096
    dst = ffi.new("uint8_t[]", cap)
    n = lib.shm_batch_encode(dst, cap, inp, 42, 1_700_000_000_000)
    assert n > 0
    raw = ffi.buffer(dst, n)[:]
    assert lib.shm_batch_validate(dst, n) == lib.SHM_OK
    b = DefaultRecordBatch(raw)
    assert b.validate_crc()
    got = [(r.offset, r.key, r.value) for r in b]
    assert got == [(42 + i, k, v) for i, (k, v) in enumerate(zip(keys, values))]
