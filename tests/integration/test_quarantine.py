"""Quarantine (issue 11, trust): damage in one partition's closed segment (a bit
flip, a truncation, a missing file) takes that partition offline at restore
instead of refusing the instance; everything else is served, and restoring the
file brings it back at the next restart."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from shmlog import errors, storage
from test_recovery import _frames
from shmlog.ipc import daemons

N = 3000


def _value(p, i):
    return b"p%d-%08d" % (p, i) + b"y" * 88


def _setup(inst):
    """q: 2 durable partitions of >= 4 segments each; other: a second durable topic."""
    inst.log.create_topic("q", partitions=2, persistence="disk", ring_bytes=1 << 16, segment_bytes=1 << 16)
    inst.log.create_topic("other", persistence="disk", ring_bytes=1 << 16)
    pr = inst.log.producer()
    for i in range(N):
        for p in (0, 1):
            pr.send("q", _value(p, i), partition=p)
        pr.send("other", _value(9, i), partition=0)
    pr.flush(durable=True, timeout=20)
    pr.close()
    segs = storage.PartitionLog(inst.log.partition_dir("q", 0)).segments
    assert len(segs) >= 4
    assert inst.log.stop_persister()
    inst.log.close()
    return segs


def _recovered_frame(seg):
    """(file position, first offset) of a frame recovery scans: the one at the
    segment's last index row (recovery verifies from there; what lies before it
    readers verify), with frames after it."""
    frames = _frames(seg.path())
    rows = seg.index()
    at = rows[-1][1] - seg.base_pos if rows else frames[1][0]
    k = [f[0] for f in frames].index(at)
    assert k + 2 < len(frames), "intact frames must follow the damaged one"
    return frames[k][0], frames[k][2]


def _damage(seg, how):
    """Damages rolled segment seg; returns (file position named, first offset
    not served) and the saved bytes of every file it touched."""
    saved = {seg.path(e): open(seg.path(e), "rb").read() for e in ("log", "index", "timeindex")}
    fpos, first = _recovered_frame(seg)
    if how == "flip":
        at = fpos + 16 + 61 + 2  # inside the records: covered by the CRC
        with open(seg.path(), "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x10]))
    elif how == "truncate":
        with open(seg.path(), "r+b") as f:
            f.truncate(fpos + 40)  # inside a frame: the rolled segment ends early
    else:  # gone: a hole in the chain nobody recorded
        for e in ("log", "index", "timeindex"):
            os.unlink(seg.path(e))
        fpos, first = seg.size, seg.base_offset
    return fpos, first, saved


def _log_sizes(d):
    return {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.endswith(".log")}


def _read(log, topic, p, start=0, limit=None):
    """(records, error) reading partition p from start until nothing comes or an error."""
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, p, start)])
    got = []
    try:
        for _ in range(400):
            b = c.poll_batch(10_000, timeout=0.3)
            if not b or (limit and len(got) >= limit):
                break
            got += b
    except errors.CorruptRecord as e:
        return got, e
    finally:
        c.close()
    return got, None


def _status_json(inst):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmlog",
            "status",
            "--json",
            "--instance",
            inst.kwargs["instance"],
            "--data-dir",
            inst.kwargs["data_dir"],
            "--shm-prefix",
            inst.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _assert_quarantined(inst, log, seg, fpos, first, how):
    where = seg.path() if how != "gone" else storage.PartitionLog(inst.log_dir0).segments[0].path()
    d = log.describe_topic("q")
    p0, p1 = d.partitions
    assert p0.offline and where in p0.offline and p0.offline_offset == first, p0
    if how != "gone":
        assert f"file position {fpos}" in p0.offline
    assert p1.offline is None and p1.end_offset == N
    assert log.describe_topic("other").partitions[0].offline is None
    # the damaged partition: everything before the damage, then CorruptRecord naming the file
    got, err = _read(log, "q", 0)
    assert [m.value for m in got] == [_value(0, i) for i in range(first)]
    assert err is not None and where in str(err)
    # writes to it are refused, naming the file, the position and the way out
    pr = log.producer()
    with pytest.raises(errors.PartitionOffline) as ei:
        pr.send("q", b"x", partition=0)
    assert where in str(ei.value) and "shmlog check --repair" in str(ei.value)
    # everything else is served and takes writes
    assert pr.send("q", b"p1-next", partition=1).offset == N
    assert pr.send("other", b"o-next", partition=0).offset == N
    pr.flush(durable=True, timeout=20)
    got, err = _read(log, "q", 1)
    assert err is None and [m.value for m in got] == [_value(1, i) for i in range(N)] + [b"p1-next"]
    got, err = _read(log, "other", 0)
    assert err is None and len(got) == N + 1
    pr.close()


@pytest.mark.parametrize("how", ["flip", "truncate", "gone"])
def test_damage_in_a_middle_segment_quarantines_only_that_partition(inst, how):
    segs = _setup(inst)
    inst.log_dir0 = segs[0].dir
    fpos, first, saved = _damage(segs[1], how)
    sizes = _log_sizes(segs[0].dir)
    inst.drop_shared_memory()
    inst.log = inst.connect()  # was: CorruptRecord / SegmentGap, the instance refused
    _assert_quarantined(inst, inst.log, segs[1], fpos, first, how)
    # reported by status --json and the text status
    st = _status_json(inst)
    q0 = [q for t in st["topics"] if t["name"] == "q" for q in t["partitions"] if q["partition"] == 0][0]
    assert q0["offline"] and q0["offline_offset"] == first
    # the damaged partition's segment files are untouched (the persister left it alone;
    # recovery rewrote no index of the damaged segment)
    assert _log_sizes(segs[0].dir) == sizes
    assert (
        all(
            open(path, "rb").read() == data
            for path, data in saved.items()
            if os.path.exists(path) and not path.endswith(".log")
        )
        or how == "gone"
    )
    # the operator restores the file: the next restart serves the partition fully again
    assert inst.log.stop_persister()
    inst.log.close()
    for path, data in saved.items():
        with open(path, "wb") as f:
            f.write(data)
    inst.drop_shared_memory()
    inst.log = inst.connect()
    assert inst.log.describe_topic("q").partitions[0].offline is None
    got, err = _read(inst.log, "q", 0)
    assert err is None and [m.value for m in got] == [_value(0, i) for i in range(N)]
    pr = inst.log.producer()
    assert pr.send("q", b"p0-next", partition=0).offset == N  # offsets continue, none reused
    pr.close()


def test_quarantine_is_reported_by_the_supervisor_its_metrics_and_survives_kill9_mid_boot(inst):
    segs = _setup(inst)
    inst.log_dir0 = segs[0].dir
    fpos, first, _ = _damage(segs[1], "flip")
    inst.drop_shared_memory()
    # kill -9 of supervisors during the boot, at growing delays (mid-restore or just after)
    for delay in (0.05, 0.15, 0.3, 0.6):
        proc = inst.start_supervisor(wait=False)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        inst.kill_persister()
    proc = inst.start_supervisor(args=("--metrics-port", "0"))
    out = inst.supervisor_output()
    assert "OFFLINE" in out and segs[1].path() in out, out[-3000:]
    log = inst.connect()
    _assert_quarantined(inst, log, segs[1], fpos, first, "flip")
    from shmlog.service import supervisor

    port = daemons.read_supervisor_state(inst.settings).metrics_port
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'shmlog_partition_offline{partition="0",topic="q"} 1.0' in text
    assert 'shmlog_partition_offline{partition="1",topic="q"} 0.0' in text
    log.close()


def test_damage_in_the_last_segment_quarantines_and_keeps_the_file(inst):
    """Damage followed by intact frames in the LAST segment: not a torn tail, so
    nothing is truncated; the partition is offline from the damage on."""
    segs = _setup(inst)
    last = storage.PartitionLog(segs[0].dir).segments[-1]
    fpos, first = _recovered_frame(last)
    at = fpos + 16 + 61 + 2
    with open(last.path(), "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x10]))
    size = os.path.getsize(last.path())
    inst.drop_shared_memory()
    inst.log = inst.connect()
    p0 = inst.log.describe_topic("q").partitions[0]
    assert p0.offline and last.path() in p0.offline and f"file position {fpos}" in p0.offline
    with pytest.raises(errors.PartitionOffline):
        inst.log.producer().send("q", b"x", partition=0)
    assert os.path.getsize(last.path()) == size
    assert inst.log.describe_topic("q").partitions[1].offline is None
    # a reader gets every record before the damage, then CorruptRecord there (not a silent wait)
    got, err = _read(inst.log, "q", 0)
    assert [m.value for m in got] == [_value(0, i) for i in range(first)]
    assert err is not None and last.path() in str(err) and f"file position {fpos}" in str(err)


def test_storage_quarantine_reports_instead_of_raising(tmp_path, inst):
    segs = _setup(inst)
    fpos, first, _ = _damage(segs[1], "flip")
    with pytest.raises(storage.CorruptSegment):
        storage.recover_partition(segs[0].dir)
    rep = storage.recover_partition(segs[0].dir, quarantine=True)
    assert rep.damage is not None and rep.damage.offset == first
    assert rep.damage.pos == segs[1].base_pos + fpos
    assert rep.end_offset == N  # the walk went on past the damage to the real end
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
