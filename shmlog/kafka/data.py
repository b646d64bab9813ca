"""kafka/data.py — the Kafka listener's data path over the native shmlog API.

Owns: appending client RecordBatch v2 bytes to partition rings unchanged
(Producer.send_encoded: the C core checks CRC, counts and records and stamps
base offset and leader epoch) after Kafka's record-level validation
(DataPath.validate: compressed batches inflated bounded, every record
checked in C, a lying maxTimestamp rewritten), idempotent-producer state (producer ids, epochs,
last sequences per partition), reading stored batches back for Fetch without
decoding them (one client.reader.PartitionReader per fetch cursor: the
segment files below the ring, then the ring), log start / end
offsets and timestamp lookups, and waking long-polling fetches when a
partition grows (a helper thread sleeps on the rings' futexes). Must never: re-encode a batch, block the event loop on a
full ring (it retries asynchronously), or speak the wire protocol (the
handlers do).
"""

import asyncio
import collections
import threading
import time

from .. import compression, errors, storage
from ..client.reader import LAPPED, READ_STEPS, PartitionReader
from ..control import transactions
from .._native import crc32c, ffi, lib
from . import codes

LEADER_EPOCH = 0  # one broker, never a new leader: a constant epoch everywhere
FULL_RETRY_S = 0.002  # a full ring (persister behind) is retried this often
SEQ_CACHE = 5  # batches remembered per producer and partition (Kafka keeps 5)
RECOVER_WINDOW = 100_000  # offsets a restarted listener looks back for a producer's last batches
# RecordBatch v2 header fields and attribute bits: csrc/shmlog.h (SHM_RB_*), through the cdef
_HDR = lib.SHM_BATCH_HEADER_BYTES
_CODEC, _TXN, _CONTROL, _LOG_APPEND_TIME = (
    lib.SHM_RB_ATTR_CODEC_MASK,
    lib.SHM_RB_ATTR_TRANSACTIONAL,
    lib.SHM_RB_ATTR_CONTROL,
    lib.SHM_RB_ATTR_LOG_APPEND_TIME,
)


_LEN_END = lib.SHM_RB_LENGTH + 4  # the length field counts the bytes after itself


def _be(buf, off: int, size: int) -> int:
    """The signed big-endian field of `size` bytes at `off` of a RecordBatch."""
    return int.from_bytes(buf[off : off + size], "big", signed=True)


def batch_bytes(buf) -> int:
    """The size of the RecordBatch that starts buf, from its length field."""
    return _be(buf, lib.SHM_RB_LENGTH, 4) + _LEN_END


INFLATE_INLINE_BYTES = 256 << 10  # compressed batches larger than this inflate off the event loop
DISK_START_TTL_S = 1.0  # how stale a durable partition's log start offset may be


class ProduceError(Exception):
    def __init__(self, code: int, message: str, bad_record: int | None = None):
        super().__init__(message)
        self.code = code
        self.bad_record = bad_record  # Produce v8 RecordErrors: the failing record's index


def _check_crc(batch):
    if lib.shm_batch_validate(ffi.from_buffer(batch), len(batch)) != lib.SHM_OK:
        raise ProduceError(codes.CORRUPT_MESSAGE, "record batch fails its RecordBatch v2 framing or CRC-32C check")


def _records_check(records, count, base_ts):
    """(max timestamp, None) of a records section that passes Kafka's
    record-level checks (C: shm_records_check), or (None, index of the first
    bad record)."""
    max_ts, bad = ffi.new("int64_t *"), ffi.new("int32_t *")
    rc = lib.shm_records_check(ffi.from_buffer(records), len(records), count, base_ts, max_ts, bad)
    return (max_ts[0], None) if rc == lib.SHM_OK else (None, bad[0])


class _Seq:
    """Sequence state of one producer id on one partition."""

    __slots__ = ("epoch", "last_seq", "recent")

    def __init__(self, epoch):
        self.epoch = epoch
        self.last_seq = -1
        # (first_seq, last_seq, base_offset) of the latest batches
        self.recent: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=SEQ_CACHE)


class ProducerIds:
    """InitProducerId and the idempotence checks Kafka's broker makes on a batch."""

    def __init__(self):
        # (producer ids come from the instance's transaction coordinator, unique for good)
        # (producer id, (topic name, topic generation), partition) -> state: a re-created
        # topic (a new generation) starts with none, as a new topic does in Kafka
        self._seqs: dict[tuple, _Seq] = {}
        # ids this listener handed out since it started: their state is all here, never in
        # the log from before (a restarted listener learns other ids' state from the log)
        self.fresh: set[int] = set()
        self._recovered: set[tuple] = set()

    def known(self, pid, topic, partition) -> bool:
        """Is there nothing to learn from the log about this producer here?"""
        key = (pid, topic, partition)
        return pid in self.fresh or key in self._seqs or key in self._recovered

    def recovered(self, pid, topic, partition, batches) -> None:
        """The producer's latest batches [(epoch, first_seq, count, base_offset)]
        found in the partition's log (a listener restart forgot them)."""
        self._recovered.add((pid, topic, partition))
        for epoch, first, count, base in batches:
            self.record(pid, epoch, first, count, topic, partition, base)

    def check(self, pid, epoch, first_seq, count, topic, partition):
        """None: append it; an int: the base offset of the same batch already
        stored (a retry). Raises ProduceError for a fenced epoch or a gap."""
        s = self._seqs.get((pid, topic, partition))
        if s is None:
            return None  # unknown here (new, or before a restart): accept
        if epoch < s.epoch:
            raise ProduceError(codes.INVALID_PRODUCER_EPOCH, f"producer {pid} epoch {epoch} is older than {s.epoch}")
        if epoch > s.epoch:
            return None
        last = (first_seq + count - 1) & 0x7FFFFFFF
        for f, l, base in s.recent:
            if f == first_seq and l == last:
                return base
        if s.last_seq >= 0 and first_seq != (s.last_seq + 1) & 0x7FFFFFFF:
            raise ProduceError(
                codes.OUT_OF_ORDER_SEQUENCE_NUMBER, f"producer {pid}: sequence {first_seq} after {s.last_seq}"
            )
        return None

    def record(self, pid, epoch, first_seq, count, topic, partition, base_offset):
        key = (pid, topic, partition)
        s = self._seqs.get(key)
        if s is None or epoch > s.epoch:
            s = self._seqs[key] = _Seq(epoch)
        last = (first_seq + count - 1) & 0x7FFFFFFF
        s.last_seq = last
        s.recent.append((first_seq, last, base_offset))

    def forget_topic(self, name):
        for k in [k for k in self._seqs if k[1][0] == name]:
            del self._seqs[k]


def _batches(data):
    """(start, size) of each whole RecordBatch in data, back to back (a fetch's records)."""
    at, n = 0, len(data)
    while at + _HDR <= n:
        size = batch_bytes(data[at : at + _HDR])
        yield at, size
        at += size


def committed_only(data: bytes, lso: int, aborted: list) -> tuple[bytes, int | None]:
    """read_committed: the batches of a fetch below the last stable offset,
    without those of aborted transactions (struct shm_txn_abort's rule: a
    fenced producer's late writes too, which Kafka's AbortedTransactions list
    cannot express, so they are left out rather than listed). Returns (bytes,
    the offset where it stopped at the LSO, or None). Control batches stay:
    clients skip them and move their position past them."""
    keep, cut, dropped = [], None, False
    for at, size in _batches(data):
        b = data[at : at + _HDR]
        base = _be(b, lib.SHM_RB_BASE_OFFSET, 8)
        if base >= lso:
            cut = base
            break
        attrs = _be(b, lib.SHM_RB_ATTRIBUTES, 2)
        if aborted and attrs & _TXN and not attrs & _CONTROL:
            pid, epoch = _be(b, lib.SHM_RB_PRODUCER_ID, 8), _be(b, lib.SHM_RB_PRODUCER_EPOCH, 2)
            if any(a[0] == pid and a[1] <= base <= a[2] and epoch <= a[3] for a in aborted):
                dropped = True
                continue
        keep.append(data[at : at + size])
    if cut is None and not dropped:
        return data, None
    return b"".join(keep), cut


class FetchCursor:
    """Where one connection's fetches of one partition stand: a PartitionReader
    (client/reader.py) reused while the client asks for the offset where the
    previous fetch ended (no seek)."""

    __slots__ = ("reader", "generation", "next_offset")

    def __init__(self):
        self.reader: PartitionReader | None = None  # placed by the first fetch
        self.generation = -1
        self.next_offset = -1


class DataPath:
    """The listener's one producer and its readers, on one shmlog connection."""

    def __init__(self, log, produce_timeout_ms: int = 60_000):
        self.log = log
        self.producer = log.producer(max_block_ms=0)
        self.producer_ids = ProducerIds()
        self.produce_timeout_s = produce_timeout_ms / 1000
        self._aborts: dict[tuple[int, int], tuple[int, list]] = {}  # read_committed fetches: abort index cache
        self._out = ffi.new("struct shm_records_out *")
        self._buf_cap = 1 << 20
        self._buf = ffi.new("uint8_t[]", self._buf_cap)
        self._plogs: dict[tuple, storage.PartitionLog] = {}
        self._plog_read: dict[tuple, float] = {}  # when each segment list was last re-read
        self._waiters: list = []  # [(future, [(ring, offset)])]
        self._watcher: RingWatcher | None = None

    # ------------------------------------------------------------ topics and offsets

    def handle(self, topic):
        """The topic's handle, or None when it does not exist."""
        try:
            return self.log.topic_handle(topic)
        except errors.UnknownTopicOrPartition:
            return None
        except errors.InvalidArgument:
            return None

    def ring(self, h, partition):
        return self.log.ring(h, partition, writable=False)

    def _plog(self, h, partition):
        key = (h.generation, partition)
        pl = self._plogs.get(key)
        if pl is None:
            pl = self._plogs[key] = storage.PartitionLog(
                storage.partition_dir(self.log.settings.data_dir, h.name, partition, h.topic_id)
            )
        return pl

    def offsets(self, h, partition, fresh=False):
        """(log start offset, end offset). A durable partition's segment list
        is re-read at most every DISK_START_TTL_S (retention removes whole
        segments rarely), or now when fresh; DeleteRecords' start applies."""
        start, end = self.ring(h, partition).ends()[:2]
        if h.config.persistence == "disk":
            key = (h.generation, partition)
            pl = self._plog(h, partition)
            now = time.monotonic()
            if fresh or now - self._plog_read.get(key, 0.0) > DISK_START_TTL_S:
                pl.refresh()
                self._plog_read[key] = now
            disk = pl.start_offset()
            if disk is not None and disk < start:
                start = disk
        return self.log.log_start_floor(h, partition, start, end), end

    def offset_for_time(self, h, partition, timestamp_ms):
        """(offset, timestamp) of the first record at or after timestamp_ms, or (-1, -1)."""
        with self.log.consumer(auto_offset_reset="earliest") as c:
            c.assign([(h.name, partition)])
            c.seek_to_beginning(h.name, partition)
            off = c.offsets_for_times(h.name, partition, timestamp_ms)
            if off is None:
                return -1, -1
            c.seek(h.name, partition, off)
            m = c.poll(timeout=0)
            return off, (m.timestamp_ms if m is not None else timestamp_ms)

    def max_timestamp(self, h, partition):
        """(offset, timestamp) of the first record with the largest timestamp
        (ListOffsets MAX_TIMESTAMP, KIP-734), or (-1, -1) for an empty log:
        every record from the log start is read (Kafka keeps it per segment;
        here it is one pass, off the event loop)."""
        start, end = self.offsets(h, partition, fresh=True)
        best = (-1, -1)
        if start >= end:
            return best
        with self.log.consumer(auto_offset_reset="earliest") as c:
            c.assign([(h.name, partition, start)])
            while True:
                cols = c.poll_columns(timeout=0)
                if cols is None:
                    return best
                i = int(cols.timestamps_ms.argmax())
                if int(cols.timestamps_ms[i]) > best[1]:
                    best = (int(cols.offsets[i]), int(cols.timestamps_ms[i]))
                if int(cols.offsets[-1]) + 1 >= end:
                    return best

    # ------------------------------------------------------------ produce

    async def validate(self, h, batch):
        """The batch to store, after the record-level checks Kafka's broker
        makes (LogValidator) on top of the header checks the C core makes at
        append: every record parses, offset deltas run 0..n-1, timestamps are
        sane, no trailing bytes (C: shm_records_check). A compressed batch is
        inflated first, bounded by the topic's max_message_bytes (a bomb is
        refused before it inflates past the bound). As Kafka's broker does, a
        maxTimestamp that is not the largest record timestamp is rewritten
        (and the CRC with it) — only after the client's CRC was verified.
        Raises ProduceError (CORRUPT_MESSAGE for framing and CRC,
        INVALID_RECORD for records, an undecodable payload or a bomb)."""
        view = memoryview(batch)
        attr = _be(view, lib.SHM_RB_ATTRIBUTES, 2) & 0xFFFF
        count = _be(view, lib.SHM_RB_RECORDS_COUNT, 4)
        base_ts = _be(view, lib.SHM_RB_BASE_TIMESTAMP, 8)
        codec = attr & _CODEC
        if count <= 0 or attr & _CONTROL:
            return batch  # the C core refuses these with its own message
        records: bytes | memoryview
        if codec:
            _check_crc(batch)  # before inflating anything
            limit = max(h.config.max_message_bytes - lib.SHM_BATCH_HEADER_BYTES, 0)
            try:
                if len(batch) > INFLATE_INLINE_BYTES:
                    records = await asyncio.get_running_loop().run_in_executor(
                        None, compression.decompress, codec, view[_HDR:], limit
                    )
                else:
                    records = compression.decompress(codec, view[_HDR:], limit)
            except errors.CorruptRecord as e:
                raise ProduceError(codes.INVALID_RECORD, str(e)) from None
            except errors.NotSupported as e:
                raise ProduceError(codes.UNSUPPORTED_FOR_MESSAGE_FORMAT, str(e)) from None
        else:
            records = view[_HDR:]
        max_ts, bad = _records_check(records, count, base_ts)
        if bad is not None:
            if not codec:
                _check_crc(batch)  # a damaged batch is CORRUPT_MESSAGE, as in Kafka
            what = "is malformed" if bad < count else "(records count or trailing bytes) disagrees with the batch"
            raise ProduceError(
                codes.INVALID_RECORD,
                f"record {bad} of the {compression.NAMES.get(codec, codec)} batch {what}: "
                "Kafka's record format (lengths, offset deltas 0..n-1, timestamps, headers)",
                bad_record=bad if bad < count else None,
            )
        if h.config.cleanup_policy != "delete":  # compacted: every record needs a key (Kafka's LogValidator)
            keyless = lib.shm_records_first_keyless(ffi.from_buffer(records), len(records), count)
            if keyless >= 0:
                raise ProduceError(
                    codes.INVALID_RECORD,
                    f"Compacted topic cannot accept message without key in topic partition {h.name}: "
                    f"record {keyless} of the batch has a null key (cleanup_policy={h.config.cleanup_policy!r})",
                    bad_record=keyless,
                )
        if attr & _LOG_APPEND_TIME or max_ts == _be(view, lib.SHM_RB_MAX_TIMESTAMP, 8):
            return batch
        if not codec:
            _check_crc(batch)  # never re-sign bytes the client did not sign
        fixed = bytearray(batch)
        mt, crc, at = lib.SHM_RB_MAX_TIMESTAMP, lib.SHM_RB_CRC, lib.SHM_RB_ATTRIBUTES
        fixed[mt : mt + 8] = max_ts.to_bytes(8, "big", signed=True)
        fixed[crc : crc + 4] = crc32c(memoryview(fixed)[at:]).to_bytes(4, "big")
        return bytes(fixed)

    async def append(self, h, partition, batch):
        """Stores one client batch; returns its base offset. Raises ProduceError."""
        if len(batch) < _HDR or batch[lib.SHM_RB_MAGIC] != 2:
            raise ProduceError(
                codes.CORRUPT_MESSAGE if len(batch) <= lib.SHM_RB_MAGIC else codes.UNSUPPORTED_FOR_MESSAGE_FORMAT,
                "Produce v3+ carries one RecordBatch v2 (magic 2) per partition",
            )
        batch = await self.validate(h, batch)
        pid = _be(batch, lib.SHM_RB_PRODUCER_ID, 8)
        if pid < 0 and _be(batch, lib.SHM_RB_ATTRIBUTES, 2) & _TXN:
            raise ProduceError(codes.INVALID_RECORD, "a transactional batch needs its producer id")
        if pid >= 0:
            epoch = _be(batch, lib.SHM_RB_PRODUCER_EPOCH, 2)
            if _be(batch, lib.SHM_RB_ATTRIBUTES, 2) & _TXN:
                try:  # the partition must be in the producer's open transaction (control/transactions.py, T1)
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.log.transactions.check_write, pid, epoch, h.name, partition
                    )
                except errors.ProducerFenced as e:
                    raise ProduceError(codes.INVALID_PRODUCER_EPOCH, str(e)) from None
                except errors.InvalidTxnState as e:
                    raise ProduceError(codes.INVALID_TXN_STATE, str(e)) from None
            seq = _be(batch, lib.SHM_RB_BASE_SEQUENCE, 4)
            count = _be(batch, lib.SHM_RB_LAST_OFFSET_DELTA, 4) + 1
            if seq < 0:
                raise ProduceError(codes.INVALID_RECORD, "an idempotent batch needs baseSequence >= 0")
            if not self.producer_ids.known(pid, (h.name, h.generation), partition):
                self.producer_ids.recovered(pid, (h.name, h.generation), partition, self._batches_of(h, partition, pid))
            dup = self.producer_ids.check(pid, epoch, seq, count, (h.name, h.generation), partition)
            if dup is not None:
                return dup
        deadline = None
        while True:
            try:
                md = self.producer.send_encoded(h.name, partition, batch, LEADER_EPOCH)
                break
            except errors.BufferFull:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.produce_timeout_s
                    if h.config.persistence == "disk" and self.log._start_persister:
                        self.log.ensure_persister()
                if now > deadline:
                    raise ProduceError(codes.REQUEST_TIMED_OUT, "the ring stayed full (persister behind)") from None
                await asyncio.sleep(FULL_RETRY_S)
            except (errors.PartitionOffline, errors.NoSpace) as e:  # Kafka's (retriable) answer for a log dir
                raise ProduceError(codes.KAFKA_STORAGE_ERROR, str(e)) from None  # offline or out of space
            except errors.CorruptRecord as e:
                raise ProduceError(codes.CORRUPT_MESSAGE, str(e)) from None
            except errors.RecordTooLarge as e:
                raise ProduceError(codes.MESSAGE_TOO_LARGE, str(e)) from None
            except errors.InvalidArgument as e:
                raise ProduceError(codes.INVALID_RECORD, str(e)) from None
            except errors.UnknownTopicOrPartition as e:
                raise ProduceError(codes.UNKNOWN_TOPIC_OR_PARTITION, str(e)) from None
        if pid >= 0:
            self.producer_ids.record(pid, epoch, seq, count, (h.name, h.generation), partition, md.base_offset)
        self.wake()
        return md.base_offset

    def _batches_of(self, h, partition, pid):
        """The last SEQ_CACHE batches of producer pid in the partition's latest
        RECOVER_WINDOW offsets: [(epoch, first_seq, count, base_offset)], so a
        retry after a listener restart is still recognised (Kafka rebuilds the
        same state from its log)."""
        start, end = self.offsets(h, partition, fresh=True)
        fc, off = FetchCursor(), max(start, end - RECOVER_WINDOW)
        found: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=SEQ_CACHE)
        while off < end:
            code, data = self.read(fc, h, partition, off, 8 << 20)
            if code or not data:
                break
            for at, _size in _batches(data):
                b = data[at : at + _HDR]
                if _be(b, lib.SHM_RB_PRODUCER_ID, 8) == pid and not _be(b, lib.SHM_RB_ATTRIBUTES, 2) & _CONTROL:
                    count = _be(b, lib.SHM_RB_LAST_OFFSET_DELTA, 4) + 1
                    seq = _be(b, lib.SHM_RB_BASE_SEQUENCE, 4)
                    found.append((_be(b, lib.SHM_RB_PRODUCER_EPOCH, 2), seq, count, _be(b, lib.SHM_RB_BASE_OFFSET, 8)))
            off = fc.next_offset
            if off < 0:
                break
        return list(found)

    # ------------------------------------------------------------ fetch

    def read(self, fc: FetchCursor, h, partition, offset, max_bytes, min_one=True):
        """(error code, records bytes) from offset: whole batches back to back,
        at most max_bytes of them — except that with min_one (nothing is in
        the response yet, Kafka's minOneMessage) the first batch comes whole
        even when it is larger, so a consumer always progresses."""
        ring = self.ring(h, partition)
        start, end = self.offsets(h, partition)
        if offset == end:
            return codes.NONE, b""
        if offset < start:
            start, end = self.offsets(h, partition, fresh=True)
        if offset < start or offset > end:
            return codes.OFFSET_OUT_OF_RANGE, b""
        try:  # damaged segment files (a hole in the chain, a bad frame): Kafka's CORRUPT_MESSAGE
            if fc.generation != h.generation or fc.next_offset != offset or fc.reader is None:
                if not self._seek(fc, h, partition, ring, offset):
                    return codes.OFFSET_OUT_OF_RANGE, b""
            reader = fc.reader
            assert reader is not None  # placed by _seek
            reader.ring = ring
            cap = max(min(max_bytes, 64 << 20), 1)
            if cap > self._buf_cap:
                self._grow(cap)
            for _ in range(READ_STEPS):
                rc = reader.read(self._buf, cap, self._out)
                if rc >= 0:
                    fc.next_offset = reader.cur.next_offset
                    return codes.NONE, ffi.buffer(self._buf, self._out.bytes_used)[:]
                if rc == LAPPED:  # the ring overwrote it (ephemeral) or retention deleted it
                    fc.next_offset = -1
                    return codes.OFFSET_OUT_OF_RANGE, b""
                if not min_one:  # BUFFER_SMALL: the first batch does not fit what is left
                    return codes.NONE, b""
                cap = self._out.bytes_used
                self._grow(cap)
            return codes.NONE, b""
        except errors.OffsetOutOfRange:  # segments kept vanishing under the seek
            fc.next_offset = -1
            return codes.OFFSET_OUT_OF_RANGE, b""
        except errors.ShmlogError:
            fc.next_offset = -1
            return codes.CORRUPT_MESSAGE, b""

    def stable(self, h, partition):
        """read_committed: (last stable offset, the partition's aborted
        transactions [(producer id, first, last, max epoch)]), the index
        reloaded only when the coordinator added to it (its count in the ring)."""
        ring = self.ring(h, partition)
        lso = ring.last_stable_offset(ring.ends()[1])
        seen = ffi.cast("struct shm_ring_header *", ring.base).txn_aborts
        key = (h.generation, partition)
        cached = self._aborts.get(key)
        if cached is None or cached[0] != seen:
            data = transactions.read_abort_index(self.log.settings.data_dir, h.name, h.topic_id, partition)
            cached = self._aborts[key] = (seen, transactions.aborted_entries(data))
        return lso, cached[1]

    def _grow(self, cap):
        self._buf_cap = max(cap, self._buf_cap)
        self._buf = ffi.new("uint8_t[]", self._buf_cap)

    def _seek(self, fc, h, partition, ring, offset) -> bool:
        plog = self._plog(h, partition) if h.config.persistence == "disk" else None
        fc.reader = PartitionReader(self.log, h.name, partition, ring, plog, batches=True)
        fc.generation = h.generation
        fc.next_offset = -1
        return fc.reader.seek(offset, self._buf, self._buf_cap)

    # ------------------------------------------------------------ waiting for records

    def wake(self):
        """Something was appended: every waiting fetch looks again."""
        waiters, self._waiters = self._waiters, []
        for fut, _ in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, watch, timeout_s: float):
        """Waits until one of watch [(ring, offset)] has records past offset,
        something is appended through this listener, or timeout_s passes."""
        if timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append((fut, watch))
        if self._watcher is None:
            self._watcher = RingWatcher(loop, self._check_waiters)
        for ring, _ in watch:
            self._watcher.watch(ring)
        self._check_waiters()  # records that landed since the caller looked
        try:
            await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters = [w for w in self._waiters if w[0] is not fut]

    def _check_waiters(self):
        """Wakes every waiting fetch one of whose partitions grew (or was deleted)."""
        for fut, watch in list(self._waiters):
            for ring, offset in watch:
                try:
                    grown = ring.ends()[1] > offset or ring.deleted()
                except Exception:
                    grown = True
                if grown:
                    if not fut.done():
                        fut.set_result(None)
                    break

    def close(self):
        self.wake()
        if self._watcher is not None:
            self._watcher.stop()  # before the Log unmaps the rings it sleeps on
        self.producer.close()


class RingWatcher:
    """A helper thread parked (futex) on the rings that fetches waited on
    recently: native producers write the rings directly, so this is how a
    long poll hears of their records. It tells the event loop to look again
    (call_soon_threadsafe) after every wake, and whenever repositioning its
    cursors at the rings' tails passed something, so no record can fall
    between a look and the next park."""

    SLICE_NS = 50_000_000  # re-reads its ring set at least this often
    FORGET_S = 30.0  # a ring nobody waited on for this long is dropped

    def __init__(self, loop, on_change):
        self._loop = loop
        self._on_change = on_change
        self._rings = {}  # ring name -> [ring, cursor, last waited on]
        self._lock = threading.Lock()
        self._added = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="shmlog-kafka-ring-watcher", daemon=True)
        self._thread.start()

    def watch(self, ring):
        with self._lock:
            e = self._rings.get(ring.name)
            if e is None:
                cur = ffi.new("struct shm_cursor *")
                cur.pos = 2**64 - 1  # not placed yet
                cur.stuck_pos = 2**64 - 1
                self._rings[ring.name] = [ring, cur, time.monotonic()]
                self._added.set()
            else:
                e[2] = time.monotonic()

    def _run(self):
        while not self._stopping:
            now = time.monotonic()
            with self._lock:
                for k in [k for k, e in self._rings.items() if now - e[2] > self.FORGET_S]:
                    del self._rings[k]
                items = list(self._rings.values())
                self._added.clear()
            if not items:
                self._added.wait(self.SLICE_NS / 1e9)
                continue
            moved = False
            for ring, cur, _ in items:
                tail = ring.ends()[3]
                if cur.pos != tail:
                    moved = True
                    cur.pos = tail
            if moved:
                self._notify()
            hdrs = ffi.new("void *[]", [e[0].hdr for e in items])
            bases = ffi.new("struct shm_ring *[]", [e[0].h for e in items])
            curs = ffi.new("struct shm_cursor *[]", [e[1] for e in items])
            if lib.shm_wait_any(hdrs, bases, curs, len(items), self.SLICE_NS, 0, -1, ffi.NULL) >= 0:
                self._notify()

    def _notify(self):
        if not self._stopping:
            try:
                self._loop.call_soon_threadsafe(self._on_change)
            except RuntimeError:  # the loop closed under us
                self._stopping = True

    def stop(self):
        self._stopping = True
        self._added.set()
        self._thread.join(5)
