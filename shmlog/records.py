"""records.py — the record types users see, and header encoding.

Owns: Message, RecordMetadata, BatchMetadata, Columns and the Kafka headers
section codec (count varint, then key/value pairs). Message and
RecordMetadata are C types (csrc/pyrecords.c: built per record by the fast
path without a Python frame; frozen, ==, hash, repr, pickle), typed in
_fastpath.pyi. Must never: touch shared memory; batches are encoded and decoded
by the C core.
"""

from typing import Any

import msgspec

from . import errors
from ._fastpath import Message, RecordMetadata

__all__ = ["BatchMetadata", "Columns", "Message", "RecordMetadata", "decode_headers", "encode_headers"]


class BatchMetadata(msgspec.Struct, gc=False, frozen=True):
    """One frame written by send_batch: offsets base_offset .. base_offset+count-1."""

    topic: str
    partition: int
    base_offset: int
    count: int


class Columns(msgspec.Struct, gc=False):
    """A batch of records from one partition as numpy columns, without per-record objects.

    values is one uint8 numpy array (the batches' bytes); record i's value is
    values[value_starts[i]:value_starts[i] + value_lengths[i]] (length -1 = null).
    Keys likewise. Arrays are int64 numpy arrays, owned by this object.
    """

    topic: str
    partition: int
    offsets: Any  # numpy.ndarray
    timestamps_ms: Any  # numpy.ndarray
    values: Any  # numpy.ndarray
    value_starts: Any  # numpy.ndarray
    value_lengths: Any  # numpy.ndarray
    key_starts: Any  # numpy.ndarray
    key_lengths: Any  # numpy.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def value(self, i: int) -> bytes | None:
        n = int(self.value_lengths[i])
        if n < 0:
            return None
        s = int(self.value_starts[i])
        return self.values[s : s + n].tobytes()


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def encode_headers(headers: Any) -> bytes:
    """dict or iterable of (str, bytes|None) -> Kafka headers section."""
    items = headers.items() if isinstance(headers, dict) else headers
    try:
        pairs = list(items)
    except TypeError:
        raise errors.InvalidType("headers must be a dict or a list of (str, bytes) pairs") from None
    out = [_varint(len(pairs))]
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise errors.InvalidType("headers must be a dict or a list of (str, bytes) pairs")
        k, v = pair
        if not isinstance(k, str):
            raise errors.InvalidType(f"header key must be str, not {type(k).__name__}")
        kb = k.encode()
        out += [_varint(len(kb)), kb]
        if v is None:
            out.append(_varint(-1))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            out += [_varint(len(v)), bytes(v)]
        else:
            raise errors.InvalidType(f"header {k!r} value must be bytes or None, not {type(v).__name__}")
    return b"".join(out)


def _read_varint(buf: bytes | bytearray | memoryview, i: int) -> tuple[int, int]:
    z = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise errors.CorruptRecord("truncated varint in record headers")
        b = buf[i]
        i += 1
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), i
        shift += 7


def decode_headers(buf: bytes | bytearray | memoryview, start: int) -> tuple[tuple[str, bytes | None], ...]:
    """Kafka headers section at buf[start:] -> tuple of (str, bytes|None)."""
    n, i = _read_varint(buf, start)
    out: list[tuple[str, bytes | None]] = []
    for _ in range(n):
        kl, i = _read_varint(buf, i)
        k = bytes(buf[i : i + kl]).decode("utf-8", "replace")
        i += kl
        vl, i = _read_varint(buf, i)
        if vl < 0:
            out.append((k, None))
        else:
            out.append((k, bytes(buf[i : i + vl])))
            i += vl
    return tuple(out)
