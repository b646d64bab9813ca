"""Log compaction (storage/compact.py, service/cleaner.py; issue 14, item 3).

A generated key/value history with tombstones against an oracle, offsets
unchanged; kill -9 of real cleaner processes at controlled steps with
recovery each time; seeks into compacted-away offsets; a consumer reading a
segment while the cleaner swaps it; transactions by Kafka's on-disk shape;
retention by cleanup_policy; keyless writes refused; `shmlog check` on
compacted segments and on real damage after them; the cleaner daemon under
the persister (killed -9, restarted).
"""

import os
import random
import shutil
import struct
import subprocess
import sys
import time

import pytest

from shmlog import errors, storage
from shmlog._native import ffi, lib
from shmlog.service import cleaner
from shmlog.storage import compact

SEG = 1 << 16
RING = 1 << 17
NOW = int(time.time() * 1000)
HOUR = 3600_000


def _topic(log, name="c", **kw):
    """A compacted topic the persister's own cleaner leaves alone (a lag of a
    day: nothing is old enough for it), so the passes a test runs are its own."""
    cfg = dict(partitions=1, ring_bytes=RING, segment_bytes=SEG, cleanup_policy="compact", delete_retention_ms=HOUR)
    cfg["min_compaction_lag_ms"] = 24 * HOUR
    log.create_topic(name, **{**cfg, **kw})
    return log.topic_handle(name)


def _history(p, topic, n_batches, rnd, oracle, nkeys=400, old_tombstones=True):
    """send_batch of random keys; ~8% tombstones, some of them old (their
    timestamp older than delete_retention_ms: the cleaner removes them).
    oracle: offset -> (key, value, timestamp)."""
    for _ in range(n_batches):
        n = rnd.randrange(1, 40)
        keys = [b"k%04d" % rnd.randrange(nkeys) for _ in range(n)]
        tomb = rnd.random() < 0.08
        old = old_tombstones and tomb and rnd.random() < 0.5
        ts = NOW - 2 * HOUR if old else None
        vals = [None if tomb else b"v%d-" % rnd.randrange(10**9) + b"x" * rnd.randrange(80) for _ in keys]
        (md,) = p.send_batch(topic, vals, keys=keys, timestamp_ms=ts)  # one partition: one batch, order kept
        for j, (k, v) in enumerate(zip(keys, vals)):
            oracle[md.base_offset + j] = (k, v, ts)


def _read_all(log, topic, start=None):
    """Every record from the start (or seek to start): [(offset, key, value)]."""
    c = log.consumer(topics=[topic], auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        if start is not None:
            c.poll(0.5)
            c.seek(topic, 0, start)
        end = log.describe_topic(topic).partitions[0].end_offset
        out: list = []
        deadline = time.monotonic() + 20
        while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
            out += [(m.offset, m.key, m.value) for m in c.poll_batch(10_000, timeout=0.2)]
        return out
    finally:
        c.close()


def _expected(oracle, cleaned_to, now=NOW, retention=HOUR):
    """What a read from the start returns once the prefix [.., cleaned_to) was
    compacted: there, each key's latest record of the prefix (a tombstone only
    while younger than delete_retention_ms); after it, everything."""
    latest = {}
    for o in sorted(oracle):
        if o < cleaned_to:
            latest[oracle[o][0]] = o
    keep = set()
    for o in latest.values():
        _k, v, ts = oracle[o]
        if v is None and (NOW if ts is None else ts) < now - retention:
            continue
        keep.add(o)
    return [(o, *oracle[o][:2]) for o in sorted(oracle) if o >= cleaned_to or o in keep]


def _check_equivalent(read, oracle):
    """Loses nothing, whatever was compacted: offsets increase, every record read
    is the oracle's record at its offset, and every key's latest record (the
    oracle's, over the whole history) is there."""
    offs = [o for o, _, _ in read]
    assert offs == sorted(set(offs))
    for o, k, v in read:
        assert oracle[o][:2] == (k, v), o
    latest = {}
    for o in sorted(oracle):
        latest[oracle[o][0]] = o
    have = set(offs)
    missing = [o for o in latest.values() if o not in have and not (oracle[o][1] is None and oracle[o][2])]
    assert not missing, missing[:5]


def _pdir(inst, h, p=0):
    return storage.partition_dir(inst.settings.data_dir, h.name, p, h.topic_id)


def _clean(inst, h, p=0, txn_bound=0, now=None):
    ring = inst.log.ring(h, p, False)
    params = compact.Params(h.config.delete_retention_ms, 0, h.config.max_message_bytes)
    return compact.clean_partition(_pdir(inst, h, p), params, ring.ends()[2], txn_bound, now)


def _durable(log, topic):
    p = log.producer()
    p.flush(durable=True)
    p.close()
    for _ in range(200):  # the persister copied everything
        d = log.describe_topic(topic).partitions[0]
        if d.persisted_lag_bytes == 0:
            return
        time.sleep(0.01)


# ------------------------------------------------------------ the oracle


def test_compaction_equals_latest_value_per_key(inst):
    h = _topic(inst.log)
    p = inst.log.producer()
    rnd, oracle = random.Random(14), {}
    _history(p, "c", 600, rnd, oracle)
    p.flush(durable=True)
    before = _read_all(inst.log, "c")
    assert [o for o, *_ in before] == sorted(oracle)
    res = _clean(inst, h)
    assert res.cleaned_to and res.rewritten and res.bytes_after < res.bytes_before
    assert storage.check_partition(_pdir(inst, h)) == ([], [])
    got = _read_all(inst.log, "c")
    assert got == _expected(oracle, res.cleaned_to)
    assert any(v is None for _, _, v in got)  # tombstones within delete_retention_ms stay
    # a second pass finds nothing to drop; a pass "two hours later" drops every tombstone of the prefix
    assert _clean(inst, h).rewritten == 0
    later = NOW + 2 * HOUR
    _clean(inst, h, now=later)
    got2 = _read_all(inst.log, "c")
    assert got2 == [r for r in _expected(oracle, res.cleaned_to, now=later)]
    assert not [r for r in got2 if r[0] < res.cleaned_to and r[2] is None]
    # the cleaned log survives a recovery unchanged
    rep = storage.recover_partition(_pdir(inst, h))
    assert rep.damage is None and _read_all(inst.log, "c") == got2


def test_seek_into_a_compacted_away_offset_lands_on_the_next_survivor(inst):
    h = _topic(inst.log)
    p = inst.log.producer()
    rnd, oracle = random.Random(3), {}
    _history(p, "c", 400, rnd, oracle, old_tombstones=False)
    p.flush(durable=True)
    res = _clean(inst, h)
    kept = [o for o, *_ in _read_all(inst.log, "c")]
    gone = sorted(set(range(res.cleaned_to)) - set(kept))
    assert len(gone) > 100
    for o in rnd.sample(gone, 15) + [gone[0], gone[-1]]:
        first = _read_all(inst.log, "c", start=o)[0][0]
        assert first == min(k for k in kept if k > o), o
    # Kafka's fetch path (PartitionReader, batches=True) and the listener's ListOffsets-free seek
    assert _read_all(inst.log, "c", start=0)[0][0] == kept[0]


def test_a_reader_inside_a_segment_the_cleaner_swaps_goes_on_by_offset(inst):
    """The attacker's interleaving: a consumer reads part of the files, the
    cleaner replaces the segment under it (other positions, same offsets),
    the consumer reads on: no CorruptRecord, nothing skipped that survived."""
    h = _topic(inst.log)
    p = inst.log.producer()
    rnd, oracle = random.Random(5), {}
    _history(p, "c", 500, rnd, oracle, old_tombstones=False)
    p.flush(durable=True)
    c = inst.log.consumer(topics=["c"], auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=7)
    first = []
    while len(first) < 50:
        first += [(m.offset, m.key, m.value) for m in c.poll_batch(7, timeout=1.0)]
    res = _clean(inst, h)
    assert res.rewritten
    rest = []
    idle = 0
    while idle < 3:
        ms = c.poll_batch(10_000, timeout=0.3)
        idle = 0 if ms else idle + 1
        rest += [(m.offset, m.key, m.value) for m in ms]
    c.close()
    read = first + rest
    _check_equivalent(read, oracle)
    after = [r for r in _expected(oracle, res.cleaned_to) if r[0] > first[-1][0]]
    assert rest == after


# ------------------------------------------------------------ kill -9


CLEAN_ONE = """
import sys
from shmlog.storage import compact
path, head = sys.argv[1], int(sys.argv[2])
compact.clean_partition(path, compact.Params(3600000, 0, 1 << 16), head, 0)
"""


def test_kill9_of_the_cleaner_at_50_steps_loses_nothing(inst):
    """50 real cleaner processes, each killed with SIGKILL at a random one of
    its steps (SHMLOG_CLEANER_KILL_AT_STEP: after writing, patching, each
    index, the commit rename, each index rename, ...), more history between
    kills; after each: recovery, `shmlog check`, and the log read from the
    start holds every key's latest record and only the oracle's records."""
    h = _topic(inst.log)
    p = inst.log.producer()
    rnd, oracle = random.Random(50), {}
    _history(p, "c", 300, rnd, oracle, old_tombstones=False)
    path = _pdir(inst, h)
    killed = steps_seen = 0
    for it in range(50):
        _history(p, "c", 25, rnd, oracle, old_tombstones=False)
        p.flush(durable=True)
        head = inst.log.ring(h, 0, False).ends()[2]
        env = {**os.environ, compact.STEP_ENV: str(rnd.randrange(1, 16))}
        r = subprocess.run([sys.executable, "-c", CLEAN_ONE, path, str(head)], env=env, timeout=60, capture_output=True)
        assert r.returncode in (0, -9), r.stderr.decode()[-2000:]
        killed += r.returncode == -9
        steps_seen += b"kill -9 at cleaner step" in r.stderr
        left = [n for n in os.listdir(path) if n.endswith(".cleaned")]
        rep = storage.recover_partition(path)
        assert rep.damage is None
        assert not [n for n in os.listdir(path) if n.endswith(".cleaned")]
        problems, _ = storage.check_partition(path)
        assert problems == [], (it, left, problems)
        _check_equivalent(_read_all(inst.log, "c"), oracle)
    assert killed >= 35 and steps_seen == killed
    # a pass that is left to finish compacts everything it may
    res = _clean(inst, h)
    assert _read_all(inst.log, "c") == _expected(oracle, res.cleaned_to)


def test_the_cleaner_daemon_runs_under_the_persister_and_comes_back_after_kill9(inst):
    h = _topic(inst.log, min_compaction_lag_ms=0)
    p = inst.log.producer()
    rnd, oracle = random.Random(8), {}
    _history(p, "c", 400, rnd, oracle, old_tombstones=False)
    p.flush(durable=True)
    path = _pdir(inst, h)
    deadline = time.monotonic() + 30
    while compact.read_checkpoint(path) is None:
        assert time.monotonic() < deadline, "no cleaner pass within 30 s"
        time.sleep(0.1)
    d = inst.log.describe_topic("c").partitions[0]
    assert d.cleaned_to and d.cleaner_passes >= 1 and d.cleaner_bytes_reclaimed > 0
    victims = inst._procs("shmlog.service.cleaner")
    assert victims
    inst._kill(victims)  # kill -9; the persister starts another within a second or two
    deadline = time.monotonic() + 20
    while not inst._procs("shmlog.service.cleaner"):
        assert time.monotonic() < deadline, "the persister did not start the cleaner again"
        time.sleep(0.1)
    passes = compact.read_checkpoint(path)["passes"]
    _history(p, "c", 300, rnd, oracle, old_tombstones=False)
    p.flush(durable=True)
    deadline = time.monotonic() + 30
    while compact.read_checkpoint(path)["passes"] == passes:
        assert time.monotonic() < deadline, "the new cleaner made no pass"
        time.sleep(0.1)
    _check_equivalent(_read_all(inst.log, "c"), oracle)


# ------------------------------------------------------------ retention by cleanup_policy


def test_retention_follows_cleanup_policy(inst):
    old = NOW - 10 * HOUR
    for name, policy in (("del", "delete"), ("cmp", "compact"), ("both", "compact,delete")):
        inst.log.create_topic(
            name, partitions=1, ring_bytes=RING, segment_bytes=SEG, retention_ms=HOUR, cleanup_policy=policy
        )
    p = inst.log.producer()
    for name in ("del", "cmp", "both"):
        for i in range(60):
            p.send_batch(name, [b"x" * 200] * 20, keys=[b"k%d" % (i * 20 + j) for j in range(20)], timestamp_ms=old)
    p.flush(durable=True)
    deadline = time.monotonic() + 15
    starts = {}
    while time.monotonic() < deadline:
        starts = {n: inst.log.describe_topic(n).partitions[0].log_start_offset for n in ("del", "cmp", "both")}
        if starts["del"] > 0 and starts["both"] > 0:
            break
        time.sleep(0.2)
    assert starts["del"] > 0 and starts["both"] > 0  # "delete" and "compact,delete": time retention deletes
    assert starts["cmp"] == 0  # "compact" alone: never


# ------------------------------------------------------------ transactions (Kafka's on-disk shape)

FRAME = struct.Struct("<QIHH")


def _batch(base, records, ts, attrs=0, pid=-1, epoch=-1):
    """One RecordBatch v2 by shmlog's encoder, then its header fields set and resealed."""
    keys = b"".join(k or b"" for k, _ in records)
    vals = b"".join(v or b"" for _, v in records)
    kl = ffi.new("int64_t[]", [len(k) if k is not None else -1 for k, _ in records])
    vl = ffi.new("int64_t[]", [len(v) if v is not None else -1 for _, v in records])
    kb, vb = ffi.from_buffer(keys or b"\0"), ffi.from_buffer(vals or b"\0")
    inp = ffi.new("struct shm_batch_in *", {"count": len(records), "values": vb, "value_lens": vl})
    inp.keys, inp.key_lens, inp.timestamp_ms = kb, kl, ts
    n = lib.shm_batch_encoded_size(inp)
    buf = ffi.new("uint8_t[]", n)
    assert lib.shm_batch_encode(buf, n, inp, base, ts) == n
    b = bytearray(ffi.buffer(buf, n))
    struct.pack_into(">h", b, lib.SHM_RB_ATTRIBUTES, attrs)
    struct.pack_into(">qh", b, lib.SHM_RB_PRODUCER_ID, pid, epoch)
    cb = ffi.from_buffer(b)
    lib.shm_batch_seal(cb, n)
    return bytes(b)


def _marker(base, pid, epoch, commit, ts):
    return _batch(base, [(struct.pack(">hh", 0, int(commit)), b"\0\0\0\0\0\0")], ts, 0x30, pid, epoch)


def _segment(d, base_pos, batches):
    """A segment file of these batches (frames naming their positions); returns its end position."""
    out, pos = bytearray(), base_pos
    for b in batches:
        n = 16 + len(b)
        out += FRAME.pack(pos ^ lib.SHM_COMMIT_XOR, n, lib.SHM_FRAME_DATA, 0) + b + b"\0" * ((-n) % 8)
        pos = base_pos + len(out)
    base = struct.unpack_from(">q", batches[0])[0]
    with open(os.path.join(d, f"{base:020d}.log"), "wb") as f:
        f.write(out)
    return pos


def _records(d):
    """(offset, key, value, control) of every record in the partition's files, via the cleaner's own checked walk."""
    out = []
    for s in storage.PartitionLog(d).segments:
        for f in compact.frames(s):
            if f.kind == lib.SHM_FRAME_DATA:
                if f.attrs & lib.SHM_RB_ATTR_CONTROL:
                    out.append((f.base, "marker", None, f.pid))
                else:
                    r = compact._Records(f.body, f.count)
                    out += [(o, k, v, f.pid) for o, k, v in zip(r.offsets, r.keys, [None] * len(r.keys))]
    return out


def test_transactions_aborted_dropped_undecided_untouched_markers_kept(tmp_path):
    d = str(tmp_path / "p")
    os.makedirs(d)
    t, TX = NOW, lib.SHM_RB_ATTR_TRANSACTIONAL
    seg0 = [
        _batch(0, [(b"a", b"a0"), (b"b", b"b0"), (b"c", b"c0")], t),  # plain
        _batch(3, [(b"a", b"a1")], t, TX, pid=7, epoch=1),  # committed by 7's marker
        _batch(4, [(b"b", b"b1")], t, TX, pid=8, epoch=1),  # aborted by 8's marker
        _batch(5, [(b"c", b"c1")], t, TX, pid=9, epoch=1),  # undecided: no marker
        _batch(6, [(b"d", b"d0")], t, TX, pid=10, epoch=1),  # a zombie: 10's marker has epoch 2
    ]
    seg1 = [
        _marker(7, 7, 1, True, t),
        _marker(8, 8, 1, False, t - 2 * HOUR),  # old: dropped once its batch is gone
        _marker(9, 10, 2, False, t - 2 * HOUR),
        _batch(10, [(b"e", b"e0")], t),
    ]
    seg2 = [_batch(11, [(b"f", b"f0")], t)]
    end = _segment(d, 0, seg0)
    end = _segment(d, end, seg1)
    _segment(d, end, seg2)
    storage.recover_partition(d)  # the indexes
    assert storage.check_partition(d) == ([], [])
    params = compact.Params(HOUR, 0, 1 << 20)
    # txn_bound (1 + LSO) = 1 + 9: segment 1 ends at 11 > 9, so only segment 0 is cleanable ...
    res = compact.clean_partition(d, params, 1 << 40, 10)
    assert res.cleaned_to == 7
    # ... and with no open transaction both are
    res = compact.clean_partition(d, params, 1 << 40, 0)
    assert res.cleaned_to == 11
    assert storage.check_partition(d) == ([], [])
    recs = {o: (k, pid) for o, k, _v, pid in _records(d)}
    assert recs[3] == (b"a", 7)  # committed: the latest a
    assert 0 not in recs or recs[0][0] != b"a"
    assert 4 not in recs and 6 not in recs  # aborted and fenced: dropped
    assert recs[5] == (b"c", 9)  # undecided: untouched ...
    assert any(k == b"c" and o < 5 for o, (k, _p) in recs.items())  # ... and c0 stays: c1 may still abort
    assert any(k == b"b" and o < 4 for o, (k, _p) in recs.items())  # the aborted b1 never won over b0
    assert recs[7] == ("marker", 7)  # its transaction's batch survives
    assert 8 not in recs and 9 not in recs  # markers of gone transactions, older than delete_retention_ms
    assert recs[11] == (b"f", -1)


# ------------------------------------------------------------ bad input and damage


def test_keyless_writes_to_a_compacted_topic_are_refused_and_lose_nothing(inst):
    _topic(inst.log)
    p = inst.log.producer()
    md = p.send("c", b"v", key=b"k")
    for bad in (
        lambda: p.send("c", b"x"),
        lambda: p.send("c", None),
        lambda: p.send_batch("c", [b"a", b"b"]),
        lambda: p.send_batch("c", [b"a", b"b"], keys=[b"k", None]),
        lambda: p.send_packed("c", b"ab", [1, 1]),
        lambda: p.produce("c", b"x"),
        lambda: p.produce("c", b"x", partition=0),
    ):
        with pytest.raises(errors.InvalidArgument, match="Compacted topic cannot accept message without key"):
            bad()
    p.produce("c", b"w", key=b"k2")
    p.flush()
    assert [(o, k, v) for o, k, v in _read_all(inst.log, "c")] == [
        (md.offset, b"k", b"v"),
        (md.offset + 1, b"k2", b"w"),
    ]
    # a topic altered to compact: a producer that opens it afterwards refuses too
    inst.log.create_topic("d", partitions=1, ring_bytes=RING)
    inst.log.alter_topic("d", cleanup_policy="compact,delete")
    with pytest.raises(errors.InvalidArgument):
        inst.log.producer().send("d", b"x")


def test_check_accepts_compacted_segments_and_still_finds_damage(inst):
    h = _topic(inst.log)
    p = inst.log.producer()
    _history(p, "c", 500, random.Random(9), {}, old_tombstones=False)
    p.flush(durable=True)
    assert _clean(inst, h).rewritten >= 3
    path = _pdir(inst, h)
    assert storage.check_partition(path) == ([], [])
    segs = storage.PartitionLog(path).segments
    bak = str(path) + ".bak"
    shutil.copytree(path, bak)
    os.unlink(segs[1].path())  # a cleaned segment lost: the offset chain breaks
    problems, _ = storage.check_partition(path)
    assert any("segment files missing" in x for x in problems)
    with pytest.raises(storage.SegmentGap):
        storage.recover_partition(path, repair=False)
    shutil.rmtree(path)
    shutil.copytree(bak, path)
    with open(segs[0].path(), "r+b") as f:  # one flipped byte inside a kept batch
        f.seek(segs[0].size // 2)
        b = f.read(1)
        f.seek(segs[0].size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    problems, _ = storage.check_partition(path)
    assert problems and str(segs[0].path()) in problems[0]


def test_cleaner_once_from_the_command_line(inst):
    h = _topic(inst.log, min_compaction_lag_ms=0)
    p = inst.log.producer()
    _history(p, "c", 300, random.Random(2), {}, old_tombstones=False)
    p.flush(durable=True)
    s = inst.settings
    assert (
        cleaner.main(["--instance", s.instance, "--data-dir", s.data_dir, "--shm-prefix", s.shm_prefix, "--once"]) == 0
    )
    cp = compact.read_checkpoint(_pdir(inst, h))
    assert cp and cp["cleaned_to"] > 0 and cp["bytes_reclaimed"] > 0


def test_a_cleaner_whose_persister_died_before_it_looked_exits(inst):
    """kill -9 of the persister while its cleaner starts up: the cleaner is already init's child
    when it first looks, so getppid() alone would adopt init as its parent and run forever (one
    leaked that way in the suite). The pid it was given says the persister is gone: it exits."""
    h = _topic(inst.log, min_compaction_lag_ms=0)  # noqa: F841 (a compacted topic to clean)
    s = inst.settings
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    t0 = time.monotonic()
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmlog.service.cleaner",
            "--instance",
            s.instance,
            "--data-dir",
            s.data_dir,
            "--shm-prefix",
            s.shm_prefix,
            "--parent",
            str(dead.pid),
        ],
        timeout=60,
    ).returncode
    assert rc == 0 and time.monotonic() - t0 < 30
