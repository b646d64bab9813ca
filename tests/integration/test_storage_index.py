"""Segment timestamps, time and offset indexes, gaps in the segment chain
(issue 11, defects 5 and 7): retention by a segment's largest timestamp,
offsets_for_times with out-of-order timestamps, a missing middle segment, a
damaged .index row, and what `shmlog check` says about each."""

import json
import os
import subprocess
import sys
import time

import pytest

from shmlog import errors, storage
from shmlog.service import persister

HOUR_MS = 3600_000


def _wait(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _segments(inst, topic, partition=0):
    return storage.PartitionLog(inst.log.partition_dir(topic, partition)).segments


def _read_all(log, topic, start=0, timeout=0.3):
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, start)])
    out = []
    try:
        while True:
            b = c.poll_batch(10_000, timeout=timeout)
            if not b:
                return out
            out += b
    finally:
        c.close()


def _fresh_then_old_at_the_end(inst, topic, restart_before_roll=False):
    """Segment 1: 220 fresh records, then batches stamped two hours ago at its
    end (their own copy runs, each over an index row); segment 2: fresh."""
    inst.log.create_topic(topic, persistence="disk", ring_bytes=1 << 17, segment_bytes=1 << 16, retention_ms=HOUR_MS)
    p = inst.log.producer()
    now = int(time.time() * 1000)
    for i in range(220):
        p.send(topic, b"fresh%05d" % i + b"f" * 90, partition=0, timestamp_ms=now)
    p.flush(durable=True, timeout=10)
    old = now - 2 * HOUR_MS
    while _segments(inst, topic)[-1].size < (1 << 16) - 12_000:
        p.send_batch(topic, [b"o" * 1000] * 5, partition=0, timestamp_ms=old)
        p.flush(durable=True, timeout=10)
    p.send_batch(topic, [b"o" * 1000] * 12, partition=0, timestamp_ms=old)  # fills segment 1
    p.flush(durable=True, timeout=10)
    assert len(_segments(inst, topic)) == 1
    if restart_before_roll:  # recovery recomputes the segment's max timestamp
        inst.kill_persister()
        inst.log.ensure_persister()
    for i in range(20):  # rolls: segment 1 is no longer active
        p.send(topic, b"later%05d" % i, partition=0)
    p.flush(durable=True, timeout=10)
    assert len(_segments(inst, topic)) == 2
    return now


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after-restart"])
def test_retention_keeps_a_segment_whose_old_batch_is_at_its_end(inst, restart):
    """Defect 5: 1-hour retention deleted 220 records written seconds before
    because the last time-index row held the maximum of one copy run only."""
    _fresh_then_old_at_the_end(inst, "keep", restart_before_roll=restart)
    time.sleep(persister.RETENTION_EVERY_S * 2.5)  # the persister checks retention every second
    assert _segments(inst, "keep")[0].base_offset == 0, "retention deleted the segment of fresh records"
    inst.log.close()
    inst.kill_persister()
    inst.drop_shared_memory()  # read them back from the files
    inst.log = inst.connect()
    assert inst.log.describe_topic("keep").partitions[0].log_start_offset == 0
    got = _read_all(inst.log, "keep")
    assert [m.offset for m in got] == list(range(len(got))) and len(got) > 220
    assert all(got[i].value.startswith(b"fresh%05d" % i) for i in range(220))


def test_retention_still_deletes_a_segment_whose_newest_record_is_old(inst):
    inst.log.create_topic("aged", persistence="disk", ring_bytes=1 << 17, segment_bytes=1 << 16, retention_ms=HOUR_MS)
    p = inst.log.producer()
    old = int(time.time() * 1000) - 2 * HOUR_MS
    while len(_segments(inst, "aged")) < 3:
        p.send_batch("aged", [b"x" * 1000] * 4, partition=0, timestamp_ms=old)
        p.flush(durable=True, timeout=10)
    _wait(lambda: inst.log.describe_topic("aged").partitions[0].log_start_offset > 0, what="retention")


def _out_of_order(inst, topic, segment_bytes=64 << 20):
    """Offset 0 carries the latest timestamp; everything after it is older, in
    copy runs of their own that each write index rows."""
    inst.log.create_topic(topic, persistence="disk", ring_bytes=1 << 16, segment_bytes=segment_bytes, retention_ms=None)
    p = inst.log.producer()
    base = 1_700_000_000_000
    p.send(topic, b"late", partition=0, timestamp_ms=base + 10_000)
    p.flush(durable=True, timeout=10)
    for r in range(40):
        p.send_batch(topic, [b"e" * 500] * 3, partition=0, timestamp_ms=base + r)
        p.flush(durable=True, timeout=10)
    return base


def test_offsets_for_times_is_the_earliest_offset_at_or_after_the_target(inst):
    base = _out_of_order(inst, "ooo")
    c = inst.log.consumer(topics=["ooo"])
    assert c.offsets_for_times("ooo", 0, base + 5_000) == 0  # the old code said 120
    assert c.offsets_for_times("ooo", 0, base + 20) == 0
    assert c.offsets_for_times("ooo", 0, base + 10_001) is None
    inst.log.close()
    inst.kill_persister()
    inst.drop_shared_memory()
    inst.log = inst.connect()  # restored from the files
    c = inst.log.consumer(topics=["ooo"])
    assert c.offsets_for_times("ooo", 0, base + 5_000) == 0


def test_offsets_for_times_across_segment_rolls(inst):
    """The record at or after the target is in segment 1, after its last index
    row; segment 2's rows all hold older timestamps."""
    inst.log.create_topic(
        "roll", persistence="disk", ring_bytes=1 << 17, segment_bytes=1 << 16, retention_ms=None
    )  # its 2023 timestamps: 7-day retention would race the test
    p = inst.log.producer()
    base = 1_700_000_000_000
    n = 0
    while not _segments(inst, "roll") or _segments(inst, "roll")[-1].size < (1 << 16) - 3000:
        p.send_batch("roll", [b"a" * 500] * 2, partition=0, timestamp_ms=base)
        p.flush(durable=True, timeout=10)
        n += 2
    p.send("roll", b"the-late-one", partition=0, timestamp_ms=base + 9_000)
    late = n
    p.send_batch("roll", [b"b" * 1000] * 3, partition=0, timestamp_ms=base)
    p.flush(durable=True, timeout=10)
    while len(_segments(inst, "roll")) < 3:
        p.send_batch("roll", [b"c" * 1000] * 5, partition=0, timestamp_ms=base + 1)
        p.flush(durable=True, timeout=10)
    for restarted in (False, True):
        c = inst.log.consumer(topics=["roll"])
        assert c.offsets_for_times("roll", 0, base + 5_000) == late, f"restarted={restarted}"
        assert c.offsets_for_times("roll", 0, base + 1) == late
        assert c.offsets_for_times("roll", 0, base) == 0
        c.close()
        inst.log.close()
        inst.kill_persister()
        inst.drop_shared_memory()
        inst.log = inst.connect()


def test_listoffsets_by_time_over_the_listener_code_path(inst):
    from shmlog.kafka.data import DataPath

    base = _out_of_order(inst, "lo")
    dp = DataPath(inst.log)
    h = inst.log.topic_handle("lo")
    assert dp.offset_for_time(h, 0, base + 5_000) == (0, base + 10_000)
    assert dp.offset_for_time(h, 0, base + 10_001) == (-1, -1)


def test_time_index_is_monotonic_and_ends_with_the_segment_max(inst):
    """Each time-index row (T, O): T is the largest timestamp of the segment's
    records below offset O; a rolled segment's last row is (its max, its end)."""
    _fresh_then_old_at_the_end(inst, "ti")
    segs = _segments(inst, "ti")
    first = segs[0]
    rows = first.time_index()
    assert rows == sorted(rows) and all(a[1] <= b[1] for a, b in zip(rows, rows[1:]))
    assert rows[-1][1] == segs[1].base_offset
    assert rows[-1][0] == max(m.timestamp_ms for m in _read_all(inst.log, "ti")[: segs[1].base_offset])


# ------------------------------------------------------------ defect 7: gaps and damaged indexes


def _three_segments(inst, topic="g", n=3000):
    inst.log.create_topic(topic, persistence="disk", ring_bytes=1 << 16, segment_bytes=1 << 16)
    p = inst.log.producer()
    for i in range(n):
        p.send(topic, b"%08d" % i + b"y" * 92, partition=0)
    p.flush(durable=True, timeout=10)
    segs = _segments(inst, topic)
    assert len(segs) >= 4
    return segs


def test_a_missing_middle_segment_is_an_error_not_a_stall(inst):
    segs = _three_segments(inst)
    gone = segs[1]
    for ext in ("log", "index", "timeindex"):
        os.unlink(gone.path(ext))
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("g", 0, 0)])
    got = []
    with pytest.raises(errors.CorruptRecord) as ei:
        for _ in range(50):
            got += c.poll_batch(10_000, timeout=0.2)
    msg = str(ei.value)
    assert segs[0].path() in msg and segs[2].path() in msg
    assert f"offsets {gone.base_offset}..{segs[2].base_offset - 1}" in msg
    assert [m.offset for m in got] == list(range(gone.base_offset))
    c.close()
    # the Kafka listener's fetch answers CORRUPT_MESSAGE at the hole (not a dropped connection)
    from shmlog.kafka import codes
    from shmlog.kafka.data import DataPath, FetchCursor

    dp, fc, h = DataPath(inst.log), FetchCursor(), inst.log.topic_handle("g")
    off, seen = 0, []
    for _ in range(200):
        code, data = dp.read(fc, h, 0, off, 1 << 16)
        seen.append(code)
        if code != codes.NONE or not data:
            break
        off = fc.next_offset
    assert seen[-1] == codes.CORRUPT_MESSAGE and off == gone.base_offset
    assert dp.read(FetchCursor(), h, 0, gone.base_offset + 3, 1 << 16)[0] == codes.CORRUPT_MESSAGE
    # a seek into the missing range says the same
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([("g", 0, gone.base_offset + 3)])
    with pytest.raises(errors.CorruptRecord, match="missing"):
        c.poll(timeout=1)
    c.close()
    # and a restart quarantines the partition (tests/integration/test_quarantine.py), naming the files
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()
    why = inst.connect().describe_topic("g").partitions[0].offline
    assert segs[0].path() in why and segs[2].path() in why
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    problems = " ".join(p for e in json.loads(r.stdout)["partitions"] for p in e["problems"])
    assert "missing" in problems and segs[2].path() in problems


def test_a_loss_the_persister_recorded_does_not_refuse_the_next_restart(inst):
    """Files that end below the ring's head (the last segment lost while the ring
    lived): the persister starts a segment at the ring's head and records the
    hole in <base>.lost; a reboot accepts that hole, readers are still told."""
    segs = _three_segments(inst)
    assert inst.log.stop_persister()
    for s in segs[-2:]:  # more than the ring still holds
        for ext in ("log", "index", "timeindex"):
            os.unlink(s.path(ext))
    inst.log.ensure_persister()
    p = inst.log.producer()
    p.send("g", b"after", partition=0)
    p.flush(durable=True, timeout=10)
    # the segment that follows the hole records it (the ring's head..end plus the
    # new record may fill it, so it need not be the last one)
    after = [s for s in _segments(inst, "g") if s.base_pos > segs[-3].base_pos]
    assert after and after[0].lost() == (segs[-3].end_pos, segs[-2].base_offset)
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()  # accepted: a loss already reported
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([("g", 0, segs[-2].base_offset - 1)])
    assert c.poll(timeout=2).offset == segs[-2].base_offset - 1
    with pytest.raises(errors.CorruptRecord, match="recorded"):
        c.poll_batch(100, timeout=1)
    c.close()


def test_a_persister_lapped_after_a_loss_records_one_hole_and_goes_on(inst):
    """After a recorded loss the ring's persisted position is past the
    persister's, so producers may overwrite the ring's head before the first
    copy. The persister used to scan the overwritten frame forever (durable
    flushes timed out); it must move to the new head, keep one hole from where
    the files end, and leave no empty segment behind."""
    segs = _three_segments(inst)
    assert inst.log.stop_persister()
    for s in segs[-2:]:
        for ext in ("log", "index", "timeindex"):
            os.unlink(s.path(ext))
    h = inst.log.topic_handle("g")
    part = persister._Partition(h, 0, inst.log.ring(h, 0, writable=True), inst.kwargs["data_dir"])
    try:
        first_head = part.pos
        inst.log._start_persister = False  # this process is the only copier
        p = inst.log.producer()
        for i in range(300):  # room up to the persisted position: laps the head
            p.send("g", b"L%07d" % i + b"z" * 92, partition=0)
        p.flush(timeout=10)
        assert part.ring.ends()[2] > first_head
        assert part.copy() > 0
        part.fsync()
    finally:
        part.close()
        inst.log._start_persister = True
    after = [s for s in _segments(inst, "g") if s.base_pos > segs[-3].base_pos]
    assert after and after[0].base_pos > first_head and after[0].size > 0
    assert after[0].lost() == (segs[-3].end_pos, segs[-2].base_offset)
    storage.recover_partition(inst.log.partition_dir("g", 0))  # the chain is accepted
    inst.log.ensure_persister()
    p.send("g", b"after", partition=0)
    p.flush(durable=True, timeout=10)


def _damage_row(seg, row, offset_delta=0, pos_delta=0):
    rows = seg.index()
    o, p = rows[row]
    with open(seg.path("index"), "r+b") as f:
        f.seek(row * 16)
        f.write(storage.INDEX_PAIR.pack(o + offset_delta, p + pos_delta))
    return o, p


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after-restart"])
def test_a_damaged_index_row_never_makes_a_seek_skip_records(inst, restart):
    segs = _three_segments(inst)
    seg = segs[0]
    rows = seg.index()
    k = len(rows) // 2
    o, _ = _damage_row(seg, k, offset_delta=-15)  # the row claims an earlier offset
    _damage_row(seg, k + 1, pos_delta=8)  # this one points inside a frame
    if restart:
        assert inst.log.stop_persister()
        inst.log.close()
        inst.drop_shared_memory()
        inst.log = inst.connect()
    for target in (o - 15, o - 1, o, rows[k + 1][0], rows[k + 1][0] + 1):
        c = inst.log.consumer(auto_offset_reset="none")
        c.assign([("g", 0, target)])
        m = c.poll(timeout=2)
        assert m is not None and m.offset == target and m.value.startswith(b"%08d" % target)
        c.close()


def test_recovery_rebuilds_a_damaged_index_of_the_last_segment(inst):
    segs = _three_segments(inst, n=1200)
    last = segs[-1]
    rows = last.index()
    assert len(rows) >= 2
    _damage_row(last, len(rows) - 1, offset_delta=+3)  # the row recovery resumes from
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()  # not refused: the log itself is intact
    assert inst.log.describe_topic("g").partitions[0].end_offset == 1200
    assert storage.PartitionLog(last.dir).segments[-1].index() == rows
    got = _read_all(inst.log, "g")
    assert [m.offset for m in got] == list(range(1200))


def test_check_reads_index_and_time_index_files(inst):
    segs = _three_segments(inst)
    assert inst.log.stop_persister()
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"]], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    _damage_row(segs[0], 2, offset_delta=-1)
    ts = segs[1].time_index()
    with open(segs[1].path("timeindex"), "r+b") as f:  # a row that understates its max
        f.seek(3 * 16)
        f.write(storage.INDEX_PAIR.pack(ts[3][0] - 5, ts[3][1]))
    with open(segs[2].path("index"), "ab") as f:  # a torn row
        f.write(b"\x01\x02\x03")
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    problems = [p for e in json.loads(r.stdout)["partitions"] for p in e["problems"]]
    text = "\n".join(problems)
    assert f"{segs[0].path('index')}: row 2 (file position 32)" in text, text
    assert f"{segs[1].path('timeindex')}: row 3 (file position 48)" in text, text
    assert f"{segs[2].path('index')}" in text and "not a whole number of rows" in text, text
    r = subprocess.run(
        [sys.executable, "-m", "shmlog", "check", inst.kwargs["data_dir"], "--repair"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout
    assert "rebuilt" in r.stdout


def test_a_damaged_length_in_the_tail_is_refused_not_truncated(inst):
    """A frame whose length field now runs past the end of the file, with intact
    frames after it, looked like a torn tail: recovery truncated the intact
    frames silently (found by tests/native/test_segment_fuzz.py)."""
    _three_segments(inst, n=1200)
    p = inst.log.producer()
    for i in range(60):  # until intact frames follow the last row's
        last = _segments(inst, "g")[-1]
        fpos = last.index()[-1][1] - last.base_pos  # recovery scans from this frame
        if last.size - fpos > 1000:
            break
        p.send("g", b"more%04d" % i + b"y" * 92, partition=0)
        p.flush(durable=True, timeout=10)
    assert inst.log.stop_persister()
    size = os.path.getsize(last.path())
    assert size - fpos > 1000, "intact frames follow it"
    with open(last.path(), "r+b") as f:
        f.seek(fpos + 10)  # the length's third byte: +64 KiB
        b = f.read(1)
        f.seek(fpos + 10)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(errors.CorruptRecord) as ei:
        storage.recover_partition(last.dir)
    assert last.path() in str(ei.value) and f"file position {fpos}" in str(ei.value)
    assert os.path.getsize(last.path()) == size
