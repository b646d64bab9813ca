"""test_fuzz_kafka_requests.py — the Kafka listener's request bodies, random and mutated, per API.

Owns: a listener in its own process (`shmlog kafka-listener`, so a crash,
its memory and its log are its own), and for every API and version it
serves: random bodies, and well-formed bodies (built from the listener's
message schemas with plausible values) with bits flipped, cut short,
stretched, or an int field replaced by a huge or negative value. Each must
get a response with our correlation id or a closed connection within a time
limit (a long poll — Fetch, JoinGroup, SyncGroup — may wait, never past its
limit), the listener must stay up, answer a fresh connection, keep its RSS
bounded and log no traceback (a handler that raised a foreign exception).
Must never: share the listener with another test (its own instance).
"""

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shmlog.kafka import codec, server

from kafka_util import RawClient, header_v1  # noqa: E402

REPLY_S = 10.0
RSS_GROWTH_MAX = 200 << 20
SCHEMA = codec.Schema()
# (api key, version) for every API and version the listener serves, ApiVersions included
SERVED = [
    (k, v)
    for k, (lo, hi) in sorted(server.ADVERTISED.items())
    for v in range(lo, hi + 1)
    if k in SCHEMA.apis
    and SCHEMA.apis[k].request.valid[0] <= v <= SCHEMA.apis[k].request.valid[1]
    and not (k == 0 and v < 3)
    and not (k == 1 and v < 4)
]

PLAUSIBLE = {
    "TopicName": "fz",
    "Name": "fz",
    "Topic": "fz",
    "GroupId": "g",
    "Key": "g",
    "MemberId": "",
    "ProtocolType": "consumer",
    "MaxBytes": 1 << 20,
    "PartitionMaxBytes": 1 << 16,
    "MaxWaitMs": 50,
    "MinBytes": 0,
    "TimeoutMs": 1000,
    "SessionTimeoutMs": 6000,
    "RebalanceTimeoutMs": 1000,
    "NumPartitions": 1,
    "ReplicationFactor": 1,
    "Acks": 1,
    "ReplicaId": -1,
    "IsolationLevel": 0,
    "Timestamp": -1,
    "GenerationId": -1,
    "CommittedOffset": 0,
    "FetchOffset": 0,
    "LogStartOffset": -1,
    "TransactionTimeoutMs": 1000,
    "ProducerId": -1,
    "ProducerEpoch": -1,
    "CurrentLeaderEpoch": -1,
    "LeaderEpoch": -1,
    "Count": 2,  # CreatePartitions
    "Offset": 0,  # DeleteRecords
    "EndpointType": 1,  # DescribeCluster
}


def _sample(fields, version):
    """A plausible request object: every field of this version, arrays with one element."""
    obj = {}
    for f in fields:
        if not codec._in(codec.parse_versions(f.get("versions")), version):
            continue
        name, typ = f["name"], f["type"]
        if typ.startswith("[]"):
            elem = typ[2:]
            if "fields" in f:
                obj[name] = [_sample(f["fields"], version)]
            elif elem == "string":
                obj[name] = [PLAUSIBLE.get(name, "fz")]
            else:
                obj[name] = [0]
        elif "fields" in f:
            obj[name] = _sample(f["fields"], version)
        elif name in PLAUSIBLE:
            obj[name] = PLAUSIBLE[name]
    return obj


def _valid_body(key, version):
    msg = SCHEMA.apis[key].request
    return msg.encode(_sample(codec.load_definition(msg.name)["fields"], version), version)


BODIES = {kv: _valid_body(*kv) for kv in SERVED}


@st.composite
def request_frames(draw):
    key, version = draw(st.sampled_from(SERVED))
    body = BODIES[(key, version)]
    how = draw(st.sampled_from(["random", "flip", "cut", "stretch", "int", "int", "valid"]))
    if how == "random":
        body = draw(st.binary(max_size=400))
    elif how == "flip" and body:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(body) - 1))
            body = body[:pos] + bytes([body[pos] ^ (1 << draw(st.integers(0, 7)))]) + body[pos + 1 :]
    elif how == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif how == "stretch":
        body = body + draw(st.binary(min_size=1, max_size=64))
    elif how == "int" and len(body) >= 4:
        pos = draw(st.integers(0, len(body) - 4))
        val = draw(st.sampled_from([0x7FFFFFFF, -1, -(2**31), 0x10000, 0xFFFF]))
        body = body[:pos] + struct.pack(">i", val) + body[pos + 4 :]
    return key, version, how, body


@pytest.fixture
def listener(inst, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inst.log.create_topic("fz", partitions=1, ring_bytes=1 << 16)
    logf = open(tmp_path / "listener.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shmlog",
            "kafka-listener",
            "--listen",
            f"127.0.0.1:{port}",
            "--instance",
            inst.kwargs["instance"],
            "--data-dir",
            inst.kwargs["data_dir"],
            "--shm-prefix",
            inst.prefix,
            "--max-frame-bytes",
            str(1 << 20),
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    logf.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the listener did not start:\n{(tmp_path / 'listener.log').read_text()}")
            time.sleep(0.05)
    try:
        yield proc, port, tmp_path / "listener.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _header(key, version, corr):
    """Request header v1, or v2 (an empty tagged-field section) for a flexible version."""
    return header_v1(key, version, corr) + (b"\x00" if SCHEMA.request_header_version(key, version) == 2 else b"")


def _exchange(port, key, version, corr, body):
    """'response' / 'closed' / 'waiting' (no answer yet, connection open) and the time taken."""
    c = RawClient(port, timeout=REPLY_S)
    t0 = time.monotonic()
    try:
        c.send_frame(_header(key, version, corr) + body)
        try:
            frame = c.recv_frame()
        except (ConnectionError, OSError) as e:
            if isinstance(e, socket.timeout):
                return "waiting", time.monotonic() - t0
            return "closed", time.monotonic() - t0
        assert struct.unpack_from(">i", frame, 0)[0] == corr, "a response with another correlation id"
        return "response", time.monotonic() - t0
    finally:
        c.close()


def _api_versions_ok(port):
    out, _ = _exchange(port, 18, 0, 7, b"")
    assert out == "response", "the listener no longer answers ApiVersions on a fresh connection"


def test_mutated_request_bodies_get_a_response_or_a_close(listener):
    proc, port, logpath = listener
    rss0 = psutil.Process(proc.pid).memory_info().rss
    outcomes = {}
    peak = [rss0]

    @settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(request_frames())
    def run(req):
        key, version, how, body = req
        corr = random.Random(len(body)).randrange(1, 1 << 30)
        out, dt = _exchange(port, key, version, corr, body)
        assert proc.poll() is None, f"the listener died on api {key} v{version} ({how}) body {body[:80]!r}"
        if out == "waiting":
            assert key in server.DEFERRED, f"api {key} v{version} ({how}): no answer within {REPLY_S} s"
        assert dt <= REPLY_S + 1
        outcomes[(key, how, out)] = outcomes.get((key, how, out), 0) + 1
        peak[0] = max(peak[0], psutil.Process(proc.pid).memory_info().rss)

    run()
    _api_versions_ok(port)
    assert peak[0] - rss0 < RSS_GROWTH_MAX, f"RSS grew by {(peak[0] - rss0) >> 20} MiB"
    served = {k for k, _, o in outcomes if o == "response"}
    assert 18 in served and 3 in served, outcomes  # the mutations did not only hit the framing
    bugs = _tracebacks(logpath)
    if bugs:
        text = "handlers raised foreign exceptions (the connection was closed):\n" + "\n".join(
            f"{n} x {where}: {exc}" for (where, exc), n in sorted(bugs.items())
        )
        pytest.fail(text)


def _tracebacks(logpath):
    """{(innermost frame, exception line): count} of the tracebacks in the listener's log."""
    out = {}
    for tb in logpath.read_text(errors="replace").split("Traceback (most recent call last):")[1:]:
        lines = [ln for ln in tb.splitlines() if ln.strip()]
        frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
        exc = next((ln for ln in lines if not ln.startswith(" ") and ":" in ln), lines[-1] if lines else "?")
        key = (frames[-1] if frames else "?", exc.strip()[:160])
        out[key] = out.get(key, 0) + 1
    return out


def test_every_served_api_answers_its_plausible_body(listener):
    """The unmutated bodies: a response (errors inside it are fine) or a long poll, never a close."""
    proc, port, logpath = listener
    closed = []
    for (key, version), body in BODIES.items():
        out, _ = _exchange(port, key, version, 1000 + key, body)
        if out == "closed":
            closed.append((key, version))
    assert proc.poll() is None
    assert not closed, f"closed instead of answering: {closed}"


def test_huge_declared_lengths_do_not_allocate(listener):
    """Array and bytes lengths of 2^31-1 in a small frame: an error or a close at once, no allocation."""
    proc, port, logpath = listener
    rss0 = psutil.Process(proc.pid).memory_info().rss
    for key, version in SERVED:
        body = BODIES[(key, version)]
        for pos in range(0, max(len(body) - 3, 1), max(1, len(body) // 8)):
            b = body[:pos] + b"\x7f\xff\xff\xff" + body[pos + 4 :]
            out, dt = _exchange(port, key, version, 5, b)
            assert proc.poll() is None and (out != "waiting" or key in server.DEFERRED), (key, version, pos)
    _api_versions_ok(port)
    assert psutil.Process(proc.pid).memory_info().rss - rss0 < RSS_GROWTH_MAX


def test_null_array_is_null_only_where_the_schema_says_nullable():
    """A -1 (classic) or 0 (compact) array length is null only for a field nullable at that
    version; anywhere else it is a malformed request (Kafka's broker refuses it), not a None
    a handler then iterates. Metadata v1+ Topics is nullable ("all topics")."""
    groups = SCHEMA.apis[15].request
    for version, null in ((0, b"\xff\xff\xff\xff"), (4, b"\xff\xff\xff\xff\x00")):
        with pytest.raises(codec.DecodeError, match="non-nullable"):
            groups.decode(null, version)
    with pytest.raises(codec.DecodeError, match="non-nullable"):
        SCHEMA.apis[15].request.decode(b"\x00\x00\x00", 5)  # flexible: compact 0 = null
    meta = SCHEMA.apis[3].request
    with pytest.raises(codec.DecodeError, match="non-nullable"):
        meta.decode(b"\xff\xff\xff\xff", 0)
    assert meta.decode(b"\xff\xff\xff\xff", 1)[0]["Topics"] is None
    assert meta.decode(b"\x00" * 5, 9)[0]["Topics"] is None  # compact null, flexible
    # an element of a nested non-nullable array: OffsetFetch v1, one topic whose PartitionIndexes is null
    of = SCHEMA.apis[9].request
    body = struct.pack(">h", 1) + b"g" + struct.pack(">i", 1) + struct.pack(">h", 2) + b"fz" + struct.pack(">i", -1)
    with pytest.raises(codec.DecodeError, match="non-nullable"):
        of.decode(body, 1)


def test_null_non_nullable_array_closes_the_connection_without_a_traceback(listener):
    """DescribeGroups with a null Groups array: the listener closes that connection (as Kafka
    does for a malformed request), logs no traceback, and keeps serving."""
    proc, port, logpath = listener
    out, _ = _exchange(port, 15, 0, 77, b"\xff\xff\xff\xff")
    assert out == "closed"
    out, _ = _exchange(port, 3, 1, 78, b"\xff\xff\xff\xff")  # a nullable null: all topics
    assert out == "response"
    _api_versions_ok(port)
    assert proc.poll() is None
    assert not _tracebacks(logpath), _tracebacks(logpath)
