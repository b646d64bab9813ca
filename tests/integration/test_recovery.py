"""Recovery of segment files: torn tails, damage in the middle, indexes, `shmlog check`."""

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from shmlog import errors, storage
from shmlog._native import lib
from shmlog.ipc import progress

XOR = lib.SHM_COMMIT_XOR


def _write_log(inst, batches=60, seed=3):
    """A durable partition with frames of varied sizes, fully fsynced; persister stopped."""
    inst.log.create_topic("r", persistence="disk", ring_bytes=1 << 16, segment_bytes=64 << 20)
    rnd = random.Random(seed)
    p = inst.log.producer()
    expect = []
    for _b in range(batches):
        vals = [rnd.randbytes(rnd.choice([0, 5, 100, 700])) for _ in range(rnd.randint(1, 12))]
        p.send_batch("r", vals, partition=0)
        expect += vals
    for b in range(8):  # small frames at the end, after the last index row
        p.send_batch("r", [b"tail%d" % b], partition=0)
        expect.append(b"tail%d" % b)
    p.flush(durable=True, timeout=10)
    assert inst.log.stop_persister()
    d = inst.log.partition_dir("r", 0)
    return d, expect


def _frames(path):
    """[(file_pos, length, first_offset, end_offset)] parsed independently of the C code."""
    data = open(path, "rb").read()
    out, fpos = [], 0
    base = int.from_bytes(data[:8], "little") ^ XOR
    while fpos < len(data):
        assert int.from_bytes(data[fpos : fpos + 8], "little") ^ XOR == base + fpos
        length = int.from_bytes(data[fpos + 8 : fpos + 12], "little")
        kind = int.from_bytes(data[fpos + 12 : fpos + 14], "little")
        body = data[fpos + 16 : fpos + length]
        if kind == lib.SHM_FRAME_DATA:
            first = int.from_bytes(body[0:8], "big")
            end = first + int.from_bytes(body[23:27], "big") + 1
            out.append((fpos, length, first, end))
        fpos += (length + 7) & ~7
    return out


def _segment(d):
    logs = sorted(f for f in os.listdir(d) if f.endswith(".log"))
    assert len(logs) == 1
    return os.path.join(d, logs[0])


def test_truncation_at_200_positions_keeps_exactly_the_complete_batches(inst, tmp_path):
    d, _ = _write_log(inst)
    seg = _segment(d)
    frames = _frames(seg)
    size = os.path.getsize(seg)
    last_three = frames[-3][0]
    cuts = sorted(random.Random(5).sample(range(last_three, size), min(200, size - last_three)))
    assert len(cuts) >= 200
    for cut in cuts:
        scratch = tmp_path / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(d, scratch)
        with open(scratch / os.path.basename(seg), "r+b") as f:
            f.truncate(cut)
        whole = [f for f in frames if f[0] + ((f[1] + 7) & ~7) <= cut]
        rep = storage.recover_partition(str(scratch))
        want_size = whole[-1][0] + ((whole[-1][1] + 7) & ~7)
        assert rep.end_offset == whole[-1][3], f"cut at {cut}"
        assert os.path.getsize(scratch / os.path.basename(seg)) == want_size, f"cut at {cut}"
        assert rep.truncated_bytes == cut - want_size
        idx = storage.PartitionLog(str(scratch)).segments[0].index()
        assert all(
            pos - (int.from_bytes(open(scratch / os.path.basename(seg), "rb").read(8), "little") ^ XOR) < want_size
            for _, pos in idx
        )


def test_truncated_tail_end_to_end(inst):
    """After a crash that tore the last batch, a restart serves exactly the complete batches."""
    d, expect = _write_log(inst)
    seg = _segment(d)
    frames = _frames(seg)
    cut = frames[-1][0] + 40  # inside the last batch
    with open(seg, "r+b") as f:
        f.truncate(cut)
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    assert inst.log.describe_topic("r").partitions[0].end_offset == frames[-1][2]
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("r", 0, 0)])
    got = []
    while True:
        b = c.poll_batch(10_000, timeout=0.3)
        if not b:
            break
        got += b
    assert [m.value or b"" for m in got] == expect[: frames[-1][2]]
    md = inst.log.producer().send("r", b"next", partition=0)
    assert md.offset == frames[-1][2]  # offsets continue; none reused


def _flip(seg, fpos):
    at = fpos + 16 + 61 + 2  # inside the records: covered by the CRC
    with open(seg, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x10]))


def _check_reports(inst, seg, fpos):
    """`shmlog check` names the file and position; --repair does not guess."""
    size = os.path.getsize(seg)
    for extra in ([], ["--repair"]):
        r = subprocess.run(
            [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"], "--json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1, r.stderr
        rep = json.loads(r.stdout)
        assert not rep["ok"]
        problems = " ".join(p for e in rep["partitions"] for p in e["problems"])
        assert seg in problems and f"file position {fpos}" in problems
    assert os.path.getsize(seg) == size


def test_damage_in_the_recovered_tail_quarantines_the_partition(inst):
    d, _ = _write_log(inst)
    seg = _segment(d)
    last_row = storage.PartitionLog(d).segments[0].index()[-1]
    frames = _frames(seg)
    base = int.from_bytes(open(seg, "rb").read(8), "little") ^ XOR
    fpos = last_row[1] - base  # recovery starts its scan at this frame
    assert frames[-1][0] > fpos, "a good frame must follow the damaged one"
    _flip(seg, fpos)
    with pytest.raises(errors.CorruptRecord) as ei:
        storage.recover_partition(d)
    assert seg in str(ei.value) and f"file position {fpos}" in str(ei.value)
    size = os.path.getsize(seg)
    inst.log.close()
    inst.drop_shared_memory()
    log = inst.connect()  # the instance starts; this partition is offline
    why = log.describe_topic("r").partitions[0].offline
    assert seg in why and f"file position {fpos}" in why
    with pytest.raises(errors.PartitionOffline, match="file position"):
        log.producer().send("r", b"x", partition=0)  # refused, not appended after an unknown end
    log.close()
    assert os.path.getsize(seg) == size  # nothing truncated behind the user's back
    _check_reports(inst, seg, fpos)


def test_damage_in_the_middle_is_refused_on_read_and_reported(inst):
    d, expect = _write_log(inst)
    seg = _segment(d)
    frames = _frames(seg)
    fpos, _, first, _ = frames[len(frames) // 3]
    _flip(seg, fpos)
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()  # the tail is intact: the restart succeeds
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("r", 0, 0)])
    got = []
    with pytest.raises(errors.CorruptRecord) as ei:
        for _ in range(100):
            got += c.poll_batch(10_000, timeout=0.3)
    assert seg in str(ei.value) and f"file position {fpos}" in str(ei.value)
    assert [m.value or b"" for m in got] == expect[:first]  # everything before it, nothing after
    _check_reports(inst, seg, fpos)


def test_check_clean_and_repair_torn_tail(inst):
    d, _ = _write_log(inst)
    seg = _segment(d)
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"]], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "r[0]: ok" in r.stdout
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 5)
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"]], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "torn frame at the end" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"], "--repair"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "truncated" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", "/nonexistent-dir"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "not a shmlog data dir" in r.stderr


def test_missing_or_damaged_indexes_are_rebuilt(inst):
    inst.log.create_topic("ix", persistence="disk", ring_bytes=1 << 16, segment_bytes=1 << 16)
    p = inst.log.producer()
    for i in range(3000):
        p.send("ix", b"%08d" % i + b"y" * 92, partition=0)
    p.flush(durable=True, timeout=10)
    assert inst.log.stop_persister()
    d = inst.log.partition_dir("ix", 0)
    segs = storage.PartitionLog(d).segments
    assert len(segs) >= 3
    os.unlink(segs[0].path("index"))  # missing
    with open(segs[1].path("index"), "r+b") as f:  # damaged: garbage positions
        f.write(b"\xff" * 16)
    storage.recover_partition(d)
    for s in storage.PartitionLog(d).segments:
        idx = s.index()
        assert idx and idx[0][0] == s.base_offset
        assert all(s.base_pos <= pos < s.end_pos for _, pos in idx)
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([("ix", 0, 1234)])  # a seek that uses the rebuilt index
    m = c.poll(timeout=2)
    assert m.offset == 1234 and m.value.startswith(b"00001234")


def test_recovery_reports_progress_in_the_data_dir(inst, monkeypatch):
    """A restore writes <data_dir>/recovery.json as it goes (what `shmlog up`
    draws its progress bar from) and removes it at the end."""
    from shmlog.control import plane

    log = inst.log
    log.create_topic("a", partitions=2)
    log.create_topic("b", partitions=1)
    log.create_topic("e", partitions=2, persistence="none")  # not recovered: not counted
    p = log.producer()
    for t, n in (("a", 2), ("b", 1)):
        for part in range(n):
            p.send(t, b"x", partition=part)
    p.flush(durable=True)
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()
    seen = []
    original = progress.ProgressWriter.report

    def spy(self, topic, partition):
        original(self, topic, partition)
        seen.append(progress.read_recovery_progress(inst.kwargs["data_dir"]))

    monkeypatch.setattr(progress.ProgressWriter, "REPORT_S", 0.0)
    monkeypatch.setattr(progress.ProgressWriter, "report", spy)
    log = inst.connect()
    assert [(s.topic, s.partition, s.done, s.total) for s in seen] == [("a", 0, 0, 3), ("a", 1, 1, 3), ("b", 0, 2, 3)]
    assert all(s.pid == os.getpid() for s in seen)
    assert progress.read_recovery_progress(inst.kwargs["data_dir"]) is None
    assert log.describe_topic("a").partitions[1].end_offset == 1
    log.close()
