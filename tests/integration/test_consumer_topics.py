"""A consumer while its topics change under it, and the consumer API a
confluent-kafka user expects (issue 12 defect 5, item 9, Build 5):
deletion and re-creation (assign(): TopicDeleted; a subscription by name, with
or without a group: follows the topic), partition growth, a lapped ephemeral
consumer's warning, pause/resume/paused, store_offsets. Every wait bounded."""

import logging
import threading
import time

import pytest

from shmlog import errors

RING = 1 << 16


def send(log, topic, values, partition=0):
    with log.producer() as p:
        return [p.send(topic, v, partition=partition).offset for v in values]


def poll_until(c, pred, timeout=10.0, step=0.1):
    """Polls c until pred(records so far) holds; returns the records."""
    got = []
    deadline = time.monotonic() + timeout
    while not pred(got):
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out; got {len(got)} records, the last: {[(m.topic, m.partition, m.offset) for m in got[-5:]]}"
            )
        m = c.poll(step)
        if m is not None:
            got.append(m)
    return got


# ------------------------------------------------------------ deletion


def test_assigned_consumer_gets_topic_deleted_when_waiting(inst):
    log = inst.log
    log.create_topic("del", partitions=1, ring_bytes=RING, persistence="none")
    send(log, "del", [b"a"])
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([("del", 0)])
    assert c.poll(2).value == b"a"
    seen = []

    def waiter():
        try:
            seen.append(c.poll(20))
        except Exception as e:  # noqa: BLE001 - the test looks at what was raised
            seen.append(e)

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.3)  # parked in its futex wait
    t0 = time.monotonic()
    log.delete_topic("del")
    th.join(10)
    assert not th.is_alive(), "a consumer parked on a deleted topic never woke"
    assert isinstance(seen[0], errors.TopicDeleted), seen
    assert time.monotonic() - t0 < 3
    assert c.assignment() == []
    log.create_topic("del", partitions=1, ring_bytes=RING, persistence="none")
    send(log, "del", [b"new"])
    c.assign([("del", 0, 0)])
    assert c.poll(2).value == b"new"
    c.close()


def test_assigned_consumer_of_a_recreated_topic_gets_topic_deleted_and_fresh_end_offsets(inst):
    log = inst.log
    log.create_topic("re", partitions=2, ring_bytes=RING, persistence="none")
    send(log, "re", [b"x"] * 7)
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([("re", 0), ("re", 1)])
        assert c.end_offsets() == {("re", 0): 7, ("re", 1): 0}
        log.delete_topic("re")
        log.create_topic("re", partitions=2, ring_bytes=RING, persistence="none")
        send(log, "re", [b"y"] * 2)
        with pytest.raises(errors.TopicDeleted, match="re-created"):
            c.poll(1)
        assert c.assignment() == []
        c.assign([("re", 0), ("re", 1)])
        assert c.end_offsets() == {("re", 0): 2, ("re", 1): 0}
        assert [m.value for m in c.poll_batch(10, timeout=2)] == [b"y", b"y"]


def test_subscriber_follows_a_deleted_and_recreated_topic(inst):
    """subscribe() without a group: the topic's partitions leave the
    assignment on delete (a warning, no exception) and come back on
    re-create, read from auto_offset_reset."""
    log = inst.log
    log.create_topic("sub", partitions=1, ring_bytes=RING, persistence="none")
    log.create_topic("other", partitions=1, ring_bytes=RING, persistence="none")
    with log.consumer(topics=["sub", "other"], auto_offset_reset="earliest") as c:
        send(log, "sub", [b"1", b"2"])
        assert [m.value for m in poll_until(c, lambda g: len(g) == 2)] == [b"1", b"2"]
        log.delete_topic("sub")
        assert c.poll(0.3) is None
        assert c.assignment() == [("other", 0)]
        send(log, "other", [b"o"])
        assert poll_until(c, lambda g: len(g) == 1)[0].value == b"o"
        log.create_topic("sub", partitions=2, ring_bytes=RING, persistence="none")
        send(log, "sub", [b"n0"], partition=0)
        send(log, "sub", [b"n1"], partition=1)
        got = poll_until(c, lambda g: len(g) == 2)
        assert sorted((m.partition, m.offset, m.value) for m in got) == [(0, 0, b"n0"), (1, 0, b"n1")]
        assert sorted(c.assignment()) == [("other", 0), ("sub", 0), ("sub", 1)]
        assert c.end_offsets()[("sub", 0)] == 1


def test_group_member_follows_a_deleted_and_recreated_topic(inst):
    log = inst.log
    log.create_topic("gt", partitions=2, ring_bytes=RING, persistence="none")
    send(log, "gt", [b"old"])
    calls = []
    with log.consumer(
        group="g",
        topics=["gt"],
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
        on_assign=lambda c, tps: calls.append(("assign", sorted(tps))),
        on_revoke=lambda c, tps: calls.append(("revoke", sorted(tps))),
    ) as c:
        assert poll_until(c, lambda g: len(g) == 1)[0].value == b"old"
        log.delete_topic("gt")
        deadline = time.monotonic() + 5
        while c.assignment() and time.monotonic() < deadline:
            assert c.poll(0.1) is None
        assert c.assignment() == []
        assert ("revoke", [("gt", 0), ("gt", 1)]) in calls
        log.create_topic("gt", partitions=2, ring_bytes=RING, persistence="none")
        send(log, "gt", [b"new"], partition=1)
        got = poll_until(c, lambda g: len(g) == 1)
        assert (got[0].partition, got[0].offset, got[0].value) == (1, 0, b"new")
        assert sorted(c.assignment()) == [("gt", 0), ("gt", 1)]
        assert calls[-1] == ("assign", [("gt", 0), ("gt", 1)])


# ------------------------------------------------------------ growth


def test_subscriber_without_a_group_sees_new_partitions(inst):
    log = inst.log
    log.create_topic("grow", partitions=1, ring_bytes=RING, persistence="none")
    with log.consumer(topics="grow", auto_offset_reset="earliest") as c:
        assert c.poll(0.1) is None
        log.alter_topic("grow", partitions=3)
        send(log, "grow", [b"p2"], partition=2)
        got = poll_until(c, lambda g: len(g) == 1)
        assert (got[0].partition, got[0].value) == (2, b"p2")
        assert sorted(c.assignment()) == [("grow", 0), ("grow", 1), ("grow", 2)]


def test_subscriber_sees_new_partitions_while_busy_on_the_old_one(inst):
    """Growth is seen on the next poll, also when the old partition never runs dry."""
    log = inst.log
    log.create_topic("busy", partitions=1, ring_bytes=1 << 20, persistence="none")
    send(log, "busy", [b"%d" % i for i in range(3000)])
    with log.consumer(topics="busy", auto_offset_reset="earliest") as c:
        assert c.poll(1) is not None
        log.alter_topic("busy", partitions=2)
        send(log, "busy", [b"new"], partition=1)
        got = poll_until(c, lambda g: any(m.partition == 1 for m in g))
        assert len(got) < 3000
        assert ("busy", 1) in c.assignment()


# ------------------------------------------------------------ lapped


def test_lapped_ephemeral_consumer_logs_how_many_records_it_skipped(inst, caplog):
    log = inst.log
    log.create_topic("lap", partitions=1, ring_bytes=RING, persistence="none")
    send(log, "lap", [b"first"])
    with log.consumer(topics="lap", auto_offset_reset="earliest") as c:
        assert c.poll(1).value == b"first"
        ends = send(log, "lap", [b"x" * 200] * 2000)  # ~10 laps of a 64 KiB ring
        with caplog.at_level(logging.WARNING, logger="shmlog"):
            m = c.poll(1)
        first_kept = m.offset
        assert first_kept > 1
        warn = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert warn, "a lapped consumer skipped records without a log line"
        assert f"skipped {first_kept - 1} records (offsets 1..{first_kept - 1})" in warn[0], warn
        assert ends[-1] == 2000


# ------------------------------------------------------------ pause / resume / store_offsets


def test_pause_resume_paused(inst):
    log = inst.log
    log.create_topic("pr", partitions=2, ring_bytes=1 << 20, persistence="none")
    send(log, "pr", [b"a%d" % i for i in range(600)], partition=0)
    send(log, "pr", [b"b%d" % i for i in range(5)], partition=1)
    with log.consumer(topics="pr", auto_offset_reset="earliest") as c:
        first = c.poll(1)  # decodes up to max_poll_records of one partition
        c.pause([(first.topic, first.partition)])
        assert c.paused() == [(first.topic, first.partition)]
        other = 1 - first.partition
        got = [m for m in iter(lambda: c.poll(0.3), None)]
        assert {m.partition for m in got} == {other}, "a paused partition was read"
        assert c.position(first.topic, first.partition) == first.offset + 1
        c.resume([(first.topic, first.partition)])
        assert c.paused() == []
        rest = [m for m in iter(lambda: c.poll(0.3), None)]
        assert [m.offset for m in rest] == list(range(first.offset + 1, 600 if first.partition == 0 else 5))
        # everything paused: poll waits its timeout and returns None
        c.pause(c.assignment())
        send(log, "pr", [b"late"], partition=0)
        t0 = time.monotonic()
        assert c.poll(0.3) is None and time.monotonic() - t0 >= 0.25
        c.resume(c.assignment())
        assert c.poll(2).value == b"late"
        with pytest.raises(errors.UnknownTopicOrPartition):
            c.pause([("pr", 9)])


def test_single_partition_pause_stops_the_latency_path(inst):
    log = inst.log
    log.create_topic("pr1", partitions=1, ring_bytes=RING, persistence="none")
    send(log, "pr1", [b"1", b"2", b"3"])
    with log.consumer(topics="pr1", auto_offset_reset="earliest") as c:
        assert c.poll(1).value == b"1"
        c.pause([("pr1", 0)])
        assert c.poll(0.2) is None
        c.resume([("pr1", 0)])
        assert [c.poll(1).value, c.poll(1).value] == [b"2", b"3"]


def test_store_offsets_commits_only_what_was_stored(inst):
    log = inst.log
    log.create_topic("so", partitions=1, ring_bytes=RING, persistence="none")
    send(log, "so", [b"%d" % i for i in range(10)])
    with log.consumer(
        group="sog",
        topics="so",
        auto_offset_reset="earliest",
        enable_auto_offset_store=False,
        auto_commit_interval_ms=100,
        heartbeat_interval_ms=50,
    ) as c:
        got = poll_until(c, lambda g: len(g) == 10)
        c.store_offsets(got[3])  # records 0..3 are done
        deadline = time.monotonic() + 5
        while c.committed("so", 0) != 4 and time.monotonic() < deadline:
            c.poll(0.05)
        assert c.committed("so", 0) == 4, "auto-commit did not commit the stored offset"
        time.sleep(0.3)
        c.poll(0.05)
        assert c.committed("so", 0) == 4, "auto-commit committed past the stored offset"
        c.store_offsets(offsets={("so", 0): 7})
        c.commit()
        assert c.committed("so", 0) == 7
        with pytest.raises(errors.InvalidArgument):
            c.store_offsets(offsets={("so", 0): -1})
        with pytest.raises(errors.UnknownTopicOrPartition):
            c.store_offsets(offsets={("so", 5): 1})
    # closing committed the stored 7, not the position 10
    with log.consumer(group="sog", topics="so", auto_offset_reset="earliest") as c:
        assert poll_until(c, lambda g: len(g) == 3)[0].offset == 7
    with log.consumer(topics="so") as c:
        with pytest.raises(errors.InvalidArgument, match="enable_auto_offset_store=False"):
            c.store_offsets(offsets={("so", 0): 1})
