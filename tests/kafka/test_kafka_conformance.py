"""Kafka listener, conformance with a real broker's group rules, driven by
real clients (issue 15): a member of the current generation commits while
the group prepares a rebalance (what librdkafka does in its revoke callback)
— Kafka accepts it; only a commit during CompletingRebalance is refused.
Every wait is bounded."""

import time

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)
from test_kafka_groups_conformance import _conf, _scommit
from test_kafka_protocol import call, request


@pytest.mark.conformance(client="confluent-kafka", feature="commits")
def test_confluent_commit_in_the_revoke_callback_is_accepted(kafka):
    ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        for i in range(20):
            p.send("t", b"m%d" % i, partition=i % 2)
    conf = _conf(kafka)
    revoked, commit_errors = [], []

    def on_revoke(consumer, parts):
        revoked.append([(p.topic, p.partition) for p in parts])
        try:
            consumer.commit(asynchronous=False)  # the consumed positions of what it gives up
            commit_errors.append(None)
        except ck.KafkaException as e:
            commit_errors.append(str(e))  # (a later revoke at close has none: _NO_OFFSET)

    c1 = ck.Consumer(conf)
    c2 = None
    try:
        c1.subscribe(["t"], on_revoke=on_revoke)
        got = 0
        deadline = time.monotonic() + 30
        while got < 20 and time.monotonic() < deadline:
            m = c1.poll(0.2)
            got += m is not None and m.error() is None
        assert got == 20
        c2 = ck.Consumer(conf)
        c2.subscribe(["t"])
        deadline = time.monotonic() + 30
        while not revoked and time.monotonic() < deadline:
            c1.poll(0.1)
            c2.poll(0.1)
        assert revoked, "no rebalance reached the first member"
    finally:
        c1.close()
        if c2 is not None:
            c2.close()
    assert commit_errors[0] is None, commit_errors  # the first revoke: during PreparingRebalance
    assert kafka.log.committed_offsets("g") == {("t", 0): 10, ("t", 1): 10}


def _join(c, group, member="", corr=1):
    proto = [{"Name": "range", "Metadata": b"\x00\x00\x00\x00\x00\x01\x00\x01t\x00\x00\x00\x00"}]
    body = {
        "GroupId": group,
        "SessionTimeoutMs": 10_000,
        "RebalanceTimeoutMs": 3_000,
        "MemberId": member,
        "GroupInstanceId": None,
        "ProtocolType": "consumer",
        "Protocols": proto,
    }
    return call(c, 11, 5, body, corr=corr)


def _commit(c, group, gen, member, offset, corr):
    return _scommit(c, gen, member, None, corr, offset=offset, group=group)


def test_commit_rules_per_group_state(kafka):
    """Stable and PreparingRebalance: current-generation commits accepted, an old
    generation ILLEGAL_GENERATION; CompletingRebalance: REBALANCE_IN_PROGRESS."""
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        for _i in range(10):
            p.send("t", b"x", partition=0)
    a = kafka.raw()
    j = _join(a, "g")
    member, gen = j["MemberId"], j["GenerationId"]
    sync = {
        "GroupId": "g",
        "GenerationId": gen,
        "MemberId": member,
        "GroupInstanceId": None,
        "Assignments": [{"MemberId": member, "Assignment": b""}],
    }
    assert call(a, 14, 3, sync, corr=2)["ErrorCode"] == 0
    assert _commit(a, "g", gen, member, 3, corr=3) == 0  # Stable
    b = kafka.raw()
    b.send_frame(
        request(
            11,
            5,
            4,
            {
                "GroupId": "g",
                "SessionTimeoutMs": 10_000,
                "RebalanceTimeoutMs": 3_000,
                "MemberId": "",
                "GroupInstanceId": None,
                "ProtocolType": "consumer",
                "Protocols": [{"Name": "range", "Metadata": b""}],
            },
        )
    )
    deadline = time.monotonic() + 5
    while kafka.listener.groups.groups["g"].state != "PreparingRebalance" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kafka.listener.groups.groups["g"].state == "PreparingRebalance"
    assert _commit(a, "g", gen, member, 5, corr=5) == 0  # PreparingRebalance: accepted
    assert _commit(a, "g", gen - 1, member, 6, corr=6) == 22  # ILLEGAL_GENERATION
    assert kafka.log.committed_offsets("g")[("t", 0)] == 5
    j2 = _join(a, "g", member=member, corr=7)  # a rejoins: the join completes
    assert j2["ErrorCode"] == 0 and j2["GenerationId"] == gen + 1
    assert kafka.listener.groups.groups["g"].state == "CompletingRebalance"
    assert _commit(a, "g", gen + 1, member, 7, corr=8) == 27  # REBALANCE_IN_PROGRESS
    assert kafka.log.committed_offsets("g")[("t", 0)] == 5
    b.close()
    a.close()
