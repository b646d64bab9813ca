"""Permissions: the instance's group owns its data dir, segments and admin
socket (0770/0660, nothing world-accessible); a member of the group works, a
uid outside it gets PermissionDenied; consumers map rings read-only.

Needs root (it creates a throwaway group and two users); skipped otherwise.
The children drop to those users after fork(), so the interpreter is already
loaded and needs no access to its install directory.
"""

import grp
import logging
import multiprocessing
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import traceback
import uuid

import pytest

import shmlog
import shmlog.client.consumer  # noqa: F401  (imported before fork: the users cannot read /root)
import shmlog.client.producer  # noqa: F401
from shmlog import config, errors, permissions
from shmlog.ipc import admin

pytestmark = [
    pytest.mark.root_only,
    pytest.mark.skipif(not shutil.which("useradd"), reason="needs useradd to create a throwaway user"),
]


@pytest.fixture
def users():
    tag = uuid.uuid4().hex[:6]
    group, member, outsider = f"shmlogg{tag}", f"shmlogm{tag}", f"shmlogo{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", group, member], check=True)
        subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", outsider], check=True)
        yield group, pwd.getpwnam(member), pwd.getpwnam(outsider)
    finally:
        for u in (member, outsider):
            subprocess.run(["userdel", u], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def _become(user):
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def _child(conn, user, fn, args):
    try:
        _become(user)
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def run_as(inst, user, fn, *args, timeout=60.0):
    """fn(*args) in a forked child running as user; its result comes back over a
    pipe (the child cannot write into the test's 0700 tmp dir)."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    pr = inst.process(_child, theirs, user, fn, args)
    pr.start()
    if not ours.poll(timeout):
        pytest.fail(f"{fn.__name__} as {user.pw_name} did not answer within {timeout} s")
    status, res = ours.recv()
    pr.join(10)
    if status != "ok":
        pytest.fail(f"{fn.__name__} as {user.pw_name} failed:\n{res}")
    return res


def _as_member(kwargs, ring_name):
    log = shmlog.connect(**kwargs, autostart=True)  # finds root's supervisor running
    with log.producer() as p:
        md = p.send("t", b"from the member", partition=0)
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([("t", 0, 0)])
    got = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got += c.poll_batch(10, timeout=0.1)
    with open("/proc/self/maps") as f:
        maps = [line.split()[1] for line in f if ring_name in line]
    log.create_topic("made-by-member", persistence="none", ring_bytes=1 << 16)  # via the admin socket
    c.close()
    log.close()
    return {"offset": md.offset, "values": [m.value for m in got], "maps": maps}


def _as_outsider(kwargs, sock_path):
    out = {}
    try:
        shmlog.connect(**kwargs)
        out["connect"] = "attached"
    except errors.PermissionDenied as e:
        out["connect"] = f"PermissionDenied: {e}"
    try:
        admin.Client(sock_path).call("create_topic", name="x", config={})
        out["admin"] = "accepted"
    except errors.PermissionDenied as e:
        out["admin"] = f"PermissionDenied: {e}"
    return out


@pytest.fixture
def open_dir():
    """A data-dir parent other users can traverse (pytest's tmp dirs are 0700)."""
    base = tempfile.mkdtemp(prefix="shmlog-perm-")
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _move_instance(inst, data_dir):
    inst.log.close()
    inst.drop_shared_memory()
    inst.kwargs["data_dir"] = data_dir
    inst.settings = config.resolve(inst.kwargs["instance"], data_dir, inst.prefix)


def test_group_owns_everything_member_works_outsider_refused(inst, users, open_dir):
    group, member, outsider = users
    gid = grp.getgrnam(group).gr_gid
    _move_instance(inst, os.path.join(open_dir, "data"))
    with inst.connect() as early:  # made before the supervisor, without the group
        early.create_topic("early", persistence="none", ring_bytes=1 << 16)
    inst.start_supervisor(
        config_text=f'group = "{group}"\nmetrics_port = -1\n[topics.t]\nring_bytes = 65536\nfsync = "always"\n'
    )
    inst.log = log = inst.connect()
    with log.producer() as p:
        p.send("t", b"from root", partition=0)
        p.flush(durable=True, timeout=10)
    d = inst.kwargs["data_dir"]
    st = os.stat(d)
    assert (st.st_mode & 0o7777, st.st_gid) == (0o2770, gid)
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            s = os.stat(os.path.join(root, name))
            assert s.st_mode & 0o007 == 0, f"{name} is world-accessible"
            assert s.st_gid == gid, f"{name} is not the instance group's"
    segs = [n for n in inst.segments() if ".live." not in n]
    assert any(n.endswith(".ctl") for n in segs) and any(".p0" in n for n in segs)
    for n in segs:
        s = os.stat(os.path.join("/dev/shm", n))
        assert (s.st_mode & 0o777, s.st_gid) == (0o660, gid), n
    sock = admin.socket_path(inst.settings)
    s = os.stat(sock)
    assert (s.st_mode & 0o777, s.st_gid) == (0o660, gid)
    gen = log.describe_topic("t").generation
    ring_name = inst.settings.ring_name(gen, 0).lstrip("/")

    r = run_as(inst, member, _as_member, inst.kwargs, ring_name)
    assert r["offset"] == 1 and r["values"] == [b"from root", b"from the member"]
    assert "rw-s" in r["maps"] and "r--s" in r["maps"]  # producer maps it writable, consumer read-only
    assert "made-by-member" in log.list_topics()

    r = run_as(inst, outsider, _as_outsider, inst.kwargs, sock)
    assert r["connect"].startswith("PermissionDenied") and "group" in r["connect"]
    assert r["admin"].startswith("PermissionDenied")
    assert "x" not in log.list_topics()


def _ping(path):
    try:
        admin.Client(path).call("ping", timeout=10)
        return "accepted"
    except errors.PermissionDenied as e:
        return f"PermissionDenied: {e}"


def test_admin_socket_checks_peer_credentials(inst, users, open_dir):
    """Even a socket file others can open answers only the owner, root and the group (SO_PEERCRED)."""
    group, member, outsider = users
    settings = config.resolve("peercred", os.path.join(open_dir, "d"), inst.prefix)
    os.makedirs(settings.data_dir)
    os.chmod(settings.data_dir, 0o755)
    server = admin.Server(settings, {"ping": lambda: "pong"}, grp.getgrnam(group).gr_gid)
    os.chmod(server.path, 0o666)  # only the credential check stands in the way
    stop = threading.Event()

    def serve():  # answers while the children call
        while not stop.is_set():
            if not server.serve_one(logging.getLogger("test")):
                time.sleep(0.005)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = {
            name: run_as(inst, user, _ping, server.path) for name, user in (("outsider", outsider), ("member", member))
        }
    finally:
        stop.set()
        t.join(10)
        server.close()
    assert res["outsider"].startswith("PermissionDenied") and f"uid {outsider.pw_uid}" in res["outsider"]
    assert res["member"] == "accepted"


def test_peer_credentials_of_a_socketpair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        pid, uid, gid = permissions.peer_credentials(a)
        assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
        assert permissions.peer_allowed(a, None)[0]
