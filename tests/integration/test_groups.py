"""Consumer groups in one process: assignors, the group API, commits, fencing,
offsets on disk, and bad input. Multi-process behaviour (kills, SIGSTOP,
restarts) is in test_groups_mp.py."""

import os
import time

import msgspec
import pytest

from shmlog import errors
from shmlog.control import groups
from shmlog._native import ffi, lib
from shmlog.control import assignors
from shmlog.control import tables

FAST = dict(session_timeout_ms=1000, heartbeat_interval_ms=50)


def until(cond, timeout=5.0, every=0.01, poll=(), sink=None):
    """Polls the consumers in `poll` (so they see rebalances) until cond()
    holds; records they return go to sink."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in poll:
            m = c.poll(timeout=0)
            if m is not None and sink is not None:
                sink.append(m)
        if cond():
            return True
        time.sleep(every)
    return cond()


def fill(log, topic, partitions, per_partition):
    p = log.producer()
    for part in range(partitions):
        p.send_batch(topic, [b"%d-%d" % (part, i) for i in range(per_partition)], partition=part)
    return p


def drain(consumers, want, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for c in consumers:
            got += c.poll_batch(1000, timeout=0.01)
    return got


@pytest.fixture
def topic6(inst):
    inst.log.create_topic("t6", partitions=6, persistence="none", ring_bytes=1 << 16)
    return "t6"


# ------------------------------------------------------------------ assignors


def _universe(partitions):
    return sorted((t, p) for t, n in partitions.items() for p in range(n))


def test_range_assignor_matches_kafka():
    # Kafka's RangeAssignor javadoc example: C0, C1 on t0, t1 with 3 partitions each
    subs = {"C0": {"t0", "t1"}, "C1": {"t0", "t1"}}
    out = assignors.assign_range(["C0", "C1"], subs, {"t0": 3, "t1": 3}, {})
    assert sorted(tp for tp, m in out.items() if m == "C0") == [("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]
    assert sorted(tp for tp, m in out.items() if m == "C1") == [("t0", 2), ("t1", 2)]


def test_roundrobin_assignor_matches_kafka():
    # Kafka's RoundRobinAssignor javadoc example
    subs = {"C0": {"t0", "t1"}, "C1": {"t0", "t1"}}
    out = assignors.assign_roundrobin(["C0", "C1"], subs, {"t0": 3, "t1": 3}, {})
    assert sorted(tp for tp, m in out.items() if m == "C0") == [("t0", 0), ("t0", 2), ("t1", 1)]
    assert sorted(tp for tp, m in out.items() if m == "C1") == [("t0", 1), ("t1", 0), ("t1", 2)]


@pytest.mark.parametrize("n_parts,before,after", [(6, 3, 4), (12, 4, 5), (7, 2, 3), (6, 4, 3), (3, 2, 5)])
def test_sticky_assignor_moves_only_what_must_move(n_parts, before, after):
    parts = {"t": n_parts}
    members = [f"m{i}" for i in range(max(before, after))]
    subs = {m: {"t"} for m in members}
    first = assignors.assign_sticky(members[:before], subs, parts, {})
    second = assignors.assign_sticky(members[:after], subs, parts, first)
    assert sorted(second) == _universe(parts)  # covers everything
    loads = [sum(1 for m in second.values() if m == x) for x in members[:after]]
    assert max(loads) - min(loads) <= 1  # balanced
    moved = sum(1 for tp in second if first.get(tp) != second[tp])
    survivors = set(members[: min(before, after)])
    # what must move: partitions of members that left, plus what newcomers need
    orphaned = sum(1 for m in first.values() if m not in survivors)
    newcomers = max(after - before, 0)
    assert moved <= orphaned + newcomers * -(-n_parts // after)


def test_sticky_assignor_with_different_subscriptions():
    subs = {"a": {"x"}, "b": {"x", "y"}, "c": {"y"}}
    out = assignors.assign_sticky(["a", "b", "c"], subs, {"x": 4, "y": 4}, {})
    assert sorted(out) == _universe({"x": 4, "y": 4})
    for tp, m in out.items():
        assert tp[0] in subs[m]


# ------------------------------------------------------------------ the group API


def test_members_split_partitions_and_commit(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 10)
    c1 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    assert len(c1.assignment()) == 6
    c2 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    got = []
    assert until(lambda: len(c1.assignment()) == 3 and len(c2.assignment()) == 3, poll=(c1, c2), sink=got)
    assert set(c1.assignment()).isdisjoint(c2.assignment())
    got += drain([c1, c2], 60 - len(got))
    assert sorted((m.partition, m.offset) for m in got) == [(p, o) for p in range(6) for o in range(10)]
    c1.commit()
    c2.commit(durable=True)
    d = log.describe_group("g")
    assert d.state == "Stable" and len(d.members) == 2 and d.assignor == "cooperative-sticky"
    assert [(x.partition, x.committed, x.end_offset, x.lag) for x in d.partitions] == [(p, 10, 10, 0) for p in range(6)]
    owners = {x.partition: x.member_id for x in d.partitions}
    for m in d.members:
        assert sorted(p for _, p in m.assignment) == sorted(p for p, o in owners.items() if o == m.member_id)
    assert log.committed_offsets("g") == {(topic6, p): 10 for p in range(6)}
    assert c1.committed(topic6, c1.assignment()[0][1]) == 10
    # the durable commit wrote every committed offset to disk
    snap = msgspec.msgpack.decode(open(os.path.join(log.settings.data_dir, "meta", "offsets.msgpack"), "rb").read())
    assert sorted((r[1], r[2]) for r in snap["groups"]["g"]) == [(p, 10) for p in range(6)]
    assert log.list_groups() == ["g"]


def test_leaving_member_hands_over_at_committed_offset(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 5)
    c1 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    c2 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    seen = []
    assert until(lambda: len(c2.assignment()) == 3, poll=(c1, c2), sink=seen)
    theirs = {p for _, p in c2.assignment()}
    seen += drain([c2], 15)
    c2.close()  # auto-commit on close, then leave
    assert until(lambda: len(c1.assignment()) == 6, poll=(c1,), sink=seen)
    seen += drain([c1], 30 - len(seen), timeout=3)
    # every record once: c2's partitions continue at its committed offsets
    assert sorted((m.partition, m.offset) for m in seen) == [(p, o) for p in range(6) for o in range(5)]
    assert {m.partition for m in seen if m.partition in theirs} == theirs


def test_revoke_commits_first_and_callbacks_run_in_order(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 4)
    events = []
    cb = dict(
        on_assign=lambda c, tps: events.append(("assign", sorted(tps))),
        on_revoke=lambda c, tps: events.append(
            ("revoke", sorted(tps), [log.committed_offsets("g").get(tp) for tp in sorted(tps)])
        ),
    )
    c1 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST, **cb)
    assert events == [("assign", [(topic6, p) for p in range(6)])]
    drain([c1], 24)
    c2 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    assert until(lambda: len(c2.assignment()) == 3, poll=(c1, c2))
    kind, revoked, committed_then = events[1]
    assert kind == "revoke" and len(revoked) == 3
    assert committed_then == [4, 4, 4]  # committed before on_revoke ran
    assert len(events) == 2  # cooperative: kept partitions are not revoked
    assert not drain([c2], 1, timeout=0.3)  # c2 starts at the committed offsets


def test_eager_assignor_revokes_everything(inst, topic6):
    log = inst.log
    events = []
    cb = dict(
        on_assign=lambda c, tps: events.append(("assign", len(tps))),
        on_revoke=lambda c, tps: events.append(("revoke", len(tps))),
    )
    c1 = log.consumer(group="g", topics=[topic6], partition_assignment_strategy="range", **FAST, **cb)
    c2 = log.consumer(group="g", topics=[topic6], partition_assignment_strategy="range", **FAST)
    assert until(lambda: len(c2.assignment()) == 3, poll=(c1, c2))
    assert events[:3] == [("assign", 6), ("revoke", 6), ("assign", 3)]
    with pytest.raises(errors.InvalidArgument, match="same partition_assignment_strategy"):
        log.consumer(group="g", topics=[topic6], **FAST)


def test_fenced_member_cannot_commit_and_rejoins(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 3)
    c1 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    drain([c1], 18)
    # c1 stops heartbeating (what SIGSTOP does to a process); c2 reaps it after the session timeout
    c1._group._stop.set()
    c1._group._thread.join(2)
    c2 = log.consumer(group="g", topics=[topic6], auto_offset_reset="earliest", **FAST)
    assert until(lambda: len(c2.assignment()) == 6, timeout=5, poll=(c2,))
    c2.commit({(topic6, 0): 1})
    with pytest.raises(errors.CommitFailed):
        c1.commit()
    assert log.committed_offsets("g") == {(topic6, 0): 1}  # the zombie overwrote nothing
    lost = []
    c1._group.on_lost = lambda c, tps: lost.append(len(tps))
    c1.poll(timeout=0)  # sees it was removed: rejoins
    assert lost == [6]
    assert c1._group._still_member()
    assert until(lambda: len(c1.assignment()) == 3, poll=(c1, c2))
    c1.commit()


def test_unfenced_commit_and_assign_mode(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 5)
    log.commit_offsets("tool", {(topic6, 0): 2, (topic6, 1): 5})
    assert log.committed_offsets("tool") == {(topic6, 0): 2, (topic6, 1): 5}
    c = log.consumer(group="tool", auto_offset_reset="earliest")
    c.assign([(topic6, 0), (topic6, 2)])
    got = drain([c], 3 + 5)
    assert [m.offset for m in got if m.partition == 0] == [2, 3, 4]
    assert [m.offset for m in got if m.partition == 2] == [0, 1, 2, 3, 4]
    c.commit()
    assert log.committed_offsets("tool")[(topic6, 2)] == 5
    with pytest.raises(errors.InvalidArgument, match="not assigned"):
        c.commit({(topic6, 3): 1})
    # a live member owns the partitions: unfenced commits are refused
    m = log.consumer(group="tool", topics=[topic6], **FAST)
    with pytest.raises(errors.CommitFailed):
        log.commit_offsets("tool", {(topic6, 0): 0})
    with pytest.raises(errors.GroupNotEmpty):
        log.reset_offsets("tool", {(topic6, 0): 0})
    with pytest.raises(errors.GroupNotEmpty):
        log.delete_group("tool")
    m.close()
    log.reset_offsets("tool", {(topic6, 0): 0})
    assert log.committed_offsets("tool")[(topic6, 0)] == 0
    log.delete_group("tool")
    assert log.list_groups() == [] and log.committed_offsets("tool") == {}


def test_two_groups_each_get_the_whole_stream(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 20)
    a = log.consumer(group="a", topics=[topic6], auto_offset_reset="earliest", **FAST)
    b = log.consumer(group="b", topics=[topic6], auto_offset_reset="earliest", **FAST)
    assert len(drain([a], 120)) == 120 and len(drain([b], 120)) == 120


def test_offsets_survive_losing_shared_memory(inst, topic6):
    log = inst.log
    log.create_topic("d", partitions=2)  # durable: restored with the data dir
    fill(log, "d", 2, 10).flush(durable=True)
    c = log.consumer(group="g", topics=["d"], auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    drain([c], 20)
    c.commit({("d", 0): 7, ("d", 1): 10}, durable=True)
    c.close()
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()
    log = inst.connect()
    assert [log.describe_topic("d").partitions[p].end_offset for p in (0, 1)] == [10, 10]
    assert log.committed_offsets("g") == {("d", 0): 7, ("d", 1): 10}
    c = log.consumer(group="g", topics=["d"], auto_offset_reset="earliest", **FAST)
    got = drain([c], 3, timeout=3)
    assert [(m.partition, m.offset) for m in got] == [(0, 7), (0, 8), (0, 9)]
    c.close()
    log.close()


def test_persister_snapshots_plain_commits(inst):
    log = inst.log
    log.create_topic("d", partitions=1)
    fill(log, "d", 1, 4)
    log.commit_offsets("g", {("d", 0): 3})  # not durable: the persister writes it
    path = os.path.join(log.settings.data_dir, "meta", "offsets.msgpack")
    assert until(lambda: os.path.exists(path) and b"\x03" in open(path, "rb").read(), timeout=5)


def test_static_member_keeps_partitions_without_rebalancing_others(inst, topic6):
    log = inst.log
    revokes = []
    s1 = log.consumer(group="g", topics=[topic6], group_instance_id="svc-1", **FAST)
    other = log.consumer(group="g", topics=[topic6], **FAST, on_revoke=lambda c, tps: revokes.append(tps))
    assert until(lambda: len(other.assignment()) == 3, poll=(s1, other))
    revokes.clear()
    mine = sorted(s1.assignment())
    gen = log.describe_group("g").generation
    s1.close()  # a static member keeps its place until the session timeout
    s1b = log.consumer(group="g", topics=[topic6], group_instance_id="svc-1", **FAST)
    assert sorted(s1b.assignment()) == mine
    other.poll(timeout=0)
    assert revokes == [] and log.describe_group("g").generation == gen
    s1b.close()
    # gone for longer than the session timeout: the other member takes everything
    assert until(lambda: len(other.assignment()) == 6, timeout=5, poll=(other,))


def test_topic_deleted_under_a_group(inst, topic6):
    log = inst.log
    log.create_topic("u", partitions=2, persistence="none", ring_bytes=1 << 16)
    c = log.consumer(group="g", topics=[topic6, "u"], **FAST)
    assert len(c.assignment()) == 8
    log.delete_topic("u")
    assert until(lambda: len(c.assignment()) == 6, timeout=5, poll=(c,))


# ------------------------------------------------------------------ bad input


def test_bad_group_input(inst, topic6):
    log = inst.log
    fill(log, topic6, 6, 2)
    with pytest.raises(errors.UnknownGroup):
        log.describe_group("nope")
    with pytest.raises(errors.UnknownTopicOrPartition):
        log.consumer(group="g", topics=["missing"], **FAST)
    for bad in ("", "x" * 250, "new\nline"):
        with pytest.raises(errors.InvalidArgument):
            log.consumer(group=bad, topics=[topic6])
    with pytest.raises(errors.InvalidType):
        log.consumer(group=7, topics=[topic6])
    with pytest.raises(errors.InvalidArgument):
        log.consumer(group="g", topics=[topic6], partition_assignment_strategy="sticky-ish")
    with pytest.raises(errors.InvalidArgument):
        log.consumer(group="g", topics=[topic6], session_timeout_ms=100, heartbeat_interval_ms=100)
    with pytest.raises(errors.InvalidArgument):
        log.consumer(topics=[topic6], session_timeout_ms=1000)  # group options need a group
    with pytest.raises(errors.InvalidArgument):
        log.consumer(group="g", topics=[topic6], bogus_option=1)
    with pytest.raises(errors.InvalidArgument):
        log.consumer(topics=[topic6]).commit()  # no group: nothing to commit to
    c = log.consumer(group="g", topics=[topic6], **FAST)
    with pytest.raises(errors.OffsetOutOfRange):
        c.commit({(topic6, 0): 3})  # the log ends at 2
    with pytest.raises(errors.OffsetOutOfRange):
        c.commit({(topic6, 0): -1})
    with pytest.raises(errors.InvalidType):
        c.commit({(topic6, 0): "1"})
    with pytest.raises(errors.UnknownTopicOrPartition):
        c.committed(topic6, 6)
    with pytest.raises(errors.InvalidArgument):
        c.assign([(topic6, 0)])  # members do not assign
    with pytest.raises(errors.OffsetOutOfRange):
        log.commit_offsets("other", {(topic6, 1): 99})
    with pytest.raises(errors.InvalidArgument):
        log.commit_offsets("other", {topic6: 1})
    c.commit({(topic6, 0): 2})
    assert c.committed(topic6, 0) == 2


def test_group_tables_full(inst, topic6):
    log = inst.connect(instance=inst.kwargs["instance"] + "x", max_groups=1, max_members=1, max_offsets=6)
    try:
        log.create_topic("t", partitions=6, persistence="none", ring_bytes=1 << 16)
        c = log.consumer(group="g", topics=["t"], **FAST)
        with pytest.raises(errors.TableFull, match="member"):
            log.consumer(group="g", topics=["t"], **FAST)
        with pytest.raises(errors.TableFull, match="group"):
            log.commit_offsets("h", {("t", 0): 0})
        c.close()
        with pytest.raises(errors.InvalidArgument):
            inst.connect(instance=inst.kwargs["instance"] + "y", max_groups=0)
    finally:
        log.destroy()


def test_commit_cas_is_fenced_in_c(inst, topic6):
    """G2 at the C level: only the owner's token commits, and owner changes keep the offset."""
    log = inst.log
    log.commit_offsets("g", {(topic6, 0): 0})
    t = tables.tables_of(log)
    i = next(iter(_ for _ in t.group_offsets(t.find_group("g")).tolist()))
    e = t.offset(i)
    base = log._ctl.base
    lib.shm_offset_set_owner(e, 77, -2)
    assert lib.shm_offset_commit(base, e, 0, 0) == lib.SHM_E_FENCED
    assert lib.shm_offset_commit(base, e, 78, 0) == lib.SHM_E_FENCED
    seq = lib.shm_ctl_commit_seq(base)
    assert lib.shm_offset_commit(base, e, 77, 0) == lib.SHM_OK
    assert lib.shm_ctl_commit_seq(base) == seq + 1
    lib.shm_offset_set_owner(e, 0, -2)
    assert e.committed == 0 and e.owner == 0
    assert ffi.sizeof(e[0]) == 64


def test_two_live_processes_with_one_instance_id_fence_the_older(inst, topic6):
    log = inst.log
    old = log.consumer(group="g", topics=[topic6], group_instance_id="svc", **FAST)
    new = log.consumer(group="g", topics=[topic6], group_instance_id="svc", **FAST)
    assert len(new.assignment()) == 6
    with pytest.raises(errors.CommitFailed):
        old.commit()
    with pytest.raises(errors.FencedInstance):
        old.poll(timeout=0)
    new.poll(timeout=0)
    assert len(new.assignment()) == 6 and len(log.describe_group("g").members) == 1
    new.commit()


def test_topic_recreated_within_a_heartbeat_moves_the_member_to_the_new_life(inst):
    """Chaos seed 100: `dur` deleted and re-created between two syncs of a
    member keeps its (name, partition) but gets new offset entries. The member
    must read the new life from its start and commit into the new entries (the
    ones the snapshot writes): its durable commits then survive a reboot. It
    used to keep the dead generation's entries: it read nothing of the new
    topic, and whatever it committed was in no snapshot."""
    log = inst.log
    log.create_topic("dur", partitions=2, ring_bytes=1 << 18)
    fill(log, "dur", 2, 100)
    c = log.consumer(
        group="g",
        topics=["dur"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=30000,
        heartbeat_interval_ms=10000,
    )  # no heartbeat in between
    got = []
    assert until(lambda: got.extend(c.poll_batch(500, timeout=0.05)) or len(got) >= 200)
    c.commit({("dur", 0): 100, ("dur", 1): 100}, durable=True)
    log.delete_topic("dur")
    log.create_topic("dur", partitions=2, ring_bytes=1 << 18)
    # durable, so the reboot below keeps them: a commit past records a reboot lost
    # is restored at the log's new end (test_a_commit_past_records_a_reboot_lost...)
    fill(log, "dur", 2, 150).flush(durable=True, timeout=10)
    c._group._follow_topics()  # what the heartbeat thread does on its next tick
    with pytest.raises(errors.CommitFailed, match="re-created"):
        c.commit({("dur", 0): 1}, durable=True)  # the old life's entry: it could never be durable
    new = []
    assert until(lambda: new.extend(c.poll_batch(500, timeout=0.05)) or len(new) >= 300), (
        f"the member read {len(new)} of the new topic's 300 records"
    )
    assert sorted((m.partition, m.offset) for m in new) == [(p, o) for p in range(2) for o in range(150)]
    c.commit({("dur", 0): 150, ("dur", 1): 120}, durable=True)
    assert log.committed_offsets("g") == {("dur", 0): 150, ("dur", 1): 120}
    c.close()
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()  # reboot: the commit comes back from the snapshot
    inst.log = log = inst.connect()
    assert log.committed_offsets("g") == {("dur", 0): 150, ("dur", 1): 120}


def test_a_commit_past_records_a_reboot_lost_resumes_at_the_restored_end(inst):
    """A member may read (and durably commit past) records that were only in
    the ring; a reboot before the persister copied them loses them, and the
    restored log ends below the commit. The group resumes at that end (the
    truncation point, as Kafka's KIP-320 consumer does), reading the new
    records that get those offsets — not OffsetOutOfRange and a reset to the
    earliest offset, which redelivered every record below the durable commit
    (chaos seed 200: gdur p1 read again from 66975 after a commit of 67149)."""
    log = inst.log
    log.create_topic("d", partitions=1, ring_bytes=1 << 16)
    fill(log, "d", 1, 10).flush(durable=True)
    assert log.stop_persister()  # from here on records stay in the ring
    p = log.producer()
    p.send_batch("d", [b"ring-only-%d" % i for i in range(5)], partition=0)
    c = log.consumer(group="g", topics=["d"], auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    assert [m.offset for m in drain([c], 15)] == list(range(15))
    c.commit({("d", 0): 15}, durable=True)
    c.close()
    p.close()
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()  # reboot: the 5 ring-only records are gone
    log = inst.connect()
    assert log.describe_topic("d").partitions[0].end_offset == 10
    assert log.committed_offsets("g") == {("d", 0): 10}
    p = log.producer()
    p.send_batch("d", [b"new-%d" % i for i in range(3)], partition=0)
    c = log.consumer(group="g", topics=["d"], auto_offset_reset="earliest", **FAST)
    got = drain([c], 3, timeout=3)
    assert [(m.offset, m.value) for m in got] == [(10, b"new-0"), (11, b"new-1"), (12, b"new-2")]
    c.close()
    p.close()
    log.close()
