"""storage/recovery.py — recovering a partition's files after a crash, and
quarantine.

Owns: the layout <data_dir>/topics/<topic>/<partition>/<base-offset>.log
(+ .index: (offset, position) int64 pairs; + .timeindex: (T, offset) pairs,
T the largest timestamp of the segment's records below offset, monotonic;
+ .lost after a loss the persister recorded), appending runs of frames
(persister only), rolling, recovery (the chain of segments, their indexes,
the last segment's tail), retention by size and by a segment's largest
timestamp, positioned reads, time lookups and the offline check; the
partition's cleaner lock and finishing a compaction swap a crash interrupted
(storage/compact.py's essay: its .cleaned files discarded, indexes rebuilt).
Must never: re-encode a frame (the file bytes are the ring bytes), trust an
index row it has not checked against the frame it names, or skip corruption
silently: a torn tail is truncated and reported, a bad frame followed by
good ones and a hole in the segment chain are refused with file and position.

Quarantine (issue 11). Invariant: damage that recovery finds in ONE
partition's files (CorruptSegment: a bad frame with intact ones after it, or a
rolled segment that ends early; SegmentGap: a hole in the chain no .lost file
records) takes that partition offline and nothing else: recover_partition
(quarantine=True, the restore in control/plane.py and the persister's start)
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

import fcntl
import logging
import os
import time

import numpy as np

from .. import errors, safefile
from .._native import lib
from .layout import write_atomically
from .segment import (
    CHUNK,
    SCAN_STOP_REASONS,
    SEGMENT_FILES,
    XOR,
    CorruptSegment,
    PartitionLog,
    SegmentFile,
    SegmentGap,
    scan_frames,
    continues,
    segment_base,
    segment_end,
)

logger = logging.getLogger("shmlog.storage")

CLEANED = ".cleaned"  # suffix of a cleaned segment's files before its swap (storage/compact.py)

# ------------------------------------------------------------ recovery


class RecoveryReport:
    def __init__(self, path):
        self.path = path
        self.truncated_bytes = 0
        self.truncated_at = None
        self.rebuilt_index = False
        self.end_pos = 0
        self.end_offset = 0
        self.damage: Damage | None = None  # quarantine=True: the first damage found

    def __repr__(self):
        return (
            f"RecoveryReport({self.path!r}, end_offset={self.end_offset}, end_pos={self.end_pos}, "
            f"truncated_bytes={self.truncated_bytes}, rebuilt_index={self.rebuilt_index}, "
            f"damage={self.damage})"
        )


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
            implied = (words ^ np.uint64(XOR)) - (
                np.arange(len(words), dtype=np.uint64) * np.uint64(8) + np.uint64(fpos0)
            )
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
    if length < 16 or fpos + length > size or kind not in (lib.SHM_FRAME_DATA, lib.SHM_FRAME_PAD, lib.SHM_FRAME_GAP):
        return False
    f.seek(fpos)
    frame = f.read(length)
    return kind != lib.SHM_FRAME_DATA or lib.shm_batch_validate(frame[16:], length - 16) == lib.SHM_OK


def _check_end(s: SegmentFile, out, size):
    """Raises CorruptSegment when the scan stopped before the end of the file
    and an intact frame follows the damage; returns the good length."""
    good_end = out.end_pos - s.base_pos
    found = _good_after(s.path(), out.end_pos, s.base_pos) if good_end < size else None
    if found is not None and found[1] != s.base_pos:
        raise CorruptSegment(
            s.path(),
            0,
            f"the first frame names position {s.base_pos}, the frames after it say the segment starts at {found[1]}",
            s.base_pos,
            s.base_offset,
        )
    if found is not None:
        raise CorruptSegment(
            s.path(), good_end, SCAN_STOP_REASONS.get(out.stop_reason, "unreadable"), out.end_pos, out.end_offset
        )
    return good_end


def _recover_rolled(s: SegmentFile, nxt: SegmentFile, repair: bool):
    """One rolled segment: it must scan to its end and end where nxt starts (or
    where nxt's .lost says the log ended); indexes rebuilt when damaged. Raises
    CorruptSegment or SegmentGap, having written nothing for s."""
    damaged = s.index_rows() is None or s.time_rows() is None or not len(s.rows("index"))
    out, rows, start = segment_end(s, rebuild=damaged)
    if out.end_pos != s.end_pos:
        _check_end(s, out, s.size)
        raise CorruptSegment(
            s.path(),
            out.end_pos - s.base_pos,
            f"{SCAN_STOP_REASONS.get(out.stop_reason, 'unreadable')} in a rolled segment",
            out.end_pos,
            out.end_offset,
            followed=False,
        )
    if not continues(out.end_pos, out.end_offset, nxt) and nxt.lost() != (out.end_pos, out.end_offset):
        raise SegmentGap(s, nxt, out.end_offset)
    t = s.rows("timeindex")
    complete = len(t) and t[-1, 0] == out.max_timestamp and t[-1, 1] == out.end_offset
    if repair and (damaged or start[3] < 0 or not complete):
        _write_indexes(s, start, rows, out)
        logger.warning("%s: rebuilt a missing, damaged or incomplete index", s.path())


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
    indexes); the caller takes the partition offline (see control/plane.py)."""
    rep = RecoveryReport(path)
    if repair and os.path.isdir(path):
        _finish_cleaning(path)
    plog = PartitionLog(path)
    segs = plog.segments
    while segs and segs[-1].size == 0 and len(segs) > 1:  # empty trailing segment
        s = segs.pop()
        if repair:
            for ext in SEGMENT_FILES:
                try:
                    os.unlink(s.path(ext))
                except FileNotFoundError:
                    pass
    if not segs:
        bases = sorted(
            b for b in (segment_base(n) for n in (os.listdir(path) if os.path.isdir(path) else [])) if b is not None
        )
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
    out, rows, start = segment_end(last)
    size = last.size
    try:
        good_end = _check_end(last, out, size)
    except CorruptSegment as e:
        if not quarantine:
            raise
        rep.damage = rep.damage or Damage(e)
        rep.end_pos, rep.end_offset = out.end_pos, out.end_offset  # what follows is not proven
        return rep
    if good_end < size:
        rep.truncated_at, rep.truncated_bytes = good_end, size - good_end
        if repair:
            with os.fdopen(safefile.open_write_fd(last.path()), "wb") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            logger.warning(
                "%s: truncated a torn tail of %d bytes at file position %d", last.path(), size - good_end, good_end
            )
    if repair:
        _write_indexes(last, start, rows, out)
        rep.rebuilt_index = True
    rep.end_pos, rep.end_offset = out.end_pos, out.end_offset
    return rep


def _finish_cleaning(path: str):
    """A cleaning a crash interrupted (storage/compact.py, the swap): its files
    discarded, the indexes concerned rebuilt, under the cleaner lock (a live
    cleaner finishes its swap first; one stopped holding it is waited for 10 s,
    then the leftovers stay for it: readers ignore them)."""
    if not any(is_cleaned_name(n) for n in os.listdir(path)):
        return
    with Lock(path) as lock:
        if lock.acquire(timeout=10.0):
            finish_interrupted(path)
        else:
            logger.warning("%s: a cleaner holds the partition; its leftovers stay for it", path)


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
    return (
        f"partition offline (quarantined at restore): {what} in {where}, offsets from {offset}; "
        "records before it are served, writes are refused. Restore the file (see `shmlog check`; "
        "`shmlog check --repair` fixes what loses nothing), then restart the instance with its "
        "shared memory made anew (`shmlog down --purge`, `shmlog up`): the restore decides again"
    )


def _write_indexes(s: SegmentFile, start, rows, out):
    """Rewrites both index files (write, fsync, rename): the rows below the scan's
    start, the scan's rows (offset, position, max timestamp below), and the final
    time row (segment max, end offset)."""
    pos, off = start[0], start[1]
    idx, t = s.index_rows(), s.time_rows()
    keep = idx[idx[:, 1] < pos] if idx is not None and start[3] >= 0 else np.empty((0, 2), np.int64)
    tkeep = t[t[:, 1] < off] if t is not None and start[3] >= 0 else np.empty((0, 2), np.int64)
    final = np.array([[out.max_timestamp, out.end_offset]], np.int64)
    write_atomically(s.path("index"), keep.tobytes() + rows[:, [0, 1]].tobytes(), sync_dir=False)
    write_atomically(s.path("timeindex"), tkeep.tobytes() + rows[:, [2, 0]].tobytes() + final.tobytes(), sync_dir=False)


def rebuild_indexes(s: SegmentFile):
    """Both index files of s anew from its frames (`shmlog check --repair`)."""
    out, rows, start = segment_end(s, rebuild=True)
    _write_indexes(s, start, rows, out)


# ------------------------------------------------------------ the cleaner's lock, interrupted swaps (compact.py)


class Lock:
    """The partition's cleaner lock: flock on its directory. Held by a swap, by
    retention of a compacted topic and by recovery's handling of leftovers."""

    def __init__(self, path: str):
        self.fd: int | None = safefile.open_dir(path, fsyncable=True)

    def acquire(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self.fd is not None, "the lock was closed"
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_cleaned_name(name: str) -> bool:
    return name.endswith(CLEANED)


def finish_interrupted(path: str, dfd: int | None = None) -> list[int]:
    """Discards the files of a swap a crash interrupted (the essay, steps 1-4)
    and rebuilds the indexes of the segments concerned from their .log; the
    caller holds the lock. Returns their base offsets."""
    bases = set()
    for n in os.listdir(path):
        if is_cleaned_name(n):
            bases.add(int(n[:20]) if n[:20].isdigit() else -1)
            try:
                os.unlink(os.path.join(path, n))
            except FileNotFoundError:
                pass
    bases.discard(-1)
    if not bases:
        return []
    plog = PartitionLog(path)
    for s in plog.segments:
        if s.base_offset in bases:
            rebuild_indexes(s)
    safefile.fsync_dir(path)
    logger.warning("%s: discarded an interrupted cleaning of segments %s (indexes rebuilt)", path, sorted(bases))
    return sorted(bases)


# ------------------------------------------------------------ offline check


class _IndexCheck:
    """Verifies every row of a segment's .index and .timeindex against the frames
    of one full scan, chunk by chunk (rows of every frame: offset, position,
    max timestamp below it)."""

    def __init__(self, s: SegmentFile):
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
                self.problems.append(
                    f"{s.path(ext)}: {n} bytes, not a whole number of rows (a torn row at file position {n - n % 16})"
                )

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
        for ext, a, ok, what in (
            ("index", self.ix, self.ix_ok, "does not name a frame start with that offset"),
            ("timeindex", self.t, self.t_ok, "is not the largest timestamp below that offset"),
        ):
            bad = np.nonzero(~ok)[0]
            for k in bad[:5]:
                self.problems.append(
                    f"{self.s.path(ext)}: row {k} (file position {k * 16}) {tuple(int(x) for x in a[k])} {what}"
                )
            if len(bad) > 5:
                self.problems.append(f"{self.s.path(ext)}: {len(bad) - 5} more bad rows")
            if len(a) > 1 and not (np.all(np.diff(a[:, 1 if ext == "index" else 0]) >= 0)):
                k = int(np.nonzero(np.diff(a[:, 1 if ext == "index" else 0]) < 0)[0][0]) + 1
                self.problems.append(f"{self.s.path(ext)}: row {k} (file position {k * 16}) is out of order")
        if final and self.s.size and not (len(self.t) and self.t[-1, 1] == out.end_offset):
            self.problems.append(
                f"{self.s.path('timeindex')}: no final row (segment max timestamp "
                f"{out.max_timestamp}, end offset {out.end_offset}); retention "
                "would fall back to the file time"
            )
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
        if prev is not None and not continues(prev[1], prev[2], s):
            problems.append(str(SegmentGap(prev[0], s, prev[2])))
        chk = _IndexCheck(s)
        out, _, size = scan_frames(s.path(), s.base_pos, 0, s.base_offset, 1, on_rows=chk.frames)
        log_ok = out.end_pos - s.base_pos == size
        if not log_ok:
            problems.append(
                f"{s.path()}: {SCAN_STOP_REASONS.get(out.stop_reason, 'unreadable')} at file position "
                f"{out.end_pos - s.base_pos} ({size - (out.end_pos - s.base_pos)} bytes after it)"
            )
        bad_index = chk.finish(out, final=i + 1 < len(segs))
        if bad_index and repair and log_ok:
            rebuild_indexes(s)
            repaired.append(f"rebuilt the indexes of {s.path()}")
        else:
            problems += bad_index
        prev = (s, out.end_pos, out.end_offset)
    return problems, repaired
