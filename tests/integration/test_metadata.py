"""test_metadata.py — topic metadata under crashes: the commit order (issue
11.3), topic generations on disk (11.4), failed restores, stray files and a
damaged catalog (11.14), one data dir per instance (12.4), read-only
commands without side effects (12.7).

Crash tests stop a real supervisor (SIGSTOP from a hook installed around
catalog.save or a control-segment call, counted per call) between two
steps of a topic change, kill -9 it there, let a new supervisor attach,
acknowledge records (flush(durable=True)), reboot (kill -9 everything,
drop the instance's /dev/shm entries) and check what came back.
"""

import errno
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import shmlog
from shmlog import errors, storage
from shmlog.control import catalog
from shmlog.service import persister
from shmlog.service import supervisor as _supervisor
from shmlog.ipc import daemons

# Runs `shmlog supervisor` with SHMLOG_TEST_FAULT=before|after:<what>:<n>: the
# process SIGSTOPs itself before/after the n-th call of <what> (catalog.save,
# or a lib function control/plane.py calls), for the test to kill -9 it there.
FAULT_RUNNER = r"""
import os, signal, sys
from shmlog.control import catalog
from shmlog.control import plane
from shmlog.service import supervisor
when, what, nth = os.environ["SHMLOG_TEST_FAULT"].split(":")
nth, calls = int(nth), [0]

def wrap(fn):
    def hooked(*a, **kw):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGSTOP)
        r = fn(*a, **kw)
        if calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGSTOP)
        return r
    return hooked

if what == "save":
    catalog.save = wrap(catalog.save)
else:
    real = plane.lib
    class Lib:
        def __getattr__(self, n):
            v = getattr(real, n)
            return wrap(v) if n == what else v
    plane.lib = Lib()
sys.exit(supervisor.main(sys.argv[1:]))
"""


def _cli(inst, *args, env=None, timeout=60):
    e = dict(
        os.environ,
        SHMLOG_INSTANCE=inst.kwargs["instance"],
        SHMLOG_DATA_DIR=inst.kwargs["data_dir"],
        SHMLOG_SHM_PREFIX=inst.prefix,
    )
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "shmlog", *args], capture_output=True, env=e, timeout=timeout)


def _start_faulty_supervisor(inst, fault):
    cmd = [
        sys.executable,
        "-c",
        FAULT_RUNNER,
        "--instance",
        inst.kwargs["instance"],
        "--data-dir",
        inst.kwargs["data_dir"],
        "--shm-prefix",
        inst.prefix,
    ]
    out = open(inst.tmp_path / "supervisor.out", "ab")
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "SHMLOG_TEST_FAULT": fault},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    inst.supervisors.append(proc)
    deadline = time.monotonic() + 30
    while daemons.running_pid(inst.settings) != proc.pid:
        assert proc.poll() is None, inst.supervisor_output()
        assert time.monotonic() < deadline, inst.supervisor_output()
        time.sleep(0.02)
    return proc


def _produce(log, topic, tag, n=200, partition=0):
    """n records acknowledged durable: {offset: value}."""
    p = log.producer()
    acked = {p.send(topic, b"%s:%d" % (tag, i), partition=partition).offset: b"%s:%d" % (tag, i) for i in range(n)}
    p.flush(durable=True, timeout=20)
    p.close()
    return acked


def _read(log, topic, partition=0):
    """{offset: value} of every record below the end offset at the call (a live producer goes on)."""
    end = log.describe_topic(topic).partitions[partition].end_offset
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, partition, 0)])
    out = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        b = c.poll_batch(10_000, timeout=0.5)
        out.update((m.offset, m.value) for m in b if m.offset < end)
        if not b or b[-1].offset >= end - 1:
            break
    c.close()
    return out


def _reboot(inst, *procs):
    """kill -9 of every daemon of the instance, then what a reboot does to /dev/shm."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
    inst.kill_persister()
    try:
        inst.log.close()
    except Exception:
        pass
    inst.drop_shared_memory()


def _durable(log, name, **kw):
    log.create_topic(name, **{"persistence": "disk", "ring_bytes": 1 << 16, "segment_bytes": 1 << 16, **kw})


OPS = {
    "create": (["topic", "create", "t", "--persistence", "disk", "--ring-bytes", "65536"], "shm_ctl_topic_publish"),
    "alter": (["topic", "alter", "t", "--partitions", "2"], "shm_ctl_topic_update"),
    "delete": (["topic", "delete", "t"], "shm_ctl_topic_free"),
}
POINTS = ["before:save:1", "after:save:1", "after:{ctl}:1", "before:save:2"]


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_kill9_of_the_supervisor_at_every_step_of_a_topic_change_loses_nothing(inst, op, point):
    """Issue 11.3: whatever step the supervisor dies at, the next supervisor
    and the next reboot agree on the topic, acknowledged records survive, a
    deleted topic never comes back."""
    _durable(inst.log, "keep")
    acked = {"keep": _produce(inst.log, "keep", b"k")}
    if op != "create":
        _durable(inst.log, "t")
        acked["t"] = _produce(inst.log, "t", b"before")
    inst.log.close()
    args, ctl_call = OPS[op]
    s1 = _start_faulty_supervisor(inst, point.format(ctl=ctl_call))
    change = subprocess.Popen(
        [sys.executable, "-m", "shmlog", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(
            os.environ,
            SHMLOG_INSTANCE=inst.kwargs["instance"],
            SHMLOG_DATA_DIR=inst.kwargs["data_dir"],
            SHMLOG_SHM_PREFIX=inst.prefix,
        ),
    )
    deadline = time.monotonic() + 30
    while psutil.Process(s1.pid).status() != psutil.STATUS_STOPPED and change.poll() is None:
        assert time.monotonic() < deadline, "the change neither finished nor reached the fault point"
        time.sleep(0.01)
    s1.kill()  # kill -9 at that step
    s1.wait(10)
    try:
        change.wait(30)
    except subprocess.TimeoutExpired:
        change.kill()
        change.wait(5)

    s2 = inst.start_supervisor()  # attaches to the surviving control segment
    inst.log = inst.connect()
    visible = "t" in inst.log.list_topics()
    if visible:
        parts = inst.log.describe_topic("t").partitions
        acked.setdefault("t", {})
        acked["t"].update(_produce(inst.log, "t", b"after"))
        if len(parts) == 2:
            acked["t1"] = _produce(inst.log, "t", b"p1", partition=1)
    inst.log.create_topic("z", persistence="disk", ring_bytes=1 << 16)  # a later change
    inst.log.alter_topic("z", partitions=2)
    _reboot(inst, s2)

    inst.log = inst.connect()  # restores from the data dir alone
    topics = inst.log.list_topics()
    assert ("t" in topics) == visible, f"topic t {'vanished' if visible else 'came back'} at the reboot"
    got = _read(inst.log, "keep")
    assert all(got.get(o) == v for o, v in acked["keep"].items())
    if visible:
        got = _read(inst.log, "t")
        lost = [o for o, v in acked["t"].items() if got.get(o) != v]
        assert not lost, f"{len(lost)} acknowledged records of t lost, first {lost[:5]}"
        if "t1" in acked:
            assert inst.log.describe_topic("t").config.partitions == 2
            got = _read(inst.log, "t", 1)
            assert all(got.get(o) == v for o, v in acked["t1"].items()), "partition 1 lost records"
    cat = catalog.load(inst.kwargs["data_dir"])
    assert sorted(cat.topics) == sorted(topics)
    assert all(getattr(r, "state", "live") == "live" for r in cat.topics.values()), "an intent was left open"


# ------------------------------------------------------------ 11.4: generations on disk


def _child_producer(kwargs, stop_path, out_path):
    """A live producer of topic t across its deletions and re-creations: logs
    (topic id of the life it wrote to, offset, value) of every record sent."""
    import pickle

    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=2000)
    sent, i = [], 0
    while not os.path.exists(stop_path):
        v = b"c%d" % i
        if i % 20 == 0:
            time.sleep(0.002)  # live, not a flood: ~10k records/s at most
        try:
            md = p.send("t", v, partition=0)
        except (errors.UnknownTopicOrPartition, errors.BufferFull, errors.Timeout):
            time.sleep(0.001)
            continue
        h = p._writers["t"].handle
        sent.append((getattr(h, "topic_id", None) or h.generation, md.offset, v))
        i += 1
    with open(out_path, "wb") as f:
        pickle.dump(sent, f)


def test_delete_and_recreate_under_a_live_producer_and_persister_keeps_generations_apart(inst):
    import pickle

    stop, out = str(inst.tmp_path / "stop"), str(inst.tmp_path / "sent.pkl")
    _durable(inst.log, "t", fsync="interval:5", ring_bytes=1 << 23)
    pers = daemons.persister_pid(inst.kwargs["data_dir"])
    child = inst.process(_child_producer, inst.kwargs, stop, out)
    child.start()
    lives = {}  # topic id -> {offset: value} read in that life
    main_acked = {}
    cycles = 16
    for cycle in range(cycles):
        if cycle:
            _durable(inst.log, "t", fsync="interval:5", ring_bytes=1 << 23)
        h = inst.log.topic_handle("t")
        tid = getattr(h, "topic_id", None) or h.generation
        got = _read(inst.log, "t")  # a new life holds nothing of an older one
        lives[tid] = got
        assert sorted(got) == list(range(len(got))), f"cycle {cycle}: a new topic starts at {min(got)}"
        alien = [v for v in got.values() if not v.startswith(b"c")]
        assert not alien, f"cycle {cycle}: the new topic holds records of an older life: {alien[:3]}"
        p = inst.log.producer(max_block_ms=5000)
        if cycle < cycles - 1:
            for j in range(60):  # 6 MiB, ~100 segment rolls: the persister lags
                p.send_batch("t", [b"m%d:%d:" % (cycle, j) + b"x" * 1000] * 100, partition=0)
            p.close()
            inst.log.delete_topic("t")  # while the persister copies that burst
            continue
        final = tid
        main_acked = {
            p.send("t", b"m%d:%d" % (cycle, j), partition=0).offset: b"m%d:%d" % (cycle, j) for j in range(400)
        }
        p.flush(durable=True, timeout=20)
        p.close()
        got = _read(inst.log, "t")
        lives[tid].update(got)
        assert all(got.get(o) == v for o, v in main_acked.items()), "records missing"
        assert not [v for v in got.values() if not v.startswith((b"m%d:" % cycle, b"c"))]
    open(stop, "w").close()
    child.join(30)
    assert child.exitcode == 0
    with open(out, "rb") as f:
        sent = pickle.load(f)
    for tid, off, v in sent:  # each child record is in its own life, where it said
        if off in lives.get(tid, {}):
            assert lives[tid][off] == v, f"life {tid}: offset {off} holds {lives[tid][off]!r}, not {v!r}"
    assert daemons.persister_pid(inst.kwargs["data_dir"]) == pers and daemons.persister_running(
        inst.kwargs["data_dir"]
    ), "the persister died (or was replaced) during the cycles"
    _reboot(inst)
    inst.log = inst.connect()
    got = _read(inst.log, "t")
    assert sorted(got) == list(range(len(got))), "after the reboot: offsets are not 0.. contiguous"
    assert all(got.get(o) == v for o, v in main_acked.items()), "acknowledged records lost at the reboot"
    assert not [v for v in got.values() if v.startswith(b"m") and not v.startswith(b"m%d:" % (cycles - 1))], (
        "records of an older life came back"
    )
    dirs = os.listdir(os.path.join(inst.kwargs["data_dir"], "topics"))
    assert dirs == [f"t@{final:016x}"], dirs
    assert not os.listdir(os.path.join(inst.kwargs["data_dir"], "trash"))


def test_a_late_writer_of_a_deleted_life_cannot_reach_the_new_one(inst):
    """The persister's writer holds its directory: after delete + re-create its
    rolls fail or land in the deleted life, never in the new directory."""
    _durable(inst.log, "t")
    old = inst.log.partition_dir("t", 0)
    w = storage.PartitionWriter(old, 1 << 16, 1 << 30, inst.log.topic_handle("t").topic_id)
    inst.log.delete_topic("t")
    _durable(inst.log, "t")
    new = inst.log.partition_dir("t", 0)
    assert new != old
    with pytest.raises(FileNotFoundError):
        w.roll(777 * 8, 777)  # its directory is gone: no file appears anywhere
    w.close()
    assert "00000000000000000777.log" not in os.listdir(new)
    with pytest.raises(errors.CorruptMetadata):  # a directory of another life is refused
        storage.PartitionWriter(new, 1 << 16, 1 << 30, 12345)


# ------------------------------------------------------------ 11.14


def _pdir(log, topic, p=0):
    """The partition's directory (through the Log: its name carries the topic id)."""
    if hasattr(log, "partition_dir"):
        return log.partition_dir(topic, p)
    return storage.partition_dir(log.settings.data_dir, topic, p)  # before topic ids


def _durable_with_records(inst, name, n=300, **kw):
    _durable(inst.log, name, **kw)
    return _produce(inst.log, name, name.encode(), n)


def _stop_everything(inst):
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()


def test_a_failed_restore_leaves_no_rings_and_the_next_connect_succeeds(inst, monkeypatch):
    _durable_with_records(inst, "a")
    _durable_with_records(inst, "b", segment_bytes=1 << 30)
    bdir = _pdir(inst.log, "b")
    _stop_everything(inst)
    # damaged files no longer fail a restore (they quarantine one partition:
    # tests/integration/test_quarantine.py); a full disk while recovery rewrites b's
    # indexes still does (chaos seed 26 met it)
    real = storage.recovery._write_indexes

    def full(s, *args):
        if s.dir == bdir:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(s, *args)

    monkeypatch.setattr(storage.recovery, "_write_indexes", full)
    with pytest.raises(OSError):
        inst.connect()
    assert inst.segments() == [], "the failed restore left shared memory behind"
    monkeypatch.setattr(storage.recovery, "_write_indexes", real)
    inst.log = inst.connect()  # no TopicExists
    assert inst.log.list_topics() == ["a", "b"]


def test_stray_files_in_the_data_dir_break_nothing(inst):
    acked = _durable_with_records(inst, "s")
    _durable(inst.log, "e")  # durable, no records yet
    pdir, edir = _pdir(inst.log, "s"), _pdir(inst.log, "e")
    _stop_everything(inst)
    for path in (
        os.path.join(pdir, "abcdefghijklmnopqrst.log"),
        os.path.join(pdir, "notes.txt"),
        os.path.join(edir, "x.log"),
        os.path.join(os.path.dirname(pdir), "README"),
        os.path.join(inst.kwargs["data_dir"], "topics", "stray.txt"),
    ):
        with open(path, "w") as f:
            f.write("not a segment\n")
    inst.log = inst.connect()
    assert sorted(inst.log.list_topics()) == ["e", "s"]
    got = _read(inst.log, "s")
    assert all(got.get(o) == v for o, v in acked.items())
    inst.log.producer().send("e", b"x", partition=0)
    r = _cli(inst, "check")
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    assert b"Traceback" not in r.stderr


def test_a_damaged_catalog_is_a_clear_error_and_is_left_as_it_is(inst):
    _durable_with_records(inst, "a")
    _stop_everything(inst)
    path = catalog.path(inst.kwargs["data_dir"])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # half-written
    with pytest.raises(getattr(errors, "CorruptMetadata", errors.ShmlogError), match="topics.json is damaged"):
        inst.connect()
    assert inst.segments() == []
    r = _cli(inst, "topic", "create", "x")
    assert r.returncode == 8, r.stderr
    err = r.stderr.decode()
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("shmlog: error: ") and "topics.json is damaged" in last, err
    with open(path, "rb") as f:
        assert f.read() == data[: len(data) // 2], "the damaged catalog was overwritten"


# ------------------------------------------------------------ 12.4: one instance, one data dir


def _instance_processes(inst, module):
    n = 0
    for p in psutil.process_iter(["cmdline"]):
        cl = p.info["cmdline"] or []
        if module in cl and inst.kwargs["instance"] in cl:
            try:
                n += p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                pass
    return n


def test_the_same_instance_with_another_data_dir_is_refused(inst, tmp_path):
    _durable_with_records(inst, "d")
    inst.start_supervisor()
    other = str(tmp_path / "other")
    env = {"SHMLOG_DATA_DIR": other, "SHMLOG_AUTOSTART": "1"}
    r = _cli(inst, "topic", "list", env=env)
    err = r.stderr.decode()
    assert r.returncode == 5, (r.returncode, err)
    assert os.path.realpath(inst.kwargs["data_dir"]) in err and other in err
    assert not daemons.persister_running(other), "a second persister runs on the same shared memory"
    r = _cli(inst, "up", env=env)
    assert r.returncode != 0, r.stdout
    assert os.path.realpath(inst.kwargs["data_dir"]) in r.stderr.decode()
    time.sleep(0.5)
    assert _instance_processes(inst, "shmlog.service.supervisor") == 1, "a second supervisor runs"
    assert _instance_processes(inst, "shmlog.service.persister") == 1
    with pytest.raises(errors.InstanceConflict, match="one instance is one name, one data dir"):
        shmlog.connect(**dict(inst.kwargs, data_dir=other))
    assert inst.log.list_topics() == ["d"]  # the instance itself goes on


# ------------------------------------------------------------ 12.7: read-only commands have no side effects

READ_ONLY = [
    ("topic", "list"),
    ("topic", "describe", "d"),
    ("status", "--once"),
    ("group", "list"),
    ("group", "describe", "g"),
    ("consume", "d", "--exit"),
]


def test_read_only_commands_of_a_mistyped_instance_create_nothing(inst, tmp_path):
    state = tmp_path / "state"
    env = {"SHMLOG_INSTANCE": "typo" + inst.kwargs["instance"], "XDG_STATE_HOME": str(state)}
    env_clean = {k: v for k, v in env.items()}
    for cmd in READ_ONLY:
        e = dict(os.environ, **env_clean, SHMLOG_SHM_PREFIX=inst.prefix)
        e.pop("SHMLOG_DATA_DIR", None)
        r = subprocess.run([sys.executable, "-m", "shmlog", *cmd], capture_output=True, env=e, timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 3, (cmd, r.returncode, err, r.stdout)
        assert "no instance" in err and str(state / "shmlog") in err and "Traceback" not in err, (cmd, err)
        assert not state.exists(), f"{cmd} created a data dir"
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(inst.prefix + "typo")], (
            f"{cmd} created shared memory"
        )
    with pytest.raises(errors.UnknownInstance):
        shmlog.connect(instance="typo", data_dir=str(state / "x"), shm_prefix=inst.prefix, create=False)
    assert not state.exists()


def test_read_only_commands_after_down_purge_restore_nothing_and_start_nothing(inst):
    _durable_with_records(inst, "d")
    inst.log.close()
    inst.start_supervisor()
    r = _cli(inst, "down", "--purge")
    assert r.returncode == 0, r.stderr
    inst.kill_persister()  # any left: the test is about what comes after
    assert inst.segments() == []
    for cmd in READ_ONLY:
        r = _cli(inst, *cmd)
        err = r.stderr.decode()
        assert r.returncode == 3 and "not running" in err, (cmd, r.returncode, err)
        assert inst.segments() == [], f"{cmd} re-created shared memory"
        assert not daemons.persister_running(inst.kwargs["data_dir"]), f"{cmd} started a persister"
    inst.log = inst.connect()  # a writing connection restores it
    assert inst.log.list_topics() == ["d"]
