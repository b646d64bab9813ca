"""client/consumer.py — Consumer: reads records from partition rings.

Owns: the assignment (explicit: every partition of the subscribed topics, or
assign()), one cursor per assigned partition, the read buffer, turning the
C core's decoded columns into Message objects (or numpy Columns), waiting
(spin, then park on the rings' futexes), offset-reset policy (what a
lapped cursor does), inflating compressed batches (shmlog.compression) over
as many reads as they take, following its topics (deletion, re-creation,
growth), pause/resume and stored offsets. Each partition's cursor, the
switch between its segment files and its ring, and sealing a dead
producer's half-written frame are its PartitionReader's (client/reader.py).
Must never: block a producer, return a record twice or out of order within
a partition, skip a record silently, or return bytes the ring lapped during
the copy (the C core re-checks).

Cursors, decoded records and inflated batches are process-local: a consumer
that dies at any step leaves nothing shared half-done; a group's successor
starts from the committed offset (at-least-once for what was not committed).
"""

import logging
import sys
import time
import functools
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from .. import compression, errors, storage
from ..control import groups
from ..control.ring_map import Ring
from ..control.tables import validate_group_name
from .membership import MEMBER_OPTIONS, Membership
from .reader import LAPPED, PartitionReader
from .._fastpath import ConsumerBase
from .._fastpath import large_value
from .._fastpath import messages as batch_messages
from .._fastpath import release as release_views
from .._fastpath import values as batch_values
from .._fastpath import view as ring_view
from .._native import address_of, ffi, lib
from ..records import Columns, Message, decode_headers

RESETS = ("earliest", "latest", "none")
ROW = lib.SHM_ROW_FIELDS  # int64 fields per decoded record, see csrc/shmlog.h
LARGE_BYTES = 64 << 10  # records this large are copied once, straight from the ring
DEFAULT_BUFFER = 4 << 20
GROUP_WAIT_S = 0.1  # a consumer's longest sleep between looks at its group and the topic table
logger = logging.getLogger("shmlog")


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise errors.InvalidArgument("timeout must be a number of seconds >= 0, or None")


class _Part(PartitionReader):
    """One assigned partition: its reader (ring, files, cursor) and what the consumer keeps beside it."""

    __slots__ = ("reset_to", "large", "data", "generation", "max_bytes", "inflated", "paused", "stored")
    reset_to: int | None
    inflated: tuple[tuple[int, int], bytes] | None
    stored: int | None

    def __init__(
        self,
        log: Any,
        topic: str,
        partition: int,
        ring: Ring,
        plog: storage.PartitionLog | None,
        generation: int = 0,
        max_bytes: int = 1 << 20,
        read_committed: bool = True,
    ) -> None:
        super().__init__(log, topic, partition, ring, plog, read_committed=read_committed)
        self.reset_to = None  # an offset to seek to before the next read
        self.large = False  # the last record was large: try the one-copy path first
        self.data = ffi.cast("uint8_t *", ring.base) + lib.SHM_RING_HEADER_BYTES
        self.generation = generation  # the topic generation the ring belongs to
        self.max_bytes = max_bytes  # the topic's max_message_bytes: bound of an inflated batch
        self.inflated = None  # ((frame pos, base offset), plain batch) of a batch read in parts
        self.paused = False  # pause(): not read until resume()
        self.stored = None  # store_offsets(): the offset auto-commit commits


class GroupMetadata(NamedTuple):
    """consumer.consumer_group_metadata(): a group and the member that owns its partitions (0: none)."""

    group: str
    member_token: int


class Consumer(ConsumerBase):
    """Reads records.

    With group= and topics= it is a member of that consumer group: the group
    shares the topics' partitions among its members (control/groups.py, client/membership.py), and
    commit() / auto-commit store the group's offsets. With group= and no
    topics, assign() picks partitions and commits are unfenced (Kafka's
    assign mode). Without a group it reads every partition of `topics` (or
    what assign() names) and keeps no offsets.

    wait="park" spins for spin_us then sleeps on a futex; wait="spin" spins
    for the whole timeout (lowest latency, burns a core)."""

    def __init__(
        self,
        log: Any,
        topics: str | Iterable[str] | None = None,
        group: str | None = None,
        *,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        wait: str = "park",
        spin_us: int = 50,
        check_crcs: bool = True,
        max_poll_records: int = 500,
        buffer_bytes: int = DEFAULT_BUFFER,
        consumer_timeout_ms: int | None = None,
        enable_auto_offset_store: bool = True,
        copy: bool = True,
        isolation_level: str = "read_committed",
        **group_options: Any,
    ) -> None:
        if group_options and group is None:
            raise errors.InvalidArgument(f"{sorted(group_options)} need group=")
        if auto_offset_reset not in RESETS:
            raise errors.InvalidArgument(f"auto_offset_reset must be one of {RESETS}")
        if wait not in ("park", "spin"):
            raise errors.InvalidArgument("wait must be 'park' or 'spin'")
        if isolation_level not in ("read_committed", "read_uncommitted"):
            raise errors.InvalidArgument(
                f"isolation_level must be 'read_committed' or 'read_uncommitted', not {isolation_level!r}"
            )
        self._read_committed = isolation_level == "read_committed"
        for name, v in (("spin_us", spin_us), ("max_poll_records", max_poll_records), ("buffer_bytes", buffer_bytes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "spin_us" else 1):
                raise errors.InvalidArgument(f"{name} must be a positive int")
        self._log = log
        self._reset = auto_offset_reset
        self._spin_ns = -1 if wait == "spin" else spin_us * 1000
        # park mode: the adaptive spin's process-local state (csrc/ring.c, above shm_wait_any)
        self._spin_state = ffi.NULL if wait == "spin" else ffi.new("struct shm_spin_state *")
        self._crc = int(bool(check_crcs))
        self._max_poll = max_poll_records
        self._consumer_timeout = None if consumer_timeout_ms is None else consumer_timeout_ms / 1000
        # copy=False: values are read-only memoryviews, released at the poll after they were all returned
        # (see _release); the read buffers they view and the partitions whose ring they view stay until then
        self._views: list[memoryview] | None = None if copy else []
        self._retired: list[Any] = []
        self._pinned: list[_Part] = []
        self._buf: Any = None
        self._set_buffer(buffer_bytes)
        self._out_cap = 0
        self._out: Any = None
        self._rows: Any = None
        self._grow_out(max(max_poll_records, 1024))
        self._parts: list[_Part] = []
        self._single: _Part | None = None  # the one assigned partition, for poll's fast path
        self._by_tp: dict[tuple, _Part] = {}
        self._unblock_ns = log.unblock_ns
        self._peek = ffi.new("int64_t[]", ROW + 1)
        self._rr = 0
        self._pending: list[Message] = []
        self._pi = 0
        self._wait_arrays: tuple[Any, Any, Any, int] | None = None
        self._col_rows: np.ndarray | None = None  # poll_columns' arrays, reused once the caller let go of them
        self._col_buf: np.ndarray | None = None
        self._active: list[_Part] = []  # the assigned partitions not paused: what reads and waits look at
        self._auto_store = bool(enable_auto_offset_store)
        self._topics: list[str] | None = None  # subscribe() without a group: the topics whose partitions it follows
        # the topic table's epoch, one acquire load per poll (an express call bound to the segment)
        self._read_epoch: Callable[[], int] = functools.partial(lib.shmx_ctl_epoch, log._ctl.base)
        self._epoch = self._read_epoch()  # -1: look at the topics on the next poll (a ring was deleted)
        self._error: errors.ShmlogError | None = None  # TopicDeleted for the next poll of an assign() consumer
        self._closed = False
        self._group = None  # a Membership when subscribed as a group member
        self._group_name = None if group is None else validate_group_name(group)
        if group is not None and topics is not None:
            unknown = set(group_options) - MEMBER_OPTIONS
            if unknown:
                raise errors.InvalidArgument(f"unknown consumer options {sorted(unknown)}")
            self._group = Membership(log, self, group, topics, enable_auto_commit=enable_auto_commit, **group_options)
            self._group.sync()
        elif group_options:
            raise errors.InvalidArgument(f"{sorted(group_options)} need group= and topics=")
        elif topics is not None:
            if isinstance(topics, str):
                topics = [topics]
            self.subscribe(topics)

    # ------------------------------------------------------------ assignment

    def subscribe(self, topics: str | Iterable[str]) -> None:
        """Reads every partition of these topics, from the reset position (a
        group member: changes its subscription and rebalances the group)."""
        if self._group is not None:
            topics = [topics] if isinstance(topics, str) else list(topics)
            for t in topics:
                self._log.topic_handle(t)
            self._group.topics = topics
            self._group._follow_topics()
            return
        topics = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics))
        entries = []
        for t in topics:
            h = self._log.topic_handle(t)
            entries += [(t, p, None) for p in range(h.partitions)]
        self.assign(entries)
        self._topics = topics

    def assign(self, partitions: Iterable[tuple[str, int] | tuple[str, int, int | None]]) -> None:
        """[(topic, partition) or (topic, partition, offset)] replaces the assignment.
        Without an offset a partition starts at the group's committed offset
        (group= without topics), else at the reset position."""
        self._check_open()
        if self._group is not None:
            raise errors.InvalidArgument(
                "this consumer is a group member (topics=...): the group assigns "
                "its partitions; use a consumer without topics= to assign()"
            )
        committed = {}
        if self._group_name is not None:
            committed = groups.committed_offsets(self._log, self._group_name)
        self._topics = None
        self._epoch = self._read_epoch()
        self._set_parts(
            [self._new_part(tp[0], tp[1], tp[2] if len(tp) > 2 else committed.get((tp[0], tp[1]))) for tp in partitions]
        )

    def _new_part(self, topic: str, partition: int, offset: int | None) -> _Part:
        h = self._log.topic_handle(topic)
        plog = None
        if h.config.persistence == "disk":
            d = storage.partition_dir(self._log.settings.data_dir, topic, partition, h.topic_id)
            plog = storage.PartitionLog(d)
        part = _Part(
            self._log,
            topic,
            partition,
            self._log.ring(h, partition, writable=False),
            plog,
            h.generation,
            h.config.max_message_bytes,
            self._read_committed,
        )
        self._start(part, offset)
        if h.config.persistence == "none":
            # every ephemeral ring (alter_topic may switch it to overflow="block" later); pause keeps
            # the slot, as Kafka keeps a paused partition's position; unassign/revoke/close release it
            if part.hold() < 0 and h.config.overflow == "block":
                logger.warning(
                    "topic %r partition %d: all %d reader slots are held: this consumer is not "
                    "protected from overwrites (overflow=block)",
                    topic,
                    partition,
                    lib.SHM_READER_SLOTS,
                )
        return part

    def _add_parts(self, starts: Iterable[tuple[str, int, int | None]]) -> None:
        """Group: adds [(topic, partition, offset or None)] to the assignment."""
        self._set_parts(self._parts + [self._new_part(*s) for s in starts])

    def _drop_parts(self, tps: Iterable[tuple[str, int]]) -> None:
        """Group: removes partitions; records decoded but not returned are dropped
        (the next owner reads them from the committed offset)."""
        gone = set(tps)
        self._set_parts([p for p in self._parts if (p.topic, p.partition) not in gone])

    def _set_parts(self, parts: list[_Part]) -> None:
        """The new assignment. Records decoded but not returned are kept for the
        partitions that stay (the same _Part: their cursors are past them) and
        dropped for the others."""
        old = {id(p) for p in self._parts}
        new = {id(p) for p in parts}
        for p in self._parts:
            if id(p) not in new:
                p.let_go()  # a partition this consumer no longer reads holds no producer back
        kept = {(p.topic, p.partition) for p in parts if id(p) in old}
        self._pending = [m for m in self._pending[self._pi :] if (m.topic, m.partition) in kept]
        self._pi = 0
        self._parts = parts
        self._by_tp = {(p.topic, p.partition): p for p in parts}
        self._refresh_active()

    def _refresh_active(self) -> None:
        self._xclear()
        self._active = [p for p in self._parts if not p.paused]
        self._single = self._active[0] if len(self._active) == 1 and len(self._parts) == 1 else None
        self._rr = 0
        self._wait_arrays = None

    def _watch(self) -> None:
        """The topic table changed, or a ring we wait on was deleted. Group
        member: resubscribe (the group revokes a deleted topic's partitions and
        assigns a re-created one's, sync() on this poll). subscribe() without a
        group: follow the topics (a deleted topic's partitions leave the
        assignment, new partitions and a re-created topic's join it, from
        auto_offset_reset). assign(): a partition whose topic was deleted or
        re-created leaves the assignment and the next poll raises TopicDeleted."""
        self._epoch = self._read_epoch()
        if self._group is not None:
            self._group._follow_topics()
            return
        gone = []
        for p in self._parts:
            try:
                h = self._log.topic_handle(p.topic)
            except errors.UnknownTopicOrPartition:
                h = None
            if h is None or h.generation != p.generation or p.ring.deleted():
                gone.append(p)
            else:
                p.max_bytes = h.config.max_message_bytes
        keep = [p for p in self._parts if p not in gone]
        added: list[_Part] = []
        if self._topics is not None:
            have = {(p.topic, p.partition) for p in keep}
            dead = {(p.topic, p.generation) for p in gone}
            for t in self._topics:
                try:
                    h = self._log.topic_handle(t)
                except errors.UnknownTopicOrPartition:
                    continue
                if (t, h.generation) in dead:
                    continue  # its deletion is under way: look again when it is done
                try:
                    added += [self._new_part(t, q, None) for q in range(h.partitions) if (t, q) not in have]
                except errors.UnknownTopicOrPartition:
                    continue  # deleted between the look and the mapping: the next epoch tells
        if not gone and not added:
            return
        tps = sorted({(p.topic, p.partition) for p in gone})
        if gone:
            logger.warning(
                "consumer: topic(s) %s deleted or re-created: partitions %s left the assignment",
                sorted({p.topic for p in gone}),
                tps,
            )
        if added:
            logger.info("consumer: partitions %s joined the assignment", [(p.topic, p.partition) for p in added])
        self._set_parts(keep + added)
        if gone and self._topics is None:
            self._error = errors.TopicDeleted(
                f"topic(s) {sorted({p.topic for p in gone})} were deleted (or re-created) while this consumer "
                f"read them; partitions {tps} left its assignment. assign() them again to read the new topic."
            )

    def _look(self) -> None:
        """What every poll looks at first: the topic table's epoch (one load),
        the group's change counter (one load), a TopicDeleted to report."""
        if self._read_epoch() != self._epoch:
            self._watch()
        g = self._group
        if g is not None:
            g.polled = True
            if g.commit_due or g.read_seq() != g.seen_seq:
                g.sync()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # ------------------------------------------------------------ pause / resume

    def _tps(self, partitions: tuple[str, int] | Iterable[tuple[str, int]]) -> list[_Part]:
        if isinstance(partitions, tuple) and len(partitions) == 2 and isinstance(partitions[0], str):
            partitions = [partitions]
        return [self._part(tp[0], tp[1]) for tp in partitions]

    def pause(self, partitions: tuple[str, int] | Iterable[tuple[str, int]]) -> None:
        """Stops reading these assigned partitions [(topic, partition)] until
        resume() (confluent-kafka's pause). Records of them already decoded and
        not yet returned are dropped and read again after resume(), so nothing
        of a paused partition is returned. A group member stays in its group
        (poll() keeps it alive); a partition revoked while paused arrives
        unpaused at its next owner, as in Kafka."""
        parts = self._tps(partitions)
        for p in parts:
            if not p.paused:
                self._drop_pending(p)
                p.paused = True
        self._refresh_active()

    def resume(self, partitions: tuple[str, int] | Iterable[tuple[str, int]]) -> None:
        """Reads these paused partitions again, from where they stopped."""
        for p in self._tps(partitions):
            p.paused = False
        self._refresh_active()

    def paused(self) -> list[tuple[str, int]]:
        """The assigned partitions that are paused."""
        return [(p.topic, p.partition) for p in self._parts if p.paused]

    def assignment(self) -> list[tuple[str, int]]:
        """The partitions this consumer reads. A group member's is the one its
        last poll() saw (a rebalance shows after the next poll, as in Kafka)."""
        if self._group is None and self._read_epoch() != self._epoch:
            self._watch()
        return [(p.topic, p.partition) for p in self._parts]

    def _part(self, topic: str, partition: int) -> _Part:
        self._check_open()
        p = self._by_tp.get((topic, partition))
        if p is None:
            raise errors.UnknownTopicOrPartition(f"{topic!r} partition {partition} is not assigned to this consumer")
        return p

    def _start(self, part: _Part, offset: int | None) -> None:
        if offset is None:
            self._apply_reset(part, None)
        else:
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise errors.InvalidType(f"offset must be int, not {type(offset).__name__}")
            part.reset_to = offset
            self._xclear()

    def _apply_reset(self, part: _Part, wanted: int | None) -> None:
        """Moves part by the reset policy (wanted: the offset that was out of range)."""
        self._xclear()
        if wanted is not None and self._reset == "none":
            start, end = part.log_start(), part.ring.ends()[1]
            raise errors.OffsetOutOfRange(
                f"{part.topic!r} partition {part.partition}: offset {wanted} is not in the log "
                f"(now {start}..{end}); the consumer fell behind or seeked outside it — "
                "seek() to a valid offset or set auto_offset_reset"
            )
        for _ in range(100):
            target = part.ring.ends()[1] if self._reset == "latest" else part.log_start()
            if part.seek(target, self._buf, self._buf_cap):
                return
        # an ephemeral ring overwritten faster than we can reach its head: go to its end
        if not part.seek(part.ring.ends()[1], self._buf, self._buf_cap):
            raise errors.OffsetOutOfRange(
                f"{part.topic!r} partition {part.partition}: cannot position the consumer; the ring moves too fast"
            )

    def _seek(self, part: _Part, offset: int) -> None:
        self._xclear()
        if not part.seek(offset, self._buf, self._buf_cap):
            self._apply_reset(part, offset)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next record returned for this partition is the one at offset
        (or the first after it). Applied lazily, like Kafka's seek."""
        part = self._part(topic, partition)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise errors.InvalidArgument("offset must be an int >= 0")
        self._drop_pending(part)
        part.reset_to = offset
        self._xclear()

    def seek_to_beginning(self, topic: str, partition: int) -> None:
        self.seek(topic, partition, self._part(topic, partition).log_start())

    def seek_to_end(self, topic: str, partition: int) -> None:
        self.seek(topic, partition, self._part(topic, partition).ring.ends()[1])

    def position(self, topic: str, partition: int) -> int:
        """Offset of the next record this consumer will return for the partition."""
        part = self._part(topic, partition)
        if part.reset_to is not None:
            return part.reset_to
        for m in self._pending[self._pi :]:
            if m.topic == topic and m.partition == partition:
                return m.offset
        return part.cur.next_offset

    def end_offsets(self, partitions: Iterable[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        if self._group is None and self._read_epoch() != self._epoch:
            self._watch()
        parts = self._parts if partitions is None else [self._part(t, p) for t, p in partitions]
        return {(p.topic, p.partition): p.ring.ends()[1] for p in parts}

    def beginning_offsets(self, partitions: Iterable[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        if self._group is None and self._read_epoch() != self._epoch:
            self._watch()
        parts = self._parts if partitions is None else [self._part(t, p) for t, p in partitions]
        return {(p.topic, p.partition): p.log_start() for p in parts}

    def offsets_for_times(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        """The earliest offset whose record timestamp is >= timestamp_ms, or None.
        The time index narrows where to start; records are then read forward."""
        part = self._part(topic, partition)
        start = part.log_start()
        if part.plog is not None:
            part.plog.refresh()
            found = part.plog.offset_before_time(timestamp_ms)  # a monotonic time index
            if found is not None:
                start = max(start, found)
        with Consumer(self._log, auto_offset_reset="earliest", check_crcs=bool(self._crc)) as tmp:
            tmp.assign([(topic, partition, start)])
            while True:
                cols = tmp.poll_columns(65536, timeout=0)
                if cols is None:
                    return None
                hit = np.nonzero(cols.timestamps_ms >= timestamp_ms)[0]
                if len(hit):
                    return int(cols.offsets[hit[0]])

    def _drop_pending(self, part: _Part) -> None:
        rest = self._pending[self._pi :]
        keep = [m for m in rest if m.topic != part.topic or m.partition != part.partition]
        if len(keep) != len(rest):
            # rewind the cursor to the first dropped record
            first = next(m.offset for m in rest if m.topic == part.topic and m.partition == part.partition)
            part.reset_to = first
            self._xclear()
        self._pending, self._pi = keep, 0

    # ------------------------------------------------------------ reading

    def _set_buffer(self, nbytes: int) -> None:
        self._xclear()
        if self._views:
            self._retired.append(self._buf)  # views still point into it
        self._buf_cap = nbytes
        self._buf = ffi.new("uint8_t[]", nbytes)
        self._buf_addr = address_of(self._buf)  # for the C batch builders (csrc/fastpath.c)
        self._mv = memoryview(ffi.buffer(self._buf, nbytes))

    def _release(self) -> None:
        """copy=False, before a read: every value view handed out is released
        (using one afterwards raises ValueError, never reads another record's
        bytes), then the frames they viewed in a ring are given back to its
        producers (csrc/ring.c B7). Views of records poll() decoded but has
        not returned yet stay. A view with exports of its own (np.frombuffer
        of it) cannot be released: InvalidArgument, nothing read, nothing
        given back, until it is dropped."""
        if self._pi < len(self._pending):
            return
        views = self._views
        if views and release_views(views):
            raise errors.InvalidArgument(
                f"{len(views)} value view(s) from an earlier poll are still exported (np.frombuffer, a ctypes "
                "or struct buffer of them): copy what you keep (bytes(view)) and drop the rest before polling "
                "again; nothing was read (Consumer(copy=False))"
            )
        self._retired.clear()
        for part in self._pinned:
            lib.shmx_reader_publish(part.cur)
        self._pinned.clear()

    def _grow_out(self, n: int) -> None:
        self._xclear()
        self._out_cap = self._out_max = n
        self._rows = ffi.new("int64_t[]", n * ROW)
        self._rows_addr = address_of(self._rows)
        out = ffi.new("struct shm_records_out *")
        out.max_records = n
        out.rows = self._rows
        self._out = out

    def _read(self, part: _Part, max_records: int) -> int:
        """Reads up to max_records from part into self._out; returns the count
        (the general read: poll's express read is set again by the next poll)."""
        self._xclear()
        if part.reset_to is not None:
            off, part.reset_to = part.reset_to, None
            self._seek(part, off)
        out = self._out
        if max_records > self._out_cap:
            self._grow_out(max_records)
            out = self._out
        if self._out_max != max_records:
            out.max_records = self._out_max = max_records
        while True:
            n = part.read(self._buf, self._buf_cap, out, self._crc)
            if n >= 0:
                return self._inflate(part) if n == 0 and out.compressed else n
            if n == LAPPED:
                self._lapped(part, part.gone)
            else:  # BUFFER_SMALL: one frame is larger than the buffer
                self._set_buffer(max(out.bytes_used, 1 << 20))

    def _lapped(self, part: _Part, why: str) -> None:
        """The records at the cursor are gone: move by auto_offset_reset
        (OffsetOutOfRange with "none") and say how many were skipped."""
        wanted = part.cur.next_offset
        self._apply_reset(part, wanted)
        skipped = part.cur.next_offset - wanted
        if skipped > 0:
            logger.warning(
                "consumer of %r partition %d: %s; skipped %d records (offsets %d..%d), going on at "
                "%d (auto_offset_reset=%r)",
                part.topic,
                part.partition,
                why,
                skipped,
                wanted,
                part.cur.next_offset - 1,
                part.cur.next_offset,
                self._reset,
            )

    def _inflate(self, part: _Part) -> int:
        """The read stopped at a compressed batch (a Kafka client's), the cursor
        still on its frame (csrc/ring.c shm_ring_read, csrc/log.c
        shm_frames_read): inflate it, bounded by the topic's max_message_bytes,
        decode it in C from cur.next_offset, up to out.max_records records. The
        frame is passed only once its last record is taken; until then the
        cursor stays on it with next_offset after the last record returned
        (the uncompressed path does the same), and the inflated batch is kept
        on the part so the next read decodes it again without inflating.
        Nothing lives outside the cursor that position() or commit() would
        miss, and a batch that fails (bad codec data, a bomb) raises
        CorruptRecord with the cursor still on it, as a damaged frame does."""
        out, cur = self._out, part.cur
        start, end = out.batch_start, out.bytes_used
        raw = self._buf + start
        base = lib.shm_batch_base_offset(raw)
        last = base + lib.shm_batch_last_delta(raw)
        key = (cur.pos, base)
        if part.inflated is not None and part.inflated[0] == key:
            plain = part.inflated[1]
        else:
            head = ffi.buffer(raw, lib.SHM_BATCH_HEADER_BYTES)[:]
            at = lib.SHM_RB_ATTRIBUTES
            attrs = int.from_bytes(head[at : at + 2], "big")
            try:
                hb = lib.SHM_BATCH_HEADER_BYTES
                records = compression.decompress(
                    attrs & lib.SHM_RB_ATTR_CODEC_MASK,
                    ffi.buffer(raw + hb, end - start - lib.SHM_BATCH_HEADER_BYTES),
                    part.max_bytes,
                )
            except (errors.CorruptRecord, errors.NotSupported) as e:
                raise type(e)(
                    f"{part.topic!r} partition {part.partition}: the compressed batch at offsets "
                    f"{base}..{last} cannot be read: {e}; nothing was returned from it. seek() "
                    "past it to go on."
                ) from None
            plain = head[:at] + (attrs & ~lib.SHM_RB_ATTR_CODEC_MASK).to_bytes(2, "big") + head[at + 2 :] + records
            part.inflated = (key, plain)
        if len(plain) > self._buf_cap:
            self._set_buffer(len(plain))
        ffi.memmove(self._buf, plain, len(plain))
        out.count = 0
        n = lib.shm_batch_decode(self._buf, len(plain), 0, cur.next_offset, out)
        out.bytes_used = len(plain)
        if n == lib.SHM_E_BUFFER_SMALL:  # more records than asked for: the rest next time
            cur.next_offset = self._rows[(out.count - 1) * ROW] + 1
            return out.count
        if n < 0:
            part.inflated = None
            part.raise_read(lib.SHM_E_CORRUPT)
        part.inflated = None  # the last record is taken: pass the frame
        cur.pos += (lib.SHM_FRAME_HEADER_BYTES + end - start + 7) & ~7
        cur.next_offset = cur.expect_base = last + 1
        return out.count

    def _take_large(self, part: _Part) -> Message | None:
        """A large single-record frame, its value copied once from the ring into
        its bytes with the CRC-32C summed in the same pass (shmx_large_copy),
        or with copy=False on a block ring a view of the frame itself, its CRC
        checked in place; None when the next frame is not one, or the copy was
        lapped or did not sum right (the general read then handles it: it
        discards a lapped frame and raises CorruptRecord for a damaged one)."""
        r = self._peek
        if lib.shmx_large_peek(part.ring.h, part.cur, LARGE_BYTES, 0, r) != 1:
            return None
        off, ts, ks, kl, vs, vl, hs, hc, _ = ffi.unpack(r, ROW + 1)
        if hc:
            return None  # with headers: the general path decodes them
        data, views = part.data, self._views
        # copy=False on a block ring with our reader slot: a view of the frame itself, kept from producers
        # until the next poll (B7); otherwise one copy
        pin = (
            views is not None
            and vl >= 0
            and part.cur.reader_hdr != ffi.NULL
            and lib.shm_ring_counter(part.ring.base, lib.SHM_COUNTER_OVERFLOW) == lib.SHM_OVERFLOW_BLOCK
        )
        value: Any = None
        if pin:
            if self._crc and lib.shmx_large_copy(part.ring.h, part.cur, r, ffi.NULL, 1) != 1:
                return None
        elif vl >= 0:
            rc, value = large_value(address_of(part.ring.h), address_of(part.cur), address_of(r), self._crc)
            if rc != 1:
                return None
        key = None if kl < 0 else ffi.buffer(data + ks, kl)[:]
        if lib.shmx_large_confirm(part.ring.h, part.cur, r, int(not pin)) != 1:
            return None  # lapped during the copy: discarded
        if pin and views is not None:
            value = ring_view(address_of(data + vs), vl, views)
            self._pinned.append(part)
        elif views is not None and value is not None:
            value = memoryview(value)
        return Message(part.topic, part.partition, off, key, value, (), ts)

    def _messages(self, part: _Part, n: int) -> list[Message]:
        """The n records of the last read as Messages: built in C (one copy of
        each key and value, straight from the read buffer); only records with
        headers come back here to have them decoded. Notes on part whether the
        last one was large (the next read tries the one-copy path first)."""
        msgs, with_headers = batch_messages(
            self._buf_addr, self._out.bytes_used, self._rows_addr, n, part.topic, part.partition, self._views
        )
        if with_headers:
            self._headers(msgs)
        v = msgs[-1].value
        part.large = v is not None and len(v) >= LARGE_BYTES
        if part.large:
            self._xclear()
        return msgs

    def _headers(self, msgs: list[Message]) -> None:
        """Decodes the headers of the Messages of the last read that have them
        (headers=None: the C builders leave them), in place."""
        rows, data = self._rows, self._mv[: self._out.bytes_used]
        for i, m in enumerate(msgs):
            if m.headers is None:
                hs = decode_headers(data, rows[i * ROW + lib.SHM_ROW_HEADER_START])
                msgs[i] = Message(m.topic, m.partition, m.offset, m.key, m.value, hs, m.timestamp_ms)

    def _read_any(self, max_records: int) -> tuple[Any, int]:
        """(part, count) for the first partition, round-robin, with records."""
        parts = self._active
        np_ = len(parts)
        for i in range(np_):
            part = parts[(self._rr + i) % np_]
            n = self._read(part, max_records)
            if n:
                self._rr = (self._rr + i + 1) % np_
                return part, n
        return None, 0

    def _wait(self, timeout_s: float | None) -> None:
        """Waits on the active rings' futexes for at most GROUP_WAIT_S: between
        waits a consumer looks at its group and the topic table (rebalances,
        new partitions) and, after an idle wait, whether a ring it waits on was
        deleted (the next look then follows the topic table)."""
        timeout_s = GROUP_WAIT_S if timeout_s is None else min(timeout_s, GROUP_WAIT_S)
        if not self._active:  # nothing to wait on (all paused, or a member without partitions)
            time.sleep(GROUP_WAIT_S if timeout_s is None else min(timeout_s, GROUP_WAIT_S))
            return
        hdrs, bases, curs, n = self._waits()
        tns = -1 if timeout_s is None else max(int(timeout_s * 1e9), 0)
        spin = tns if self._spin_ns < 0 else self._spin_ns
        if lib.shm_wait_any(
            hdrs,
            bases,
            curs,
            n,
            tns,
            spin if spin >= 0 else 1 << 62,
            self._unblock_ns,
            self._spin_state,
        ) == lib.SHM_E_TIMEOUT and any(p.ring.deleted() for p in self._active):
            self._epoch = -1

    def _waits(self) -> tuple[Any, Any, Any, int]:
        """shm_wait_any's arrays for the active partitions (headers, rings, cursors, count)."""
        if self._wait_arrays is None:
            act = self._active
            hdrs = ffi.new("void *[]", [p.ring.hdr for p in act])
            bases = ffi.new("struct shm_ring *[]", [p.ring.h for p in act])
            curs = ffi.new("struct shm_cursor *[]", [p.cur for p in act])
            self._wait_arrays = (hdrs, bases, curs, len(act))
        return self._wait_arrays

    def _poll_parts(self, max_records: int, timeout: float | None) -> tuple[Any, int]:
        """(part, n) with records decoded into self._out, or (None, 0) after timeout."""
        self._check_open()
        if not self._parts and self._group is None and self._topics is None and self._error is None:
            raise errors.InvalidArgument("this consumer has no partitions: subscribe() or assign() first")
        _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._look()
            part, n = self._read_any(max_records) if self._active else (None, 0)
            if n:
                return part, n
            if deadline is None:
                self._wait(None)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None, 0
            self._wait(left)

    # poll(timeout=None) -> Message | None is ConsumerBase.poll (csrc/fastpath.c, where its
    #     docstring is): a record an earlier read decoded is handed out in C (outside a group,
    #     without value views); everything else is _poll_any.

    def _poll_any(self, timeout: float | None = None) -> Message | None:
        """The next record, or None when none arrives within timeout seconds
        (None: wait forever). A group member looks at its group before it
        returns a record it decoded earlier, so a partition that moved away
        is handed over at once and its decoded records are dropped. The topic
        table is looked at before each read (not per record decoded earlier)."""
        if self._views is not None:
            self._release()
        g = self._group
        if g is not None:
            g.polled = True
            if g.commit_due or g.read_seq() != g.seen_seq:
                g.sync()
        pi = self._pi
        if pi < len(self._pending):
            self._pi = pi + 1
            return self._pending[pi]
        if self._read_epoch() != self._epoch or self._error is not None:
            self._look()
        part = self._single
        if part is not None and part.reset_to is None and not part.on_disk:
            if timeout is not None:
                _check_timeout(timeout)
            if g is None and self._views is None and not part.large and self._xpart is not part:
                self._xbuild(part)  # the next polls read in C (ConsumerBase.poll)
            # the latency path: one partition in the ring; read, else wait once in C and read
            if self._out_max != self._max_poll:
                self._out.max_records = self._out_max = self._max_poll
            args = (part.ring.h, part.cur, self._buf, self._buf_cap, self._crc, self._unblock_ns, self._out)
            if part.large and (m := self._take_large(part)) is not None:
                return m
            n = lib.shmx_read(*args)
            if n == 0 and self._out.compressed:
                n = self._inflate(part)
            if n == 0 and timeout == 0:
                return None  # nothing committed (errors are < 0 and go the general way); looked at above
            if n == 0 and timeout != 0 and g is None:
                whole = timeout is not None and timeout <= GROUP_WAIT_S
                t0 = time.monotonic() if timeout is not None and not whole else None
                self._wait(timeout)
                if part.large and (m := self._take_large(part)) is not None:
                    return m
                n = lib.shmx_read(*args)
                if n == 0 and self._out.compressed:
                    n = self._inflate(part)
                if n == 0:
                    if whole and part.cur.stuck_pos != part.cur.pos and self._epoch != -1:
                        return None  # the wait ran the whole timeout (a stuck frame goes the general way)
                    if t0 is not None and timeout is not None:
                        timeout = max(0.0, timeout - (time.monotonic() - t0))
            if n > 0:
                return self._hand_out(part, n)
        part, n = self._poll_parts(self._max_poll, timeout)
        return self._hand_out(part, n) if n else None

    def _hand_out(self, part: _Part, n: int) -> Message:
        """The first of the n records just decoded; the rest wait in _pending for the next polls."""
        msgs = self._messages(part, n)
        if n > 1:
            self._pending, self._pi = msgs, 1
        return msgs[0]

    def _xbuild(self, part: _Part) -> None:
        """Sets ConsumerBase.poll's express read to part (the one partition,
        in its ring): the addresses it reads and waits with, and the objects
        they point into. Whatever changes them clears it (_xclear)."""
        hdrs, rings, curs, _ = self._waits()
        keep = (part.ring.h, part.cur, self._buf, self._out, self._rows, hdrs, rings, curs, self._spin_state)
        self._xset(
            address_of(part.ring.h),
            address_of(part.cur),
            self._buf_addr,
            self._buf_cap,
            self._crc,
            self._unblock_ns,
            address_of(self._out),
            self._rows_addr,
            self._max_poll,
            address_of(hdrs),
            address_of(rings),
            address_of(curs),
            self._spin_ns,
            None if self._spin_state == ffi.NULL else address_of(self._spin_state),
            address_of(self._log._ctl.base),
            LARGE_BYTES,
            part,
            part.topic,
            part.partition,
            keep,
        )

    def _poll_waited(self, timeout: float | None) -> Message | None:
        """ConsumerBase.poll waited in C and nothing came: what _wait does after
        an idle wait (a ring deleted: look at the topics), then the general
        poll with what is left of the timeout."""
        if any(p.ring.deleted() for p in self._active):
            self._epoch = -1
        return self._poll_any(timeout)

    def poll_batch(self, max_messages: int = 10_000, timeout: float | None = None) -> list[Message]:
        """Up to max_messages records (from one partition per call, round-robin)."""
        rest, part, n = self._batch(max_messages, timeout)
        if rest is not None:
            return rest
        return self._messages(part, n) if n else []

    def poll_values(self, max_messages: int = 10_000, timeout: float | None = None) -> list[bytes | None]:
        """Up to max_messages records' values (bytes; None for a null value),
        from one partition per call, round-robin: poll_batch without the
        Message objects, for a consumer that wants values only (the list is
        built in C). Positions, commits and group hand-overs as poll_batch."""
        rest, part, n = self._batch(max_messages, timeout)
        if rest is not None:
            return [m.value for m in rest]
        return batch_values(self._buf_addr, self._out.bytes_used, self._rows_addr, n, self._views) if n else []

    def _batch(self, max_messages: int, timeout: float | None) -> tuple[list[Message] | None, Any, int]:
        """poll_batch's and poll_values' read: (records poll() decoded earlier
        and not yet returned, or None; else the partition and count of a fresh
        read into the buffer)."""
        if not isinstance(max_messages, int) or max_messages < 1:
            raise errors.InvalidArgument("max_messages must be an int >= 1")
        if self._views is not None:
            self._release()
        self._look()
        if self._pi < len(self._pending):
            rest = self._pending[self._pi : self._pi + max_messages]
            self._pi += len(rest)
            return rest, None, 0
        part, n = self._poll_parts(max_messages, timeout)
        return None, part, n

    def poll_columns(self, max_messages: int = 100_000, timeout: float | None = None) -> Columns | None:
        """Up to max_messages records of one partition as numpy columns (no
        per-record objects). The C core decodes straight into fresh arrays
        and a fresh value buffer, which the returned Columns owns."""
        if self._pi < len(self._pending):
            raise errors.InvalidArgument("poll_columns cannot follow a partly consumed poll(); drain poll() first")
        if not isinstance(max_messages, int) or max_messages < 1:
            raise errors.InvalidArgument("max_messages must be an int >= 1")
        if self._views is not None:
            self._release()
        # the last call's arrays again when nothing else holds them (the Columns it returned and every
        # view of them are gone: only self and this frame refer to them), else fresh ones: a fresh
        # 4 MiB buffer per call costs its page faults (tens of microseconds) at every poll
        rows, buf = self._col_rows, self._col_buf
        if rows is None or len(rows) < max_messages or sys.getrefcount(rows) > 3:
            rows = self._col_rows = np.empty((max(max_messages, 1024), ROW), np.int64)
        if buf is None or len(buf) != self._buf_cap or sys.getrefcount(buf) > 3:
            buf = self._col_buf = np.empty(self._buf_cap, np.uint8)
        saved = self._out, self._out_cap, self._out_max, self._rows, self._buf, self._buf_cap, self._mv
        out = ffi.new("struct shm_records_out *")
        out.rows = ffi.cast("int64_t *", rows.ctypes.data)
        out.max_records = max_messages
        self._out, self._out_cap, self._out_max, self._rows = out, max_messages, max_messages, out.rows
        self._buf = ffi.cast("uint8_t *", buf.ctypes.data)
        try:
            part, n = self._poll_parts(max_messages, timeout)
            if n and self._buf != ffi.cast("uint8_t *", buf.ctypes.data):
                buf = np.frombuffer(ffi.buffer(self._buf, out.bytes_used), np.uint8).copy()  # grew or inflated
        finally:
            self._out, self._out_cap, self._out_max, self._rows, self._buf, self._buf_cap, self._mv = saved
        if not n:
            return None
        r = rows[:n]
        return Columns(
            part.topic, part.partition, r[:, 0], r[:, 1], buf[: out.bytes_used], r[:, 4], r[:, 5], r[:, 2], r[:, 3]
        )

    def __iter__(self) -> "Consumer":
        return self

    def __next__(self) -> Message:
        m = self.poll(self._consumer_timeout)
        if m is None:  # closed, or consumer_timeout_ms passed with nothing
            raise StopIteration
        return m

    # ------------------------------------------------------------ offsets

    def consumer_group_metadata(self) -> "GroupMetadata":
        """What send_offsets_to_transaction() needs to commit this consumer's
        offsets in a transaction (confluent-kafka's name): the group and this
        member, so the commit is refused once the partitions moved to another."""
        self._check_open()
        if self._group_name is None:
            raise errors.InvalidArgument("consumer_group_metadata() needs a consumer group: log.consumer(group=...)")
        token = self._group.token if self._group is not None else 0
        return GroupMetadata(self._group_name, token)

    def _commit_positions(self, tps: Iterable[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """What a commit without offsets commits for these partitions (default:
        the assignment): the position (what poll has returned), or with
        enable_auto_offset_store=False only what store_offsets() stored."""
        parts = self._parts if tps is None else [self._by_tp[tp] for tp in tps if tp in self._by_tp]
        if self._auto_store:
            return {(p.topic, p.partition): self.position(p.topic, p.partition) for p in parts}
        return {(p.topic, p.partition): p.stored for p in parts if p.stored is not None}

    def store_offsets(
        self,
        message: Message | None = None,
        offsets: dict[tuple[str, int], int] | Iterable[tuple[str, int, int]] | None = None,
    ) -> None:
        """confluent-kafka's store_offsets, for enable_auto_offset_store=False:
        store_offsets(message) stores message.offset + 1 for its partition;
        store_offsets(offsets={(topic, partition): next offset}) (or a list of
        (topic, partition, next offset)) stores those. Auto-commit, the commit
        on revoke and close, and commit() without offsets then commit only the
        stored offsets (at-least-once for records a service has finished,
        whatever poll returned since). Stored offsets belong to the
        assignment: a partition revoked or unassigned forgets its own."""
        self._check_open()
        if self._auto_store:
            raise errors.InvalidArgument(
                "store_offsets() needs enable_auto_offset_store=False (with the "
                "default True, poll() stores every position itself)"
            )
        if (message is None) == (offsets is None):
            raise errors.InvalidArgument("store_offsets() takes a message or offsets=, not both")
        if message is not None:
            todo = [(message.topic, message.partition, message.offset + 1)]
        elif isinstance(offsets, dict):
            todo = [(tp[0], tp[1], off) for tp, off in offsets.items()]
        else:
            assert offsets is not None  # one of the two, checked above
            todo = [(x[0], x[1], x[2]) for x in offsets]
        parts = []
        for t, q, off in todo:
            if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                raise errors.InvalidArgument(f"offset for {(t, q)} must be an int >= 0, not {off!r}")
            parts.append((self._part(t, q), off))
        for part, off in parts:
            part.stored = off

    def commit(self, offsets: dict[tuple[str, int], int] | None = None, durable: bool = False) -> None:
        """Commits {(topic, partition): next offset to read}; by default the
        position of every assigned partition (what poll has returned so far).
        Synchronous: visible to every process on return; durable=True also
        waits until the offsets are on disk. A member that lost a partition
        gets CommitFailed (fencing); a partition not assigned to this consumer
        or an offset past the log's end is refused."""
        self._check_open()
        if self._group_name is None:
            raise errors.InvalidArgument("commit() needs a consumer group: log.consumer(group=..., topics=[...])")
        offsets = self._commit_positions() if offsets is None else offsets
        if not isinstance(offsets, dict):
            raise errors.InvalidType("offsets must be a dict {(topic, partition): offset}")
        if self._group is not None:
            self._group.commit(offsets, durable=durable)
            return
        for tp in offsets:
            if tp not in self._by_tp:
                raise errors.InvalidArgument(f"{tp} is not assigned to this consumer")
        groups.commit_offsets(self._log, self._group_name, offsets, durable=durable)

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for the partition, or None."""
        self._check_open()
        if self._group_name is None:
            raise errors.InvalidArgument("committed() needs a consumer group: log.consumer(group=...)")
        if self._group is not None:
            return self._group.committed(topic, partition)
        self._log.ring(self._log.topic_handle(topic), partition, writable=False)
        return groups.committed_offsets(self._log, self._group_name).get((topic, partition))

    # ------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Closed("this consumer is closed")

    def close(self) -> None:
        if self._closed:
            return
        g = self._group
        if g is not None:
            try:
                if g.auto_commit and not g.closed:
                    g._commit_quietly(g._positions(g.entries))
            finally:
                g.leave()
        self._closed = True
        if self._views:
            release_views(self._views)  # a view still exported keeps nothing: the rings go with let_go
        self._pinned.clear()
        self._read_epoch, self._epoch = repeat(0).__next__, 0  # the log may unmap the control segment now
        for p in self._parts:
            p.let_go()
        self._parts = []
        self._active = []
        self._single = None
        self._xclear()
        self._by_tp = {}
        self._pending, self._pi = [], 0
        self._wait_arrays = None

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
