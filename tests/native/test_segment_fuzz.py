"""Fuzzing of segment files and their indexes (issue 11, Build 3): every
byte-offset truncation and every bit flip (the .log: a seeded sample) of a
real segment and of its .index/.timeindex is either recovered (torn tail
truncated, index rebuilt) or refused with the file and the position — never
an intact frame dropped, never a record skipped silently, never a wrong
record returned; each case within a time bound, the sweep within a memory
bound. A deterministic sweep where exhaustive is cheap, hypothesis for
combined damage.

The oracle knows the original frames (parsed here, independently of the C
code) and the records the producer sent; it reads back through storage's
reader (PartitionLog.seek, segment_for_pos, shm_frames_read: the path a
consumer takes on disk) and `shmlog check`'s verifier."""

import os
import random
import resource
import shutil
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shmlog import errors, storage
from shmlog._native import ffi, lib

import conftest

XOR = lib.SHM_COMMIT_XOR
CASE_S = 2.0  # one case (write, recover, read, check) stays under this
RSS_GROWTH_KB = 256 << 10  # the whole sweep stays under this much more peak memory
N_LOG_FLIPS = int(os.environ.get("SHMLOG_FUZZ_FLIPS", "600"))


class Pristine:
    """One real partition (written by the persister) as bytes, plus what it holds."""

    def __init__(self, d):
        names = sorted(os.listdir(d))
        self.name = next(n for n in names if n.endswith(".log"))[:-4]
        self.files = {
            ext: open(os.path.join(d, f"{self.name}.{ext}"), "rb").read() for ext in ("log", "index", "timeindex")
        }
        self.frames = _frames(self.files["log"])
        self.records = _read_log(d)[0]
        self.total = self.frames[-1][3]


def _frames(data):
    """[(file_pos, aligned_end, first_offset, end_offset)] parsed without the C code."""
    out, fpos = [], 0
    base = int.from_bytes(data[:8], "little") ^ XOR
    while fpos < len(data):
        assert int.from_bytes(data[fpos : fpos + 8], "little") ^ XOR == base + fpos
        length = int.from_bytes(data[fpos + 8 : fpos + 12], "little")
        assert int.from_bytes(data[fpos + 12 : fpos + 14], "little") == lib.SHM_FRAME_DATA
        body = data[fpos + 16 : fpos + length]
        first = int.from_bytes(body[0:8], "big")
        end = fpos + ((length + 7) & ~7)
        out.append((fpos, end, first, first + int.from_bytes(body[23:27], "big") + 1))
        fpos = end
    return out


def _read_log(d, start=0):
    """(records, error): (offset, timestamp, key, value) from start through the
    disk reader; error is the CorruptRecord that stopped it, or None."""
    plog = storage.PartitionLog(d)
    cap = 1 << 16
    buf = ffi.new("uint8_t[]", cap)
    cur = ffi.new("struct shm_cursor *")
    cur.stuck_pos, cur.expect_base = 2**64 - 1, -1
    out = ffi.new("struct shm_records_out *")
    rows = ffi.new("int64_t[]", 4096 * lib.SHM_ROW_FIELDS)
    out.rows, out.max_records = rows, 4096
    got = []
    try:
        if not plog.seek(start, buf, cap, cur):
            return got, None
        for _ in range(10_000):
            seg = plog.segment_for_pos(cur.pos)
            if seg is None or cur.pos >= seg.end_pos:
                return got, None
            n = plog.read(seg, cur.pos, buf, cap)
            rc = lib.shm_frames_read(buf, n, cur.pos, cur, 1, out)
            if rc == lib.SHM_E_CORRUPT or (rc == lib.SHM_E_AGAIN and n < cap):
                raise errors.CorruptRecord(f"{seg.path()}: damaged frame at file position {cur.pos - seg.base_pos}")
            assert rc >= 0, rc
            mv = ffi.buffer(buf, n)
            r = np.frombuffer(ffi.buffer(rows, out.count * 64), "<i8").reshape(-1, 8)
            for o, ts, ks, kl, vs, vl, _, _ in r.tolist():
                got.append((o, ts, None if kl < 0 else mv[ks : ks + kl], None if vl < 0 else mv[vs : vs + vl]))
        raise AssertionError("reader made no progress")
    except errors.CorruptRecord as e:
        return got, e


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    inst = conftest.Instance(tmp_path_factory.mktemp("fuzz"))
    try:
        inst.log.create_topic("z", persistence="disk", ring_bytes=1 << 16, segment_bytes=1 << 20)
        rnd = random.Random(11)
        p = inst.log.producer()
        sent = []
        d = inst.log.partition_dir("z", 0)
        plog = storage.PartitionLog(d)
        while not plog.segments or plog.segments[-1].size < 9000:
            n = rnd.randint(1, 6)
            vals = [rnd.choice([b"", rnd.randbytes(rnd.randint(1, 80))]) for _ in range(n)]
            keys = [rnd.choice([None, rnd.randbytes(rnd.randint(0, 12))]) for _ in range(n)]
            ts = 1_700_000_000_000 + rnd.randint(-5000, 5000)  # out of order on purpose
            p.send_batch("z", vals, keys=keys, partition=0, timestamp_ms=ts)
            sent += [(k, v, ts) for k, v in zip(keys, vals)]
            if rnd.random() < 0.3:
                p.flush(durable=True, timeout=10)  # copy runs of varied length
                plog.refresh()
        p.flush(durable=True, timeout=10)
        assert inst.log.stop_persister()
        pr = Pristine(d)
    finally:
        inst.cleanup()
    assert [(r[2], r[3], r[1]) for r in pr.records] == [(k, v, ts) for k, v, ts in sent]
    assert len(pr.files["index"]) >= 3 * 16, "several index rows, so recovery resumes from one"
    assert 8192 < len(pr.files["log"]) < 16 << 10, "three index rows, small enough to sweep every cut"
    return pr


class Sweep:
    def __init__(self, pristine, scratch, monkeypatch):
        self.p = pristine
        self.d = scratch
        monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here
        self.worst = 0.0
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.cases = 0

    def write(self, **files):
        for n in os.listdir(self.d):
            if not n.startswith(self.p.name):
                os.unlink(os.path.join(self.d, n))
        for ext in ("log", "index", "timeindex"):
            with open(os.path.join(self.d, f"{self.p.name}.{ext}"), "wb") as f:
                f.write(files.get(ext, self.p.files[ext]))

    def path(self, ext="log"):
        return os.path.join(self.d, f"{self.p.name}.{ext}")

    def case(self, damaged=(), cut=None, index_only=False, deep=True, **files):
        """One damaged copy: recover it, read it back, check the outcome is allowed.
        damaged: byte positions of the .log that differ; cut: its new length;
        deep: also seek into it and run `shmlog check`'s verifier."""
        t0 = time.monotonic()
        self.write(**files)
        size = len(files.get("log", self.p.files["log"]))
        cut = size if cut is None else cut
        bad = sorted(damaged)
        intact = [not (f[1] > cut or any(f[0] <= b < f[1] for b in bad)) for f in self.p.frames]
        first_bad = intact.index(False) if False in intact else len(intact)
        prefix = self.p.frames[first_bad][2] if first_bad < len(intact) else self.p.total
        what = f"damaged={bad[:4]} cut={cut} files={sorted(files)}"
        try:
            rep = storage.recover_partition(self.d)
        except errors.CorruptRecord as e:
            assert not index_only, f"index damage refused the log: {e} ({what})"
            assert self.path() in str(e) and "file position" in str(e), what
            self._done(t0)
            return "refused"
        if rep.truncated_at is not None:
            dropped = [i for i, f in enumerate(self.p.frames) if f[0] >= rep.truncated_at]
            assert not any(intact[i] for i in dropped), f"an intact frame was truncated ({what})"
        assert rep.end_offset >= prefix, f"records lost silently ({what}): {rep}"
        got, err = _read_log(self.d)
        assert got == self.p.records[: len(got)], f"a wrong record ({what})"
        assert len(got) >= prefix, f"a false alarm or a skip before the damage ({what}): {err}"
        if err is None:
            assert len(got) == rep.end_offset, f"stopped silently at {len(got)} ({what})"
        else:
            assert self.path() in str(err) and "file position" in str(err)
        if not deep:
            self._done(t0)
            return "truncated" if rep.truncated_at is not None else "read-error" if err else "recovered"
        rows = [o for seg in storage.PartitionLog(self.d).segments for o, _ in seg.index()]
        for target in {0, prefix // 2, prefix - 1, *rows[-2:]}:
            if 0 <= target < prefix:
                g, e = _read_log(self.d, target)
                assert g and g[0] == self.p.records[target], f"seek to {target} ({what}): {e}"
        problems, _ = storage.check_partition(self.d)
        if err is not None:
            assert any(self.path() in p for p in problems), f"check misses the damage ({what})"
        self._done(t0)
        return "truncated" if rep.truncated_at is not None else "read-error" if err else "recovered"

    def _done(self, t0):
        self.cases += 1
        self.worst = max(self.worst, time.monotonic() - t0)

    def limits(self):
        assert self.worst < CASE_S, f"slowest case {self.worst:.2f}s"
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss0
        assert grown < RSS_GROWTH_KB, f"peak memory grew by {grown} KiB"


@pytest.fixture
def sweep(pristine, monkeypatch):
    """Cases run in a scratch directory on tmpfs (thousands of small files
    rewritten: a disk's metadata operations would dominate), removed after."""
    scratch = f"/dev/shm/shmlogtest-fuzz-{uuid.uuid4().hex[:10]}"
    os.mkdir(scratch, 0o700)
    try:
        yield Sweep(pristine, scratch, monkeypatch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("quarter", range(4))
def test_every_truncation_of_the_segment_keeps_exactly_the_complete_frames(sweep, quarter):
    """Every cut recovers to the complete frames before it; all cuts inside one
    frame give the same file, so the full read-back runs once per frame (and
    at every 256th cut), the recovery checks at every cut (a quarter of the
    cuts per test, so each stays well inside the suite's timeout)."""
    log = sweep.p.files["log"]
    starts = {f[0] for f in sweep.p.frames}
    for cut in range(quarter, len(log) + 1, 4):
        whole = [f for f in sweep.p.frames if f[1] <= cut]
        want_size, want_end = (whole[-1][1], whole[-1][3]) if whole else (0, 0)
        if cut in starts or cut % 256 == 0 or cut == len(log):
            assert sweep.case(cut=cut, log=log[:cut]) in ("recovered", "truncated")
        else:
            t0 = time.monotonic()
            sweep.write(log=log[:cut])
            rep = storage.recover_partition(sweep.d)
            assert (rep.end_offset, rep.truncated_bytes) == (want_end, cut - want_size), f"cut {cut}"
            assert all(g.index_rows() is not None for g in storage.PartitionLog(sweep.d).segments)
            sweep._done(t0)
        assert os.path.getsize(sweep.path()) == want_size, f"cut {cut}"
    sweep.limits()


def test_bit_flips_in_the_segment_are_recovered_or_refused(sweep):
    log = sweep.p.files["log"]
    rnd = random.Random(7)
    spots = {(rnd.randrange(len(log)), rnd.randrange(8)) for _ in range(N_LOG_FLIPS)}
    # and every bit of the first and the last frame's headers (frame + batch header)
    for f in (sweep.p.frames[0], sweep.p.frames[-1]):
        spots |= {(f[0] + b, bit) for b in range(16 + 61) for bit in range(8)}
    outcomes = {}
    for byte, bit in sorted(spots):
        data = bytearray(log)
        data[byte] ^= 1 << bit
        o = sweep.case(damaged=[byte], log=bytes(data))
        outcomes[o] = outcomes.get(o, 0) + 1
    assert outcomes.get("refused") and outcomes.get("read-error"), outcomes
    sweep.limits()


@pytest.mark.parametrize("ext", ["index", "timeindex"])
def test_every_truncation_and_bit_flip_of_an_index_is_rebuilt_or_harmless(sweep, ext):
    idx = sweep.p.files[ext]
    variants = [idx[:cut] for cut in range(len(idx))]
    for byte in range(len(idx)):
        for bit in range(8):
            data = bytearray(idx)
            data[byte] ^= 1 << bit
            variants.append(bytes(data))
    for v in variants:
        assert sweep.case(index_only=True, **{ext: v}) == "recovered"
        _time_lookups_are_lower_bounds(sweep)
    sweep.limits()


def _time_lookups_are_lower_bounds(sweep):
    """After recovery, offsets_for_times' start is at or below the true answer, or
    `shmlog check` names the time-index row that misleads it."""
    plog = storage.PartitionLog(sweep.d)
    recs = sweep.p.records
    for ts in sorted({r[1] for r in recs})[::7] + [0, 2**62]:
        want = next((r[0] for r in recs if r[1] >= ts), None)
        start = plog.offset_before_time(ts)
        if want is not None and start > want:
            problems, _ = storage.check_partition(sweep.d)
            assert any(sweep.path("timeindex") in p and "row" in p for p in problems), (
                f"offset_before_time({ts}) = {start} > {want}, unreported"
            )


@settings(
    max_examples=int(os.environ.get("SHMLOG_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_combined_damage_never_returns_a_wrong_record(sweep, data):
    """Several flips, a zeroed or random run of bytes, and a cut, together."""
    log = bytearray(sweep.p.files["log"])
    damaged = set()
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        b = data.draw(st.integers(0, len(log) - 1))
        log[b] ^= 1 << data.draw(st.integers(0, 7))
        damaged.add(b)
    if data.draw(st.booleans(), label="overwrite a run"):
        at = data.draw(st.integers(0, len(log) - 1))
        n = data.draw(st.integers(1, 64))
        fill = data.draw(st.sampled_from([b"\0", b"\xff", None]))
        run = fill * n if fill else data.draw(st.binary(min_size=n, max_size=n))
        run = run[: len(log) - at]
        changed = [at + i for i in range(len(run)) if log[at + i] != run[i]]
        log[at : at + len(run)] = run
        damaged |= set(changed)
    cut = data.draw(st.integers(len(log) // 2, len(log)), label="cut")
    idx = sweep.p.files["index"]
    if data.draw(st.booleans(), label="damage the index too"):
        b = bytearray(idx)
        b[data.draw(st.integers(0, len(b) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        idx = bytes(b)
    sweep.case(damaged=[b for b in damaged if b < cut], cut=cut, log=bytes(log[:cut]), index=idx)
    sweep.limits()
