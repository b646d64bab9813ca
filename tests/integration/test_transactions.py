"""Native transactions (control/transactions.py): atomic writes to many
partitions with a group's offsets, read_committed / read_uncommitted,
fencing, dead and timed-out producers, restarts, out-of-order calls."""

import os
import signal
import time

import pytest

from shmlog import errors
from shmlog.control import transactions


def drain(c, timeout=0.3):
    """Every record a consumer returns until it stays empty for timeout."""
    out = []
    while True:
        b = c.poll_batch(10_000, timeout=timeout)
        if not b:
            return out
        out += b


def values(c, timeout=0.3):
    return sorted(m.value for m in drain(c, timeout))


def consumers(log, topics):
    rc = log.consumer(topics=topics, auto_offset_reset="earliest")
    ru = log.consumer(topics=topics, auto_offset_reset="earliest", isolation_level="read_uncommitted")
    return rc, ru


def test_commit_is_atomic_over_topics_and_partitions_abort_is_never_seen(inst):
    log = inst.log
    log.create_topic("a", partitions=2)
    log.create_topic("b", partitions=1, persistence="none")
    p = log.producer(transactional_id="t")
    p.init_transactions()
    rc, ru = consumers(log, ["a", "b"])
    p.begin_transaction()
    p.send("a", b"a0", partition=0)
    p.send_batch("a", [b"a1", b"a1b"], partition=1)
    p.produce("b", b"b0", partition=0)
    assert values(rc, 0.1) == []  # open: read_committed sees nothing
    p.commit_transaction()  # flushes produce() first
    assert values(rc) == [b"a0", b"a1", b"a1b", b"b0"]
    assert values(ru) == [b"a0", b"a1", b"a1b", b"b0"]
    p.begin_transaction()
    p.send("a", b"x0", partition=0)
    p.send("b", b"x1", partition=0)
    p.abort_transaction()
    p.begin_transaction()
    p.send("a", b"c0", partition=0)
    p.commit_transaction()
    assert values(rc) == [b"c0"]
    assert values(ru) == [b"c0", b"x0", b"x1"]  # read_uncommitted sees aborted records, never markers
    # positions pass the markers: a0, marker, x0, marker, c0, marker
    assert rc.position("a", 0) == ru.position("a", 0) == 6
    assert transactions.aborted_entries(
        transactions.read_abort_index(log.settings.data_dir, "a", log.topic_handle("a").topic_id, 0)
    )[0][1:3] == (2, 3)  # the aborted transaction: from its bound (2) to its marker (3)


def test_an_open_transaction_holds_read_committed_readers_at_its_first_offset(inst):
    log = inst.log
    log.create_topic("t")
    tx = log.producer(transactional_id="t")
    tx.init_transactions()
    plain = log.producer()
    plain.send("t", b"before")
    tx.begin_transaction()
    tx.send("t", b"in-txn")
    plain.send("t", b"after")  # not transactional, but past the last stable offset
    rc, ru = consumers(log, ["t"])
    assert log.transactions.last_stable_offset("t", 0) == 1
    assert log.describe_topic("t").partitions[0].last_stable_offset == 1  # end_offset is 3
    assert [m.value for m in drain(rc, 0.1)] == [b"before"]
    assert [m.value for m in drain(ru, 0.1)] == [b"before", b"in-txn", b"after"]
    tx.commit_transaction()
    assert log.transactions.last_stable_offset("t", 0) == 4
    assert [m.value for m in drain(rc)] == [b"in-txn", b"after"]


def test_a_new_producer_fences_the_old_one_and_its_late_writes_are_never_committed(inst):
    log = inst.log
    log.create_topic("t", partitions=2)
    old = log.producer(transactional_id="same")
    old.init_transactions()
    old.begin_transaction()
    old.send("t", b"open", partition=0)
    new = log.producer(transactional_id="same")
    new.init_transactions()  # aborts what old left open, fences its epoch
    old.send("t", b"zombie", partition=0)  # a partition old had added: the write lands (no check)...
    with pytest.raises(errors.ProducerFenced):
        old.send("t", b"zombie", partition=1)  # ...a new partition asks the coordinator: fenced
    with pytest.raises(errors.ProducerFenced):
        old.commit_transaction()
    new.begin_transaction()
    new.send("t", b"new", partition=0)
    new.commit_transaction()
    rc, ru = consumers(log, ["t"])
    assert values(rc) == [b"new"]  # the zombie's write is aborted by its epoch (T3)
    assert values(ru) == [b"new", b"open", b"zombie"]


def test_calls_out_of_order_get_clear_errors_and_lose_nothing(inst):
    log = inst.log
    log.create_topic("t")
    plain = log.producer()
    with pytest.raises(errors.InvalidTxnState):
        plain.init_transactions()
    with pytest.raises(errors.InvalidTxnState):
        plain.begin_transaction()
    p = log.producer(transactional_id="t")
    with pytest.raises(errors.InvalidTxnState):
        p.begin_transaction()  # before init_transactions
    with pytest.raises(errors.InvalidTxnState):
        p.send("t", b"x")
    p.init_transactions()
    with pytest.raises(errors.InvalidTxnState):
        p.commit_transaction()  # without begin
    with pytest.raises(errors.InvalidTxnState):
        p.abort_transaction()
    with pytest.raises(errors.InvalidTxnState):
        p.send("t", b"outside")  # a transactional producer sends inside transactions only
    with pytest.raises(errors.InvalidTxnState):
        p.send_offsets_to_transaction({("t", 0): 0}, "g")
    p.begin_transaction()
    with pytest.raises(errors.InvalidTxnState):
        p.begin_transaction()
    p.send("t", b"kept")
    with pytest.raises(errors.InvalidArgument):
        p.send_offsets_to_transaction({("t", 0): -5}, "g")
    with pytest.raises(errors.InvalidType):
        p.send_offsets_to_transaction({("t", 0): 1}, 42)
    p.commit_transaction()
    for bad in ("", 7, "x" * 300):
        with pytest.raises((errors.InvalidArgument, errors.InvalidType)):
            log.producer(transactional_id=bad)
    with pytest.raises(errors.InvalidArgument):
        log.producer(transactional_id="t2", enable_idempotence=False)
    with pytest.raises(errors.InvalidArgument):
        log.producer(transactional_id="t2", transaction_timeout_ms=0)
    with pytest.raises(errors.InvalidArgument):
        log.consumer(topics=["t"], isolation_level="read_dirty")
    rc, _ = consumers(log, ["t"])
    assert values(rc) == [b"kept"]


def test_offsets_commit_with_the_transaction_and_only_then(inst):
    log = inst.log
    log.create_topic("in")
    log.create_topic("out")
    feed = log.producer()
    feed.send_batch("in", [b"1", b"2", b"3"], partition=0)
    c = log.consumer(group="g", topics=["in"], auto_offset_reset="earliest", enable_auto_commit=False)
    got = drain(c)
    assert [m.value for m in got] == [b"1", b"2", b"3"]
    p = log.producer(transactional_id="ctp")
    p.init_transactions()
    p.begin_transaction()
    p.send_batch("out", [m.value * 2 for m in got], partition=0)
    p.send_offsets_to_transaction({("in", 0): got[-1].offset + 1}, c.consumer_group_metadata())
    assert log.committed_offsets("g") == {}  # not before the commit
    p.commit_transaction()
    assert log.committed_offsets("g") == {("in", 0): 3}
    p.begin_transaction()
    p.send_offsets_to_transaction({("in", 0): 1}, c.consumer_group_metadata())
    p.abort_transaction()
    assert log.committed_offsets("g") == {("in", 0): 3}  # aborted offsets are never applied


def test_offsets_of_a_member_that_lost_its_partitions_abort_the_transaction(inst):
    log = inst.log
    log.create_topic("in")
    log.create_topic("out")
    c = log.consumer(group="g", topics=["in"], auto_offset_reset="earliest", enable_auto_commit=False)
    c.poll(0.1)
    meta = c.consumer_group_metadata()
    p = log.producer(transactional_id="ctp")
    p.init_transactions()
    p.begin_transaction()
    p.send("out", b"derived")
    p.send_offsets_to_transaction({("in", 0): 0}, meta)
    c.close()  # leaves the group: the partition is nobody's (or another member's) now
    with pytest.raises(errors.CommitFailed):
        p.commit_transaction()
    rc, _ = consumers(log, ["out"])
    assert values(rc) == []  # the outputs aborted with the offsets
    assert log.committed_offsets("g") == {}


def _open_txn_and_hang(kwargs, ready_path):
    import shmlog

    log = shmlog.connect(**kwargs)
    p = log.producer(transactional_id="dies")
    p.init_transactions()
    p.begin_transaction()
    p.send("t", b"doomed", partition=0)
    p.send("u", b"doomed", partition=0)
    open(ready_path, "w").close()
    time.sleep(60)


def test_a_producer_killed_with_an_open_transaction_is_aborted(inst):
    log = inst.log
    log.create_topic("t")
    log.create_topic("u", persistence="none")
    ready = str(inst.tmp_path / "ready")
    child = inst.process(_open_txn_and_hang, inst.kwargs, ready)
    child.start()
    deadline = time.monotonic() + 20
    while not os.path.exists(ready):
        assert time.monotonic() < deadline and child.is_alive()
        time.sleep(0.01)
    assert log.transactions.expire() == []  # alive and within its timeout: kept
    assert log.transactions.last_stable_offset("t", 0) == 0
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    assert log.transactions.expire() == ["dies"]  # what the supervisor's tick does
    assert log.transactions.last_stable_offset("t", 0) == 2  # record and marker are stable now
    rc, ru = consumers(log, ["t", "u"])
    assert values(rc) == []
    assert values(ru) == [b"doomed", b"doomed"]
    survivor = log.producer(transactional_id="dies")
    survivor.init_transactions()  # the next producer with the id carries on
    survivor.begin_transaction()
    survivor.send("t", b"ok")
    survivor.commit_transaction()
    assert values(rc) == [b"ok"]


def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced(inst):
    log = inst.log
    log.create_topic("t")
    p = log.producer(transactional_id="slow", transaction_timeout_ms=50)
    p.init_transactions()
    p.begin_transaction()
    p.send("t", b"late")
    time.sleep(0.1)
    assert log.transactions.expire() == ["slow"]
    with pytest.raises(errors.ProducerFenced):
        p.commit_transaction()
    rc, _ = consumers(log, ["t"])
    assert values(rc) == []


def test_an_open_transaction_survives_a_restart_and_is_aborted_there(inst):
    """A reboot: shared memory gone, rings restored from the files; the
    transaction's producer is gone too, so the restore aborts it."""
    log = inst.log
    log.create_topic("t")
    p = log.producer(transactional_id="r")
    p.init_transactions()
    p.begin_transaction()
    p.send("t", b"committed-before")
    p.commit_transaction()
    p.begin_transaction()
    p.send("t", b"open-at-crash")
    p.flush(durable=True)
    # the coordinator's state names this process as the owner: make it look dead
    with log.transactions._locked() as s:
        s.state.txns["r"].owner_pid = 2**31 - 2
        s.save(durable=True)
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()
    log2 = inst.connect()
    rc, ru = consumers(log2, ["t"])
    assert values(rc) == [b"committed-before"]
    assert values(ru) == [b"committed-before", b"open-at-crash"]
    assert log2.transactions.last_stable_offset("t", 0) == log2.describe_topic("t").partitions[0].end_offset


def test_idempotent_producer_stamps_producer_id_and_sequences(inst):
    log = inst.log
    log.create_topic("t")
    p = log.producer(enable_idempotence=True)
    p.send("t", b"a", partition=0)
    p.send_batch("t", [b"b", b"c"], partition=0)
    p.send("t", b"d", partition=0)
    q = log.producer(enable_idempotence=True)
    q.send("t", b"e", partition=0)
    c = log.consumer(auto_offset_reset="earliest", isolation_level="read_uncommitted")
    c.assign([("t", 0, 0)])
    assert [m.value for m in drain(c)] == [b"a", b"b", b"c", b"d", b"e"]
    # the batches as stored (the Kafka listener serves them as they are)
    from shmlog.client.reader import PartitionReader
    from shmlog._native import ffi, lib

    h = log.topic_handle("t")
    r = PartitionReader(log, "t", 0, log.ring(h, 0, writable=False), None, batches=True)
    buf = ffi.new("uint8_t[]", 1 << 16)
    out = ffi.new("struct shm_records_out *")
    out.max_records = 1000
    rows = ffi.new("int64_t[]", 8000)
    out.rows = rows
    r.seek(0, buf, 1 << 16)
    n = r.read(buf, 1 << 16, out)
    assert n == 4
    raw = bytes(ffi.buffer(buf, out.bytes_used))
    heads, at = [], 0
    while at < len(raw):
        length = int.from_bytes(raw[at + 8 : at + 12], "big")
        b = raw[at : at + 12 + length]
        heads.append((int.from_bytes(b[43:51], "big", signed=True), int.from_bytes(b[53:57], "big", signed=True)))
        at += 12 + length
    pid = heads[0][0]
    assert pid >= 0 and heads[:3] == [(pid, 0), (pid, 1), (pid, 3)]  # sequences advance by record count
    assert heads[3][0] not in (-1, pid) and heads[3][1] == 0  # another producer, another id


def test_a_large_record_past_the_last_stable_offset_waits_for_read_committed(inst):
    """The one-copy path for large records (poll's) stops at the LSO too."""
    log = inst.log
    log.create_topic("big", persistence="none", overflow="block", ring_bytes=1 << 22)
    tx = log.producer(transactional_id="t")
    tx.init_transactions()
    tx.begin_transaction()
    tx.send("big", b"x" * 100_000)
    plain = log.producer()
    plain.send("big", b"y" * 100_000)  # not transactional, but past the open transaction's start
    rc = log.consumer(topics=["big"], auto_offset_reset="earliest")
    ru = log.consumer(topics=["big"], auto_offset_reset="earliest", isolation_level="read_uncommitted")
    assert rc.poll(0.2) is None
    assert [len(ru.poll(1.0).value), len(ru.poll(1.0).value)] == [100_000, 100_000]
    tx.commit_transaction()
    got = [rc.poll(1.0), rc.poll(1.0)]
    assert [m.value[:1] for m in got] == [b"x", b"y"]


def test_cleanup_policy_typos_and_bad_transactional_arguments_are_refused(inst):
    for bad in ("compakt", "delete,", "", 3):
        with pytest.raises((errors.InvalidArgument, errors.InvalidType)):
            inst.log.create_topic("t", cleanup_policy=bad)
    assert inst.log.list_topics() == []


def test_a_transactional_id_unused_for_a_week_is_forgotten(inst):
    log = inst.log
    log.create_topic("t")
    p = log.producer(transactional_id="old")
    p.init_transactions()
    p.begin_transaction()
    p.send("t", b"x")
    p.commit_transaction()
    assert log.transactions.state_of("old") is not None
    assert log.transactions.expire(now_ms=time.time_ns() // 1_000_000 + 6 * 86400_000) == []
    assert log.transactions.state_of("old") is not None  # six days: kept
    log.transactions.expire(now_ms=time.time_ns() // 1_000_000 + transactions.TID_EXPIRATION_MS + 1)
    assert log.transactions.state_of("old") is None  # Kafka's transactional.id.expiration.ms
    p.begin_transaction()
    with pytest.raises(errors.InvalidArgument):
        p.send("t", b"y")  # the coordinator no longer knows its transactional id: init_transactions() again
