"""Kafka listener, topic configs (issue 14, Build item 4): CreateTopics with
configs (v5+ returns them), DescribeConfigs 0-4, AlterConfigs 0-2,
IncrementalAlterConfigs 0-1, and ListOffsets read_committed (the last stable
offset from the ring's txn_bound). Driven by confluent-kafka's AdminClient,
kafka-python's KafkaAdminClient and aiokafka's admin client, and by raw frames
for the edge cases. Every topic change is checked natively
(Log.describe_topic), not only through the listener's own answers. Every wait
is bounded."""

import asyncio
import struct

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)
from kafka_util import Kafka, batch, header_v1
from test_kafka_admin import _admin, _result
from test_kafka_protocol import call, produce_body

from shmlog._native import lib
from shmlog.config import TOPIC_DEFAULTS

ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
from confluent_kafka import admin as ck_admin  # noqa: E402

ck_case = pytest.mark.conformance(client="confluent-kafka", feature="configs")
kp_case = pytest.mark.conformance(client="kafka-python", feature="configs")
aio_case = pytest.mark.conformance(client="aiokafka", feature="configs")

UNKNOWN_TOPIC, INVALID_TOPIC, INVALID_CONFIG, INVALID_REQUEST = 3, 17, 40, 42
DYNAMIC_TOPIC, STATIC_BROKER, DEFAULT = 1, 4, 5
DAY = 86400_000


def _error(fut, timeout=20):
    with pytest.raises(ck.KafkaException) as e:
        fut.result(timeout=timeout)
    return e.value.args[0].code(), e.value.args[0].str()


def _topic_res(name):
    return ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, name)


def _describe(a, name, **kw):
    res = _topic_res(name)
    return a.describe_configs([res], **kw)[res].result(timeout=20)


def _cfg(k, name):
    return k.log.describe_topic(name).config


def _create(a, name, configs, partitions=1):
    _result(a.create_topics([ck_admin.NewTopic(name, partitions, 1, config=configs)], operation_timeout=10))


# ------------------------------------------------------------ CreateTopics


@ck_case
def test_confluent_create_topic_with_configs_maps_them_natively(kafka):
    a = _admin(kafka)
    configs = {
        "cleanup.policy": "compact",
        "retention.ms": "3600000",
        "retention.bytes": "-1",
        "segment.bytes": "1048576",
        "segment.ms": "600000",
        "min.compaction.lag.ms": "5000",
        "delete.retention.ms": "60000",
        "max.message.bytes": "100000",
        "min.insync.replicas": "1",  # Kafka's, at the value shmlog behaves as: accepted
        "shmlog.ring.bytes": "1048576",
    }
    _create(a, "cfg", configs, partitions=2)
    c = _cfg(kafka, "cfg")
    assert (c.cleanup_policy, c.retention_ms, c.retention_bytes, c.segment_bytes, c.segment_ms) == (
        "compact",
        3600_000,
        None,
        1 << 20,
        600_000,
    )
    assert (c.min_compaction_lag_ms, c.delete_retention_ms, c.max_message_bytes) == (5000, 60000, 100000)
    assert (c.ring_bytes, c.partitions, c.persistence) == (1 << 20, 2, "disk")
    d = _describe(a, "cfg")
    assert d["cleanup.policy"].value == "compact" and d["cleanup.policy"].source == DYNAMIC_TOPIC
    assert d["retention.ms"].value == "3600000" and not d["retention.ms"].is_read_only
    assert d["retention.bytes"].value == "-1" and d["retention.bytes"].source == DEFAULT
    assert d["shmlog.ring.bytes"].is_read_only and d["shmlog.ring.bytes"].value == "1048576"
    assert d["min.insync.replicas"].value == "1" and d["min.insync.replicas"].is_read_only


@ck_case
def test_confluent_create_topic_refuses_unknown_unsupported_and_bad_values(kafka):
    a = _admin(kafka)
    cases = {
        "t-unknown": ({"no.such.config": "1"}, "Unknown topic config name: no.such.config"),
        "t-notnum": ({"retention.ms": "a week"}, "Not a number of type LONG"),
        "t-int": ({"segment.bytes": str(1 << 33)}, "Not a number of type INT"),
        "t-typo": ({"cleanup.policy": "compacted"}, "cleanup.policy"),
        "t-range": ({"segment.bytes": "100"}, "segment.bytes"),
        "t-fixed": ({"compression.type": "gzip"}, "it behaves as compression.type=producer"),
        "t-unsup": ({"flush.ms": "1000"}, "shmlog.fsync"),
        "t-ring": ({"shmlog.ring.bytes": "100000"}, "power of two"),
        "t-compact-mem": (
            {"cleanup.policy": "compact", "shmlog.persistence": "none"},
            'needs shmlog.persistence="disk"',
        ),
    }
    futs = a.create_topics([ck_admin.NewTopic(n, 1, 1, config=c) for n, (c, _) in cases.items()], operation_timeout=10)
    for name, (_, words) in cases.items():
        code, msg = _error(futs[name])
        assert code == INVALID_CONFIG, (name, code, msg)
        assert words in msg, (name, msg)
    assert not set(cases) & set(kafka.log.list_topics())  # nothing was created
    # validate_only checks the configs too, and creates nothing
    v = a.create_topics([ck_admin.NewTopic("t-v", 1, 1, config={"retention.ms": "x"})], validate_only=True)
    assert _error(v["t-v"])[0] == INVALID_CONFIG
    _result(a.create_topics([ck_admin.NewTopic("t-v", 1, 1, config={"retention.ms": "1000"})], validate_only=True))
    assert "t-v" not in kafka.log.list_topics()


def test_raw_create_topics_v5_returns_the_configs(kafka):
    raw = kafka.raw()
    body = {
        "Topics": [
            {
                "Name": "c5",
                "NumPartitions": 3,
                "ReplicationFactor": -1,
                "Assignments": [],
                "Configs": [
                    {"Name": "cleanup.policy", "Value": "delete,compact"},
                    {"Name": "retention.ms", "Value": "-1"},
                ],
            }
        ],
        "timeoutMs": 5000,
        "validateOnly": False,
    }
    t = call(raw, 19, 5, body)["Topics"][0]
    assert t["ErrorCode"] == 0 and (t["NumPartitions"], t["ReplicationFactor"]) == (3, 1)
    got = {c["Name"]: c for c in t["Configs"]}
    assert got["cleanup.policy"]["Value"] == "compact,delete" and got["cleanup.policy"]["ConfigSource"] == DYNAMIC_TOPIC
    assert got["retention.ms"]["Value"] == "-1" and got["retention.ms"]["ConfigSource"] == DYNAMIC_TOPIC
    assert got["shmlog.persistence"]["ReadOnly"] and got["segment.bytes"]["ConfigSource"] == DEFAULT
    c = _cfg(kafka, "c5")
    assert (c.cleanup_policy, c.retention_ms) == ("compact,delete", None)
    # a config named twice, or a null value, is refused; nothing created
    body["Topics"][0].update(Name="c5b", Configs=[{"Name": "retention.ms", "Value": "1"}] * 2)
    assert call(raw, 19, 5, body)["Topics"][0]["ErrorCode"] == INVALID_REQUEST
    body["Topics"][0]["Configs"] = [{"Name": "retention.ms", "Value": None}]
    assert call(raw, 19, 5, body)["Topics"][0]["ErrorCode"] == INVALID_REQUEST
    assert "c5b" not in kafka.log.list_topics()


def test_listener_topic_defaults_are_the_static_broker_configs(inst):
    k = Kafka(inst, topic_defaults={"retention_ms": 3600_000, "ring_bytes": 1 << 20})
    try:
        a = _admin(k)
        _create(a, "td", {})
        assert _cfg(k, "td").retention_ms == 3600_000
        d = _describe(a, "td")
        assert d["retention.ms"].value == "3600000" and d["retention.ms"].source == STATIC_BROKER
        assert [(s.name, s.value, s.source) for s in d["retention.ms"].synonyms.values()] == [
            ("log.retention.ms", "3600000", STATIC_BROKER)
        ]
        # Kafka's default 1048588, capped by what the 1 MiB ring holds (half of it less a frame header)
        assert d["max.message.bytes"].value == str((1 << 19) - 16) and d["max.message.bytes"].source == DEFAULT
        b = ck_admin.ConfigResource(ck_admin.ResourceType.BROKER, "0")
        broker = a.describe_configs([b])[b].result(timeout=20)
        assert broker["log.retention.ms"].value == "3600000" and broker["log.retention.ms"].is_read_only
    finally:
        k.stop()


# ------------------------------------------------------------ DescribeConfigs


@ck_case
def test_confluent_describe_configs_topic_broker_and_unknown(kafka):
    kafka.log.create_topic("native", partitions=1, ring_bytes=1 << 16, persistence="none")
    a = _admin(kafka)
    d = _describe(a, "native")
    # what Quix Streams reads before it runs (issue 14, "Why")
    assert d["retention.ms"].value == str(TOPIC_DEFAULTS.retention_ms)
    assert d["retention.bytes"].value == "-1" and d["cleanup.policy"].value == "delete"
    assert d["shmlog.persistence"].value == "none" and d["shmlog.persistence"].source == DYNAMIC_TOPIC
    assert d["segment.bytes"].source == DEFAULT and d["segment.bytes"].is_default
    assert [s.name for s in d["segment.ms"].synonyms.values()] == ["log.roll.ms"]
    assert [(s.name, s.value, s.source) for s in d["shmlog.persistence"].synonyms.values()] == [
        ("shmlog.persistence", "none", DYNAMIC_TOPIC),
        ("shmlog.default.persistence", "disk", DEFAULT),
    ]
    assert not any(e.is_sensitive for e in d.values())
    b = ck_admin.ConfigResource(ck_admin.ResourceType.BROKER, "0")
    broker = a.describe_configs([b])[b].result(timeout=20)
    for name in (
        "log.retention.ms",
        "log.retention.bytes",
        "log.segment.bytes",
        "log.cleanup.policy",
        "message.max.bytes",
    ):
        assert broker[name].is_read_only, name
    assert broker["log.retention.ms"].value == str(7 * DAY) and broker["num.partitions"].value == "1"
    assert _error(a.describe_configs([_topic_res("nope")])[_topic_res("nope")])[0] == UNKNOWN_TOPIC


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_raw_describe_configs_every_version(kafka, version):
    kafka.log.create_topic("rd", partitions=1, ring_bytes=1 << 16, persistence="none", retention_ms=1000)
    raw = kafka.raw()
    body = {
        "Resources": [
            {"ResourceType": 2, "ResourceName": "rd", "ConfigurationKeys": ["retention.ms", "segment.ms", "no.such"]},
            {"ResourceType": 2, "ResourceName": "gone", "ConfigurationKeys": None},
            {"ResourceType": 2, "ResourceName": "bad/name", "ConfigurationKeys": None},
            {"ResourceType": 4, "ResourceName": "", "ConfigurationKeys": ["log.retention.ms"]},
            {"ResourceType": 99, "ResourceName": "x", "ConfigurationKeys": None},
            {"ResourceType": 4, "ResourceName": "9", "ConfigurationKeys": None},  # not this broker
        ],
        "IncludeSynonyms": True,
        "IncludeDocumentation": True,
    }
    res = call(raw, 32, version, body)["Results"]
    assert [r["ErrorCode"] for r in res] == [0, UNKNOWN_TOPIC, INVALID_TOPIC, 0, INVALID_REQUEST, INVALID_REQUEST]
    got = {c["Name"]: c for c in res[0]["Configs"]}
    assert sorted(got) == ["retention.ms", "segment.ms"]  # the filter; an unknown key is left out
    r, s = got["retention.ms"], got["segment.ms"]
    assert r["Value"] == "1000" and not r["ReadOnly"] and not r["IsSensitive"]
    if version == 0:
        assert r["IsDefault"] is False and s["IsDefault"] is True
    else:
        assert (r["ConfigSource"], s["ConfigSource"]) == (DYNAMIC_TOPIC, DEFAULT)
        assert [x["Name"] for x in r["Synonyms"]] == ["retention.ms", "log.retention.ms"]
    if version >= 3:
        assert r["ConfigType"] == 5 and "older" in r["Documentation"]  # LONG
    assert [c["Name"] for c in res[3]["Configs"]] == ["log.retention.ms"]
    # an empty key list is every config, as in Kafka
    body = {"Resources": [{"ResourceType": 2, "ResourceName": "rd", "ConfigurationKeys": []}]}
    if version >= 1:
        body["IncludeSynonyms"] = False
    all_ = call(raw, 32, version, body)["Results"][0]["Configs"]
    assert {"cleanup.policy", "retention.bytes", "shmlog.ring.bytes", "compression.type"} <= {c["Name"] for c in all_}


# ------------------------------------------------------------ AlterConfigs / IncrementalAlterConfigs


@ck_case
def test_confluent_alter_configs_replaces_every_config(kafka):
    a = _admin(kafka)
    _create(a, "al", {"cleanup.policy": "compact", "retention.ms": "5000", "segment.ms": "60000"})
    res = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, "al", set_config={"retention.bytes": "2000000"})
    a.alter_configs([res])[res].result(timeout=20)
    c = _cfg(kafka, "al")
    # replace semantics (Kafka's AlterConfigs): what the request does not name is back to its default
    assert (c.retention_bytes, c.retention_ms, c.cleanup_policy, c.segment_ms) == (
        2_000_000,
        7 * DAY,
        "delete",
        TOPIC_DEFAULTS.segment_ms,
    )
    # validate_only: checked, not applied
    res = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, "al", set_config={"retention.ms": "1"})
    a.alter_configs([res], validate_only=True)[res].result(timeout=20)
    assert _cfg(kafka, "al").retention_ms == 7 * DAY
    bad = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, "al", set_config={"retention.ms": "soon"})
    assert _error(a.alter_configs([bad])[bad])[0] == INVALID_CONFIG
    assert _cfg(kafka, "al").retention_bytes == 2_000_000  # a refused request changes nothing


@ck_case
def test_confluent_incremental_alter_configs(kafka):
    a = _admin(kafka)
    _create(a, "inc", {"retention.ms": "5000"})
    Op, Entry = ck_admin.AlterConfigOpType, ck_admin.ConfigEntry

    def alter(*entries, validate_only=False):
        res = ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, "inc", incremental_configs=list(entries))
        return a.incremental_alter_configs([res], validate_only=validate_only)[res]

    alter(Entry("retention.bytes", "123456789", incremental_operation=Op.SET)).result(timeout=20)
    c = _cfg(kafka, "inc")
    assert (c.retention_bytes, c.retention_ms) == (123456789, 5000)  # the others are kept
    alter(Entry("cleanup.policy", "compact", incremental_operation=Op.APPEND)).result(timeout=20)
    assert _cfg(kafka, "inc").cleanup_policy == "compact,delete"
    alter(Entry("cleanup.policy", "delete", incremental_operation=Op.SUBTRACT)).result(timeout=20)
    assert _cfg(kafka, "inc").cleanup_policy == "compact"
    assert _describe(a, "inc")["cleanup.policy"].value == "compact"
    alter(Entry("retention.ms", None, incremental_operation=Op.DELETE)).result(timeout=20)
    assert _cfg(kafka, "inc").retention_ms == 7 * DAY  # back to the default
    assert _describe(a, "inc")["retention.ms"].source == DEFAULT
    alter(Entry("segment.ms", "1000", incremental_operation=Op.SET), validate_only=True).result(timeout=20)
    assert _cfg(kafka, "inc").segment_ms == TOPIC_DEFAULTS.segment_ms
    # refused, each with its reason, nothing changed
    for entry, words in (
        (Entry("shmlog.ring.bytes", str(1 << 20), incremental_operation=Op.SET), "fixed at creation"),
        (Entry("shmlog.persistence", "none", incremental_operation=Op.SET), "fixed at creation"),
        (Entry("retention.ms", "1", incremental_operation=Op.APPEND), "not allowed"),
        (Entry("cleanup.policy", "compact", incremental_operation=Op.SUBTRACT), "needs compact, delete or both"),
        (Entry("no.such", "1", incremental_operation=Op.SET), "Unknown topic config name"),
        (Entry("min.insync.replicas", "2", incremental_operation=Op.SET), "behaves as min.insync.replicas=1"),
    ):
        code, msg = _error(alter(entry))
        assert code == INVALID_CONFIG and words in msg, (entry, code, msg)
    assert _cfg(kafka, "inc").cleanup_policy == "compact"
    # the read-only ones at the value they have are accepted (tools send back what they described)
    alter(Entry("shmlog.ring.bytes", str(_cfg(kafka, "inc").ring_bytes), incremental_operation=Op.SET)).result(20)
    b = ck_admin.ConfigResource(
        ck_admin.ResourceType.BROKER,
        "0",
        incremental_configs=[Entry("log.retention.ms", "1", incremental_operation=Op.SET)],
    )
    code, msg = _error(a.incremental_alter_configs([b])[b])
    assert code == INVALID_REQUEST and "read-only" in msg


def _alter_body(name, configs, validate_only=False, incremental=False):
    cs = [{"Name": n, "Value": v, **({"ConfigOperation": op} if incremental else {})} for n, op, v in configs]
    return {"Resources": [{"ResourceType": 2, "ResourceName": name, "Configs": cs}], "ValidateOnly": validate_only}


@pytest.mark.parametrize("version", [0, 1, 2])
def test_raw_alter_configs_versions_and_errors(kafka, version):
    kafka.log.create_topic("ra", partitions=1, ring_bytes=1 << 16, persistence="disk")
    raw = kafka.raw()

    def code(body):
        return [(r["ErrorCode"], r["ErrorMessage"]) for r in call(raw, 33, version, body)["Responses"]]

    assert code(_alter_body("ra", [("retention.ms", 0, "60000")], validate_only=True)) == [(0, None)]
    assert _cfg(kafka, "ra").retention_ms == 7 * DAY
    assert code(_alter_body("ra", [("retention.ms", 0, "60000"), ("shmlog.fsync", 0, "always")])) == [(0, None)]
    assert (_cfg(kafka, "ra").retention_ms, _cfg(kafka, "ra").fsync) == (60000, "always")
    assert code(_alter_body("ra", [("retention.ms", 0, None)]))[0][0] == INVALID_REQUEST  # null value
    assert code(_alter_body("ra", [("retention.ms", 0, "1"), ("retention.ms", 0, "2")]))[0][0] == INVALID_REQUEST
    assert code(_alter_body("gone", [("retention.ms", 0, "1")]))[0][0] == UNKNOWN_TOPIC
    twice = _alter_body("ra", [("retention.ms", 0, "1")])
    twice["Resources"] *= 2
    assert [c for c, _ in code(twice)] == [INVALID_REQUEST, INVALID_REQUEST]
    assert _cfg(kafka, "ra").retention_ms == 60000


@pytest.mark.parametrize("version", [0, 1])
def test_raw_incremental_alter_configs_versions_and_errors(kafka, version):
    kafka.log.create_topic("ri", partitions=1, ring_bytes=1 << 16, persistence="disk")
    raw = kafka.raw()

    def code(configs, **kw):
        body = _alter_body("ri", configs, incremental=True, **kw)
        return call(raw, 44, version, body)["Responses"][0]["ErrorCode"]

    assert code([("cleanup.policy", 2, "compact")]) == 0
    assert _cfg(kafka, "ri").cleanup_policy == "compact,delete"
    assert code([("cleanup.policy", 0, " delete , compact ")]) == 0  # Kafka's list, spaces and either order
    assert code([("retention.ms", 9, "1")]) == INVALID_REQUEST  # no such operation
    assert code([("retention.ms", 0, None)]) == INVALID_REQUEST
    assert code([("cleanup.policy", 2, "compact,bogus")]) == INVALID_CONFIG
    assert code([("no.such", 1, None)]) == INVALID_CONFIG  # DELETE of an unknown config
    assert code([("min.insync.replicas", 1, None)]) == 0  # DELETE of a fixed one: it is at its value
    assert code([("cleanup.policy", 0, "delete")], validate_only=True) == 0
    assert _cfg(kafka, "ri").cleanup_policy == "compact,delete"
    assert code([("cleanup.policy", 1, None)]) == 0
    assert _cfg(kafka, "ri").cleanup_policy == "delete"
    broker = {"Resources": [{"ResourceType": 4, "ResourceName": "0", "Configs": []}], "ValidateOnly": False}
    assert call(raw, 44, version, broker)["Responses"][0]["ErrorCode"] == INVALID_REQUEST


def test_unadvertised_config_versions_close_the_connection(kafka):
    """DescribeConfigs 5 and the alters' next versions do not exist: their responses
    carry no top-level error code, so the connection is closed, as Kafka does."""
    for key, version in ((32, 5), (33, 3), (44, 2)):
        c = kafka.raw()
        c.send_frame(header_v1(key, version, 7) + b"\x00\x00\x00\x00")
        assert c.closed_by_peer(), (key, version)
        c.close()


# ------------------------------------------------------------ kafka-python, aiokafka


@kp_case
def test_kafka_python_describe_alter_and_create_with_configs(kafka):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

    a = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    try:
        a.create_topics([NewTopic("kp", 1, 1, topic_configs={"cleanup.policy": "compact", "retention.ms": "7000"})])
        assert _cfg(kafka, "kp").cleanup_policy == "compact"
        got = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp")])
        modified = got["topic"]["kp"]  # the default filter: only what the topic sets
        assert modified["cleanup.policy"]["value"] == "compact" and modified["retention.ms"]["value"] == "7000"
        assert "segment.bytes" not in modified
        every = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp")], config_filter="all")
        assert every["topic"]["kp"]["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"
        out = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp", configs={"retention.ms": "9000"})])
        assert out == {"topic": {"kp": "OK"}}
        c = _cfg(kafka, "kp")
        assert (c.retention_ms, c.cleanup_policy) == (9000, "compact")  # incremental: the rest kept
        a.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "kp", configs={"retention.ms": "11000"})], incremental=False
        )
        c = _cfg(kafka, "kp")
        assert (c.retention_ms, c.cleanup_policy) == (11000, "compact")  # the client sent back the rest
        broker = a.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all")
        assert broker["broker"]["0"]["log.retention.ms"]["read_only"] is True
    finally:
        a.close()


@aio_case
def test_aiokafka_admin_describe_alter_and_create_with_configs(kafka):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def main():
        a = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
        await a.start()
        try:
            await a.create_topics([NewTopic("aio", 1, 1, topic_configs={"cleanup.policy": "compact"})])
            assert _cfg(kafka, "aio").cleanup_policy == "compact"
            [resp] = await a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "aio")])
            entries = {e[0]: e[1] for e in resp.resources[0][4]}
            assert entries["cleanup.policy"] == "compact" and entries["retention.bytes"] == "-1"
            await a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "aio", configs={"retention.ms": "8000"})])
            c = _cfg(kafka, "aio")
            assert (c.retention_ms, c.cleanup_policy) == (8000, "delete")  # AlterConfigs replaces
        finally:
            await a.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# ------------------------------------------------------------ ListOffsets read_committed


def _list_offsets(raw, topic, ts, isolation, version=7):
    body = {
        "ReplicaId": -1,
        "IsolationLevel": isolation,
        "Topics": [{"Name": topic, "Partitions": [{"PartitionIndex": 0, "CurrentLeaderEpoch": -1, "Timestamp": ts}]}],
    }
    return call(raw, 2, version, body)["Topics"][0]["Partitions"][0]


def test_list_offsets_read_committed_is_the_last_stable_offset(kafka):
    kafka.log.create_topic("lso", partitions=1, ring_bytes=1 << 16, persistence="none")
    raw = kafka.raw()
    records = [(b"k%d" % i, b"v", [], 1_700_000_000_000 + i * 1000) for i in range(5)]
    assert (
        call(raw, 0, 8, produce_body("lso", 0, batch(records)))["Responses"][0]["PartitionResponses"][0]["ErrorCode"]
        == 0
    )
    for v in (2, 5, 7, 10):  # no open transaction: the last stable offset is the high watermark
        assert _list_offsets(raw, "lso", -1, 1, v)["Offset"] == 5
    ring = kafka.log.ring(kafka.log.topic_handle("lso"), 0, writable=True)
    lib.shm_ring_set_txn_bound(ring.base, 3 + 1)  # an open transaction's first record is offset 3
    try:
        assert _list_offsets(raw, "lso", -1, 1)["Offset"] == 3
        assert _list_offsets(raw, "lso", -1, 0)["Offset"] == 5  # read_uncommitted: the high watermark
        assert _list_offsets(raw, "lso", -2, 1)["Offset"] == 0
        assert _list_offsets(raw, "lso", 1_700_000_002_000, 1)["Offset"] == 2  # below the bound: found
        assert _list_offsets(raw, "lso", 1_700_000_003_000, 1)["Offset"] == -1  # at it: not yet readable
        assert _list_offsets(raw, "lso", 1_700_000_003_000, 0)["Offset"] == 3
        # librdkafka's consumers are read_committed by default: their high watermark is the LSO
        c = ck.Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "lso"})
        try:
            assert c.get_watermark_offsets(ck.TopicPartition("lso", 0), timeout=10) == (0, 3)
        finally:
            c.close()
        lib.shm_ring_set_txn_bound(ring.base, 99)  # a bound past the end never passes the high watermark
        assert _list_offsets(raw, "lso", -1, 1)["Offset"] == 5
    finally:
        lib.shm_ring_set_txn_bound(ring.base, 0)
    assert _list_offsets(raw, "lso", -1, 1)["Offset"] == 5
