"""test_aio.py — shmlog.aio: the asyncio consumer and producer.

Owns: the asyncio API's ordering, exactly-once-per-offset and crash checks
(the sync API's, tests/integration/test_multiprocess.py and test_crash.py), the futex
waiter's promises (one thread per process, not one per consumer; no lost
wake; a cancelled wait leaves nothing announced; more than 127 rings), groups
and commits, and bad arguments. Must never: poll where it checks a wake
(every wait below is a bounded await on the API).
"""

import asyncio
import os
import random
import signal
import threading
import time

import pytest

import shmlog
from shmlog import errors
from shmlog.client import aio
from shmlog._native import ffi, lib


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def data_waiters(log, topic, partition=0):
    ring = log.ring(log.topic_handle(topic), partition, writable=False)
    return ffi.cast("struct shm_ring_header *", ring.hdr).data_waiters


def _producer(kwargs, topic, pid, n, use_produce):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    acked = {}
    if use_produce:

        def cb(err, msg, seq=None):
            assert err is None, err
            acked[int(msg.value.split(b":")[1])] = (msg.partition, msg.offset)

        for seq in range(n):
            p.produce(topic, b"%d:%d" % (pid, seq), key=b"%d" % (seq % 5), on_delivery=cb)
            if seq % 100 == 0:
                time.sleep(0.001)
        assert p.flush(30) == 0
    else:
        for seq in range(n):
            md = p.send(topic, b"%d:%d" % (pid, seq), key=b"%d" % (seq % 5))
            acked[seq] = (md.partition, md.offset)
            if seq % 100 == 0:
                time.sleep(0.001)
    p.close()
    log.close()
    return acked


def test_multiprocess_producers_to_asyncio_consumer(inst):
    inst.log.create_topic("mp", partitions=2, persistence="none", ring_bytes=4 << 20)
    n, procs = 3000, 3

    async def consume():
        async with aio.AIOConsumer(inst.log, "mp", auto_offset_reset="earliest") as c:
            kids = [inst.spawn(f"p{i}", _producer, inst.kwargs, "mp", i, n, i == 0) for i in range(procs)]
            got = []
            deadline = time.monotonic() + 60
            while len(got) < n * procs and time.monotonic() < deadline:
                for tp, ms in (await c.getmany(timeout_ms=1000, max_records=700)).items():
                    assert all((m.topic, m.partition) == tp for m in ms)
                    got += ms
            return kids, got

    kids, got = run(consume(), 90)
    res = inst.collect(kids, time.monotonic() + 60)
    assert len(got) == n * procs
    seen = {(m.partition, m.offset) for m in got}
    assert len(seen) == len(got), "an offset delivered twice"
    for part in range(2):
        offs = [m.offset for m in got if m.partition == part]
        assert offs == list(range(len(offs))), f"partition {part}: offsets not consecutive and in order"
    at = {(m.partition, m.offset): m.value for m in got}
    for i in range(procs):
        acked = res[f"p{i}"]
        assert len(acked) == n
        assert all(at[po] == b"%d:%d" % (i, seq) for seq, po in acked.items()), f"producer {i}: acked != read"
        for part in range(2):  # each producer's records keep their order in a partition
            seqs = [int(m.value.split(b":")[1]) for m in got if m.partition == part and m.value.startswith(b"%d:" % i)]
            assert seqs == sorted(seqs)


def _victim(kwargs, topic):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    lib.shm_test_set_hold_ns(60 * 10**9)  # reserve, then sit there until killed
    p.send(topic, b"victim", partition=0)


def test_kill_minus_9_producer_while_asyncio_consumer_waits(inst):
    inst.log.create_topic("crash", persistence="none", ring_bytes=1 << 20)
    p = inst.log.producer()
    p.send("crash", b"before", partition=0)

    async def go():
        async with aio.AIOConsumer(inst.log, "crash", auto_offset_reset="earliest") as c:
            first = await c.getone()
            assert first.value == b"before"
            waiting = asyncio.ensure_future(c.getmany(timeout_ms=30_000))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            vic = inst.process(_victim, inst.kwargs, "crash")
            vic.start()
            deadline = time.monotonic() + 20
            while inst.log.describe_topic("crash").partitions[0].end_offset < 2:  # victim reserved
                assert time.monotonic() < deadline, "victim never reserved"
                await asyncio.sleep(0.01)
            os.kill(vic.pid, signal.SIGKILL)
            vic.join(5)
            for i in range(50):
                p.send("crash", b"after-%d" % i, partition=0)
            got = []
            t0 = time.monotonic()
            r = await waiting
            for ms in r.values():
                got += ms
            while len(got) < 50 and time.monotonic() - t0 < 20:
                for ms in (await c.getmany(timeout_ms=1000)).values():
                    got += ms
            return got, time.monotonic() - t0

    got, took = run(go())
    assert [m.value for m in got] == [b"after-%d" % i for i in range(50)]
    assert [m.offset for m in got] == list(range(2, 52)), "the dead reservation's offset is a gap, nothing twice"
    assert inst.log.describe_topic("crash").partitions[0].sealed_writes == 1
    assert took < 10, f"waited {took:.1f} s behind a dead producer (unblock timeout 100 ms)"
    assert data_waiters(inst.log, "crash") == 0


def test_one_waiter_thread_for_many_waiting_consumers(inst):
    topics = [f"t{i}" for i in range(25)]
    for t in topics:
        inst.log.create_topic(t, persistence="none", ring_bytes=1 << 16)
    p = inst.log.producer()

    async def go():
        cs = [aio.AIOConsumer(inst.log, t) for t in topics]
        for c in cs:
            await c.start()
        before = threading.active_count()
        tasks = [asyncio.ensure_future(c.getone()) for c in cs]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in tasks)
        threads = threading.active_count() - before
        waiters = aio.waiter_threads()
        # the last to register is woken first: its words reached the waiter thread
        # while the thread was parked (through the control word)
        p.send(topics[-1], b"m%d" % (len(topics) - 1))
        await asyncio.wait_for(asyncio.shield(tasks[-1]), 5)
        assert not any(t.done() for t in tasks[:-1])
        for i, t in enumerate(topics[:-1]):
            p.send(t, b"m%d" % i)
        got = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for c in cs:
            await c.stop()
        return threads, waiters, got

    threads, waiters, got = run(go())
    assert waiters == 1
    assert threads <= 1, f"{threads} threads for 25 waiting consumers"
    assert [m.value for m in got] == [b"m%d" % i for i in range(25)]
    assert all(data_waiters(inst.log, t) == 0 for t in topics)


def test_more_rings_than_one_futex_waitv(inst):
    inst.log.create_topic("wide", partitions=140, persistence="none", ring_bytes=1 << 16)
    p = inst.log.producer()

    async def go():
        async with aio.AIOConsumer(inst.log, "wide") as c:
            task = asyncio.ensure_future(c.getmany(timeout_ms=20_000))
            await asyncio.sleep(0.2)
            shards = aio.waiter_threads()
            p.send("wide", b"last", partition=139)
            t0 = time.monotonic()
            r = await task
            return shards, r, time.monotonic() - t0

    shards, r, took = run(go())
    assert shards == 2
    assert {tp: [m.value for m in ms] for tp, ms in r.items()} == {aio.TopicPartition("wide", 139): [b"last"]}
    assert took < 5


def test_no_lost_wake_between_arm_and_wait(inst):
    """The producer commits at random moments around the consumer's arm and
    registration; every record must wake its waiter (a lost wake hangs the
    getone past the 5 s bound)."""
    inst.log.create_topic("race", persistence="none", ring_bytes=4 << 20)
    p = inst.log.producer()
    rounds = 300
    go_ev = threading.Event()
    stop = threading.Event()
    sent = []

    def writer():
        rng = random.Random(7)
        for i in range(rounds):
            go_ev.wait(10)
            go_ev.clear()
            if stop.is_set():
                return
            t = time.perf_counter() + rng.random() * 300e-6
            while time.perf_counter() < t:
                pass
            sent.append(p.send("race", b"%d" % i).offset)

    async def go():
        async with aio.AIOConsumer(inst.log, "race", auto_offset_reset="earliest") as c:
            th = threading.Thread(target=writer)
            th.start()
            try:
                for i in range(rounds):
                    go_ev.set()
                    m = await asyncio.wait_for(c.getone(), 5)
                    assert m.value == b"%d" % i
            finally:
                stop.set()
                go_ev.set()
                th.join(10)

    run(go(), 120)
    assert sent == list(range(rounds))
    assert data_waiters(inst.log, "race") == 0


def test_cancelled_wait_leaves_nothing_announced(inst):
    inst.log.create_topic("c", partitions=3, persistence="none", ring_bytes=1 << 16)

    async def go():
        async with aio.AIOConsumer(inst.log, "c") as c:
            t = asyncio.ensure_future(c.getone())
            await asyncio.sleep(0.1)
            assert [data_waiters(inst.log, "c", i) for i in range(3)] == [1, 1, 1]
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            r = await c.getmany(timeout_ms=50)
            assert r == {}
            return [s.nwords for s in aio._the_waiter().shards]

    nwords = run(go())
    assert [data_waiters(inst.log, "c", i) for i in range(3)] == [0, 0, 0]
    assert set(nwords) == {0}


def test_group_members_share_partitions_commit_and_resume(inst):
    inst.log.create_topic("g", partitions=4, persistence="none", ring_bytes=1 << 20)
    p = inst.log.producer()
    for i in range(400):
        p.send("g", b"%d" % i, partition=i % 4)

    async def go():
        a = aio.AIOConsumer(inst.log, "g", group_id="grp", auto_offset_reset="earliest", enable_auto_commit=False)
        b = aio.AIOConsumer(inst.log, "g", group_id="grp", auto_offset_reset="earliest", enable_auto_commit=False)
        await a.start()
        await b.start()
        got = {"a": [], "b": []}
        deadline = time.monotonic() + 30
        while len(got["a"]) + len(got["b"]) < 400 and time.monotonic() < deadline:
            for name, c in (("a", a), ("b", b)):
                for ms in (await c.getmany(timeout_ms=100)).values():
                    got[name] += ms
        sa, sb = a.assignment(), b.assignment()
        await a.commit()
        await b.commit()
        await a.stop()
        await b.stop()
        for i in range(400, 420):
            p.send("g", b"%d" % i, partition=i % 4)
        async with aio.AIOConsumer(inst.log, "g", group_id="grp", enable_auto_commit=False) as c:
            rest = []
            async for m in c:
                rest.append(m)
                if len(rest) == 20:
                    break
            pos = await c.position(aio.TopicPartition("g", 0))
        return got, sa, sb, rest, pos

    got, sa, sb, rest, pos = run(go())
    assert sa and sb and not sa & sb and len(sa | sb) == 4
    allm = got["a"] + got["b"]
    assert sorted(int(m.value) for m in allm) == list(range(400))
    assert {(m.topic, m.partition) for m in got["a"]} <= sa
    assert sorted(int(m.value) for m in rest) == list(range(400, 420)), "resumed elsewhere than the commit"
    assert pos == 105


def test_aio_producer_futures_and_errors(inst):
    inst.log.create_topic("ap", partitions=2, persistence="none", ring_bytes=1 << 20)
    inst.log._start_persister = False
    inst.log.create_topic("full", ring_bytes=1 << 16)
    inst.kill_persister()

    async def go():
        async with aio.AIOProducer(inst.log, linger_ms=1) as p:
            futs = [await p.send("ap", b"%d" % i, partition=0) for i in range(500)]
            mds = await asyncio.gather(*futs)
            assert [m.offset for m in mds] == list(range(500))
            md = await p.send_and_wait("ap", b"k", key=b"key", headers=[("h", b"v")])
            assert isinstance(md, shmlog.RecordMetadata) if hasattr(shmlog, "RecordMetadata") else md.offset >= 0
            bm = await p.send_batch([b"a", b"b", b"c"], "ap", partition=1)
            assert [(x.partition, x.count) for x in bm] == [(1, 3)]
            with pytest.raises(errors.InvalidType):
                await p.send("ap", "text")
            with pytest.raises(errors.UnknownTopicOrPartition):
                await p.send("nope", b"x")
        with pytest.raises(errors.Closed):
            await p.send("ap", b"after stop")
        async with aio.AIOProducer(inst.log, message_timeout_ms=300, linger_ms=1) as p:
            futs = [await p.send("full", b"y" * 200) for _ in range(600)]
            res = await asyncio.gather(*futs, return_exceptions=True)
        ok = [r for r in res if not isinstance(r, BaseException)]
        bad = [r for r in res if isinstance(r, BaseException)]
        assert ok and bad and all(isinstance(e, errors.BufferFull) for e in bad)
        assert [r.offset for r in ok] == list(range(len(ok)))
        c = aio.AIOConsumer(inst.log, "ap")
        with pytest.raises(errors.Closed):
            await c.getmany()
        await c.start()
        with pytest.raises(errors.InvalidArgument):
            await c.getmany(timeout_ms=-1)
        with pytest.raises(errors.InvalidArgument):
            await c.getmany(max_records=0)
        await c.stop()
        with pytest.raises(errors.InvalidArgument):
            aio.AIOProducer(inst.log, on_delivery=print)

    run(go())


def test_seek_and_max_records(inst):
    inst.log.create_topic("s", persistence="none", ring_bytes=1 << 20)
    p = inst.log.producer()
    p.send_batch("s", [b"%d" % i for i in range(100)], partition=0)

    async def go():
        async with aio.AIOConsumer(inst.log, "s", auto_offset_reset="earliest") as c:
            r = await c.getmany(timeout_ms=1000, max_records=30)
            tp = aio.TopicPartition("s", 0)
            assert [m.offset for m in r[tp]] == list(range(30))
            c.seek(tp, 90)
            r = await c.getmany(timeout_ms=1000)
            assert [m.offset for m in r[tp]] == list(range(90, 100))
            await c.seek_to_beginning(tp)
            assert (await c.getone()).offset == 0
            await c.seek_to_end(tp)
            assert await c.getmany(timeout_ms=50) == {}

    run(go())


def test_arm_then_commit_wakes_a_wait_started_later(inst):
    """The C half of the protocol: after shm_wait_arm returned 'armed', a
    commit bumps data_seq, so a futex_waitv started only afterwards (the
    waiter thread's, at any later time) returns at once instead of sleeping."""
    inst.log.create_topic("arm", persistence="none", ring_bytes=1 << 16)
    c = inst.log.consumer(["arm"])
    part = c._parts[0]
    hdrs = ffi.new("void *[]", [part.ring.hdr])
    bases = ffi.new("struct shm_ring *[]", [part.ring.h])
    curs = ffi.new("struct shm_cursor *[]", [part.cur])
    vals = ffi.new("uint32_t[]", 1)
    sd = ffi.new("int64_t *")
    assert lib.shm_wait_arm(hdrs, bases, curs, 1, 10**9, vals, sd) == -1
    inst.log.producer().send("arm", b"x")
    word = ffi.addressof(ffi.cast("struct shm_ring_header *", part.ring.hdr), "data_seq")
    words = ffi.new("uint32_t *[]", [word])
    t0 = time.monotonic()
    rc = lib.shm_futex_waitv(words, vals, 1, 3 * 10**9)
    assert rc == 0 and time.monotonic() - t0 < 1.0, "the commit did not bump data_seq for the armed waiter"
    lib.shm_wait_disarm(hdrs, 1)
    # armed again after the commit: the re-check reports it ready and leaves nothing announced
    assert lib.shm_wait_arm(hdrs, bases, curs, 1, 10**9, vals, sd) == 0
    assert data_waiters(inst.log, "arm") == 0
    c.close()


def _wait_then_unmap(kwargs, rounds):
    async def one(log):
        c = aio.AIOConsumer(log, "um")
        await c.start()
        assert await c.getmany(timeout_ms=2) == {}
        await c.stop()

    for _ in range(rounds):
        log = shmlog.connect(**kwargs)
        asyncio.run(one(log))
        log.close()  # unmaps the ring the waiter thread just waited on
    return rounds


def test_waiter_never_reads_a_ring_unmapped_after_its_wait(inst):
    """Wait, time out, unregister, close the Log (unmapping the ring), again and
    again: the waiter thread wakes for each unregister and must not load the
    word of a ring that is gone (that was a SIGSEGV)."""
    inst.log.create_topic("um", persistence="none", ring_bytes=1 << 16)
    kids = [inst.spawn("unmap", _wait_then_unmap, inst.kwargs, 300)]
    assert inst.collect(kids, time.monotonic() + 120)["unmap"] == 300
