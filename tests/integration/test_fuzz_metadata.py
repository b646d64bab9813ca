"""test_fuzz_metadata.py — damaged metadata files: a clear shmlog error or a documented recovery, never
a foreign exception, a hang, or data loss.

Owns: fuzzing the files an instance reads back at start — meta/topics.json
(the catalog, read by the restore after a reboot), meta/offsets.msgpack
(committed offsets), supervisor.json (the supervisor's state) and
recovery.json (restore progress) — with truncations, bit flips, values of
the wrong type and huge values (hypothesis, bounded examples). Each restore
attempt runs in a forked child with a deadline, so a hang or a crash is a
finding, not a stuck suite; after each one the original file is put back
and every record and committed offset must still be there.
Must never: leave rings or processes behind (the inst fixture cleans up).
"""

import copy
import json
import multiprocessing
import os
import pickle
import traceback

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import shmlog
from shmlog import errors
from shmlog.service import supervisor
from shmlog import Log
from shmlog.ipc.progress import RecoveryProgress, read_recovery_progress
from shmlog.ipc import daemons

RECORDS = 240
COMMITTED = 57
ATTEMPT_S = 30.0

weird = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2**31, 2**40, 2**63 - 1, 2**64, -(2**63), 10**30]),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _replace(obj, path, value):
    if not path:
        return value
    out = copy.deepcopy(obj)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


@st.composite
def damaged(draw, original: bytes, decode, encode):
    """A damaged version of a file: truncated, a bit flipped, garbage appended, or one
    value of its tree replaced by something of the wrong type or size."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "value", "value", "empty"]))
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "flip":
        pos = draw(st.integers(0, len(original) - 1))
        return original[:pos] + bytes([original[pos] ^ (1 << draw(st.integers(0, 7)))]) + original[pos + 1 :]
    if how == "append":
        return original + draw(st.binary(min_size=1, max_size=64))
    if how == "empty":
        return b""
    tree = decode(original)
    paths = list(_paths(tree))
    try:
        return encode(_replace(tree, draw(st.sampled_from(paths)), draw(weird)))
    except (OverflowError, TypeError, ValueError):  # not encodable (msgpack's int range): cut it instead
        return original[: len(original) // 2]


# ------------------------------------------------------------------ a populated instance, rebooted per attempt


@pytest.fixture
def populated(inst):
    log = inst.log
    log.create_topic("fz", partitions=2, ring_bytes=1 << 16, segment_bytes=1 << 16)
    log.create_topic("fe", persistence="none")
    with log.producer() as p:
        for i in range(RECORDS):
            p.send("fz", b"v%05d" % i + b"x" * 300, partition=i % 2)
        p.flush(durable=True)
    log.commit_offsets("g", {("fz", 0): COMMITTED}, durable=True)
    log.close()
    inst.kill_persister()
    inst.drop_shared_memory()
    return inst


def _restore_child(settings_, path):
    """A reboot's restore in a child: ('ok', topics) / ('shmlog', type, message) / ('foreign', traceback)."""
    try:
        log = Log(settings_, start_persister=False)
        try:
            res = ("ok", {t: len(log.describe_topic(t).partitions) for t in log.list_topics()})
        finally:
            log.close()
    except errors.ShmlogError as e:
        res = ("shmlog", type(e).__name__, str(e))
    except BaseException:
        res = ("foreign", traceback.format_exc())
    with open(path, "wb") as f:
        pickle.dump(res, f)


def _attempt(inst, tag):
    path = str(inst.tmp_path / f"attempt-{tag}.pkl")
    pr = multiprocessing.get_context("fork").Process(target=_restore_child, args=(inst.settings, path))
    pr.start()
    pr.join(ATTEMPT_S)
    if pr.is_alive():
        pr.kill()
        pr.join(5)
        res = ("hang", f"the restore did not finish within {ATTEMPT_S} s")
    elif not os.path.exists(path):
        res = ("crash", f"the restore died with exit code {pr.exitcode}")
    else:
        with open(path, "rb") as f:
            res = pickle.load(f)
        os.unlink(path)
    inst.drop_shared_memory()
    return res


def _intact(inst):
    """With the original files back, a reboot restores every record and the committed offset."""
    log = Log(inst.settings, start_persister=False)
    try:
        seen = []
        c = log.consumer()
        c.assign([("fz", 0, 0), ("fz", 1, 0)])
        for _ in range(50):
            seen += c.poll_batch(1000, timeout=0.1)
            if len(seen) >= RECORDS:
                break
        c.close()
        committed = log.committed_offsets("g").get(("fz", 0))
    finally:
        log.close()
        inst.drop_shared_memory()
    values = sorted(m.value[:6] for m in seen)
    assert values == sorted(b"v%05d" % i for i in range(RECORDS)), "records lost after a damaged metadata file"
    assert committed == COMMITTED, f"committed offset {committed} after a damaged metadata file"


def _fuzz_file(inst, rel, decode, encode, data, findings):
    path = os.path.join(inst.settings.data_dir, rel)
    original = open(path, "rb").read()
    bad = data.draw(damaged(original, decode, encode))
    with open(path, "wb") as f:
        f.write(bad)
    try:
        res = _attempt(inst, len(findings))
    finally:
        with open(path, "wb") as f:
            f.write(original)
    if res[0] not in ("ok", "shmlog"):
        findings.append((bad[:200], res))
    _intact(inst)
    return res


FUZZ = settings(
    max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def _report(findings):
    return "\n\n".join(f"content {bad!r}:\n{res[0]}: {res[-1]}" for bad, res in findings[:3])


def test_damaged_topics_json_is_a_clear_error_and_loses_nothing(populated):
    findings = []

    @FUZZ
    @given(st.data())
    def run(data):
        _fuzz_file(
            populated, os.path.join("meta", "topics.json"), json.loads, lambda t: json.dumps(t).encode(), data, findings
        )

    run()
    assert not findings, _report(findings)


def test_damaged_offsets_snapshot_is_a_clear_error_and_loses_nothing(populated):
    findings = []

    @FUZZ
    @given(st.data())
    def run(data):
        _fuzz_file(
            populated,
            os.path.join("meta", "offsets.msgpack"),
            msgspec.msgpack.decode,
            msgspec.msgpack.encode,
            data,
            findings,
        )

    run()
    assert not findings, _report(findings)


def test_topics_json_truncated_at_every_tenth_is_refused_or_restored(populated):
    """Deterministic companion of the fuzz test: the outcome is an error of
    shmlog.errors or a restore, and the data survives, at 10 cut points."""
    path = os.path.join(populated.settings.data_dir, "meta", "topics.json")
    original = open(path, "rb").read()
    outcomes = []
    for i in range(10):
        with open(path, "wb") as f:
            f.write(original[: len(original) * i // 10])
        try:
            outcomes.append(_attempt(populated, f"cut{i}"))
        finally:
            with open(path, "wb") as f:
                f.write(original)
    _intact(populated)
    # a cut topics.json is CorruptMetadata naming the file (issue 11 defect 14; every cut point
    # is that today), or a restore that succeeds; never a foreign exception
    bad = [
        o
        for o in outcomes
        if o[0] != "ok" and not (o[0] == "shmlog" and o[1] == "CorruptMetadata" and "topics.json" in o[2])
    ]
    assert not bad, f"topics.json load: outcomes {outcomes}"


# ------------------------------------------------------------------ supervisor.json and recovery.json

STATE = msgspec.json.encode(
    {
        "pid": 12345,
        "instance": "i",
        "data_dir": "/x",
        "shm_prefix": "p.",
        "admin_socket": "/x/admin.sock",
        "metrics_port": 9464,
        "kafka_port": None,
        "config": None,
        "started_ms": 1,
        "stopped_ms": 2,
        "clean": True,
        "workers": [{"name": "w", "replica": 0, "pid": 4242}],
    }
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_damaged_supervisor_json_reads_as_absent_or_valid(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("sj")
    s = shmlog.config.resolve("fz", str(d), "shmlogtest-fz.")
    bad = data.draw(damaged(STATE, json.loads, lambda t: json.dumps(t).encode()))
    (d / "supervisor.json").write_bytes(bad)
    st_ = daemons.read_supervisor_state(s)
    assert st_ is None or isinstance(st_, daemons.SupervisorState)
    assert daemons.running_pid(s) is None  # no socket: nobody answers


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        STATE[:40],
        b"\xff" * 64,
        b'{"pid": "x"}',
        b"[1, 2]",
        json.dumps({"pid": 2**70, "clean": "yes"}).encode(),
    ],
)
def test_supervisor_starts_over_a_damaged_state_file(inst, content):
    with open(daemons.supervisor_state_path(inst.settings), "wb") as f:
        f.write(content)
    proc = inst.start_supervisor()
    st_ = daemons.read_supervisor_state(inst.settings)
    assert st_ is not None and st_.pid == proc.pid  # rewritten whole
    inst.log.create_topic("after", persistence="none")  # and serving
    assert "after" in inst.log.list_topics()


PROGRESS = msgspec.json.encode({"pid": 1, "done": 3, "total": 9, "topic": "t", "partition": 2})


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_damaged_recovery_json_reads_as_absent_or_a_progress_record(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("rj")
    bad = data.draw(damaged(PROGRESS, json.loads, lambda t: json.dumps(t).encode()))
    (d / "recovery.json").write_bytes(bad)
    prog = read_recovery_progress(str(d))
    assert prog is None or (
        isinstance(prog, RecoveryProgress)
        and all(type(v) is int and v >= 0 for v in (prog.pid, prog.done, prog.total))
        and prog.done <= prog.total
        and (prog.topic is None or isinstance(prog.topic, str))
        and (prog.partition is None or type(prog.partition) is int)
    ), prog


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'"recovering"',
        b"7",
        b"null",
        b"\xff\xfe",
        b'{"pid": 1, "done": "3", "total": 9}',
        b'{"pid": 1, "done": 3}',
        b'{"pid": 1, "done": 9, "total": 3}',
        b'{"pid": -4, "done": 0, "total": 1}',
        b'{"pid": 1, "done": true, "total": 9}',
    ],
)
def test_a_damaged_recovery_json_is_no_progress_and_one_warning(tmp_path, caplog, content):
    """recovery.json is advisory: a damaged one is "no progress known" with one warning naming
    the file (not one per poll of `shmlog up`), and a good one written later reads again."""
    (tmp_path / "recovery.json").write_bytes(content)
    with caplog.at_level("WARNING", logger="shmlog"):
        for _ in range(5):  # `shmlog up` polls it every 0.1 s
            assert read_recovery_progress(str(tmp_path)) is None
    warned = [r for r in caplog.records if "recovery.json" in r.getMessage()]
    assert len(warned) == 1 and "damaged" in warned[0].getMessage(), [r.getMessage() for r in caplog.records]
    (tmp_path / "recovery.json").write_bytes(PROGRESS)
    assert read_recovery_progress(str(tmp_path)) == RecoveryProgress(pid=1, done=3, total=9, topic="t", partition=2)


@pytest.mark.parametrize(
    "content",
    [
        msgspec.msgpack.encode({"version": 1, "groups": {"g": 5}}),
        msgspec.msgpack.encode({"version": 1, "groups": {"g": [["fz", -1, 3, 0]]}}),
        msgspec.msgpack.encode({"version": 1, "groups": {"g": [["fz", 0, 2**64 - 1, 0]]}}),
        msgspec.msgpack.encode({"version": 1, "groups": {"g": [[None, 0, 3, 0]]}}),
        msgspec.msgpack.encode({"version": 1, "groups": {"x" * 300: [["fz", 0, 3, 0]]}}),
        msgspec.msgpack.encode({"version": 2, "groups": {}}),
        b"\x82\xa7version",
    ],
)
def test_wrong_offsets_snapshot_is_refused_naming_the_file(populated, content):
    """A well-formed but wrong snapshot: CorruptMetadata naming the file, no
    traceback, and with the original back the committed offset is there."""
    path = os.path.join(populated.settings.data_dir, "meta", "offsets.msgpack")
    original = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content)
    try:
        res = _attempt(populated, "wrong")
    finally:
        with open(path, "wb") as f:
            f.write(original)
    assert res[:2] == ("shmlog", "CorruptMetadata") and path in res[2], res
    _intact(populated)
