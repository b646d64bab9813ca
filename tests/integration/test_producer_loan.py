"""test_producer_loan.py — Producer.reserve: one record written in place (issue 13.3).

What must hold (csrc/ring.c, "Producer loans", L1-L4): the loan's buffer is
the value area of the record's frame in the ring; leaving the block commits
it (CRC over what is there), an exception aborts it as a gap (offset
consumed, readers pass it) and propagates; the buffer is released at the end
(a stale one raises, a derived view that outlives the loan aborts it); a
process killed -9 inside a loan is sealed as a gap, nothing committed is lost
and later producers go on; a live holder is never sealed over; the loan holds
its own producer slot, so the same thread's send to the same partition never
deadlocks; durable topics persist a loan's frame like any other.
Real processes, real SIGKILL, bounded waits.
Must never: leave a child or a thread running (inst kills children; threads join with a bound).
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

import shmlog
from shmlog import errors
from shmlog._native import ffi, lib

BIG = 1 << 20


def _pattern(seq: int, n: int) -> bytes:
    """n bytes: the sequence number in the first and last 8, a seq-dependent pattern between."""
    body = ((np.arange(n, dtype=np.uint32) * 31 + seq) % 251).astype(np.uint8)
    if n >= 16:
        body[:8] = np.frombuffer(seq.to_bytes(8, "little"), np.uint8)
        body[-8:] = body[:8]
    return body.tobytes()


def _drain(c, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(n - len(got), timeout=0.2)
    return got


def _read(log, t, n, timeout=10.0, **kw):
    """Up to n records of t from the earliest, by a consumer made and closed here."""
    c = log.consumer(topics=[t], auto_offset_reset="earliest", **kw)
    try:
        return _drain(c, n, timeout)
    finally:
        c.close()


def _topic(log, name="t", ring=8 << 20, **kw):
    kw.setdefault("persistence", "none")
    if kw["persistence"] == "none":
        kw.setdefault("overflow", "block")
    log.create_topic(name, partitions=1, ring_bytes=ring, **kw)
    return name


def _topic_and_producer(inst, **kw):
    return _topic(inst.log, **kw), inst.log.producer()


def _wait_file(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.005)


# ---------------------------------------------------------------- round trip across processes


def _loan_producer(kwargs, topic, n, size):
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=20_000)
    offs = []
    for i in range(n):
        loan = p.reserve(topic, size, partition=0)
        with loan as buf:
            a = np.frombuffer(buf, np.uint8)  # writing in place through numpy ...
            a[:] = np.frombuffer(_pattern(i, size), np.uint8)
            del a  # ... and letting go of it inside the block (L2)
        offs.append(loan.metadata.offset)
    p.close()
    log.close()
    return offs


def _checking_consumer(kwargs, topic, n, size, ready_path):
    log = shmlog.connect(**kwargs)
    c = log.consumer(topics=[topic], auto_offset_reset="earliest", copy=False)
    c.poll(timeout=0)
    open(ready_path, "w").close()
    seen, deadline = 0, time.monotonic() + 60
    while seen < n and time.monotonic() < deadline:
        m = c.poll(timeout=0.2)
        if m is None:
            continue
        assert m.offset == seen, (m.offset, seen)
        assert bytes(m.value) == _pattern(seen, size), f"record {seen}: bytes differ"
        seen += 1
    c.close()
    log.close()
    return seen


def test_round_trip_across_processes_every_byte_checked(inst, tmp_path):
    t = _topic(
        inst.log, ring=4 << 20, max_message_bytes=(2 << 20) - 64
    )  # a user's ring: the producer waits on the reader
    n, size = 40, BIG
    ready = str(tmp_path / "ready")
    cons = inst.spawn("consumer", _checking_consumer, inst.kwargs, t, n, size, ready)
    _wait_file(ready)
    prod = inst.spawn("producer", _loan_producer, inst.kwargs, t, n, size)
    res = inst.collect([cons, prod], time.monotonic() + 90)
    assert res["producer"] == list(range(n))
    assert res["consumer"] == n


def test_loan_is_the_frame_send_would_write(inst):
    """Key, headers, timestamp and value read back as from send(); the CRC is checked by the consumer."""
    t = _topic(inst.log)
    p = inst.log.producer()
    with p.reserve(t, 5, key=b"k", partition=0, timestamp_ms=1234, headers={"h": b"v"}) as buf:
        buf[:] = b"hello"
    p.send(t, b"hello", key=b"k", partition=0, timestamp_ms=1234, headers={"h": b"v"})
    a, b = _read(inst.log, t, 2, check_crcs=True)
    assert (a.key, a.value, a.timestamp_ms, a.headers) == (b.key, b.value, b.timestamp_ms, b.headers)
    assert (a.offset, b.offset) == (0, 1)


# ---------------------------------------------------------------- abort, stale views


def test_exception_aborts_as_gap_and_the_next_record_is_readable(inst):
    t = _topic(inst.log)
    p = inst.log.producer()
    p.send(t, b"before", partition=0)
    loan = p.reserve(t, 100, partition=0)
    with pytest.raises(KeyError, match="boom"):
        with loan as buf:
            buf[:50] = b"x" * 50
            raise KeyError("boom")
    assert loan.metadata is None and loan.offset == 1
    assert p.send(t, b"after", partition=0).offset == 2  # the aborted offset is consumed (a gap)
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest")
    got = _drain(c, 2)
    assert [(m.offset, m.value) for m in got] == [(0, b"before"), (2, b"after")]
    assert c.poll(timeout=0.1) is None
    c.close()
    assert inst.log.describe_topic(t).partitions[0].sealed_writes == 0  # an abort is not a seal


def test_stale_buffer_raises_and_never_writes(inst):
    t = _topic(inst.log)
    p = inst.log.producer()
    with p.reserve(t, 8, partition=0) as buf:
        buf[:] = b"AAAAAAAA"
        inner = buf  # a second name for the same view: released with it
    for bad in (lambda: buf.__setitem__(0, 66), lambda: bytes(inner), lambda: buf.tobytes()):
        with pytest.raises(ValueError, match="released"):
            bad()
    assert [m.value for m in _read(inst.log, t, 1)] == [b"AAAAAAAA"]


def test_a_derived_view_kept_past_the_loan_aborts_it(inst):
    t, p = _topic_and_producer(inst)
    loan = p.reserve(t, 16, partition=0)
    with pytest.raises(errors.LoanError, match="derived"):
        with loan as buf:
            buf[:] = b"y" * 16
            kept = buf[4:8]  # noqa: F841 (a slice outlives the block)
    assert loan.metadata is None
    del kept
    loan2 = p.reserve(t, 16, partition=0)
    with pytest.raises(errors.LoanError):
        with loan2 as buf:
            arr = np.frombuffer(buf, np.uint8)  # noqa: F841 (an array outlives the block)
    del arr
    p.send(t, b"next", partition=0)
    assert [(m.offset, m.value) for m in _read(inst.log, t, 1)] == [(2, b"next")]


def test_write_past_the_view_and_zero_bytes(inst):
    t = _topic(inst.log)
    p = inst.log.producer()
    with p.reserve(t, 4, partition=0) as buf:
        with pytest.raises(IndexError):
            buf[4] = 1
        with pytest.raises(ValueError):
            buf[2:] = b"toolong"  # memoryview assignment must match the length
        with pytest.raises(IndexError):
            buf[-5] = 1
        buf[:] = b"abcd"
    with p.reserve(t, 0, partition=0) as buf:
        assert len(buf) == 0
    p.send(t, b"z", partition=0)
    assert [m.value for m in _read(inst.log, t, 3)] == [b"abcd", b"", b"z"]


def test_size_and_type_errors(inst):
    t = _topic(inst.log, ring=1 << 20)  # max_message_bytes 256 KiB
    p = inst.log.producer()
    mx = inst.log.describe_topic(t).config.max_message_bytes
    with pytest.raises(errors.RecordTooLarge):
        with p.reserve(t, mx, partition=0):
            pass
    for huge in (1 << 32, 1 << 62):
        with pytest.raises(errors.RecordTooLarge):
            with p.reserve(t, huge, partition=0):
                pass
    with pytest.raises(errors.InvalidArgument):
        p.reserve(t, -1, partition=0)
    for bad in (1.0, "10", None, True, b"x"):
        with pytest.raises(errors.InvalidType):
            p.reserve(t, bad, partition=0)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.reserve(t, 1, partition=5)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.reserve("nope", 1)
    loan = p.reserve(t, 1, partition=0)
    with loan as buf:
        buf[0] = 1
    with pytest.raises(errors.LoanError, match="entered once"):
        with loan:
            pass
    assert p.send(t, b"ok", partition=0).offset == 1  # the failed reservations claimed nothing


# ---------------------------------------------------------------- the slot: same thread, nesting, threads


def test_same_thread_send_during_a_loan_does_not_deadlock(inst):
    """The loan's own producer slot (L1): send, send_batch and produce+flush of
    the same thread to the same partition go on while the loan is open; readers
    see the loan's record first (it was reserved first) once it commits."""
    t = _topic(inst.log)
    p = inst.log.producer(max_block_ms=2000)
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest")
    t0 = time.monotonic()
    with p.reserve(t, 10, partition=0) as buf:
        assert p.send(t, b"s1", partition=0).offset == 1
        assert p.send_batch(t, [b"b1", b"b2"], partition=0)[0].base_offset == 2
        p.produce(t, b"p1", partition=0)
        assert p.flush(timeout=5) == 0
        assert c.poll(timeout=0.2) is None  # readers wait at the open loan
        buf[:] = b"0123456789"
    assert time.monotonic() - t0 < 1.5
    got = _drain(c, 5)
    assert [(m.offset, m.value) for m in got] == [(0, b"0123456789"), (1, b"s1"), (2, b"b1"), (3, b"b2"), (4, b"p1")]
    c.close()


def test_nested_and_concurrent_loans(inst):
    t = _topic(inst.log)
    p = inst.log.producer()
    outer = p.reserve(t, 3, partition=0)
    inner = p.reserve(t, 3, partition=0)
    with outer as a:
        with inner as b:
            b[:] = b"inn"
        a[:] = b"out"
    assert (outer.metadata.offset, inner.metadata.offset) == (0, 1)
    errs, per = [], 50

    def worker(k):
        try:
            for i in range(per):
                with p.reserve(t, 8, partition=0) as buf:
                    buf[:] = (k * 1000 + i).to_bytes(8, "little")
        except BaseException as e:  # pragma: no cover - reported below
            errs.append(e)

    ths = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30)
    assert not errs and not any(th.is_alive() for th in ths)
    got = _read(inst.log, t, 2 + 4 * per)
    assert [m.value for m in got[:2]] == [b"out", b"inn"]
    vals = sorted(int.from_bytes(m.value, "little") for m in got[2:])
    assert vals == sorted(k * 1000 + i for k in range(4) for i in range(per))
    assert [m.offset for m in got] == list(range(2 + 4 * per))


# ---------------------------------------------------------------- death and slowness


def _die_in_loan(kwargs, topic, size, half_path):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    for i in range(3):
        p.send(topic, _pattern(i, 64), partition=0)
    with p.reserve(topic, size, partition=0) as buf:
        buf[: size // 2] = b"\xee" * (size // 2)  # half written
        open(half_path, "w").close()
        time.sleep(60)  # killed here


def test_kill_9_inside_a_loan_is_sealed_as_a_gap(inst, tmp_path):
    """A process killed -9 after writing half its loan: the blocked reader seals
    its reservation after the unblock timeout (the owner is dead); the three
    records before it and everything after arrive; later producers go on even
    when the ring has to lap over the dead loan."""
    t = _topic(inst.log, ring=1 << 20)
    half = str(tmp_path / "half")
    name, pr, _ = inst.spawn("dier", _die_in_loan, inst.kwargs, t, 100_000, half)
    _wait_file(half)
    p = inst.log.producer(max_block_ms=5000)
    after = [p.send(t, _pattern(100 + i, 64), partition=0).offset for i in range(3)]  # reserved after it
    assert after == [4, 5, 6]
    os.kill(pr.pid, signal.SIGKILL)
    pr.join(10)
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest")
    got = _drain(c, 6)
    assert [m.offset for m in got] == [0, 1, 2, 4, 5, 6]
    assert [m.value for m in got] == [_pattern(i, 64) for i in (0, 1, 2, 100, 101, 102)]
    assert inst.log.describe_topic(t).partitions[0].sealed_writes == 1
    # the ring laps over the sealed frame: producers are not held by it
    for i in range(40):
        with p.reserve(t, 60_000, partition=0) as buf:
            buf[:] = _pattern(200 + i, 60_000)
        assert [m.value for m in _drain(c, 1)] == [_pattern(200 + i, 60_000)]
    c.close()


def _hold_loan(kwargs, topic, hold_s, started_path):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    with p.reserve(topic, 8, partition=0) as buf:
        open(started_path, "w").close()
        time.sleep(hold_s)  # alive and slow: far past the unblock timeout
        buf[:] = b"slowpoke"
    p.close()
    log.close()
    return True


def test_a_live_slow_holder_is_never_sealed_over(inst, tmp_path):
    t = _topic(inst.log)
    started = str(tmp_path / "started")
    ch = inst.spawn("holder", _hold_loan, inst.kwargs, t, 1.0, started)  # unblock timeout is 100 ms
    _wait_file(started)
    p = inst.log.producer()
    p.send(t, b"behind", partition=0)
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest")
    assert c.poll_batch(10, timeout=0.5) == []  # waits at the live loan, does not seal it
    got = _drain(c, 2)
    assert [(m.offset, m.value) for m in got] == [(0, b"slowpoke"), (1, b"behind")]
    inst.collect([ch], time.monotonic() + 20)
    assert inst.log.describe_topic(t).partitions[0].sealed_writes == 0
    c.close()


def test_max_block_ms_expiry_is_buffer_full_and_loses_nothing(inst):
    """A block ring with a reader that does not read: loans wait for room, then
    BufferFull; the reader then gets every committed record intact."""
    t = _topic(inst.log, ring=1 << 20)
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest")
    c.poll(timeout=0)  # attached at offset 0: holds producers back
    p = inst.log.producer(max_block_ms=300)
    size, n = 200_000, 0
    t0 = time.monotonic()
    with pytest.raises(errors.BufferFull):
        while n < 20:
            with p.reserve(t, size, partition=0) as buf:
                buf[:] = _pattern(n, size)
            n += 1
    assert 2 <= n < 6 and time.monotonic() - t0 >= 0.3
    got = _drain(c, n)
    assert [bytes(m.value) for m in got] == [_pattern(i, size) for i in range(n)]
    with p.reserve(t, size, partition=0) as buf:  # room again once read: the failed wait claimed nothing
        buf[:] = _pattern(n, size)
    assert [m.offset for m in _drain(c, 1)] == [n]
    c.close()


def test_overwrite_ring_works_too(inst):
    t = _topic(inst.log, ring=1 << 20, overflow="overwrite")
    p = inst.log.producer()
    for i in range(30):  # 3 laps
        with p.reserve(t, 100_000, partition=0) as buf:
            buf[:] = _pattern(i, 100_000)
    got = _read(inst.log, t, 30, timeout=2)
    assert got and got[-1].offset == 29
    assert all(m.value == _pattern(m.offset, 100_000) for m in got)


# ---------------------------------------------------------------- durable topics


def test_durable_topic_reads_back_after_the_persister_and_from_segment_files(inst):
    t = _topic(inst.log, ring=1 << 20, persistence="disk", segment_bytes=1 << 20)
    p = inst.log.producer(max_block_ms=20_000)
    n, size = 40, 100_000  # ~4 MB through a 1 MiB ring: the early records are in the files only
    with p.reserve(t, size, partition=0) as buf:
        with pytest.raises(errors.LoanError, match="durable"):
            p.flush(durable=True, timeout=1)  # would wait for the loan itself
        buf[:] = _pattern(0, size)
    for i in range(1, n):
        with p.reserve(t, size, partition=0) as buf:
            buf[:] = _pattern(i, size)
    with pytest.raises(RuntimeError):
        with p.reserve(t, size, partition=0):
            raise RuntimeError("abort one")  # a gap frame goes to disk too
    with p.reserve(t, 8, partition=0) as buf:
        buf[:] = b"lastone!"
    p.flush(durable=True, timeout=30)
    assert len([f for f in os.listdir(inst.log.partition_dir(t, 0)) if f.endswith(".log")]) >= 2
    got = _read(inst.log, t, n + 1, timeout=20)
    assert [m.offset for m in got] == list(range(n)) + [n + 1]
    assert all(m.value == _pattern(m.offset, size) for m in got[:n]) and got[-1].value == b"lastone!"
    # after a "reboot" the ring is rebuilt from the files, which hold the loans' frames
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    got = _read(inst.log, t, n + 1, timeout=20)
    assert [m.offset for m in got] == list(range(n)) + [n + 1]
    assert all(m.value == _pattern(m.offset, size) for m in got[:n])


# ---------------------------------------------------------------- lifecycle: close, delete, fork


def test_closed_producer_and_close_inside_a_loan(inst):
    t, p = _topic_and_producer(inst)
    loan = p.reserve(t, 4, partition=0)
    with pytest.raises(errors.LoanError, match="closed"):
        with loan as buf:
            buf[:] = b"abcd"
            p.close()  # the loan becomes a gap; the buffer is released
            with pytest.raises(ValueError):
                buf[0] = 1
    with pytest.raises(errors.Closed):
        p.reserve(t, 4, partition=0)
    p2 = inst.log.producer()
    assert p2.send(t, b"next", partition=0).offset == 1
    assert [(m.offset, m.value) for m in _read(inst.log, t, 1)] == [(1, b"next")]


def test_topic_deleted_during_a_loan(inst):
    t = _topic(inst.log)
    p = inst.log.producer()
    with pytest.raises(errors.TopicDeleted):
        with p.reserve(t, 4, partition=0) as buf:
            inst.log.delete_topic(t)
            buf[:] = b"gone"  # still mapped: the write is harmless, the exit says what happened
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.reserve(t, 4, partition=0)
    _topic(inst.log)  # a new life of the name: the producer writes to it
    with p.reserve(t, 4, partition=0) as buf:
        buf[:] = b"new!"
    assert [(m.offset, m.value) for m in _read(inst.log, t, 1)] == [(0, b"new!")]


def test_a_loan_across_fork_belongs_to_the_parent(inst, tmp_path):
    t = _topic(inst.log)
    p = inst.log.producer()
    out = str(tmp_path / "child")
    loan = p.reserve(t, 6, partition=0)
    with loan as buf:
        pid = os.fork()
        if pid == 0:  # the child: its view is released, its exit refuses
            code = 1
            try:
                try:
                    buf[0] = 1
                except ValueError:
                    code = 2
                if lib.shm_loan_commit(loan._ring.h, loan._loan) != lib.SHM_E_INVALID:  # not the child's (pid)
                    code = 9
                try:
                    with p.reserve(t, 1, partition=0) as b2:  # its own loans work
                        b2[0] = 0x21
                    code = code * 10 + 3 if code == 2 else code
                except Exception:
                    pass
                with open(out, "w") as f:
                    f.write(str(code))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        buf[:] = b"parent"
    assert open(out).read() == "23"
    got = _read(inst.log, t, 2)
    assert sorted(m.value for m in got) == [b"!", b"parent"]


# ---------------------------------------------------------------- idempotent and transactional producers


def test_idempotent_and_transactional_loans_are_stamped(inst):
    t = _topic(inst.log, persistence="disk", ring=1 << 20)
    ip = inst.log.producer(enable_idempotence=True)
    with ip.reserve(t, 3, partition=0) as buf:
        buf[:] = b"id0"
    ip.send(t, b"id1", partition=0)
    tp = inst.log.producer(transactional_id="loan-tx")
    tp.init_transactions()
    tp.begin_transaction()
    with tp.reserve(t, 3, partition=0) as buf:
        buf[:] = b"tx0"
        with pytest.raises(errors.LoanError):
            tp.commit_transaction()
    tp.commit_transaction()
    tp.begin_transaction()
    with tp.reserve(t, 3, partition=0) as buf:
        buf[:] = b"tx1"
    tp.abort_transaction()
    c = inst.log.consumer(topics=[t], auto_offset_reset="earliest", isolation_level="read_committed")
    got = _drain(c, 3, timeout=3)
    assert [m.value for m in got] == [b"id0", b"id1", b"tx0"]
    assert c.poll(timeout=0.2) is None  # the aborted transaction's loan stays hidden
    c.close()


def test_the_c_calls_refuse_what_is_not_an_open_loan_of_this_process(inst):
    """Committing or aborting twice, or a struct never begun, writes nothing
    (L2); sequential loans reuse one slot: the ring's slot table does not fill."""
    t = _topic(inst.log)
    p = inst.log.producer()
    loan = p.reserve(t, 4, partition=0)
    with loan as buf:
        buf[:] = b"once"
    r = loan._ring.h
    assert lib.shm_loan_commit(r, loan._loan) == lib.SHM_E_INVALID
    assert lib.shm_loan_abort(r, loan._loan) == lib.SHM_E_INVALID
    assert lib.shm_loan_commit(r, ffi.new("struct shm_loan *")) == lib.SHM_E_INVALID
    ctx = p._writers[t].ctxs[0]
    out = ffi.new("struct shm_loan *")
    assert lib.shm_loan_begin(ctx, ctx.slot, 4, ffi.NULL, -1, ffi.NULL, -1, -1, out) == lib.SHM_E_INVALID
    assert lib.shm_loan_begin(ctx, loan._loan.slot, -1, ffi.NULL, -1, ffi.NULL, -1, -1, out) == lib.SHM_E_INVALID
    for i in range(200):  # more loans than the ring has producer slots
        with p.reserve(t, 8, partition=0) as buf:
            buf[:] = i.to_bytes(8, "little")
    hdr = ffi.cast("struct shm_ring_header *", loan._ring.base)
    owned = sum(1 for i in range(lib.SHM_PRODUCER_SLOTS) if hdr.slots[i].owner != 0)
    assert owned == 2  # the send slot and one loan slot
    got = _read(inst.log, t, 201)
    assert [m.value for m in got] == [b"once"] + [i.to_bytes(8, "little") for i in range(200)]
    p.close()
    assert sum(1 for i in range(lib.SHM_PRODUCER_SLOTS) if hdr.slots[i].owner != 0) == 0
