"""storage/compact.py — log compaction of one partition's closed segments
(the cleaner's: shmlog/service/cleaner.py).

Owns: choosing the cleanable prefix of a partition, the offset map (latest
record per key), the transaction decisions the cleaner needs (from control
batches on disk), rewriting segments (kept batches copied or re-encoded,
dropped offsets as GAP frames), the swap of a cleaned segment and finishing
or discarding an interrupted one, the partition's cleaner lock and its
checkpoint (cleaner.checkpoint: progress for describe_topic and metrics).
Must never: touch the last (active) segment, a segment the ring still holds,
a record newer than min_compaction_lag_ms or at or past the last stable
offset; renumber an offset; remove the original of a segment before its
cleaned copy is durable; let an aborted or undecided transactional record
count as a key's latest value.

Invariant C1 (what a cleaned segment is). A cleaned segment replaces the
segment with the same base offset and covers exactly its offsets
[base_offset, end_offset): every offset is either in a kept batch
(baseOffset and lastOffsetDelta unchanged, so the batch spans the same
offsets it did; dropped records inside it leave offsetDelta gaps, as
Kafka's cleaner leaves them) or in a GAP frame (body: base offset, count),
so the frame walk's offset chain is unbroken and every reader, seek and
validator that already accepts GAP frames (sealed writes) reads it
unchanged. Frames still name their own positions and file position =
position - segment base position still holds; what changes is the base: a
cleaned segment is END-ALIGNED, it ends at the position its original ended
at (= where the next segment starts), so it starts higher than the
segment before it ends. The chain rule becomes (recovery.py, segment.py):
offsets contiguous, positions never decreasing; a position skip with
contiguous offsets loses nothing (every rolled segment holds at least one
offset, so a lost file or lost frames always break the offset chain), and
a reader at the end of a segment moves to the next one's base when that
one starts with the offset it expects (PartitionLog.bridge).
Why end-aligned and not "readers go by offset": every reader, the Kafka
fetch, recovery and `shmlog check` keep working on positions; the index
files keep their meaning (offset -> position of a frame in that file); and
an unchanged tail of a segment keeps its positions.

Invariant C2 (what may be cleaned). A prefix of the closed segments: each
one's span ends at or below the ring's head (the ring no longer holds any
of its bytes, so a reader switching from the files to the ring at a
position never meets an aliased frame), its largest timestamp is older than
min_compaction_lag_ms, its end offset is at most the last stable offset
(ring header txn_bound: 0 = none open, else 1 + LSO). The offset map is
built over that prefix only (Kafka's "dirty section" bound).

Decisions (Kafka's on-disk shape: transactional bit 0x10, control bit 0x20,
a control record's key = int16 version + int16 type, 0 ABORT / 1 COMMIT).
The decision for a transactional batch of producer P, epoch e at offset o
is the first control batch of P at an offset > o: same epoch, its type;
higher epoch, aborted (a fenced zombie); none on disk (or a lower epoch),
undecided. Aborted batches are dropped and never win as a key's latest;
undecided ones are kept untouched and do not count either (an earlier
value of the key stays). A marker is kept while any batch of its
transaction survives, and after that until it is older than
delete_retention_ms (its batch timestamp).
Tombstones (a null value): kept while they are the key's latest record and
their RECORD TIMESTAMP is within delete_retention_ms of now (chosen over
Kafka's "since the segment was first cleaned": it is stateless, needs no
rewrite of batch headers, and is exact across crashes; a producer that
supplies an old timestamp shortens its tombstone's life, as it does its
record's retention). Records without a key (written before the topic was
compacted) are dropped, as Kafka's cleaner drops them.

The swap of one segment X (every step is a `step()` point; a kill -9 at
each leaves):
  1 X.log.cleaned written with provisional commit words, then patched to
    the end-aligned positions, scanned by the C validator (it must reach
    the span end at the end offset: a cleaner bug never replaces data),
    fsynced. Disk: the original X.* untouched plus a partial or complete
    X.log.cleaned. Recovery: every *.cleaned is deleted, X's indexes are
    rebuilt from X.log (the original): nothing lost.
  2 X.index.cleaned and X.timeindex.cleaned written and fsynced. Same as 1.
  3 rename X.log.cleaned -> X.log (the commit point: rename is atomic; the
    new file's bytes are already durable). Disk: the cleaned log with the
    ORIGINAL indexes (and the two index .cleaned files). Recovery: the
    .cleaned files deleted, X's indexes rebuilt from the (cleaned) X.log.
    A reader meanwhile verifies every index row against the frame it
    names, so a stale row costs it a scan, never a wrong record.
  4 rename both index files, fsync the directory. Disk: a cleaned segment.
    A power loss before the directory fsync may keep any subset of the
    three renames: each leaves a complete X.log, old or new, and a .cleaned
    file whenever the index renames are not all durable (the log rename
    comes first), so recovery rebuilds the indexes from whichever X.log it
    finds; no index of the other log survives a recovery.
Recovery of interrupted swaps (finish_interrupted) runs under the
partition's cleaner lock at the cleaner's start of every pass and in
recover_partition (repair=True: the persister's start, the restore), so it
never races a live swap. The lock (flock on the partition directory) also
keeps the persister's retention ("compact,delete") and a swap apart: a
segment retention deleted can never be brought back by a late rename.
Concurrent readers holding a segment the swap replaced see another inode
under the name at their next read (SegmentFile.ino) and seek again by
offset (client/reader.py), landing on the same or the next surviving
record.
"""

import bisect
import json
import logging
import mmap
import os
import signal
import struct
import time
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import compression, errors, safefile
from .._native import ffi, lib
from .layout import write_atomically
from .recovery import CLEANED, Lock, finish_interrupted
from .segment import CHECKPOINT, INDEX_EVERY, XOR, PartitionLog, SegmentFile, scan_frames

logger = logging.getLogger("shmlog.storage")

STEP_ENV = "SHMLOG_CLEANER_KILL_AT_STEP"  # tests: SIGKILL this process at the N-th step()
CHUNK = 8 << 20

FRAME = struct.Struct("<QIHH")
BATCH = struct.Struct(">qiibIhiqqqhii")  # the 61-byte RecordBatch v2 header
GAP = struct.Struct("<qII")
FH = lib.SHM_FRAME_HEADER_BYTES
HB = lib.SHM_BATCH_HEADER_BYTES
DATA, PAD, GAPK = lib.SHM_FRAME_DATA, lib.SHM_FRAME_PAD, lib.SHM_FRAME_GAP
TXN, CONTROL, CODEC = lib.SHM_RB_ATTR_TRANSACTIONAL, lib.SHM_RB_ATTR_CONTROL, lib.SHM_RB_ATTR_CODEC_MASK
ABORT, COMMIT, UNDECIDED = 0, 1, -1
MAX_GAP = 0xFFFFFFFF

_steps = 0


def step(name: str) -> None:
    """A crash point of the cleaner (the essay's steps): with SHMLOG_CLEANER_KILL_AT_STEP=N
    the N-th one in this process kills it with SIGKILL, a real kill -9."""
    global _steps
    _steps += 1
    at = os.environ.get(STEP_ENV)
    if at and int(at) == _steps:
        logger.warning("kill -9 at cleaner step %d (%s)", _steps, name)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------ reading frames


class _Frame:
    """One frame as frames() read it (DATA: its batch header's fields)."""

    __slots__ = (
        *("fpos", "kind", "length", "body", "base", "attrs", "last_delta"),
        *("base_ts", "max_ts", "pid", "epoch", "count", "end"),
    )
    fpos: int
    kind: int
    length: int
    body: memoryview
    base: int
    attrs: int
    last_delta: int
    base_ts: int
    max_ts: int
    pid: int
    epoch: int
    count: int
    end: int


def frames(s: SegmentFile):
    """Every frame of s in order, checked (names its position, DATA passes its
    CRC, offsets continue): _Frame with body a memoryview valid until the next
    one. Raises CorruptRecord; cleaning never works on a damaged segment."""
    fd = safefile.open_read(s.path())
    try:
        size = os.fstat(fd).st_size
        fpos, off = 0, s.base_offset
        buf, bstart = b"", 0
        while fpos < size:
            if fpos + FH > bstart + len(buf):
                buf, bstart = os.pread(fd, CHUNK, fpos), fpos
            rel = fpos - bstart
            if len(buf) - rel < FH:
                raise errors.CorruptRecord(f"{s.path()}: torn frame header at file position {fpos}")
            commit, length, kind, _fl = FRAME.unpack_from(buf, rel)
            if commit ^ XOR != s.base_pos + fpos or length < FH:
                raise errors.CorruptRecord(f"{s.path()}: bad frame header at file position {fpos}")
            alen = (length + 7) & ~7
            if rel + length > len(buf):
                buf, bstart = os.pread(fd, max(CHUNK, alen), fpos), fpos
                rel = 0
                if len(buf) < length:
                    raise errors.CorruptRecord(f"{s.path()}: torn frame at file position {fpos}")
            f = _Frame()
            f.fpos, f.kind, f.length = fpos, kind, length
            f.body = memoryview(buf)[rel + FH : rel + length]
            if kind == DATA:
                if len(f.body) < HB or lib.shm_batch_validate(ffi.from_buffer(f.body), len(f.body)) != lib.SHM_OK:
                    raise errors.CorruptRecord(f"{s.path()}: damaged batch at file position {fpos}")
                h = BATCH.unpack_from(f.body)
                f.base, f.attrs, f.last_delta, f.base_ts, f.max_ts = h[0], h[5], h[6], h[7], h[8]
                f.pid, f.epoch, f.count = h[9], h[10], h[12]
                f.end = f.base + f.last_delta + 1
            elif kind == GAPK:
                f.base, cnt, _ = GAP.unpack_from(f.body)
                f.end = f.base + cnt
            elif kind == PAD:
                f.base = f.end = off
            else:
                raise errors.CorruptRecord(f"{s.path()}: unknown frame kind {kind} at file position {fpos}")
            if f.base != off or f.end < f.base:
                raise errors.CorruptRecord(f"{s.path()}: offset discontinuity at file position {fpos}")
            off = f.end
            yield f
            fpos += alen
    finally:
        os.close(fd)


def _plain(f: _Frame, max_bytes: int) -> bytes | memoryview:
    """The batch of f with its records section inflated (codec bits cleared)."""
    if not f.attrs & CODEC:
        return f.body
    recs = compression.decompress(f.attrs & CODEC, f.body[HB:], max_bytes)
    head = bytearray(f.body[:HB])
    struct.pack_into(">h", head, lib.SHM_RB_ATTRIBUTES, f.attrs & ~CODEC)
    return bytes(head) + recs


class _Records:
    """The decoded records of one batch: offsets, timestamps, keys, value lengths."""

    __slots__ = ("offsets", "ts", "keys", "vlens")

    def __init__(self, batch, count: int):
        rows = ffi.new("int64_t[]", max(count, 1) * lib.SHM_ROW_FIELDS)
        out = ffi.new("struct shm_records_out *", {"max_records": max(count, 1), "rows": rows})
        n = lib.shm_batch_decode(ffi.from_buffer(batch), len(batch), 0, -1, out)
        if n < 0 or n != count:
            raise errors.CorruptRecord(f"a batch does not decode ({n} of {count} records)")
        r = np.frombuffer(ffi.buffer(rows, n * 8 * lib.SHM_ROW_FIELDS), "<i8").reshape(n, lib.SHM_ROW_FIELDS)
        self.offsets = r[:, lib.SHM_ROW_OFFSET].tolist()
        self.ts = r[:, lib.SHM_ROW_TIMESTAMP].tolist()
        self.vlens = r[:, lib.SHM_ROW_VALUE_LEN].tolist()
        mv = memoryview(batch)
        ks, kl = r[:, lib.SHM_ROW_KEY_START].tolist(), r[:, lib.SHM_ROW_KEY_LEN].tolist()
        self.keys = [bytes(mv[a : a + b]) if b >= 0 else None for a, b in zip(ks, kl)]


def _control_type(f: _Frame) -> int:
    """The type of a control batch's (first) record: its key is int16 version + int16 type."""
    body = f.body
    p = HB

    def varint():
        nonlocal p
        z = shift = 0
        while True:
            b = body[p]
            p += 1
            z |= (b & 0x7F) << shift
            if not b & 0x80:
                return (z >> 1) ^ -(z & 1)
            shift += 7

    try:
        varint()  # record length
        p += 1  # attributes
        varint()  # timestamp delta
        varint()  # offset delta
        klen = varint()
        if klen < 4:
            return UNDECIDED
        return struct.unpack_from(">h", body, p + 2)[0]
    except (IndexError, struct.error):
        return UNDECIDED


# ------------------------------------------------------------ the pass


@dataclass
class Params:
    delete_retention_ms: int
    min_compaction_lag_ms: int
    max_message_bytes: int


@dataclass
class Result:
    cleaned_to: int | None = None  # end offset of the cleanable prefix (None: nothing cleanable)
    segments: int = 0  # in the prefix
    rewritten: int = 0
    bytes_before: int = 0  # of the rewritten segments
    bytes_after: int = 0
    records_dropped: int = 0
    due_ts: int | None = None  # the oldest kept tombstone or marker: it may go delete_retention_ms after
    seconds: float = 0.0
    read_bytes: int = 0  # bytes of the prefix read (throughput)


class _Txns:
    """Control batches by producer id: the decisions of transactional batches."""

    def __init__(self):
        self.markers: dict[int, list[tuple[int, int, int]]] = {}  # pid -> [(offset, epoch, type)]

    def add(self, f: _Frame):
        self.markers.setdefault(f.pid, []).append((f.base, f.epoch, _control_type(f)))

    def decide(self, pid: int, epoch: int, offset: int) -> int:
        ms = self.markers.get(pid)
        if not ms:
            return UNDECIDED
        i = bisect.bisect_right(ms, (offset, 1 << 40, 1 << 40))
        if i == len(ms):
            return UNDECIDED
        _o, e, t = ms[i]
        if e == epoch and t in (ABORT, COMMIT):
            return t
        return ABORT if e > epoch else UNDECIDED


def cleanable(plog: PartitionLog, head_pos: int, txn_bound: int, lag_ms: int, now_ms: int) -> int:
    """How many leading segments may be cleaned (invariant C2)."""
    segs = plog.segments
    k = 0
    lso = txn_bound - 1 if txn_bound else None
    while k + 1 < len(segs):
        s, nxt = segs[k], segs[k + 1]
        if nxt.base_pos > head_pos or s.max_timestamp() > now_ms - lag_ms:
            break
        if lso is not None and nxt.base_offset > lso:
            break
        k += 1
    return k


def clean_partition(
    path: str, params: Params, head_pos: int, txn_bound: int, now_ms: int | None = None, lock_timeout: float = 10.0
) -> Result:
    """One cleaning pass over a partition directory (the essay): the cleanable
    prefix gets the offset map of its records, and each of its segments that
    loses something is rewritten and swapped. Safe against a concurrent
    persister (appends to the last segment, retention under the lock) and
    readers."""
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    res = Result()
    lock = Lock(path)
    try:
        if not lock.acquire(lock_timeout):
            return res
        step("locked")
        finish_interrupted(path)
        plog = PartitionLog(path)
        k = cleanable(plog, head_pos, txn_bound, params.min_compaction_lag_ms, now_ms)
        if k == 0:
            return res
        prefix, rest = plog.segments[:k], plog.segments[k:]
        res.segments, res.cleaned_to = k, rest[0].base_offset
        latest, txns, pending = _map(prefix, params, res)
        if pending:  # transactional batches whose marker lies after the prefix
            _more_markers(rest, txns)
        for pid, epoch, base, offs, keys in pending:
            if txns.decide(pid, epoch, base) == COMMIT:
                for o, key in zip(offs, keys):
                    if key is not None and latest.get(key, -1) < o:
                        latest[key] = o
        step("mapped")
        horizon = now_ms - params.delete_retention_ms
        survivors: dict[int, int] = {}
        for i, s in enumerate(prefix):
            span_end = plog.segments[i + 1].base_pos
            plan = _plan(s, latest, txns, horizon, survivors, params, res)
            if plan is None:
                continue
            step("planned")
            _rewrite(s, plan, span_end, plog.segments[i + 1].base_offset, params, res, lock)
    finally:
        lock.close()
        res.seconds = time.monotonic() - t0
    return res


def _map(prefix, params, res):
    latest: dict[bytes, int] = {}
    txns = _Txns()
    pending = []  # (pid, epoch, offsets, keys) of transactional batches
    for s in prefix:
        res.read_bytes += s.size
        for f in frames(s):
            if f.kind != DATA:
                continue
            if f.attrs & CONTROL:
                txns.add(f)
                continue
            r = _Records(_plain(f, params.max_message_bytes), f.count)
            if f.attrs & TXN:
                pending.append((f.pid, f.epoch, f.base, r.offsets, r.keys))
                continue
            for o, key in zip(r.offsets, r.keys):
                if key is not None:
                    latest[key] = o
    return latest, txns, pending


def _more_markers(rest, txns):
    """Control batches after the prefix (uncleanable segments, the active one as far as it is written)."""
    for s in rest:
        try:
            for f in frames(s):
                if f.kind == DATA and f.attrs & CONTROL:
                    txns.add(f)
        except (errors.CorruptRecord, FileNotFoundError):
            return  # the active segment's torn tail being written, or retention: decided no further


def _plan(s, latest, txns, horizon, survivors, params, res):
    """Per frame of s: True (keep whole), False (drop: its offsets become a
    gap), or a keep mask (numpy bool per record). None when nothing changes."""
    plan: list[Any] = []
    changed = False
    prev_gap = False
    for f in frames(s):
        if f.kind == PAD:
            plan.append(False)
            changed = True
            continue
        if f.kind == GAPK:
            plan.append(False)
            changed |= prev_gap
            prev_gap = True
            continue
        if f.attrs & CONTROL:
            alive = survivors.pop(f.pid, 0) > 0  # batches of its transaction survive
            keep = alive or f.max_ts >= horizon
            if keep and not alive:
                _due(res, f.max_ts)
            plan.append(keep)
        elif f.attrs & TXN and (d := txns.decide(f.pid, f.epoch, f.base)) != COMMIT:
            keep = d == UNDECIDED  # undecided: untouched; aborted: dropped
            plan.append(keep)
            if not keep:
                res.records_dropped += f.count
        else:
            r = _Records(_plain(f, params.max_message_bytes), f.count)
            mask = np.zeros(f.count, bool)
            for i, (o, key) in enumerate(zip(r.offsets, r.keys)):
                if key is None or latest.get(key) != o:
                    continue
                if r.vlens[i] < 0:  # a tombstone
                    if r.ts[i] < horizon:
                        continue
                    _due(res, r.ts[i])
                mask[i] = True
            kept = int(mask.sum())
            res.records_dropped += f.count - kept
            if kept and f.attrs & TXN:
                survivors[f.pid] = survivors.get(f.pid, 0) + 1
            plan.append(True if kept == f.count else (mask if kept else False))
        if plan[-1] is not True:
            changed = True
        prev_gap = plan[-1] is False
    return plan if changed else None


def _due(res, ts):
    """A kept tombstone or marker of timestamp ts: the pass after ts + delete_retention_ms may drop it."""
    if res.due_ts is None or ts < res.due_ts:
        res.due_ts = ts


def _filtered(f: _Frame, mask, params) -> bytes:
    """f's batch with only the records mask keeps (compressed: recompressed with its codec)."""
    plain = _plain(f, params.max_message_bytes)
    dst = ffi.new("uint8_t[]", len(plain))
    n = lib.shm_batch_filter(
        ffi.from_buffer(plain), len(plain), ffi.from_buffer(mask.view(np.uint8)), f.count, dst, len(plain)
    )
    if n < 0:
        raise errors.CorruptRecord(f"a batch at offset {f.base} cannot be filtered (status {n})")
    out = ffi.buffer(dst, n)[:]
    codec = f.attrs & CODEC
    if not codec:
        return out
    recs = compression.compress(codec, out[HB:])
    b = bytearray(out[:HB] + recs)
    struct.pack_into(">h", b, lib.SHM_RB_ATTRIBUTES, f.attrs)
    bb = ffi.from_buffer(b)
    lib.shm_batch_seal(bb, len(b))
    return bytes(b)


def _rewrite(s: SegmentFile, plan, span_end: int, end_offset: int, params, res, lock):
    """Writes s's cleaned copy per plan, end-aligned at span_end, and swaps it in (the essay, steps 1-4)."""
    d = s.dir
    names = {ext: os.path.basename(s.path(ext)) + CLEANED for ext in ("log", "index", "timeindex")}
    tmp = os.path.join(d, names["log"])
    fd = safefile.open_rw(tmp)
    offs = array("q")
    gap: list[int] = []  # [start, end) of the offsets being dropped
    wpos = 0
    chunks: list[bytes] = []
    pending = 0

    def emit(frame: bytes):
        nonlocal wpos, pending
        offs.append(wpos)
        chunks.append(frame)
        wpos += len(frame)
        pending += len(frame)
        if pending >= CHUNK:
            flush()

    def flush():
        nonlocal pending
        data = b"".join(chunks)
        chunks.clear()
        pending = 0
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])

    def frame(kind, body: bytes) -> bytes:
        n = FH + len(body)
        return FRAME.pack(0, n, kind, 0) + body + b"\0" * (((n + 7) & ~7) - n)

    def close_gap():
        while gap and gap[1] > gap[0]:
            c = min(gap[1] - gap[0], MAX_GAP)
            emit(frame(GAPK, GAP.pack(gap[0], c, 0)))
            gap[0] += c
        gap.clear()

    try:
        for f, p in zip(frames(s), plan):
            if p is False:
                if f.end > f.base:
                    if not gap:
                        gap[:] = [f.base, f.base]
                    gap[1] = f.end
                continue
            close_gap()
            emit(frame(DATA, bytes(f.body) if p is True else _filtered(f, p, params)))
        close_gap()
        flush()
        total = wpos
        new_base = span_end - total
        if new_base < s.base_pos:  # larger than the original (recompression): keep the original
            raise _Skip()
        step("written")
        if total:
            mm = mmap.mmap(fd, total)
            try:
                w = np.frombuffer(mm, "<u8")
                o = np.frombuffer(offs, np.int64)
                w[o // 8] = (o.astype(np.uint64) + np.uint64(new_base)) ^ np.uint64(XOR)
                del w
            finally:
                mm.close()
        os.fsync(fd)
        step("patched")
        out, rows, size = scan_frames(tmp, new_base, 0, s.base_offset, INDEX_EVERY)
        if out.stop_reason != lib.SHM_SCAN_END or out.end_pos != span_end or out.end_offset != end_offset:
            raise errors.CorruptRecord(
                f"{tmp}: the cleaned copy of {s.path()} does not validate (stop {out.stop_reason}, ends at "
                f"{out.end_pos}/{out.end_offset}, expected {span_end}/{end_offset}); the original is kept"
            )
        final = np.array([[out.max_timestamp, out.end_offset]], np.int64)
        for ext, data in (
            ("index", rows[:, [0, 1]].tobytes()),
            ("timeindex", rows[:, [2, 0]].tobytes() + final.tobytes()),
        ):
            ifd = safefile.open_rw(os.path.join(d, names[ext]))
            try:
                os.ftruncate(ifd, 0)
                os.write(ifd, data)
                os.fsync(ifd)
            finally:
                os.close(ifd)
            step("index " + ext)
        os.rename(names["log"], os.path.basename(s.path("log")), src_dir_fd=lock.fd, dst_dir_fd=lock.fd)
        step("committed")
        for ext in ("index", "timeindex"):
            os.rename(names[ext], os.path.basename(s.path(ext)), src_dir_fd=lock.fd, dst_dir_fd=lock.fd)
            step("renamed " + ext)
        os.fsync(lock.fd)
        step("durable")
        res.rewritten += 1
        res.bytes_before += s.size
        res.bytes_after += total
        logger.info("cleaned %s: %d -> %d bytes", s.path(), s.size, total)
    except _Skip:
        _discard(d, names)
    except BaseException:
        _discard(d, names)
        raise
    finally:
        os.close(fd)


class _Skip(Exception):
    pass


def _discard(d, names):
    for n in names.values():
        try:
            os.unlink(os.path.join(d, n))
        except FileNotFoundError:
            pass


def needs_pass(path: str, head_pos: int, txn_bound: int, params: Params, now_ms: int) -> bool:
    """Is there anything for a pass: a cleanable prefix that ends past the last
    pass's, or a kept tombstone or marker whose time is up?"""
    plog = PartitionLog(path)
    k = cleanable(plog, head_pos, txn_bound, params.min_compaction_lag_ms, now_ms)
    if k == 0:
        return False
    cp = read_checkpoint(path) or {}
    due = cp.get("next_due_ms")
    return plog.segments[k].base_offset > (cp.get("cleaned_to") or -1) or (due is not None and now_ms >= due)


# ------------------------------------------------------------ progress


def read_checkpoint(path: str) -> dict | None:
    """The partition's cleaner progress (cleaned_to, bytes_reclaimed, passes, ...), or None."""
    try:
        with open(os.path.join(path, CHECKPOINT), "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


def write_checkpoint(path: str, res: Result, prev: dict | None, now_ms: int, delete_retention_ms: int) -> dict:
    prev = prev or {}
    st = {
        "cleaned_to": res.cleaned_to if res.cleaned_to is not None else prev.get("cleaned_to"),
        "passes": prev.get("passes", 0) + 1,
        "last_pass_ms": now_ms,
        "last_pass_seconds": round(res.seconds, 4),
        "segments_rewritten": prev.get("segments_rewritten", 0) + res.rewritten,
        "bytes_reclaimed": prev.get("bytes_reclaimed", 0) + res.bytes_before - res.bytes_after,
        "records_dropped": prev.get("records_dropped", 0) + res.records_dropped,
        "next_due_ms": None if res.due_ts is None else res.due_ts + delete_retention_ms,
    }
    write_atomically(os.path.join(path, CHECKPOINT), json.dumps(st).encode())
    return st
