"""test_crash.py — producers killed with SIGKILL between reserve and commit.

What must hold (docs/DESIGN.md, "A producer killed mid-write"; csrc/ring.c, "A
producer dying at each step"): a reservation whose owner died is sealed as
an offset gap (counted in sealed_writes) once a reader has waited the unblock
timeout on it, so no reader stalls for long; committed records are never
lost or damaged; a reader never gets garbage; and a live but slow producer
is never sealed over, however long it holds its reservation.

The hook lib.shm_test_set_hold_ns(ns) makes the calling process sleep between
reserving a frame and committing it, so a kill lands inside the window at
will. Every value is self-checking (producer id, sequence, 64-bit mix).
Children report through pickle files in tmp_path; every wait is bounded.
"""

import multiprocessing
import os
import random
import signal
import struct
import time


import shmlog
from shmlog._native import lib

CTX = multiprocessing.get_context("fork")
MASK = (1 << 64) - 1
REC = struct.Struct("<IIQQ")  # producer id, sequence, two mixes: 24 bytes


def _mix(pid: int, seq: int) -> tuple[int, int]:
    a = (pid * 0x9E3779B97F4A7C15 + seq * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & MASK
    return a, ((a ^ (a >> 29)) * 0xD6E8FEB86659FD93) & MASK


def payload(pid: int, seq: int) -> bytes:
    return REC.pack(pid, seq, *_mix(pid, seq))


def check(value) -> tuple[int, int] | None:
    """(pid, seq) of an intact value, else None."""
    if value is None or len(value) != REC.size:
        return None
    pid, seq, a, b = REC.unpack(value)
    return (pid, seq) if (a, b) == _mix(pid, seq) else None


# ------------------------------------------------------------------ children


LIVE_IDS = (1, 2)
VICTIM_BASE = 1000


def _live_producer(kwargs, topic, pid, stop, budget_s=120):
    """Keeps writing (paced, ~1 record/ms) until stop; returns {seq: acknowledged offset}."""
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    rng = random.Random(pid)
    acked = {}
    seq = 0
    deadline = time.monotonic() + budget_s
    while not stop.is_set() and time.monotonic() < deadline:
        if pid == LIVE_IDS[0]:
            acked[seq] = p.send(topic, payload(pid, seq), partition=0).offset
            seq += 1
        else:
            k = rng.randint(1, 8)
            (bm,) = p.send_batch(topic, [payload(pid, s) for s in range(seq, seq + k)], partition=0)
            assert bm.count == k
            for i in range(k):
                acked[seq + i] = bm.base_offset + i
            seq += k
        time.sleep(0.001)
    p.close()
    log.close()
    return acked


def _victim(kwargs, topic, vid, hold_ns, pause_s):
    """Writes single records until SIGKILLed; with hold_ns each one sits reserved, uncommitted."""
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    lib.shm_test_set_hold_ns(hold_ns)
    seq = 0
    deadline = time.monotonic() + 30  # never outlive a broken parent for long
    while time.monotonic() < deadline:
        p.send(topic, payload(vid, seq), partition=0)
        seq += 1
        if pause_s:
            time.sleep(pause_s)


def _reader(kwargs, topic, final_end, budget_s):
    """Reads from offset 0 until final_end (set by the parent once every writer is gone).
    Measures the longest wait for a record while something was reserved ahead of it."""
    log = shmlog.connect(**kwargs)
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, 0)])
    got = []  # (offset, pid, seq)
    bad = []
    max_gap = 0.0
    last = time.monotonic()
    deadline = last + budget_s
    timed_out = True
    while time.monotonic() < deadline:
        fe = final_end.value
        if fe >= 0 and c.position(topic, 0) >= fe:
            timed_out = False
            break
        ms = c.poll_batch(5_000, timeout=0.05)
        now = time.monotonic()
        if ms:
            max_gap = max(max_gap, now - last)
            last = now
            for m in ms:
                ps = check(m.value)
                if ps is None:
                    if len(bad) < 20:
                        bad.append((m.offset, m.value))
                    continue
                got.append((m.offset, *ps))
        elif c.position(topic, 0) >= c.end_offsets()[(topic, 0)]:
            last = now  # caught up with nothing reserved: idle, not stuck
    tail = c.poll_batch(100, timeout=0.2)
    c.close()
    log.close()
    return {
        "got": got,
        "bad": bad,
        "max_gap": max_gap,
        "timed_out": timed_out,
        "after_end": [(m.offset, m.value) for m in tail],
    }


def _kill_loop(inst, topic, n, concurrent, victim_args, budget_s):
    """Starts victims (at most `concurrent` at a time) and SIGKILLs each at its chosen moment
    until n are dead or budget_s is spent. victim_args(vid) -> (hold_ns, pause_s, kill_after_s).
    Returns (kills, number of victims started)."""
    active = []  # [kill_at, process]
    started = kills = 0
    end = time.monotonic() + budget_s
    while kills < n and time.monotonic() < end:
        while len(active) < concurrent and started < n:
            hold, pause, after = victim_args(VICTIM_BASE + started)
            pr = inst.process(_victim, inst.kwargs, topic, VICTIM_BASE + started, hold, pause)
            pr.start()
            started += 1
            active.append([time.monotonic() + after, pr])
        active.sort(key=lambda a: a[0])
        at, pr = active.pop(0)
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.kill(pr.pid, signal.SIGKILL)
        pr.join(5)
        assert not pr.is_alive(), "a SIGKILLed victim did not die"
        assert pr.exitcode == -signal.SIGKILL, (
            f"victim {pr.pid} ended by itself with exit code {pr.exitcode} before it was killed"
        )
        kills += 1
    for _, pr in active:
        os.kill(pr.pid, signal.SIGKILL)
        pr.join(5)
    return kills, started


# ------------------------------------------------------------------ tests

KILLS = 220
CONCURRENT_VICTIMS = 4


def test_kill_minus_9_between_reserve_and_commit(inst, tmp_path):
    topic = "crash"
    # live producers write ~2k records/s of 112-200 B frames: even 60 s fit in 16 MiB
    inst.log.create_topic(topic, persistence="none", ring_bytes=16 << 20)
    stop = CTX.Event()
    final_end = CTX.RawValue("q", -1)
    t0 = time.monotonic()
    reader = inst.spawn("reader", _reader, inst.kwargs, topic, final_end, 100)
    live = [inst.spawn(f"live-{pid}", _live_producer, inst.kwargs, topic, pid, stop) for pid in LIVE_IDS]

    rng = random.Random(0xC0FFEE)

    def victim_args(vid):
        # 3 in 4 hold each write 20-50 ms (kills land inside the hold, or in the pause
        # between writes); 1 in 4 never hold (kills land anywhere in the write path)
        hold = rng.randint(20, 50) * 1_000_000 if rng.random() < 0.75 else 0
        return hold, rng.uniform(0, 0.02), rng.uniform(0.0, 0.12)

    kills, victims = _kill_loop(inst, topic, KILLS, CONCURRENT_VICTIMS, victim_args, 45)
    kill_seconds = time.monotonic() - t0
    stop.set()
    res = inst.collect(live, time.monotonic() + 30)
    final_end.value = inst.log.describe_topic(topic).partitions[0].end_offset
    res.update(inst.collect([reader], t0 + 150))
    r = res["reader"]
    info = inst.log.describe_topic(topic).partitions[0]  # after the reader sealed what it met
    assert info.end_offset == final_end.value, "someone wrote after every writer was gone"

    assert kills >= 200, f"only {kills} kills in {kill_seconds:.1f} s"
    assert not r["timed_out"], (
        f"reader stuck: {len(r['got'])} records, end {info.end_offset}, sealed {info.sealed_writes}"
    )
    assert not r["bad"], f"garbage delivered: {r['bad'][:3]}"
    assert not r["after_end"], f"records past the end: {r['after_end'][:3]}"
    offsets = [o for o, _, _ in r["got"]]
    assert all(b > a for a, b in zip(offsets, offsets[1:])), "offsets not strictly increasing"
    by_producer = {}
    for off, pid, seq in r["got"]:
        by_producer.setdefault(pid, []).append((seq, off))
    # no acknowledged record lost: every offset a live producer was given holds its record
    for pid in LIVE_IDS:
        acked = res[f"live-{pid}"]
        got = dict(by_producer.get(pid, []))
        assert len(acked) > 100, f"live producer {pid} wrote only {len(acked)} records"
        lost = [(s, o) for s, o in acked.items() if got.get(s) != o]
        assert not lost, f"live producer {pid}: {len(lost)} acknowledged records lost, e.g. {lost[:5]}"
        assert len(got) == len(acked), f"live producer {pid}: records nobody acknowledged"
    # a victim's committed records are intact, in order, and a prefix of what it wrote
    for pid, recs in by_producer.items():
        seqs = [s for s, _ in recs]
        if pid not in LIVE_IDS:
            assert VICTIM_BASE <= pid < VICTIM_BASE + victims, f"unknown producer {pid}"
            assert seqs == list(range(len(seqs))), f"victim {pid}: sequences {seqs}"
    # every offset not delivered is exactly one sealed reservation (victims write one record each)
    missing = info.end_offset - len(offsets)
    assert info.sealed_writes > 0, "no reservation was ever sealed: kills never landed inside a hold"
    assert missing == info.sealed_writes, (
        f"{missing} offsets never delivered but {info.sealed_writes} reservations sealed"
    )
    assert info.sealed_writes < kills, "every kill landed inside a hold: none outside"
    assert info.overwritten_frames == 0, f"ring too small for this test: {info}"
    # unblock timeout is 100 ms: a stuck reader moves on well within a second
    assert r["max_gap"] < 1.0, f"a reader waited {r['max_gap']:.3f} s for a record while kills happened"


def _slow_producer(kwargs, topic, pid, n, hold_ns):
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    lib.shm_test_set_hold_ns(hold_ns)
    acked = []
    for seq in range(n):
        t = time.monotonic()
        acked.append((p.send(topic, payload(pid, seq), partition=0).offset, time.monotonic() - t))
    p.close()
    log.close()
    return acked


def _wait_end(log, topic, at_least, deadline):
    while True:
        end = log.describe_topic(topic).partitions[0].end_offset
        if end >= at_least:
            return end
        assert time.monotonic() < deadline, f"end offset stuck at {end}, waiting for {at_least}"
        time.sleep(0.0005)


def test_live_slow_producer_never_sealed_for_readers(inst, tmp_path):
    """A live producer holding its reservation 300 ms (3 x the unblock timeout) while fast
    records queue up behind it: the reader waits, seals nothing, then gets everything intact."""
    topic = "slow"
    inst.log.create_topic(topic, persistence="none", ring_bytes=1 << 20)
    rounds, hold = 3, 300_000_000
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, 0)])
    fast = inst.log.producer()
    deadline = time.monotonic() + 20
    slow = inst.spawn("slow", _slow_producer, inst.kwargs, topic, 7, rounds, hold)
    fast_acked = {}
    delivered = []
    waited = []
    fseq = 0
    for rnd in range(rounds):
        end = _wait_end(inst.log, topic, len(delivered) + 1, deadline)  # the slow record is reserved
        t_reserved = time.monotonic()
        for _ in range(3):
            fast_acked[fseq] = fast.send(topic, payload(8, fseq), partition=0).offset
            fseq += 1
        want = end + 3
        first_at = None
        while len(delivered) < want:
            assert time.monotonic() < deadline, f"round {rnd}: {len(delivered)} of {want} records delivered"
            for m in c.poll_batch(100, timeout=0.05):
                ps = check(m.value)
                assert ps is not None, f"garbage at offset {m.offset}: {m.value!r}"
                if first_at is None:
                    first_at = time.monotonic()
                delivered.append((m.offset, *ps))
            assert inst.log.describe_topic(topic).partitions[0].sealed_writes == 0, "a live producer was sealed"
        waited.append(first_at - t_reserved)
    acked = inst.collect([slow], deadline)["slow"]
    assert [o for o, _, _ in delivered] == list(range(len(delivered))), "offsets not dense and in order"
    got = {(pid, seq): off for off, pid, seq in delivered}
    assert len(got) == len(delivered) == rounds * 4
    for seq, (off, took) in enumerate(acked):
        assert got[(7, seq)] == off, f"slow record {seq}: acknowledged at {off}, delivered at {got.get((7, seq))}"
        assert took >= 0.25, f"the hold hook did not hold ({took:.3f} s)"
    for seq, off in fast_acked.items():
        assert got[(8, seq)] == off
    # the reader really waited past the unblock timeout (and chose not to seal)
    assert max(waited) > 0.15, f"reader never waited on the slow producer: {waited}"
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.sealed_writes == 0 and info.end_offset == rounds * 4


def test_live_slow_producer_never_sealed_for_writers(inst, tmp_path):
    """A writer that needs the slot of a frame a live producer still holds (full ring)
    waits for it instead of sealing it, and gets no BufferFull within max_block_ms."""
    topic = "slowfull"
    inst.log.create_topic(topic, persistence="none", ring_bytes=1 << 16)
    deadline = time.monotonic() + 20
    slow = inst.spawn("slow", _slow_producer, inst.kwargs, topic, 7, 1, 400_000_000)
    _wait_end(inst.log, topic, 1, deadline)  # the slow frame sits at position 0, uncommitted
    p = inst.log.producer(max_block_ms=5_000)
    took = []
    for i in range(24):  # ~96 KiB into a 64 KiB ring: laps the slow frame
        t = time.monotonic()
        assert p.send(topic, payload(9, i) + bytes(4000), partition=0).offset == i + 1
        took.append(time.monotonic() - t)
    ((off, held),) = inst.collect([slow], deadline)["slow"]
    assert off == 0 and held >= 0.35
    assert max(took) > 0.15, f"no writer ever waited on the slow frame: {max(took):.3f} s"
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.sealed_writes == 0, info
    assert info.end_offset == 25 and info.log_start_offset > 0


PAD = bytes(1000)


def _lapping_writer(kwargs, topic, pid, stop, budget_s):
    """Writes 1 KiB records flat out into a small ring, so it laps dead reservations itself;
    returns its slowest send and how many it made."""
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=10_000)
    worst = 0.0
    seq = 0
    deadline = time.monotonic() + budget_s
    while not stop.is_set() and time.monotonic() < deadline:
        t = time.monotonic()
        p.send(topic, payload(pid, seq) + PAD, partition=0)
        worst = max(worst, time.monotonic() - t)
        seq += 1
    p.close()
    log.close()
    return {"worst": worst, "count": seq}


def test_kill_minus_9_writers_lap_dead_reservations(inst, tmp_path):
    """With no reader at all, writers that come round to a dead producer's reservation a lap
    later seal it themselves after the unblock timeout and go on: no writer stalls for long,
    nothing raises BufferFull, and what the ring holds afterwards reads back intact."""
    topic = "crashlap"
    inst.log.create_topic(topic, persistence="none", ring_bytes=1 << 16)
    stop = CTX.Event()
    writer = inst.spawn("writer", _lapping_writer, inst.kwargs, topic, LIVE_IDS[0], stop, 60)
    started = time.monotonic() + 10
    while inst.log.describe_topic(topic).partitions[0].end_offset < 200:
        assert time.monotonic() < started, "the lapping writer does not write"
        time.sleep(0.001)
    rng = random.Random(0xDEAD)
    # victims hold every write 30-50 ms and die at a random moment: mostly inside a hold,
    # sometimes while waiting for room (they write into the same full ring), or before writing
    kills, _ = _kill_loop(
        inst, topic, 40, 2, lambda vid: (rng.randint(30, 50) * 1_000_000, 0.0, rng.uniform(0.0, 0.08)), 30
    )
    time.sleep(0.3)  # the writer laps (and seals) whatever the last kills left
    stop.set()
    w = inst.collect([writer], time.monotonic() + 30)["writer"]
    info = inst.log.describe_topic(topic).partitions[0]
    assert kills == 40
    assert info.sealed_writes > 0, f"no dead reservation was sealed by a writer: {info}"
    # one send may meet a dead reservation (100 ms unblock timeout) right behind a live one
    # still holding (<= 50 ms), twice over with two victims: well under 1.5 s with slack
    assert w["worst"] < 1.5, f"a writer waited {w['worst']:.3f} s on a dead producer's reservation"
    assert info.overwritten_frames > 0 and info.log_start_offset > 0, info
    # what the ring still holds reads back intact and in order
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, info.log_start_offset)])
    # read until the position reaches the end: a dead reservation left at the read position
    # is sealed only after the unblock timeout, so one empty poll is not the end (under load)
    last, n = -1, 0
    deadline = time.monotonic() + 30
    while c.position(topic, 0) < info.end_offset:
        assert time.monotonic() < deadline, f"stuck at {c.position(topic, 0)} of {info}"
        for m in c.poll_batch(1000, timeout=0.2):
            assert m.offset > last
            last = m.offset
            v = m.value
            ok = (
                check(v)
                if v is not None and len(v) == REC.size
                else check(v[: REC.size])
                if v is not None and len(v) == REC.size + len(PAD) and v[REC.size :] == PAD
                else None
            )
            assert ok is not None, f"garbage at offset {m.offset}: {v[:32]!r}"
            n += 1
    assert n > 0 and last < info.end_offset


def test_stuck_partition_does_not_hold_back_others(inst, tmp_path):
    """One consumer on two partitions: while partition 0 waits on a live slow writer (600 ms
    holds) and then on a dead one (sealed after the unblock timeout), partition 1's records
    keep arriving at once; partition 0's records arrive intact, with exactly one gap."""
    topic = "twoparts"
    inst.log.create_topic(topic, persistence="none", partitions=2, ring_bytes=1 << 20)
    c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest")
    p = inst.log.producer()
    deadline = time.monotonic() + 30
    slow = inst.spawn("slow", _slow_producer, inst.kwargs, topic, 7, 2, 600_000_000)
    sent = {}  # partition 1: seq -> send time
    late = []  # partition 1: delivery latencies
    p0 = []
    victim = None
    seq = 0
    resumed = 0.0
    phase_end = None
    while phase_end is None or time.monotonic() < phase_end:
        assert time.monotonic() < deadline, f"partition 0 delivered {len(p0)} records by the deadline"
        if victim is None and not slow[1].is_alive():
            # the slow writer is done: now a writer dies holding partition 0's next reservation
            end0 = inst.log.describe_topic(topic).partitions[0].end_offset
            victim = inst.process(_victim, inst.kwargs, topic, VICTIM_BASE, 5_000_000_000, 0.0)
            victim.start()
            _wait_end_part(inst.log, topic, 0, end0 + 1, deadline)
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(5)
            # and a record behind the dead reservation, which must come through after the seal
            p.send(topic, payload(9, 0), partition=0)
            phase_end = time.monotonic() + 0.5
            resumed = time.monotonic()  # this process was busy, not the consumer
        sent[seq] = time.monotonic()
        assert p.send(topic, payload(8, seq), partition=1).partition == 1
        seq += 1
        for m in c.poll_batch(100, timeout=0.005):
            ps = check(m.value)
            assert ps is not None, f"garbage at {m.partition}/{m.offset}"
            if m.partition == 1:
                assert ps[0] == 8
                late.append(time.monotonic() - max(sent[ps[1]], resumed))
            else:
                p0.append((m.offset, *ps))
        time.sleep(0.001)
    while True:  # drain
        ms = c.poll_batch(100, timeout=0.3)
        if not ms:
            break
        for m in ms:
            if m.partition == 0:
                p0.append((m.offset, *check(m.value)))
            else:
                late.append(time.monotonic() - max(sent[check(m.value)[1]], resumed))
    acked = inst.collect([slow], deadline)["slow"]
    assert [(o, pid, s) for o, pid, s in p0] == [(acked[0][0], 7, 0), (acked[1][0], 7, 1), (3, 9, 0)], p0
    assert len(late) == seq, f"partition 1: {len(late)} of {seq} records delivered"
    assert max(late) < 0.25, f"partition 1 waited {max(late):.3f} s behind a stuck partition 0"
    d = inst.log.describe_topic(topic)
    assert d.partitions[0].sealed_writes == 1 and d.partitions[1].sealed_writes == 0, d
    assert d.partitions[0].end_offset == 4


def _wait_end_part(log, topic, partition, at_least, deadline):
    while log.describe_topic(topic).partitions[partition].end_offset < at_least:
        assert time.monotonic() < deadline, f"partition {partition} end offset stays below {at_least}"
        time.sleep(0.0005)
