"""test_fuzz_admin.py — the supervisor's admin socket under malformed, oversized, slow and ill-typed requests.

Owns: talking to a real supervisor's admin socket (SOCK_SEQPACKET, msgpack)
the way a confused or hostile local client would, and asserting that every
request gets an error reply naming a shmlog error (never "the supervisor
failed", which is a foreign exception caught at the top), within a time
limit, and that the supervisor keeps serving afterwards.
Must never: send "shutdown" (a well-formed one legitimately stops it).
"""

import socket
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shmlog import errors
from shmlog.ipc import admin

REPLY_S = 10.0
OPS = ["ping", "status", "create_topic", "delete_topic", "alter_topic", "ensure_persister", "reload"]
ARG_NAMES = ["name", "config", "changes", "partitions", "ring_bytes", "persistence", "fsync", "x", ""]
CONFIG_KEYS = [
    "partitions",
    "ring_bytes",
    "persistence",
    "fsync",
    "retention_ms",
    "retention_bytes",
    "segment_bytes",
    "segment_ms",
    "max_message_bytes",
    "bogus",
]

weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**40, 2**63 - 1, 2**64 - 1]),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
)
config_like = st.dictionaries(st.sampled_from(CONFIG_KEYS), weird, max_size=4)
requests_ = st.fixed_dictionaries(
    {
        "op": st.one_of(st.sampled_from(OPS), weird),
        "args": st.one_of(
            st.dictionaries(st.sampled_from(ARG_NAMES), st.one_of(weird, config_like), max_size=3), weird
        ),
    }
)


def _call_raw(path, data: bytes, timeout=REPLY_S):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if len(data) > 100_000:
        s.setsockopt(socket.SOL_SOCKET, 32, 4 * len(data))  # SO_SNDBUFFORCE (root): one message this big
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(data)
        t0 = time.monotonic()
        rep = s.recv(admin.MAX_MESSAGE)
        return rep, time.monotonic() - t0
    finally:
        s.close()


def _check_reply(rep: bytes, what):
    assert rep, f"the supervisor closed the socket without a reply to {what!r}"
    r = msgspec.msgpack.decode(rep, type=admin.Reply)
    if not r.ok:
        cls = getattr(errors, r.error or "", None)
        assert isinstance(cls, type) and issubclass(cls, errors.ShmlogError), (what, r)
    return r


@pytest.fixture
def sup(inst):
    inst.start_supervisor()
    inst.log.create_topic("keep", partitions=1, ring_bytes=1 << 16)
    with inst.log.producer() as p:
        p.send("keep", b"v")
        p.flush(durable=True)
    return inst, admin.socket_path(inst.settings)


def _still_serving(inst, path):
    r = _check_reply(_call_raw(path, msgspec.msgpack.encode({"op": "ping", "args": {}}))[0], "ping")
    assert r.ok
    assert "keep" in inst.log.list_topics()
    assert inst.log.describe_topic("keep").partitions[0].end_offset == 1


FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def test_random_bytes_get_an_error_reply(sup):
    inst, path = sup
    slow = []

    @FUZZ
    @given(st.binary(max_size=300))
    def run(data):
        if not data:
            data = b"\x00"
        rep, dt = _call_raw(path, data)
        _check_reply(rep, data)
        slow.append(dt)

    run()
    assert max(slow) < REPLY_S
    _still_serving(inst, path)


def test_ill_typed_requests_get_a_named_error(sup):
    inst, path = sup
    foreign = []

    @FUZZ
    @given(requests_)
    def run(req):
        if req["op"] == "shutdown":
            return
        try:
            data = msgspec.msgpack.encode(req)
        except (OverflowError, TypeError):
            return
        r = _check_reply(_call_raw(path, data)[0], req)
        if not r.ok and r.error == "SupervisorError":
            foreign.append((req, r.message))
        if r.ok and req["op"] == "create_topic" and isinstance(req["args"], dict):
            name = req["args"].get("name")
            if isinstance(name, str) and name != "keep":
                inst.log.delete_topic(name)

    run()
    _still_serving(inst, path)
    assert not foreign, foreign[:5]


def test_oversized_request_is_refused_and_the_supervisor_goes_on(sup):
    inst, path = sup
    big = msgspec.msgpack.encode(
        {"op": "create_topic", "args": {"name": "x" * (admin.MAX_MESSAGE + 4096), "config": {}}}
    )
    try:
        rep, dt = _call_raw(path, big)
    except OSError as e:  # not root: the kernel refuses a message this big (EMSGSIZE)
        pytest.skip(f"cannot send a message larger than the admin socket's limit here: {e}")
    r = _check_reply(rep, "request past MAX_MESSAGE")
    assert not r.ok and dt < REPLY_S
    _still_serving(inst, path)


def test_a_client_that_never_sends_does_not_hold_the_supervisor(sup):
    """One silent client: the supervisor answers others at once (per-client deadline)."""
    inst, path = sup
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(path)
    try:
        t0 = time.monotonic()
        _still_serving(inst, path)
        assert time.monotonic() - t0 < 2.0
    finally:
        silent.close()


def test_eight_silent_clients_do_not_stall_the_supervisor(sup):
    inst, path = sup
    silent = []
    try:
        for _ in range(8):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            silent.append(s)
        t0 = time.monotonic()
        _still_serving(inst, path)
        assert time.monotonic() - t0 < 2.0, f"ping answered after {time.monotonic() - t0:.1f} s"
    finally:
        for s in silent:
            s.close()
