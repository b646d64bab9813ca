"""client/producer.py — Producer: writes records into partition rings.

Owns: choosing the partition (explicit, Kafka's murmur2 for keys, sticky for
keyless records), claiming this process's producer slot in each ring it
writes, turning a send or a batch into ONE call into the C core (one
reservation, one frame), and the asynchronous produce()/poll()/flush() of
confluent-kafka: the per-partition batches being filled, the linger thread
that sends a batch when linger_ms passes, compression of a batch into one
Kafka RecordBatch, retries on a full ring until message_timeout_ms, and the
delivery reports served by poll()/flush(). Must never: loop over records in
Python where the C core can take the batch, keep a slot after close() or
across fork(), call a delivery callback from any thread but one calling
poll()/flush()/close(), or report a record twice.
"""

import collections
import logging
import os
import random
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any, NoReturn, overload

from .. import compression, errors, liveness
from .._fastpath import ProducerBase, WriterBase, loan_view
from .._fastpath import pack as pack_bytes
from .._fastpath import release as release_views
from .._native import address_of, ffi, full_ring_cause, lib, memory_shortfall, raise_status
from ..control.transactions import TxnOffset, validate_timeout, validate_transactional_id
from ..records import BatchMetadata, Message, RecordMetadata, encode_headers

if TYPE_CHECKING:
    from ..control.plane import TopicHandle

BytesLike = bytes | bytearray | memoryview
Headers = dict[str, BytesLike | None] | Iterable[tuple[str, BytesLike | None]]
DeliveryCallback = Callable[[BaseException | None, Message], object]

_BYTES_LIKE = (bytes, bytearray, memoryview)
STICKY_BYTES = 16384  # keyless records stay on one partition for this many bytes (Kafka's batch.size)
WAIT_SLICE_NS = 1_000_000_000  # a blocked send looks up from the C wait this often (see _write)


@overload
def _as_bytes(v: None, what: str) -> None: ...
@overload
def _as_bytes(v: BytesLike, what: str) -> bytes: ...
@overload
def _as_bytes(v: object, what: str) -> bytes | None: ...
def _as_bytes(v: object, what: str) -> bytes | None:
    if v is None or type(v) is bytes:
        return v
    if isinstance(v, _BYTES_LIKE):
        return bytes(v)
    raise errors.InvalidType(f"{what} must be bytes (or None), not {type(v).__name__}; encode str with .encode()")


class _TopicWriter(WriterBase):
    """Per-topic state of one producer: one send context per partition. Its C
    half (WriterBase, csrc/fastpath.c) holds the sticky partition
    (sticky, sticky_left) and the contexts send()'s express case may use:
    every change of ctxs goes through _set_ctx, which keeps them the same."""

    __slots__ = (
        "producer",
        "handle",
        "n",
        "ctxs",
        "spare",
        "rings",
        "batch_limit",
        "open",
        "keyed",
        "loan_slots",
    )

    def __init__(self, producer: "Producer", handle: "TopicHandle") -> None:
        self.producer = producer
        self.handle = handle
        self.n = handle.partitions
        self.ctxs: list[Any] = [None] * self.n
        # a transactional producer's contexts outside the partitions of its open
        # transaction: kept here so sends find none in ctxs and register first
        self.spare: list[Any] = [None] * self.n
        # a compacted topic refuses records without a key (Kafka's rule): its
        # writer gives send()'s keyless express case no contexts, so the check
        # costs the other topics nothing
        self.keyed = handle.config.cleanup_policy != "delete"
        self.rings: list[Any] = [None] * self.n
        self.sticky = random.randrange(self.n)
        self.sticky_left = STICKY_BYTES
        # produce(): the bytes a batch may reach (its records section) and stay one frame
        self.batch_limit = handle.config.max_message_bytes - lib.SHM_BATCH_HEADER_BYTES
        self.open: list[_Batch | None] = [
            None
        ] * self.n  # produce(): the batch being filled per partition (producer's lock)
        self.loan_slots: list[list[int]] = [[] for _ in range(self.n)]  # reserve(): idle loan slots (ring.c, L1)

    def grow(self, handle: "TopicHandle") -> int:
        """The topic gained partitions (alter_topic) in this life: the writer
        takes them on; returns its partition count."""
        more = handle.partitions - self.n
        if handle.generation == self.handle.generation and more > 0:
            self.ctxs += [None] * more
            self.spare += [None] * more
            self.rings += [None] * more
            self.open += [None] * more
            self.loan_slots += [[] for _ in range(more)]
            self.handle, self.n = handle, handle.partitions
        return self.n

    def ctx(self, partition: int) -> Any:
        c = self.ctxs[partition]
        if c is None:
            c = self._open(partition)
        return c

    def _set_ctx(self, partition: int, c: Any) -> None:
        self.ctxs[partition] = c
        addr = 0 if c is None or self.keyed else int(ffi.cast("uintptr_t", c))
        self._xset(partition, addr, c)

    def _open(self, partition: int) -> Any:
        c = self.spare[partition]
        if c is not None:
            self.spare[partition] = None
            self._set_ctx(partition, c)
            return c
        log = self.producer._log
        ring = log.ring(self.handle, partition, writable=True)
        pid, st = liveness.ensure_token(log.token_prefix)
        slot = lib.shm_ring_claim_slot(ring.h, pid, st, log.token_prefix_c)
        if slot < 0:
            if slot == lib.SHM_E_NO_SLOT:
                raise errors.TooManyProducers(
                    f"topic {self.handle.name!r} partition {partition}: all "
                    f"{lib.SHM_PRODUCER_SLOTS} producer slots are held by live processes"
                )
            raise_status(slot, "cannot claim a producer slot")
        c = ffi.new("struct shm_send_ctx *")
        c.ring = ring.h
        c.slot = slot
        c.timeout_ns = min(self.producer._timeout_ns, WAIT_SLICE_NS)
        c.unblock_ns = log.unblock_ns
        c.token_prefix = log.token_prefix_c
        self.producer._stamp(c)
        self._set_ctx(partition, c)
        self.rings[partition] = ring
        return c

    def park(self, partition: int) -> None:
        """The transaction that wrote this partition ended: its context waits
        in spare until the next transaction adds the partition again."""
        c = self.ctxs[partition]
        if c is not None:
            self._set_ctx(partition, None)
            self.spare[partition] = c

    def next_sticky(self, nbytes: int) -> int:
        self.sticky_left -= nbytes
        if self.sticky_left < 0:
            self.sticky_left = STICKY_BYTES
            if self.n > 1:
                self.sticky = (self.sticky + random.randrange(1, self.n)) % self.n
        return self.sticky

    def release(self) -> None:
        for c, s, r, idle in zip(self.ctxs, self.spare, self.rings, self.loan_slots):
            c = c or s
            if c is not None and r.base != ffi.NULL:
                lib.shm_ring_release_slot(r.base, c.slot)
                for slot in idle:  # a loan still open releases its own slot when it ends
                    lib.shm_ring_release_slot(r.base, slot)
            idle.clear()
        self._xclear()
        self.ctxs = [None] * self.n
        self.spare = [None] * self.n

    def keyless(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"Compacted topic cannot accept message without key: topic {self.handle.name!r} has "
            f"cleanup_policy={self.handle.config.cleanup_policy!r}; give every record a key"
        )


class _Batch:
    """Records produce()d to one partition and not yet written: one frame
    (one Kafka RecordBatch) when they are. The columns live in C (struct
    shm_accum, csrc/accum.c); Python keeps only what delivery reports need:
    reps, (index, callback, key, value, headers) per record with a callback."""

    __slots__ = ("w", "partition", "acc", "addr", "reps", "ts", "timed", "born", "deadline", "count")

    def __init__(
        self,
        w: _TopicWriter,
        partition: int,
        ts: int,
        timed: bool,
        now: float,
        linger_s: float,
        max_count: int,
        max_bytes: int,
    ) -> None:
        self.w = w
        self.partition = partition
        self.acc = ffi.gc(lib.shm_accum_new(max_count, max_bytes), lib.shm_accum_free)
        if self.acc == ffi.NULL:
            raise MemoryError("cannot allocate a produce() batch")
        self.addr = address_of(self.acc)  # its key in the fast path's express table
        self.reps: list[tuple[int, DeliveryCallback, Any, Any, Any]] | None = None
        self.ts = ts  # the batch timestamp (Kafka has one per batch here)
        self.timed = timed  # ts came from produce(timestamp=): only equal timestamps join
        self.born = now  # monotonic time of its first record (message_timeout_ms runs from here)
        self.deadline = now + linger_s
        self.count = 0  # records, once sealed


ASYNC_SLICE_NS = 100_000_000  # a background write waits for room this long before it looks up again


class Producer(ProducerBase):
    """Writes records.

    send()/send_batch() are synchronous: the offset is known at return, and
    max_block_ms bounds the wait for ring space (Kafka's max.block.ms) before
    BufferFull.

    produce()/poll()/flush() are confluent-kafka's asynchronous producer:
    produce() appends to a per-partition batch and returns at once; a batch
    is written as ONE frame (one C call) when it holds batch_num_messages
    records or batch_size bytes, or linger_ms after its first record (a
    background thread per producer, started by the first produce(), sends
    lingering batches and retries full rings). Delivery reports
    on_delivery(err, msg) are served by poll()/flush()/close() in the
    calling thread, exactly once per record; see the README's "Asynchronous
    producer" section for close, fork, BufferFull and thread safety.
    Thread-safe."""

    def __init__(
        self,
        log: Any,  # the Log that makes it (client/log.py imports this module: not imported back)
        *,
        max_block_ms: int = 60_000,
        linger_ms: float = 5,
        batch_size: int = 1_000_000,
        batch_num_messages: int = 10_000,
        compression_type: str | None = None,
        message_timeout_ms: int | None = None,
        delivery_timeout_ms: int | None = None,
        queue_buffering_max_messages: int = 100_000,
        on_delivery: DeliveryCallback | None = None,
        enable_idempotence: bool | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        if not isinstance(max_block_ms, int) or max_block_ms < 0:
            raise errors.InvalidArgument("max_block_ms must be an int >= 0")
        if message_timeout_ms is not None and delivery_timeout_ms is not None:
            raise errors.InvalidArgument("give message_timeout_ms or delivery_timeout_ms (the same setting), not both")
        mt = (
            message_timeout_ms
            if message_timeout_ms is not None
            else delivery_timeout_ms
            if delivery_timeout_ms is not None
            else 300_000
        )
        for name, v, lo in (
            ("linger_ms", linger_ms, 0),
            ("batch_size", batch_size, 1),
            ("batch_num_messages", batch_num_messages, 1),
            ("message_timeout_ms", mt, 0),
            ("queue_buffering_max_messages", queue_buffering_max_messages, 1),
        ):
            if not isinstance(v, (int, float) if name == "linger_ms" else int) or isinstance(v, bool) or v < lo:
                kind = "a number" if name == "linger_ms" else "an int"
                raise errors.InvalidArgument(f"{name} must be {kind} >= {lo}")
        if on_delivery is not None and not callable(on_delivery):
            raise errors.InvalidType("on_delivery must be callable(err, msg)")
        self._codec = compression.NONE if compression_type is None else compression.codec_of(compression_type)
        if transactional_id is not None:
            validate_transactional_id(transactional_id)
            if enable_idempotence is False:
                raise errors.InvalidArgument("a transactional producer is idempotent: drop enable_idempotence=False")
            enable_idempotence = True  # Kafka: transactional.id implies enable.idempotence
        elif enable_idempotence is None:
            enable_idempotence = False
        if not isinstance(enable_idempotence, bool):
            raise errors.InvalidType("enable_idempotence must be a bool")
        if enable_idempotence and self._codec != compression.NONE:
            raise errors.NotSupported(
                "compression_type with enable_idempotence or transactional_id is not supported yet: "
                "the producer fields would have to be stamped into the compressed batch"
            )
        validate_timeout(transaction_timeout_ms)
        self._idempotent = enable_idempotence
        self._tid = transactional_id
        self._txn_timeout_ms = transaction_timeout_ms
        self._pid = -1  # producer id and epoch: init_transactions(), or the first write (idempotent)
        self._epoch = 0
        self._in_txn = False
        self._txn_parts: list[tuple[_TopicWriter, int]] = []  # partitions added to the open transaction
        self._log = log
        self._timeout_ns = max_block_ms * 1_000_000
        self._writers: dict[str, _TopicWriter] = {}
        self._closed = False
        self._linger_s = linger_ms / 1000
        self._batch_bytes = batch_size
        self._batch_num = batch_num_messages
        self._message_timeout_s = mt / 1000
        self._max_queued = queue_buffering_max_messages
        self._on_delivery = on_delivery
        self._report_hook: Callable[[], None] | None = (
            None  # called (any thread, no lock held) when reports were queued: shmlog.aio
        )
        self._loans: set[Loan] = set()  # reserve(): loans open now (closed or forked: abandoned)
        self._async_reset()
        liveness.on_fork(self)

    def _async_reset(self) -> None:
        """The asynchronous producer's state: empty (new, or in a forked child)."""
        self._lock = threading.Lock()  # guards everything below
        self._cond = threading.Condition(self._lock)  # notified when reports arrive or the queue shrinks
        self._send_lock = threading.Lock()  # one writer pass at a time (keeps partition order)
        self._nopen = 0  # batches being filled (in each writer's .open)
        self._express: dict[str, int] = {}  # topic -> address of its open sticky batch's shm_accum
        self._ready: collections.deque = collections.deque()  # closed batches, in close order
        self._reports: list = []  # (callback, err, msg) not yet served
        self._queued = 0  # records produced and not yet reported (len(self))
        self._kick = threading.Event()  # wakes the linger thread
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _writer(self, topic: str) -> _TopicWriter:
        if self._closed:
            raise errors.Closed("this producer is closed")
        w = self._writers.get(topic)
        if w is None:
            # two threads may get here for one topic: one writer wins (setdefault is atomic
            # under the GIL); a loser kept aside would hold batches no flush ever sees
            new = _TopicWriter(self, self._log.topic_handle(topic))
            w = self._writers.setdefault(topic, new)
            if w is not new:
                new.release()
        return w

    def _partition_ctx(self, w: _TopicWriter, partition: int) -> Any:
        if type(partition) is not int or not 0 <= partition < w.n:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise errors.InvalidType(f"partition must be int or None, not {type(partition).__name__}")
            if partition >= w.n and w.grow(self._log.topic_handle(w.handle.name)) > partition:
                return w.ctx(partition)  # alter_topic added it since this writer opened the topic
            raise errors.UnknownTopicOrPartition(
                f"topic {w.handle.name!r} has partitions 0..{w.n - 1}, not {partition}"
            )
        c = w.ctxs[partition]
        if c is None:
            if self._tid is not None:
                self._txn_add(w, partition)
            c = w.ctx(partition)
        return c

    # ------------------------------------------------------------ idempotence and transactions

    def _stamp(self, c: Any) -> None:
        """A new send context of an idempotent producer carries its producer id,
        epoch and sequence numbers (and the transactional bit)."""
        if not self._idempotent:
            return
        if self._pid < 0:
            self._pid, self._epoch = self._log.transactions.new_producer_id(), 0
        c.stamped = 1
        c.producer_id, c.producer_epoch, c.next_sequence = self._pid, self._epoch, 0
        c.batch_attributes = lib.SHM_RB_ATTR_TRANSACTIONAL if self._tid is not None else 0

    def _txn_check(self, what: str) -> None:
        if self._tid is None:
            raise errors.InvalidTxnState(f"{what} needs a transactional producer: log.producer(transactional_id=...)")
        if self._pid < 0:
            raise errors.InvalidTxnState(f"{what}: call init_transactions() first")
        if self._closed:
            raise errors.Closed("this producer is closed")

    def _txn_add(self, w: _TopicWriter, partition: int) -> None:
        """Adds the partition to the open transaction before anything is
        written there (control/transactions.py, T1)."""
        self._txn_check("a send")
        if not self._in_txn:
            raise errors.InvalidTxnState(
                "a transactional producer sends only inside a transaction: call begin_transaction() first"
            )
        self._log.transactions.add_partitions(self._tid, self._pid, self._epoch, [(w.handle.name, partition)])
        self._txn_parts.append((w, partition))

    def init_transactions(self, timeout: float | None = None) -> None:
        """Registers the transactional_id: fences every older producer with it
        (their next coordinator call raises ProducerFenced) and aborts the
        transaction one of them left open. Call once, before the first
        transaction."""
        if self._tid is None:
            raise errors.InvalidTxnState("init_transactions() needs log.producer(transactional_id=...)")
        if self._closed:
            raise errors.Closed("this producer is closed")
        if self._in_txn:
            raise errors.InvalidTxnState("init_transactions() inside an open transaction")
        owner = liveness.ensure_token(self._log.token_prefix)
        self._pid, self._epoch = self._log.transactions.init(self._tid, self._txn_timeout_ms, owner)
        for w in self._writers.values():  # contexts opened before: the new epoch, sequences from 0
            for c in w.ctxs + w.spare:
                if c is not None:
                    self._stamp(c)
            for p in range(w.n):
                w.park(p)

    def begin_transaction(self) -> None:
        """Starts a transaction: every send until commit_transaction() or
        abort_transaction() is in it."""
        self._txn_check("begin_transaction()")
        if self._in_txn:
            raise errors.InvalidTxnState("begin_transaction(): a transaction is already open")
        self._in_txn = True

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any, timeout: float | None = None) -> None:
        """Commits a consumer's offsets with the transaction: offsets is
        {(topic, partition): next offset} (or a list of (topic, partition,
        offset)), group_metadata consumer.consumer_group_metadata() (or a
        group name for a consumer without membership). At commit they are
        applied only if that member still owns the partitions."""
        self._txn_check("send_offsets_to_transaction()")
        if not self._in_txn:
            raise errors.InvalidTxnState("send_offsets_to_transaction() outside a transaction")
        group: Any = group_metadata
        token = 0
        if not isinstance(group_metadata, str):
            group, token = getattr(group_metadata, "group", None), getattr(group_metadata, "member_token", 0)
        if not isinstance(group, str):
            raise errors.InvalidType("group_metadata must be consumer.consumer_group_metadata() or a group name")
        items = offsets.items() if isinstance(offsets, dict) else [((o[0], o[1]), o[2]) for o in offsets]
        todo = []
        for tp, off in items:
            if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                raise errors.InvalidArgument(f"offset for {tp} must be an int >= 0, not {off!r}")
            self._log.ring(self._log.topic_handle(tp[0]), tp[1], writable=False)  # the partition exists
            todo.append(TxnOffset(group, tp[0], tp[1], off, token))
        self._log.transactions.add_offsets(self._tid, self._pid, self._epoch, todo)

    def commit_transaction(self, timeout: float | None = None) -> None:
        """Flushes what was produce()d, then commits the transaction: its
        records (every partition) and offsets become visible to read_committed
        consumers together. Raises ProducerFenced when a newer producer took
        the transactional_id, CommitFailed (the transaction aborted) when the
        group moved the offsets' partitions to another member."""
        self._end_txn(True, timeout)

    def abort_transaction(self, timeout: float | None = None) -> None:
        """Aborts the transaction: read_committed consumers never see its records."""
        self._end_txn(False, timeout)

    def _end_txn(self, commit: bool, timeout: float | None) -> None:
        what = "commit_transaction()" if commit else "abort_transaction()"
        self._txn_check(what)
        if self._loans:
            raise errors.LoanError(
                f"{what} with {len(self._loans)} loan(s) of this producer open (reserve()): "
                "end each loan's with block first; its record belongs to the transaction"
            )
        if not self._in_txn:
            raise errors.InvalidTxnState(f"{what} without begin_transaction()")
        if self._queued or self._nopen:
            left = self.flush(timeout)
            if left and commit:
                raise errors.Timeout(f"{what}: {left} produce()d records were not written within the timeout")
        try:
            self._log.transactions.end(self._tid, self._pid, self._epoch, commit)
        except errors.Timeout:
            raise  # the coordinator's lock stayed busy: the transaction is still open, call again
        except BaseException:
            self._txn_over()
            raise
        self._txn_over()

    def _txn_over(self) -> None:
        """The transaction ended (committed, aborted, or fenced): its partitions' contexts are parked."""
        self._in_txn = False
        for w, p in self._txn_parts:
            w.park(p)
        self._txn_parts = []

    # send(topic, value, key=None, headers=None, partition=None, timestamp_ms=None)
    #     -> RecordMetadata is ProducerBase.send (csrc/fastpath.c, where its docstring is): its
    #     express case (bytes value, no key, headers or timestamp) in C, the rest through _send_any.

    def _send_any(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        w = self._writers.get(topic) or self._writer(topic)
        if type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        if partition is None:
            if key is None:
                if w.keyed:
                    raise w.keyless()
                partition = w.next_sticky(len(value) if value is not None else 0)
            else:
                partition = (lib.shm_murmur2(key, len(key)) & 0x7FFFFFFF) % w.n
        if key is None and w.keyed:
            raise w.keyless()
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
        rc = self._write(
            w,
            partition,
            lib.shm_send,
            ctx,
            ffi.NULL if value is None else value,
            -1 if value is None else len(value),
            ffi.NULL if key is None else key,
            -1 if key is None else len(key),
            hdr,
            hlen,
            timestamp_ms,
        )
        return RecordMetadata(topic, partition, rc)

    def reserve(
        self,
        topic: str,
        nbytes: int,
        key: BytesLike | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> "Loan":
        """A loan of one record's value area in the ring, to write in place:
        ``with producer.reserve(topic, nbytes) as buf: buf[:] = ...`` — buf is
        a writable memoryview of exactly nbytes, the value bytes of the
        record's frame itself (the bytes send() would write). Leaving the
        block normally commits the record (CRC-32C summed over what is in the
        frame then; ``loan.metadata`` is its RecordMetadata); an exception
        inside aborts it as a gap (its offset is consumed, readers skip it)
        and propagates. buf is released when the block ends: using it raises
        ValueError. The ring is reserved (and max_block_ms waited for room)
        when the block is entered. See the README's "Writing in place"."""
        w = self._writers.get(topic) or self._writer(topic)
        if type(nbytes) is not int:
            raise errors.InvalidType(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise errors.InvalidArgument(f"nbytes must be >= 0, not {nbytes}")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        if key is None and w.keyed:
            raise w.keyless()
        if partition is None:
            partition = w.next_sticky(nbytes) if key is None else (lib.shm_murmur2(key, len(key)) & 0x7FFFFFFF) % w.n
        if timestamp_ms is not None and (type(timestamp_ms) is not int or timestamp_ms < 0):
            raise errors.InvalidArgument("timestamp_ms must be an int >= 0 (ms since the epoch) or None")
        hdr = encode_headers(headers) if headers else None
        ctx = self._partition_ctx(w, partition)
        return Loan(self, w, partition, ctx, nbytes, key, hdr, -1 if timestamp_ms is None else timestamp_ms)

    def _loans_on(self, durable_only: bool) -> list["Loan"]:
        return [x for x in self._loans if not durable_only or x._w.handle.config.persistence == "disk"]

    def send_batch(
        self,
        topic: str,
        values: Sequence[BytesLike | None],
        keys: Sequence[BytesLike | None] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> list[BatchMetadata]:
        """Appends many records with one reservation per partition touched (one
        frame each). Without keys (or with an explicit partition) that is one
        frame; with keys, records are grouped by their murmur2 partition, order
        kept within each. Returns [BatchMetadata] in partition order."""
        w = self._writers.get(topic) or self._writer(topic)
        if not isinstance(values, (list, tuple)):
            try:
                values = list(values)
            except TypeError:
                raise errors.InvalidType(f"values must be a list of bytes, not {type(values).__name__}") from None
        if not values:
            return []
        if w.keyed and (keys is None or any(k is None for k in keys)):
            raise w.keyless()
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
                return [
                    self._append(w, p, [values[i] for i in idx], [keys[i] for i in idx], timestamp_ms)
                    for p, idx in sorted(by_part.items())
                ]
        if partition is None:
            partition = w.next_sticky(STICKY_BYTES)  # a batch moves the sticky partition on
        return [self._append(w, partition, values, keys, timestamp_ms)]

    def _append(
        self,
        w: _TopicWriter,
        partition: int,
        values: Sequence[BytesLike | None],
        keys: Sequence[BytesLike | None] | None,
        timestamp_ms: int | None,
    ) -> BatchMetadata:
        ctx = self._partition_ctx(w, partition)
        if timestamp_ms is not None and (type(timestamp_ms) is not int or timestamp_ms < 0):
            raise errors.InvalidArgument("timestamp_ms must be an int >= 0 (ms since the epoch) or None")
        if keys is not None and all(k is None for k in keys):
            keys = None
        inp, keep = _batch_in(values, keys, -1 if timestamp_ms is None else timestamp_ms)
        out = ffi.new("struct shm_append_out *")
        self._write(w, partition, lib.shm_send_batch, ctx, inp, out)
        return BatchMetadata(w.handle.name, partition, out.base_offset, out.count)

    def send_packed(
        self,
        topic: str,
        data: Any,
        lengths: Any,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> list[BatchMetadata]:
        """send_batch for values already packed: data is one bytes-like buffer,
        lengths an int64 sequence (numpy array, array('q')) of value lengths.
        No per-record Python work at all."""
        w = self._writers.get(topic) or self._writer(topic)
        if w.keyed:
            raise w.keyless()
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

    def send_encoded(self, topic: str, partition: int, batch: BytesLike, leader_epoch: int = 0) -> BatchMetadata:
        """Appends one Kafka RecordBatch v2 encoded elsewhere (the Kafka
        listener's path): the C core checks its header and CRC and stores it
        unchanged apart from baseOffset and partitionLeaderEpoch; the records
        of an uncompressed batch are walked too (shm_batch_check_foreign).
        Raises CorruptRecord (framing, CRC) or InvalidArgument (record counts,
        a malformed record, maxTimestamp, control batch) for a batch Kafka
        would refuse. The batch goes to the topic that is live under that name
        now: a writer still held for a deleted (and re-created) topic is let go
        first, so the Kafka listener's first Produce after a topic was
        re-created is stored, not refused."""
        w = self._writers.get(topic)
        if w is None or w.handle.generation != self._log.topic_handle(topic).generation:
            if w is not None:
                self._topic_gone(w)
            w = self._writer(topic)
        ctx = self._partition_ctx(w, partition)
        out = ffi.new("struct shm_append_out *")
        rc = lib.shm_send_raw(ctx, batch, len(batch), leader_epoch, out)
        if rc == lib.SHM_E_CORRUPT:
            raise errors.CorruptRecord(
                f"record batch for {topic!r} partition {partition} fails its RecordBatch v2 framing or CRC-32C check"
            )
        if rc == lib.SHM_E_INVALID:
            raise errors.InvalidArgument(
                f"record batch for {topic!r} partition {partition}: record count "
                "disagrees with lastOffsetDelta, a record is malformed, maxTimestamp "
                "is not its records' largest, or it is a control batch"
            )
        if rc < 0:
            self._write(w, partition, lib.shm_send_raw, ctx, batch, len(batch), leader_epoch, out)
        return BatchMetadata(w.handle.name, partition, out.base_offset, out.count)

    def _write(self, w: _TopicWriter, partition: int, fn: Callable[..., int], *args: Any) -> int:
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

    def _fail(self, rc: int, w: _TopicWriter, partition: int) -> NoReturn:
        name = w.handle.name
        if rc == lib.SHM_E_TOPIC_GONE:
            w.release()
            self._writers.pop(name, None)
            self._log._forget(name)
            raise errors.TopicDeleted(f"topic {name!r} was deleted while this producer wrote to it")
        if rc == lib.SHM_E_OFFLINE:
            raise errors.PartitionOffline(self._log.offline_reason(w.handle, partition))
        if rc == lib.SHM_E_FULL:
            ring = w.rings[partition]
            err = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_PERSIST_ERRNO) if ring is not None else 0
            why = full_ring_cause(
                ring.h if ring is not None else None,
                self._log.token_prefix_c,
                w.handle.config.persistence == "disk",
                self._timeout_ns // 1_000_000,
                err,
            )
            raise errors.BufferFull(
                f"topic {name!r} partition {partition}: no ring space for "
                f"{self._timeout_ns // 1_000_000} ms: {why}"
                + ("" if w.handle.config.overflow == "block" else "; consumers never hold space back")
            )
        if rc == lib.SHM_E_NOSPACE:
            ring = w.rings[partition]
            have = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_COMMITTED) if ring is not None else 0
            raise errors.NoSpace(
                f"topic {name!r} partition {partition}: its ring cannot commit memory past the "
                f"{have >> 10} KiB it has (nothing was written; every record before is kept): " + memory_shortfall()
            )
        if rc == lib.SHM_E_TOO_LARGE:
            raise errors.RecordTooLarge(
                f"record batch is larger than topic {name!r}'s max_message_bytes "
                f"({w.handle.config.max_message_bytes}); send smaller records or batches"
            )
        if rc == lib.SHM_E_INVALID:
            raise errors.InvalidArgument("invalid record lengths")
        raise_status(rc, f"send to topic {name!r} partition {partition} failed")

    # ------------------------------------------------------------ asynchronous producer

    # produce(topic, value=None, key=None, headers=None, partition=None, timestamp=None,
    #         on_delivery=None, callback=None) is ProducerBase.produce (csrc/fastpath.c, where its
    #         docstring is): its express case in C, everything else through _produce_any.

    def _produce_any(
        self,
        topic: str,
        value: BytesLike | None = None,
        key: BytesLike | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        """produce() for every case its C express path does not take."""
        self._produce(topic, value, key, headers, partition, timestamp, on_delivery or callback or self._on_delivery)

    def _produce(
        self,
        topic: str,
        value: Any,
        key: Any,
        headers: Headers | None,
        partition: int | None,
        timestamp: int | None,
        cb: DeliveryCallback | None,
    ) -> None:
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        w = self._writers.get(topic) or self._writer(topic)
        if key is not None:
            if type(key) is not bytes:
                key = _as_bytes(key, "key")
            if partition is None:
                partition = (lib.shm_murmur2(key, len(key)) & 0x7FFFFFFF) % w.n
        elif w.keyed:
            raise w.keyless()
        if partition is None:
            partition = w.sticky
        elif type(partition) is not int or not 0 <= partition < w.n:
            self._partition_ctx(w, partition)  # raises the right error
        if self._tid is not None and w.ctxs[partition] is None:
            self._partition_ctx(w, partition)  # added to the transaction before the record is queued
        if cb is not None and not callable(cb):
            raise errors.InvalidType("on_delivery must be callable(err, msg)")
        if timestamp is not None and (type(timestamp) is not int or timestamp < 0):
            raise errors.InvalidArgument("timestamp must be an int >= 0 (ms since the epoch) or None")
        hdr = encode_headers(headers) if headers else None
        args = (
            ffi.NULL if value is None else value,
            -1 if value is None else len(value),
            ffi.NULL if key is None else key,
            -1 if key is None else len(key),
            ffi.NULL if hdr is None else hdr,
            -1 if hdr is None else len(hdr),
        )
        with self._lock:
            if self._queued >= self._max_queued:
                raise errors.BufferFull(
                    f"{self._queued} records wait for delivery (queue_buffering_max_messages); call poll() or flush()"
                )
            b = w.open[partition]
            if b is not None and (b.timed != (timestamp is not None) or (timestamp is not None and b.ts != timestamp)):
                self._close_batch(b)
                b = None
            for _ in range(2):
                if b is None:
                    b = self._new_batch(w, topic, partition, timestamp)
                i = lib.shmx_accum_add_full(b.acc, *args)
                if i >= 0:
                    break
                if i == lib.SHM_E_TOO_LARGE:
                    raise errors.RecordTooLarge(
                        f"record of {len(value or b'') + len(key or b'') + len(hdr or b'')} bytes is larger than "
                        f"topic {topic!r}'s max_message_bytes ({w.handle.config.max_message_bytes})"
                    )
                if i in (lib.SHM_E_INVALID, lib.SHM_E_NOSPACE):
                    raise_status(i, "cannot queue the record")
                self._close_batch(b)  # full (or sealed): the record opens the next batch
                b = None
            assert b is not None  # the loop breaks with a batch or raises
            if cb is not None:
                if b.reps is None:
                    b.reps = []
                b.reps.append((i, cb, key, value, headers))
            if b.acc.count >= b.acc.max_count or b.acc.bytes >= b.acc.max_bytes - 64:
                self._close_batch(b)
            ready = bool(self._ready)
        if ready:
            # Closed batches (this one, or ones linger_ms closed) are written by the thread
            # that produces: a producing loop holds the GIL and starves the background
            # thread. When the queue is half full and the background thread is in a pass,
            # wait for that pass instead of running into BufferFull with room in the ring.
            self._write_ready(0, wait=self._queued >= self._max_queued // 2)

    def _new_batch(self, w: _TopicWriter, topic: str, partition: int, timestamp: int | None) -> _Batch:
        now = time.monotonic()
        ts = timestamp if timestamp is not None else time.time_ns() // 1_000_000
        b = w.open[partition] = _Batch(
            w,
            partition,
            ts,
            timestamp is not None,
            now,
            self._linger_s,
            self._batch_num,
            min(self._batch_bytes, w.batch_limit),
        )
        if timestamp is None and partition == w.sticky and self._on_delivery is None and not w.keyed:
            self._express[topic] = b.addr  # (records of the express path have no callback)
        self._nopen += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._linger_loop, name="shmlog-producer", daemon=True)
            self._thread.start()
        elif self._nopen == 1:
            self._kick.set()  # the thread sleeps without a deadline
        return b

    def _open_batches(self) -> list[_Batch]:
        return [b for w in self._writers.values() for b in w.open if b is not None] if self._nopen else []

    def _close_batch(self, b: _Batch) -> None:
        """Seals b (no express add succeeds after this, GIL-atomic) and moves
        it to the batches ready to write (lock held)."""
        w = b.w
        w.open[b.partition] = None
        self._nopen -= 1
        b.count = lib.shmx_accum_seal(b.acc)
        name = w.handle.name
        if self._express.get(name) == b.addr:
            del self._express[name]
        if b.count:
            self._ready.append(b)
            self._queued += b.count
        if b.partition == w.sticky:
            w.next_sticky(STICKY_BYTES)  # Kafka's sticky partitioner: a new batch, a new partition
            nb = w.open[w.sticky]
            if nb is not None and not nb.timed and self._on_delivery is None:
                self._express[name] = nb.addr

    def _linger_loop(self) -> None:
        """The background thread: closes batches whose linger_ms passed and
        writes ready batches, retrying a full ring until message_timeout_ms.
        Sleeps on an Event until the next linger deadline (or a kick). An
        unexpected error is logged and the loop goes on (it must outlive it:
        lingering batches depend on it)."""
        while True:
            try:
                if self._linger_step():
                    return
            except Exception:
                logging.getLogger("shmlog").exception("producer background thread")
                time.sleep(0.1)

    def _linger_step(self) -> bool:
        """One round of the background thread; True when the producer is closing."""
        self._kick.clear()
        with self._lock:
            if self._stopping:
                return True
            now = time.monotonic()
            opened = self._open_batches()
            for b in opened:
                if b.deadline <= now:
                    self._close_batch(b)
            nxt = min((b.deadline for b in opened if b.deadline > now), default=None)
            pending = bool(self._ready)
        if pending:
            self._write_ready(ASYNC_SLICE_NS, wait=True)
            with self._lock:
                if self._ready:
                    return False  # a full ring: the next round retries at once
        self._kick.wait(None if nxt is None else max(nxt - time.monotonic(), 0))
        return False

    def _write_ready(self, slice_ns: int, wait: bool) -> bool:
        """One pass over the ready batches, in order, each written with one C
        call that waits at most slice_ns for room. A batch that finds its ring
        full stays queued (and so do the later batches of its partition:
        order is kept) until message_timeout_ms after its first record, then
        fails with BufferFull. wait=False: skip the pass if another thread is
        in one. Returns True when batches remain queued."""
        if not self._send_lock.acquire(blocking=wait):
            return True
        try:
            with self._lock:
                todo, self._ready = self._ready, collections.deque()
            back, blocked, done = [], set(), []
            while todo:
                b = todo.popleft()
                tp = (b.w.handle.name, b.partition)
                if tp in blocked:
                    back.append(b)
                    continue
                res = self._write_batch(b, slice_ns)
                if res is None:  # no room yet
                    if time.monotonic() - b.born >= self._message_timeout_s:
                        done.append((b, -1, self._full_error(b)))
                    else:
                        blocked.add(tp)
                        back.append(b)
                elif isinstance(res, list):  # too large as one frame: the halves go next
                    todo.extendleft(reversed(res))
                else:
                    done.append((b,) + res)
            with self._lock:
                self._ready.extendleft(reversed(back))
                for b, base, err in done:
                    self._report(b, base, err)
                self._cond.notify_all()
                more, reported = bool(self._ready), bool(self._reports)
        finally:
            self._send_lock.release()
        if reported and self._report_hook is not None:
            self._report_hook()
        return more

    def _write_batch(self, b: _Batch, slice_ns: int) -> Any:
        """Writes b as one frame: (base_offset, None) on success, (-1, error)
        on a failure that retrying cannot fix, None when the ring stayed full."""
        w, p = b.w, b.partition
        try:
            src = w.ctxs[p] or w.ctx(p)
            ctx = ffi.new("struct shm_send_ctx *", src[0])
        except errors.UnknownTopicOrPartition as e:  # deleted before its ring was opened here
            self._topic_gone(w)
            return -1, e
        except errors.ShmlogError as e:
            return -1, e
        ctx.timeout_ns = slice_ns
        out = ffi.new("struct shm_append_out *")
        inp = ffi.new("struct shm_batch_in *")
        lib.shm_accum_batch_in(b.acc, inp, b.ts)
        if self._codec == compression.NONE:
            rc = lib.shm_send_batch(ctx, inp, out)
            src.next_sequence = ctx.next_sequence  # the copy took the batch's sequence numbers
        else:
            batch = _compressed_batch(self._codec, inp, b.ts)
            rc = lib.shm_send_raw(ctx, batch, len(batch), 0, out)
        if rc == 0:
            return out.base_offset, None
        if rc == lib.SHM_E_FULL:
            if w.handle.config.persistence == "disk" and self._log._start_persister:
                self._log.ensure_persister()
            return None
        try:
            self._fail(rc, w, p)
        except errors.TopicDeleted as e:
            self._topic_gone(w)
            return -1, e
        except errors.ShmlogError as e:
            return -1, e
        return -1, errors.ShmlogError(f"write failed with status {rc}")

    def _topic_gone(self, w: _TopicWriter) -> Any:
        """The topic of w was deleted: its open batches can never be written
        (closed here, their next write reports it) and the next produce()
        looks the topic up again."""
        name = w.handle.name
        with self._lock:
            for ob in w.open:
                if ob is not None:
                    self._close_batch(ob)
            if self._writers.get(name) is w:
                w.release()
                del self._writers[name]
                self._log._forget(name)

    def _full_error(self, b: _Batch) -> errors.ShmlogError:
        try:
            self._fail(lib.SHM_E_FULL, b.w, b.partition)
        except errors.BufferFull as e:
            return errors.BufferFull(f"{e} — retried for message_timeout_ms ({int(self._message_timeout_s * 1000)} ms)")

    def _report(self, b: _Batch, base: int, err: BaseException | None) -> None:
        """Queues b's delivery reports (lock held); records without a callback are done now."""
        n = b.count
        reps = b.reps or ()
        self._queued -= n - len(reps)
        if err is not None and len(reps) < n:
            logging.getLogger("shmlog").warning(
                "%d records to %r partition %d not delivered: %s", n - len(reps), b.w.handle.name, b.partition, err
            )
        topic, p, ts = b.w.handle.name, b.partition, b.ts
        out = self._reports
        for i, cb, key, value, h in reps:
            h = () if not h else tuple(h.items()) if isinstance(h, dict) else tuple(map(tuple, h))
            out.append((cb, err, Message(topic, p, -1 if err is not None else base + i, key, value, h, ts)))
        b.acc = None  # the columns are freed now, not at the next GC

    def poll(self, timeout: float | None = None) -> int:
        """Serves delivery callbacks; waits up to timeout seconds (None: until
        one arrives, or at once when nothing awaits delivery) for the first.
        Returns how many callbacks ran. An exception from a callback
        propagates; the reports after it stay queued."""
        _check_wait(timeout)
        with self._lock:
            if not self._reports and timeout != 0 and self._queued:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._reports and self._queued:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            reps, self._reports = self._reports, []
        return self._serve(reps)

    def _serve(self, reps: list[tuple[DeliveryCallback, BaseException | None, Message]]) -> int:
        for i, (cb, err, msg) in enumerate(reps):
            try:
                cb(err, msg)
            except BaseException:
                with self._lock:
                    self._queued -= i + 1
                    self._reports[:0] = reps[i + 1 :]
                raise
        if reps:
            with self._lock:
                self._queued -= len(reps)
                self._cond.notify_all()
        return len(reps)

    def __len__(self) -> int:
        """Records produced and not yet reported (confluent-kafka's len(producer))."""
        with self._lock:
            return self._queued + sum(b.acc.count for b in self._open_batches())

    def flush(self, timeout: float | None = None, durable: bool = False) -> int:
        """Writes every record produce()d so far (without waiting for
        linger_ms), serves their delivery callbacks and returns how many
        records are still queued (0 unless timeout ran out). send()s are
        visible when they return, so they need no flush. With durable=True it
        then waits until every record written so far to a durable topic is
        fsynced (waking the persister), raising Timeout past timeout."""
        if self._closed:
            raise errors.Closed("this producer is closed")
        _check_wait(timeout)
        if durable and self._loans_on(True):
            raise errors.LoanError(
                "flush(durable=True) with a loan of this producer open on a durable topic (reserve()): "
                "the persister cannot pass the open record, so the flush would wait for the caller itself"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        left = self._drain(deadline)
        if durable:
            self._durable_wait(None if deadline is None else max(deadline - time.monotonic(), 0), timeout)
        return left

    def _drain(self, deadline: float | None) -> int:
        """flush's body: close every batch, write until empty or deadline, serve reports."""
        with self._lock:
            for b in self._open_batches():
                self._close_batch(b)
        while True:
            rem = None if deadline is None else deadline - time.monotonic()
            slice_ns = ASYNC_SLICE_NS if rem is None else max(0, min(ASYNC_SLICE_NS, int(rem * 1e9)))
            more = self._write_ready(slice_ns, wait=True) if self._ready else False
            with self._lock:
                reps, self._reports = self._reports, []
            self._serve(reps)
            if not self._queued:
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                return self._queued
            if not more:
                with self._lock:  # another thread is serving: wait for it
                    if self._queued and not self._reports and not self._ready:
                        self._cond.wait(0.05 if rem is None else max(min(rem, 0.05), 0))

    def _durable_wait(self, tleft: float | None, timeout: float | None) -> Any:
        tns = -1 if tleft is None else int(tleft * 1e9)
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
                    raise errors.Timeout(
                        f"topic {w.handle.name!r} partition {ring.partition}: records "
                        f"not fsynced within {timeout} s{why}"
                    )
                if rc == lib.SHM_E_TOPIC_GONE:
                    raise errors.TopicDeleted(f"topic {w.handle.name!r} was deleted before the flush")
                if rc == lib.SHM_E_OFFLINE:
                    raise errors.PartitionOffline(self._log.offline_reason(w.handle, ring.partition, ring))

    def close(self, timeout: float | None = None) -> None:
        """Flushes produce()d records (up to timeout seconds; None: until each
        is written or its message_timeout_ms ran out), fails the rest with
        Closed through their callbacks, stops the linger thread and releases
        this process's producer slots."""
        if self._closed:
            return
        for loan in list(self._loans):  # before the slots go: each becomes a gap (ring.c, L3)
            loan._abandon("the producer was closed inside the loan")
        try:
            if self._queued or self._nopen:
                self._drain(None if timeout is None else time.monotonic() + timeout)
            if self._in_txn:  # Kafka leaves it to time out; aborting now frees the partitions' LSO at once
                try:
                    self.abort_transaction()
                except errors.ProducerFenced:
                    pass
        finally:
            with self._lock:
                self._stopping = True
                for b in self._open_batches():
                    self._close_batch(b)
                rest, self._ready = list(self._ready), collections.deque()
                for b in rest:
                    self._report(b, -1, errors.Closed("the producer was closed before this record was written"))
                reps, self._reports = self._reports, []
            self._kick.set()
            t = self._thread
            if t is not None and t is not threading.current_thread():
                t.join(5)
            for w in self._writers.values():
                w.release()
            self._writers.clear()
            self._closed = True
            self._serve(reps)

    def _after_fork(self) -> None:
        # the slots belong to the parent; the child claims its own on first send.
        # Records the parent produce()d are the parent's to deliver: the child's queue starts empty.
        # Loans open at the fork are the parent's to end: the child's views are released.
        for loan in self._loans:
            loan._forked()
        self._loans = set()
        for w in self._writers.values():
            w._xclear()
            w.ctxs = [None] * w.n
        self._writers.clear()
        self._async_reset()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOAN_NEW, _LOAN_OPEN, _LOAN_DONE, _LOAN_ABANDONED = range(4)


class Loan:
    """One record being written in place (Producer.reserve; csrc/ring.c,
    "Producer loans", L1-L4). A context manager: entering reserves the frame
    (waiting up to max_block_ms for room) and returns the writable view of its
    value; leaving commits it (metadata is then its RecordMetadata) or, on an
    exception, aborts it as a gap. The loan holds a producer slot of its own,
    so the producer's other calls never wait on it (L1); while it is open the
    partition's readers wait at its record."""

    __slots__ = (
        "_p",
        "_w",
        "partition",
        "_ctx",
        "_ring",
        "_args",
        "_loan",
        "_view",
        "_src",
        "_state",
        "_why",
        "metadata",
    )

    def __init__(
        self, p: Producer, w: _TopicWriter, partition: int, ctx: Any, nbytes: int, key: Any, hdr: Any, ts: int
    ) -> None:
        self._p, self._w, self.partition, self._ctx = p, w, partition, ctx
        self._ring = w.rings[partition]  # keeps the mapping alive as long as the loan
        self._args = (nbytes, key, hdr, ts)
        self._loan = ffi.new("struct shm_loan *")
        self._view: memoryview | None = None
        self._src: Any = None  # the view's exporter (fastpath ViewSource), held so release() can count it
        self._state = _LOAN_NEW
        self._why = ""
        self.metadata: RecordMetadata | None = None  # set when the record is committed

    @property
    def offset(self) -> int:
        """The record's offset: claimed when the loan was entered (-1 before)."""
        return self._loan.base_offset if self._state != _LOAN_NEW else -1

    def __enter__(self) -> memoryview:
        p, w = self._p, self._w
        if self._state != _LOAN_NEW:
            raise errors.LoanError("a loan is entered once: call producer.reserve() again for the next record")
        if p._closed:
            raise errors.Closed("this producer is closed")
        nbytes, key, hdr, ts = self._args
        slot = self._take_slot()
        try:
            p._write(
                w,
                self.partition,
                lib.shm_loan_begin,
                self._ctx,
                slot,
                nbytes,
                ffi.NULL if key is None else key,
                -1 if key is None else len(key),
                ffi.NULL if hdr is None else hdr,
                -1 if hdr is None else len(hdr),
                ts,
                self._loan,
            )
        except BaseException:
            self._give_slot(slot)
            self._state = _LOAN_DONE
            raise
        view = loan_view(int(ffi.cast("uintptr_t", self._loan.value)), nbytes)
        self._view, self._src, self._state = view, view.obj, _LOAN_OPEN
        p._loans.add(self)
        return view

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if self._state != _LOAN_OPEN:
            if self._state == _LOAN_ABANDONED and et is None:
                raise errors.LoanError(f"{self._why}: the record was not written")
            return
        held = release_views([self._view])  # L2: no view of ours survives the loan
        self._view = None
        self._p._loans.discard(self)
        r = self._ring.h
        ok = et is None and not held
        rc = lib.shm_loan_commit(r, self._loan) if ok else lib.shm_loan_abort(r, self._loan)
        self._state = _LOAN_DONE
        self._give_slot(self._loan.slot)
        if held and et is None:
            raise errors.LoanError(
                f"a view derived from the loan's buffer (a slice, memoryview or array of it) still exists at the end "
                f"of the loan: offset {self._loan.base_offset} of {self._w.handle.name!r} partition {self.partition} "
                "was aborted as a gap; copy what you keep and drop derived views inside the with block"
            )
        if rc != lib.SHM_OK:
            raise_status(rc, f"loan of {self._w.handle.name!r} partition {self.partition} could not end")
        if ok:
            if self._ring.deleted():  # committed into the deleted ring: gone with it
                self._p._fail(lib.SHM_E_TOPIC_GONE, self._w, self.partition)
            self.metadata = RecordMetadata(self._w.handle.name, self.partition, self._loan.base_offset)

    def _take_slot(self) -> int:
        idle = self._w.loan_slots[self.partition]
        if idle:
            return idle.pop()
        log = self._p._log
        pid, st = liveness.ensure_token(log.token_prefix)
        slot = lib.shm_ring_claim_slot(self._ring.h, pid, st, log.token_prefix_c)
        if slot == lib.SHM_E_NO_SLOT:
            raise errors.TooManyProducers(
                f"topic {self._w.handle.name!r} partition {self.partition}: all {lib.SHM_PRODUCER_SLOTS} "
                "producer slots are held (each open loan holds one)"
            )
        if slot < 0:
            raise_status(slot, "cannot claim a producer slot for a loan")
        return slot

    def _give_slot(self, slot: int) -> None:
        p, w = self._p, self._w
        if not p._closed and p._writers.get(w.handle.name) is w:
            w.loan_slots[self.partition].append(slot)  # kept for the next loan
        elif self._ring.base != ffi.NULL:
            lib.shm_ring_release_slot(self._ring.base, slot)  # the writer is gone: so is its slot

    def _abandon(self, why: str) -> None:
        """close() (or garbage collection) while open: the record becomes a gap (L3)."""
        if self._state != _LOAN_OPEN:
            return
        release_views([self._view])
        self._view = None
        lib.shm_loan_abort(self._ring.h, self._loan)
        self._p._loans.discard(self)
        self._give_slot(self._loan.slot)
        self._state, self._why = _LOAN_ABANDONED, why

    def _forked(self) -> None:
        """In a forked child: the parent ends this loan; the child's view goes (L2)."""
        if self._state == _LOAN_OPEN:
            release_views([self._view])
            self._view = None
            self._state, self._why = _LOAN_ABANDONED, "the loan was opened before fork(): the parent process ends it"


def _check_wait(timeout: object) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
        raise errors.InvalidArgument("timeout must be a number of seconds >= 0, or None")


def _batch_in(
    values: Sequence[BytesLike | None], keys: Sequence[BytesLike | None] | None, ts: int
) -> tuple[Any, list[Any]]:
    """A struct shm_batch_in over packed copies of the columns, and the objects keeping them alive."""
    vblob, vlens = _pack(values, "values")
    inp = ffi.new("struct shm_batch_in *")
    inp.count = len(values)
    keep = [inp, ffi.from_buffer(vblob), ffi.from_buffer("int64_t[]", vlens)]
    inp.values, inp.value_lens = keep[1], keep[2]
    if keys is not None:
        kblob, klens = _pack(keys, "keys")
        keep += [ffi.from_buffer(kblob), ffi.from_buffer("int64_t[]", klens)]
        inp.keys, inp.key_lens = keep[-2], keep[-1]
    inp.timestamp_ms = ts
    return inp, keep


HDR = lib.SHM_BATCH_HEADER_BYTES


def _compressed_batch(codec: int, inp: Any, ts: int) -> bytes:
    """The batch as a Kafka RecordBatch v2 whose records section is
    compressed with codec (attributes bits 0-2), CRC-32C recomputed: what a
    Kafka client sends, stored as one frame by shm_send_raw."""
    size = lib.shm_batch_encoded_size(inp)
    if size < 0:
        raise_status(size, "cannot encode the batch")
    buf = ffi.new("uint8_t[]", size)
    lib.shm_batch_encode(buf, size, inp, 0, ts)
    raw = ffi.buffer(buf, size)
    out = bytearray(raw[:HDR])
    out += compression.compress(codec, raw[HDR:])
    struct.pack_into(">i", out, lib.SHM_RB_LENGTH, len(out) - lib.SHM_RB_LENGTH - 4)  # bytes after the field
    struct.pack_into(">h", out, lib.SHM_RB_ATTRIBUTES, codec)  # the codec, CreateTime
    at = lib.SHM_RB_ATTRIBUTES
    struct.pack_into(">I", out, lib.SHM_RB_CRC, lib.shm_crc32c(0, ffi.from_buffer(out) + at, len(out) - at))
    return bytes(out)


def _pack(items: Sequence[Any], what: str) -> tuple[bytes, Any]:
    """list of bytes|None -> (one bytes blob, int64 lengths, -1 for None): in
    one C pass (_fastpath.pack) when every item is exact bytes or None."""
    packed = pack_bytes(items) if isinstance(items, (list, tuple)) else None
    if packed is not None:
        return packed
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
