"""storage/writer.py — appending to a partition's segment files (the
persister's only).

Owns: PartitionWriter: appending runs of frames with their index rows,
rolling, fsync, retention by size and by a segment's largest timestamp.
Must never: re-encode a frame (the file bytes are the ring bytes), or leave
a partial append behind after a failed write.
"""

import logging
import os
import time
from typing import Any

import numpy as np

from .. import safefile
from .._native import ffi, lib
from .layout import check_partition_metadata, write_atomically
from .recovery import Lock
from .segment import INDEX_EVERY, INDEX_PAIR, SEGMENT_FILES, PartitionLog, SegmentFile

logger = logging.getLogger("shmlog.storage")

# ------------------------------------------------------------ writer (the persister's)


class PartitionWriter:
    """Appends runs of frames to the active segment, rolls, keeps indexes.

    Time index invariant (see log.c, index_row): a row (T, O) holds the largest
    timestamp of the segment's records below offset O; rows are appended as the
    C scan emits them (T carried across copy runs in self.ix), and a roll
    appends the final row (segment max, segment end offset) and fsyncs it before
    the next segment exists. Crash at each step: before the final row is
    durable the old segment is still the last one, and recovery recomputes its
    rows and final row from the frames; after it, the final row is on disk.

    It holds its partition directory open (dfd) and creates every file
    relative to it, after checking at open that the directory is this topic
    life's (partition.metadata): a delete that renames the directory away
    meanwhile leaves a late write in the deleted life's files, never in a new
    life's. It never creates the directory (create_topic does): a directory
    that is gone means the topic is gone (FileNotFoundError)."""

    def __init__(self, path: str, segment_bytes: int, segment_ms: int, topic_id: int | None = None):
        self.dfd: Any = safefile.open_dir(path, fsyncable=True)  # never through a planted symlink; None once closed
        try:
            if topic_id is not None:
                check_partition_metadata(self.dfd, path, topic_id)
        except BaseException:
            os.close(self.dfd)
            raise
        self.plog = PartitionLog(path)
        self.segment_bytes, self.segment_ms = segment_bytes, segment_ms
        self.fd: Any = None  # int while a segment is open
        self.ifd: Any = None
        self.tfd: Any = None
        self.active: Any = None  # the SegmentFile written, once open
        self.active_since = time.monotonic()
        self.ix = ffi.new("struct shm_index_state *")  # committed: what the files hold
        self.ix_scan = ffi.new("struct shm_index_state *")  # a copy run's, committed by append
        self.ix.max_timestamp = -1
        self.end_offset: int | None = None
        self.dirty = False

    def _open(self, seg: SegmentFile):
        self._close_files()
        at = safefile.open_append_at
        self.fd = at(self.dfd, os.path.basename(seg.path("log")), seg.path("log"))
        self.ifd = at(self.dfd, os.path.basename(seg.path("index")), seg.path("index"))
        self.tfd = at(self.dfd, os.path.basename(seg.path("timeindex")), seg.path("timeindex"))
        self.active = seg
        self.active_since = time.monotonic()

    def resume(self, end_pos: int, end_offset: int):
        """Continue after recovery: the last segment is the active one; its index
        state comes from the rows recovery wrote (the last one is its final row)."""
        segs = self.plog.segments
        if segs:
            self._open(segs[-1])
            idx, t = segs[-1].rows("index"), segs[-1].rows("timeindex")
            self.ix.next_pos = (int(idx[-1, 1]) + INDEX_EVERY) if len(idx) else segs[-1].base_pos
            self.ix.max_timestamp = int(t[-1, 0]) if len(t) else -1
        self.end_pos, self.end_offset = end_pos, end_offset

    def scan_state(self):
        """The index state a copy run scans with: a copy of the committed one."""
        ffi.memmove(self.ix_scan, self.ix, ffi.sizeof("struct shm_index_state"))
        return self.ix_scan

    def roll_needed(self) -> bool:
        a = self.active
        return (
            a is None
            or a.size >= self.segment_bytes
            or (a.size > 0 and (time.monotonic() - self.active_since) * 1000 >= self.segment_ms)
        )

    def roll(self, base_pos: int, base_offset: int, lost_from=None):
        """Starts the segment at (base_pos, base_offset). lost_from: (position,
        offset) where the files end when the records between are gone (the ring
        no longer holds them): written to <base>.lost before the segment exists,
        so recovery knows the hole in the chain is a loss already reported, not
        a file deleted since; readers still get SegmentGap there."""
        if lost_from is not None:
            a = self.active
            empty = a is not None and a.size == 0
            lost_from = (a.lost() if empty else None) or lost_from  # lapped again before a copy: one hole
            write_atomically(
                SegmentFile(self.plog.dir, base_offset, base_pos, 0, 0).path("lost"), INDEX_PAIR.pack(*lost_from)
            )
            if empty and a.base_offset != base_offset:
                self._drop_active()  # a crash before this leaves an empty trailing segment: recovery drops it
        if self.active is not None and self.active.base_offset == base_offset:
            return  # nothing was written since the last roll
        if self.active is not None and self.active.size and self.end_offset is not None:
            os.write(self.tfd, INDEX_PAIR.pack(self.ix.max_timestamp, self.end_offset))  # final row
            self.dirty = True
        self.fsync()  # fsynced_pos may pass the old segment only once it is synced
        seg = SegmentFile(self.plog.dir, base_offset, base_pos, 0, time.time())
        self._open(seg)
        self.plog.segments.append(seg)
        self.ix.next_pos, self.ix.max_timestamp = base_pos, -1
        self.end_offset = base_offset
        os.fsync(self.dfd)

    def append(self, data, index_rows, nrows: int, end_offset: int):
        """Writes data (ring bytes of complete frames, scanned with scan_state())
        and the index rows; all or nothing. end_offset: the offset after them.
        A failed write (ENOSPC) takes back what this call wrote to each of the
        three files: the caller retries the same run, and data kept when only
        an index write failed was appended twice (chaos seed 201: a segment
        whose frames after the copy named positions 4088 bytes back, refused
        by every restore)."""
        a = self.active
        fds, bufs = [self.fd], [data]
        if nrows:
            rows = np.frombuffer(ffi.buffer(index_rows, nrows * 24), "<i8").reshape(-1, 3)
            fds += [self.ifd, self.tfd]
            bufs += [rows[:, [0, 1]].tobytes(), rows[:, [2, 0]].tobytes()]
        done = [0] * len(fds)
        try:
            for k, (fd, buf) in enumerate(zip(fds, bufs)):
                while done[k] < len(buf):
                    done[k] += os.write(fd, buf[done[k] :])
        except OSError:
            for fd, n in zip(fds, done):
                if n:  # never leave a torn frame or row behind, nor a run the retry writes again
                    os.ftruncate(fd, os.fstat(fd).st_size - n)
            raise
        lib.shm_start_writeback(self.fd, a.size, done[0])  # writeback now, in the background
        a.size += done[0]
        ffi.memmove(self.ix, self.ix_scan, ffi.sizeof("struct shm_index_state"))
        self.end_offset = end_offset
        self.dirty = True

    def fsync(self):
        if self.dirty and self.fd is not None:
            os.fsync(self.fd)
            os.fsync(self.ifd)
            os.fsync(self.tfd)
        self.dirty = False

    def fsync_handles(self):
        """Duplicates of the active files' descriptors for an fsync in another
        thread (a roll may close the originals meanwhile); None when clean."""
        if not self.dirty or self.fd is None:
            return None
        self.dirty = False
        return [os.dup(fd) for fd in (self.fd, self.ifd, self.tfd)]

    def _drop_active(self):
        """Removes the empty active segment (its files, its .lost) before a roll."""
        a = self.active
        self._close_files()
        for ext in SEGMENT_FILES:
            try:
                os.unlink(os.path.basename(a.path(ext)), dir_fd=self.dfd)
            except FileNotFoundError:
                pass
        self.plog.segments.remove(a)
        self.active = None

    def _close_files(self):
        for fd in (self.fd, self.ifd, self.tfd):
            if fd is not None:
                os.close(fd)
        self.fd = self.ifd = self.tfd = None

    def close(self):
        self._close_files()
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None

    # ------------------------------------------------------------ retention

    def enforce_retention(self, retention_ms, retention_bytes, compacted: bool = False) -> int:
        """Deletes whole non-active segments past the limits; returns how many.
        By time, a segment goes once its largest record timestamp (its final
        time-index row, as Kafka's largestTimestamp) is older than retention_ms.
        compacted ("compact,delete"): the cleaner rewrites rolled segments, so
        their sizes and times are read again, and deletion holds the cleaner's
        lock (skipped this round when a swap holds it): a segment deleted here
        is never brought back by a swap that was under way."""
        if not compacted:
            return self._retention(retention_ms, retention_bytes)
        with Lock(self.plog.dir) as lock:
            if not lock.acquire(timeout=0):
                return 0
            fresh = {s.base_offset: s for s in PartitionLog(self.plog.dir).segments}
            for s in self.plog.segments[:-1]:
                f = fresh.get(s.base_offset)
                if f is not None:
                    s.base_pos, s.size, s.mtime, s.ino = f.base_pos, f.size, f.mtime, f.ino
            return self._retention(retention_ms, retention_bytes)

    def _retention(self, retention_ms, retention_bytes) -> int:
        segs = self.plog.segments
        total = sum(s.size for s in segs)
        now = time.time()
        dropped = 0
        while len(segs) > 1:
            s = segs[0]
            too_old = retention_ms is not None and s.max_timestamp() < now * 1000 - retention_ms
            too_big = retention_bytes is not None and total - s.size >= retention_bytes
            if not (too_old or too_big):
                break
            for ext in SEGMENT_FILES:
                try:
                    os.unlink(s.path(ext))
                except FileNotFoundError:
                    pass
            total -= s.size
            segs.pop(0)
            dropped += 1
            logger.info("retention deleted %s", s.path())
        return dropped
