"""client/reader.py — PartitionReader: one partition's read position, over its ring
and, for a durable topic, its segment files.

Owns: the cursor (struct shm_cursor) and where it reads (on_disk: below the
ring's head, from the segment files, same positions as the ring: the switch
back is a comparison), seeking to an offset (ring first, else the files),
the read loop over both (the files while the ring no longer holds the
cursor, the ring from the position where the files end), re-reading the
segment list when retention or a roll changed it, sealing a frame left
uncommitted past the unblock timeout (shm_ring_seal_stuck), and how a read
reports: records (or whole batches: batches=True, the Kafka fetch), LAPPED
(the records at the cursor are gone), BUFFER_SMALL (out.bytes_used: the
buffer to try), CorruptRecord raised at a damaged frame. Used by Consumer
(client/consumer.py) and the Kafka listener (kafka/data.py).
Must never: skip a record silently, move the cursor past a frame it did not
return, decode or inflate what it reads (its callers do), or own the read
buffer (callers share one across partitions).
"""

import os

from .. import errors, liveness, storage
from .._native import ffi, lib, raise_status
from ..control import transactions

NOWHERE = 2**64 - 1  # a cursor position that is no frame's
LAPPED = lib.SHM_E_OUT_OF_RANGE
BUFFER_SMALL = lib.SHM_E_BUFFER_SMALL
READ_STEPS = 64  # bound of one read's switches between files and ring


def _nothing(out) -> int:
    """A read that returns nothing says so in out too (no stale batch or bytes)."""
    out.count = out.frames = out.compressed = 0
    out.bytes_used = 0
    return 0


class PartitionReader:
    """Reads one partition from an offset: files below the ring, then the ring."""

    __slots__ = (
        "log",
        "topic",
        "partition",
        "ring",
        "plog",
        "cur",
        "on_disk",
        "batches",
        "unblock_ns",
        "gone",
        "aborts",
    )

    def __init__(self, log, topic, partition, ring, plog, *, batches=False, read_committed=False):
        self.log = log
        self.topic = topic
        self.partition = partition
        self.ring = ring
        self.plog = plog  # segment files (durable topics), else None
        self.cur = ffi.new("struct shm_cursor *")
        self.cur.stuck_pos = NOWHERE
        self.cur.expect_base = -1
        self.on_disk = False  # the cursor is below the ring's head: read the files
        self.batches = batches  # whole RecordBatches (shm_*_read_batches), else decoded records
        self.unblock_ns = log.unblock_ns
        self.gone = ""  # after LAPPED: why the records at the cursor are gone
        self.aborts = None  # read_committed: the abort index the cursor points at (kept alive here)
        if read_committed:
            # stable_end 0 until the first read takes the ring's bound (shmx_txn_refresh)
            self.cur.read_committed = 1
            self.cur.aborts_seen = 2**64 - 1  # no index loaded yet: the first read loads it

    def hold(self) -> int:
        """Claims a reader slot for this cursor in the ring's (writable) header:
        on an overflow="block" ring producers then never overwrite what it has
        not read (csrc/ring.c, "overflow=block"). Every read and seek publishes
        the cursor's position to it. Returns the slot, or SHM_E_NO_SLOT."""
        pid, st = liveness.ensure_token(self.log.token_prefix)
        return lib.shm_reader_claim(self.ring.hdr, pid, st, self.log.token_prefix_c, self.cur)

    def let_go(self) -> None:
        """Releases the reader slot, if held: it holds producers back no longer."""
        if self.cur.reader_hdr != ffi.NULL:
            lib.shm_reader_release(self.cur)

    def log_start(self) -> int:
        """The first offset still held, in the files or the ring, and not
        below the start delete_records moved the partition to."""
        start, end = self.ring.ends()[:2]
        if self.plog is not None:
            self.plog.refresh()
            disk = self.plog.start_offset()
            if disk is not None and disk < start:
                start = disk
        return self._floor(start, end)

    def _floor(self, start: int, end: int) -> int:
        try:
            h = self.log.topic_handle(self.topic)
        except errors.UnknownTopicOrPartition:
            return start
        return self.log.log_start_floor(h, self.partition, start, end)

    def seek(self, offset: int, buf, cap: int) -> bool:
        """Positions the cursor at offset (or the first record after it), in
        the ring or (durable, below the ring) the files; False when neither
        holds it, or delete_records moved the log start past it."""
        self.on_disk = False
        self.cur.stuck_pos = NOWHERE
        if self._floor(offset, 1 << 62) > offset:  # below where delete_records moved the start
            return False
        rc = lib.shm_ring_seek(self.ring.h, self.cur, offset)
        if rc == lib.SHM_OK:
            return True
        if rc != lib.SHM_E_OUT_OF_RANGE:
            self.raise_read(rc)
        if self.plog is not None and offset < self.ring.ends()[0]:
            self.plog.refresh()
            if self.plog.seek(offset, buf, cap, self.cur):
                self.on_disk = True
                self.cur.stuck_pos = NOWHERE
                return True
        return False

    def read(self, buf, cap: int, out, crc: int = 1) -> int:
        """Reads from the cursor into buf (cap bytes) and out: the number of
        records decoded (batches=True: of whole batches copied to
        buf[:out.bytes_used]); 0 with out.compressed set: a compressed batch
        at buf[out.batch_start:out.bytes_used], the cursor still on it (the
        caller inflates and passes it). LAPPED: the ring overwrote the
        records and no files hold them, or retention deleted them (self.gone
        says which). BUFFER_SMALL: one frame is larger than cap
        (out.bytes_used: the size to try). Raises CorruptRecord at a damaged
        frame, the cursor on it."""
        for _ in range(READ_STEPS):
            if self.on_disk:
                if self.cur.read_committed:
                    self.refresh_txn()
                n = self._read_files(buf, cap, out, crc)
                if n is not None:
                    return n
            if self.batches:
                rc = lib.shm_ring_read_batches(self.ring.h, self.cur, buf, cap, self.unblock_ns, out)
            else:
                rc = lib.shmx_read(self.ring.h, self.cur, buf, cap, crc, self.unblock_ns, out)
            if rc >= 0:
                return rc
            if rc == lib.SHM_E_OUT_OF_RANGE:
                if self.plog is None:
                    self.gone = "the ring overwrote the records before this consumer read them"
                    return LAPPED
                self.on_disk = True  # lapped: the files have it
            elif rc == lib.SHM_E_BUSY:
                self.seal()
                return _nothing(out)
            elif rc == lib.SHM_E_TXN_STALE:
                self.refresh_txn()
            elif rc == lib.SHM_E_BUFFER_SMALL:
                if not self.batches:
                    out.bytes_used = cap * 2
                return rc
            else:
                self.raise_read(rc)
        return _nothing(out)

    def refresh_txn(self):
        """read_committed: the cursor's last stable offset from the ring, after
        loading the partition's abort index again when the coordinator added
        to it (control/transactions.py, T4)."""
        while True:
            seen = lib.shmx_txn_refresh(self.ring.h, self.cur)
            if seen < 0:
                return
            h = self.log.topic_handle(self.topic)
            data = transactions.read_abort_index(self.log.settings.data_dir, self.topic, h.topic_id, self.partition)
            self.aborts = transactions.abort_index_view(data)
            self.cur.aborted = self.aborts
            self.cur.n_aborted = len(data) // transactions.ABORT_RECORD.size
            self.cur.aborts_seen = seen

    def _read_files(self, buf, cap, out, crc):
        """read() from the segment files; None when the cursor reached the ring
        (read the ring then)."""
        cur, plog = self.cur, self.plog
        for _ in range(READ_STEPS):
            if cur.pos >= self.ring.ends()[2]:
                if self.ring.damage_at(cur.pos):
                    raise errors.CorruptRecord(
                        self.log.offline_reason(self.log.topic_handle(self.topic), self.partition, self.ring)
                    )
                self.on_disk = False
                return None
            plog.bridge(cur)  # the end of a segment before a cleaned one
            seg = plog.segment_for_pos(cur.pos)
            if seg is None or (seg is plog.segments[-1] and cur.pos >= seg.end_pos):
                plog.refresh()
                plog.bridge(cur)
                seg = plog.segment_for_pos(cur.pos)
            if seg is None:
                self.gone = "retention deleted the segment this consumer was reading"
                return LAPPED
            try:
                n = plog.read(seg, cur.pos, buf, cap)
            except storage.SegmentReplaced:  # the cleaner swapped it: same offsets, other positions
                if not self._reseek(buf, cap):
                    return LAPPED
                continue
            except FileNotFoundError:
                plog.refresh()
                continue
            if n == 0:  # end of this segment: the next one starts here
                plog.refresh()
                if plog.segment_for_pos(cur.pos) is seg:
                    return _nothing(out)
                continue
            if self.batches:
                rc = lib.shm_frames_read_batches(buf, n, cur.pos, cur, out)
            else:
                rc = lib.shm_frames_read(buf, n, cur.pos, cur, crc, out)
            if rc == lib.SHM_E_AGAIN:  # no whole frame in what was read
                if n < cap:
                    torn = plog.torn(seg, cur.pos)
                    if torn is not None:
                        raise torn
                    return _nothing(out)  # the last segment, being written
                out.bytes_used = cap * 2
                return BUFFER_SMALL
            if rc == lib.SHM_E_CORRUPT and self._replaced(seg):
                if not self._reseek(buf, cap):
                    return LAPPED
                continue
            if rc == lib.SHM_E_CORRUPT:
                raise errors.CorruptRecord(
                    f"{self.topic!r} partition {self.partition}: damaged frame in {seg.path()} at file "
                    f"position {cur.pos - seg.base_pos} (offsets from {cur.next_offset}); nothing was "
                    "returned from it. seek() past it to go on, and run `shmlog check`."
                )
            if out.compressed:
                return 0
            n = out.frames if self.batches else out.count
            if n:
                return n
        return _nothing(out)

    def _replaced(self, seg) -> bool:
        """Was seg swapped for its cleaned copy since it was listed (a read
        that raced the rename)?"""
        try:
            return os.stat(seg.path()).st_ino != seg.ino
        except FileNotFoundError:
            return True

    def _reseek(self, buf, cap) -> bool:
        """After a swap: the segments listed again, the cursor placed by offset
        (at the record it wanted, or the next one that survived); False when
        the offset is below the log start now (retention)."""
        self.plog.refresh()
        self.gone = "retention deleted the segment this consumer was reading"
        return self.plog.seek(self.cur.next_offset, buf, cap, self.cur)

    def seal(self):
        """A frame stayed uncommitted past the unblock timeout: seal it if its
        writer is dead (without write access the supervisor does)."""
        base = self.ring.writable_base()
        if base is not None:
            lib.shm_ring_seal_stuck(base, self.cur.stuck_pos, self.log.token_prefix_c)
        self.cur.stuck_since_ns = lib.shm_monotonic_ns()

    def raise_read(self, rc):
        if rc == lib.SHM_E_CORRUPT:
            raise errors.CorruptRecord(
                f"{self.topic!r} partition {self.partition}: the frame at position {self.cur.pos} "
                f"(offsets from {self.cur.next_offset}) fails its CRC or framing check; nothing was "
                "returned from it. seek() past it to go on."
            )
        raise_status(rc, f"read of {self.topic!r} partition {self.partition} failed")
