"""The supervisor: start, clean stop, restart, kill -9 and adoption, sealing,
one supervisor per instance, routing of topic changes, autostart, alter_topic."""

import os
import signal
import time

import pytest

import shmlog
from shmlog import errors
from shmlog.ipc import admin
from shmlog.service import persister
from shmlog.service import supervisor
from shmlog._native import lib
from shmlog.ipc import daemons


def value(i: int) -> bytes:
    return b"v%08d" % i


def read_all(log, topic, timeout=10.0):
    n = log.describe_topic(topic).config.partitions
    ends = [p.end_offset for p in log.describe_topic(topic).partitions]
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, p, 0) for p in range(n)])
    got = []
    deadline = time.monotonic() + timeout
    while any(c.position(topic, p) < ends[p] for p in range(n)) and time.monotonic() < deadline:
        got += c.poll_batch(10_000, timeout=0.1)
    c.close()
    return got


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_clean_stop_loses_nothing_and_restart_continues_offsets(inst):
    sup = inst.start_supervisor()
    log = inst.log
    log.create_topic("d", partitions=3, ring_bytes=1 << 16, fsync="never")  # through the supervisor
    assert admin.client(inst.settings) is not None
    p = log.producer()
    for i in range(3000):
        p.send("d", value(i), key=b"k%d" % i)  # no durable flush: the clean stop must do it
    before = [x.end_offset for x in log.describe_topic("d").partitions]
    assert sum(before) == 3000
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(60) == 0, inst.supervisor_output()
    st = daemons.read_supervisor_state(inst.settings)
    assert st.clean and st.stopped_ms
    assert not daemons.persister_running(inst.kwargs["data_dir"])
    p.close()
    log.close()
    inst.drop_shared_memory()  # a reboot: only the data dir is left
    sup2 = inst.start_supervisor()  # recovers the instance from disk
    inst.log = log = inst.connect()
    assert log.list_topics() == ["d"]
    assert [x.end_offset for x in log.describe_topic("d").partitions] == before
    got = read_all(log, "d")
    assert sorted(m.value for m in got) == sorted(value(i) for i in range(3000))
    with log.producer() as p:
        for part in range(3):
            assert p.send("d", b"after", partition=part).offset == before[part]
    sup2.send_signal(signal.SIGTERM)
    assert sup2.wait(60) == 0, inst.supervisor_output()


def test_kill9_of_the_supervisor_leaves_clients_working_and_a_new_one_adopts(inst):
    sup = inst.start_supervisor()
    log = inst.log
    log.create_topic("t", partitions=1, ring_bytes=1 << 16)  # durable, 64 KiB: needs the persister
    p = log.producer(max_block_ms=15_000)
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([("t", 0, 0)])
    p.send("t", value(0), partition=0)
    sup.kill()
    sup.wait(10)
    assert admin.client(inst.settings) is None
    n = 5000  # ~10 laps of the ring
    for i in range(1, n):
        p.send("t", value(i), partition=0)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(10_000, timeout=0.1)
    assert [m.value for m in got] == [value(i) for i in range(n)]
    sup2 = inst.start_supervisor()  # adopts: no restore, the same topics and offsets
    assert log.describe_topic("t").partitions[0].end_offset == n
    log.create_topic("u", persistence="none", ring_bytes=1 << 16)
    assert sorted(log.list_topics()) == ["t", "u"]
    p.send("t", b"more", partition=0)
    p.flush(durable=True, timeout=10)
    c.close()
    p.close()
    sup2.send_signal(signal.SIGTERM)
    assert sup2.wait(60) == 0, inst.supervisor_output()


def test_a_second_supervisor_is_refused(inst):
    first = inst.start_supervisor()
    second = inst.start_supervisor(wait=False)
    assert second.wait(30) == supervisor.EXIT_ALREADY_RUNNING
    assert "another supervisor" in inst.supervisor_output()
    assert daemons.running_pid(inst.settings) == first.pid


def test_the_supervisor_restarts_a_dead_persister(inst):
    inst.start_supervisor()
    inst.log.create_topic("t", ring_bytes=1 << 16)
    d = inst.kwargs["data_dir"]
    old = daemons.persister_pid(d)
    assert daemons.persister_running(d)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: daemons.persister_running(d) and daemons.persister_pid(d) != old, what="a new persister")
    assert admin.client(inst.settings).call("status")["persister_restarts"] == 1


def _die_mid_write(kwargs, topic):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    p.send(topic, b"committed", partition=0)
    lib.shm_test_set_hold_ns(60_000_000_000)  # the next write stays reserved, uncommitted
    p.send(topic, b"never", partition=0)


def test_the_supervisor_seals_a_dead_producers_write_without_any_reader(inst):
    inst.log.create_topic("t", persistence="none", ring_bytes=1 << 16)
    inst.start_supervisor()
    child = inst.process(_die_mid_write, inst.kwargs, "t")
    child.start()
    wait_for(lambda: inst.log.describe_topic("t").partitions[0].end_offset == 2, what="the reservation")
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    wait_for(lambda: inst.log.describe_topic("t").partitions[0].sealed_writes == 1, what="the seal")
    with inst.log.producer() as p:
        assert p.send("t", b"after", partition=0).offset == 2
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("t", 0, 0)])
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += c.poll_batch(10, timeout=0.1)
    assert [(m.offset, m.value) for m in got] == [(0, b"committed"), (2, b"after")]


def test_autostart_starts_one_background_supervisor_and_down_stops_it(inst):
    a = inst.connect(autostart=True)
    pid = daemons.running_pid(inst.settings)
    assert pid is not None
    b = inst.connect(autostart=True)
    assert daemons.running_pid(inst.settings) == pid  # reused, not a second one
    a.create_topic("x", ring_bytes=1 << 16)
    assert b.list_topics() == ["x"]
    with b.producer() as p:
        p.send("x", b"1")
        p.flush(durable=True, timeout=10)
    a.close()
    b.close()
    assert daemons.down(inst.settings)
    assert daemons.running_pid(inst.settings) is None
    assert daemons.read_supervisor_state(inst.settings).clean
    assert not daemons.down(inst.settings)  # nothing left to stop


def test_up_reports_a_supervisor_that_cannot_start(inst, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("metrics_port = 'x'\n")
    with pytest.raises(errors.InvalidConfig, match="metrics_port"):  # the supervisor's own error, at once
        daemons.up(inst.settings, config_path=str(bad), timeout=20)


def test_topic_errors_cross_the_admin_socket(inst):
    inst.start_supervisor()
    inst.log.create_topic("t", persistence="none", ring_bytes=1 << 16)
    with pytest.raises(errors.TopicExists):
        inst.log.create_topic("t", persistence="none", ring_bytes=1 << 16)
    with pytest.raises(errors.UnknownTopicOrPartition):
        inst.log.delete_topic("nope")
    with pytest.raises(errors.InvalidArgument, match="ring_bytes"):
        inst.log.alter_topic("t", ring_bytes=1 << 17)
    inst.log.delete_topic("t")
    assert inst.log.list_topics() == []


@pytest.mark.parametrize("with_supervisor", [False, True])
def test_alter_topic(inst, with_supervisor):
    if with_supervisor:
        inst.start_supervisor()
    log = inst.log
    log.create_topic("t", partitions=2, ring_bytes=1 << 16, retention_ms=1000)
    with log.producer() as p:
        p.send("t", b"a", partition=1)
    d = log.alter_topic("t", partitions=4, retention_ms=5000, fsync="always", max_message_bytes=4096)
    assert d.config.partitions == 4 and len(d.partitions) == 4
    assert (d.config.retention_ms, d.config.fsync, d.config.max_message_bytes) == (5000, "always", 4096)
    with inst.connect() as other:  # another connection sees the new config
        assert other.describe_topic("t").config.partitions == 4
        with other.producer() as p:
            assert p.send("t", b"new", partition=3).offset == 0
            assert p.send("t", b"b", partition=1).offset == 1
            with pytest.raises(errors.RecordTooLarge):
                p.send("t", b"x" * 8000, partition=0)
            p.flush(durable=True, timeout=10)
    assert sorted(m.value for m in read_all(log, "t")) == [b"a", b"b", b"new"]
    with pytest.raises(errors.InvalidArgument, match="only grow"):
        log.alter_topic("t", partitions=3)
    with pytest.raises(errors.InvalidArgument, match="persistence"):
        log.alter_topic("t", persistence="none")
    with pytest.raises(errors.UnknownTopicOrPartition):
        log.alter_topic("nope", retention_ms=1)
    # the change is on disk too: a reboot keeps it
    inst.stop_supervisor()
    log.stop_persister()
    log.close()
    inst.drop_shared_memory()
    inst.log = inst.connect()
    d = inst.log.describe_topic("t")
    assert (d.config.partitions, d.config.retention_ms, d.config.fsync) == (4, 5000, "always")
    assert [x.end_offset for x in d.partitions] == [0, 2, 0, 1]


def test_the_supervisor_restores_an_instance_whose_shared_memory_vanished(inst):
    inst.start_supervisor()
    inst.log.create_topic("d", partitions=2, ring_bytes=1 << 16)
    with inst.log.producer() as p:
        for i in range(300):
            p.send("d", value(i), partition=i % 2)
        p.flush(durable=True, timeout=10)
    old_persister = daemons.persister_pid(inst.kwargs["data_dir"])
    inst.log.close()
    inst.drop_shared_memory()  # under the running supervisor
    ctl = "/dev/shm" + inst.settings.ctl_name
    wait_for(lambda: os.path.exists(ctl), what="the supervisor to restore the instance")
    wait_for(
        lambda: (
            daemons.persister_running(inst.kwargs["data_dir"])
            and daemons.persister_pid(inst.kwargs["data_dir"]) != old_persister
        ),
        what="a new persister",
    )
    inst.log = log = inst.connect()
    assert [x.end_offset for x in log.describe_topic("d").partitions] == [150, 150]
    with log.producer(max_block_ms=10_000) as p:
        for i in range(300, 3000):  # laps the 64 KiB rings: the new persister works
            p.send("d", value(i), partition=i % 2)
        p.flush(durable=True, timeout=10)
    assert sorted(m.value for m in read_all(log, "d")) == [value(i) for i in range(3000)]


def test_destroy_stops_the_supervisor_first(inst):
    sup = inst.start_supervisor()
    inst.log.create_topic("t", ring_bytes=1 << 16)
    inst.log.destroy()
    assert sup.wait(30) == 0, inst.supervisor_output()
    assert inst.segments() == [] or all(".live." in n for n in inst.segments())
    assert not os.path.exists(inst.kwargs["data_dir"] + "/topics/t")


def test_down_purge_removes_shared_memory_and_the_next_start_restores(inst):
    inst.start_supervisor()
    inst.log.create_topic("d", ring_bytes=1 << 16)
    inst.log.create_topic("e", persistence="none", ring_bytes=1 << 16)
    with inst.log.producer() as p:
        p.send("d", b"kept")
        p.send("e", b"lost")
    st = admin.client(inst.settings).call("status")
    assert st["topics"] == ["d", "e"] and st["persister_pid"] == daemons.persister_pid(inst.kwargs["data_dir"])
    inst.log.close()
    assert daemons.down(inst.settings, purge=True)
    assert [n for n in inst.segments() if ".live." not in n] == []
    assert not daemons.persister_running(inst.kwargs["data_dir"])
    inst.log = inst.connect(autostart=True)
    assert inst.log.list_topics() == ["d", "e"]  # configs come back from the catalog,
    assert [m.value for m in read_all(inst.log, "d")] == [b"kept"]
    assert inst.log.describe_topic("e").partitions[0].end_offset == 0  # ephemeral records do not


def test_a_group_follows_a_partition_increase(inst):
    inst.start_supervisor()
    inst.log.create_topic("t", partitions=2, persistence="none", ring_bytes=1 << 16)
    c = inst.log.consumer(group="g", topics=["t"], auto_offset_reset="earliest", heartbeat_interval_ms=50)
    wait_for(lambda: c.poll(timeout=0.05) is None and len(c.assignment()) == 2, what="the first assignment")
    inst.log.alter_topic("t", partitions=4)
    with inst.log.producer() as p:
        p.send("t", b"in the new partition", partition=3)
    got = []

    def new_partition_read():
        m = c.poll(timeout=0.05)
        if m is not None:
            got.append(m)
        return len(c.assignment()) == 4 and got

    wait_for(new_partition_read, what="the new partitions in the assignment")
    assert [(m.partition, m.value) for m in got] == [(3, b"in the new partition")]
    c.close()


def test_the_supervisor_runs_the_kafka_listener(inst):
    """`--kafka-listen` (or [kafka] listen): the supervisor serves Kafka clients; their
    topic changes reach it through the admin socket; SIGTERM stops the listener too."""
    kafka = pytest.importorskip("kafka")
    import socket

    sup = inst.start_supervisor(args=("--kafka-listen", "127.0.0.1:0"))
    port = daemons.read_supervisor_state(inst.settings).kafka_port
    assert port
    admin_client = kafka.KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=10000)
    admin_client.create_topics([kafka.admin.NewTopic("kt", 2, 1)])
    admin_client.close()
    assert "kt" in inst.log.list_topics()
    prod = kafka.KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=10000)
    for i in range(10):
        prod.send("kt", value(i), partition=i % 2)
    prod.flush(10)
    prod.close()
    got = read_all(inst.log, "kt")
    assert sorted(m.value for m in got) == [value(i) for i in range(10)]
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_kafka_listen_in_the_config_is_checked():
    from shmlog.service import configfile

    with pytest.raises(errors.InvalidConfig, match="kafka.listen"):
        configfile.parse('[kafka]\nlisten = "192.0.2.1:9092"\n')
    with pytest.raises(errors.InvalidConfig, match="kafka.listen"):
        configfile.parse('[kafka]\nlisten = "nonsense"\n')
    with pytest.raises(errors.InvalidConfig, match="kafka"):
        configfile.parse('[kafka]\nlisten = "127.0.0.1:9092"\nmax_connections = 0\n')
    assert configfile.parse('[kafka]\nlisten = "127.0.0.1:9092"\n').kafka.listen == "127.0.0.1:9092"


def _group_member(kw, topic, group, ready_path):
    log = shmlog.connect(**kw)
    c = log.consumer(topics=[topic], group=group, auto_offset_reset="earliest", session_timeout_ms=60_000)
    deadline = time.monotonic() + 20
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(timeout=0.1)
    open(ready_path, "w").close()
    time.sleep(600)


def test_silent_admin_clients_never_stall_the_supervisor_loop(inst, tmp_path):
    """Issue 11 #13: 20 clients connect to the admin socket and say nothing.
    The loop still ticks: the watchdog keeps its 100 ms period, a group member
    killed -9 is reaped by the supervisor (no other member is left to notice),
    and another client's ping is answered at once."""
    import socket as so

    nsock_path = str(tmp_path / "notify.sock")
    ns = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    ns.bind(nsock_path)
    ns.settimeout(0.05)
    inst.log.create_topic("g", partitions=2, ring_bytes=1 << 16, persistence="none")
    proc = inst.start_supervisor(env={"NOTIFY_SOCKET": nsock_path, "WATCHDOG_USEC": "200000"})
    ready = str(tmp_path / "member.ready")
    member = inst.process(_group_member, inst.kwargs, "g", "grp", ready)
    member.start()
    wait_for(lambda: os.path.exists(ready), 30, "the member to join")
    assert len(inst.log.describe_group("grp").members) == 1

    silent = []
    for _ in range(20):
        s = so.socket(so.AF_UNIX, so.SOCK_SEQPACKET)
        s.connect(admin.socket_path(inst.settings))
        silent.append(s)
    os.kill(member.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    beats, pings, reaped_at = [], [], None
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        try:
            while True:
                if ns.recv(4096).startswith(b"WATCHDOG=1"):
                    beats.append(time.monotonic())
        except so.timeout:
            pass
        if reaped_at is None and not inst.log.describe_group("grp").members:
            reaped_at = time.monotonic()
        t0 = time.monotonic()
        try:
            admin.Client(admin.socket_path(inst.settings)).call("ping", timeout=5)
            pings.append(time.monotonic() - t0)
        except errors.Timeout as e:  # "busy" is an answer too, and must come at once
            assert "busy" in str(e)
            pings.append(time.monotonic() - t0)
    for s in silent:
        s.close()
    assert proc.poll() is None
    assert len(beats) >= 10, f"only {len(beats)} watchdog pings in 3 s (period 0.1 s)"
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) < 1.0, f"the watchdog stalled for {max(gaps):.2f} s"
    assert reaped_at is not None and reaped_at - t_kill < 2.0, "the dead member was not reaped by the supervisor"
    assert max(pings) < 1.0, f"a ping took {max(pings):.2f} s"
    ns.close()
