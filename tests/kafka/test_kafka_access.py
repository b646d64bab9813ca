"""Kafka listener, who may connect (issue 11 defect 10): a local user the
native API refuses (not root, not the instance's owner, not in its group) is
refused by the listener too — its ApiVersions answered with
CLUSTER_AUTHORIZATION_FAILED, then the connection closed, nothing served —
unless the listener runs with allow_any_local_user. The peer's uid comes from
/proc/net/tcp{,6}. The other users are forked children that setuid() (needs
root and useradd, like tests/integration/test_permissions.py); every wait is bounded."""

import encodings.idna  # noqa: F401  (the children, as other users, cannot import it from /root)
import os
import pwd
import socket
import struct
import time

import pytest

from kafka_util import Kafka, header_v1
from kafka_util import recv_exact as _recv
from shmlog.kafka import peers
from test_permissions import run_as, users  # noqa: F401  (fixture)

needs_root = pytest.mark.root_only  # acting as other users needs root


def _as_client(port):
    """ApiVersions v0, then Metadata v1 for topic "t" (auto-creating it): what came back."""
    out = {"uid": os.getuid()}
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        req = header_v1(18, 0, 1)
        s.sendall(struct.pack(">i", len(req)) + req)
        body = _recv(s, struct.unpack(">i", _recv(s, 4))[0])
        corr, err, n = struct.unpack_from(">ihi", body)
        out["api_versions"] = (corr, err, n)
        req = header_v1(3, 1, 2) + struct.pack(">ih", 1, 1) + b"t"
        s.sendall(struct.pack(">i", len(req)) + req)
        try:
            body = _recv(s, struct.unpack(">i", _recv(s, 4))[0])
            out["metadata"] = struct.unpack_from(">i", body)[0]
        except (ConnectionError, OSError) as e:
            out["metadata"] = f"closed: {type(e).__name__}"
    finally:
        s.close()
    return out


def _give_instance_a_group(inst, gid):
    """The instance's data dir as `shmlog supervisor` with group = ... leaves it: setgid, group-owned."""
    d = inst.kwargs["data_dir"]
    os.chown(d, -1, gid)
    os.chmod(d, 0o2770)


@needs_root
def test_outsiders_are_refused_members_served(inst, users):  # noqa: F811
    group, member, outsider = users
    import grp

    _give_instance_a_group(inst, grp.getgrnam(group).gr_gid)
    k = Kafka(inst, auto_create_topics=True)
    try:
        nobody = pwd.getpwnam("nobody")
        for user in (outsider, nobody):
            got = run_as(inst, user, _as_client, k.port)
            assert got["uid"] == user.pw_uid
            assert got["api_versions"] == (1, 31, 0), got  # CLUSTER_AUTHORIZATION_FAILED, no APIs
            assert str(got["metadata"]).startswith("closed"), got
        assert k.listener.refused == 2
        assert "t" not in inst.log.list_topics()  # the refused Metadata created nothing
        got = run_as(inst, member, _as_client, k.port)  # in the instance's group: served
        assert got["api_versions"][:2] == (1, 0) and got["api_versions"][2] > 10
        assert got["metadata"] == 2
        assert "t" in inst.log.list_topics()
        assert _as_client(k.port)["metadata"] == 2  # root, the owner: served
    finally:
        k.stop()


@needs_root
def test_allow_any_local_user_serves_everyone(inst):
    k = Kafka(inst, auto_create_topics=True, allow_any_local_user=True)
    try:
        got = run_as(inst, pwd.getpwnam("nobody"), _as_client, k.port)
        assert got["api_versions"][:2] == (1, 0) and got["metadata"] == 2
        assert k.listener.refused == 0
    finally:
        k.stop()


@needs_root
def test_without_a_group_only_the_owner_and_root_are_served(inst, users):  # noqa: F811
    _, member, _ = users  # a group exists, but this instance has none
    k = Kafka(inst)
    try:
        assert run_as(inst, member, _as_client, k.port)["api_versions"][1] == 31
    finally:
        k.stop()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_peer_uid_from_proc_net_tcp(family, host):
    try:
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this host")
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname()[:2], timeout=5)
    conn, _ = srv.accept()
    try:
        assert peers.tcp_peer_uid(conn) == os.geteuid()
        assert peers.is_loopback_peer(conn)
        cli.close()  # the client's row leaves ESTABLISHED: no uid, refused on loopback
        deadline = time.monotonic() + 5
        while peers.tcp_peer_uid(conn) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peers.tcp_peer_uid(conn) is None
    finally:
        conn.close()
        srv.close()


def test_config_keys_reach_the_listener(inst, capsys):
    """[kafka] allow_any_local_user, max_queued_request_bytes and fetch_max_bytes
    are config keys the supervisor passes on; a budget below max_frame_bytes is refused."""
    from shmlog import errors
    from shmlog.service import configfile
    from shmlog.kafka import cli

    spec = configfile.KafkaSpec(
        listen="127.0.0.1:0",
        allow_any_local_user=True,
        max_queued_request_bytes=1 << 20,
        max_frame_bytes=1 << 20,
        fetch_max_bytes=4096,
    )
    opts = spec.options()
    run = cli.start(inst.log, "127.0.0.1", 0, **opts)  # what the supervisor does with [kafka]
    try:
        lst = run.listener
        assert lst.allow_any_local_user and lst.request_bytes.limit == 1 << 20
        assert lst.handlers.fetch_max_bytes == 4096
    finally:
        run.stop()
    bad = configfile.ServiceConfig(kafka=configfile.KafkaSpec(listen="127.0.0.1:0", max_queued_request_bytes=1 << 20))
    with pytest.raises(errors.InvalidConfig, match="max_queued_request_bytes"):
        configfile.validate(bad)
    rc = cli.main(
        [
            "--listen",
            "127.0.0.1:0",
            "--instance",
            inst.kwargs["instance"],
            "--data-dir",
            inst.kwargs["data_dir"],
            "--shm-prefix",
            inst.prefix,
            "--max-queued-request-bytes",
            "2048",
        ]
    )
    assert rc == 2 and "max_queued_request_bytes" in capsys.readouterr().err
