"""compression.py — Kafka's four record-batch codecs, bounded.

Owns: compressing and decompressing the records section of a RecordBatch
with the codec named in its attributes (1 gzip, 2 snappy, 3 lz4, 4 zstd),
through well-kept libraries (zlib, cramjam, lz4, zstandard), and the bound on
what a decompression may produce: `decompress(codec, data, max_bytes)` never
allocates more than max_bytes of output and raises CorruptRecord when the
input would inflate past it (a decompression bomb) or is not valid for its
codec. Must never: raise a library's own exception type (every failure is a
shmlog error), or inflate without a bound.

Snappy comes in two framings on the wire: raw snappy (librdkafka, Go clients)
and xerial's block framing (the Java client: magic b"\\x82SNAPPY\\x00", then
[u32 length, raw block] chunks); both are read, raw is written.
LZ4 is the LZ4 frame format (Kafka's magic v1+ batches).
"""

import zlib

import cramjam
import lz4.frame
import zstandard

from . import errors

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODECS = {"none": NONE, "gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD}
NAMES = {v: k for k, v in CODECS.items()}

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_CHUNK = 1 << 16


def codec_of(name) -> int:
    """The codec number for a name ("gzip", ...) or a number; InvalidArgument otherwise."""
    if isinstance(name, int) and name in NAMES:
        return name
    if isinstance(name, str) and name.lower() in CODECS:
        return CODECS[name.lower()]
    raise errors.InvalidArgument(f"unknown compression codec {name!r}; use one of {', '.join(CODECS)}")


def compress(codec: int, data) -> bytes:
    """The records section compressed with codec (NONE returns the bytes unchanged)."""
    if codec == NONE:
        return bytes(data)
    if codec == GZIP:
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(bytes(data)))
    if codec == LZ4:
        return lz4.frame.compress(bytes(data))
    if codec == ZSTD:
        return zstandard.ZstdCompressor().compress(bytes(data))
    raise errors.NotSupported(f"compression codec {codec} is not one of Kafka's (1-4)")


def _too_big(max_bytes):
    return errors.CorruptRecord(
        f"a compressed batch inflates past {max_bytes} bytes (the topic's message size limit); "
        "refused as a decompression bomb"
    )


def _bad(codec, exc):
    return errors.CorruptRecord(f"a {NAMES.get(codec, codec)} batch does not decompress: {exc}")


def _snappy_raw_len(block) -> int:
    """The uncompressed length a raw snappy block declares (its leading varint)."""
    n = shift = 0
    for i in range(min(5, len(block))):
        b = block[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
    raise ValueError("bad snappy length varint")


def _snappy(data, max_bytes) -> bytes:
    data = bytes(data)
    if data.startswith(_XERIAL_MAGIC):
        pos, out, total = 16, [], 0  # magic (8), version (4), compatible version (4)
        while pos < len(data):
            if pos + 4 > len(data):
                raise ValueError("truncated xerial chunk header")
            n = int.from_bytes(data[pos : pos + 4], "big")
            block = data[pos + 4 : pos + 4 + n]
            if len(block) != n:
                raise ValueError("truncated xerial chunk")
            total += _snappy_raw_len(block)
            if total > max_bytes:
                raise _too_big(max_bytes)
            out.append(bytes(cramjam.snappy.decompress_raw(block)))
            pos += 4 + n
        return b"".join(out)
    if _snappy_raw_len(data) > max_bytes:
        raise _too_big(max_bytes)
    return bytes(cramjam.snappy.decompress_raw(data))


def _streamed(read, max_bytes) -> bytes:
    """Pull output in chunks from read(n) until it ends, refusing more than max_bytes."""
    out: list[bytes] = []
    total = 0
    while True:
        chunk = read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(out)
        total += len(chunk)
        if total > max_bytes:
            raise _too_big(max_bytes)
        out.append(chunk)


def _zstd(data: bytes, max_bytes: int) -> bytes:
    """Frame by frame: a frame that declares its size is checked against the
    bound before it is inflated (libzstd verifies the declared size); one
    that does not is first counted through a bounded stream reader."""
    out = []
    while data:
        size = zstandard.frame_content_size(data)
        if size == -1:  # not declared: count it, bounded, before inflating
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            size = len(_streamed(reader.read, max_bytes))
        if size > max_bytes:
            raise _too_big(max_bytes)
        d = zstandard.ZstdDecompressor().decompressobj()
        frame = d.decompress(data)
        if not d.eof or len(frame) > max_bytes:
            raise ValueError("truncated zstd frame")
        out.append(frame)
        max_bytes -= len(frame)
        data = d.unused_data
    return b"".join(out)


def decompress(codec: int, data, max_bytes: int) -> bytes:
    """The records section of a batch compressed with codec, at most max_bytes long."""
    if codec == NONE:
        if len(data) > max_bytes:
            raise _too_big(max_bytes)
        return bytes(data)
    try:
        if codec == GZIP:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(data, max_bytes + 1)
            if len(out) > max_bytes or d.unconsumed_tail:
                raise _too_big(max_bytes)
            if not d.eof:
                raise ValueError("truncated gzip stream")
            return out
        if codec == SNAPPY:
            return _snappy(data, max_bytes)
        if codec == LZ4:
            d = lz4.frame.LZ4FrameDecompressor()
            out = d.decompress(bytes(data), max_length=max_bytes + 1)
            if len(out) > max_bytes or not d.eof and d.needs_input is False:
                raise _too_big(max_bytes)
            if not d.eof:
                raise ValueError("truncated lz4 frame")
            return out
        if codec == ZSTD:
            return _zstd(bytes(data), max_bytes)
    except errors.ShmlogError:
        raise
    except (zlib.error, ValueError, RuntimeError, zstandard.ZstdError, cramjam.DecompressionError) as e:
        raise _bad(codec, e) from None
    raise errors.NotSupported(f"compression codec {codec} is not one of Kafka's (1-4)")
