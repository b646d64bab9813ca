"""Durable topics: persister, reads from disk, restart, retention, disk full."""

import os
import random
import subprocess
import time

import pytest

import shmlog
from shmlog import errors, storage
from shmlog.service import persister
from shmlog._native import lib
from shmlog import Log
from shmlog.ipc import daemons


def durable(inst, name="d", **kw):
    kw.setdefault("ring_bytes", 1 << 16)
    kw.setdefault("segment_bytes", 1 << 20)
    inst.log.create_topic(name, persistence="disk", **kw)
    return name


def value(i: int, size: int = 100) -> bytes:
    return (b"%010d" % i) * (size // 10)


def read_all(log, topic, partition=0, start=0, timeout=0.3, **kw):
    c = log.consumer(auto_offset_reset=kw.pop("auto_offset_reset", "earliest"), **kw)
    c.assign([(topic, partition, start)])
    out = []
    while True:
        b = c.poll_batch(10_000, timeout=timeout)
        if not b:
            break
        out += b
    c.close()
    return out


def test_records_survive_ring_laps_and_read_back_from_disk(inst):
    t = durable(inst)
    p = inst.log.producer()
    n = 20_000  # ~2.4 MB through a 64 KiB ring: ~40 laps
    for i in range(n):
        assert p.send(t, value(i), partition=0).offset == i
    p.flush(durable=True, timeout=20)
    segs = sorted(f for f in os.listdir(inst.log.partition_dir(t, 0)) if f.endswith(".log"))
    assert len(segs) >= 2, "segments roll by size"
    got = read_all(inst.log, t)
    assert [m.offset for m in got] == list(range(n))
    assert all(m.value == value(m.offset) for m in got)


def _live_producer(kwargs, topic, start, count, delay):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    for i in range(start, start + count):
        p.send(topic, value(i), partition=0)
        if delay and i % 100 == 0:
            time.sleep(delay)
    p.flush(durable=True, timeout=30)


def test_consumer_from_zero_after_ten_laps_joins_the_live_ring(inst):
    """Starts at offset 0 when the ring has lapped ten times, reads the files,
    then the ring, while a producer keeps writing: no gap, no duplicate."""
    t = durable(inst)
    p = inst.log.producer()
    first = 8_000  # > 10 laps of 64 KiB with 120-byte frames
    for i in range(first):
        p.send(t, value(i), partition=0)
    p.flush(durable=True, timeout=20)
    more = 20_000
    child = inst.process(_live_producer, inst.kwargs, t, first, more, 0.0005)
    child.start()
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([(t, 0, 0)])
    expect, deadline = 0, time.monotonic() + 60
    while expect < first + more and time.monotonic() < deadline:
        for m in c.poll_batch(5000, timeout=1.0):
            assert m.offset == expect, f"gap or duplicate at {expect}: got {m.offset}"
            assert m.value == value(expect)
            expect += 1
    child.join(30)
    assert expect == first + more
    assert child.exitcode == 0


def test_restart_after_clean_stop_and_after_crash(inst):
    t = durable(inst, partitions=3)
    inst.log.create_topic("eph", persistence="none", ring_bytes=1 << 16)
    p = inst.log.producer()
    for i in range(3000):
        p.send(t, value(i), key=b"k%d" % i)
    p.flush(durable=True, timeout=20)
    before = [x.end_offset for x in inst.log.describe_topic(t).partitions]
    for crash in (False, True):
        if crash:
            inst.kill_persister()  # kill -9
        else:
            assert inst.log.stop_persister()  # SIGTERM: everything fsynced
        inst.log.close()
        inst.drop_shared_memory()  # a reboot
        inst.log = inst.connect()
        assert inst.log.list_topics() == ["d", "eph"]
        assert [x.end_offset for x in inst.log.describe_topic(t).partitions] == before
        d = inst.log.describe_topic(t)
        assert d.config.partitions == 3 and d.config.persistence == "disk"
        assert daemons.persister_running(inst.kwargs["data_dir"])
    # offsets continue, never reused
    md = inst.log.producer().send(t, b"next", partition=0)
    assert md.offset == before[0]


def _crash_round_producer(kwargs, topic, round_no, acked_path):
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=5000)
    i = 0
    while True:
        p.send_batch(topic, [b"%d:%d" % (round_no, i + k) for k in range(20)], partition=0)
        i += 20
        if i % 100 == 0:
            p.flush(durable=True, timeout=10)
            with open(acked_path, "a") as f:  # acknowledged: on disk
                f.write(f"{round_no}:{i}\n")
                f.flush()


def _crash_round_consumer(kwargs, topic):
    log = shmlog.connect(**kwargs)
    c = log.consumer(topics=[topic], auto_offset_reset="earliest")
    while True:
        c.poll_batch(1000, timeout=0.05)


def test_kill_everything_repeatedly_loses_no_acknowledged_record(inst, tmp_path):
    """kill -9 of producer, consumer and persister at random moments, 100 rounds;
    half the rounds also drop shared memory (a reboot). Every record acknowledged
    by flush(durable=True) is there exactly once, in order; offsets never reused."""
    t = durable(inst, ring_bytes=1 << 16, segment_bytes=256 << 10)
    acked_path = str(tmp_path / "acked")
    rnd = random.Random(7)
    rounds = int(os.environ.get("SHMLOG_CRASH_ROUNDS", "100"))
    for r in range(rounds):
        inst.log.close()
        if r % 2:
            inst.drop_shared_memory()
        inst.log = inst.connect()  # restores and restarts the persister
        prod = inst.process(_crash_round_producer, inst.kwargs, t, r, acked_path)
        cons = inst.process(_crash_round_consumer, inst.kwargs, t)
        prod.start()
        cons.start()
        time.sleep(rnd.uniform(0.005, 0.08))
        victims = [prod, cons]
        rnd.shuffle(victims)
        for v in victims:
            os.kill(v.pid, 9)
        inst.kill_persister()
        for v in victims:
            v.join(5)
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    acked = {}
    if os.path.exists(acked_path):
        for line in open(acked_path):
            rn, n = map(int, line.split(":"))
            acked[rn] = max(acked.get(rn, 0), n)
    assert sum(acked.values()) > 0, "no round acknowledged anything: the test proves nothing"
    got = read_all(inst.log, t, timeout=1.0)
    offsets = [m.offset for m in got]
    assert offsets == sorted(set(offsets)), "offsets reused or out of order"
    seen = {}
    for m in got:
        rn, i = map(int, m.value.split(b":"))
        seen.setdefault(rn, []).append(i)
    for rn, n in acked.items():
        mine = seen.get(rn, [])
        assert mine[:n] == list(range(n)), f"round {rn}: acknowledged records missing or out of order"
        assert len(set(mine)) == len(mine), f"round {rn}: duplicates"


def test_retention_by_size_and_time(inst):
    t = durable(inst, segment_bytes=1 << 20, retention_bytes=2 << 20)
    p = inst.log.producer()
    for i in range(60_000):  # ~7 MB
        p.send(t, value(i), partition=0)
    p.flush(durable=True, timeout=20)
    d = inst.log.partition_dir(t, 0)

    def total():  # retention may delete a file while we look
        n = 0
        for f in os.listdir(d):
            try:
                n += os.path.getsize(os.path.join(d, f)) if f.endswith(".log") else 0
            except FileNotFoundError:
                pass
        return n

    deadline = time.monotonic() + 10  # the persister enforces retention every second
    while total() >= (2 << 20) + (1 << 20) + (64 << 10) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert total() < (2 << 20) + (1 << 20) + (64 << 10)
    start = inst.log.describe_topic(t).partitions[0].log_start_offset
    assert start > 0
    got = read_all(inst.log, t)  # earliest: from the new start
    assert got[0].offset == start and got[-1].offset == 59_999
    with pytest.raises(errors.OffsetOutOfRange):
        c = inst.log.consumer(auto_offset_reset="none")
        c.assign([(t, 0, 0)])
        c.poll(timeout=1)

    t2 = durable(inst, name="aged", segment_bytes=1 << 20, retention_ms=300)
    for i in range(20_000):
        p.send(t2, value(i), partition=0)
    p.flush(durable=True, timeout=20)
    deadline = time.monotonic() + 10
    while inst.log.describe_topic(t2).partitions[0].log_start_offset == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inst.log.describe_topic(t2).partitions[0].log_start_offset > 0


def test_fsync_policies_and_durable_flush(inst):
    for policy in ("never", "always", "interval:50"):
        t = durable(inst, name="f-" + policy.replace(":", ""), fsync=policy)
        p = inst.log.producer()
        for i in range(500):
            p.send(t, value(i), partition=0)
        p.flush(durable=True, timeout=10)
        r = p._writers[t].rings[0]
        assert r.ends()[3] <= lib.shm_ring_counter(r.base, lib.SHM_COUNTER_FSYNCED)  # fsynced >= tail


def test_offsets_for_times(inst):
    t = durable(inst)
    p = inst.log.producer()
    for i in range(3000):
        p.send(t, value(i), partition=0, timestamp_ms=1_000_000 + i)
    p.flush(durable=True, timeout=10)
    c = inst.log.consumer(topics=[t])
    assert c.offsets_for_times(t, 0, 1_000_000 + 1234) == 1234
    assert c.offsets_for_times(t, 0, 0) == 0
    assert c.offsets_for_times(t, 0, 9_000_000) is None


@pytest.mark.root_only  # mounting a small tmpfs needs root
def test_disk_full_gives_back_pressure_and_resumes(inst, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        # another instance (one name = one data dir), same shm prefix: cleaned up with inst
        kw = dict(inst.kwargs, data_dir=str(mnt / "data"), instance=inst.kwargs["instance"] + "-small")
        log = shmlog.connect(**kw)
        log.create_topic("full", persistence="disk", ring_bytes=1 << 16, segment_bytes=4 << 20)
        p = log.producer(max_block_ms=300)
        acked = 0
        with pytest.raises(errors.BufferFull, match="No space left"):
            for i in range(100_000):
                p.send("full", value(i, 1000), partition=0)
                acked = i + 1
        assert acked > 500
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        deadline = time.monotonic() + 10
        while True:  # the persister resumes on its own
            try:
                p.send("full", value(acked, 1000), partition=0)
                acked += 1
                break
            except errors.BufferFull:
                assert time.monotonic() < deadline, "the persister did not resume"
        p.flush(durable=True, timeout=10)
        got = read_all(log, "full")
        assert [m.offset for m in got] == list(range(acked))
        assert all(m.value == value(m.offset, 1000) for m in got)
        log.destroy()
    finally:
        pid = daemons.persister_pid(str(mnt / "data"))
        if pid and daemons.persister_running(str(mnt / "data")):
            os.kill(pid, 9)
            time.sleep(0.2)
        subprocess.run(["umount", "-l", str(mnt)])


def test_delete_durable_topic_removes_files(inst):
    t = durable(inst)
    p = inst.log.producer()
    p.send(t, b"x", partition=0)
    p.flush(durable=True, timeout=10)
    tdir = os.path.dirname(inst.log.partition_dir(t, 0))
    inst.log.delete_topic(t)
    assert not os.path.exists(tdir)
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    assert inst.log.list_topics() == []


def _restore_then_die(kwargs):
    from shmlog.control import plane

    real = plane.ControlPlane._create_entry
    made = []

    def create_then_die(self, name, cfg, tid, bases, *rest):
        if made:  # dies with the lock held, the second topic half-made
            os._exit(9)
        made.append(name)
        return real(self, name, cfg, tid, bases, *rest)

    plane.ControlPlane._create_entry = create_then_die
    shmlog.connect(**kwargs, autostart=False)


def test_a_restorer_that_dies_midway_is_finished_by_the_next_connect(inst):
    for t in ("a", "b"):
        durable(inst, name=t)
        p = inst.log.producer()
        for i in range(100):
            p.send(t, value(i), partition=0)
        p.flush(durable=True, timeout=10)
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()
    child = inst.process(_restore_then_die, inst.kwargs)
    child.start()
    child.join(30)
    assert child.exitcode == 9
    assert [n for n in inst.segments() if n.endswith(".ctl")]  # left behind, half restored
    inst.log = inst.connect()
    assert inst.log.list_topics() == ["a", "b"]
    assert [inst.log.describe_topic(t).partitions[0].end_offset for t in ("a", "b")] == [100, 100]
    assert len(read_all(inst.log, "b")) == 100


def test_producers_outlive_a_dead_persister(inst):
    """kill -9 of the persister: a blocked producer starts a new one and goes on."""
    t = durable(inst)  # 64 KiB ring
    p = inst.log.producer(max_block_ms=15_000)
    p.send(t, value(0), partition=0)
    inst.kill_persister()
    assert not daemons.persister_running(inst.kwargs["data_dir"])
    n = 5_000  # ~10 laps of the ring: impossible without a persister
    for i in range(1, n):
        p.send(t, value(i), partition=0)
    assert daemons.persister_running(inst.kwargs["data_dir"])
    p.flush(durable=True, timeout=10)
    got = read_all(inst.log, t)
    assert [m.offset for m in got] == list(range(n))
    assert all(m.value == value(m.offset) for m in got)
