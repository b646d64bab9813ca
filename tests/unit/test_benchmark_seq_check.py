"""The benchmark harness's record check (benchmarks/peers/base.py): every record carries its sequence
number in its first AND its last 8 bytes; the per-record check (seq_of), the list check (seqs_of) and
the column check (seqs_at) all fail on a corrupted tail, a corrupted head, or a record under 16 bytes."""

import numpy as np
import pytest

from benchmarks.peers.base import MIN_RECORD, IntegrityError, seq_of, seqs_at, seqs_of, stamp
from benchmarks.workloads import records


def _corrupt_tail(rec):
    b = bytearray(rec)
    b[-1] ^= 0xFF
    return bytes(b)


def _corrupt_head(rec):
    b = bytearray(rec)
    b[0] ^= 0x01
    return bytes(b)


def _columns(recs):
    lengths = np.array([len(r) for r in recs], np.int64)
    starts = np.cumsum(lengths) - lengths + 3  # values need not start at offset 0
    return np.frombuffer(b"abc" + b"".join(recs), np.uint8), starts, lengths


def test_records_carry_the_seq_at_both_ends():
    for size in (16, 17, 64, 100, 1 << 20):
        r = stamp(12345, size)
        assert len(r) == size
        assert r[:8] == r[-8:] == (12345).to_bytes(8, "little")
    assert all(len(r) == 100 and seq_of(r) == i for i, r in enumerate(records(50, 100)))
    with pytest.raises(ValueError):
        stamp(1, MIN_RECORD - 1)


def test_every_check_reads_the_same_seqs():
    recs = records(2000, 100) + [stamp(2000, 16), stamp(2001, 1 << 16)]
    want = np.arange(len(recs), dtype=np.uint64)
    assert np.array_equal(seqs_of(recs), want)
    assert np.array_equal(seqs_of([memoryview(r) for r in recs]), want)  # zero-copy views
    assert np.array_equal(seqs_at(*_columns(recs)), want)
    assert [seq_of(memoryview(r)) for r in recs] == list(range(len(recs)))
    assert len(seqs_of([])) == 0 and seqs_of([]).dtype == np.uint64


@pytest.mark.parametrize("corrupt", [_corrupt_tail, _corrupt_head])
def test_a_corrupted_end_fails_every_check(corrupt):
    recs = records(1000, 100)
    recs[617] = corrupt(recs[617])
    with pytest.raises(IntegrityError, match="integrity: head seq"):
        seq_of(recs[617])
    with pytest.raises(IntegrityError, match="integrity: head seq"):
        seq_of(memoryview(recs[617]))
    with pytest.raises(IntegrityError, match="integrity: head seq"):
        seqs_of(recs)
    with pytest.raises(IntegrityError, match="integrity: head seq"):
        seqs_at(*_columns(recs))


def test_a_record_shorter_than_16_bytes_is_an_error():
    short = (7).to_bytes(8, "little") * 2
    for rec in (short[:15], short[:8], b""):
        with pytest.raises(IntegrityError, match="cannot hold"):
            seq_of(rec)
        with pytest.raises(IntegrityError, match="cannot hold"):
            seqs_of(records(10, 100) + [rec])
        with pytest.raises(IntegrityError, match="cannot hold"):
            seqs_at(*_columns(records(10, 100) + [rec]))
    blob, starts, lengths = _columns(records(3, 100))
    lengths[1] = -1  # a null value in poll_columns
    with pytest.raises(IntegrityError, match="cannot hold"):
        seqs_at(blob, starts, lengths)
