"""producer.py — Producer: writes records into partition rings.

Owns: choosing the partition (explicit, Kafka's murmur2 for keys, sticky for
keyless records), claiming this process's producer slot in each ring it
writes, and turning a send or a batch into ONE call into the C core (one
reservation, one frame). Must never: loop over records in Python where the C
core can take the batch, or keep a slot after close() or across fork().
"""
import os
import random
import time
from array import array
from itertools import compress

from . import errors, liveness
from ._native import ffi, full_ring_cause, lib, raise_status
from .records import BatchMetadata, RecordMetadata, encode_headers

_BYTES_LIKE = (bytes, bytearray, memoryview)
STICKY_BYTES = 16384      # keyless records stay on one partition for this many bytes (Kafka's batch.size)
WAIT_SLICE_NS = 1_000_000_000   # a blocked send looks up from the C wait this often (see _write)


def _as_bytes(v, what: str):
    if v is None or type(v) is bytes:
        return v
    if isinstance(v, _BYTES_LIKE):
        return bytes(v)
    raise errors.InvalidType(f"{what} must be bytes (or None), not {type(v).__name__}; "
                             "encode str with .encode()")


class _TopicWriter:
    """Per-topic state of one producer: one send context per partition."""

    __slots__ = ("producer", "handle", "n", "ctxs", "rings", "sticky", "sticky_left")

    def __init__(self, producer, handle):
        self.producer = producer
        self.handle = handle
        self.n = handle.partitions
        self.ctxs = [None] * self.n
        self.rings = [None] * self.n
        self.sticky = random.randrange(self.n)
        self.sticky_left = STICKY_BYTES

    def ctx(self, partition: int):
        c = self.ctxs[partition]
        if c is None:
            c = self._open(partition)
        return c

    def _open(self, partition: int):
        log = self.producer._log
        ring = log.ring(self.handle, partition, writable=True)
        pid, st = liveness.ensure_token(log.token_prefix)
        slot = lib.shm_ring_claim_slot(ring.h, pid, st, log.token_prefix_c)
        if slot < 0:
            if slot == lib.SHM_E_NO_SLOT:
                raise errors.TooManyProducers(
                    f"topic {self.handle.name!r} partition {partition}: all "
                    f"{lib.SHM_PRODUCER_SLOTS} producer slots are held by live processes")
            raise_status(slot, "cannot claim a producer slot")
        c = ffi.new("struct shm_send_ctx *")
        c.ring = ring.h
        c.slot = slot
        c.timeout_ns = min(self.producer._timeout_ns, WAIT_SLICE_NS)
        c.unblock_ns = log.unblock_ns
        c.token_prefix = log.token_prefix_c
        self.ctxs[partition] = c
        self.rings[partition] = ring
        return c

    def next_sticky(self, nbytes: int) -> int:
        self.sticky_left -= nbytes
        if self.sticky_left < 0:
            self.sticky_left = STICKY_BYTES
            if self.n > 1:
                self.sticky = (self.sticky + random.randrange(1, self.n)) % self.n
        return self.sticky

    def release(self):
        for c, r in zip(self.ctxs, self.rings):
            if c is not None and r.base != ffi.NULL:
                lib.shm_ring_release_slot(r.base, c.slot)
        self.ctxs = [None] * self.n


class Producer:
    """Writes records. Every send is synchronous: its offset is known at return.

    max_block_ms bounds the wait for ring space (Kafka's max.block.ms) before
    BufferFull. Thread-safe; use one per process or thread as you like."""

    def __init__(self, log, *, max_block_ms: int = 60_000):
        if not isinstance(max_block_ms, int) or max_block_ms < 0:
            raise errors.InvalidArgument("max_block_ms must be an int >= 0")
        self._log = log
        self._timeout_ns = max_block_ms * 1_000_000
        self._writers: dict[str, _TopicWriter] = {}
        self._closed = False
        liveness.on_fork(self)

    def _writer(self, topic) -> _TopicWriter:
        if self._closed:
            raise errors.Closed("this producer is closed")
        w = self._writers.get(topic)
        if w is None:
            w = self._writers[topic] = _TopicWriter(self, self._log.topic_handle(topic))
        return w

    def _partition_ctx(self, w: _TopicWriter, partition):
        if type(partition) is not int or not 0 <= partition < w.n:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise errors.InvalidType(f"partition must be int or None, not {type(partition).__name__}")
            raise errors.UnknownTopicOrPartition(
                f"topic {w.handle.name!r} has partitions 0..{w.n - 1}, not {partition}")
        return w.ctxs[partition] or w.ctx(partition)

    def send(self, topic: str, value, key=None, headers=None, partition=None, timestamp_ms=None):
        """Appends one record; returns RecordMetadata(topic, partition, offset)."""
        if key is None and headers is None and timestamp_ms is None and type(value) is bytes:
            # express path: one GIL-holding C call; anything unusual takes the full path
            w = self._writers.get(topic)
            if w is not None:
                if partition is None:
                    w.sticky_left -= len(value)
                    partition = w.sticky if w.sticky_left >= 0 else w.next_sticky(0)
                if type(partition) is int and 0 <= partition < w.n:
                    ctx = w.ctxs[partition]
                    if ctx is not None:
                        rc = lib.shmx_send(ctx, value, len(value))
                        if rc >= 0:
                            return RecordMetadata(topic, partition, rc)
        return self._send(topic, value, key, headers, partition, timestamp_ms)

    def _send(self, topic, value, key, headers, partition, timestamp_ms):
        w = self._writers.get(topic) or self._writer(topic)
        if type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        if partition is None:
            if key is None:
                partition = w.next_sticky(len(value) if value is not None else 0)
            else:
                partition = (lib.shm_murmur2(key, len(key)) & 0x7FFFFFFF) % w.n
        ctx = self._partition_ctx(w, partition)
        if headers:
            hdr = encode_headers(headers)
            hlen = len(hdr)
        else:
            hdr, hlen = ffi.NULL, -1
        if timestamp_ms is None:
            timestamp_ms = -1
        elif type(timestamp_ms) is not int or timestamp_ms < 0:
            raise errors.InvalidArgument("timestamp_ms must be an int >= 0 (ms since the epoch) or None")
        rc = self._write(w, partition, lib.shm_send, ctx, ffi.NULL if value is None else value,
                         -1 if value is None else len(value), ffi.NULL if key is None else key,
                         -1 if key is None else len(key), hdr, hlen, timestamp_ms)
        return RecordMetadata(topic, partition, rc)

    def send_batch(self, topic: str, values, keys=None, partition=None, timestamp_ms=None):
        """Appends many records with one reservation per partition touched (one
        frame each). Without keys (or with an explicit partition) that is one
        frame; with keys, records are grouped by their murmur2 partition, order
        kept within each. Returns [BatchMetadata] in partition order."""
        w = self._writers.get(topic) or self._writer(topic)
        if not isinstance(values, (list, tuple)):
            try:
                values = list(values)
            except TypeError:
                raise errors.InvalidType(
                    f"values must be a list of bytes, not {type(values).__name__}") from None
        if not values:
            return []
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(values):
                raise errors.InvalidArgument(f"{len(keys)} keys for {len(values)} values")
            if partition is None:
                by_part: dict[int, list[int]] = {}
                for i, k in enumerate(keys):
                    if k is None:
                        p = w.next_sticky(0)
                    else:
                        k = keys[i] = _as_bytes(k, "key")
                        p = (lib.shm_murmur2(k, len(k)) & 0x7FFFFFFF) % w.n
                    by_part.setdefault(p, []).append(i)
                return [self._append(w, p, [values[i] for i in idx], [keys[i] for i in idx], timestamp_ms)
                        for p, idx in sorted(by_part.items())]
        if partition is None:
            partition = w.next_sticky(STICKY_BYTES)     # a batch moves the sticky partition on
        return [self._append(w, partition, values, keys, timestamp_ms)]

    def _append(self, w, partition, values, keys, timestamp_ms):
        ctx = self._partition_ctx(w, partition)
        vblob, vlens = _pack(values, "values")
        inp = ffi.new("struct shm_batch_in *")
        inp.count = len(values)
        keep = [ffi.from_buffer(vblob), ffi.from_buffer("int64_t[]", vlens)]
        inp.values, inp.value_lens = keep
        if keys is not None and any(k is not None for k in keys):
            kblob, klens = _pack(keys, "keys")
            keep += [ffi.from_buffer(kblob), ffi.from_buffer("int64_t[]", klens)]
            inp.keys, inp.key_lens = keep[2], keep[3]
        if timestamp_ms is None:
            inp.timestamp_ms = -1
        elif type(timestamp_ms) is not int or timestamp_ms < 0:
            raise errors.InvalidArgument("timestamp_ms must be an int >= 0 (ms since the epoch) or None")
        else:
            inp.timestamp_ms = timestamp_ms
        out = ffi.new("struct shm_append_out *")
        self._write(w, partition, lib.shm_send_batch, ctx, inp, out)
        return BatchMetadata(w.handle.name, partition, out.base_offset, out.count)

    def send_packed(self, topic: str, data, lengths, partition=None, timestamp_ms=None):
        """send_batch for values already packed: data is one bytes-like buffer,
        lengths an int64 sequence (numpy array, array('q')) of value lengths.
        No per-record Python work at all."""
        w = self._writers.get(topic) or self._writer(topic)
        if partition is None:
            partition = w.next_sticky(STICKY_BYTES)
        ctx = self._partition_ctx(w, partition)
        try:
            lens = ffi.from_buffer("int64_t[]", lengths)
            vals = ffi.from_buffer(data)
        except TypeError as e:
            raise errors.InvalidType(f"send_packed needs a bytes-like data and int64 lengths: {e}") from None
        n = len(lens)
        if n == 0:
            return []
        inp = ffi.new("struct shm_batch_in *")
        inp.count = n
        inp.values, inp.value_lens = vals, lens
        inp.timestamp_ms = -1 if timestamp_ms is None else timestamp_ms
        if lib.shm_packed_check(lens, n, len(data)) != 0:
            raise errors.InvalidArgument("lengths do not add up to len(data) (or one is below -1)")
        out = ffi.new("struct shm_append_out *")
        self._write(w, partition, lib.shm_send_batch, ctx, inp, out)
        return [BatchMetadata(w.handle.name, partition, out.base_offset, out.count)]

    def send_encoded(self, topic: str, partition: int, batch, leader_epoch: int = 0) -> BatchMetadata:
        """Appends one Kafka RecordBatch v2 encoded elsewhere (the Kafka
        listener's path): the C core checks its header and CRC and stores it
        unchanged apart from baseOffset and partitionLeaderEpoch. Raises
        CorruptRecord (framing, CRC) or InvalidArgument (record counts,
        control batch) for a batch Kafka would refuse."""
        w = self._writers.get(topic) or self._writer(topic)
        ctx = self._partition_ctx(w, partition)
        out = ffi.new("struct shm_append_out *")
        rc = lib.shm_send_raw(ctx, batch, len(batch), leader_epoch, out)
        if rc == lib.SHM_E_CORRUPT:
            raise errors.CorruptRecord(f"record batch for {topic!r} partition {partition} fails its "
                                       "RecordBatch v2 framing or CRC-32C check")
        if rc == lib.SHM_E_INVALID:
            raise errors.InvalidArgument(f"record batch for {topic!r} partition {partition}: record count "
                                         "disagrees with lastOffsetDelta, or it is a control batch")
        if rc < 0:
            self._write(w, partition, lib.shm_send_raw, ctx, batch, len(batch), leader_epoch, out)
        return BatchMetadata(w.handle.name, partition, out.base_offset, out.count)

    def _write(self, w, partition, fn, *args):
        """One blocking C write. The C core waits for room at most WAIT_SLICE_NS
        at a time; between slices, on a durable topic, a dead persister is
        replaced (until the supervisor owns it), and the wait goes on until
        max_block_ms is used up. Raises the shmlog error for a failure."""
        start = time.monotonic()
        while True:
            rc = fn(*args)
            if rc != lib.SHM_E_FULL or (time.monotonic() - start) * 1e9 >= self._timeout_ns:
                break
            if w.handle.config.persistence == "disk" and self._log._start_persister:
                self._log.ensure_persister()
        if rc < 0:
            self._fail(rc, w, partition)
        return rc

    def _fail(self, rc, w, partition):
        name = w.handle.name
        if rc == lib.SHM_E_TOPIC_GONE:
            w.release()
            self._writers.pop(name, None)
            self._log._forget(name)
            raise errors.TopicDeleted(f"topic {name!r} was deleted while this producer wrote to it")
        if rc == lib.SHM_E_FULL:
            ring = w.rings[partition]
            err = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_PERSIST_ERRNO) if ring is not None else 0
            why = full_ring_cause(ring.h if ring is not None else None, self._log.token_prefix_c,
                                  w.handle.config.persistence == "disk", self._timeout_ns // 1_000_000, err)
            raise errors.BufferFull(
                f"topic {name!r} partition {partition}: no ring space for "
                f"{self._timeout_ns // 1_000_000} ms: {why}; consumers never hold space back")
        if rc == lib.SHM_E_TOO_LARGE:
            raise errors.RecordTooLarge(
                f"record batch is larger than topic {name!r}'s max_message_bytes "
                f"({w.handle.config.max_message_bytes}); send smaller records or batches")
        if rc == lib.SHM_E_INVALID:
            raise errors.InvalidArgument("invalid record lengths")
        raise_status(rc, f"send to topic {name!r} partition {partition} failed")

    def flush(self, durable: bool = False, timeout: float | None = None) -> None:
        """Every send is visible to consumers when it returns, so a plain flush
        has nothing to do. With durable=True it returns once every record sent
        so far to a durable topic is fsynced (it waits for the persister to
        pass the ring's tail as seen now, waking it to fsync at once)."""
        if self._closed:
            raise errors.Closed("this producer is closed")
        if not durable:
            return
        tns = -1 if timeout is None else int(timeout * 1e9)
        for w in list(self._writers.values()):
            if w.handle.config.persistence != "disk":
                continue
            for ring in w.rings:
                if ring is None:
                    continue
                tail = ring.ends()[3]
                if lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_FSYNCED) >= tail:
                    continue
                if self._log._start_persister:
                    self._log.ensure_persister()
                rc = lib.shm_ring_durable_wait(ring.base, tail, tns)
                if rc == lib.SHM_E_TIMEOUT:
                    err = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_PERSIST_ERRNO)
                    why = f": the persister reports {os.strerror(err)}" if err else ""
                    raise errors.Timeout(f"topic {w.handle.name!r} partition {ring.partition}: records "
                                         f"not fsynced within {timeout} s{why}")
                if rc == lib.SHM_E_TOPIC_GONE:
                    raise errors.TopicDeleted(f"topic {w.handle.name!r} was deleted before the flush")

    def close(self):
        if self._closed:
            return
        for w in self._writers.values():
            w.release()
        self._writers.clear()
        self._closed = True

    def _after_fork(self):
        # the slots belong to the parent; the child claims its own on first send
        for w in self._writers.values():
            w.ctxs = [None] * w.n
        self._writers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pack(items, what):
    """list of bytes|None -> (one bytes blob, array('q') of lengths, -1 for None)."""
    try:
        if None in items:
            lens = array("q", [-1 if v is None else len(v) for v in items])
            blob = b"".join(compress(items, [v is not None for v in items]))
        else:
            blob = b"".join(items)
            lens = array("q", map(len, items))
    except TypeError:
        bad = next(v for v in items if v is not None and not isinstance(v, _BYTES_LIKE))
        raise errors.InvalidType(f"{what} must be bytes (or None), not {type(bad).__name__}") from None
    return blob, lens
