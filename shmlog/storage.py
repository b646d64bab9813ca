"""storage.py — a partition's log on disk: segment files and their indexes.

Owns: the layout <data_dir>/topics/<topic>/<partition>/<base-offset>.log
(+ .index: (offset, position) int64 pairs; + .timeindex: (max timestamp,
offset) pairs), appending runs of frames (persister only), rolling,
recovery of the last segment's tail, retention, and positioned reads.
Must never: re-encode a frame (the file bytes are the ring bytes), or skip
corruption silently: a torn tail is truncated and reported, a bad frame
followed by good ones is refused with the file and position.

A frame names its own position (commit word = position ^ SHM_COMMIT_XOR), so
a segment's base position is read from its first frame, and file position =
position - segment base position.
"""
import bisect
import logging
import os
import shutil
import struct
import time

from . import errors, safefile
from ._native import ffi, lib

log = logging.getLogger("shmlog.storage")

INDEX_EVERY = 4096                 # one index row per this many bytes of log
CHUNK = 8 << 20                    # bytes read at a time
_PAIR = struct.Struct("<qq")
XOR = lib.SHM_COMMIT_XOR


def partition_dir(data_dir: str, topic: str, partition: int) -> str:
    return os.path.join(data_dir, "topics", topic, str(partition))


def topic_dir(data_dir: str, topic: str) -> str:
    return os.path.join(data_dir, "topics", topic)


fsync_dir = safefile.fsync_dir


def write_atomically(path: str, data: bytes, sync_dir: bool = True):
    """Replaces path with data: a crash leaves the old file or the new one,
    never a mix (safefile.replace: an unpredictable tmp name, O_EXCL|O_NOFOLLOW,
    fsync, rename, fsync the directory)."""
    safefile.replace(path, data, sync_dir=sync_dir)


class CorruptSegment(errors.CorruptRecord):
    """A segment file holds a damaged frame followed by good ones."""

    def __init__(self, path, file_pos, why):
        self.path, self.file_pos = path, file_pos
        super().__init__(f"{path}: damaged frame at file position {file_pos} ({why}) with intact "
                         "frames after it; refusing to guess. Inspect with `shmlog check`, then "
                         "restore the file or truncate it at that position yourself.")


class Segment:
    __slots__ = ("dir", "base_offset", "base_pos", "size", "mtime")

    def __init__(self, d, base_offset, base_pos, size, mtime):
        self.dir, self.base_offset, self.base_pos, self.size, self.mtime = d, base_offset, base_pos, size, mtime

    def path(self, ext="log"):
        return os.path.join(self.dir, f"{self.base_offset:020d}.{ext}")

    @property
    def end_pos(self):
        return self.base_pos + self.size

    def index(self) -> list[tuple[int, int]]:
        """(offset, position) rows"""
        return _read_pairs(self.path("index"))

    def time_index(self) -> list[tuple[int, int]]:
        """(max timestamp so far, offset) rows"""
        return _read_pairs(self.path("timeindex"))


def _read_pairs(path: str) -> list[tuple[int, int]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [_PAIR.unpack_from(data, i) for i in range(0, len(data) - len(data) % 16, 16)]


def _first_pos(path: str):
    with open(path, "rb") as f:
        head = f.read(8)
    return None if len(head) < 8 else int.from_bytes(head, "little") ^ XOR


class PartitionLog:
    """The segment files of one partition (a reader's or the persister's view)."""

    def __init__(self, path: str):
        self.dir = path
        self.segments: list[Segment] = []
        self.refresh()

    def refresh(self):
        segs = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if not n.endswith(".log") or len(n) != 24:
                continue
            p = os.path.join(self.dir, n)
            try:
                st = os.stat(p)
                base_pos = _first_pos(p)
            except FileNotFoundError:
                continue                              # deleted by retention meanwhile
            if base_pos is None:
                idx = Segment(self.dir, int(n[:20]), 0, 0, st.st_mtime).index()
                base_pos = idx[0][1] if idx else None
            if base_pos is None:
                continue
            segs.append(Segment(self.dir, int(n[:20]), base_pos, st.st_size, st.st_mtime))
        segs.sort(key=lambda s: s.base_offset)
        self.segments = segs

    # ------------------------------------------------------------ positions and offsets

    def start_offset(self):
        return self.segments[0].base_offset if self.segments else None

    def segment_for_pos(self, pos: int):
        i = bisect.bisect_right([s.base_pos for s in self.segments], pos) - 1
        return self.segments[i] if i >= 0 else None

    def segment_for_offset(self, offset: int):
        i = bisect.bisect_right([s.base_offset for s in self.segments], offset) - 1
        return self.segments[i] if i >= 0 else None

    def read(self, seg: Segment, pos: int, buf, nbytes: int) -> int:
        """preads up to nbytes of seg from position pos into the cffi buffer buf."""
        fd = os.open(seg.path(), os.O_RDONLY | os.O_CLOEXEC)
        try:
            n = os.preadv(fd, [ffi.buffer(buf, nbytes)], pos - seg.base_pos)
        finally:
            os.close(fd)
        return n

    def seek(self, offset: int, buf, cap: int, cur) -> bool:
        """Positions cursor cur at offset (or the first frame after it); False when
        offset is below the log start."""
        seg = self.segment_for_offset(offset)
        if seg is None:
            return False
        idx = seg.index()
        j = bisect.bisect_right([o for o, _ in idx], offset) - 1
        cur.pos = idx[j][1] if j >= 0 else seg.base_pos
        cur.next_offset = idx[j][0] if j >= 0 else seg.base_offset
        while True:
            n = self.read(seg, cur.pos, buf, cap)
            rc = lib.shm_frames_seek(buf, n, cur.pos, offset, cur)
            if rc == lib.SHM_OK:
                cur.next_offset = offset
                return True
            if rc == lib.SHM_E_CORRUPT:
                raise errors.CorruptRecord(f"{seg.path()}: damaged frame at file position "
                                           f"{cur.pos - seg.base_pos} while seeking offset {offset}")
            if cur.pos >= seg.end_pos:               # offset is past this segment
                nxt = self.segment_for_pos(cur.pos)
                if nxt is None or nxt is seg:
                    cur.next_offset = offset
                    return True
                seg = nxt


# ------------------------------------------------------------ writer (the persister's)

class PartitionWriter:
    """Appends runs of frames to the active segment, rolls, keeps indexes."""

    def __init__(self, path: str, segment_bytes: int, segment_ms: int):
        self.plog = PartitionLog(path)
        self.segment_bytes, self.segment_ms = segment_bytes, segment_ms
        self.fd = self.ifd = self.tfd = None
        self.active: Segment | None = None
        self.active_since = time.monotonic()
        self.next_index_pos = ffi.new("uint64_t *")
        self.dirty = False
        safefile.makedirs(path)

    def _open(self, seg: Segment):
        self.close()
        self.fd = safefile.open_append(seg.path("log"))
        self.ifd = safefile.open_append(seg.path("index"))
        self.tfd = safefile.open_append(seg.path("timeindex"))
        self.active = seg
        self.active_since = time.monotonic()

    def resume(self, end_pos: int, end_offset: int):
        """Continue after recovery: the last segment is the active one."""
        segs = self.plog.segments
        if segs:
            self._open(segs[-1])
            idx = segs[-1].index()
            self.next_index_pos[0] = (idx[-1][1] + INDEX_EVERY) if idx else segs[-1].base_pos
        self.end_pos, self.end_offset = end_pos, end_offset

    def roll_needed(self) -> bool:
        a = self.active
        return a is None or a.size >= self.segment_bytes or \
            (a.size > 0 and (time.monotonic() - self.active_since) * 1000 >= self.segment_ms)

    def roll(self, base_pos: int, base_offset: int):
        if self.active is not None and self.active.base_offset == base_offset:
            return                                   # nothing was written since the last roll
        self.fsync()                                 # fsynced_pos may pass the old segment only once it is synced
        seg = Segment(self.plog.dir, base_offset, base_pos, 0, time.time())
        self._open(seg)
        self.plog.segments.append(seg)
        self.next_index_pos[0] = base_pos
        fsync_dir(self.plog.dir)

    def append(self, data, index_rows, nrows: int):
        """Writes data (ring bytes of complete frames) and the index rows; all or nothing."""
        a = self.active
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError:
            if done:
                os.ftruncate(self.fd, a.size)        # never leave a torn frame behind
            raise
        lib.shm_start_writeback(self.fd, a.size, done)   # writeback now, in the background
        a.size += done
        if nrows:
            rows = ffi.unpack(index_rows, nrows * lib.SHM_INDEX_FIELDS)
            os.write(self.ifd, b"".join(_PAIR.pack(rows[i], rows[i + 1]) for i in range(0, len(rows), 3)))
            os.write(self.tfd, b"".join(_PAIR.pack(rows[i + 2], rows[i]) for i in range(0, len(rows), 3)))
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

    def close(self):
        for fd in (self.fd, self.ifd, self.tfd):
            if fd is not None:
                os.close(fd)
        self.fd = self.ifd = self.tfd = None

    # ------------------------------------------------------------ retention

    def enforce_retention(self, retention_ms, retention_bytes) -> int:
        """Deletes whole non-active segments past the limits; returns how many."""
        segs = self.plog.segments
        total = sum(s.size for s in segs)
        now = time.time()
        dropped = 0
        while len(segs) > 1:
            s = segs[0]
            ts = s.time_index()
            newest_ms = ts[-1][0] if ts else s.mtime * 1000
            too_old = retention_ms is not None and newest_ms < now * 1000 - retention_ms
            too_big = retention_bytes is not None and total - s.size >= retention_bytes
            if not (too_old or too_big):
                break
            for ext in ("log", "index", "timeindex"):
                try:
                    os.unlink(s.path(ext))
                except FileNotFoundError:
                    pass
            total -= s.size
            segs.pop(0)
            dropped += 1
            log.info("retention deleted %s", s.path())
        return dropped


# ------------------------------------------------------------ recovery

class RecoveryReport:
    def __init__(self, path):
        self.path = path
        self.truncated_bytes = 0
        self.truncated_at = None
        self.rebuilt_index = False
        self.end_pos = 0
        self.end_offset = 0

    def __repr__(self):
        return (f"RecoveryReport({self.path!r}, end_offset={self.end_offset}, end_pos={self.end_pos}, "
                f"truncated_bytes={self.truncated_bytes}, rebuilt_index={self.rebuilt_index})")


def _scan(path: str, start_pos: int, file_from: int, expect_offset: int, build_index: bool):
    """Validates frames of path from file position file_from; returns (scan_out, rows)."""
    out = ffi.new("struct shm_scan_out *")
    nip = ffi.new("uint64_t *", start_pos)
    rows_all = []
    size = os.path.getsize(path)
    buf_cap = max(CHUNK, 1)
    buf = ffi.new("uint8_t[]", buf_cap)
    pos, off, fpos = start_pos, expect_offset, file_from
    maxrows = buf_cap // INDEX_EVERY + 2
    rows = ffi.new("int64_t[]", maxrows * lib.SHM_INDEX_FIELDS)
    cnt = ffi.new("uint32_t *")
    with open(path, "rb", buffering=0) as f:
        while True:
            f.seek(fpos)
            n = f.readinto(ffi.buffer(buf, buf_cap))
            cnt[0] = 0
            lib.shm_frames_validate(buf, n, pos, off, INDEX_EVERY if build_index else 1 << 62, nip, rows,
                                    maxrows, cnt, out)
            if build_index and cnt[0]:
                rows_all += ffi.unpack(rows, cnt[0] * lib.SHM_INDEX_FIELDS)
            consumed = out.end_pos - pos
            pos, off, fpos = out.end_pos, out.end_offset, fpos + consumed
            if out.stop_reason == 1 and fpos + buf_cap <= size and consumed == 0:
                buf_cap *= 2                          # a frame larger than the chunk
                buf = ffi.new("uint8_t[]", buf_cap)
                continue
            if out.stop_reason == 1 and fpos < size and consumed > 0:
                continue                              # chunk boundary, not the file's end
            if out.stop_reason == 0 and fpos < size:
                continue
            return out, rows_all, size


def _good_after(path: str, bad_pos: int, base_pos: int, bad_len: int, index) -> bool:
    """Is there an intact frame after the damaged one at bad_pos?"""
    candidates = []
    if bad_len:
        candidates.append(bad_pos + ((bad_len + 7) & ~7))
    candidates += [p for _, p in index if p > bad_pos]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for p in candidates[:64]:
            f.seek(p - base_pos)
            head = f.read(16)
            if len(head) < 16 or int.from_bytes(head[:8], "little") != p ^ XOR:
                continue
            length = int.from_bytes(head[8:12], "little")
            if p - base_pos + length > size:
                continue
            f.seek(p - base_pos)
            frame = f.read(length)
            kind = int.from_bytes(head[12:14], "little")
            if kind != lib.SHM_FRAME_DATA or lib.shm_batch_validate(frame[16:], length - 16) == lib.SHM_OK:
                return True
    return False


def recover_partition(path: str, repair: bool = True) -> RecoveryReport:
    """Validates the tail of the last segment, truncates a torn tail (repair=True),
    rebuilds its indexes, and returns where the log ends. Raises CorruptSegment for
    damage followed by intact frames."""
    rep = RecoveryReport(path)
    plog = PartitionLog(path)
    segs = plog.segments
    while segs and segs[-1].size == 0 and len(segs) > 1:          # empty trailing segment
        s = segs.pop()
        if repair:
            for ext in ("log", "index", "timeindex"):
                try:
                    os.unlink(s.path(ext))
                except FileNotFoundError:
                    pass
    if not segs:
        names = sorted(n for n in (os.listdir(path) if os.path.isdir(path) else []) if n.endswith(".log"))
        rep.end_offset = int(names[-1][:20]) if names else 0
        return rep
    if repair:
        for s in segs[:-1]:
            if not _index_ok(s):
                _rebuild_index(s)
                log.warning("%s: rebuilt a missing or damaged index", s.path())
    last = segs[-1]
    idx = last.index() if _index_ok(last) else []
    # resume from the last index row whose frame still names its position
    start_pos, start_off = last.base_pos, last.base_offset
    for off, pos in reversed(idx):
        if pos - last.base_pos < last.size and _first_pos_at(last.path(), pos - last.base_pos) == pos:
            start_pos, start_off = pos, off
            break
    out, rows, size = _scan(last.path(), start_pos, start_pos - last.base_pos, start_off, True)
    good_end = out.end_pos - last.base_pos
    if good_end < size:
        if out.stop_reason in (2, 3, 4) and _good_after(last.path(), out.end_pos, last.base_pos,
                                                        out.bad_frame_len, idx):
            why = {2: "bad frame header", 3: "CRC or body check failed", 4: "offset discontinuity"}
            raise CorruptSegment(last.path(), good_end, why[out.stop_reason])
        rep.truncated_at, rep.truncated_bytes = good_end, size - good_end
        if repair:
            with os.fdopen(safefile.open_write_fd(last.path()), "wb") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            log.warning("%s: truncated a torn tail of %d bytes at file position %d",
                        last.path(), size - good_end, good_end)
    if repair:
        # rebuild both indexes of the last segment: rows before start_pos kept, rest from the scan
        keep = [(o, p) for o, p in idx if p < start_pos]
        tkeep = [(t, o) for t, o in last.time_index() if o < start_off]
        _write_indexes(last, rows, keep, tkeep)
        rep.rebuilt_index = True
    rep.end_pos, rep.end_offset = out.end_pos, out.end_offset
    return rep


def _index_ok(s: Segment) -> bool:
    """Plausible and in step with the log: ordered rows inside the segment whose
    first and last positions hold frames that name them; a time index beside it."""
    rows = s.index()
    if not rows:
        return s.size == 0
    if not os.path.exists(s.path("timeindex")) or rows[0][0] != s.base_offset:
        return False
    for (o1, p1), (o2, p2) in zip(rows, rows[1:]):
        if o2 < o1 or p2 <= p1:
            return False
    if not all(s.base_pos <= p < s.end_pos for _, p in (rows[0], rows[-1])):
        return False
    return all(_first_pos_at(s.path(), p - s.base_pos) == p for _, p in (rows[0], rows[-1]))


def _rebuild_index(s: Segment):
    _, rows, _ = _scan(s.path(), s.base_pos, 0, s.base_offset, True)
    _write_indexes(s, rows)


def _write_indexes(s: Segment, rows, keep=(), tkeep=()):
    """Rewrites both index files (write, fsync, rename): the kept pairs, then the
    scan's index rows (offset, position, max timestamp)."""
    new = [(rows[i], rows[i + 1], rows[i + 2]) for i in range(0, len(rows), 3)]
    for ext, pairs in (("index", list(keep) + [(o, p) for o, p, _ in new]),
                       ("timeindex", list(tkeep) + [(t, o) for o, _, t in new])):
        write_atomically(s.path(ext), b"".join(_PAIR.pack(a, b) for a, b in pairs), sync_dir=False)


def _first_pos_at(path: str, file_pos: int):
    with open(path, "rb") as f:
        f.seek(file_pos)
        head = f.read(8)
    return None if len(head) < 8 else int.from_bytes(head, "little") ^ XOR


def check_partition(path: str) -> list[str]:
    """Offline verification of every segment of a partition; returns problems found."""
    problems = []
    plog = PartitionLog(path)
    expect = None
    for s in plog.segments:
        out, _, size = _scan(s.path(), s.base_pos, 0, s.base_offset if expect is None else expect, False)
        if out.end_pos - s.base_pos < size:
            why = {1: "torn frame at the end", 2: "bad frame header", 3: "CRC or body check failed",
                   4: "offset discontinuity"}.get(out.stop_reason, "unreadable")
            problems.append(f"{s.path()}: {why} at file position {out.end_pos - s.base_pos} "
                            f"({size - (out.end_pos - s.base_pos)} bytes after it)")
        expect = out.end_offset
    return problems


def remove_topic_dir(data_dir: str, topic: str):
    shutil.rmtree(topic_dir(data_dir, topic), ignore_errors=True)
