"""Running as a service: systemd notify, the config file (declared topics,
SIGHUP, errors naming the key), declared workers, and the metrics endpoint."""

import json
import os
import signal
import socket
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shmlog import errors
from shmlog.service import configfile
from shmlog.service import supervisor
from shmlog.ipc import daemons


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------ systemd notify


def test_notify_socket_gets_ready_watchdog_stopping_in_order(inst, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    sup = inst.start_supervisor(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    got = []

    def receive_until(word):
        while True:
            fields = sock.recv(4096).decode().split("\n")
            got.extend(f for f in fields if not f.startswith(("STATUS=", "MAINPID=")))
            if word in fields:
                return

    receive_until("READY=1")
    receive_until("WATCHDOG=1")
    receive_until("WATCHDOG=1")  # pings keep coming (every 100 ms)
    sup.send_signal(signal.SIGTERM)
    receive_until("STOPPING=1")
    assert sup.wait(30) == 0, inst.supervisor_output()
    sock.close()
    assert got[0] == "READY=1"
    assert got[-1] == "STOPPING=1"
    assert got.count("WATCHDOG=1") >= 2 and set(got[1:-1]) == {"WATCHDOG=1"}


def test_notify_with_abstract_socket_and_no_watchdog(inst):
    name = f"shmlog-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    sup = inst.start_supervisor(env={"NOTIFY_SOCKET": "@" + name})
    assert "READY=1" in sock.recv(4096).decode().split("\n")
    sup.send_signal(signal.SIGTERM)
    seen = []
    while "STOPPING=1" not in seen:
        seen += sock.recv(4096).decode().split("\n")
    assert "WATCHDOG=1" not in seen
    assert sup.wait(30) == 0, inst.supervisor_output()


# ------------------------------------------------------------ config file


def test_config_errors_name_the_bad_key(tmp_path):
    cases = {
        "bogus = 1\n": "bogus: unknown key",
        "[topics.orders]\npartitions = 'four'\n": "topics.orders.partitions: Expected int",
        "[topics.orders]\nretnetion_ms = 5\n": "topics.orders.retnetion_ms: unknown key",
        "[topics.orders]\nring_bytes = 1000\n": "topics.orders: ring_bytes=1000",
        "[topics.'bad/name']\n": "topics.bad/name: invalid topic name",
        "[processes.w]\nreplicas = 2\n": "processes.w: Object missing required field command",
        "[processes.w]\ncommand = 'x'\nrestart = 'sometimes'\n": "processes.w.restart: 'sometimes'",
        "[processes.w]\ncommand = []\n": "processes.w.command: empty command",
        "metrics_port = 70000\n": "metrics_port: 70000",
        "group = 'no-such-group-shmlog'\n": "group: no such group",
        "instance = 'a b'\n": "instance: invalid instance name",
        "topics = 3\n": "topics: must be a table",
        "this is not toml": "not valid TOML",
    }
    for text, want in cases.items():
        p = tmp_path / "c.toml"
        p.write_text(text)
        with pytest.raises(errors.InvalidConfig) as ei:
            configfile.load(str(p))
        assert str(ei.value).startswith(str(p) + ": ") and want in str(ei.value), (text, str(ei.value))
    with pytest.raises(errors.InvalidConfig, match="cannot read config file"):
        configfile.load(str(tmp_path / "missing.toml"))


def test_config_file_values_and_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("SHMLOG_INSTANCE", raising=False)
    p = tmp_path / "c.toml"
    p.write_text(f"""
instance = "svc"
data_dir = "{tmp_path}/d"
metrics_port = -1
[topics.orders]
partitions = 4
fsync = "always"
[processes.billing]
command = "python -m billing --fast"
replicas = 3
restart = "always"
env = {{ LEVEL = "debug" }}
""")
    cfg = configfile.load(str(p))
    s = cfg.settings()
    assert (s.instance, s.data_dir) == ("svc", f"{tmp_path}/d")
    assert cfg.settings(instance="other").instance == "other"  # arguments win
    tc = cfg.topic_configs()["orders"]
    assert (tc.partitions, tc.fsync, tc.ring_bytes) == (4, "always", 64 << 20)
    w = cfg.processes["billing"]
    assert w.argv() == ["python", "-m", "billing", "--fast"] and w.replicas == 3 and w.env == {"LEVEL": "debug"}


def test_supervisor_exits_with_one_line_for_a_bad_config(inst):
    sup = inst.start_supervisor(config_text="[topics.t]\npartitons = 2\n", wait=False)
    assert sup.wait(30) == 1
    assert "topics.t.partitons: unknown key" in inst.supervisor_output()


def test_declared_topics_created_altered_on_sighup_never_deleted(inst):
    text = """
metrics_port = -1
[topics.a]
partitions = 2
ring_bytes = 65536
retention_ms = 1000
[topics.b]
persistence = "none"
ring_bytes = 65536
"""
    sup = inst.start_supervisor(config_text=text)
    log = inst.log
    assert log.list_topics() == ["a", "b"]
    assert log.describe_topic("a").config.partitions == 2
    cfg_path = inst.tmp_path / "shmlog-0.toml"
    cfg_path.write_text("""
metrics_port = -1
[topics.a]
partitions = 3
ring_bytes = 65536
retention_ms = 9000
[topics.c]
ring_bytes = 65536
""")
    sup.send_signal(signal.SIGHUP)
    wait_for(lambda: "c" in log.list_topics(), what="topic c")
    d = wait_for(lambda: (d := log.describe_topic("a")).config.partitions == 3 and d, what="topic a altered")
    assert d.config.retention_ms == 9000 and len(d.partitions) == 3
    assert log.list_topics() == ["a", "b", "c"]  # b stays: never deleted implicitly
    # a config that cannot apply is reported, the running one kept
    cfg_path.write_text("[topics.a]\npartitions = 'x'\n")
    sup.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in inst.supervisor_output(), what="the reload error")
    assert daemons.running_pid(inst.settings) == sup.pid


# ------------------------------------------------------------ workers

WORKER = r"""
import json, os, sys, time
d = sys.argv[1]
info = {k: os.environ.get(k) for k in ("SHMLOG_INSTANCE", "SHMLOG_DATA_DIR", "SHMLOG_SHM_PREFIX",
        "SHMLOG_GROUP", "SHMLOG_GROUP_INSTANCE_ID", "SHMLOG_REPLICA", "SHMLOG_REPLICAS", "EXTRA")}
with open(os.path.join(d, f"{os.getpid()}.json"), "w") as f:
    json.dump(info, f)
mode = sys.argv[2]
if mode == "stubborn":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "fail":
    sys.exit(1)
if mode == "done":
    sys.exit(0)
time.sleep(120)
"""


def _worker_config(tmp_path, name, mode, replicas, restart, backoff_ms=200, stop_timeout_ms=5000):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"runs-{name}"
    out.mkdir()
    return (
        out,
        f"""
[processes.{name}]
command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(out))}, "{mode}"]
replicas = {replicas}
restart = "{restart}"
backoff_ms = {backoff_ms}
stop_timeout_ms = {stop_timeout_ms}
env = {{ EXTRA = "yes" }}
""",
    )


def _runs(out):
    res = {}
    for f in os.listdir(out):
        if not f.endswith(".json"):
            continue  # another writer's tmp file
        try:
            with open(out / f) as fh:
                res[int(f.split(".")[0])] = json.load(fh)
        except (ValueError, json.JSONDecodeError, FileNotFoundError):
            pass  # being written, or renamed under us
    return res


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False  # reaped between the two looks


def test_workers_start_restart_after_kill9_and_stop_on_shutdown(inst, tmp_path):
    out, text = _worker_config(tmp_path, "billing", "sleep", replicas=2, restart="always", backoff_ms=300)
    sup = inst.start_supervisor(config_text="metrics_port = -1\n" + text)
    runs = wait_for(lambda: len(r := _runs(out)) == 2 and r, what="two replicas")
    envs = list(runs.values())
    assert {e["SHMLOG_GROUP"] for e in envs} == {"billing"}  # one consumer group
    assert sorted(e["SHMLOG_GROUP_INSTANCE_ID"] for e in envs) == ["billing-0", "billing-1"]
    assert {
        (e["SHMLOG_INSTANCE"], e["SHMLOG_DATA_DIR"], e["SHMLOG_SHM_PREFIX"], e["EXTRA"], e["SHMLOG_REPLICAS"])
        for e in envs
    } == {(inst.kwargs["instance"], inst.kwargs["data_dir"], inst.prefix, "yes", "2")}
    victim = min(runs)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    runs = wait_for(lambda: len(r := _runs(out)) == 3 and r, timeout=10, what="the restart")
    assert time.monotonic() - killed_at < 5  # within its backoff (0.3 s) + slack
    live = [pid for pid in runs if pid != victim]
    assert all(_alive(pid) for pid in live)
    wait_for(
        lambda: sorted(w["restarts"] for w in daemons.read_supervisor_state(inst.settings).workers) == [0, 1],
        what="the restart in the state file",
    )
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, inst.supervisor_output()
    assert not any(_alive(pid) for pid in live)


def test_a_worker_that_ignores_sigterm_is_killed_after_its_stop_timeout(inst, tmp_path):
    out, text = _worker_config(tmp_path, "w", "stubborn", replicas=1, restart="always", stop_timeout_ms=300)
    sup = inst.start_supervisor(config_text="metrics_port = -1\n" + text)
    pid = next(iter(wait_for(lambda: _runs(out), what="the worker")))
    time.sleep(0.2)  # its SIGTERM handler is in place
    t0 = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, inst.supervisor_output()
    assert not _alive(pid) and time.monotonic() - t0 < 10
    assert "ignored SIGTERM" in inst.supervisor_output()


@pytest.mark.parametrize(
    "mode,restart,restarted",
    [("fail", "on-failure", True), ("done", "on-failure", False), ("done", "always", True), ("fail", "never", False)],
)
def test_worker_restart_policies(inst, tmp_path, mode, restart, restarted):
    out, text = _worker_config(tmp_path, "w", mode, replicas=1, restart=restart, backoff_ms=50)
    inst.start_supervisor(config_text="metrics_port = -1\n" + text)
    wait_for(lambda: _runs(out), what="the first run")
    if restarted:
        wait_for(lambda: len(_runs(out)) >= 3, what="restarts")
    else:
        time.sleep(1.0)
        assert len(_runs(out)) == 1


def test_workers_follow_a_reloaded_config(inst, tmp_path):
    out, text = _worker_config(tmp_path, "w", "sleep", replicas=1, restart="always")
    sup = inst.start_supervisor(config_text="metrics_port = -1\n" + text)
    first = wait_for(lambda: _runs(out), what="one replica")
    (inst.tmp_path / "shmlog-0.toml").write_text("metrics_port = -1\n" + text.replace("replicas = 1", "replicas = 3"))
    sup.send_signal(signal.SIGHUP)
    runs = wait_for(lambda: len(r := _runs(out)) == 4 and r, what="the spec change")  # 1 stopped, 3 new
    assert not _alive(next(iter(first)))
    (inst.tmp_path / "shmlog-0.toml").write_text("metrics_port = -1\n")
    sup.send_signal(signal.SIGHUP)
    wait_for(lambda: not any(_alive(p) for p in runs), what="all replicas stopped")


# ------------------------------------------------------------ metrics


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_endpoint_matches_the_api(inst, tmp_path):
    out, wtext = _worker_config(tmp_path, "w", "sleep", replicas=1, restart="always")
    inst.start_supervisor(config_text="metrics_port = 0\n" + wtext)
    st = daemons.read_supervisor_state(inst.settings)
    assert st.metrics_port
    log = inst.log
    log.create_topic("d", partitions=2, ring_bytes=1 << 16, fsync="never")
    log.create_topic("e", persistence="none", ring_bytes=1 << 16)
    rate_key = ("shmlog_partition_produce_records_per_second", (("partition", "0"), ("topic", "d")))
    with log.producer() as p:
        for i in range(500):
            p.send("d", b"x" * 100, partition=i % 2)
            p.send("e", b"y" * 10, partition=0)

        def producing_shows_a_rate():  # the rate is over the last 1 s sampling interval
            p.send_batch("d", [b"x" * 100] * 50, partition=0)
            time.sleep(0.05)
            return scrape(st.metrics_port).get(rate_key, 0) > 0

        wait_for(producing_shows_a_rate, what="a produce rate")
        p.flush(durable=True, timeout=10)
    m = scrape(st.metrics_port)
    for t in ("d", "e"):
        for part in log.describe_topic(t).partitions:
            lv = (("partition", str(part.partition)), ("topic", t))
            assert m[("shmlog_partition_end_offset", lv)] == part.end_offset
            assert m[("shmlog_partition_log_start_offset", lv)] == part.log_start_offset
            assert m[("shmlog_partition_ring_used_bytes", lv)] == part.ring_used_bytes
            assert m[("shmlog_partition_ring_capacity_bytes", lv)] == part.ring_bytes
            assert m[("shmlog_partition_ring_fill_ratio", lv)] == pytest.approx(part.ring_used_bytes / part.ring_bytes)
            assert m[("shmlog_partition_sealed_writes_total", lv)] == part.sealed_writes
            assert m[("shmlog_partition_produced_bytes_total", lv)] > part.end_offset * 10
    d0 = (("partition", "0"), ("topic", "d"))
    assert m[("shmlog_partition_fsynced_lag_bytes", d0)] == 0  # flushed durably above
    assert m[("shmlog_partition_persisted_lag_bytes", d0)] == 0
    assert ("shmlog_partition_persisted_lag_bytes", (("partition", "0"), ("topic", "e"))) not in m
    wait_for(lambda: _runs(out), what="the worker")
    w0 = (("process", "w"), ("replica", "0"))
    m = wait_for(lambda: (s := scrape(st.metrics_port)).get(("shmlog_worker_up", w0)) and s, what="worker up")
    assert m[("shmlog_worker_restarts_total", w0)] == 0
    assert m[("shmlog_persister_restarts_total", ())] == 0


# ------------------------------------------------------------ tools/

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")


def _member_that_never_commits(kw, ready_path):
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(
        topics=["lagged"],
        group="nocommit",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=60_000,
    )
    deadline = time.monotonic() + 20
    while len(c.assignment()) < 2 and time.monotonic() < deadline:
        c.poll(timeout=0.1)
    open(ready_path, "w").close()
    time.sleep(600)


def test_metrics_with_a_partition_that_has_no_committed_offset(inst, tmp_path):
    """Issue 12 #2: a member killed -9 before its first commit left partitions
    with no committed offset, and every scrape answered HTTP 500. Now: 200, the
    known lag is there, the unknown one has no sample (not a made-up 0) and is
    counted in shmlog_group_lag_unknown_partitions."""
    inst.log.create_topic("lagged", partitions=2, ring_bytes=1 << 16, persistence="none")
    with inst.log.producer() as p:
        for i in range(10):
            p.send("lagged", b"%d" % i, partition=i % 2)
    inst.start_supervisor(config_text="metrics_port = 0\n")
    port = daemons.read_supervisor_state(inst.settings).metrics_port
    ready = str(tmp_path / "ready")
    member = inst.process(_member_that_never_commits, inst.kwargs, ready)
    member.start()
    wait_for(lambda: os.path.exists(ready), 30, "the member to join")
    os.kill(member.pid, signal.SIGKILL)
    wait_for(lambda: not inst.log.describe_group("nocommit").members, 10, "the dead member to be reaped")
    inst.log.commit_offsets("nocommit", {("lagged", 0): 2})  # one partition committed, one never
    parts = {pl.partition: pl for pl in inst.log.describe_group("nocommit").partitions}
    assert parts[0].lag == 3 and (1 not in parts or parts[1].lag is None)
    m = scrape(port)  # raised HTTPError 500 before
    g = ("group", "nocommit")
    assert m[("shmlog_group_lag", (g, ("partition", "0"), ("topic", "lagged")))] == 3
    assert ("shmlog_group_lag", (g, ("partition", "1"), ("topic", "lagged"))) not in m
    assert m[("shmlog_group_lag_unknown_partitions", (g,))] == sum(1 for pl in parts.values() if pl.lag is None)
    assert m[("shmlog_group_members", (g,))] == 0


def test_example_config_is_valid():
    with open(os.path.join(TOOLS, "shmlog.toml")) as f:
        text = f.read()
    import grp

    try:
        grp.getgrnam("shmlog")
    except KeyError:
        text = text.replace('group = "shmlog"', "")  # the group exists where the unit runs
    cfg = configfile.parse(text, "tools/shmlog.toml")
    assert cfg.topic_configs()["orders"].partitions == 4
    assert not cfg.processes  # no worker a fresh machine lacks (it crash-looped: `python3 -m billing`)


def _shipped_config() -> str:
    with open(os.path.join(TOOLS, "shmlog.toml")) as f:
        text = f.read()
    import grp

    try:
        grp.getgrnam("shmlog")
    except KeyError:
        text = text.replace('group = "shmlog"', "")  # the install steps create it; this machine lacks it
    return text


def test_the_example_config_starts_cleanly_as_shipped(inst):
    """Issue 12 #8: the shipped config's worker crash-looped on a fresh machine."""
    proc = inst.start_supervisor(config_text=_shipped_config(), args=("--metrics-port", "0"))
    time.sleep(3)
    assert proc.poll() is None
    st = daemons.read_supervisor_state(inst.settings)
    assert st.workers == [] and st.kafka_port is None
    assert sorted(inst.log.list_topics()) == ["orders", "ticks"]
    out = inst.supervisor_output()
    assert " WARNING " not in out and " ERROR " not in out, out


def _readme_install_block() -> list[str]:
    import re

    with open(os.path.join(os.path.dirname(TOOLS), "README.md")) as f:
        m = re.search(r"\n( *)```sh\n\1(VENV=/opt/shmlog\n.*?)\1```", f.read(), re.S)
    assert m, "the README's systemd install block is missing"
    return [ln.removeprefix(m.group(1)) for ln in m.group(2).splitlines()]


@pytest.mark.slow
def test_the_readme_install_steps_and_systemd_analyze_verify(inst, tmp_path):
    """Issue 12 #8: the README's install commands, run word for word into a
    scratch root (paths under /etc, /opt and /usr/share prefixed with it; no
    sudo; the user, group and systemctl lines, which change this machine, are
    not run), then `systemd-analyze verify` of the installed unit, whose
    ExecStart must be the installed console script."""
    import shutil
    import subprocess
    from test_quickstart import _fresh_clone

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (tools/test-deps installs the systemd package)")
    clone = _fresh_clone(str(tmp_path))
    root = str(tmp_path / "root")
    skipped = []
    script = ["set -euo pipefail"]
    for line in _readme_install_block():
        if any(w in line for w in ("groupadd", "useradd", "systemctl")):
            skipped.append(line)
            continue
        line = line.replace("sudo ", "")
        if line.startswith("VENV="):
            line = f"VENV={root}/opt/shmlog"
        line = line.replace("python3 -m venv", f"{sys.executable} -m venv --system-site-packages")
        line = line.replace("pip install .", "pip install -q --no-deps .")  # dependencies from the system site
        for d in ("/etc/", "/usr/share/doc/"):
            line = line.replace(f" {d}", f" {root}{d}")
        script.append(line)
    assert len(skipped) == 2 and len(script) == 6, script
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=clone, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    unit = os.path.join(root, "etc/systemd/system/shmlog.service")
    with open(unit) as f:
        keys = dict(ln.strip().partition("=")[::2] for ln in f if "=" in ln and not ln.startswith("#"))
    exe = keys["ExecStart"].split()[0]
    assert exe == f"{root}/opt/shmlog/bin/shmlog" and os.access(exe, os.X_OK)
    doc = keys["Documentation"].removeprefix("file://")
    assert os.path.isfile(root + doc), f"Documentation={keys['Documentation']} is not installed"
    assert os.path.isfile(os.path.join(root, "etc/shmlog/shmlog.toml"))
    r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert int(keys["TimeoutStartSec"]) >= 30
    # the installed entry point runs the supervisor (its --help, without systemd)
    r = subprocess.run([exe, "supervisor", "--help"], cwd="/", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--config" in r.stdout, r.stderr


def test_the_start_timeout_is_extended_while_a_restore_moves(tmp_path, monkeypatch):
    """Issue 12 #8: while start() runs, the supervisor's StartupProgress turns
    the restore's progress file (<data_dir>/recovery.json, written by the
    restore) into EXTEND_TIMEOUT_USEC for systemd and "recovering" lines on the
    launcher's status pipe; once the restore stops moving for the grace time,
    the extensions stop, so a hung start still times out."""
    from shmlog import storage
    from shmlog.ipc import launch

    nsock_path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(nsock_path)
    ns.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", nsock_path)
    monkeypatch.setattr(launch, "PROGRESS_GRACE_S", 1.5)
    monkeypatch.setattr(supervisor.StartupProgress, "EVERY_S", 0.1)
    r, w = os.pipe()
    data = tmp_path / "data"
    data.mkdir()

    def progress(done):
        storage.write_atomically(
            str(data / "recovery.json"),
            json.dumps({"pid": os.getpid(), "done": done, "total": 10, "topic": "t", "partition": done}).encode(),
        )

    def drain():
        out = []
        try:
            while True:
                out.append(ns.recv(4096))
        except socket.timeout:
            return out

    status = launch.StatusPipe(w)
    with supervisor.StartupProgress(str(data), status):
        for done in range(4):
            progress(done)
            time.sleep(0.3)
        moving = drain()
        time.sleep(2.5)  # the restore stopped moving: past the grace time
        drain()
        time.sleep(0.5)
        stalled = drain()
    status.close()
    with os.fdopen(r, "rb") as f:
        lines = [json.loads(ln) for ln in f.read().splitlines()]
    ns.close()
    extends = [m for m in moving if m.startswith(b"EXTEND_TIMEOUT_USEC=")]
    assert extends and all(int(m.split(b"\n")[0].split(b"=")[1]) == 30_000_000 for m in extends), moving
    assert not [m for m in stalled if m.startswith(b"EXTEND_TIMEOUT_USEC=")], stalled
    assert [ln["done"] for ln in lines if ln["state"] == "recovering"] == [0, 1, 2, 3]


def test_systemd_unit_has_what_the_service_needs():
    path = os.path.join(TOOLS, "shmlog.service")
    with open(path) as f:
        keys = {}
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, _, v = line.strip().partition("=")
                keys[k] = v
    assert keys["Type"] == "notify" and keys["RemoveIPC"] == "no"
    assert keys["StateDirectory"] and keys["User"] and keys["Group"] and int(keys["WatchdogSec"]) > 1
    assert "supervisor" in keys["ExecStart"] and keys["ExecReload"].endswith("-HUP $MAINPID")
    import shutil
    import subprocess

    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
        assert "Unknown key" not in r.stderr and "Unknown section" not in r.stderr, r.stderr


# ------------------------------------------------------------ consumer groups

GROUP_WORKER = r"""
import json, os, sys, time
import shmlog
out = sys.argv[1]
log = shmlog.connect()                  # SHMLOG_INSTANCE / SHMLOG_DATA_DIR / SHMLOG_SHM_PREFIX from the supervisor
c = log.consumer(group=os.environ["SHMLOG_GROUP"], topics=["t"], auto_offset_reset="earliest",
                 group_instance_id=os.environ["SHMLOG_GROUP_INSTANCE_ID"], session_timeout_ms=3000,
                 heartbeat_interval_ms=100)
seen = 0
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    seen += len(c.poll_batch(1000, timeout=0.05))
    c.commit()
    tmp = os.path.join(out, f"{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({"assignment": sorted(list(tp) for tp in c.assignment()), "seen": seen,
                   "replica": os.environ["SHMLOG_REPLICA"]}, f)
    os.replace(tmp, os.path.join(out, f"{os.getpid()}.json"))
"""


def test_worker_replicas_share_partitions_as_one_group(inst, tmp_path):
    script = tmp_path / "group_worker.py"
    script.write_text(GROUP_WORKER)
    out = tmp_path / "runs"
    out.mkdir()
    text = f"""
metrics_port = 0
[topics.t]
partitions = 4
ring_bytes = 65536
persistence = "none"
[processes.billing]
command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(out))}]
replicas = 2
restart = "always"
backoff_ms = 100
"""
    inst.start_supervisor(config_text=text)
    with inst.log.producer() as p:
        for i in range(400):
            p.send("t", b"r%d" % i, partition=i % 4)

    def split_evenly():
        runs = [r for r in _runs(out).values() if r["assignment"]]
        parts = [tuple(map(tuple, r["assignment"])) for r in runs]
        owned = [tp for a in parts for tp in a]
        return (
            len(runs) == 2
            and sorted(owned) == [("t", p) for p in range(4)]
            and all(len(a) == 2 for a in parts)
            and sum(r["seen"] for r in runs) == 400
            and runs
        )

    wait_for(split_evenly, timeout=60, what="two replicas splitting four partitions and reading all")
    d = inst.log.describe_group("billing")
    assert len(d.members) == 2
    # kill -9 of one replica: the supervisor reaps it from the group and restarts it; the new
    # process (same group_instance_id) gets partitions again
    victim = next(pid for pid, r in _runs(out).items() if r["assignment"])
    os.kill(victim, signal.SIGKILL)

    def rebalanced_with_the_restarted_replica():
        live = {pid: r for pid, r in _runs(out).items() if pid != victim and _alive(pid) and r["assignment"]}
        owned = sorted(tuple(tp) for r in live.values() for tp in r["assignment"])
        return len(live) == 2 and owned == [("t", p) for p in range(4)]

    wait_for(rebalanced_with_the_restarted_replica, timeout=30, what="the group to take the restarted replica in")
    d = inst.log.describe_group("billing")
    assert len(d.members) == 2 and victim not in [m.pid for m in d.members]
    port = daemons.read_supervisor_state(inst.settings).metrics_port
    m = wait_for(
        lambda: (s := scrape(port)).get(("shmlog_group_members", (("group", "billing"),))) == 2 and s,
        what="group metrics",
    )
    assert (
        m[("shmlog_group_rebalances_total", (("group", "billing"),))] == inst.log.describe_group("billing").rebalances
    )

    def lag_matches_the_api():  # both settle at 0 once every record is committed
        s = scrape(port)
        parts = inst.log.describe_group("billing").partitions
        return len(parts) == 4 and all(
            s.get(("shmlog_group_lag", (("group", "billing"), ("partition", str(pl.partition)), ("topic", pl.topic))))
            == pl.lag
            == 0
            and s.get(
                (
                    "shmlog_group_committed_offset",
                    (("group", "billing"), ("partition", str(pl.partition)), ("topic", pl.topic)),
                )
            )
            == pl.committed
            == 100
            for pl in parts
        )

    wait_for(lag_matches_the_api, timeout=30, what="group lag and committed offsets in the metrics")
