"""Kafka listener, conformance of the data and metadata paths with a real
broker (issue 15 items 1, 6, 7, 8, 9), driven by real clients and by raw
requests: Fetch size rules (KIP-74), manual replica assignments naming
broker 0, produce after a topic was deleted and auto-created again,
ApiVersions advertising exactly what is served, authorized operations and
Kafka's max.message.bytes. Every wait is bounded."""

import struct
import subprocess
import time

import pytest

from shmlog.kafka import codec, server

from kafka_util import Kafka, batch, header_v1, kafka  # noqa: F401  (fixture)
from test_kafka_clients import KCAT, need_kcat
from test_kafka_limits import batches_in, fill, multi_fetch, records_of
from test_kafka_protocol import S, call, fetch_body, produce_body, request

ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

produce_consume = pytest.mark.conformance(client="confluent-kafka", feature="produce/consume")
admin = pytest.mark.conformance(client="confluent-kafka", feature="admin")


def _admin(kafka):
    return AdminClient({"bootstrap.servers": kafka.bootstrap})


def _response_sizes(kafka):
    """Records bytes of every Fetch response the listener answers, in order
    (the handler wrapped in this process's listener)."""
    sizes, inner = [], kafka.listener._table[1]

    async def fetch(conn, req, version):
        resp = await inner(conn, req, version)
        parts = [p for t in resp["Responses"] for p in t["Partitions"]]
        sizes.append((req["MaxBytes"], [batches_in(bytes(p["Records"])) for p in parts]))
        return resp

    kafka.listener._table[1] = fetch
    return sizes


# ------------------------------------------------------------ item 1: Fetch size rules (KIP-74)


@produce_consume
def test_confluent_fetch_max_bytes_holds_for_every_response(kafka):
    """fetch.max.bytes=1000000 over four partitions of ~5 MB each: every
    response holds at most MaxBytes of records, except a response whose
    single first batch is larger; the consumer reads everything in order."""
    fill(kafka.log, "t", 4, 120, 4000, per_batch=10)  # 4 x 120 batches of ~40 KB
    with kafka.log.producer() as p:  # and one batch larger than fetch.max.bytes
        p.send_batch("t", [bytes(1_200_000)], partition=2)
    sizes = _response_sizes(kafka)
    c = ck.Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 1_000_000,
            "enable.auto.commit": False,
        }
    )
    want = {0: 1200, 1: 1200, 2: 1201, 3: 1200}
    seen = {p: 0 for p in range(4)}
    try:
        c.subscribe(["t"])
        deadline = time.monotonic() + 90
        while seen != want and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                assert m.offset() == seen[m.partition()]
                seen[m.partition()] += 1
    finally:
        c.close()
    assert seen == want
    assert sizes and all(mb == 1_000_000 for mb, _ in sizes)
    for max_bytes, parts in sizes:
        all_batches = [b for bs in parts for b in bs]
        if sum(all_batches) > max_bytes:  # only one oversized first batch, nothing else
            assert len(all_batches) == 1 and all_batches[0] > max_bytes, parts
    assert any(sum(b for bs in parts for b in bs) > 1_000_000 for _, parts in sizes)  # the big batch came


def test_a_long_poll_counts_what_it_already_holds_against_max_bytes(kafka):
    """A Fetch that waits for MinBytes re-reads the partitions that were
    empty: what the others already hold counts against MaxBytes, and an
    oversized batch may come only as the first batch of the response
    (KIP-74: the first batch of the first non-empty partition)."""
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 22, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("t", [bytes(3000)], partition=1)  # p1 holds 3 KB now
    c = kafka.raw()
    body = multi_fetch("t", [0, 1], 100_000, 1 << 20)
    body["MinBytes"], body["MaxWaitMs"] = 200_000, 5000
    c.send_frame(request(1, 11, 7, body))
    time.sleep(0.3)  # the fetch waits: p0 empty, 3 KB < MinBytes
    with kafka.log.producer() as p:
        p.send_batch("t", [bytes(150_000)], partition=0)  # larger than MaxBytes
    resp = c.recv_frame()
    out, _ = S.apis[1].response.decode(resp, 11, 4)
    got = records_of(out)
    total = sum(len(r) for _, _, r in got)
    # p0 (first in the request) may not take an oversized batch: p1's records are already in
    assert total <= 100_000, [(p, batches_in(r)) for _, p, r in got]
    assert [len(batches_in(r)) for _, _, r in got] == [0, 1]


def test_partition_max_bytes_lets_only_the_responses_first_batch_through(kafka):
    """PartitionMaxBytes caps each partition; a batch larger than it comes
    only when it is the first batch of the whole response."""
    kafka.log.create_topic("t", partitions=3, ring_bytes=1 << 22, persistence="none")
    with kafka.log.producer() as p:
        for part in (0, 1, 2):
            p.send_batch("t", [bytes(50_000)], partition=part)
            p.send_batch("t", [bytes(1_000)], partition=part)
    c = kafka.raw()
    got = records_of(call(c, 1, 11, multi_fetch("t", [0, 1, 2], 1 << 20, 10_000)))
    assert [len(batches_in(r)) for _, _, r in got] == [1, 0, 0]
    # the first partition empty (fetched at its end): the first non-empty one takes its first batch
    body = multi_fetch("t", [0, 1, 2], 1 << 20, 10_000)
    body["Topics"][0]["Partitions"][0]["FetchOffset"] = 2
    got = records_of(call(c, 1, 11, body, corr=2))
    assert [len(batches_in(r)) for _, _, r in got] == [0, 1, 0]
    assert len(got[1][2]) > 50_000


# ------------------------------------------------------------ item 6: manual replica assignments


@admin
def test_confluent_create_topics_with_replica_assignment_on_broker_0(kafka):
    a = _admin(kafka)
    fs = a.create_topics([NewTopic("ra", num_partitions=3, replica_assignment=[[0], [0], [0]])], request_timeout=10)
    fs["ra"].result(timeout=15)
    assert kafka.log.topic_handle("ra").partitions == 3
    md = a.list_topics("ra", timeout=10).topics["ra"]
    assert sorted(md.partitions) == [0, 1, 2] and all(p.replicas == [0] for p in md.partitions.values())
    for name, assignment in (("rb", [[1]]), ("rc", [[0, 1]]), ("rd", [[0], [0, 0]])):
        fs = a.create_topics(
            [NewTopic(name, num_partitions=len(assignment), replica_assignment=assignment)], request_timeout=10
        )
        with pytest.raises(ck.KafkaException) as e:
            fs[name].result(timeout=15)
        assert e.value.args[0].code() == ck.KafkaError.INVALID_REPLICA_ASSIGNMENT, (name, e.value)
        assert name not in kafka.log.list_topics()


@pytest.mark.conformance(client="kafka-python", feature="admin")
def test_kafka_python_create_topics_with_replica_assignment(kafka):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    from kafka.admin import KafkaAdminClient, NewTopic as KpNewTopic

    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        a.create_topics([KpNewTopic("kra", replica_assignments={0: [0], 1: [0]})])
        assert kafka.log.topic_handle("kra").partitions == 2
        with pytest.raises(kp.errors.InvalidReplicationAssignmentError):
            a.create_topics([KpNewTopic("krb", replica_assignments={0: [0], 1: [2]})])
        with pytest.raises(kp.errors.InvalidReplicationAssignmentError):  # partitions 0..n-1
            a.create_topics([KpNewTopic("krc", replica_assignments={0: [0], 2: [0]})])
        assert "krb" not in kafka.log.list_topics() and "krc" not in kafka.log.list_topics()
    finally:
        a.close()


def test_replica_assignment_with_partitions_or_replication_factor_is_invalid_request(kafka):
    c = kafka.raw()

    def create(name, n, rf, assignments):
        body = {
            "Topics": [
                {
                    "Name": name,
                    "NumPartitions": n,
                    "ReplicationFactor": rf,
                    "Assignments": [{"PartitionIndex": i, "BrokerIds": b} for i, b in enumerate(assignments)],
                    "Configs": [],
                }
            ],
            "timeoutMs": 5000,
            "validateOnly": False,
        }
        return call(c, 19, 4, body)["Topics"][0]["ErrorCode"]

    assert create("x1", 1, -1, [[0]]) == 42  # INVALID_REQUEST, as Kafka: one or the other
    assert create("x2", -1, 1, [[0]]) == 42
    assert create("x3", -1, -1, [[]]) == 39  # INVALID_REPLICA_ASSIGNMENT: an empty replica list
    assert create("x4", -1, -1, [[0], [0]]) == 0
    assert kafka.log.topic_handle("x4").partitions == 2


# ------------------------------------------------------------ item 7: delete, then auto-create again


def _produce_in_order(bootstrap, topic, n):
    """n messages from a non-idempotent producer; the delivery reports' (error, offset, value)."""
    reports = []
    p = ck.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": False,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 500,
            "max.in.flight": 5,
        }
    )
    for i in range(n):
        while True:
            try:
                p.produce(
                    topic, b"%d" % i, partition=0, on_delivery=lambda e, m: reports.append((e, m.offset(), m.value()))
                )
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(60) == 0
    return reports


@produce_consume
def test_confluent_produce_after_delete_and_auto_create_is_delivered_in_order(kafka):
    """librdkafka 0039 after 0005: 10000 messages, the topic deleted, 10000
    more to the topic the next Metadata auto-creates; the first Produce used
    to get UNKNOWN_TOPIC_OR_PARTITION (the listener's producer still held
    the deleted topic's ring), and the retry stored messages out of order."""
    first = _produce_in_order(kafka.bootstrap, "t39", 10_000)
    assert [e for e, _, _ in first if e is not None] == []
    a = _admin(kafka)  # held: a collected AdminClient fails its futures (_DESTROY)
    fs = a.delete_topics(["t39"], operation_timeout=10)
    fs["t39"].result(timeout=15)
    assert "t39" not in kafka.log.list_topics()
    again = _produce_in_order(kafka.bootstrap, "t39", 10_000)
    assert [e for e, _, _ in again if e is not None][:3] == []
    assert [(off, v) for _, off, v in again] == [(i, b"%d" % i) for i in range(10_000)]
    with kafka.log.consumer(auto_offset_reset="earliest") as c:
        c.assign([("t39", 0)])
        got, deadline = [], time.monotonic() + 20
        while len(got) < 10_000 and time.monotonic() < deadline:
            got += [m.value for m in c.poll_batch(5000, timeout=0.2)]
    assert got == [b"%d" % i for i in range(10_000)]


def test_raw_produce_after_delete_and_recreate_succeeds_at_once(kafka):
    kafka.log.create_topic("r", partitions=1, ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    one = batch([(None, b"v", ())])
    assert call(c, 0, 8, produce_body("r", 0, one))["Responses"][0]["PartitionResponses"][0]["ErrorCode"] == 0
    kafka.log.delete_topic("r")  # a native delete: the listener did not see it happen
    kafka.log.create_topic("r", partitions=1, ring_bytes=1 << 16, persistence="none")
    r = call(c, 0, 8, produce_body("r", 0, one), corr=2)["Responses"][0]["PartitionResponses"][0]
    assert (r["ErrorCode"], r["BaseOffset"]) == (0, 0)


# ------------------------------------------------------------ item 8: ApiVersions = what is served


def _minimal(key, version):
    """A minimal valid request body for every API the listener serves."""
    topic = [{"Name": "av"}]
    one = batch([(None, b"v", ())])
    bodies = {
        0: produce_body("av", 0, one),
        1: fetch_body("av", 0, 0),
        2: {
            "ReplicaId": -1,
            "IsolationLevel": 0,
            "Topics": [{"Name": "av", "Partitions": [{"PartitionIndex": 0, "Timestamp": -1, "MaxNumOffsets": 1}]}],
        },
        3: {"Topics": topic, "AllowAutoTopicCreation": False},
        8: {
            "GroupId": "avg",
            "GenerationIdOrMemberEpoch": -1,
            "MemberId": "",
            "RetentionTimeMs": -1,
            "Topics": [{"Name": "av", "Partitions": [{"PartitionIndex": 0, "CommittedOffset": 0}]}],
        },
        9: {"GroupId": "avg", "Topics": [{"Name": "av", "PartitionIndexes": [0]}]},
        10: {"Key": "avg", "KeyType": 0},
        11: {
            "GroupId": "avj",
            "SessionTimeoutMs": 6000,
            "RebalanceTimeoutMs": 6000,
            "MemberId": "",
            "ProtocolType": "consumer",
            "Protocols": [{"Name": "range", "Metadata": b""}],
        },
        12: {"GroupId": "avg", "GenerationId": -1, "MemberId": "nobody"},
        13: {"GroupId": "avg", "MemberId": "nobody", "Members": [{"MemberId": "nobody"}]},
        14: {"GroupId": "avg", "GenerationId": -1, "MemberId": "nobody", "Assignments": []},
        15: {"Groups": ["avg"]},
        16: {},
        19: {
            "Topics": [
                {"Name": "av%d" % version, "NumPartitions": 1, "ReplicationFactor": 1, "Assignments": [], "Configs": []}
            ],
            "timeoutMs": 5000,
            "validateOnly": True,
        },
        20: {"TopicNames": ["nope"], "TimeoutMs": 5000},
        22: {"TransactionalId": None, "TransactionTimeoutMs": 60000},
        23: {
            "ReplicaId": -1,
            "Topics": [{"Topic": "av", "Partitions": [{"Partition": 0, "CurrentLeaderEpoch": -1, "LeaderEpoch": 0}]}],
        },
        21: {"Topics": [{"Name": "av", "Partitions": [{"PartitionIndex": 0, "Offset": 0}]}], "TimeoutMs": 5000},
        37: {"Topics": [{"Name": "av", "Count": 2, "Assignments": None}], "TimeoutMs": 5000, "ValidateOnly": True},
        42: {"GroupsNames": ["nobody-group"]},
        47: {"GroupId": "avg", "Topics": [{"Name": "av", "Partitions": [{"PartitionIndex": 0}]}]},
        60: {"IncludeClusterAuthorizedOperations": False, "EndpointType": 1, "IncludeFencedBrokers": False},
        # the transaction APIs: an unknown transactional id answers its own error, never UNSUPPORTED_VERSION
        24: {
            "V3AndBelowTransactionalId": "nobody",
            "V3AndBelowProducerId": 1,
            "V3AndBelowProducerEpoch": 0,
            "V3AndBelowTopics": [{"Name": "av", "Partitions": [0]}],
        },
        25: {"TransactionalId": "nobody", "ProducerId": 1, "ProducerEpoch": 0, "GroupId": "avg"},
        26: {"TransactionalId": "nobody", "ProducerId": 1, "ProducerEpoch": 0, "Committed": False},
        28: {
            "TransactionalId": "nobody",
            "GroupId": "avg",
            "ProducerId": 1,
            "ProducerEpoch": 0,
            "Topics": [{"Name": "av", "Partitions": [{"PartitionIndex": 0, "CommittedOffset": 0}]}],
        },
        32: {"Resources": [{"ResourceType": 2, "ResourceName": "av", "ConfigurationKeys": None}]},
        33: {"Resources": [{"ResourceType": 2, "ResourceName": "av", "Configs": []}], "ValidateOnly": True},
        44: {"Resources": [{"ResourceType": 2, "ResourceName": "av", "Configs": []}], "ValidateOnly": True},
    }
    return bodies[key]


def _error_codes(obj):
    """Every ErrorCode anywhere in a decoded response."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "ErrorCode":
                yield v
            else:
                yield from _error_codes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _error_codes(v)


def _advertised(c):
    resp = call(c, 18, 3, {"ClientSoftwareName": "t", "ClientSoftwareVersion": "1"})
    assert resp["ErrorCode"] == 0
    return {k["ApiKey"]: (k["MinVersion"], k["MaxVersion"]) for k in resp["ApiKeys"]}


def test_every_advertised_version_is_served(kafka):
    """Each (api, version) ApiVersions lists gets a minimal valid request and
    no UNSUPPORTED_VERSION — except Produce 0-2, which Kafka 4 also lists
    (KAFKA-18659: librdkafka before 2.11.1 compresses only when Produce v0
    is listed) and answers with UNSUPPORTED_VERSION."""
    kafka.log.create_topic("av", partitions=1, ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    table = _advertised(c)
    corr = 10
    for key, (lo, hi) in sorted(table.items()):
        for version in range(lo, hi + 1):
            corr += 1
            if key == 18:
                body = {"ClientSoftwareName": "t", "ClientSoftwareVersion": "1"}
            else:
                body = _minimal(key, version)
            got = list(_error_codes(call(c, key, version, body, corr=corr)))
            if key == 0 and version < 3:
                assert got == [35], (key, version)
            else:
                assert 35 not in got, (key, version, got)
    assert table[1][0] == 4  # Fetch 0-3 (message sets v0/v1) are not served, not listed
    assert table == {k: (a.min_advertised, a.max) for k, a in server.APIS.items()}  # one table


def test_an_unadvertised_version_gets_unsupported_version(kafka):
    c = kafka.raw()
    table = _advertised(c)
    # ApiVersions itself above its range: a v0 body with error 35 and the whole table (KIP-511)
    c.send_frame(header_v1(18, 99, 5) + b"\x00\x00\x00")
    resp = c.recv_frame()
    assert struct.unpack_from(">ih", resp) == (5, 35)
    # an API whose response carries a top-level ErrorCode at that version: answered with 35
    # (ListGroups is served to its last version, 5: nothing above it to ask for; FindCoordinator 4+
    # carries its errors per key, so an unlisted one closes the connection, as Kafka does)
    for key, version in ((22, table[22][1] + 1),):
        body = S.apis[key].request.encode({}, version) if S.apis[key].request.is_flexible(version) else b""
        frame = header_v1(key, version, 6) + (b"\x00" if S.apis[key].request.is_flexible(version) else b"") + body
        c.send_frame(frame)
        resp = c.recv_frame()
        pos = 4 + (1 if S.response_header_version(key, version) == 1 else 0)
        out, _ = S.apis[key].response.decode(resp, version, pos)
        assert out["ErrorCode"] == 35, (key, version, out)
    # the connection stays usable
    assert _advertised(c) == table


@need_kcat
@pytest.mark.conformance(client="kcat", feature="codecs")
def test_kcat_on_old_librdkafka_compresses_with_the_advertised_table(kafka):
    """kcat on Debian (librdkafka 2.0.2) compresses only when Produce v0 is in
    the advertised range (librdkafka #4956); with Produce 3-8 it silently
    sends uncompressed batches. The stored batch keeps kcat's codec."""
    kafka.log.create_topic("z", partitions=1, ring_bytes=1 << 16, persistence="none")
    r = subprocess.run(
        [KCAT, "-b", kafka.bootstrap, "-P", "-t", "z", "-p", "0", "-z", "gzip", "-d", "msg"],
        input="".join("record %d %s\n" % (i, "x" * 100) for i in range(50)),  # compressible
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    p = call(kafka.raw(), 1, 11, fetch_body("z", 0, 0))["Responses"][0]["Partitions"][0]
    attrs = struct.unpack_from(">h", bytes(p["Records"]), 21)[0]
    assert attrs & 7 == 1, r.stderr


# ------------------------------------------------------------ item 9: authorized operations, message size


def _metadata_v8(c, topic, include):
    body = {
        "Topics": [{"Name": topic}],
        "AllowAutoTopicCreation": False,
        "IncludeClusterAuthorizedOperations": include,
        "IncludeTopicAuthorizedOperations": include,
    }
    return call(c, 3, 8, body)


def test_metadata_v8_returns_every_operation_when_asked(kafka):
    kafka.log.create_topic("ops", partitions=1, ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    got = _metadata_v8(c, "ops", True)
    # Kafka without an authorizer: every operation the resource type supports
    # (topic: READ WRITE CREATE DELETE ALTER DESCRIBE DESCRIBE_CONFIGS ALTER_CONFIGS)
    assert got["Topics"][0]["TopicAuthorizedOperations"] == 0b1101_1111_1000
    # (cluster: CREATE ALTER DESCRIBE CLUSTER_ACTION DESCRIBE_CONFIGS ALTER_CONFIGS IDEMPOTENT_WRITE)
    assert got["ClusterAuthorizedOperations"] == 0b1_1111_1010_0000
    not_asked = _metadata_v8(c, "ops", False)
    assert not_asked["Topics"][0]["TopicAuthorizedOperations"] == -(2**31)
    assert not_asked["ClusterAuthorizedOperations"] == -(2**31)


@admin
def test_confluent_describe_topics_lists_authorized_operations(kafka):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation

    kafka.log.create_topic("ops", partitions=2, ring_bytes=1 << 16, persistence="none")
    a = _admin(kafka)
    fs = a.describe_topics(TopicCollection(["ops"]), include_authorized_operations=True)
    d = fs["ops"].result(timeout=15)
    assert len(d.partitions) == 2
    assert set(d.authorized_operations) == {
        AclOperation.READ,
        AclOperation.WRITE,
        AclOperation.CREATE,
        AclOperation.DELETE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    }


def _deliver(kafka, topic, size):
    """The delivery error (None: stored) of one message of `size` bytes."""
    out = []
    p = ck.Producer({"bootstrap.servers": kafka.bootstrap, "message.max.bytes": 20_000_000, "retries": 0})
    p.produce(topic, bytes(size), partition=0, on_delivery=lambda e, m: out.append(e))
    assert p.flush(30) == 0
    return out[0]


@produce_consume
def test_message_size_limit_is_kafkas_max_message_bytes(kafka):
    """An auto-created topic takes Kafka's max.message.bytes default
    (1048588), not a quarter of its 64 MiB ring; a topic may set its own,
    up to what its ring can hold (half the ring); larger is MESSAGE_TOO_LARGE."""
    assert _deliver(kafka, "auto", 1_000_000) is None
    e = _deliver(kafka, "auto", 1_100_000)
    assert e is not None and e.code() == ck.KafkaError.MSG_SIZE_TOO_LARGE, e
    a = _admin(kafka)
    topics = [
        NewTopic("big", 1, config={"max.message.bytes": "3000000"}),
        NewTopic("small-ring", 1, config={"max.message.bytes": "3000000", "shmlog.ring.bytes": str(1 << 20)}),
    ]
    for f in a.create_topics(topics, request_timeout=10).values():
        f.result(timeout=15)
    assert _deliver(kafka, "big", 2_500_000) is None
    assert (
        kafka.log.topic_handle("small-ring").config.max_message_bytes == (1 << 19) - 16
    )  # what the ring holds: half, less a frame header
    assert _deliver(kafka, "small-ring", 500_000) is None
    e = _deliver(kafka, "small-ring", 600_000)
    assert e is not None and e.code() == ck.KafkaError.MSG_SIZE_TOO_LARGE, e


def test_codec_knows_every_served_api():
    assert set(server.APIS) <= set(codec.schema().apis)
