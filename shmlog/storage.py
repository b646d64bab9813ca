"""storage.py — a partition's log on disk: segment files and their indexes.

Owns: the layout <data_dir>/topics/<topic>/<partition>/<base-offset>.log
(+ .index: (offset, position) int64 pairs; + .timeindex: (T, offset) pairs,
T the largest timestamp of the segment's records below offset, monotonic;
+ .lost after a loss the persister recorded), appending runs of frames
(persister only), rolling, recovery (the chain of segments, their indexes,
the last segment's tail), retention by size and by a segment's largest
timestamp, positioned reads, time lookups and the offline check.
Must never: re-encode a frame (the file bytes are the ring bytes), trust an
index row it has not checked against the frame it names, or skip corruption
silently: a torn tail is truncated and reported, a bad frame followed by
good ones and a hole in the segment chain are refused with file and position.

Quarantine (issue 11). Invariant: damage that recovery finds in ONE
partition's files (CorruptSegment: a bad frame with intact ones after it, or a
rolled segment that ends early; SegmentGap: a hole in the chain no .lost file
records) takes that partition offline and nothing else: recover_partition
(quarantine=True, the restore in instance.py and the persister's start)
reports it in rep.damage instead of raising, and the restorer writes the
damage's kind, position and first offset into the partition's ring header
(offline, offline_pos, offline_offset: csrc/shmlog.h) before the topic is
published, so every process sees it. An offline partition: its files are
never written below or at the damage (no truncation, no index rewrite of the
damaged segment; the persister does not open it, so no copy and no retention
either — a torn tail of the LAST segment is still truncated, as any crash
recovery does, when the damage is in a rolled segment); readers get every
record before the damage and CorruptRecord naming the file and position when
they reach it (the Kafka listener: CORRUPT_MESSAGE), and may seek past it to
the intact segments after it; appends get SHM_E_OFFLINE (PartitionOffline,
Kafka's KAFKA_STORAGE_ERROR). Writes are refused rather than appended after
the damage because the only thing that makes the offset chain after it
trustworthy is the chain itself, and a damaged last segment leaves its end
unknown; refusing in every case keeps one rule, keeps retention from deleting
the evidence, and costs nothing that is committed. The ring starts at the
log's proven end (the last segment's end; the damage itself when the damage
is in the last segment), so offsets are never reused when the partition
comes back. It comes back when a restore (a new control segment: reboot, or
`shmlog down --purge` + `up`) finds the files intact: the operator restored
the file, or `shmlog check --repair` repaired what loses nothing.
No committed record is lost by quarantine: it deletes and truncates nothing
that recovery did not already (only a torn tail of the last segment), and a
record acknowledged durably is in the files, where it stays. Death: the
restore runs under the control lock, rings are made and marked offline
before the table entry is published; a restorer killed mid-way leaves a
CREATING entry (dropped by the next restorer, which decides again from the
same untouched files) or a published one (offline flag already set), so a
kill -9 at any step ends in the same quarantine. A persister that finds
damage at its start (the files were damaged while the instance ran) marks
the live ring offline itself; records producers had put in the ring and it
had not copied stay readable there until a reboot, as any acks=1 record the
persister has not copied (README, Reliability).

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

import numpy as np

from . import errors, safefile
from ._native import ffi, lib

log = logging.getLogger("shmlog.storage")

INDEX_EVERY = 4096                 # one index row per this many bytes of log
SEGMENT_FILES = ("log", "index", "timeindex", "lost")   # .lost: a loss the persister recorded (see roll)
CHUNK = 8 << 20                    # bytes read at a time
_PAIR = struct.Struct("<qq")
XOR = lib.SHM_COMMIT_XOR


# ------------------------------------------------------------ directory layout (topic generations)
#
# <data_dir>/topics/<topic>@<id>/<partition>/  one directory per partition of
# one LIFE of a topic: <id> is the catalog's 64-bit topic id in 16 hex digits
# ('@' is not a topic-name character, so the split is unambiguous), and the
# directory's partition.metadata repeats it. A topic deleted and re-created
# gets a new id, hence new directories: nothing written for one life (a late
# persister, a reader) can land in or be read from another's. Deletion
# renames the topic directory into <data_dir>/trash/ (one atomic rename) and
# removes it there, so a half-removed directory is never under topics/.
# Files that are not ours (a stray file, an editor's backup) are skipped with
# a warning wherever directories are listed; they never break anything.

PARTITION_METADATA = "partition.metadata"


def topic_dir(data_dir: str, topic: str, topic_id: int) -> str:
    return os.path.join(data_dir, "topics", f"{topic}@{topic_id:016x}")


def partition_dir(data_dir: str, topic: str, partition: int, topic_id: int) -> str:
    return os.path.join(topic_dir(data_dir, topic, topic_id), str(partition))


def _metadata_text(topic: str, topic_id: int, partition: int) -> bytes:
    return f"version: 0\ntopic: {topic}\ntopic_id: {topic_id:016x}\npartition: {partition}\n".encode()


def make_partition_dir(data_dir: str, topic: str, partition: int, topic_id: int) -> str:
    """Creates (if missing) one partition's directory with its partition.metadata,
    durably (the directory entries fsynced). Never empties an existing one."""
    d = partition_dir(data_dir, topic, partition, topic_id)
    safefile.makedirs(d)
    meta = os.path.join(d, PARTITION_METADATA)
    if not os.path.exists(meta):
        write_atomically(meta, _metadata_text(topic, topic_id, partition))
        fsync_dir(os.path.dirname(d))
        fsync_dir(os.path.dirname(os.path.dirname(d)))
    return d


def check_partition_metadata(dir_fd: int, path: str, topic_id: int):
    """Raises CorruptMetadata unless the directory open as dir_fd is topic_id's
    (a directory without the file, written before it existed, passes)."""
    try:
        fd = os.open(PARTITION_METADATA, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        text = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "topic_id" and v.strip() == f"{topic_id:016x}":
            return
    raise errors.CorruptMetadata(
        f"{path}/{PARTITION_METADATA} does not name topic id {topic_id:016x}: this directory belongs to "
        "another life of the topic; refusing to write into it (move it away)")


def parse_topic_dir(entry: str):
    """(topic, topic_id) of a topics/ entry name, or None when it is not one."""
    name, at, tid = entry.rpartition("@")
    if not at or len(tid) != 16 or not all(c in "0123456789abcdef" for c in tid) or not name:
        return None
    return name, int(tid, 16)


def topic_dirs(data_dir: str):
    """[(topic, topic_id, path)] of every topic directory under topics/ (legacy
    `topics/<topic>` directories, of data dirs made before topic ids, have id
    None); anything else is skipped with a warning."""
    root = os.path.join(data_dir, "topics")
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        p = os.path.join(root, n)
        if not os.path.isdir(p) or os.path.islink(p):
            log.warning("%s: not a topic directory; ignored", p)
            continue
        parsed = parse_topic_dir(n)
        if parsed is None and "@" in n:
            log.warning("%s: not a topic directory name (<topic>@<16 hex digits>); ignored", p)
            continue
        out.append((*parsed, p) if parsed else (n, None, p))
    return out


def partition_dirs(topic_path: str):
    """[(partition, path)] of a topic directory, in partition order; stray
    entries (files, names that are not numbers) are skipped with a warning."""
    out = []
    for n in os.listdir(topic_path):
        p = os.path.join(topic_path, n)
        if not n.isdigit() or not os.path.isdir(p) or os.path.islink(p):
            log.warning("%s: not a partition directory; ignored", p)
            continue
        out.append((int(n), p))
    return sorted(out)


def adopt_legacy_dir(data_dir: str, topic: str, topic_id: int):
    """A data dir from before topic ids keeps topics/<topic>/: it becomes
    topics/<topic>@<id>/ (one rename) once the catalog holds that id."""
    old = os.path.join(data_dir, "topics", topic)
    new = topic_dir(data_dir, topic, topic_id)
    if os.path.isdir(old) and not os.path.islink(old) and not os.path.exists(new):
        os.rename(old, new)
        fsync_dir(os.path.dirname(new))
        log.warning("adopted %s as %s (topic ids came after it was made)", old, new)


def discard_topic_dir(data_dir: str, topic: str, topic_id: int):
    """Deletion of one life's directory (only under a durable "deleting"
    intent): renamed into trash/ atomically, then removed there."""
    src = topic_dir(data_dir, topic, topic_id)
    trash = os.path.join(data_dir, "trash")
    if os.path.isdir(src):
        safefile.makedirs(trash)
        os.rename(src, os.path.join(trash, os.path.basename(src)))
        fsync_dir(os.path.dirname(src))
        fsync_dir(trash)
    empty_trash(data_dir)


def empty_trash(data_dir: str):
    """trash/ holds only directories a durable delete moved there."""
    trash = os.path.join(data_dir, "trash")
    try:
        names = os.listdir(trash)
    except FileNotFoundError:
        return
    for n in names:
        p = os.path.join(trash, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


fsync_dir = safefile.fsync_dir


def write_atomically(path: str, data: bytes, sync_dir: bool = True):
    """Replaces path with data: a crash leaves the old file or the new one,
    never a mix (safefile.replace: an unpredictable tmp name, O_EXCL|O_NOFOLLOW,
    fsync, rename, fsync the directory)."""
    safefile.replace(path, data, sync_dir=sync_dir)


class CorruptSegment(errors.CorruptRecord):
    """A segment file holds a damaged frame followed by good ones (or a rolled
    segment ends early). pos, offset: where the damage is and the first offset
    it affects (None when not known)."""

    def __init__(self, path, file_pos, why, pos=None, offset=None, followed=True):
        self.path, self.file_pos, self.pos, self.offset = path, file_pos, pos, offset
        after = "with intact frames after it" if followed else "in a segment that is not the last one"
        super().__init__(f"{path}: damaged frame at file position {file_pos} ({why}) {after}; refusing "
                         "to guess. Inspect with `shmlog check`, then restore the file or truncate it "
                         "at that position yourself.")


class SegmentGap(errors.CorruptRecord):
    """The segment chain has a hole: a segment file does not start where the
    one before it ends (a file was deleted or lost). Kafka refuses such a log;
    so do recovery and every reader that reaches the hole (never a stall)."""

    def __init__(self, before, after, end_offset=None):
        self.before, self.after = before.path(), after.path()
        end_offset = _segment_end(before)[0].end_offset if end_offset is None else end_offset
        self.missing = (end_offset, after.base_offset)
        self.path, self.pos, self.offset = self.before, before.end_pos, end_offset
        self.recorded = after.lost() == (before.end_pos, end_offset)
        why = ("records the persister found lost and recorded in " + after.path("lost")
               if self.recorded else "segment files missing")
        super().__init__(
            f"{why}: offsets {end_offset}..{after.base_offset - 1} (positions "
            f"{before.end_pos}..{after.base_pos - 1}) between {self.before} and {self.after}. "
            "Restore the missing file, or seek() past the hole; `shmlog check` lists every hole.")


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
            end = self.base_pos + os.path.getsize(self.path())    # after the rows: they name written frames
        except FileNotFoundError:
            end = self.end_pos
        if not (np.all(np.diff(r[:, 1]) > 0) and np.all(np.diff(r[:, 0]) >= 0) and
                r[0, 0] >= self.base_offset and r[0, 1] >= self.base_pos and r[-1, 1] < end):
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
        return _PAIR.unpack(data) if len(data) == 16 else None

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
        self.segments: list[Segment] = []
        self.warned = set()
        self.refresh()

    def refresh(self):
        segs = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if segment_base(n) is None:
                if not n.endswith((".index", ".timeindex", ".lost")) and n != PARTITION_METADATA and ".tmp." not in n:
                    log.warning("%s: not a segment file; ignored", os.path.join(self.dir, n))
                continue
            p = os.path.join(self.dir, n)
            try:
                st = os.stat(p)
                base_pos = _first_pos(p)
            except FileNotFoundError:
                continue                              # deleted by retention meanwhile
            if base_pos is None:
                idx = Segment(self.dir, int(n[:20]), 0, 0, st.st_mtime).rows("index")
                base_pos = int(idx[0, 1]) if len(idx) else None
            if base_pos is None:
                continue
            segs.append(Segment(self.dir, int(n[:20]), base_pos, st.st_size, st.st_mtime))
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

    def torn(self, seg: Segment, pos: int):
        """A read at pos found a frame that runs past the end of seg's file: being
        written when seg is the last segment (None: wait), else damage that never
        completes (the CorruptRecord to raise: a rolled segment that ends early)."""
        if seg is self.segments[-1]:
            return None
        return errors.CorruptRecord(f"{seg.path()}: torn frame at file position {pos - seg.base_pos} "
                                    "in a rolled segment (the file ends inside it); run `shmlog check`")

    def _warn(self, seg, what):
        if (seg.path(), what) not in self.warned:
            self.warned.add((seg.path(), what))
            log.warning("%s: %s; reading from the segment start instead (`shmlog check --repair` "
                        "rebuilds it)", seg.path("index"), what)

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
                raise errors.CorruptRecord(f"{seg.path()}: damaged frame at file position "
                                           f"{cur.pos - seg.base_pos} while seeking offset {offset}")
            if cur.pos >= seg.end_pos:               # offset is past this segment
                nxt = self.segment_for_pos(cur.pos)
                if nxt is None or nxt is seg:
                    cur.next_offset = offset
                    return True
                seg, from_row = nxt, False
            elif cur.pos == before and n == cap:     # a frame larger than the buffer
                cap *= 2
                buf = ffi.new("uint8_t[]", cap)
            elif cur.pos == before:                  # a frame that ends past the file's end
                if seg is not self.segments[-1]:
                    raise errors.CorruptRecord(f"{seg.path()}: torn frame at file position "
                                               f"{cur.pos - seg.base_pos} while seeking offset {offset}")
                cur.next_offset = offset             # being written: the reader waits there
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
                return s.base_offset                 # damaged: scan this segment whole
            below = int(np.searchsorted(t[:, 0], timestamp_ms, "left"))
            final = i + 1 < len(segs) and len(t) and t[-1, 1] == segs[i + 1].base_offset
            if final and below == len(t):
                continue
            return int(t[below - 1, 1]) if below else s.base_offset
        return None


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
        self.dfd = safefile.open_dir(path, fsyncable=True)      # never through a planted symlink
        try:
            if topic_id is not None:
                check_partition_metadata(self.dfd, path, topic_id)
        except BaseException:
            os.close(self.dfd)
            raise
        self.plog = PartitionLog(path)
        self.segment_bytes, self.segment_ms = segment_bytes, segment_ms
        self.fd = self.ifd = self.tfd = None
        self.active: Segment | None = None
        self.active_since = time.monotonic()
        self.ix = ffi.new("struct shm_index_state *")          # committed: what the files hold
        self.ix_scan = ffi.new("struct shm_index_state *")     # a copy run's, committed by append
        self.ix.max_timestamp = -1
        self.end_offset = None
        self.dirty = False

    def _open(self, seg: Segment):
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
        return a is None or a.size >= self.segment_bytes or \
            (a.size > 0 and (time.monotonic() - self.active_since) * 1000 >= self.segment_ms)

    def roll(self, base_pos: int, base_offset: int, lost_from=None):
        """Starts the segment at (base_pos, base_offset). lost_from: (position,
        offset) where the files end when the records between are gone (the ring
        no longer holds them): written to <base>.lost before the segment exists,
        so recovery knows the hole in the chain is a loss already reported, not
        a file deleted since; readers still get SegmentGap there."""
        if lost_from is not None:
            a = self.active
            empty = a is not None and a.size == 0
            lost_from = (a.lost() if empty else None) or lost_from   # lapped again before a copy: one hole
            write_atomically(Segment(self.plog.dir, base_offset, base_pos, 0, 0).path("lost"),
                             _PAIR.pack(*lost_from))
            if empty and a.base_offset != base_offset:
                self._drop_active()         # a crash before this leaves an empty trailing segment: recovery drops it
        if self.active is not None and self.active.base_offset == base_offset:
            return                                   # nothing was written since the last roll
        if self.active is not None and self.active.size and self.end_offset is not None:
            os.write(self.tfd, _PAIR.pack(self.ix.max_timestamp, self.end_offset))   # final row
            self.dirty = True
        self.fsync()                                 # fsynced_pos may pass the old segment only once it is synced
        seg = Segment(self.plog.dir, base_offset, base_pos, 0, time.time())
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
                    done[k] += os.write(fd, buf[done[k]:])
        except OSError:
            for fd, n in zip(fds, done):
                if n:           # never leave a torn frame or row behind, nor a run the retry writes again
                    os.ftruncate(fd, os.fstat(fd).st_size - n)
            raise
        lib.shm_start_writeback(self.fd, a.size, done[0])   # writeback now, in the background
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

    def enforce_retention(self, retention_ms, retention_bytes) -> int:
        """Deletes whole non-active segments past the limits; returns how many.
        By time, a segment goes once its largest record timestamp (its final
        time-index row, as Kafka's largestTimestamp) is older than retention_ms."""
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
        self.damage: Damage | None = None      # quarantine=True: the first damage found

    def __repr__(self):
        return (f"RecoveryReport({self.path!r}, end_offset={self.end_offset}, end_pos={self.end_pos}, "
                f"truncated_bytes={self.truncated_bytes}, rebuilt_index={self.rebuilt_index}, "
                f"damage={self.damage})")


class Damage:
    """Where a quarantined partition's files are damaged: kind (lib.SHM_OFFLINE_FRAME
    or SHM_OFFLINE_GAP), pos (the position where the readable log stops), offset
    (the first offset the damage affects), and the error that describes it."""
    __slots__ = ("kind", "pos", "offset", "error")

    def __init__(self, e: errors.CorruptRecord):
        self.kind = lib.SHM_OFFLINE_GAP if isinstance(e, SegmentGap) else lib.SHM_OFFLINE_FRAME
        self.pos, self.offset, self.error = e.pos, e.offset, e

    def __repr__(self):
        return f"Damage(pos={self.pos}, offset={self.offset}: {self.error})"


_WHY = {lib.SHM_SCAN_TORN: "torn frame at the end", lib.SHM_SCAN_BAD_HEADER: "bad frame header",
        lib.SHM_SCAN_BAD_BODY: "CRC or body check failed", lib.SHM_SCAN_OFFSET_JUMP: "offset discontinuity"}


def _scan(path: str, start_pos: int, file_from: int, expect_offset: int, every, max_ts: int = -1,
          on_rows=None):
    """Validates frames of path from file position file_from (position start_pos,
    offset expect_offset), with max_ts the segment's largest timestamp below it.
    Index rows every `every` bytes (1: every frame; None: none) go to on_rows as
    (n, 3) arrays, else are returned concatenated. Returns (scan_out, rows, size);
    memory stays within two chunks whatever the file holds."""
    out = ffi.new("struct shm_scan_out *")
    ix = ffi.new("struct shm_index_state *", {"next_pos": start_pos if every else 1 << 63,
                                              "max_timestamp": max_ts})
    chunks = []
    size = os.path.getsize(path)
    buf_cap = min(CHUNK, max(size - file_from + 7, 64) & ~7)       # small segments, small buffers
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
                buf_cap *= 2                          # a frame larger than the chunk
                buf = ffi.new("uint8_t[]", buf_cap)
                maxrows = buf_cap // max(step, 32) + 2
                rows = ffi.new("int64_t[]", maxrows * lib.SHM_INDEX_FIELDS)
                continue
            if out.stop_reason == lib.SHM_SCAN_TORN and fpos < size and consumed > 0:
                continue                              # chunk boundary, not the file's end
            if out.stop_reason == lib.SHM_SCAN_END and fpos < size:
                continue
            allrows = np.concatenate(chunks) if chunks else np.empty((0, 3), np.int64)
            return out, allrows, size


def _good_after(path: str, bad_pos: int, base_pos: int):
    """(file position, base position) of an intact frame after the damaged one
    at bad_pos (a frame that names its position and passes its checks), or
    None. Every 8-aligned position to the end is a candidate, read a chunk at a
    time: a damaged length field must not make recovery take intact frames for
    a torn tail. The base position (from the first frame's commit word) may be
    the damage itself: bases that two or more later frame headers agree on are
    tried as well."""
    size = os.path.getsize(path)
    fpos0 = bad_pos - base_pos + 8
    bases = None
    with open(path, "rb") as f:
        while fpos0 < size:
            f.seek(fpos0)
            chunk = f.read(CHUNK)
            words = np.frombuffer(chunk, "<u8", len(chunk) // 8)
            implied = (words ^ np.uint64(XOR)) - (np.arange(len(words), dtype=np.uint64) * np.uint64(8) +
                                                   np.uint64(fpos0))
            if bases is None:
                vals, counts = np.unique(implied, return_counts=True)
                bases = [base_pos] + [int(v) for v in vals[counts >= 2] if int(v) != base_pos][:8]
            for b in bases:
                for k in np.nonzero(implied == np.uint64(b))[0][:4096]:
                    fpos = fpos0 + int(k) * 8
                    if _frame_ok(f, fpos, size):
                        return fpos, b
            fpos0 += len(chunk)
    return None


def _frame_ok(f, fpos: int, size: int) -> bool:
    """Does the frame header at file position fpos describe a whole frame that passes its checks?"""
    f.seek(fpos)
    head = f.read(16)
    length, kind = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:14], "little")
    if length < 16 or fpos + length > size or kind not in (lib.SHM_FRAME_DATA, lib.SHM_FRAME_PAD,
                                                            lib.SHM_FRAME_GAP):
        return False
    f.seek(fpos)
    frame = f.read(length)
    return kind != lib.SHM_FRAME_DATA or lib.shm_batch_validate(frame[16:], length - 16) == lib.SHM_OK


def _start_row(s: Segment):
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


def _segment_end(s: Segment, rebuild=False):
    """Scans a segment from its start row to its end: (scan_out, index rows from
    the scan, start (pos, offset, max_ts, row)). A start row the log contradicts
    (its frame does not name it or carries another offset) is dropped for the
    segment start: the index is damaged, not the log."""
    start = (s.base_pos, s.base_offset, -1, -1) if rebuild else _start_row(s)
    while True:
        pos, off, mts, row = start
        out, rows, size = _scan(s.path(), pos, pos - s.base_pos, off, INDEX_EVERY, mts)
        stale_row = out.stop_reason in (lib.SHM_SCAN_TORN, lib.SHM_SCAN_BAD_HEADER, lib.SHM_SCAN_OFFSET_JUMP)
        if row >= 0 and out.frames == 0 and out.end_pos == pos and stale_row:
            start = (s.base_pos, s.base_offset, -1, -1)
            continue
        return out, rows, start


def _check_end(s: Segment, out, size):
    """Raises CorruptSegment when the scan stopped before the end of the file
    and an intact frame follows the damage; returns the good length."""
    good_end = out.end_pos - s.base_pos
    found = _good_after(s.path(), out.end_pos, s.base_pos) if good_end < size else None
    if found is not None and found[1] != s.base_pos:
        raise CorruptSegment(s.path(), 0, f"the first frame names position {s.base_pos}, the frames "
                                          f"after it say the segment starts at {found[1]}",
                             s.base_pos, s.base_offset)
    if found is not None:
        raise CorruptSegment(s.path(), good_end, _WHY.get(out.stop_reason, "unreadable"),
                             out.end_pos, out.end_offset)
    return good_end


def _recover_rolled(s: Segment, nxt: Segment, repair: bool):
    """One rolled segment: it must scan to its end and end where nxt starts (or
    where nxt's .lost says the log ended); indexes rebuilt when damaged. Raises
    CorruptSegment or SegmentGap, having written nothing for s."""
    damaged = s.index_rows() is None or s.time_rows() is None or not len(s.rows("index"))
    out, rows, start = _segment_end(s, rebuild=damaged)
    if out.end_pos != s.end_pos:
        _check_end(s, out, s.size)
        raise CorruptSegment(s.path(), out.end_pos - s.base_pos,
                             f"{_WHY.get(out.stop_reason, 'unreadable')} in a rolled segment",
                             out.end_pos, out.end_offset, followed=False)
    if (out.end_pos != nxt.base_pos or out.end_offset != nxt.base_offset) and \
            nxt.lost() != (out.end_pos, out.end_offset):
        raise SegmentGap(s, nxt, out.end_offset)
    t = s.rows("timeindex")
    complete = len(t) and t[-1, 0] == out.max_timestamp and t[-1, 1] == out.end_offset
    if repair and (damaged or start[3] < 0 or not complete):
        _write_indexes(s, start, rows, out)
        log.warning("%s: rebuilt a missing, damaged or incomplete index", s.path())


def recover_partition(path: str, repair: bool = True, quarantine: bool = False) -> RecoveryReport:
    """Checks the segment chain (each rolled segment ends where the next starts:
    no hole; its indexes plausible, rebuilt when not, its final time-index row
    present), validates the tail of the last segment, truncates a torn tail
    (repair=True), rewrites its indexes, and returns where the log ends.
    Raises CorruptSegment for damage followed by intact frames and SegmentGap
    for a hole in the chain (both name the files and positions).

    quarantine=True (the restore at instance start, the persister's start):
    that damage is not raised but reported (rep.damage, the first one) and the
    walk goes on, so rep.end_* is still where the log ends (the last segment
    scanned and its torn tail repaired as always) when the damage is in a
    rolled segment, or where the readable prefix ends when it is in the last
    one. Nothing of a damaged segment is written (neither its log nor its
    indexes); the caller takes the partition offline (see instance.py)."""
    rep = RecoveryReport(path)
    plog = PartitionLog(path)
    segs = plog.segments
    while segs and segs[-1].size == 0 and len(segs) > 1:          # empty trailing segment
        s = segs.pop()
        if repair:
            for ext in SEGMENT_FILES:
                try:
                    os.unlink(s.path(ext))
                except FileNotFoundError:
                    pass
    if not segs:
        bases = sorted(b for b in (segment_base(n) for n in (os.listdir(path) if os.path.isdir(path) else []))
                       if b is not None)
        rep.end_offset = bases[-1] if bases else 0
        return rep
    for s, nxt in zip(segs, segs[1:]):
        try:
            _recover_rolled(s, nxt, repair)
        except (CorruptSegment, SegmentGap) as e:
            if not quarantine:
                raise
            rep.damage = rep.damage or Damage(e)
    last = segs[-1]
    out, rows, start = _segment_end(last)
    size = last.size
    try:
        good_end = _check_end(last, out, size)
    except CorruptSegment as e:
        if not quarantine:
            raise
        rep.damage = rep.damage or Damage(e)
        rep.end_pos, rep.end_offset = out.end_pos, out.end_offset      # what follows is not proven
        return rep
    if good_end < size:
        rep.truncated_at, rep.truncated_bytes = good_end, size - good_end
        if repair:
            with os.fdopen(safefile.open_write_fd(last.path()), "wb") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            log.warning("%s: truncated a torn tail of %d bytes at file position %d",
                        last.path(), size - good_end, good_end)
    if repair:
        _write_indexes(last, start, rows, out)
        rep.rebuilt_index = True
    rep.end_pos, rep.end_offset = out.end_pos, out.end_offset
    return rep


def describe_offline(path: str, kind: int, pos: int, offset: int) -> str:
    """The message of a quarantined partition (its ring's offline fields):
    the file and file position of the damage, read from the directory now."""
    plog = PartitionLog(path)
    where = f"{path} at position {pos}"
    for i, s in enumerate(plog.segments):
        if s.base_pos <= pos < s.end_pos or (pos == s.end_pos and kind == lib.SHM_OFFLINE_GAP):
            where = f"{s.path()} at file position {pos - s.base_pos}"
            if kind == lib.SHM_OFFLINE_GAP and i + 1 < len(plog.segments):
                where += f" (the next segment, {plog.segments[i + 1].path()}, does not start there)"
            break
    what = "a hole in the segment chain" if kind == lib.SHM_OFFLINE_GAP else "a damaged frame"
    return (f"partition offline (quarantined at restore): {what} in {where}, offsets from {offset}; "
            "records before it are served, writes are refused. Restore the file (see `shmlog check`; "
            "`shmlog check --repair` fixes what loses nothing), then restart the instance with its "
            "shared memory made anew (`shmlog down --purge`, `shmlog up`): the restore decides again")


def _write_indexes(s: Segment, start, rows, out):
    """Rewrites both index files (write, fsync, rename): the rows below the scan's
    start, the scan's rows (offset, position, max timestamp below), and the final
    time row (segment max, end offset)."""
    pos, off = start[0], start[1]
    idx, t = s.index_rows(), s.time_rows()
    keep = idx[idx[:, 1] < pos] if idx is not None and start[3] >= 0 else np.empty((0, 2), np.int64)
    tkeep = t[t[:, 1] < off] if t is not None and start[3] >= 0 else np.empty((0, 2), np.int64)
    final = np.array([[out.max_timestamp, out.end_offset]], np.int64)
    write_atomically(s.path("index"), keep.tobytes() + rows[:, [0, 1]].tobytes(), sync_dir=False)
    write_atomically(s.path("timeindex"), tkeep.tobytes() + rows[:, [2, 0]].tobytes() + final.tobytes(),
                     sync_dir=False)


def rebuild_indexes(s: Segment):
    """Both index files of s anew from its frames (`shmlog check --repair`)."""
    out, rows, start = _segment_end(s, rebuild=True)
    _write_indexes(s, start, rows, out)


# ------------------------------------------------------------ offline check

class _IndexCheck:
    """Verifies every row of a segment's .index and .timeindex against the frames
    of one full scan, chunk by chunk (rows of every frame: offset, position,
    max timestamp below it)."""

    def __init__(self, s: Segment):
        self.s = s
        self.problems = []
        self.ix, self.t = s.rows("index"), s.rows("timeindex")
        self.ix_ok = np.zeros(len(self.ix), bool)
        self.t_ok = np.zeros(len(self.t), bool)
        for ext, _a in (("index", self.ix), ("timeindex", self.t)):
            try:
                n = os.path.getsize(s.path(ext))
            except FileNotFoundError:
                self.problems.append(f"{s.path(ext)}: missing")
                continue
            if n % 16:
                self.problems.append(f"{s.path(ext)}: {n} bytes, not a whole number of rows "
                                     f"(a torn row at file position {n - n % 16})")

    def frames(self, r):
        """One chunk of every-frame rows (first offset, position, max ts below)."""
        if len(self.ix):
            sel = (self.ix[:, 1] >= r[0, 1]) & (self.ix[:, 1] <= r[-1, 1])
            i = np.minimum(np.searchsorted(r[:, 1], self.ix[sel, 1]), len(r) - 1)
            self.ix_ok[sel] = (r[i, 1] == self.ix[sel, 1]) & (r[i, 0] == self.ix[sel, 0])
        if len(self.t):
            sel = (self.t[:, 1] >= r[0, 0]) & (self.t[:, 1] <= r[-1, 0])
            i = np.minimum(np.searchsorted(r[:, 0], self.t[sel, 1]), len(r) - 1)
            self.t_ok[sel] = (r[i, 0] == self.t[sel, 1]) & (r[i, 2] == self.t[sel, 0])

    def finish(self, out, final: bool):
        """final: the segment was rolled, so its time index must end with (max, end)."""
        if len(self.t):
            end = self.t[:, 1] == out.end_offset
            self.t_ok[end] = self.t[end, 0] == out.max_timestamp
        for ext, a, ok, what in (("index", self.ix, self.ix_ok, "does not name a frame start with that offset"),
                                 ("timeindex", self.t, self.t_ok,
                                  "is not the largest timestamp below that offset")):
            bad = np.nonzero(~ok)[0]
            for k in bad[:5]:
                self.problems.append(f"{self.s.path(ext)}: row {k} (file position {k * 16}) "
                                     f"{tuple(int(x) for x in a[k])} {what}")
            if len(bad) > 5:
                self.problems.append(f"{self.s.path(ext)}: {len(bad) - 5} more bad rows")
            if len(a) > 1 and not (np.all(np.diff(a[:, 1 if ext == 'index' else 0]) >= 0)):
                k = int(np.nonzero(np.diff(a[:, 1 if ext == 'index' else 0]) < 0)[0][0]) + 1
                self.problems.append(f"{self.s.path(ext)}: row {k} (file position {k * 16}) is out of order")
        if final and self.s.size and not (len(self.t) and self.t[-1, 1] == out.end_offset):
            self.problems.append(f"{self.s.path('timeindex')}: no final row (segment max timestamp "
                                 f"{out.max_timestamp}, end offset {out.end_offset}); retention "
                                 "would fall back to the file time")
        return self.problems


def check_partition(path: str, repair: bool = False) -> tuple[list[str], list[str]]:
    """Offline verification of every segment of a partition: frames, the chain
    (no hole), every index and time-index row. Returns (problems, repaired);
    repair=True rebuilds the indexes of segments whose log is intact."""
    problems, repaired = [], []
    plog = PartitionLog(path)
    prev = None
    segs = plog.segments
    for i, s in enumerate(segs):
        if prev is not None and (prev[1] != s.base_pos or prev[2] != s.base_offset):
            problems.append(str(SegmentGap(prev[0], s, prev[2])))
        chk = _IndexCheck(s)
        out, _, size = _scan(s.path(), s.base_pos, 0, s.base_offset, 1, on_rows=chk.frames)
        log_ok = out.end_pos - s.base_pos == size
        if not log_ok:
            problems.append(f"{s.path()}: {_WHY.get(out.stop_reason, 'unreadable')} at file position "
                            f"{out.end_pos - s.base_pos} ({size - (out.end_pos - s.base_pos)} bytes after it)")
        bad_index = chk.finish(out, final=i + 1 < len(segs))
        if bad_index and repair and log_ok:
            rebuild_indexes(s)
            repaired.append(f"rebuilt the indexes of {s.path()}")
        else:
            problems += bad_index
        prev = (s, out.end_pos, out.end_offset)
    return problems, repaired



