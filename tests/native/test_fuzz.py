"""test_fuzz.py — the C decoders against hostile bytes (hypothesis).

Every input is placed so that it ends exactly at a PROT_NONE guard page: a
decoder that reads one byte past its input crashes the test instead of
silently reading neighbouring heap. Checked: shm_batch_decode,
shm_batch_validate and shm_headers_decode never crash, never report a start
or length outside their input, and return either records or SHM_E_CORRUPT;
every single-bit flip of a valid batch inside its CRC/length/magic is
rejected; and a ring whose data area is damaged is read, sought and
appended to without crashing or hanging.
"""

import ctypes
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmlog import liveness
from shmlog._native import ffi, lib
from shmlog.records import encode_headers

# the suite runs on a loaded 2-core box: slow generation is not a failure
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=SLOW_OK)


class Guarded:
    """size bytes of anonymous memory followed by an inaccessible page."""

    def __init__(self, size):
        self.size = (size + PAGE - 1) // PAGE * PAGE
        self.map = mmap.mmap(-1, self.size + PAGE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        if _libc.mprotect(self.addr + self.size, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    def place(self, data: bytes):
        """Copies data so that its last byte is the last accessible byte; returns a pointer to it."""
        n = len(data)
        assert n <= self.size
        start = self.addr + self.size - n
        ctypes.memmove(start, data, n)
        return ffi.cast("uint8_t *", start)

    def base(self):
        return ffi.cast("uint8_t *", self.addr)


_INPUT = Guarded(64 << 10)

_OUT_FIELDS = dict(ffi.typeof("struct shm_records_out").fields)
MAX_ROWS = 70_000


class Out:
    def __init__(self, n):
        self.out = ffi.new("struct shm_records_out *")
        self.out.max_records = n
        if "rows" in _OUT_FIELDS:
            self.rows = ffi.new("int64_t[]", n * lib.SHM_ROW_FIELDS)
            self.out.rows = self.rows
        else:  # older builds: one array per field
            self.arrays = [ffi.new("int64_t[]", n) for _ in range(8)]
            for k, a in zip(
                (
                    "offsets",
                    "timestamps",
                    "key_starts",
                    "key_lens",
                    "value_starts",
                    "value_lens",
                    "header_starts",
                    "header_counts",
                ),
                self.arrays,
            ):
                setattr(self.out, k, a)

    def reset(self, n=None):
        self.out.count = 0
        self.out.compressed = 0
        if n is not None:
            self.out.max_records = n

    def row(self, j):
        """(offset, ts, key_start, key_len, value_start, value_len, header_start, header_count)"""
        if "rows" in _OUT_FIELDS:
            r = self.rows[j * lib.SHM_ROW_FIELDS : (j + 1) * lib.SHM_ROW_FIELDS]
            return (
                r[lib.SHM_ROW_OFFSET],
                r[lib.SHM_ROW_TIMESTAMP],
                r[lib.SHM_ROW_KEY_START],
                r[lib.SHM_ROW_KEY_LEN],
                r[lib.SHM_ROW_VALUE_START],
                r[lib.SHM_ROW_VALUE_LEN],
                r[lib.SHM_ROW_HEADER_START],
                r[lib.SHM_ROW_HEADER_COUNT],
            )
        return tuple(a[j] for a in self.arrays)


_OUT = Out(MAX_ROWS)
_HDR_ARRAYS = [ffi.new("int64_t[]", 4096) for _ in range(4)]


def encode(values, keys=None, headers=None, base_offset=0, ts=1_700_000_000_000) -> bytes:
    keep = []
    inp = ffi.new("struct shm_batch_in *")
    inp.count = len(values)
    vblob = b"".join(v for v in values if v)
    vl = ffi.new("int64_t[]", [-1 if v is None else len(v) for v in values])
    keep += [vblob, vl]
    inp.values, inp.value_lens = (ffi.from_buffer(vblob) if vblob else ffi.NULL), vl
    if keys is not None:
        kblob = b"".join(k for k in keys if k)
        kl = ffi.new("int64_t[]", [-1 if k is None else len(k) for k in keys])
        keep += [kblob, kl]
        inp.keys, inp.key_lens = (ffi.from_buffer(kblob) if kblob else ffi.NULL), kl
    if headers is not None:
        secs = [encode_headers(h) for h in headers]
        hblob = b"".join(secs)
        hl = ffi.new("int64_t[]", [len(s) for s in secs])
        keep += [hblob, hl]
        inp.headers, inp.header_lens = ffi.from_buffer(hblob), hl
    size = lib.shm_batch_encoded_size(inp)
    dst = ffi.new("uint8_t[]", size)
    assert lib.shm_batch_encode(dst, size, inp, base_offset, ts) == size
    return bytes(ffi.buffer(dst, size))


def check_decode(data: bytes, min_offset=0):
    """Decodes data at the guard page; asserts the result stays inside it."""
    n = len(data)
    p = _INPUT.place(data)
    base = 1 << 20  # starts are reported relative to this
    _OUT.reset(max(n, 1))
    rc = lib.shm_batch_decode(p, n, base, min_offset, _OUT.out)
    assert rc >= 0 or rc == lib.SHM_E_CORRUPT, rc
    count = _OUT.out.count
    if rc >= 0:
        assert rc == count
    assert count <= max(n, 1)
    lo, hi = base, base + n
    for j in range(count):
        off, ts, ks, kl, vs, vl, hs, hc = _OUT.row(j)
        assert off >= min_offset
        assert kl >= -1 and vl >= -1 and hc >= 0
        assert lo <= ks <= hi and ks + max(kl, 0) <= hi, (ks, kl, lo, hi)
        assert lo <= vs <= hi and vs + max(vl, 0) <= hi, (vs, vl, lo, hi)
        assert lo <= hs <= hi, (hs, lo, hi)
        assert ks + max(kl, 0) <= vs <= hs  # key, value, headers in order
        # the headers section it points at decodes within the input, with that many pairs
        rest = hi - hs
        if hc <= 4096:
            got = lib.shm_headers_decode(p + (hs - lo), rest, 4096, *_HDR_ARRAYS)
            assert got == hc
            for h in range(got):
                assert 0 <= _HDR_ARRAYS[0][h] and _HDR_ARRAYS[0][h] + _HDR_ARRAYS[1][h] <= rest
                assert _HDR_ARRAYS[2][h] <= rest and _HDR_ARRAYS[2][h] + max(_HDR_ARRAYS[3][h], 0) <= rest
    v = lib.shm_batch_validate(p, n)
    assert v in (lib.SHM_OK, lib.SHM_E_CORRUPT)
    return rc, v


# ---------------------------------------------------------------- strategies

_bytes_or_none = st.one_of(st.none(), st.binary(max_size=64))
_hdr = st.lists(st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=16))), max_size=3)


@st.composite
def valid_batches(draw):
    n = draw(st.integers(1, 12))
    values = draw(st.lists(_bytes_or_none, min_size=n, max_size=n))
    keys = draw(st.one_of(st.none(), st.lists(_bytes_or_none, min_size=n, max_size=n)))
    headers = draw(st.one_of(st.none(), st.lists(_hdr, min_size=n, max_size=n)))
    base = draw(st.integers(0, 2**40))
    return encode(values, keys, headers, base_offset=base)


def _varint(n):
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


@st.composite
def mutated_batches(draw):
    b = bytearray(draw(valid_batches()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["flip", "flip", "truncate", "length", "count", "varint", "splice", "extend", "byte"])
        )
        if not b:
            break
        if op == "flip":
            i = draw(st.integers(0, len(b) * 8 - 1))
            b[i // 8] ^= 1 << (i % 8)
        elif op == "truncate":
            del b[draw(st.integers(0, len(b) - 1)) :]
        elif op == "length" and len(b) >= 12:
            b[8:12] = draw(st.integers(-(2**31), 2**31 - 1)).to_bytes(4, "big", signed=True)
        elif op == "count" and len(b) >= 61:
            b[57:61] = draw(st.sampled_from([0, 1, 2, 1000, 2**31 - 1, -1, len(b)])).to_bytes(4, "big", signed=True)
        elif op == "varint" and len(b) > 61:
            # overwrite some varint-ish spot in the records with an extreme varint
            at = draw(st.integers(61, len(b) - 1))
            v = _varint(
                draw(st.sampled_from([-2, -1, 0, 1, 127, 2**31 - 1, -(2**31), 2**62, -(2**63), len(b), len(b) + 1]))
            )
            b[at : at + len(v)] = v
        elif op == "splice":
            at = draw(st.integers(0, len(b)))
            b[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "extend":
            b += draw(st.binary(min_size=1, max_size=32))
        elif op == "byte":
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


@st.composite
def header_then_garbage(draw):
    """A plausible 61-byte header (magic 2, small count, any attributes) over random records."""
    body = draw(st.binary(max_size=400))
    count = draw(st.integers(0, 40))
    attr = draw(st.sampled_from([0, 0, 0, 0x08, 0x01, 0x20, 0x10]))
    hdr = (
        draw(st.integers(0, 2**40)).to_bytes(8, "big")
        + (len(body) + 49).to_bytes(4, "big")
        + bytes(4)
        + b"\x02"
        + bytes(4)
        + attr.to_bytes(2, "big")
        + (count - 1 if count else 0).to_bytes(4, "big")
        + bytes(16)
        + b"\xff" * 14
        + count.to_bytes(4, "big")
    )
    assert len(hdr) == 61
    return hdr + body


# ---------------------------------------------------------------- decode


def test_guard_page_is_armed():
    # sanity: the guard really is inaccessible (checked in a child, which must die of SIGSEGV)
    pid = os.fork()
    if pid == 0:
        try:
            import faulthandler

            faulthandler.disable()  # the crash is the expected outcome
            ffi.cast("volatile uint8_t *", _INPUT.addr + _INPUT.size)[0]
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) in (11, 7)


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_random_bytes(data):
    check_decode(data)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(header_then_garbage())
def test_decode_plausible_header_random_records(data):
    check_decode(data)


@FUZZ
@given(mutated_batches(), st.integers(0, 2**41))
def test_decode_mutated_batches(data, min_offset):
    rc, valid = check_decode(data, min_offset=min_offset % 3 if min_offset & 1 else min_offset)
    if valid == lib.SHM_OK:
        assert rc >= 0  # what validates also decodes


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(valid_batches())
def test_valid_batches_decode_fully(data):
    rc, valid = check_decode(data)
    assert valid == lib.SHM_OK
    assert rc == int.from_bytes(data[57:61], "big")


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(st.binary(max_size=600))
def test_headers_decode_random_bytes(data):
    n = len(data)
    p = _INPUT.place(data)
    got = lib.shm_headers_decode(p, n, 4096, *_HDR_ARRAYS)
    assert got >= 0 or got == lib.SHM_E_CORRUPT
    for h in range(max(got, 0)):
        ks, kl, vs, vl = (a[h] for a in _HDR_ARRAYS)
        assert kl >= 0 and vl >= -1
        assert 0 <= ks and ks + kl <= n and 0 <= vs and vs + max(vl, 0) <= n


# ---------------------------------------------------------------- validate vs single bit flips

# bytes the CRC (attributes..end), the length field and the magic protect; baseOffset (0-7) and
# partitionLeaderEpoch (12-15) are outside Kafka's CRC by design (brokers rewrite them)
PROTECTED = lambda n: [i for i in range(8, n) if not 12 <= i < 16]  # noqa: E731


def _fixed_batches():
    return [
        encode([b"x"]),
        encode([b"hello", None, b""], keys=[b"k", None, b""], headers=[[("a", b"1")], [], [("n", None)]]),
        encode([bytes(range(256))] * 3, base_offset=12345),
    ]


def test_validate_rejects_every_single_bit_flip_exhaustive():
    for raw in _fixed_batches():
        n = len(raw)
        assert lib.shm_batch_validate(_INPUT.place(raw), n) == lib.SHM_OK
        b = bytearray(raw)
        for i in PROTECTED(n):
            for bit in range(8):
                b[i] ^= 1 << bit
                assert lib.shm_batch_validate(_INPUT.place(bytes(b)), n) == lib.SHM_E_CORRUPT, (i, bit)
                b[i] ^= 1 << bit
        # outside the CRC: accepted (Kafka's format), and decoding still stays in bounds
        for i in list(range(0, 8)) + list(range(12, 16)):
            b[i] ^= 0x10
            assert lib.shm_batch_validate(_INPUT.place(bytes(b)), n) == lib.SHM_OK
            check_decode(bytes(b))
            b[i] ^= 0x10


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(valid_batches(), st.randoms(use_true_random=False))
def test_validate_rejects_single_bit_flip(raw, rnd):
    n = len(raw)
    protected = PROTECTED(n)
    b = bytearray(raw)
    for i in rnd.sample(protected, min(len(protected), 100)):
        bit = rnd.randrange(8)
        b[i] ^= 1 << bit
        assert lib.shm_batch_validate(_INPUT.place(bytes(b)), n) == lib.SHM_E_CORRUPT, (i, bit)
        b[i] ^= 1 << bit
    i = rnd.choice(protected)
    b[i] ^= 1 << rnd.randrange(8)
    check_decode(bytes(b))


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(valid_batches(), st.binary(min_size=1, max_size=8))
def test_validate_rejects_truncation_and_extension(raw, extra):
    for cut in list(range(min(len(raw), 80))) + list(range(max(80, len(raw) - 80), len(raw))):
        assert lib.shm_batch_validate(_INPUT.place(raw[:cut]), cut) == lib.SHM_E_CORRUPT
    longer = raw + extra
    assert lib.shm_batch_validate(_INPUT.place(longer), len(longer)) == lib.SHM_E_CORRUPT


# ---------------------------------------------------------------- a damaged ring

RING_CAP = 1 << 16
_RING = Guarded(lib.SHM_RING_HEADER_BYTES + RING_CAP)
assert _RING.size == lib.SHM_RING_HEADER_BYTES + RING_CAP
_READ_BUF = Guarded(1 << 20)
_TOKEN = ffi.new("char[]", b"/dev/shm/shmlog-fuzz-no-such-token.")
_HANDLE = ffi.new("struct shm_ring *")


def _fresh_ring():
    ctypes.memset(_RING.addr, 0, _RING.size)
    base = ffi.cast("void *", _RING.addr)
    assert lib.shm_ring_init(base, RING_CAP, 1, 0, 0, RING_CAP // 4, 0, 0) == lib.SHM_OK
    assert lib.shm_ring_check(base, _RING.size) == lib.SHM_OK
    h = _HANDLE
    assert lib.shm_ring_open(h, base, _RING.size, 1) == lib.SHM_OK
    slot = lib.shm_ring_claim_slot(h, os.getpid(), liveness.start_time(), _TOKEN)
    assert slot >= 0
    ctx = ffi.new("struct shm_send_ctx *")
    ctx.ring = h
    ctx.slot = slot
    ctx.timeout_ns = 1_000_000  # never wait long for room
    ctx.unblock_ns = 10**12  # never seal (we are alive anyway)
    ctx.token_prefix = _TOKEN
    return h, ctx


def _append(ctx, values):
    keep = []
    inp = ffi.new("struct shm_batch_in *")
    inp.count = len(values)
    blob = b"".join(values)
    lens = ffi.new("int64_t[]", [len(v) for v in values])
    keep += [blob, lens]
    inp.values, inp.value_lens = ffi.from_buffer(blob), lens
    inp.timestamp_ms = 1
    out = ffi.new("struct shm_append_out *")
    return lib.shm_send_batch(ctx, inp, out)


def _read_all(base, verify, max_records=64):
    cur = ffi.new("struct shm_cursor *")
    cur.stuck_pos = 2**64 - 1
    rc = lib.shm_ring_seek(base, cur, 0)
    assert rc >= 0 or rc in (lib.SHM_E_CORRUPT, lib.SHM_E_OUT_OF_RANGE)
    if rc != lib.SHM_OK:
        cur.pos, cur.next_offset = 0, 0
    buf = _READ_BUF.base()
    cap = _READ_BUF.size
    results = []
    for _ in range(2000):
        _OUT.reset(max_records)
        rc = lib.shm_ring_read(base, cur, buf, cap, verify, -1, _OUT.out)
        assert rc >= 0 or rc in (lib.SHM_E_CORRUPT, lib.SHM_E_OUT_OF_RANGE), rc
        out = _OUT.out
        assert out.bytes_used <= cap and out.count <= max_records
        for j in range(out.count):
            off, ts, ks, kl, vs, vl, hs, hc = _OUT.row(j)
            assert 0 <= ks and ks + max(kl, 0) <= out.bytes_used
            assert 0 <= vs and vs + max(vl, 0) <= out.bytes_used
            assert 0 <= hs <= out.bytes_used
            results.append(off)
        if rc == 0 and out.compressed:
            # a compressed frame (a damaged attributes byte with verify off) is left
            # under the cursor for the caller to inflate: pass it as the consumer does
            batch = ffi.cast("uint8_t *", buf) + out.batch_start
            cur.pos += (lib.SHM_FRAME_HEADER_BYTES + out.bytes_used - out.batch_start + 7) & ~7
            cur.next_offset = cur.expect_base = lib.shm_batch_base_offset(batch) + lib.shm_batch_last_delta(batch) + 1
            continue
        if rc < 0 or (out.count == 0 and out.frames == 0 and out.gaps == 0):
            return rc, results
    pytest.fail("shm_ring_read made no end of the ring")


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=SLOW_OK)
@given(
    sizes=st.lists(st.lists(st.integers(0, 900), min_size=1, max_size=6), min_size=1, max_size=80),
    damage=st.lists(st.tuples(st.integers(0, RING_CAP - 1), st.integers(0, 255)), max_size=6),
    verify=st.sampled_from([0, 1]),
)
def test_damaged_ring_read_seek_append(sizes, damage, verify):
    base, ctx = _fresh_ring()
    for batch in sizes:  # may lap the 64 KiB ring
        assert _append(ctx, [bytes([len(batch)]) * n for n in batch]) >= 0
    ends = ffi.new("int64_t[2]")
    pos = ffi.new("uint64_t[2]")
    lib.shm_ring_ends(base.hdr, ends, ends + 1, pos, pos + 1)
    rc, offs = _read_all(base, verify)
    assert rc >= 0 and offs == list(range(ends[0], ends[1]))  # undamaged: everything

    for at, val in damage:  # damage the data area
        ffi.cast("uint8_t *", _RING.addr)[lib.SHM_RING_HEADER_BYTES + at] = val
    _read_all(base, verify)
    cur = ffi.new("struct shm_cursor *")
    for off in {0, ends[0], (ends[0] + ends[1]) // 2, ends[1], ends[1] + 5}:
        assert lib.shm_ring_seek(base, cur, off) in (lib.SHM_OK, lib.SHM_E_CORRUPT, lib.SHM_E_OUT_OF_RANGE)
    for _ in range(40):  # appending over the damage must not hang or crash
        rc = _append(ctx, [b"z" * 1500])
        assert rc in (lib.SHM_OK, lib.SHM_E_CORRUPT, lib.SHM_E_FULL), rc
    _read_all(base, verify)
