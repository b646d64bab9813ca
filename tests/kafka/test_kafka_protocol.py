"""Kafka listener, wire level: golden byte layouts from raw sockets, Kafka's
error codes, idempotent de-duplication, long-poll fetch, limits and a fuzzed
request decoder. Every socket wait is bounded."""

import os
import random
import subprocess
import sys
import socket
import struct
import time

import pytest

import shmlog.kafka
from shmlog import errors
from shmlog.kafka import codec
from shmlog.kafka.server import ADVERTISED

from kafka_util import Kafka, batch, header_v1, kafka  # noqa: F401  (fixture)

pytest.importorskip("kafka", reason="kafka-python builds the oracle record batches")

S = codec.schema()


def request(key, version, corr, body: dict, client_id=b"raw"):
    api = S.apis[key]
    if api.request.is_flexible(version):
        hdr = header_v1(key, version, corr, client_id) + b"\x00"
    else:
        hdr = header_v1(key, version, corr, client_id)
    return hdr + api.request.encode(body, version)


def call(client, key, version, body, corr=1):
    client.send_frame(request(key, version, corr, body))
    resp = client.recv_frame()
    assert struct.unpack_from(">i", resp)[0] == corr
    pos = 4 + (1 if S.response_header_version(key, version) == 1 else 0)
    out, end = S.apis[key].response.decode(resp, version, pos)
    assert end == len(resp), "response longer than its definition"
    return out


def produce_body(topic, partition, records, acks=-1):
    return {
        "TransactionalId": None,
        "Acks": acks,
        "TimeoutMs": 5000,
        "TopicData": [{"Name": topic, "PartitionData": [{"Index": partition, "Records": records}]}],
    }


def fetch_body(topic, partition, offset, max_wait_ms=0, min_bytes=1, max_bytes=1 << 20):
    return {
        "ReplicaId": -1,
        "MaxWaitMs": max_wait_ms,
        "MinBytes": min_bytes,
        "MaxBytes": 50 << 20,
        "IsolationLevel": 0,
        "SessionId": 0,
        "SessionEpoch": -1,
        "Topics": [
            {
                "Topic": topic,
                "Partitions": [
                    {
                        "Partition": partition,
                        "FetchOffset": offset,
                        "LogStartOffset": -1,
                        "PartitionMaxBytes": max_bytes,
                    }
                ],
            }
        ],
        "ForgottenTopicsData": [],
        "RackId": "",
    }


def produce_result(resp):
    return resp["Responses"][0]["PartitionResponses"][0]


# ------------------------------------------------------------ ApiVersions


def _parse_v0_api_versions(body):
    err, n = struct.unpack_from(">hi", body, 4)
    keys = [struct.unpack_from(">hhh", body, 10 + 6 * i) for i in range(n)]
    return err, keys, 10 + 6 * n


def test_api_versions_v0_golden(kafka):
    c = kafka.raw()
    c.send_frame(header_v1(18, 0, 7))
    body = c.recv_frame()
    assert struct.unpack_from(">i", body)[0] == 7
    err, keys, end = _parse_v0_api_versions(body)
    assert err == 0 and end == len(body)  # v0: no throttle time
    assert keys == [(k, lo, hi) for k, (lo, hi) in sorted(ADVERTISED.items())]
    assert (0, 0, 9) in keys and (1, 4, 12) in keys and (18, 0, 3) in keys and (23, 0, 4) in keys
    # min 0 everywhere but Fetch (served from 4, as in Kafka 4): librdkafka < 2.11.1 (PROTOCOL-NOTES §1)
    assert all(lo == 0 for k, lo, _ in keys if k != 1)


@pytest.mark.parametrize("version", [3, 4])
def test_api_versions_flexible_golden(kafka, version):
    c = kafka.raw()
    # request header v2 (ClientId stays int16-prefixed, then an empty tag block), compact body
    body = b"\x05shm1" + b"\x041.0" + b"\x00"
    c.send_frame(header_v1(18, version, 9) + b"\x00" + body)
    resp = c.recv_frame()
    assert struct.unpack_from(">i", resp)[0] == 9  # response header v0: no tag block
    err = struct.unpack_from(">h", resp, 4)[0]
    n, pos = codec.read_uvarint(resp, 6)
    n -= 1
    keys = []
    for _ in range(n):
        keys.append(struct.unpack_from(">hhh", resp, pos))
        assert resp[pos + 6] == 0  # each entry's empty tag block
        pos += 7
    throttle = struct.unpack_from(">i", resp, pos)[0]
    assert err == 0 and throttle == 0
    assert resp[pos + 4 :] == b"\x00"  # the body's tag block, nothing else
    assert (18, 0, 3) in keys and len(keys) == len(ADVERTISED)


def test_api_versions_unknown_version_answers_v0_error_body(kafka):
    c = kafka.raw()
    c.send_frame(header_v1(18, 99, 11) + b"\x00\x00\x00")
    resp = c.recv_frame()
    assert struct.unpack_from(">i", resp)[0] == 11
    err, keys, end = _parse_v0_api_versions(resp)
    assert err == 35 and end == len(resp)
    assert len(keys) == len(ADVERTISED)
    # the connection stays usable
    c.send_frame(header_v1(18, 0, 12))
    assert struct.unpack_from(">i", c.recv_frame())[0] == 12


# ------------------------------------------------------------ Metadata


def test_metadata_v0_empty_list_means_all_v1_empty_means_none(kafka):
    kafka.log.create_topic("alpha", partitions=2, ring_bytes=1 << 16, persistence="none")
    kafka.log.create_topic("beta", partitions=1, ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    # v0: Topics int32 count 0 -> every topic
    c.send_frame(header_v1(3, 0, 1) + struct.pack(">i", 0))
    r0, _ = S.apis[3].response.decode(c.recv_frame(), 0, 4)
    assert sorted(t["Name"] for t in r0["Topics"]) == ["alpha", "beta"]
    assert r0["Brokers"] == [{"NodeId": 0, "Host": "127.0.0.1", "Port": kafka.port}]
    # v1: empty array -> no topics; null (-1) -> every topic
    c.send_frame(header_v1(3, 1, 2) + struct.pack(">i", 0))
    r1, _ = S.apis[3].response.decode(c.recv_frame(), 1, 4)
    assert r1["Topics"] == [] and r1["ControllerId"] == 0
    c.send_frame(header_v1(3, 1, 3) + struct.pack(">i", -1))
    r1n, _ = S.apis[3].response.decode(c.recv_frame(), 1, 4)
    parts = {t["Name"]: len(t["Partitions"]) for t in r1n["Topics"]}
    assert parts == {"alpha": 2, "beta": 1}


def test_metadata_v8_leader_epoch_and_auto_create(kafka):
    c = kafka.raw()
    r = call(c, 3, 8, {"Topics": [{"Name": "made-on-demand"}], "AllowAutoTopicCreation": True})
    t = r["Topics"][0]
    assert t["ErrorCode"] == 0 and t["Partitions"][0]["LeaderEpoch"] == 0 and t["Partitions"][0]["LeaderId"] == 0
    assert "made-on-demand" in kafka.log.list_topics()
    r = call(c, 3, 8, {"Topics": [{"Name": "not-wanted"}], "AllowAutoTopicCreation": False})
    assert r["Topics"][0]["ErrorCode"] == 3
    assert "not-wanted" not in kafka.log.list_topics()


def test_metadata_without_auto_create_reports_unknown_topic(inst):
    k = Kafka(inst, auto_create_topics=False)
    try:
        r = call(k.raw(), 3, 4, {"Topics": [{"Name": "nope"}], "AllowAutoTopicCreation": True})
        assert r["Topics"][0]["ErrorCode"] == 3
        assert "nope" not in inst.log.list_topics()
    finally:
        k.stop()


def test_auto_created_topics_take_the_listeners_topic_defaults(inst, tmp_path):
    """The ring size (and any other setting) of the topics the listener creates
    is the operator's (issue 13.6: a few hundred auto-created topics at 64 MiB
    per partition ended in the OOM killer): from the API, the config file's
    [kafka.topic_defaults] and `shmlog kafka-listener --topic-default`, each
    checked as a topic with them would be."""
    from shmlog.service import configfile

    k = Kafka(
        inst,
        auto_create_topics=True,
        default_partitions=2,
        topic_defaults={"ring_bytes": 1 << 16, "persistence": "none"},
    )
    try:
        r = call(k.raw(), 3, 8, {"Topics": [{"Name": "small-auto"}], "AllowAutoTopicCreation": True})
        assert r["Topics"][0]["ErrorCode"] == 0
        d = inst.log.describe_topic("small-auto")
        assert (d.config.ring_bytes, d.config.persistence, d.config.partitions) == (1 << 16, "none", 2)
    finally:
        k.stop()
    cfg = configfile.parse('[kafka]\nlisten = "127.0.0.1:0"\n[kafka.topic_defaults]\nring_bytes = 65536\n')
    assert cfg.kafka.topic_defaults == {"ring_bytes": 65536}
    with pytest.raises(errors.InvalidConfig, match="kafka.topic_defaults.*power of two"):
        configfile.parse('[kafka]\nlisten = "127.0.0.1:0"\n[kafka.topic_defaults]\nring_bytes = 100000\n')
    with pytest.raises(errors.InvalidConfig, match="unknown topic setting.*partitions"):
        configfile.parse('[kafka]\nlisten = "127.0.0.1:0"\n[kafka.topic_defaults]\npartitions = 4\n')
    env = dict(
        os.environ,
        SHMLOG_INSTANCE=inst.kwargs["instance"],
        SHMLOG_DATA_DIR=inst.kwargs["data_dir"],
        SHMLOG_SHM_PREFIX=inst.prefix,
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmlog",
            "kafka-listener",
            "--listen",
            "127.0.0.1:0",
            "--topic-default",
            "ring_bytes=100000",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and "--topic-default" in r.stderr and "power of two" in r.stderr, r.stderr


# ------------------------------------------------------------ Produce / Fetch


def test_produce_acks0_gets_no_reply_and_is_stored(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    c.send_frame(request(0, 3, 1, produce_body("t", 0, batch([(b"k", b"v", [])]), acks=0)))
    c.send_frame(header_v1(18, 0, 2))
    assert struct.unpack_from(">i", c.recv_frame())[0] == 2  # the next reply is the next request's
    with kafka.log.consumer(auto_offset_reset="earliest") as cons:
        cons.assign([("t", 0)])
        m = cons.poll(timeout=5)
    assert m is not None and (m.key, m.value) == (b"k", b"v")


def test_client_batch_is_stored_and_served_unchanged(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    b1 = batch([(b"k1", b"v1", [("h", b"x")]), (None, b"v2", [])])
    b2 = batch([(b"k3", None, [])], base_ts=1_700_000_000_123)
    for i, b in enumerate((b1, b2)):
        r = produce_result(call(c, 0, 8, produce_body("t", 0, b), corr=10 + i))
        assert r["ErrorCode"] == 0 and r["BaseOffset"] == 2 * i and r["LogStartOffset"] == 0
    f = call(c, 1, 11, fetch_body("t", 0, 0))
    p = f["Responses"][0]["Partitions"][0]
    assert p["ErrorCode"] == 0 and p["HighWatermark"] == 3 and p["LastStableOffset"] == 3
    assert p["AbortedTransactions"] == [] and p["PreferredReadReplica"] == -1
    rec = bytes(p["Records"])
    # byte for byte, apart from baseOffset (bytes 0..7) and partitionLeaderEpoch (12..15)
    stored2 = rec[len(b1) :]
    assert rec[: len(b1)] == b1 and len(stored2) == len(b2)
    assert stored2[:8] == struct.pack(">q", 2) and stored2[8:12] == b2[8:12] and stored2[16:] == b2[16:]
    # the first batch comes whole even when it is larger than the partition's max bytes
    small = call(c, 1, 11, fetch_body("t", 0, 0, max_bytes=10))["Responses"][0]["Partitions"][0]
    assert bytes(small["Records"]) == rec[: len(b1)]
    # a fetch from inside a batch returns that batch whole (clients skip what they have)
    mid = call(c, 1, 11, fetch_body("t", 0, 1))["Responses"][0]["Partitions"][0]
    assert bytes(mid["Records"]) == rec
    # a native consumer reads the same records
    with kafka.log.consumer(auto_offset_reset="earliest") as cons:
        cons.assign([("t", 0)])
        got = cons.poll_batch(10, timeout=5)
        got += cons.poll_batch(10, timeout=1)
    assert [(m.offset, m.key, m.value, m.headers) for m in got] == [
        (0, b"k1", b"v1", (("h", b"x"),)),
        (1, None, b"v2", ()),
        (2, b"k3", None, ()),
    ]
    assert got[2].timestamp_ms == 1_700_000_000_123


def test_empty_fetch_has_zero_length_records_not_null(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    c.send_frame(request(1, 4, 5, fetch_body("t", 0, 0, max_wait_ms=0)))
    resp = c.recv_frame()
    # v4 partition tail: ... AbortedTransactions int32 count, then Records int32 length 0
    assert resp[-8:] == struct.pack(">ii", 0, 0)
    out, _ = S.apis[1].response.decode(resp, 4, 4)
    assert out["Responses"][0]["Partitions"][0]["Records"] == b""


def test_fetch_long_poll_waits_then_wakes_on_a_native_produce(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    t0 = time.monotonic()
    f = call(c, 1, 11, fetch_body("t", 0, 0, max_wait_ms=400))
    waited = time.monotonic() - t0
    assert f["Responses"][0]["Partitions"][0]["Records"] == b""
    assert 0.3 <= waited < 5
    # a fetch waiting on an empty partition returns once a native producer writes
    c.send_frame(request(1, 11, 2, fetch_body("t", 0, 0, max_wait_ms=8000)))
    time.sleep(0.2)
    t1 = time.monotonic()
    with kafka.log.producer() as p:
        p.send("t", b"hello", partition=0)
    resp = c.recv_frame()
    assert time.monotonic() - t1 < 4
    out, _ = S.apis[1].response.decode(resp, 11, 4)
    assert len(out["Responses"][0]["Partitions"][0]["Records"]) > 61


def test_responses_keep_request_order_while_a_fetch_waits(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    c.send_frame(request(1, 11, 1, fetch_body("t", 0, 0, max_wait_ms=500)))
    c.send_frame(header_v1(18, 0, 2))
    assert struct.unpack_from(">i", c.recv_frame())[0] == 1
    assert struct.unpack_from(">i", c.recv_frame())[0] == 2


def test_fetch_errors(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    r = call(c, 1, 11, fetch_body("t", 0, 5))
    assert r["Responses"][0]["Partitions"][0]["ErrorCode"] == 1  # OFFSET_OUT_OF_RANGE
    r = call(c, 1, 11, fetch_body("missing", 0, 0))
    assert r["Responses"][0]["Partitions"][0]["ErrorCode"] == 3
    r = call(c, 1, 11, fetch_body("t", 7, 0))
    assert r["Responses"][0]["Partitions"][0]["ErrorCode"] == 3
    r = call(c, 1, 3, fetch_body("t", 0, 0))
    assert r["Responses"][0]["Partitions"][0]["ErrorCode"] == 35  # Fetch v0-3: not listed, answered UNSUPPORTED_VERSION


def test_fetch_reads_a_durable_topic_from_its_segment_files(kafka):
    kafka.log.create_topic("d", ring_bytes=1 << 16, fsync="never")
    with kafka.log.producer() as p:
        for i in range(80):
            p.send_batch("d", [b"%05d" % (i * 50 + j) + b"x" * 200 for j in range(50)], partition=0)
        p.flush(durable=True, timeout=30)
    start, end = kafka.log.describe_topic("d").partitions[0].log_start_offset, 4000
    assert start == 0
    c = kafka.raw()
    seen, off = [], 0
    from kafka.record.default_records import DefaultRecordBatch

    while off < end:
        r = call(c, 1, 11, fetch_body("d", 0, off, max_bytes=256 << 10), corr=off + 1)
        p = r["Responses"][0]["Partitions"][0]
        assert p["ErrorCode"] == 0 and p["Records"]
        rec = memoryview(bytes(p["Records"]))
        while len(rec) >= 12:
            n = struct.unpack_from(">i", rec, 8)[0] + 12
            b = DefaultRecordBatch(bytes(rec[:n]))
            assert b.validate_crc()
            for r_ in b:
                if r_.offset >= off:
                    seen.append((r_.offset, r_.value[:5]))
            rec = rec[n:]
        off = seen[-1][0] + 1
    assert [o for o, _ in seen] == list(range(4000))
    assert all(v == b"%05d" % o for o, v in seen)


def test_produce_error_codes(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none", max_message_bytes=4096)
    c = kafka.raw()
    good = batch([(b"k", b"v", [])])
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    assert produce_result(call(c, 0, 8, produce_body("t", 0, bytes(bad_crc))))["ErrorCode"] == 2
    bad_count = bytearray(good)
    bad_count[57:61] = struct.pack(">i", 2)  # recordsCount != lastOffsetDelta + 1
    from shmlog._native import crc32c

    bad_count[17:21] = struct.pack(">I", crc32c(bytes(bad_count[21:])))
    assert produce_result(call(c, 0, 8, produce_body("t", 0, bytes(bad_count))))["ErrorCode"] == 87
    big = batch([(None, b"x" * 8000, [])])
    assert produce_result(call(c, 0, 8, produce_body("t", 0, big)))["ErrorCode"] == 10
    assert produce_result(call(c, 0, 8, produce_body("nope", 0, good)))["ErrorCode"] == 3
    assert produce_result(call(c, 0, 8, produce_body("t", 3, good)))["ErrorCode"] == 3
    assert produce_result(call(c, 0, 8, produce_body("t", 0, good + good)))["ErrorCode"] == 87
    assert produce_result(call(c, 0, 2, produce_body("t", 0, good)))["ErrorCode"] == 35
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 0  # nothing bad was stored
    assert produce_result(call(c, 0, 8, produce_body("t", 0, good)))["ErrorCode"] == 0


def test_idempotent_producer_dedup_and_sequence_errors(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    c = kafka.raw()
    r = call(c, 22, 1, {"TransactionalId": None, "TransactionTimeoutMs": 60000})
    pid, epoch = r["ProducerId"], r["ProducerEpoch"]
    assert r["ErrorCode"] == 0 and pid >= 0 and epoch == 0
    b0 = batch([(None, b"a", []), (None, b"b", [])], producer_id=pid, producer_epoch=0, base_sequence=0)
    b1 = batch([(None, b"c", [])], producer_id=pid, producer_epoch=0, base_sequence=2)
    assert produce_result(call(c, 0, 8, produce_body("t", 0, b0)))["BaseOffset"] == 0
    again = produce_result(call(c, 0, 8, produce_body("t", 0, b0)))  # a retry: same offset
    assert again["ErrorCode"] == 0 and again["BaseOffset"] == 0
    assert produce_result(call(c, 0, 8, produce_body("t", 0, b1)))["BaseOffset"] == 2
    gap = batch([(None, b"d", [])], producer_id=pid, producer_epoch=0, base_sequence=9)
    assert produce_result(call(c, 0, 8, produce_body("t", 0, gap)))["ErrorCode"] == 45
    assert kafka.log.describe_topic("t").partitions[0].end_offset == 3
    r2 = call(c, 22, 0, {"TransactionalId": None, "TransactionTimeoutMs": 60000})
    assert r2["ProducerId"] != pid
    txn = call(c, 22, 1, {"TransactionalId": "tx", "TransactionTimeoutMs": 60000})
    assert txn["ErrorCode"] == 0 and txn["ProducerId"] not in (pid, r2["ProducerId"])  # transactions are served
    again = call(c, 22, 1, {"TransactionalId": "tx", "TransactionTimeoutMs": 60000})
    assert (again["ProducerId"], again["ProducerEpoch"]) == (txn["ProducerId"], txn["ProducerEpoch"] + 1)  # fenced
    bad = call(c, 22, 1, {"TransactionalId": "tx", "TransactionTimeoutMs": 10**9})
    assert bad["ErrorCode"] == 50  # INVALID_TRANSACTION_TIMEOUT


def test_list_offsets_earliest_latest_by_time(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        for i in range(5):
            p.send("t", b"v", partition=0, timestamp_ms=1_000_000 + i * 10)
    c = kafka.raw()

    def lo(version, ts):
        body = {
            "ReplicaId": -1,
            "IsolationLevel": 0,
            "Topics": [
                {
                    "Name": "t",
                    "Partitions": [
                        {"PartitionIndex": 0, "CurrentLeaderEpoch": -1, "Timestamp": ts, "MaxNumOffsets": 1}
                    ],
                }
            ],
        }
        return call(c, 2, version, body)["Topics"][0]["Partitions"][0]

    assert lo(5, -1)["Offset"] == 5 and lo(5, -1)["LeaderEpoch"] == 0
    assert lo(1, -2)["Offset"] == 0
    hit = lo(4, 1_000_025)
    assert hit["Offset"] == 3 and hit["Timestamp"] == 1_000_030
    assert lo(4, 9_000_000)["Offset"] == -1
    assert lo(0, -1)["OldStyleOffsets"] == [5]


def test_offset_for_leader_epoch(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send("t", b"v", partition=0)
    c = kafka.raw()

    def ofle(epoch, current=-1):
        body = {
            "ReplicaId": -1,
            "Topics": [
                {"Topic": "t", "Partitions": [{"Partition": 0, "CurrentLeaderEpoch": current, "LeaderEpoch": epoch}]}
            ],
        }
        return call(c, 23, 3, body)["Topics"][0]["Partitions"][0]

    assert ofle(0) == {"ErrorCode": 0, "Partition": 0, "LeaderEpoch": 0, "EndOffset": 1}
    assert (ofle(5)["LeaderEpoch"], ofle(5)["EndOffset"]) == (-1, -1)  # a future epoch
    assert ofle(0, current=3)["ErrorCode"] == 75


def test_create_and_delete_topics(kafka):
    c = kafka.raw()
    body = {
        "Topics": [
            {
                "Name": "made",
                "NumPartitions": 3,
                "ReplicationFactor": 1,
                "Assignments": [],
                "Configs": [
                    {"Name": "retention.ms", "Value": "60000"},
                    {"Name": "shmlog.ring.bytes", "Value": "65536"},
                    {"Name": "cleanup.policy", "Value": "delete"},
                ],
            },
            {"Name": "bad/name", "NumPartitions": 1, "ReplicationFactor": 1, "Assignments": [], "Configs": []},
            {"Name": "rf3", "NumPartitions": 1, "ReplicationFactor": 3, "Assignments": [], "Configs": []},
        ],
        "timeoutMs": 5000,
        "validateOnly": False,
    }
    r = call(c, 19, 4, body)
    assert [t["ErrorCode"] for t in r["Topics"]] == [0, 17, 38]
    d = kafka.log.describe_topic("made")
    assert d.config.partitions == 3 and d.config.retention_ms == 60000 and d.config.ring_bytes == 65536
    r = call(c, 19, 4, body)
    assert r["Topics"][0]["ErrorCode"] == 36  # TOPIC_ALREADY_EXISTS
    r = call(c, 20, 3, {"TopicNames": ["made", "never-was"], "TimeoutMs": 5000})
    assert [x["ErrorCode"] for x in r["Responses"]] == [0, 3]
    assert "made" not in kafka.log.list_topics()


# ------------------------------------------------------------ robustness


def _alive(kafka):
    c = kafka.raw()
    c.send_frame(header_v1(18, 0, 99))
    assert struct.unpack_from(">i", c.recv_frame())[0] == 99
    c.close()


def test_oversize_frame_unknown_api_and_garbage_close_only_that_connection(inst):
    k = Kafka(inst, max_frame_bytes=4096)
    try:
        c = k.raw()
        c.sock.sendall(struct.pack(">i", 1 << 20))  # oversize: refused unread
        assert c.closed_by_peer()
        c = k.raw()
        c.send_frame(header_v1(4242, 0, 1))  # unknown API key
        assert c.closed_by_peer()
        c = k.raw()
        c.send_frame(header_v1(3, 1, 1) + b"\x00\x00\x00\x05\x00")  # truncated Metadata body
        assert c.closed_by_peer()
        c = k.raw()
        c.sock.sendall(struct.pack(">i", -5))
        assert c.closed_by_peer()
        half = k.raw()
        half.sock.sendall(struct.pack(">i", 100) + b"\x00\x12")  # half a frame, then silence
        _alive(k)  # others are served meanwhile
    finally:
        k.stop()


def test_a_client_that_never_reads_stalls_only_itself(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 20, persistence="none")
    with kafka.log.producer() as p:
        for _ in range(8):  # 800 KB, all still in the 1 MiB ring
            p.send_batch("t", [b"x" * 1000] * 100, partition=0)
    slow = kafka.raw()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sock.settimeout(0.5)
    sent = 0
    try:
        for i in range(400):  # ~2 MB of responses nobody reads
            slow.send_frame(request(1, 11, i, fetch_body("t", 0, 0)))
            sent += 1
    except (socket.timeout, OSError):
        pass  # the listener stopped reading it: fine
    assert sent > 10
    t0 = time.monotonic()
    _alive(kafka)
    r = call(kafka.raw(), 1, 11, fetch_body("t", 0, 0))
    assert len(r["Responses"][0]["Partitions"][0]["Records"]) > 1000
    assert time.monotonic() - t0 < 5
    slow.close()


def test_max_connections(inst):
    k = Kafka(inst, max_connections=2)
    try:
        a, b = k.raw(), k.raw()
        for i, cl in enumerate((a, b)):
            cl.send_frame(header_v1(18, 0, i))
            cl.recv_frame()
        third = k.raw()
        assert third.closed_by_peer()
        a.close()
        time.sleep(0.2)
        _alive(k)
    finally:
        k.stop()


def test_fuzzed_requests_never_crash_the_listener(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    rng = random.Random(7)
    seeds = [
        request(18, 3, 1, {"ClientSoftwareName": "a", "ClientSoftwareVersion": "1"}),
        request(3, 8, 1, {"Topics": [{"Name": "t"}], "AllowAutoTopicCreation": False}),
        request(0, 8, 1, produce_body("t", 0, batch([(b"k", b"v", [("h", b"x")])]))),
        request(1, 11, 1, fetch_body("t", 0, 0)),
        request(
            2,
            5,
            1,
            {"ReplicaId": -1, "Topics": [{"Name": "t", "Partitions": [{"PartitionIndex": 0, "Timestamp": -1}]}]},
        ),
        request(
            19,
            4,
            1,
            {
                "Topics": [
                    {"Name": "fz", "NumPartitions": 1, "ReplicationFactor": 1, "Assignments": [], "Configs": []}
                ],
                "timeoutMs": 1000,
            },
        ),
    ]
    for i in range(250):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.6:
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            elif op < 0.8:
                del frame[rng.randrange(len(frame)) :]
            else:
                frame += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if len(frame) < 4:
            frame = frame.ljust(4, b"\x00")
        frame[4:8] = struct.pack(">i", 1000 + i)  # fixed correlation id (keeps the reply checkable)
        c = kafka.raw()
        c.sock.settimeout(3)
        try:
            c.send_frame(bytes(frame))
            resp = c.recv_frame()
            assert len(resp) >= 4
        except (ConnectionError, socket.timeout, OSError):
            pass  # closed, or waiting (fetch long poll): both fine
        finally:
            c.close()
    _alive(kafka)


# ------------------------------------------------------------ entry points


def test_non_loopback_needs_explicit_permission(inst):
    with pytest.raises(errors.InvalidArgument):
        shmlog.kafka.start(inst.log, "0.0.0.0", 0)
    assert shmlog.kafka.main(["--listen", "0.0.0.0:0", "--instance", "x"]) == 2
    assert shmlog.kafka.main(["--listen", "nonsense"]) == 2


# ------------------------------------------------------------ group coordinator


def _join(c, group, member="", corr=1, session_ms=6000):
    return call(
        c,
        11,
        5,
        {
            "GroupId": group,
            "SessionTimeoutMs": session_ms,
            "RebalanceTimeoutMs": 3000,
            "MemberId": member,
            "GroupInstanceId": None,
            "ProtocolType": "consumer",
            "Protocols": [{"Name": "range", "Metadata": b"sub-" + member.encode()}],
        },
        corr=corr,
    )


def _hb(c, group, gen, member):
    return call(c, 12, 3, {"GroupId": group, "GenerationId": gen, "MemberId": member, "GroupInstanceId": None})[
        "ErrorCode"
    ]


def test_group_membership_errors_and_rebalance(kafka):
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 16, persistence="none")
    a = kafka.raw()
    fc = call(a, 10, 2, {"Key": "g", "KeyType": 0})
    assert (fc["ErrorCode"], fc["NodeId"], fc["Port"]) == (0, 0, kafka.port)
    j = _join(a, "g")
    m1, gen = j["MemberId"], j["GenerationId"]
    assert j["ErrorCode"] == 0 and gen == 1 and j["Leader"] == m1 and len(j["Members"]) == 1
    s = call(
        a,
        14,
        3,
        {
            "GroupId": "g",
            "GenerationId": gen,
            "MemberId": m1,
            "GroupInstanceId": None,
            "Assignments": [{"MemberId": m1, "Assignment": b"all-of-it"}],
        },
    )
    assert s == {"ThrottleTimeMs": 0, "ErrorCode": 0, "Assignment": b"all-of-it"}
    assert _hb(a, "g", gen, m1) == 0
    assert _hb(a, "g", gen + 5, m1) == 22  # ILLEGAL_GENERATION
    assert _hb(a, "g", gen, "nobody") == 25  # UNKNOWN_MEMBER_ID
    assert _join(a, "g", member="nobody")["ErrorCode"] == 25
    # a second member's join starts a rebalance; the first hears of it by heartbeat
    b = kafka.raw()
    b.send_frame(
        request(
            11,
            5,
            50,
            {
                "GroupId": "g",
                "SessionTimeoutMs": 6000,
                "RebalanceTimeoutMs": 3000,
                "MemberId": "",
                "GroupInstanceId": None,
                "ProtocolType": "consumer",
                "Protocols": [{"Name": "range", "Metadata": b"b"}],
            },
        )
    )
    time.sleep(0.2)
    assert _hb(a, "g", gen, m1) == 27  # REBALANCE_IN_PROGRESS
    commit = {
        "GroupId": "g",
        "GenerationIdOrMemberEpoch": gen,
        "MemberId": m1,
        "GroupInstanceId": None,
        "Topics": [
            {
                "Name": "t",
                "Partitions": [
                    {"PartitionIndex": 0, "CommittedOffset": 0, "CommittedLeaderEpoch": -1, "CommittedMetadata": ""}
                ],
            }
        ],
    }
    r = call(a, 8, 7, commit)
    assert r["Topics"][0]["Partitions"][0]["ErrorCode"] == 0  # PreparingRebalance: current generation commits
    j2 = _join(a, "g", member=m1, corr=3)  # rejoin: generation 2 with both members
    rb, _ = S.apis[11].response.decode(b.recv_frame(), 5, 4)
    assert j2["GenerationId"] == rb["GenerationId"] == 2 and j2["Leader"] == m1
    assert sorted(m["Metadata"] for m in j2["Members"]) == [b"b", b"sub-" + m1.encode()]
    assert rb["Members"] == []
    d = call(a, 15, 4, {"Groups": ["g", "none"], "IncludeAuthorizedOperations": False})
    assert d["Groups"][0]["GroupState"] == "CompletingRebalance" and len(d["Groups"][0]["Members"]) == 2
    assert d["Groups"][1]["GroupState"] == "Dead"
    # LeaveGroup v3 of the second member
    lv = call(b, 13, 3, {"GroupId": "g", "Members": [{"MemberId": rb["MemberId"], "GroupInstanceId": None}]})
    assert lv["ErrorCode"] == 0 and lv["Members"][0]["ErrorCode"] == 0
    assert "g" in [g["GroupId"] for g in call(a, 16, 2, {})["Groups"]]


def test_assign_mode_commit_and_offset_fetch_use_the_shared_table(kafka):
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("t", [b"v"] * 50, partition=1)
    c = kafka.raw()
    commit = {
        "GroupId": "assign",
        "GenerationIdOrMemberEpoch": -1,
        "MemberId": "",
        "GroupInstanceId": None,
        "Topics": [
            {
                "Name": "t",
                "Partitions": [
                    {"PartitionIndex": 1, "CommittedOffset": 42, "CommittedLeaderEpoch": -1, "CommittedMetadata": None}
                ],
            }
        ],
    }
    assert call(c, 8, 2, commit)["Topics"][0]["Partitions"][0]["ErrorCode"] == 0
    assert kafka.log.committed_offsets("assign") == {("t", 1): 42}
    f = call(
        c, 9, 5, {"GroupId": "assign", "Topics": [{"Name": "t", "PartitionIndexes": [0, 1]}], "RequireStable": False}
    )
    parts = f["Topics"][0]["Partitions"]
    assert [(p["PartitionIndex"], p["CommittedOffset"]) for p in parts] == [(0, -1), (1, 42)]
    assert parts[1]["CommittedLeaderEpoch"] == 0 and f["ErrorCode"] == 0
    every = call(c, 9, 3, {"GroupId": "assign", "Topics": None})
    assert every["Topics"] == [
        {"Name": "t", "Partitions": [{"PartitionIndex": 1, "CommittedOffset": 42, "Metadata": "", "ErrorCode": 0}]}
    ]
    bad = dict(commit, Topics=[{"Name": "missing", "Partitions": commit["Topics"][0]["Partitions"]}])
    assert call(c, 8, 2, bad)["Topics"][0]["Partitions"][0]["ErrorCode"] == 3
    past = {
        **commit,
        "Topics": [{"Name": "t", "Partitions": [dict(commit["Topics"][0]["Partitions"][0], CommittedOffset=51)]}],
    }
    assert call(c, 8, 2, past)["Topics"][0]["Partitions"][0]["ErrorCode"] == 0  # Kafka stores any offset
    assert kafka.log.committed_offsets("assign") == {("t", 1): 51}


def test_kafka_commit_to_a_partition_a_native_member_owns_is_refused(kafka):
    kafka.log.create_topic("t", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("t", [b"v"] * 5, partition=0)
    c = kafka.raw()
    commit = {
        "GroupId": "mixed",
        "GenerationIdOrMemberEpoch": -1,
        "MemberId": "",
        "GroupInstanceId": None,
        "Topics": [
            {
                "Name": "t",
                "Partitions": [
                    {"PartitionIndex": 0, "CommittedOffset": 3, "CommittedLeaderEpoch": -1, "CommittedMetadata": ""}
                ],
            }
        ],
    }
    with kafka.log.consumer(
        group="mixed", topics=["t"], auto_offset_reset="earliest", enable_auto_commit=False
    ) as native:
        assert native.poll(timeout=10) is not None  # joined: it owns partition 0
        r = call(c, 8, 7, commit)
        assert r["Topics"][0]["Partitions"][0]["ErrorCode"] == 27
    assert call(c, 8, 7, commit)["Topics"][0]["Partitions"][0]["ErrorCode"] == 0  # gone: accepted
    assert kafka.log.committed_offsets("mixed") == {("t", 0): 3}
