"""Kafka listener, resource limits (issue 11 defect 12, issue 15 item 1):
a Fetch response holds at most its MaxBytes of records (only the first batch
may be larger), a partition listed many times is served once, the listener's
fetch_max_bytes caps what a client may ask for, and a flood of half-sent
request frames stays inside max_queued_request_bytes (the listener's peak RSS
is measured in its own process). Every wait is bounded."""

import contextlib
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from kafka_util import Kafka, header_v1, kafka  # noqa: F401  (fixture)
from kafka_util import recv_exact as _recv
from test_kafka_protocol import call, request


def batches_in(records: bytes):
    """Sizes of the whole batches back to back in a Records field."""
    sizes, pos = [], 0
    while pos < len(records):
        n = struct.unpack_from(">i", records, pos + 8)[0] + 12
        assert pos + n <= len(records), "a partial batch in the response"
        sizes.append(n)
        pos += n
    return sizes


def fill(log, topic, partitions, batches, value_bytes, per_batch=10):
    log.create_topic(topic, partitions=partitions, ring_bytes=1 << 24, persistence="none")
    with log.producer() as p:
        for part in range(partitions):
            for i in range(batches):
                p.send_batch(topic, [b"%06d" % i + bytes(value_bytes)] * per_batch, partition=part)


def multi_fetch(topic, parts, max_bytes, partition_max_bytes, offset=0):
    return {
        "ReplicaId": -1,
        "MaxWaitMs": 0,
        "MinBytes": 1,
        "MaxBytes": max_bytes,
        "IsolationLevel": 0,
        "SessionId": 0,
        "SessionEpoch": -1,
        "Topics": [
            {
                "Topic": topic,
                "Partitions": [
                    {
                        "Partition": p,
                        "FetchOffset": offset,
                        "LogStartOffset": -1,
                        "PartitionMaxBytes": partition_max_bytes,
                    }
                    for p in parts
                ],
            }
        ],
        "ForgottenTopicsData": [],
        "RackId": "",
    }


def records_of(resp):
    return [(t["Topic"], p["PartitionIndex"], bytes(p["Records"])) for t in resp["Responses"] for p in t["Partitions"]]


def test_fetch_response_is_capped_at_max_bytes_across_partitions(kafka):
    """The first partition used to take its whole PartitionMaxBytes whatever MaxBytes said."""
    fill(kafka.log, "t", 4, 40, 1000)  # 4 x 40 batches of ~10 KB
    c = kafka.raw()
    for max_bytes in (50_000, 120_000, 1_000_000):
        resp = call(c, 1, 11, multi_fetch("t", range(4), max_bytes, 1 << 20), corr=max_bytes)
        got = records_of(resp)
        total = sum(len(r) for _, _, r in got)
        assert 0 < total <= max_bytes, (max_bytes, total)
        for _, _, r in got:
            batches_in(r)  # whole batches only
        # and it is not starved: within one batch of the limit
        assert total > max_bytes - 2 * 10_200
    # each partition still at most its own PartitionMaxBytes
    resp = call(c, 1, 11, multi_fetch("t", range(4), 1 << 30, 30_000), corr=5)
    assert all(0 < len(r) <= 30_000 for _, _, r in records_of(resp))


def test_only_the_first_batch_of_a_response_may_exceed_max_bytes(kafka):
    kafka.log.create_topic("t", partitions=2, ring_bytes=1 << 22, persistence="none")
    with kafka.log.producer() as p:
        for part in (0, 1):
            p.send_batch("t", [bytes(200_000)], partition=part)
    c = kafka.raw()
    resp = call(c, 1, 11, multi_fetch("t", [0, 1], 1000, 1000))
    got = records_of(resp)
    assert [len(batches_in(r)) for _, _, r in got] == [1, 0]  # consumer progresses on p0
    assert len(got[0][2]) > 200_000


def test_a_partition_listed_forty_times_is_served_once(kafka):
    """One 1.5 KB Fetch naming a partition 40 times produced a 462 MiB response."""
    fill(kafka.log, "t", 1, 60, 1000)
    c = kafka.raw()
    body = multi_fetch("t", [0] * 40, 300_000, 1 << 20)
    resp = call(c, 1, 11, body)
    got = records_of(resp)
    assert len(got) == 1 and 0 < len(got[0][2]) <= 300_000


def test_listener_fetch_max_bytes_caps_what_a_client_asks(inst):
    k = Kafka(inst, fetch_max_bytes=64_000)
    try:
        fill(inst.log, "t", 3, 30, 1000)
        c = k.raw()
        resp = call(c, 1, 11, multi_fetch("t", range(3), 0x7FFFFFFF, 0x7FFFFFFF))
        assert 0 < sum(len(r) for _, _, r in records_of(resp)) <= 64_000
    finally:
        k.stop()


def test_confluent_consumer_with_small_fetch_max_bytes_reads_everything(kafka):
    """librdkafka with fetch.max.bytes=1000000 looped on 'Invalid response size'
    when the first partition's response passed it (issue 15 item 1)."""
    ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
    fill(kafka.log, "t", 4, 120, 4000, per_batch=10)  # ~19 MB in 480 batches of ~40 KB
    errors_seen = []
    c = ck.Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 1_000_000,
            "max.partition.fetch.bytes": 20_000_000,
            "receive.message.max.bytes": 1_000_000 + 512,
            "enable.auto.commit": False,
            "error_cb": lambda e: errors_seen.append(str(e)),
        }
    )
    try:
        c.subscribe(["t"])
        seen = {p: 0 for p in range(4)}
        deadline = time.monotonic() + 90
        while sum(seen.values()) < 4 * 1200 and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    assert m.offset() == seen[m.partition()]
                    seen[m.partition()] += 1
    finally:
        c.close()
    assert seen == {p: 1200 for p in range(4)}, (seen, errors_seen[:3])
    assert not [e for e in errors_seen if "response size" in e.lower()]


# ------------------------------------------------------------ half-sent frames


def _rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


@contextlib.contextmanager
def listener_process(inst, tmp_path, *args):
    """`shmlog kafka-listener` in its own process (its RSS is its own): yields (proc, port)."""
    errlog = tmp_path / "listener.err"
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shmlog.kafka.cli",
                "--listen",
                "127.0.0.1:0",
                "--instance",
                inst.kwargs["instance"],
                "--data-dir",
                inst.kwargs["data_dir"],
                "--shm-prefix",
                inst.prefix,
                *args,
            ],
            stderr=err,
        )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            m = re.search(rb"Kafka listener on 127\.0\.0\.1:(\d+)", errlog.read_bytes())
            if m:
                port = int(m.group(1))
            elif proc.poll() is not None:
                pytest.fail(f"listener exited: {errlog.read_text()}")
            else:
                time.sleep(0.05)
        assert port, errlog.read_text()
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _api_versions(s, corr):
    s.sendall(struct.pack(">i", 10) + header_v1(18, 0, corr, b""))
    size = struct.unpack(">i", _recv(s, 4))[0]
    return struct.unpack_from(">i", _recv(s, size))[0]


def test_half_sent_frames_stay_inside_the_request_byte_budget(inst, tmp_path):
    """40 connections each announce an 8 MiB frame and send 6 MiB of it
    (240 MiB held without a bound before); with max_queued_request_bytes
    16 MiB the listener's peak RSS grows by less than 64 MiB, small requests
    are still answered during the flood, and a big request goes through once
    the flood is gone."""
    socks = []
    with listener_process(
        inst, tmp_path, "--max-frame-bytes", str(8 << 20), "--max-queued-request-bytes", str(16 << 20)
    ) as (proc, port):
        try:
            probe = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert _api_versions(probe, 1) == 1
            base = _rss_peak_kib(proc.pid)
            chunk = bytes(1 << 16)
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.setblocking(False)
                s.send(struct.pack(">i", 8 << 20) + header_v1(0, 8, 1))
                socks.append([s, 0])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(n < 6 << 20 for _, n in socks):
                moved = False
                for e in socks:
                    while e[1] < 6 << 20:
                        try:
                            e[1] += e[0].send(chunk)
                            moved = True
                        except BlockingIOError:
                            break
                if not moved:
                    time.sleep(0.02)
            sent = sum(n for _, n in socks)
            time.sleep(1.0)  # let the listener read what it will
            assert _api_versions(probe, 2) == 2  # small requests still flow
            grew = _rss_peak_kib(proc.pid) - base
            print(f"half-sent flood: {sent >> 20} MiB sent, listener peak RSS +{grew >> 10} MiB")
            assert sent > 40 << 20, sent  # the flood really was sent
            assert grew < 64 << 10, f"listener peak RSS grew by {grew} KiB with {sent >> 20} MiB half-sent"
            for s, _ in socks:
                s.close()
            socks.clear()
            time.sleep(0.5)
            big = socket.create_connection(("127.0.0.1", port), timeout=20)
            body = header_v1(18, 0, 3, b"")
            big.sendall(struct.pack(">i", 4 << 20) + body + bytes((4 << 20) - len(body)))
            size = struct.unpack(">i", _recv(big, 4))[0]  # an ApiVersions padded to 4 MiB is answered
            assert struct.unpack_from(">i", _recv(big, size))[0] == 3
            big.close()
            probe.close()
        finally:
            for s, _ in socks:
                s.close()


def test_pipelined_fetches_that_are_never_read_hold_one_response(inst, tmp_path):
    """A client that sends 30 Fetches of 8 MiB each and reads nothing made the
    listener build all 30 responses (240 MiB); fetches of one connection now
    run one after another, each once the previous response was written."""
    fill(inst.log, "t", 1, 80, 10_000)  # ~8 MB in one partition
    with listener_process(inst, tmp_path) as (proc, port):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert _api_versions(c, 1) == 1
        base = _rss_peak_kib(proc.pid)
        frame = request(1, 11, 7, multi_fetch("t", [0], 8 << 20, 8 << 20))
        c.sendall(b"".join(struct.pack(">i", len(frame)) + frame for _ in range(30)))
        time.sleep(4.0)
        grew = _rss_peak_kib(proc.pid) - base
        print(f"30 pipelined 8 MiB fetches, unread: listener peak RSS +{grew >> 10} MiB")
        assert grew < 80 << 10, f"listener peak RSS grew by {grew} KiB"
        c.settimeout(30)
        for _i in range(30):  # and they are all answered, in order
            size = struct.unpack(">i", _recv(c, 4))[0]
            assert size > 7 << 20 and struct.unpack_from(">i", _recv(c, size))[0] == 7
        c.close()
