"""storage/segment.py — a partition's segment files, read side.

Owns: SegmentFile (one <base-offset>.log with its .index, .timeindex and
.lost), PartitionLog (the chain of a partition's segments: find a position
or an offset, positioned reads, time lookups), and the errors that describe
damaged files (CorruptSegment, SegmentGap).
Must never: write a file (writer.py does), or trust an index row it has not
checked against the frame it names.

A frame names its own position (commit word = position ^ SHM_COMMIT_XOR), so
a segment's base position is read from its first frame, and file position =
position - segment base position. The chain: each segment starts at the
offset the one before it ends at, and at the same position or (a cleaned
segment: storage/compact.py, invariant C1) a higher one (continues()).
"""

import bisect
import logging
import os
import struct
from typing import Any

import numpy as np

from .. import errors
from .._native import ffi, lib
from .layout import PARTITION_METADATA

logger = logging.getLogger("shmlog.storage")

INDEX_EVERY = 4096  # one index row per this many bytes of log
SEGMENT_FILES = ("log", "index", "timeindex", "lost")  # .lost: a loss the persister recorded (see writer.roll)
CHUNK = 8 << 20  # bytes read at a time
INDEX_PAIR = struct.Struct("<qq")
CHECKPOINT = "cleaner.checkpoint"  # a compacted partition's cleaner progress (storage/compact.py)
XOR = lib.SHM_COMMIT_XOR


class CorruptSegment(errors.CorruptRecord):
    """A segment file holds a damaged frame followed by good ones (or a rolled
    segment ends early). pos, offset: where the damage is and the first offset
    it affects (None when not known)."""

    def __init__(self, path, file_pos, why, pos=None, offset=None, followed=True):
        self.path, self.file_pos, self.pos, self.offset = path, file_pos, pos, offset
        after = "with intact frames after it" if followed else "in a segment that is not the last one"
        super().__init__(
            f"{path}: damaged frame at file position {file_pos} ({why}) {after}; refusing "
            "to guess. Inspect with `shmlog check`, then restore the file or truncate it "
            "at that position yourself."
        )


class SegmentGap(errors.CorruptRecord):
    """The segment chain has a hole: a segment file does not start where the
    one before it ends (a file was deleted or lost). Kafka refuses such a log;
    so do recovery and every reader that reaches the hole (never a stall)."""

    def __init__(self, before, after, end_offset=None):
        self.before, self.after = before.path(), after.path()
        end_offset = segment_end(before)[0].end_offset if end_offset is None else end_offset
        self.missing = (end_offset, after.base_offset)
        self.path, self.pos, self.offset = self.before, before.end_pos, end_offset
        self.recorded = after.lost() == (before.end_pos, end_offset)
        why = (
            "records the persister found lost and recorded in " + after.path("lost")
            if self.recorded
            else "segment files missing"
        )
        super().__init__(
            f"{why}: offsets {end_offset}..{after.base_offset - 1} (positions "
            f"{before.end_pos}..{after.base_pos - 1}) between {self.before} and {self.after}. "
            "Restore the missing file, or seek() past the hole; `shmlog check` lists every hole."
        )


class SegmentReplaced(FileNotFoundError):
    """The file under a segment's name is not the one listed (the cleaner
    swapped in a cleaned copy): its positions mean other frames now. A reader
    lists the segments again and seeks by offset."""


def continues(end_pos: int, end_offset: int, nxt) -> bool:
    """Does segment nxt continue a log that ends at (end_pos, end_offset)? Offsets
    contiguous and its start at or above end_pos: a cleaned segment is
    end-aligned, so it starts above where the one before it ends; with the
    offsets contiguous nothing is missing (every rolled segment holds an
    offset, so a lost file or lost frames always break the offset chain)."""
    return end_offset == nxt.base_offset and nxt.base_pos >= end_pos


class SegmentFile:
    __slots__ = ("dir", "base_offset", "base_pos", "size", "mtime", "ino")

    def __init__(self, d, base_offset, base_pos, size, mtime, ino=0):
        self.dir, self.base_offset, self.base_pos, self.size, self.mtime = d, base_offset, base_pos, size, mtime
        self.ino = ino  # 0: not known (a segment the writer made)

    def path(self, ext="log"):
        return os.path.join(self.dir, f"{self.base_offset:020d}.{ext}")

    @property
    def end_pos(self):
        return self.base_pos + self.size

    def index(self) -> list[tuple[int, int]]:
        """(offset, position) rows"""
        return [tuple(r) for r in self.rows("index").tolist()]

    def time_index(self) -> list[tuple[int, int]]:
        """(largest timestamp of the records below offset, offset) rows"""
        return [tuple(r) for r in self.rows("timeindex").tolist()]

    def rows(self, ext) -> np.ndarray:
        """The pairs of an index file as an (n, 2) int64 array (a torn last row dropped)."""
        try:
            with open(self.path(ext), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        return np.frombuffer(data, "<i8", (len(data) // 16) * 2).reshape(-1, 2)

    def index_rows(self):
        """The .index rows if they are plausible (positions increasing inside the
        file, offsets not decreasing, none below the base), else None. A reader
        still verifies the row it starts from against the frame it names."""
        r = self.rows("index")
        if not len(r):
            return r
        try:
            end = self.base_pos + os.path.getsize(self.path())  # after the rows: they name written frames
        except FileNotFoundError:
            end = self.end_pos
        if not (
            np.all(np.diff(r[:, 1]) > 0)
            and np.all(np.diff(r[:, 0]) >= 0)
            and r[0, 0] >= self.base_offset
            and r[0, 1] >= self.base_pos
            and r[-1, 1] < end
        ):
            return None
        return r

    def time_rows(self):
        """The .timeindex rows (timestamp, offset) if both columns are monotonic and
        no offset is below the base, else None."""
        r = self.rows("timeindex")
        if len(r) and not (np.all(np.diff(r, axis=0) >= 0) and r[0, 1] >= self.base_offset):
            return None
        return r

    def lost(self):
        """(position, offset) where the log ended before this segment when the
        persister had to start it after a loss (its .lost file), else None."""
        try:
            with open(self.path("lost"), "rb") as f:
                data = f.read(16)
        except FileNotFoundError:
            return None
        return INDEX_PAIR.unpack(data) if len(data) == 16 else None

    def max_timestamp(self):
        """The largest record timestamp of a rolled segment (its final time-index
        row); Kafka's fallback when it has none: the file's modification time."""
        r = self.time_rows()
        return int(r[-1, 0]) if r is not None and len(r) and r[-1, 0] >= 0 else int(self.mtime * 1000)


def segment_base(name: str):
    """The base offset a segment file's name (<20 digits>.log) carries, or None for any other name."""
    if len(name) != 24 or not name.endswith(".log") or not name[:20].isdigit():
        return None
    return int(name[:20])


def _first_pos(path: str):
    with open(path, "rb") as f:
        head = f.read(8)
    return None if len(head) < 8 else int.from_bytes(head, "little") ^ XOR


class PartitionLog:
    """The segment files of one partition (a reader's or the persister's view)."""

    def __init__(self, path: str):
        self.dir = path
        self.segments: list[SegmentFile] = []
        self.warned: set[Any] = set()
        self.refresh()

    def refresh(self):
        segs = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if segment_base(n) is None:
                quiet = n.endswith((".index", ".timeindex", ".lost", ".cleaned")) or n in (
                    PARTITION_METADATA,
                    CHECKPOINT,
                )
                if not quiet and ".tmp." not in n:
                    logger.warning("%s: not a segment file; ignored", os.path.join(self.dir, n))
                continue
            p = os.path.join(self.dir, n)
            try:
                st = os.stat(p)
                base_pos = _first_pos(p)
            except FileNotFoundError:
                continue  # deleted by retention meanwhile
            if base_pos is None:
                idx = SegmentFile(self.dir, int(n[:20]), 0, 0, st.st_mtime).rows("index")
                base_pos = int(idx[0, 1]) if len(idx) else None
            if base_pos is None:
                continue
            segs.append(SegmentFile(self.dir, int(n[:20]), base_pos, st.st_size, st.st_mtime, st.st_ino))
        segs.sort(key=lambda s: s.base_offset)
        self.segments = segs

    # ------------------------------------------------------------ positions and offsets

    def start_offset(self):
        return self.segments[0].base_offset if self.segments else None

    def segment_for_pos(self, pos: int):
        """The segment holding position pos (the last one when pos is past its end).
        Raises SegmentGap when pos lies in a hole of the chain: a reader reaching
        it gets an error naming the missing range, not a silent stall."""
        i = bisect.bisect_right([s.base_pos for s in self.segments], pos) - 1
        if i < 0:
            return None
        s = self.segments[i]
        if pos >= s.end_pos and i + 1 < len(self.segments):
            raise SegmentGap(s, self.segments[i + 1])
        return s

    def bridge(self, cur) -> bool:
        """A cursor at the end of a segment whose successor starts higher with the
        offset the cursor expects (a cleaned, end-aligned segment: continues())
        moves to that segment's start. True when it moved."""
        segs = self.segments
        i = bisect.bisect_right([s.base_pos for s in segs], cur.pos) - 1
        if 0 <= i < len(segs) - 1:
            s, nxt = segs[i], segs[i + 1]
            if s.end_pos <= cur.pos < nxt.base_pos and cur.expect_base == nxt.base_offset:
                cur.pos = nxt.base_pos
                return True
        return False

    def segment_for_offset(self, offset: int):
        i = bisect.bisect_right([s.base_offset for s in self.segments], offset) - 1
        return self.segments[i] if i >= 0 else None

    def read(self, seg: SegmentFile, pos: int, buf, nbytes: int) -> int:
        """preads up to nbytes of seg from position pos into the cffi buffer buf."""
        fd = os.open(seg.path(), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if seg.ino and os.fstat(fd).st_ino != seg.ino:
                raise SegmentReplaced(seg.path())
            n = os.preadv(fd, [ffi.buffer(buf, nbytes)], pos - seg.base_pos)
        finally:
            os.close(fd)
        return n

    def torn(self, seg: SegmentFile, pos: int):
        """A read at pos found a frame that runs past the end of seg's file: being
        written when seg is the last segment (None: wait), else damage that never
        completes (the CorruptRecord to raise: a rolled segment that ends early)."""
        if seg is self.segments[-1]:
            return None
        return errors.CorruptRecord(
            f"{seg.path()}: torn frame at file position {pos - seg.base_pos} "
            "in a rolled segment (the file ends inside it); run `shmlog check`"
        )

    def _warn(self, seg, what):
        if (seg.path(), what) not in self.warned:
            self.warned.add((seg.path(), what))
            logger.warning(
                "%s: %s; reading from the segment start instead (`shmlog check --repair` rebuilds it)",
                seg.path("index"),
                what,
            )

    def seek(self, offset: int, buf, cap: int, cur) -> bool:
        """Positions cursor cur at offset (or the first frame after it); False when
        offset is below the log start. The index row it starts from is only a
        hint: the walk checks that the frame there carries the row's offset and
        that every frame continues the one before (shm_frames_seek), so a damaged
        row costs a scan from the segment start, never a skipped record. A
        segment that retention removes meanwhile: the listing is read again and
        the seek retried (the offset may now be below the log start: False)."""
        for _ in range(8):
            try:
                return self._seek(offset, buf, cap, cur)
            except FileNotFoundError:
                self.refresh()
        raise errors.OffsetOutOfRange(f"{self.dir}: segments keep vanishing under a seek to offset {offset}")

    def _seek(self, offset: int, buf, cap: int, cur) -> bool:
        seg = self.segment_for_offset(offset)
        if seg is None:
            return False
        idx = seg.index_rows()
        if idx is None:
            self._warn(seg, "the index is damaged (rows out of order or outside the file)")
            idx = np.empty((0, 2), np.int64)
        j = int(np.searchsorted(idx[:, 0], offset, "right")) - 1
        from_row = j >= 0
        cur.pos, cur.next_offset = (int(idx[j, 1]), int(idx[j, 0])) if from_row else (seg.base_pos, seg.base_offset)
        cur.expect_base = cur.next_offset
        while True:
            n = self.read(seg, cur.pos, buf, cap)
            before = cur.pos
            rc = lib.shm_frames_seek(buf, n, cur.pos, offset, cur)
            if rc == lib.SHM_OK:
                cur.next_offset = offset
                return True
            if rc == lib.SHM_E_CORRUPT:
                if from_row:
                    self._warn(seg, f"index row {j} (file position {j * 16}) does not match the log")
                    from_row = False
                    cur.pos = seg.base_pos
                    cur.next_offset = cur.expect_base = seg.base_offset
                    continue
                raise errors.CorruptRecord(
                    f"{seg.path()}: damaged frame at file position "
                    f"{cur.pos - seg.base_pos} while seeking offset {offset}"
                )
            if cur.pos >= seg.end_pos:  # offset is past this segment
                self.bridge(cur)
                nxt = self.segment_for_pos(cur.pos)
                if nxt is None or nxt is seg:
                    cur.next_offset = offset
                    return True
                seg, from_row = nxt, False
            elif cur.pos == before and n == cap:  # a frame larger than the buffer
                cap *= 2
                buf = ffi.new("uint8_t[]", cap)
            elif cur.pos == before:  # a frame that ends past the file's end
                if seg is not self.segments[-1]:
                    raise errors.CorruptRecord(
                        f"{seg.path()}: torn frame at file position "
                        f"{cur.pos - seg.base_pos} while seeking offset {offset}"
                    )
                cur.next_offset = offset  # being written: the reader waits there
                return True

    def offset_before_time(self, timestamp_ms: int):
        """An offset at or below the earliest record whose timestamp is >=
        timestamp_ms (Kafka's offsetsForTimes), to read forward from; None without
        segments. A time-index row (T, O) says every record below O is at most
        T, so the answer is at or after the last row with T < timestamp_ms; a
        rolled segment whose final row (its max, its end) is below the target is
        passed whole."""
        segs = self.segments
        for i, s in enumerate(segs):
            t = s.time_rows()
            if t is None:
                return s.base_offset  # damaged: scan this segment whole
            below = int(np.searchsorted(t[:, 0], timestamp_ms, "left"))
            final = i + 1 < len(segs) and len(t) and t[-1, 1] == segs[i + 1].base_offset
            if final and below == len(t):
                continue
            return int(t[below - 1, 1]) if below else s.base_offset
        return None


# ------------------------------------------------------------ validating a segment's frames (the C scan)

SCAN_STOP_REASONS = {
    lib.SHM_SCAN_TORN: "torn frame at the end",
    lib.SHM_SCAN_BAD_HEADER: "bad frame header",
    lib.SHM_SCAN_BAD_BODY: "CRC or body check failed",
    lib.SHM_SCAN_OFFSET_JUMP: "offset discontinuity",
}


def scan_frames(path: str, start_pos: int, file_from: int, expect_offset: int, every, max_ts: int = -1, on_rows=None):
    """Validates frames of path from file position file_from (position start_pos,
    offset expect_offset), with max_ts the segment's largest timestamp below it.
    Index rows every `every` bytes (1: every frame; None: none) go to on_rows as
    (n, 3) arrays, else are returned concatenated. Returns (scan_out, rows, size);
    memory stays within two chunks whatever the file holds."""
    out = ffi.new("struct shm_scan_out *")
    ix = ffi.new("struct shm_index_state *", {"next_pos": start_pos if every else 1 << 63, "max_timestamp": max_ts})
    chunks: list[Any] = []
    size = os.path.getsize(path)
    buf_cap = min(CHUNK, max(size - file_from + 7, 64) & ~7)  # small segments, small buffers
    buf = ffi.new("uint8_t[]", buf_cap)
    pos, off, fpos = start_pos, expect_offset, file_from
    step = every or INDEX_EVERY
    maxrows = buf_cap // max(step, 32) + 2
    rows = ffi.new("int64_t[]", maxrows * lib.SHM_INDEX_FIELDS)
    cnt = ffi.new("uint32_t *")
    with open(path, "rb", buffering=0) as f:
        while True:
            f.seek(fpos)
            n = f.readinto(ffi.buffer(buf, buf_cap))
            cnt[0] = 0
            lib.shm_frames_validate(buf, n, pos, off, step, ix, rows, maxrows, cnt, out)
            if every and cnt[0]:
                a = np.frombuffer(ffi.buffer(rows, cnt[0] * 24), "<i8").reshape(-1, 3).copy()
                (on_rows or chunks.append)(a)
            consumed = out.end_pos - pos
            pos, off, fpos = out.end_pos, out.end_offset, fpos + consumed
            if out.stop_reason == lib.SHM_SCAN_TORN and fpos + buf_cap <= size and consumed == 0:
                buf_cap *= 2  # a frame larger than the chunk
                buf = ffi.new("uint8_t[]", buf_cap)
                maxrows = buf_cap // max(step, 32) + 2
                rows = ffi.new("int64_t[]", maxrows * lib.SHM_INDEX_FIELDS)
                continue
            if out.stop_reason == lib.SHM_SCAN_TORN and fpos < size and consumed > 0:
                continue  # chunk boundary, not the file's end
            if out.stop_reason == lib.SHM_SCAN_END and fpos < size:
                continue
            allrows = np.concatenate(chunks) if chunks else np.empty((0, 3), np.int64)
            return out, allrows, size


def start_row(s: SegmentFile):
    """(position, offset, max timestamp below it) of the last .index row that has a
    matching .timeindex row, to scan forward from; the segment start otherwise.
    The scan verifies the row (its frame must name the position and carry the offset)."""
    idx, t = s.index_rows(), s.time_rows()
    if idx is not None and t is not None and len(idx) and len(t):
        k = np.searchsorted(t[:, 1], idx[:, 0], "left")
        hit = np.nonzero((k < len(t)) & (t[np.minimum(k, len(t) - 1), 1] == idx[:, 0]))[0]
        if len(hit):
            r = hit[-1]
            return int(idx[r, 1]), int(idx[r, 0]), int(t[k[r], 0]), r
    return s.base_pos, s.base_offset, -1, -1


def segment_end(s: SegmentFile, rebuild=False):
    """Scans a segment from its start row to its end: (scan_out, index rows from
    the scan, start (pos, offset, max_ts, row)). A start row the log contradicts
    (its frame does not name it or carries another offset) is dropped for the
    segment start: the index is damaged, not the log."""
    start = (s.base_pos, s.base_offset, -1, -1) if rebuild else start_row(s)
    while True:
        pos, off, mts, row = start
        out, rows, size = scan_frames(s.path(), pos, pos - s.base_pos, off, INDEX_EVERY, mts)
        stale_row = out.stop_reason in (lib.SHM_SCAN_TORN, lib.SHM_SCAN_BAD_HEADER, lib.SHM_SCAN_OFFSET_JUMP)
        if row >= 0 and out.frames == 0 and out.end_pos == pos and stale_row:
            start = (s.base_pos, s.base_offset, -1, -1)
            continue
        return out, rows, start
