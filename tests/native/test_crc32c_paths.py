"""Every path of shm_crc32c / shm_crc32c_copy this CPU has (the table, the
crc32c instruction, 128-bit pclmulqdq folding, 512-bit vpclmulqdq folding),
forced one at a time through shm_crc32c_path, held to the table path
(shm_crc32c_portable): every length 0..2048, every misalignment 0..63 of the
source and of the copy's destination, lengths up to 4 MiB, nonzero seeds and
incremental checksums, the copy's bytes and nothing past them."""

import random

import pytest

from shmlog._native import ffi, lib

BEST = lib.shm_crc32c_path(-1)
PATHS = list(range(lib.SHM_CRC32C_PATH_TABLE, BEST + 1))


@pytest.fixture(params=PATHS, ids=lambda p: ["table", "insn", "pclmul", "vpclmul"][p])
def path(request):
    assert lib.shm_crc32c_path(request.param) == request.param
    yield request.param
    assert lib.shm_crc32c_path(1000) == BEST  # the automatic choice again (handover included)


def aligned(buf, misalign, start=0):
    """A pointer into buf, past its first start bytes, at an address = misalign (mod 64)."""
    p = ffi.from_buffer("uint8_t[]", buf) + start
    return p + ((misalign - int(ffi.cast("uintptr_t", p))) % 64)


def portable(crc, data):
    return lib.shm_crc32c_portable(crc, data, len(data))


def test_path_hook_clamps_to_the_cpu():
    assert lib.shm_crc32c_path(-1) == BEST
    assert lib.shm_crc32c_path(1000) == BEST
    assert lib.shm_crc32c_path(-1) == BEST
    assert lib.shm_crc32c_hardware() == (BEST >= lib.SHM_CRC32C_PATH_INSN)


def test_check_value(path):
    assert lib.shm_crc32c(0, b"123456789", 9) == 0xE3069283
    dst = ffi.new("uint8_t[]", 9)
    assert lib.shm_crc32c_copy(0, dst, b"123456789", 9) == 0xE3069283
    # RFC 3720 B.4 vectors, and one long enough for every folding path
    assert lib.shm_crc32c(0, bytes(32), 32) == 0x8A9136AA
    assert lib.shm_crc32c(0, b"\xff" * 32, 32) == 0x62A8AB43
    big = bytes(range(256)) * 64
    assert lib.shm_crc32c(0, big, len(big)) == portable(0, big)


def test_every_length_to_2048(path):
    rng = random.Random(0xF01D)
    buf = bytearray(rng.randbytes(2048 + 128))
    for n in range(2049):
        # the misalignment walks with the length: every pair (n mod 64, misalignment) in turn
        for mis in (0, (n * 7 + 3) % 64):
            p = aligned(buf, mis)
            data = ffi.buffer(p, n)[:]
            seed = rng.getrandbits(32)
            assert lib.shm_crc32c(0, p, n) == portable(0, data), (n, mis)
            assert lib.shm_crc32c(seed, p, n) == portable(seed, data), (n, mis, seed)


def test_every_misalignment(path):
    rng = random.Random(0xA11)
    buf = bytearray(rng.randbytes(70_000))
    # around each path's boundaries: 64/128-byte rounds, the 16-byte lanes, the tail below 16,
    # FOLD_MIN (64), FOLD512_MIN (384) and FOLD512_COPY_MIN (640), the 256-byte rounds past an alignment
    # head, the 0..3 blocks and 0..3 lanes after the last round
    lengths = [
        63,
        64,
        65,
        127,
        128,
        129,
        143,
        255,
        256,
        257,
        319,
        320,
        383,
        384,
        385,
        639,
        640,
        641,
        767,
        768,
        769,
        1023,
        1024,
        1025,
        1087,
        1088,
        1100,
        4096,
        4111,
        65_536 + 15,
    ]
    for mis in range(64):
        p = aligned(buf, mis)
        for n in lengths:
            data = ffi.buffer(p, n)[:]
            assert lib.shm_crc32c(0xDEADBEEF, p, n) == portable(0xDEADBEEF, data), (n, mis)


def test_random_lengths_to_4mib(path):
    rng = random.Random(0x4D1B)
    buf = bytearray(rng.randbytes((4 << 20) + 64))
    for _ in range(12):
        n = rng.randrange(0, (4 << 20) + 1)
        mis = rng.randrange(64)
        p = aligned(buf, mis)
        seed = rng.getrandbits(32)
        assert lib.shm_crc32c(seed, p, n) == portable(seed, ffi.buffer(p, n)[:]), (n, mis)
    assert lib.shm_crc32c(0, ffi.from_buffer("uint8_t[]", buf), 4 << 20) == portable(0, bytes(buf[: 4 << 20]))


def test_incremental(path):
    """crc(a || b) == crc(crc(a), b), the pieces on this path or the table's."""
    rng = random.Random(0x1C)
    for _ in range(200):
        data = rng.randbytes(rng.choice((rng.randrange(0, 300), rng.randrange(0, 5000), rng.randrange(0, 200_000))))
        whole = portable(0, data)
        cut = rng.randrange(0, len(data) + 1)
        a, b = data[:cut], data[cut:]
        assert lib.shm_crc32c(lib.shm_crc32c(0, a, len(a)), b, len(b)) == whole
        assert lib.shm_crc32c(portable(0, a), b, len(b)) == whole
        assert portable(lib.shm_crc32c(0, a, len(a)), b) == whole
        dst = ffi.new("uint8_t[]", max(1, len(data)))
        c = lib.shm_crc32c_copy(0, dst, a, len(a))
        assert lib.shm_crc32c_copy(c, dst + cut, b, len(b)) == whole
        assert ffi.buffer(dst, len(data))[:] == data


def check_copy(src_buf, dst_buf, n, smis, dmis, seed):
    guard = 80
    s = aligned(src_buf, smis)
    d = aligned(dst_buf, dmis, guard)
    ffi.memmove(d - guard, b"\xee" * (n + 2 * guard), n + 2 * guard)
    data = ffi.buffer(s, n)[:]
    assert lib.shm_crc32c_copy(seed, d, s, n) == portable(seed, data), (n, smis, dmis)
    out = ffi.buffer(d - guard, n + 2 * guard)[:]
    assert out[guard : guard + n] == data, (n, smis, dmis)
    assert out[:guard] == b"\xee" * guard and out[guard + n :] == b"\xee" * guard, (n, smis, dmis)


def test_copy_every_length_to_2048(path):
    rng = random.Random(0xC0)
    src = bytearray(rng.randbytes(2048 + 64))
    dst = bytearray(2048 + 64 + 256)
    for n in range(2049):
        check_copy(src, dst, n, n % 64, (n * 13 + 5) % 64, 0x1234)


def test_copy_every_misalignment_pair(path):
    rng = random.Random(0xC1)
    src = bytearray(rng.randbytes(8192))
    dst = bytearray(8192 + 256)
    for smis in range(64):
        for dmis in range(64):
            for n in (129, 1024 + 37):
                check_copy(src, dst, n, smis, dmis, smis * 64 + dmis)
    for n in (319, 320, 384, 639, 640, 1023, 1088, 5000):
        for mis in range(64):
            check_copy(src, dst, n, mis, 63 - mis, 0xFFFFFFFF)


def test_copy_random_lengths_to_4mib(path):
    rng = random.Random(0xC2)
    src = bytearray(rng.randbytes((4 << 20) + 64))
    dst = bytearray((4 << 20) + 64 + 256)
    for _ in range(8):
        check_copy(src, dst, rng.randrange(0, (4 << 20) + 1), rng.randrange(64), rng.randrange(64), rng.getrandbits(32))


def test_the_automatic_choice_hands_over_where_init_measured_and_stays_exact():
    """With no path forced, a CPU without the 512-bit path may hand over from 128-bit folding to
    the crc32 instruction at a length init measured (AMD Zen 3: from 24 KiB): both sides of that
    length, misaligned, checksum and copy, equal the table path."""
    assert lib.shm_crc32c_path(1000) == BEST
    big = bytes(random.Random(7).randbytes(300_000))
    for copy in (0, 1):
        h = lib.shm_crc32c_handover(copy)
        assert h == 2**64 - 1 or h >= 64
        for n in sorted({64, 4096, 24_575, 24_576, 24_577, 200_001} | ({h - 1, h, h + 1} if h < 2**63 else set())):
            for mis in (0, 3, 61):
                src = aligned(big, mis)
                want = lib.shm_crc32c_portable(0xFFFF, src, n)
                if copy:
                    dst = ffi.new("uint8_t[]", n + 64)
                    assert lib.shm_crc32c_copy(0xFFFF, dst, src, n) == want
                    assert ffi.buffer(dst, n)[:] == ffi.buffer(src, n)[:]
                else:
                    assert lib.shm_crc32c(0xFFFF, src, n) == want
