"""End-to-end tests of the `shmlog` command line: every command, its --json
output parsed, and its failure paths (one line on stderr, the documented exit
code). Most run `python -m shmlog` as a real subprocess with the test
instance's environment; the cheap ones call cli.main(argv) in-process."""

import fcntl
import io
import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest

import shmlog
from shmlog import cli
from shmlog.cli import common
from shmlog.ipc import daemons

SHM = "/dev/shm"


def _env(inst, **extra):
    env = dict(os.environ)
    env.update(
        SHMLOG_INSTANCE=inst.kwargs["instance"],
        SHMLOG_DATA_DIR=inst.kwargs["data_dir"],
        SHMLOG_SHM_PREFIX=inst.kwargs["shm_prefix"],
    )
    env.update(extra)
    return env


def run(inst, *args, input=None, env=None, timeout=30):
    """`python -m shmlog ARGS` with the instance chosen by the environment."""
    return subprocess.run(
        [sys.executable, "-m", "shmlog", *args],
        input=input,
        capture_output=True,
        env=env or _env(inst),
        timeout=timeout,
    )


def ok(r) -> str:
    assert r.returncode == 0, (r.returncode, r.stderr.decode())
    return r.stdout.decode()


def fails(r, code: int, *words):
    """A failure: the exit code, ONE line on stderr naming the problem, no traceback."""
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == code, (r.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def js(r):
    return json.loads(ok(r))


def inproc(inst, capsys, *args):
    """cli.main in this process; (exit code, stdout, stderr)."""
    k = inst.kwargs
    argv = [*args, "--instance", k["instance"], "--data-dir", k["data_dir"], "--shm-prefix", k["shm_prefix"]]
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def sh(inst, capsysbinary, monkeypatch):
    """Like run(), but cli.main in this process (no interpreter start-up): for the many
    short calls, failure paths above all. Returns a CompletedProcess with bytes."""

    def call(*args, input=b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
        rc, out, err = inproc(inst, capsysbinary, *args)
        return subprocess.CompletedProcess(args, rc, out, err)

    return call


# ------------------------------------------------------------ parser, help, instance selection

HELP_PATHS = [
    [],
    ["topic"],
    ["topic", "create"],
    ["topic", "list"],
    ["topic", "describe"],
    ["topic", "alter"],
    ["topic", "delete"],
    ["produce"],
    ["consume"],
    ["group"],
    ["group", "list"],
    ["group", "describe"],
    ["group", "reset-offsets"],
    ["status"],
    ["doctor"],
    ["check"],
    ["bench"],
    ["supervisor"],
    ["up"],
    ["down"],
    ["kafka-listener"],
    ["demo"],
]


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(p) or "shmlog")
def test_every_command_has_help_with_examples(path, capsys, monkeypatch):
    for module in ("benchmarks", "shmlog.service.supervisor", "shmlog.kafka"):
        monkeypatch.setitem(sys.modules, module, None)  # delegates' own help is theirs; this is ours
    with pytest.raises(SystemExit) as ei:
        cli.main([*path, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "shmlog" in out


def test_usage_errors_are_one_line_with_exit_2(inst, capsys):
    for argv in (
        ["topic", "list", "--bogus"],
        ["nosuchcommand"],
        ["topic"],
        ["consume"],
        ["group", "reset-offsets", "g", "--topic", "t"],
    ):
        rc, out, err = inproc(inst, capsys, *argv)
        assert rc == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "error:" in err, err


def test_instance_options_before_after_and_from_the_environment(inst):
    k = inst.kwargs
    opts = ["--instance", k["instance"], "--data-dir", k["data_dir"], "--shm-prefix", k["shm_prefix"]]
    bare = {n: v for n, v in os.environ.items() if not n.startswith("SHMLOG_")}
    ok(run(inst, "topic", "create", "after", "--persistence", "none", "--ring-bytes", "65536", *opts, env=bare))
    ok(run(inst, *opts, "topic", "create", "before", "--persistence", "none", "--ring-bytes", "65536", env=bare))
    names = {t["name"] for t in js(run(inst, "topic", "list", "--json"))}  # from the environment
    assert names == {"after", "before"}
    assert set(inst.log.list_topics()) == {"after", "before"}
    # another instance name in the environment is another instance: it does not see these topics
    other = _env(inst, SHMLOG_INSTANCE=k["instance"] + "x", SHMLOG_DATA_DIR=k["data_dir"] + "x")
    r = run(inst, "topic", "list", "--json", env=other)
    assert r.returncode == 3 and b"no instance" in r.stderr, (
        r.stderr
    )  # and nothing made (tests/integration/test_metadata.py)
    # an option beats the environment
    assert {
        t["name"]
        for t in js(
            run(inst, "topic", "list", "--json", "--instance", k["instance"], "--data-dir", k["data_dir"], env=other)
        )
    } == {"after", "before"}


def test_exit_codes_follow_the_error_tree():
    assert common.exit_code(shmlog.errors.TopicDeleted("x")) == 3
    assert common.exit_code(shmlog.errors.TopicExists("x")) == 4
    assert common.exit_code(shmlog.errors.InvalidTopicName("x")) == 2
    assert common.exit_code(shmlog.errors.TooManyProducers("x")) == 1
    assert common.exit_code(shmlog.errors.PermissionDenied("x")) == 6
    assert common.exit_code(shmlog.errors.BufferFull("x")) == 7
    assert common.exit_code(shmlog.errors.CorruptRecord("x")) == 8
    assert common.exit_code(shmlog.errors.NoSpace("x")) == 9
    assert common.exit_code(shmlog.errors.NotSupported("x")) == 10


# ------------------------------------------------------------ topics


def test_topic_create_describe_delete_and_failures(inst, sh):
    d = js(
        run(
            inst,
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "--ring-bytes",
            "65536",
            "--persistence",
            "none",
            "--retention-ms",
            "-1",
            "--json",
        )
    )
    assert d["name"] == "orders" and d["config"]["partitions"] == 3 and d["config"]["retention_ms"] is None
    assert inst.log.describe_topic("orders").config.ring_bytes == 65536
    inst.log.producer().send("orders", b"v", partition=1)
    d = js(sh("topic", "describe", "orders", "--json"))
    assert [p["end_offset"] for p in d["partitions"]] == [0, 1, 0]
    assert all(p["persisted_lag_bytes"] == 0 for p in d["partitions"])
    text = ok(sh("topic", "describe", "orders"))
    assert "RING FILL" in text and "orders" in text and "SLOWEST READER" not in text
    ok(sh("topic", "create", "rpc", "--persistence", "none", "--overflow", "block", "--ring-bytes", "64KiB"))
    c = inst.log.consumer(["rpc"], auto_offset_reset="earliest")
    c.poll(0)  # holds partition 0 of a lossless topic
    text = ok(sh("topic", "describe", "rpc"))
    assert "SLOWEST READER LAG B" in text and f" {os.getpid()} " in text, text
    c.close()
    inst.log.delete_topic("rpc")
    fails(sh("topic", "create", "orders", "--persistence", "none"), 4, "already exists")
    fails(sh("topic", "create", "bad/name"), 2, "invalid topic name")
    fails(sh("topic", "create", "t2", "--ring-bytes", "100000"), 2, "power of two")
    fails(sh("topic", "create", "t3", "--fsync", "sometimes"), 2, "fsync")
    assert js(sh("topic", "delete", "orders", "--json")) == {"deleted": "orders"}
    assert "orders" not in inst.log.list_topics()
    fails(sh("topic", "describe", "orders"), 3, "does not exist")
    fails(sh("topic", "delete", "orders"), 3, "does not exist")
    assert ok(sh("topic", "list")).strip() == "(no topics)"


def test_topic_alter(inst, sh):
    inst.log.create_topic("alt", partitions=1, ring_bytes=1 << 16, persistence="none")
    fails(run(inst, "topic", "alter", "alt"), 2, "nothing to alter")
    if not hasattr(shmlog.Log, "alter_topic"):
        # until Log.alter_topic lands (issue 5, supervisor work) the command says so
        fails(sh("topic", "alter", "alt", "--retention-ms", "1000"), 10, "alter")
        return
    d = js(sh("topic", "alter", "alt", "--retention-ms", "1000", "--json"))
    assert d["config"]["retention_ms"] == 1000
    assert inst.log.describe_topic("alt").config.retention_ms == 1000
    fails(sh("topic", "alter", "nope", "--retention-ms", "1000"), 3, "nope")


# ------------------------------------------------------------ produce and consume


def test_produce_keys_headers_partition_and_consume_format(inst, sh):
    inst.log.create_topic("kv", partitions=2, ring_bytes=1 << 16, persistence="none")
    s = js(
        run(inst, "produce", "kv", "-K:", "-H", "src=cli", "-H", "n=1", "-p", "1", "--json", input=b"a:1\nb:2\nnokey\n")
    )
    assert s["count"] == 3 and s["partitions"] == [{"partition": 1, "first_offset": 0, "last_offset": 2, "count": 3}]
    out = ok(run(inst, "consume", "kv", "-o", "beginning", "-e", "-f", r"%t|%p|%o|%k|%s|%K|%S|%h|%T\t%%\n"))
    lines = out.splitlines()
    assert len(lines) == 3
    rows = [ln.split("|") for ln in lines]
    assert [r[:7] for r in rows] == [
        ["kv", "1", "0", "a", "1", "1", "1"],
        ["kv", "1", "1", "b", "2", "1", "1"],
        ["kv", "1", "2", "", "nokey", "-1", "5"],
    ]
    assert all(r[7] == "src=cli,n=1" for r in rows)
    ts, tail = rows[0][8].split("\t")
    assert tail == "%" and abs(int(ts) - time.time() * 1000) < 60_000
    # the API sees the same records
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("kv", 1, 0)])
    m = c.poll(timeout=1)
    assert (m.key, m.value, m.headers) == (b"a", b"1", (("src", b"cli"), ("n", b"1")))
    # a key decides the partition like the API's murmur2
    ok(sh("produce", "kv", "-k", "user-7", "-q", input=b"x\n"))
    want = inst.log.producer().send("kv", b"y", key=b"user-7").partition
    got = [
        json.loads(x) for x in ok(sh("consume", "kv", "-o", "beginning", "-e", "--json", "-p", str(want))).splitlines()
    ]
    assert [(g["key"], g["value"]) for g in got if g["key"] == "user-7"] == [("user-7", "x"), ("user-7", "y")]
    # -K on consume prints key DELIM value
    out = ok(sh("consume", "kv", "-p", "1", "-o", "0", "-c", "2", "-K", "="))
    assert out == "a=1\nb=2\n"


def test_produce_files_whole_and_line_mode_and_delimiters(inst, tmp_path, sh):
    inst.log.create_topic("files", partitions=1, ring_bytes=1 << 16, persistence="none")
    blob = bytes(range(256)) + b"\nline two\n"
    f1, f2 = tmp_path / "a.bin", tmp_path / "b.txt"
    f1.write_bytes(blob)
    f2.write_bytes(b"one\ntwo\nthree")  # no trailing delimiter: the last record still counts
    assert js(run(inst, "produce", "files", str(f1), "--json"))["count"] == 1
    assert js(sh("produce", "files", "-l", str(f2), "--json"))["count"] == 3
    assert js(sh("produce", "files", "-D", r"\0", "--json", input=b"x\0y\0"))["count"] == 2
    c = inst.log.consumer(auto_offset_reset="earliest", topics=["files"])
    vals = [m.value for m in c.poll_batch(100, timeout=1)]
    while len(vals) < 6:
        vals += [m.value for m in c.poll_batch(100, timeout=1)]
    assert vals == [blob, b"one", b"two", b"three", b"x", b"y"]
    got = [json.loads(x) for x in ok(sh("consume", "files", "-o", "0", "-c", "1", "--json")).splitlines()]
    assert "value" not in got[0] and __import__("base64").b64decode(got[0]["value_b64"]) == blob


def test_produce_failures(inst, tmp_path, sh):
    inst.log.create_topic("pf", partitions=2, ring_bytes=1 << 16, persistence="none")
    fails(run(inst, "produce", "nope", input=b"x\n"), 3, "nope")
    fails(sh("produce", "pf", "-p", "5", input=b"x\n"), 3, "partitions 0..1")
    fails(sh("produce", "pf", "-H", "novalue", input=b"x\n"), 2, "KEY=VALUE")
    fails(sh("produce", "pf", str(tmp_path / "missing.txt")), 2, "missing.txt")
    fails(sh("produce", "pf", "-D", "", input=b"x\n"), 2, "delimiter")
    big = b"x" * (1 << 15)  # > max_message_bytes (ring / 4)
    fails(sh("produce", "pf", input=big + b"\n"), 2, "max_message_bytes")
    assert [p.end_offset for p in inst.log.describe_topic("pf").partitions] == [0, 0]


def test_consume_start_offsets_count_and_time(inst, sh):
    inst.log.create_topic("offs", partitions=2, ring_bytes=1 << 16, persistence="none")
    p = inst.log.producer()
    for i in range(10):
        for part in (0, 1):
            p.send("offs", b"%d-%d" % (part, i), partition=part, timestamp_ms=1_000_000 + i * 1000)

    def offsets(*args):
        out = ok(sh("consume", "offs", "-e", "-f", r"%p:%o\n", *args))
        return sorted(tuple(map(int, x.split(":"))) for x in out.split())

    assert offsets("-o", "beginning") == [(q, i) for q in (0, 1) for i in range(10)]
    out = ok(run(inst, "consume", "offs", "-o", "beginning", "-e", "-f", r"%p:%o\n"))  # the same, as a process
    assert sorted(tuple(map(int, x.split(":"))) for x in out.split()) == [(q, i) for q in (0, 1) for i in range(10)]
    assert offsets("-o", "end") == []
    assert offsets("-o", "7") == [(q, i) for q in (0, 1) for i in (7, 8, 9)]
    assert offsets("-o", "-2", "-p", "1") == [(1, 8), (1, 9)]
    assert offsets("-o", "500") == []  # past the end: clamped to it
    assert offsets("-o", "@1005500") == [(q, i) for q in (0, 1) for i in range(6, 10)]
    assert offsets("-o", "@9999999") == []
    assert len(offsets("-o", "beginning", "-c", "3")) == 3
    fails(sh("consume", "offs", "-o", "sideways"), 2, "-o")
    fails(sh("consume", "offs", "-f", "%x"), 2, "%x")
    fails(sh("consume", "offs", "-o", "stored"), 2, "group")
    fails(sh("consume", "nope", "-e"), 3, "nope")
    fails(sh("consume", "offs", "-p", "9", "-e"), 3, "partitions 0..1")
    fails(sh("consume", "offs", "-o", "@yesterday"), 2, "ISO-8601")


def test_consume_tails_records_produced_after_it_started(inst):
    inst.log.create_topic("live", partitions=1, ring_bytes=1 << 16, persistence="none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmlog", "consume", "live", "-c", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(inst),
    )
    try:
        p = inst.log.producer()
        deadline = time.monotonic() + 20
        got = b""
        # keep sending until the consumer (which starts at the end) has printed three records
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            p.send("live", b"r%d" % i)
            i += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=10)
        got = out.decode().split()
        assert proc.returncode == 0, err
        assert len(got) == 3 and all(g.startswith("r") for g in got)
        nums = [int(g[1:]) for g in got]
        assert nums == list(range(nums[0], nums[0] + 3))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_consume_into_a_closed_pipe_exits_quietly(inst):
    inst.log.create_topic("pipe", partitions=1, ring_bytes=1 << 20, persistence="none")
    p = inst.log.producer()
    for _ in range(5):
        p.send_batch("pipe", [b"x" * 100] * 1000)
    r = subprocess.run(
        f"{sys.executable} -m shmlog consume pipe -o beginning -e | head -1",
        shell=True,
        capture_output=True,
        env=_env(inst),
        timeout=30,
        executable="/bin/bash",
    )
    assert r.stdout == b"x" * 100 + b"\n"
    assert b"Traceback" not in r.stderr and b"Error" not in r.stderr, r.stderr


def test_produce_durable_to_a_disk_topic_then_check(inst, sh):
    ok(run(inst, "topic", "create", "dur", "--ring-bytes", "65536", "--fsync", "never"))
    s = js(run(inst, "produce", "dur", "--durable", "--json", input=b"".join(b"%d\n" % i for i in range(50))))
    assert s["count"] == 50 and s["durable"]
    d = inst.log.describe_topic("dur")
    assert d.partitions[0].fsynced_lag_bytes == 0 and d.partitions[0].end_offset == 50
    rep = js(sh("check", "--json"))  # the data dir from the environment
    assert rep["ok"] and [(e["topic"], e["partition"]) for e in rep["partitions"]] == [("dur", "0")]
    rep = js(sh("check", inst.kwargs["data_dir"], "--json"))
    assert rep["ok"]
    fails(sh("check", str(inst.tmp_path)), 2, "not a shmlog data dir")


def test_check_draws_a_progress_bar_on_a_terminal_only(inst):
    inst.log.create_topic("bar", partitions=3, ring_bytes=1 << 16)
    master, slave = os.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "shmlog", "check"],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=_env(inst, TERM="xterm"),
            timeout=30,
        )
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert r.returncode == 0 and r.stdout.decode().count(": ok") == 3
    assert b"checking" in drawn and b"/3" in drawn
    piped = run(inst, "check")
    assert piped.returncode == 0 and piped.stderr == b""  # no bar into a pipe or a log


# ------------------------------------------------------------ status


def test_status_once_json_reports_rates_fill_and_lag(inst):
    inst.log.create_topic("st", partitions=2, ring_bytes=1 << 16, persistence="none")
    p = inst.log.producer()
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            p.send("st", b"v" * 10, partition=0)
            time.sleep(0.001)

    t = threading.Thread(target=produce)
    t.start()
    try:
        snap = js(run(inst, "status", "--json", "--interval", "0.5"))
    finally:
        stop.set()
        t.join(5)
    assert snap["instance"] == inst.kwargs["instance"] and snap["interval_s"] >= 0.5
    (top,) = snap["topics"]
    p0, p1 = top["partitions"]
    assert top["name"] == "st" and p0["produce_rate"] > 0 and p1["produce_rate"] == 0
    assert 0 < p0["ring_fill"] <= 1 and p0["ring_used_bytes"] > 0 and p1["end_offset"] == 0
    assert "persisted_lag_bytes" in p0 and snap["processes"] >= 1  # this test process holds a token
    # text snapshots, refreshed --count times (a pipe gets plain text, not the rich live view)
    out = ok(run(inst, "status", "--interval", "0.1", "--count", "2"))
    assert out.count("END OFFSET") == 2 and "st" in out
    fails(run(inst, "status", "--interval", "0"), 2, "interval")


def test_status_and_doctor_name_the_supervisor(inst, sh, monkeypatch):
    monkeypatch.setattr(daemons, "running_pid", lambda settings: 4321 if settings == inst.log.settings else None)
    snap = js(sh("status", "--json", "--interval", "0.05"))
    assert snap["supervisor"] == {"running": True, "pid": 4321, "metrics": None, "kafka": None}
    assert "supervisor pid 4321" in ok(sh("status", "--once", "--interval", "0.05"))
    (c,) = [c for c in js(sh("doctor", "--json"))["checks"] if c["check"] == "supervisor"]
    assert "4321" in c["detail"]
    monkeypatch.setattr(daemons, "running_pid", lambda settings: None)
    assert js(sh("status", "--json", "--interval", "0.05"))["supervisor"] == {
        "running": False,
        "pid": None,
        "metrics": None,
        "kafka": None,
    }


# ------------------------------------------------------------ doctor


def _hold_token(path, ready, done):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    done.wait(20)


def test_doctor_finds_and_cleans_stale_tokens_and_rings(inst, sh):
    inst.log.create_topic("doc", partitions=1, ring_bytes=1 << 16, persistence="none")
    rep = js(run(inst, "doctor", "--json"))
    assert rep["ok"] and rep["stale"] == []
    assert {c["check"] for c in rep["checks"]} >= {"/dev/shm", "open files", "data dir", "segment permissions"}
    base = f"{inst.prefix}{inst.kwargs['instance']}."
    dead = os.path.join(SHM, base + "live.999999999-1")  # a token nobody holds: its process died
    orphan = os.path.join(SHM, base + "g999.p0")  # a ring no topic refers to
    alive = os.path.join(SHM, base + "live.999999998-1")
    for path in (dead, orphan):
        with open(path, "wb") as f:
            f.write(b"\0" * 64)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_token, args=(alive, ready, done))
    holder.start()
    inst.children.append(holder)
    assert ready.wait(10)
    try:
        rep = js(sh("doctor", "--json"))
        assert sorted(rep["stale"]) == sorted([os.path.basename(dead), os.path.basename(orphan)])
        assert rep["cleaned"] == [] and os.path.exists(dead) and os.path.exists(orphan)
        rep = js(sh("doctor", "--clean", "--json"))
        assert sorted(rep["cleaned"]) == sorted(rep["stale"])
        assert not os.path.exists(dead) and not os.path.exists(orphan)
        assert os.path.exists(alive)  # a live process's token stays
        # another instance's dead token: counted, removed only with --all-instances
        other = os.path.join(SHM, f"{inst.prefix}other-{inst.kwargs['instance']}.live.999999997-1")
        open(other, "wb").close()
        rep = js(sh("doctor", "--clean", "--json"))
        assert os.path.exists(other) and os.path.basename(other) not in rep["stale"]
        assert any(c["check"] == "other instances" for c in rep["checks"])
        rep = js(sh("doctor", "--clean", "--all-instances", "--json"))
        assert os.path.basename(other) in rep["cleaned"] and not os.path.exists(other)
        assert inst.log.describe_topic("doc").partitions[0].end_offset == 0  # the live ring stays
    finally:
        done.set()
        holder.join(5)
        os.unlink(alive)


def test_doctor_reports_world_writable_files_with_exit_1(inst, sh):
    inst.log.create_topic("ww", partitions=1, ring_bytes=1 << 16, persistence="none")
    ring = os.path.join(SHM, inst.log.settings.ring_name(inst.log.describe_topic("ww").generation, 0).lstrip("/"))
    os.chmod(ring, 0o666)
    r = run(inst, "doctor", "--json")
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert not rep["ok"]
    (bad,) = [c for c in rep["checks"] if c["status"] == "problem"]
    assert bad["check"] == "segment permissions" and "world-writable" in bad["detail"]
    text = sh("doctor")
    assert text.returncode == 1 and b"PROBLEM" in text.stdout


# ------------------------------------------------------------ bench and the delegated commands


def test_bench_runs_the_suite_in_quick_mode(inst, capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("benchmarks")
    fake.cli_main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks", fake)
    assert inproc(inst, capsys, "bench")[0] == 0
    assert inproc(inst, capsys, "bench", "--full", "--peers", "shmlog")[0] == 0
    assert inproc(inst, capsys, "bench", "--help")[0] == 0  # the suite's own help
    assert calls == [["--quick"], ["--full", "--peers", "shmlog"], ["--help"]]
    fake.cli_main = lambda argv: 3
    assert inproc(inst, capsys, "bench")[0] == 3  # the suite's exit code
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # not importable
    rc, out, err = inproc(inst, capsys, "bench")
    assert rc == 10 and len(err.strip().splitlines()) == 1 and "source checkout" in err
    rc, out, err = inproc(inst, capsys, "bench", "--help")  # then our own help
    assert rc == 0 and "examples:" in out


@pytest.mark.parametrize(
    "command,module", [("supervisor", "shmlog.service.supervisor"), ("kafka-listener", "shmlog.kafka")]
)
def test_supervisor_and_kafka_listener_get_the_arguments_or_say_the_module_is_missing(
    inst, capsys, monkeypatch, command, module
):
    monkeypatch.setitem(sys.modules, module, None)
    rc, out, err = inproc(inst, capsys, command)
    assert rc == 10 and len(err.strip().splitlines()) == 1 and module in err
    calls = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, module, fake)
    rc, out, err = inproc(inst, capsys, command, "--config", "x.toml")
    assert rc == 0, err
    k = inst.kwargs
    (argv,) = calls
    assert argv[argv.index("--instance") + 1] == k["instance"] and argv[argv.index("--data-dir") + 1] == k["data_dir"]
    assert argv[-2:] == ["--config", "x.toml"]
    fake.main = lambda argv: 3
    assert inproc(inst, capsys, command)[0] == 3  # its exit status is ours


def test_up_and_down_call_the_daemon_launcher(inst, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(
        daemons,
        "up",
        lambda settings, config_path=None, timeout=20.0: calls.append(("up", settings, config_path, timeout)) or 4242,
    )
    monkeypatch.setattr(
        daemons,
        "down",
        lambda settings, purge=False, timeout=120.0: calls.append(("down", settings, purge, timeout)) or True,
    )
    rc, out, err = inproc(inst, capsys, "up", "--config", "s.toml", "--json")
    assert rc == 0 and json.loads(out) == {
        "instance": inst.kwargs["instance"],
        "pid": 4242,
        "metrics": None,
        "kafka": None,
    }
    rc, out, err = inproc(inst, capsys, "down", "--purge", "--timeout", "5")
    assert rc == 0 and "stopped" in out
    (_, s1, cfg, t1), (_, s2, purge, t2) = calls
    assert s1 == s2 == inst.log.settings and cfg == "s.toml" and t1 == 20.0 and purge is True and t2 == 5.0

    def refuse(settings, config_path=None, timeout=20.0):
        raise shmlog.errors.Timeout("the supervisor did not answer within 20 s")

    monkeypatch.setattr(daemons, "up", refuse)
    rc, out, err = inproc(inst, capsys, "up")
    assert rc == 7 and err.strip() == "shmlog: error: the supervisor did not answer within 20 s"


# ------------------------------------------------------------ groups (issue 4's API)


def _group_fixture(inst):
    inst.log.create_topic("gt", partitions=2, ring_bytes=1 << 16, persistence="none")
    p = inst.log.producer()
    for i in range(10):
        for part in (0, 1):
            p.send("gt", b"%d" % i, partition=part, timestamp_ms=2_000_000 + i * 1000)


def test_group_list_describe_and_reset_offsets(inst, sh):
    _group_fixture(inst)
    c = inst.log.consumer(group="billing", topics=["gt"], auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 20
        while len(c.assignment()) < 2 and time.monotonic() < deadline:
            c.poll(timeout=0.1)
        assert sorted(c.assignment()) == [("gt", 0), ("gt", 1)]
        c.commit(offsets={("gt", 0): 4, ("gt", 1): 10})
        (g,) = js(run(inst, "group", "list", "--json"))
        assert g["group"] == "billing" and g["members"] == 1 and g["lag"] == 6
        d = js(sh("group", "describe", "billing", "--json"))
        lag = {(q["topic"], q["partition"]): (q["committed"], q["end_offset"], q["lag"]) for q in d["partitions"]}
        assert lag == {("gt", 0): (4, 10, 6), ("gt", 1): (10, 10, 0)}
        (m,) = d["members"]
        assert m["pid"] == os.getpid() and sorted(map(tuple, m["assignment"])) == [("gt", 0), ("gt", 1)]
        text = ok(sh("group", "describe", "billing"))
        assert "LOG-END-OFFSET" in text and "MEMBER-ID" in text
        # the plan is printed while members live; executing it is refused
        plan = js(sh("group", "reset-offsets", "billing", "--all-topics", "--to-earliest", "--json"))
        assert not plan["executed"] and [
            (r["partition"], r["current_offset"], r["new_offset"]) for r in plan["plan"]
        ] == [(0, 4, 0), (1, 10, 0)]
        fails(sh("group", "reset-offsets", "billing", "--all-topics", "--to-earliest", "--execute"), 5)
        assert inst.log.committed_offsets("billing") == {("gt", 0): 4, ("gt", 1): 10}
    finally:
        c.close()

    def reset(*args):
        r = js(sh("group", "reset-offsets", "billing", *args, "--execute", "--json"))
        assert r["executed"]
        return inst.log.committed_offsets("billing")

    assert reset("--all-topics", "--to-earliest") == {("gt", 0): 0, ("gt", 1): 0}
    assert reset("--topic", "gt:1", "--to-offset", "7") == {("gt", 0): 0, ("gt", 1): 7}
    assert reset("--topic", "gt:1", "--shift-by", "-2") == {("gt", 0): 0, ("gt", 1): 5}
    assert reset("--topic", "gt", "--to-datetime", "2003500") == {("gt", 0): 4, ("gt", 1): 4}
    assert reset("--topic", "gt:0", "--to-offset", "999") == {("gt", 0): 10, ("gt", 1): 4}
    assert reset("--all-topics", "--to-latest") == {("gt", 0): 10, ("gt", 1): 10}
    fails(sh("group", "describe", "nosuchgroup"), 3, "nosuchgroup")
    fails(sh("group", "reset-offsets", "billing", "--topic", "gt:5", "--to-earliest"), 3, "partitions 0..1")


def test_consume_as_a_group_member_commits_and_resumes(inst):
    _group_fixture(inst)
    out = ok(run(inst, "consume", "gt", "-G", "g2", "-o", "beginning", "-e", "-f", r"%p:%o\n"))
    assert sorted(out.split()) == sorted(f"{q}:{i}" for q in (0, 1) for i in range(10))
    assert inst.log.committed_offsets("g2") == {("gt", 0): 10, ("gt", 1): 10}
    inst.log.producer().send("gt", b"new", partition=0)
    assert ok(run(inst, "consume", "gt", "-G", "g2", "-e")) == "new\n"  # resumes at the committed offset
    fails(run(inst, "consume", "gt", "-G", "g2", "-o", "-3"), 2, "-G")
    fails(run(inst, "consume", "gt", "-G", "g2", "-p", "0"), 2, "-G")
    snap = js(run(inst, "status", "--json", "--interval", "0.1"))
    (g,) = snap["groups"]
    assert g["group"] == "g2" and g["lag"] == 0 and g["members"] == []


def test_ctrl_c_ends_a_group_consume_and_commits_what_it_printed(inst):
    _group_fixture(inst)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmlog", "consume", "gt", "-G", "tail", "-o", "beginning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(inst),
    )
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while seen.count(b"\n") < 20 and time.monotonic() < deadline:
            seen += os.read(proc.stdout.fileno(), 4096)
        assert seen.count(b"\n") == 20
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and out == b"" and err == b"", err
        assert inst.log.committed_offsets("tail") == {("gt", 0): 10, ("gt", 1): 10}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_produce_hit_by_buffer_full_says_how_much_was_written(inst):
    """Issue 12 #9: BufferFull in the middle of `shmlog produce` exited 7
    without saying that some lines were written, so a rerun duplicated them.
    Here the persister is stopped (SIGSTOP), so a small durable ring fills."""
    import signal as sig
    from shmlog.service import persister

    inst.log.create_topic("full", ring_bytes=1 << 16, persistence="disk")
    pid = daemons.persister_pid(inst.kwargs["data_dir"])
    assert pid
    os.kill(pid, sig.SIGSTOP)
    try:
        lines = b"".join(b"line-%05d-" % i + b"x" * 80 + b"\n" for i in range(5000))
        r = run(inst, "produce", "full", "--max-block-ms", "300", input=lines, timeout=60)
        end = inst.log.describe_topic("full").partitions[0].end_offset
        line = fails(r, 7, "written before it")
        assert 0 < end < 5000
        assert f"{end} record(s) were written before it" in line, line
        assert f"partition 0 at offset {end - 1}" in line and f"record {end + 1} of the input" in line, line
        rj = run(inst, "produce", "full", "--max-block-ms", "300", "--json", input=lines, timeout=60)
        assert rj.returncode == 7
        summary = json.loads(rj.stdout)
        assert summary["complete"] is False and summary["count"] == 0 and summary["last"] is None
    finally:
        os.kill(pid, sig.SIGCONT)


def test_version_sizes_with_units_and_group_delete(inst, sh):
    out = ok(run(inst, "--version"))
    assert out.startswith(f"shmlog {shmlog.__version__} ")
    ok(sh("topic", "create", "u1", "--ring-bytes", "64KiB", "--persistence", "none"))
    ok(sh("topic", "create", "u2", "--ring-bytes", "1M", "--persistence", "none", "--max-message-bytes", "2kB"))
    ok(sh("topic", "create", "u3", "--ring-bytes", "131072", "--persistence", "none"))
    assert inst.log.describe_topic("u1").config.ring_bytes == 64 << 10
    assert inst.log.describe_topic("u2").config.ring_bytes == 1 << 20
    assert inst.log.describe_topic("u2").config.max_message_bytes == 2000
    assert inst.log.describe_topic("u3").config.ring_bytes == 131072
    fails(sh("topic", "create", "u4", "--ring-bytes", "64 furlongs"), 2, "not a size")
    fails(sh("topic", "create", "u4", "--ring-bytes", "1.3"), 2, "whole number")
    inst.log.commit_offsets("gdel", {("u1", 0): 0})
    assert "gdel" in inst.log.list_groups()
    ok(sh("group", "delete", "gdel"))
    assert "gdel" not in inst.log.list_groups()
    fails(sh("group", "delete", "gdel"), 3)


def test_group_lag_unknown_is_not_shown_as_zero(inst, sh):
    """Issue 12 #9: a group whose partitions have no committed offset showed "lag 0"."""
    inst.log.create_topic("lg", partitions=2, ring_bytes=1 << 16, persistence="none")
    with inst.log.producer() as p:
        for i in range(6):
            p.send("lg", b"x", partition=i % 2)
    c = inst.log.consumer(topics=["lg"], group="lagq", enable_auto_commit=False, auto_offset_reset="earliest")
    deadline = time.monotonic() + 10
    while len(c.assignment()) < 2 and time.monotonic() < deadline:
        c.poll(timeout=0.05)
    try:
        out = ok(sh("group", "describe", "lagq"))
        assert "lag unknown" in out.splitlines()[0], out
        rows = js(sh("group", "list", "--json"))
        assert rows[0]["lag"] is None and rows[0]["lag_unknown_partitions"] == 2
        c.commit({("lg", 0): 1})
        out = ok(sh("group", "describe", "lagq"))
        assert "lag 2 + unknown on 1 partition" in out.splitlines()[0], out
        snap = js(sh("status", "--json"))
        g = snap["groups"][0]
        assert g["lag"] == 2 and g["lag_unknown_partitions"] == 1
    finally:
        c.close()


def test_consume_prints_kcats_end_of_partition_and_out_of_range_notices(inst):
    """Issue 12 #9: kcat's `% Reached end of topic T [p] at offset N` on stderr
    (records alone on stdout), and a warning for an -o N outside the log."""
    inst.log.create_topic("eof", partitions=2, ring_bytes=1 << 16, persistence="none")
    with inst.log.producer() as p:
        for i in range(5):
            p.send("eof", b"r%d" % i, partition=i % 2)
    r = run(inst, "consume", "eof", "-o", "beginning", "-e")
    assert sorted(ok(r).split()) == [b"r%d".decode() % i for i in range(5)]
    err = r.stderr.decode().splitlines()
    assert "% Reached end of topic eof [0] at offset 3" in err and "% Reached end of topic eof [1] at offset 2" in err
    r = run(inst, "consume", "eof", "-o", "beginning", "-e", "-q")
    assert ok(r) and r.stderr == b""
    r = run(inst, "consume", "eof", "-p", "0", "-o", "100", "-e")
    assert ok(r) == ""
    err = r.stderr.decode()
    assert "% offset 100 is out of range for eof [0] (the log holds 0..3); starting at the end, offset 3" in err, err
    r = run(inst, "consume", "eof", "-p", "1", "-o", "1", "-e")
    assert ok(r) == "r3\n" and "out of range" not in r.stderr.decode()


def test_up_and_status_show_the_metrics_and_kafka_addresses(inst, tmp_path):
    """Issue 12 #9: the metrics port was shown nowhere but supervisor.json."""
    from shmlog.service import supervisor

    cfg = tmp_path / "svc.toml"
    cfg.write_text('metrics_port = 0\n[kafka]\nlisten = "127.0.0.1:0"\n')
    env = _env(inst, SHMLOG_AUTOSTART="1")
    try:
        out = ok(run(inst, "up", "--config", str(cfg), env=env, timeout=60))
        st = daemons.read_supervisor_state(inst.settings)
        metrics, kafka = f"http://127.0.0.1:{st.metrics_port}/metrics", f"127.0.0.1:{st.kafka_port}"
        assert st.metrics_port and st.kafka_port
        assert f"metrics  {metrics}" in out and f"kafka    {kafka}" in out, out
        up = js(run(inst, "up", "--json", env=env, timeout=60))  # already running: the same answer
        assert up["metrics"] == metrics and up["kafka"] == kafka
        snap = js(run(inst, "status", "--json"))
        assert snap["supervisor"]["metrics"] == metrics and snap["supervisor"]["kafka"] == kafka
        text = ok(run(inst, "status", "--once"))
        assert f"metrics {metrics}" in text and f"kafka {kafka}" in text, text
    finally:
        run(inst, "down", env=env, timeout=120)
