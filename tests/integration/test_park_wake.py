"""test_park_wake.py — a park-mode consumer never loses a wake, whatever ends its spin.

What must hold (csrc/ring.c, above shm_wait_any): the adaptive spin (budget halved after long waits,
the spin cut short when the spinner sees it was descheduled) only decides WHEN a waiter parks; every
park takes the announce -> re-check -> futex_waitv path, so a commit made at any moment (during the
spin, between the spin and the announcement, after it) wakes the consumer.

How it is shown: the producer sends one record, then waits for the consumer's acknowledgement before
it sleeps or spins a random interval and sends the next, so no later commit can rescue a lost wake.
The acknowledgement is a shared word the producer spins on, so its next commit lands a controlled
0-60 us after the consumer began waiting: across the end of the spin budget. The consumer's longest wait slice is raised far past the poll timeout (GROUP_WAIT_S), so one missed
wake leaves it parked until its 5 s poll timeout, and the test fails. One busy process per core runs
throughout, so spins are descheduled and cut short; the gaps straddle the spin budget (none, inside
the 50 us spin, far past it) so every branch of the policy runs.
"""

import multiprocessing
import os
import random
import time

import shmlog.client.consumer as consumer_mod

CTX = multiprocessing.get_context("fork")
N = 4000
RING = 1 << 20


def _hog():
    x = 0
    while True:
        x += 1


def _wait_ack(ack, i):
    end = time.monotonic() + 4.0
    while ack.value != i:
        if time.monotonic() > end:
            raise AssertionError(f"record {i}: no acknowledgement within 4 s (a lost wake?)")


def _producer(inst, ack, seed):
    rnd = random.Random(seed)
    log = inst.connect()
    with log.producer() as p:
        for i in range(N):
            kind = rnd.random()
            if kind < 0.8:  # busy gap inside or around the spin budget (1..50 us): commits at its end
                end = time.perf_counter_ns() + rnd.randrange(0, 60_000)
                while time.perf_counter_ns() < end:
                    pass
            elif kind < 0.9:  # long gap: the spin cannot catch it, the budget shrinks
                time.sleep(rnd.uniform(0.0002, 0.003))
            p.send("pw", i.to_bytes(4, "little"))
            _wait_ack(ack, i)
    log.close()
    return N


def test_park_consumer_gets_every_record_under_cpu_hogs(inst, monkeypatch):
    monkeypatch.setattr(consumer_mod, "GROUP_WAIT_S", 30.0)  # only a wake (or the poll timeout) ends a park
    inst.log.create_topic("pw", persistence="none", ring_bytes=RING)
    hogs = [inst.process(_hog) for _ in range(os.cpu_count() or 1)]
    for h in hogs:
        h.start()
    ack = CTX.RawValue("q", -1)  # the consumer's last record, polled by the producer (no wake of its own)
    c = inst.log.consumer(wait="park", spin_us=50)
    try:
        c.assign([("pw", 0, 0)])
        child = inst.spawn("producer", _producer, inst, ack, 1234)
        worst = 0.0
        for i in range(N):
            t = time.monotonic()
            m = c.poll(5.0)
            worst = max(worst, time.monotonic() - t)
            assert m is not None, f"record {i} never woke the parked consumer (lost wake)"
            assert int.from_bytes(m.value, "little") == i and m.offset == i
            ack.value = i
        assert inst.collect([child], time.monotonic() + 10) == {"producer": N}
        st = c._spin_state
        assert st.waits > 0 and st.parks > 0, (st.waits, st.parks)
        assert 1000 <= st.budget_ns <= 50_000
        print(f"waits {st.waits} parks {st.parks} desched exits {st.desched_exits} worst poll {worst * 1e3:.1f} ms")
    finally:
        c.close()
        for h in hogs:
            h.kill()
            h.join(2)
