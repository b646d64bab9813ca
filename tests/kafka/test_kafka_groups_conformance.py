"""Kafka listener, conformance with a real broker's consumer-group rules,
driven by real clients and raw frames (issue 15, items 2, 4 and 5):
static membership (KIP-345: a static member restarting within its session
gets its assignment back without a rebalance; a duplicate instance id fences
the older member with FENCED_INSTANCE_ID), OffsetCommit storing any offset
and its metadata string, and group.initial.rebalance.delay.ms (members that
join an empty group moments apart land in one generation). Every wait is
bounded."""

import threading
import time

import pytest

from kafka_util import Kafka, kafka  # noqa: F401  (fixture)
from test_kafka_protocol import call, request

FENCED_INSTANCE_ID = 82
OFFSET_METADATA_TOO_LARGE = 12


def _ck():
    return pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")


def _conf(kafka, **extra):
    conf = {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": "g",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "heartbeat.interval.ms": 200,
        "session.timeout.ms": 10_000,
    }
    conf.update(extra)
    return conf


def _poll_until(consumers, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(0.05)
        if pred():
            return
    pytest.fail(f"timed out waiting for {what() if callable(what) else what}")


def _group(kafka, gid="g"):
    return kafka.listener.groups.groups.get(gid)


# ------------------------------------------------------------ static membership (KIP-345)


class Tracked:
    """A confluent-kafka consumer whose assign/revoke callbacks are recorded."""

    def __init__(self, ck, conf, topics):
        self.assigned: set = set()
        self.revokes: list = []
        self.errors: list = []
        self.c = ck.Consumer(dict(conf, error_cb=self.errors.append))
        self.c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, parts):
        self.assigned = {(p.topic, p.partition) for p in parts}

    def _on_revoke(self, consumer, parts):
        self.revokes.append({(p.topic, p.partition) for p in parts})
        self.assigned = set()

    def poll(self, t):
        m = self.c.poll(t)
        if m is not None and m.error() is not None:
            self.errors.append(m.error())
        return m


@pytest.mark.conformance(client="confluent-kafka", feature="groups static")
def test_confluent_static_member_restart_keeps_its_assignment_without_a_rebalance(kafka):
    ck = _ck()
    kafka.log.create_topic("t", partitions=4, ring_bytes=1 << 16, persistence="none")
    a = Tracked(ck, _conf(kafka, **{"group.instance.id": "a"}), ["t"])
    b = Tracked(ck, _conf(kafka, **{"group.instance.id": "b"}), ["t"])
    b2 = None
    try:
        _poll_until(
            [a, b],
            lambda: len(a.assigned) + len(b.assigned) == 4 and _group(kafka).state == "Stable",
            30,
            "both static members assigned",
        )
        gen, had = _group(kafka).generation, set(b.assigned)
        a_revokes = len(a.revokes)
        b.c.close()  # a static member sends no LeaveGroup: it stays in the group until its session ends
        b2 = Tracked(ck, _conf(kafka, **{"group.instance.id": "b"}), ["t"])
        _poll_until([a, b2], lambda: b2.assigned == had, 30, "the restarted member's old assignment")
        for _ in range(10):  # a rebalance, if any, would reach a by heartbeat (200 ms)
            a.poll(0.1)
            b2.poll(0.01)
        assert len(a.revokes) == a_revokes, "the other member was revoked: a rebalance happened"
        assert _group(kafka).generation == gen and _group(kafka).state == "Stable"
        assert len(a.assigned) == 2 and not a.errors and not b2.errors
        assert sorted(m.instance_id for m in _group(kafka).members.values()) == ["a", "b"]
    finally:
        a.c.close()
        if b2 is not None:
            b2.c.close()


@pytest.mark.conformance(client="confluent-kafka", feature="groups static")
def test_confluent_duplicate_instance_id_fences_the_older_member(kafka):
    ck = _ck()
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 16, persistence="none")
    conf = _conf(kafka, **{"group.instance.id": "dup"})
    old = Tracked(ck, conf, ["t"])
    new = None
    try:
        _poll_until([old], lambda: len(old.assigned) == 2, 30, "the first member assigned")
        new = Tracked(ck, conf, ["t"])
        _poll_until([new], lambda: len(new.assigned) == 2, 30, "the second member takes the instance's assignment")

        def fenced():  # librdkafka: a fatal error (_FATAL) whose cause is FENCED_INSTANCE_ID
            fatal = (ck.KafkaError._FATAL, ck.KafkaError.FENCED_INSTANCE_ID)
            return any(e.code() in fatal and "same group.instance.id" in e.str() for e in old.errors)

        _poll_until([old, new], fenced, 30, lambda: f"the older member fenced: {old.errors}")
        assert len(_group(kafka).members) == 1 and not new.errors
        assert len(new.assigned) == 2
    finally:
        if new is not None:
            new.c.close()
        old.c.close()


@pytest.mark.conformance(client="kafka-python", feature="groups static")
def test_kafka_python_static_member_restart_keeps_its_assignment(kafka):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    ck = _ck()
    kafka.log.create_topic("t", partitions=4, ring_bytes=1 << 16, persistence="none")
    other = Tracked(ck, _conf(kafka, **{"group.instance.id": "ck"}), ["t"])

    def kp_consumer():
        return kp.KafkaConsumer(
            "t",
            bootstrap_servers=kafka.bootstrap,
            group_id="g",
            group_instance_id="kp",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=200,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    # the confluent member first, alone, so it leads the group: with kafka-python 3.0.12 as the
    # leader of a group with a librdkafka member, the kafka-python leader rejoins right after
    # every sync (a rebalance every poll; seen when a loaded run let it join first)
    _poll_until([other], lambda: len(other.assigned) == 4, 30, "the confluent member alone assigned")
    k = kp_consumer()
    k2 = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(k.assignment()) + len(other.assigned) == 4):
            k.poll(50)
            other.poll(0.05)
        assert len(k.assignment()) + len(other.assigned) == 4
        had, gen, revokes = set(k.assignment()), _group(kafka).generation, len(other.revokes)
        k.close()  # a static member: no LeaveGroup
        k2 = kp_consumer()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(k2.assignment()) != had:
            k2.poll(50)
            other.poll(0.05)
        assert set(k2.assignment()) == had
        for _ in range(10):
            other.poll(0.1)
        assert len(other.revokes) == revokes and _group(kafka).generation == gen
    finally:
        other.c.close()
        if k2 is not None:
            k2.close()


def _sjoin(c, instance, member="", corr=1):
    return call(c, 11, 5, _join_body(instance, member), corr=corr)


def _ssync(c, gen, member, instance, assignments, corr):
    body = {
        "GroupId": "s",
        "GenerationId": gen,
        "MemberId": member,
        "GroupInstanceId": instance,
        "Assignments": assignments,
    }
    return call(c, 14, 3, body, corr=corr)


def _shb(c, gen, member, instance, corr):
    body = {"GroupId": "s", "GenerationId": gen, "MemberId": member, "GroupInstanceId": instance}
    return call(c, 12, 3, body, corr=corr)["ErrorCode"]


def _scommit(c, gen, member, instance, corr, offset=0, metadata=None, group="s"):
    body = {
        "GroupId": group,
        "GenerationIdOrMemberEpoch": gen,
        "MemberId": member,
        "GroupInstanceId": instance,
        "RetentionTimeMs": -1,
        "Topics": [
            {
                "Name": "t",
                "Partitions": [
                    {
                        "PartitionIndex": 0,
                        "CommittedOffset": offset,
                        "CommittedLeaderEpoch": -1,
                        "CommittedMetadata": metadata,
                    }
                ],
            }
        ],
    }
    return call(c, 8, 7, body, corr=corr)["Topics"][0]["Partitions"][0]["ErrorCode"]


def test_static_member_fencing_rules_on_every_group_api(kafka):
    """The newest join of an instance id wins: the replaced member id gets
    FENCED_INSTANCE_ID on Heartbeat, SyncGroup, OffsetCommit and JoinGroup;
    the new one keeps the generation and the assignment the leader gave;
    LeaveGroup naming the instance id removes it."""
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    a = kafka.raw()
    j = _sjoin(a, "i1")
    old, gen = j["MemberId"], j["GenerationId"]
    assert j["ErrorCode"] == 0 and j["Leader"] == old
    assert _ssync(a, gen, old, "i1", [{"MemberId": old, "Assignment": b"p0"}], 2)["Assignment"] == b"p0"
    b = kafka.raw()
    j2 = _sjoin(b, "i1", corr=3)  # the same instance again, with no member id: a restart (or a duplicate)
    new = j2["MemberId"]
    assert j2["ErrorCode"] == 0 and new != old and j2["GenerationId"] == gen  # no rebalance
    assert j2["Leader"] == new  # it replaced the leader
    assert _ssync(b, gen, new, "i1", [{"MemberId": new, "Assignment": b"ignored"}], 4)["Assignment"] == b"p0"
    assert _group(kafka, "s").state == "Stable"
    assert _shb(a, gen, old, "i1", 5) == FENCED_INSTANCE_ID
    assert _ssync(a, gen, old, "i1", [], 6)["ErrorCode"] == FENCED_INSTANCE_ID
    assert _scommit(a, gen, old, "i1", 7) == FENCED_INSTANCE_ID
    assert _sjoin(a, "i1", member=old, corr=8)["ErrorCode"] == FENCED_INSTANCE_ID
    assert _shb(b, gen, new, "i1", 9) == 0
    assert _scommit(b, gen, new, "i1", 10) == 0
    # the leader's own rejoin (a known member id) rebalances, as in Kafka
    again = _sjoin(b, "i1", member=new, corr=11)
    assert again["ErrorCode"] == 0 and again["GenerationId"] == gen + 1
    lv = call(b, 13, 3, {"GroupId": "s", "Members": [{"MemberId": "", "GroupInstanceId": "i1"}]}, corr=12)
    assert lv["ErrorCode"] == 0 and lv["Members"][0]["ErrorCode"] == 0 and lv["Members"][0]["MemberId"] == new
    assert not _group(kafka, "s").members and _group(kafka, "s").state == "Empty"
    lv = call(b, 13, 3, {"GroupId": "s", "Members": [{"MemberId": "", "GroupInstanceId": "i1"}]}, corr=13)
    assert lv["Members"][0]["ErrorCode"] == 25  # UNKNOWN_MEMBER_ID: gone
    a.close()
    b.close()


def test_static_rejoin_during_completing_rebalance_rebalances(kafka):
    """Kafka: a known static instance joining while the leader computes the
    assignment voids that generation (the leader assigned the old member id)."""
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    a = kafka.raw()
    j = _sjoin(a, "i1")
    old, gen = j["MemberId"], j["GenerationId"]
    assert _group(kafka, "s").state == "CompletingRebalance"
    b = kafka.raw()
    rb = _sjoin(b, "i1", corr=2)
    assert rb["ErrorCode"] == 0 and rb["GenerationId"] == gen + 1 and rb["Leader"] == rb["MemberId"] != old
    assert _ssync(a, gen, old, "i1", [{"MemberId": old, "Assignment": b"x"}], 3)["ErrorCode"] == FENCED_INSTANCE_ID
    s = _ssync(b, gen + 1, rb["MemberId"], "i1", [{"MemberId": rb["MemberId"], "Assignment": b"y"}], 4)
    assert s["ErrorCode"] == 0 and s["Assignment"] == b"y"
    a.close()
    b.close()


def _join_body(instance, member=""):
    return {
        "GroupId": "s",
        "SessionTimeoutMs": 10_000,
        "RebalanceTimeoutMs": 3_000,
        "MemberId": member,
        "GroupInstanceId": instance,
        "ProtocolType": "consumer",
        "Protocols": [{"Name": "range", "Metadata": b"m"}],
    }


# ------------------------------------------------------------ commits: any offset, metadata


def _fetch(c, group, corr):
    f = call(c, 9, 5, {"GroupId": group, "Topics": [{"Name": "t", "PartitionIndexes": [0]}], "RequireStable": False})
    p = f["Topics"][0]["Partitions"][0]
    return p["CommittedOffset"], p["Metadata"], p["ErrorCode"]


def test_commit_stores_any_offset_and_its_metadata(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("t", [b"v"] * 5, partition=0)
    c = kafka.raw()
    assert _scommit(c, -1, "", None, 1, offset=1_000_000, metadata="past the end", group="any") == 0
    assert _fetch(c, "any", 2) == (1_000_000, "past the end", 0)
    assert kafka.log.committed_offsets("any") == {("t", 0): 1_000_000}
    assert _scommit(c, -1, "", None, 3, offset=3, metadata=None, group="any") == 0
    assert _fetch(c, "any", 4) == (3, "", 0)  # null metadata is stored as "" (Kafka's rule)
    assert _scommit(c, -1, "", None, 5, offset=4, metadata="x" * 4096, group="any") == 0
    assert _fetch(c, "any", 6) == (4, "x" * 4096, 0)
    assert _scommit(c, -1, "", None, 7, offset=2, metadata="x" * 4097, group="any") == OFFSET_METADATA_TOO_LARGE
    assert _fetch(c, "any", 8) == (4, "x" * 4096, 0)  # nothing stored
    c.close()


@pytest.mark.conformance(client="confluent-kafka", feature="commits")
def test_confluent_commit_metadata_and_an_offset_past_the_end(kafka):
    ck = _ck()
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("t", [b"v%d" % i for i in range(5)], partition=0)
    c = ck.Consumer(_conf(kafka, **{"group.id": "meta"}))
    try:
        tp = ck.TopicPartition("t", 0, 3, metadata="app-state-7")
        c.commit(offsets=[tp], asynchronous=False)
        (got,) = c.committed([ck.TopicPartition("t", 0)], timeout=10)
        assert (got.offset, got.metadata) == (3, "app-state-7")
        c.commit(offsets=[ck.TopicPartition("t", 0, 500)], asynchronous=False)  # past the end: stored
        (got,) = c.committed([ck.TopicPartition("t", 0)], timeout=10)
        assert got.offset == 500 and got.error is None
    finally:
        c.close()
    assert kafka.log.committed_offsets("meta") == {("t", 0): 500}
    # the group's consumer resumes there: out of range, so auto.offset.reset (earliest) applies
    c = ck.Consumer(_conf(kafka, **{"group.id": "meta"}))
    try:
        c.subscribe(["t"])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m.value())
        assert got == [b"v%d" % i for i in range(5)]
    finally:
        c.close()


@pytest.mark.conformance(client="kafka-python", feature="commits")
def test_kafka_python_commit_metadata_survives_a_listener_restart(inst):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    from kafka.structs import OffsetAndMetadata, TopicPartition

    inst.log.create_topic("t", ring_bytes=1 << 16)
    with inst.log.producer() as p:
        p.send_batch("t", [b"v"] * 5, partition=0)
    k = Kafka(inst)
    try:
        c = kp.KafkaConsumer(bootstrap_servers=k.bootstrap, group_id="kp", enable_auto_commit=False)
        tp = TopicPartition("t", 0)
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(2, "kp-meta", -1)})
        assert c.committed(tp, metadata=True).metadata == "kp-meta"
        c.close()
    finally:
        k.stop()
    k = Kafka(inst)  # a new listener process reads the metadata back
    try:
        c = kp.KafkaConsumer(bootstrap_servers=k.bootstrap, group_id="kp", enable_auto_commit=False)
        got = c.committed(TopicPartition("t", 0), metadata=True)
        assert (got.offset, got.metadata) == (2, "kp-meta")
        c.close()
    finally:
        k.stop()


# ------------------------------------------------------------ group.initial.rebalance.delay.ms


@pytest.mark.conformance(client="confluent-kafka", feature="groups eager")
def test_confluent_members_joining_moments_apart_get_one_generation(inst):
    ck = _ck()
    inst.log.create_topic("t", partitions=4, ring_bytes=1 << 16, persistence="none")
    k = Kafka(inst, group_initial_rebalance_delay_ms=500)
    cs = []
    try:
        conf = _conf(k)
        cs.append(Tracked(ck, conf, ["t"]))
        time.sleep(0.003)
        cs.append(Tracked(ck, conf, ["t"]))
        _poll_until(cs, lambda: all(len(c.assigned) == 2 for c in cs), 30, "both members assigned")
        g = k.listener.groups.groups["g"]
        assert g.generation == 1 and len(g.members) == 2
        assert all(not c.revokes for c in cs), "a second rebalance revoked a member"
    finally:
        for c in cs:
            c.c.close()
        k.stop()


def test_initial_rebalance_delay_is_a_listener_option(inst):
    """[kafka] group_initial_rebalance_delay_ms and --group-initial-rebalance-delay-ms
    reach the coordinator; a negative delay is refused."""
    from shmlog import errors
    from shmlog.kafka import cli
    from shmlog.service import configfile

    spec = configfile.KafkaSpec(listen="127.0.0.1:0", group_initial_rebalance_delay_ms=42)
    run = cli.start(inst.log, "127.0.0.1", 0, **spec.options())
    try:
        assert run.listener.groups.initial_delay_ms == 42
    finally:
        run.stop()
    bad = configfile.ServiceConfig(
        kafka=configfile.KafkaSpec(listen="127.0.0.1:0", group_initial_rebalance_delay_ms=-1)
    )
    with pytest.raises(errors.InvalidConfig, match="group_initial_rebalance_delay_ms"):
        configfile.validate(bad)
    assert (
        cli.build_parser().parse_args(["--group-initial-rebalance-delay-ms", "7"]).group_initial_rebalance_delay_ms == 7
    )


def test_initial_delay_is_extended_by_each_join_up_to_the_rebalance_timeout(inst):
    inst.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    k = Kafka(inst, group_initial_rebalance_delay_ms=400)
    a, b = k.raw(), k.raw()
    try:
        t0 = time.monotonic()
        a.send_frame(request(11, 5, 1, _join_body(None)))
        time.sleep(0.3)
        b.send_frame(request(11, 5, 1, _join_body(None)))  # inside the delay: extends it
        from test_kafka_protocol import S

        ra, _ = S.apis[11].response.decode(a.recv_frame(), 5, 4)
        waited = time.monotonic() - t0
        rb, _ = S.apis[11].response.decode(b.recv_frame(), 5, 4)
        assert ra["GenerationId"] == rb["GenerationId"] == 1
        assert len(ra["Members"]) + len(rb["Members"]) == 2
        assert 0.65 <= waited < 3.0, waited  # 400 ms, then another 400 ms for b's join
    finally:
        a.close()
        b.close()
        k.stop()


# ------------------------------------------------------------ many members, changing subscriptions

# librdkafka's test 0113 u_multiple_subscription_changes: (time s, consumer, subscription)
_PLAYBOOK = [
    (0, 0, 1), (4, 1, 1), (4, 1, 1), (4, 1, 1), (4, 2, 1), (6, 3, 1), (6, 4, 1), (6, 5, 1), (6, 6, 1),
    (6, 7, 2), (6, 1, 1), (6, 1, 2), (6, 1, 1), (6, 2, 2), (7, 2, 1), (7, 1, 2), (8, 0, 2), (8, 1, 1),
    (8, 0, 1), (13, 2, 1), (13, 1, 2), (13, 5, 2), (14, 6, 2), (15, 7, 1), (15, 1, 1), (15, 5, 1), (15, 6, 1),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.conformance(client="confluent-kafka", feature="groups cooperative")
@pytest.mark.parametrize("variation", [0, 1, 2])
def test_confluent_eight_members_changing_subscriptions_settle(kafka, variation):
    """8 cooperative-sticky members subscribing and re-subscribing to changing
    topic sets (the playbook of librdkafka's 0113): every member ends with its
    share of the partitions of what it subscribes to, no partition unowned."""
    ck = _ck()
    for t in ("u1", "u2"):
        kafka.log.create_topic(t, partitions=16, ring_bytes=1 << 16, persistence="none")
    subs = {1: ["u1"], 2: [["u1", "u2"], ["u2"], []][variation]}
    conf = _conf(kafka, **{"partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 6000})
    owned: list[set] = [set() for _ in range(8)]

    def callbacks(i):
        def on_assign(c, parts):
            owned[i] |= {(p.topic, p.partition) for p in parts}

        def on_revoke(c, parts):
            owned[i] -= {(p.topic, p.partition) for p in parts}

        return {"on_assign": on_assign, "on_revoke": on_revoke, "on_lost": on_revoke}

    cs = [ck.Consumer(dict(conf, **{"client.id": f"C_{i}"})) for i in range(8)]
    current: dict[int, list] = {}
    try:
        t0 = time.monotonic()
        for at, i, sub in _PLAYBOOK:
            while time.monotonic() - t0 < at:
                for c in cs:
                    c.poll(0.01)
            topics = subs[sub]
            current[i] = topics
            if topics:
                cs[i].subscribe(topics, **callbacks(i))
            else:
                cs[i].unsubscribe()

        def expected(i):
            return sum(16 // sum(t in current.get(j, []) for j in range(8)) for t in current.get(i, []))

        def settled():
            return all(len(owned[i]) == expected(i) for i in range(8))

        _poll_until(cs, settled, 60, lambda: f"{[len(o) for o in owned]} vs {[expected(i) for i in range(8)]}")
        subscribed = {t for ts in current.values() for t in ts}
        assert sorted(tp for o in owned for tp in o) == sorted((t, p) for t in subscribed for p in range(16))
    finally:
        for c in cs:
            c.close()
