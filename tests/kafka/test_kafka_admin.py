"""Kafka listener, admin APIs (issue 15, Build item 2) driven by real clients:
CreatePartitions (37), DeleteRecords (21), DeleteGroups (42), OffsetDelete
(47), DescribeCluster (60), ListGroups v4+/v5 with states and types, and
ListOffsets MAX_TIMESTAMP (-3, KIP-734). confluent-kafka's AdminClient and
kafka-python's KafkaAdminClient where they have the call; raw frames for the
error codes and the flexible versions. Every wait is bounded."""

import time

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)
from kafka_util import batch
from test_kafka_protocol import call, produce_body

ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
from confluent_kafka import admin as ck_admin  # noqa: E402

admin_case = pytest.mark.conformance(client="confluent-kafka", feature="admin")
kp_case = pytest.mark.conformance(client="kafka-python", feature="admin")

NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND, GROUP_SUBSCRIBED_TO_TOPIC = 68, 69, 86
INVALID_PARTITIONS, INVALID_REPLICA_ASSIGNMENT, OFFSET_OUT_OF_RANGE = 37, 39, 1


def _admin(kafka):
    return ck_admin.AdminClient({"bootstrap.servers": kafka.bootstrap})


def _result(futures, timeout=20):
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def _error_code(fut, timeout=20):
    with pytest.raises(ck.KafkaException) as e:
        fut.result(timeout=timeout)
    return e.value.args[0].code()


def _fill(kafka, topic, n, partitions=1, **topic_options):
    kafka.log.create_topic(topic, partitions=partitions, ring_bytes=1 << 16, persistence="none", **topic_options)
    with kafka.log.producer() as p:
        for i in range(n):
            p.send(topic, b"m%d" % i, partition=i % partitions)


def _consume(conf, topic, n, timeout=30):
    """A subscribed confluent consumer that has read n records (still a member)."""
    c = ck.Consumer(conf)
    c.subscribe([topic])
    got, deadline = 0, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        got += m is not None and m.error() is None
    assert got == n
    return c


def _group_conf(kafka, group):
    return {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 200,
    }


# ------------------------------------------------------------ CreatePartitions


@admin_case
def test_confluent_create_partitions_grows_and_new_partitions_take_records(kafka):
    _fill(kafka, "cp", 4, partitions=2)
    a = _admin(kafka)
    _result(a.create_partitions([ck_admin.NewPartitions("cp", 5)], validate_only=True))
    assert kafka.log.describe_topic("cp").config.partitions == 2  # ValidateOnly: nothing changed
    _result(a.create_partitions([ck_admin.NewPartitions("cp", 5)]))
    assert kafka.log.describe_topic("cp").config.partitions == 5
    md = a.list_topics("cp", timeout=10)
    assert sorted(md.topics["cp"].partitions) == [0, 1, 2, 3, 4]
    p = ck.Producer({"bootstrap.servers": kafka.bootstrap})
    delivered = []
    p.produce("cp", b"new", partition=4, on_delivery=lambda err, m: delivered.append((err, m.offset())))
    p.flush(15)
    assert delivered == [(None, 0)]
    assert _error_code(a.create_partitions([ck_admin.NewPartitions("cp", 5)])["cp"]) == INVALID_PARTITIONS
    assert _error_code(a.create_partitions([ck_admin.NewPartitions("cp", 3)])["cp"]) == INVALID_PARTITIONS
    bad = a.create_partitions([ck_admin.NewPartitions("cp", 6, replica_assignment=[[1]])])["cp"]
    assert _error_code(bad) == INVALID_REPLICA_ASSIGNMENT
    _result(a.create_partitions([ck_admin.NewPartitions("cp", 6, replica_assignment=[[0]])]))
    assert kafka.log.describe_topic("cp").config.partitions == 6
    assert _error_code(a.create_partitions([ck_admin.NewPartitions("nope", 3)])["nope"]) == 3


def test_raw_create_partitions_of_a_durable_topic(kafka):
    kafka.log.create_topic("dur", partitions=1, ring_bytes=1 << 16, persistence="disk")
    raw = kafka.raw()
    for v in (0, 3):  # 3 is flexible
        want = 2 if v == 0 else 3
        body = {"Topics": [{"Name": "dur", "Count": want, "Assignments": None}], "TimeoutMs": 5000}
        assert call(raw, 37, v, body)["Results"][0]["ErrorCode"] == 0
    dup = {"Topics": [{"Name": "dur", "Count": 9}, {"Name": "dur", "Count": 9}], "TimeoutMs": 5000}
    assert [r["ErrorCode"] for r in call(raw, 37, 3, dup)["Results"]] == [42, 42]  # INVALID_REQUEST
    r = call(raw, 0, 8, produce_body("dur", 2, batch([(None, b"x", [])])))
    assert r["Responses"][0]["PartitionResponses"][0]["ErrorCode"] == 0
    d = kafka.log.describe_topic("dur")
    assert d.config.partitions == 3 and d.partitions[2].end_offset == 1


@kp_case
def test_kafka_python_create_partitions(kafka):
    from kafka.admin import KafkaAdminClient, NewPartitions

    _fill(kafka, "kcp", 1)
    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        a.create_partitions({"kcp": NewPartitions(total_count=4)})
        assert kafka.log.describe_topic("kcp").config.partitions == 4
    finally:
        a.close()


# ------------------------------------------------------------ DeleteRecords


@admin_case
def test_confluent_delete_records_moves_the_log_start(kafka):
    _fill(kafka, "dr", 10)
    a = _admin(kafka)
    tp = ck.TopicPartition("dr", 0, 4)
    res = a.delete_records([tp])[tp].result(timeout=20)
    assert res.low_watermark == 4
    # ListOffsets earliest answers it, a consumer from the beginning starts there
    earliest = a.list_offsets({ck.TopicPartition("dr", 0): ck_admin.OffsetSpec.earliest()})
    assert [v.result(timeout=20).offset for v in earliest.values()] == [4]
    c = ck.Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "g", "auto.offset.reset": "earliest"})
    try:
        c.assign([ck.TopicPartition("dr", 0, 0)])  # below the start: out of range, reset to earliest
        got, deadline = [], time.monotonic() + 20
        while len(got) < 6 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m.offset())
        assert got == [4, 5, 6, 7, 8, 9]
    finally:
        c.close()
    # -1: the high watermark; below the start changes nothing; past it is out of range
    hw = ck.TopicPartition("dr", 0, -1)
    assert a.delete_records([hw])[hw].result(timeout=20).low_watermark == 10
    low = ck.TopicPartition("dr", 0, 2)
    assert a.delete_records([low])[low].result(timeout=20).low_watermark == 10
    past = ck.TopicPartition("dr", 0, 11)
    assert _error_code(a.delete_records([past])[past]) == OFFSET_OUT_OF_RANGE
    assert kafka.log.describe_topic("dr").partitions[0].log_start_offset == 10


@kp_case
def test_kafka_python_delete_records(kafka):
    from kafka.admin import KafkaAdminClient
    from kafka.structs import TopicPartition

    _fill(kafka, "kdr", 5)
    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        out = a.delete_records({TopicPartition("kdr", 0): 3})
        assert out[TopicPartition("kdr", 0)]["low_watermark"] == 3
    finally:
        a.close()
    assert kafka.log.describe_topic("kdr").partitions[0].log_start_offset == 3


def test_raw_delete_records_errors_and_flexible_version(kafka):
    _fill(kafka, "rdr", 3)
    body = {
        "Topics": [
            {"Name": "rdr", "Partitions": [{"PartitionIndex": 0, "Offset": 2}, {"PartitionIndex": 1, "Offset": 0}]},
            {"Name": "missing", "Partitions": [{"PartitionIndex": 0, "Offset": 0}]},
        ],
        "TimeoutMs": 1000,
    }
    for v in (0, 2):  # 2 is flexible
        r = call(kafka.raw(), 21, v, body)
        parts = r["Topics"][0]["Partitions"]
        assert (parts[0]["ErrorCode"], parts[0]["LowWatermark"]) == (0, 2)
        assert parts[1]["ErrorCode"] == 3
        assert r["Topics"][1]["Partitions"][0]["ErrorCode"] == 3
    r = call(kafka.raw(), 21, 2, {"Topics": [{"Name": "rdr", "Partitions": [{"PartitionIndex": 0, "Offset": -7}]}]})
    assert r["Topics"][0]["Partitions"][0]["ErrorCode"] == OFFSET_OUT_OF_RANGE
    fetch = {
        "ReplicaId": -1,
        "MaxWaitMs": 0,
        "MinBytes": 1,
        "MaxBytes": 1 << 20,
        "IsolationLevel": 0,
        "Topics": [{"Topic": "rdr", "Partitions": [{"Partition": 0, "FetchOffset": 1, "PartitionMaxBytes": 1 << 20}]}],
    }
    p = call(kafka.raw(), 1, 11, fetch)["Responses"][0]["Partitions"][0]
    assert (p["ErrorCode"], p["LogStartOffset"]) == (OFFSET_OUT_OF_RANGE, 2)


# ------------------------------------------------------------ DeleteGroups, OffsetDelete, ListGroups


@admin_case
def test_confluent_delete_groups_and_list_groups_with_states(kafka):
    _fill(kafka, "grp", 6)
    c = _consume(_group_conf(kafka, "busy"), "grp", 6)
    a = _admin(kafka)
    try:
        c.commit(asynchronous=False)
        kafka.log.commit_offsets("idle", {("grp", 0): 3})  # a group with offsets and no members
        listed = a.list_consumer_groups(states={ck.ConsumerGroupState.STABLE}).result(timeout=20)
        assert [g.group_id for g in listed.valid] == ["busy"]
        listed = a.list_consumer_groups(states={ck.ConsumerGroupState.EMPTY}).result(timeout=20)
        assert [g.group_id for g in listed.valid] == ["idle"]
        every = a.list_consumer_groups().result(timeout=20)
        assert {g.group_id: g.state for g in every.valid} == {
            "busy": ck.ConsumerGroupState.STABLE,
            "idle": ck.ConsumerGroupState.EMPTY,
        }
        futs = a.delete_consumer_groups(["busy", "idle", "ghost"])
        assert _error_code(futs["busy"]) == NON_EMPTY_GROUP
        assert _error_code(futs["ghost"]) == GROUP_ID_NOT_FOUND
        futs["idle"].result(timeout=20)
        assert "idle" not in kafka.log.list_groups()
    finally:
        c.close()
    a.delete_consumer_groups(["busy"])["busy"].result(timeout=20)  # empty once its member left
    assert kafka.log.list_groups() == []
    assert a.list_consumer_groups().result(timeout=20).valid == []


@admin_case
def test_confluent_alter_and_delete_group_offsets(kafka):
    _fill(kafka, "od", 4, partitions=2)
    _fill(kafka, "other", 2)
    a = _admin(kafka)
    tps = [ck.TopicPartition("od", 0, 1), ck.TopicPartition("od", 1, 1), ck.TopicPartition("other", 0, 1)]
    a.alter_consumer_group_offsets([ck.ConsumerGroupTopicPartitions("og", tps)])["og"].result(timeout=20)
    assert kafka.log.committed_offsets("og") == {("od", 0): 1, ("od", 1): 1, ("other", 0): 1}
    c = _consume(_group_conf(kafka, "og"), "od", 2)  # active and subscribed to "od" only
    try:
        raw = kafka.raw()
        body = {
            "GroupId": "og",
            "Topics": [
                {"Name": "od", "Partitions": [{"PartitionIndex": 0}]},
                {"Name": "other", "Partitions": [{"PartitionIndex": 0}]},
            ],
        }
        r = call(raw, 47, 0, body)
        assert r["ErrorCode"] == 0
        codes_ = {t["Name"]: t["Partitions"][0]["ErrorCode"] for t in r["Topics"]}
        assert codes_ == {"od": GROUP_SUBSCRIBED_TO_TOPIC, "other": 0}
        assert ("other", 0) not in kafka.log.committed_offsets("og")
    finally:
        c.close()
    r = call(kafka.raw(), 47, 0, {"GroupId": "og", "Topics": [{"Name": "od", "Partitions": [{"PartitionIndex": 0}]}]})
    assert r["Topics"][0]["Partitions"][0]["ErrorCode"] == 0  # empty now: deleted
    assert ("od", 0) not in kafka.log.committed_offsets("og")
    assert call(kafka.raw(), 47, 0, {"GroupId": "ghost", "Topics": []})["ErrorCode"] == GROUP_ID_NOT_FOUND


@kp_case
def test_kafka_python_list_and_delete_groups(kafka):
    from kafka.admin import KafkaAdminClient
    from kafka.structs import TopicPartition

    _fill(kafka, "kg", 2)
    kafka.log.commit_offsets("kp-idle", {("kg", 0): 1})
    kafka.log.commit_offsets("kp-idle2", {("kg", 0): 2})
    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        groups = a.list_groups(states_filter=["Empty"])
        assert sorted(g[0] if isinstance(g, tuple) else g["group_id"] for g in groups) == ["kp-idle", "kp-idle2"]
        a.delete_group_offsets("kp-idle2", [TopicPartition("kg", 0)])
        assert kafka.log.committed_offsets("kp-idle2") == {}
        out = a.delete_groups(["kp-idle", "kp-ghost"])
        assert dict(out) == {"kp-idle": "OK", "kp-ghost": "GroupIdNotFoundError"}
    finally:
        a.close()
    assert "kp-idle" not in kafka.log.list_groups()


def test_raw_list_groups_filters_and_delete_groups_versions(kafka):
    kafka.log.create_topic("lg", ring_bytes=1 << 16, persistence="none")
    kafka.log.commit_offsets("e1", {("lg", 0): 0})
    raw = kafka.raw()
    for v in (3, 4, 5):
        body = {"StatesFilter": ["empty"], "TypesFilter": []}
        r = call(raw, 16, v, body)
        assert [g["GroupId"] for g in r["Groups"]] == ["e1"]
        if v >= 4:
            assert r["Groups"][0]["GroupState"] == "Empty"
    assert call(raw, 16, 4, {"StatesFilter": ["Stable"]})["Groups"] == []
    assert call(raw, 16, 5, {"TypesFilter": ["consumer"]})["Groups"] == []  # KIP-848 groups: none here
    assert call(raw, 16, 5, {"TypesFilter": ["Classic"]})["Groups"][0]["GroupType"] == "classic"
    r = call(raw, 42, 2, {"GroupsNames": ["e1", "nope", ""]})
    assert [x["ErrorCode"] for x in r["Results"]] == [0, GROUP_ID_NOT_FOUND, 24]


# ------------------------------------------------------------ DescribeCluster


@admin_case
def test_confluent_describe_cluster(kafka):
    a = _admin(kafka)
    d = a.describe_cluster(include_authorized_operations=True).result(timeout=20)
    meta = a.list_topics(timeout=10)
    assert d.cluster_id == meta.cluster_id and d.controller.id == 0
    assert [(n.id, n.host, n.port) for n in d.nodes] == [(0, "127.0.0.1", kafka.port)]
    # (librdkafka answers describe_cluster from Metadata v8+, whose authorized
    # operations are issue 15 item 9's; DescribeCluster's are in the raw test)


@kp_case
def test_kafka_python_describe_cluster(kafka):
    from kafka.admin import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        d = a.describe_cluster()
    finally:
        a.close()
    assert kafka.listener.requests[60] >= 1  # asked with DescribeCluster, not Metadata
    assert d["controller_id"] == 0 and d["cluster_id"] == f"shmlog-{kafka.log.settings.instance}"
    assert [b["node_id"] if "node_id" in b else b["broker_id"] for b in d["brokers"]] == [0]


def test_raw_describe_cluster_versions_and_endpoint_type(kafka):
    raw = kafka.raw()
    for v in (0, 1, 2):
        r = call(raw, 60, v, {"IncludeClusterAuthorizedOperations": False, "EndpointType": 1})
        assert r["ErrorCode"] == 0 and r["ControllerId"] == 0 and r["ClusterAuthorizedOperations"] == -(1 << 31)
        assert [b["BrokerId"] for b in r["Brokers"]] == [0]
    r = call(raw, 60, 1, {"IncludeClusterAuthorizedOperations": True, "EndpointType": 2})
    assert r["ErrorCode"] == 119  # UNSUPPORTED_ENDPOINT_TYPE: this is a broker
    r = call(raw, 60, 2, {"IncludeClusterAuthorizedOperations": True})
    assert r["ClusterAuthorizedOperations"] & (1 << 8)  # DESCRIBE


# ------------------------------------------------------------ ListOffsets MAX_TIMESTAMP


@admin_case
def test_confluent_list_offsets_max_timestamp(kafka):
    kafka.log.create_topic("mt", ring_bytes=1 << 16, persistence="none")
    a = _admin(kafka)
    tp = ck.TopicPartition("mt", 0)
    empty = a.list_offsets({tp: ck_admin.OffsetSpec.max_timestamp()})[tp].result(timeout=20)
    assert empty.offset == -1
    with kafka.log.producer() as p:
        for i, ts in enumerate([1000, 5000, 3000, 5000, 2000]):
            p.send("mt", b"m%d" % i, timestamp_ms=ts)
    got = a.list_offsets({tp: ck_admin.OffsetSpec.max_timestamp()})[tp].result(timeout=20)
    assert (got.offset, got.timestamp) == (1, 5000)  # the first record with the largest timestamp


def test_raw_list_offsets_flexible_versions(kafka):
    kafka.log.create_topic("lo", ring_bytes=1 << 16, persistence="none")
    raw = kafka.raw()
    r = call(
        raw,
        0,
        8,
        produce_body("lo", 0, batch([(None, b"a", [], 7000), (None, b"b", [], 9000), (None, b"c", [], 8000)])),
    )
    assert r["Responses"][0]["PartitionResponses"][0]["ErrorCode"] == 0
    for v, ts, want in ((6, -1, 3), (7, -3, 1), (8, -4, 0), (9, -5, -1), (10, -2, 0)):
        body = {
            "ReplicaId": -1,
            "IsolationLevel": 0,
            "TimeoutMs": 1000,
            "Topics": [{"Name": "lo", "Partitions": [{"PartitionIndex": 0, "Timestamp": ts}]}],
        }
        p = call(raw, 2, v, body)["Topics"][0]["Partitions"][0]
        assert (p["ErrorCode"], p["Offset"]) == (0, want), (v, ts)


def test_api_versions_advertises_the_admin_apis(kafka):
    raw = kafka.raw()
    r = call(raw, 18, 3, {"ClientSoftwareName": "raw", "ClientSoftwareVersion": "1"})
    got = {k["ApiKey"]: (k["MinVersion"], k["MaxVersion"]) for k in r["ApiKeys"]}
    assert got[21] == (0, 2) and got[37] == (0, 3) and got[42] == (0, 2) and got[47] == (0, 0)
    assert got[60] == (0, 2) and got[16] == (0, 5) and got[2][1] >= 7
    r = call(raw, 37, 2, {"Topics": [{"Name": "lo2", "Count": 2}], "TimeoutMs": 1000})
    assert r["Results"][0]["ErrorCode"] == 3


# ------------------------------------------------------------ aiokafka's admin client


@pytest.mark.conformance(client="aiokafka", feature="admin")
def test_aiokafka_admin_create_grow_delete_records_groups_and_cluster(kafka):
    """aiokafka's AIOKafkaAdminClient against the listener: create a topic,
    grow it (CreatePartitions), move its log start (DeleteRecords), list
    groups and describe the cluster; each answer checked against shmlog."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
    from aiokafka.structs import TopicPartition

    async def run():
        a = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
        await a.start()
        try:
            await a.create_topics([NewTopic("aa", num_partitions=1, replication_factor=1)])
            await a.create_partitions({"aa": NewPartitions(total_count=3)})
            with kafka.log.producer() as p:
                for i in range(10):
                    p.send("aa", b"r%d" % i, partition=0)
            low = await a.delete_records({TopicPartition("aa", 0): RecordsToDelete(before_offset=4)})
            assert low == {TopicPartition("aa", 0): 4}
            kafka.log.commit_offsets("aag", {("aa", 1): 0})
            groups = await a.list_consumer_groups()
            cluster = await a.describe_cluster()
            return groups, cluster
        finally:
            await a.close()

    groups, cluster = asyncio.run(asyncio.wait_for(run(), 60))
    d = kafka.log.describe_topic("aa")
    assert len(d.partitions) == 3
    assert d.partitions[0].log_start_offset == 4 and d.partitions[0].end_offset == 10
    assert "aag" in [g[0] for g in groups]
    assert cluster["controller_id"] == 0 and [b["node_id"] for b in cluster["brokers"]] == [0]
