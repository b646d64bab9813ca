"""Kafka stream-processing frameworks against the listener (issue 14, "Why"):
Quix Streams (it reads retention.ms, retention.bytes and cleanup.policy with
DescribeConfigs in app.topic(), and creates its state changelogs with
cleanup.policy=compact) and Faust (its table changelogs are compacted too),
each a real process running a stateful count at least once. Checked from
outside: the output records against the input, and natively that the
changelogs are compacted topics. A second run with its local state wiped
recovers the counts from the changelog. Each run is bounded (< 60 s)."""

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from kafka_util import Kafka

DEADLINE_S = 60
WORDS = [b"apple", b"pear", b"plum", b"fig", b"kiwi"]


def _listener(inst, **options):
    # small rings: the frameworks create several topics; durable (the default): changelogs compact
    return Kafka(inst, auto_create_topics=True, topic_defaults={"ring_bytes": 1 << 20}, **options)


def _send_words(log, topic, n, start=0):
    with log.producer() as p:
        for i in range(start, start + n):
            w = WORDS[i % len(WORDS)]
            p.send(topic, w, key=w)
        p.flush()


def _expected(n):
    return collections.Counter(WORDS[i % len(WORDS)] for i in range(n))


def _read_all(log, topic, want, timeout=20):
    """Every record of topic (all partitions) once want records are there."""
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([(topic, p) for p in range(log.describe_topic(topic).config.partitions)])
        out, deadline = [], time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            out += c.poll_batch(max_messages=10_000, timeout=0.2)
        return out


def _counts_seen(out) -> dict[bytes, set[int]]:
    """{word: every count the app emitted for it}: 1..n each, duplicates allowed (at least once)."""
    seen: dict[bytes, set[int]] = collections.defaultdict(set)
    for m in out:
        v = json.loads(m.value)
        seen[v["word"].encode()].add(v["n"])
    return dict(seen)


def _started(inst, topic, n):
    """A listener, and n words in a new 2-partition topic."""
    k = _listener(inst)
    k.log.create_topic(topic, partitions=2, ring_bytes=1 << 20)
    _send_words(k.log, topic, n)
    return k


def _run(script, args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    r = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=DEADLINE_S, env=env
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-8000:]}"
    return r


# ------------------------------------------------------------ Quix Streams

QUIX_APP = textwrap.dedent(
    """
    import sys, time
    from quixstreams import Application

    bootstrap, state_dir, count, guarantee, src, dst, slow = sys.argv[1:8]
    windowed = guarantee == "exactly-once"
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{guarantee}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        processing_guarantee=guarantee,
        commit_interval=0.2 if not windowed else 0.3,
        loglevel="WARNING",
        # exactly once across restarts needs a stable transactional.id (Quix draws a random one):
        # the restarted app's init_transactions then fences the killed one and aborts what it left
        producer_extra_config={"transactional.id": "quix-eos-app"} if windowed else None,
    )
    words = app.topic(src, key_deserializer="bytes", value_deserializer="bytes")
    counts = app.topic(dst, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(words)

    def pace(value):
        time.sleep(float(slow))  # the work a real service does: a kill lands mid-run
        return value

    def count_word(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return {"word": value.decode(), "n": n}

    if windowed:  # a windowed stateful count: one-hour tumbling windows, every update emitted
        sdf = sdf.apply(pace).tumbling_window(duration_ms=3_600_000).count().current()
        sdf = sdf.apply(lambda w: {"n": w["value"]})
    else:
        sdf = sdf.apply(count_word, stateful=True)
    sdf.to_topic(counts)
    if int(count):
        app.run(count=int(count), timeout=30)
    else:
        app.run(timeout=4)
    """
)


def test_quix_streams_stateful_count_with_a_compacted_changelog(inst, tmp_path):
    pytest.importorskip("quixstreams", reason="pip install quixstreams (the test extra)")
    k = _started(inst, "words", 40)
    try:
        log = k.log
        _run(QUIX_APP, [k.bootstrap, str(tmp_path / "state1"), "40", "at-least-once", "words", "counts", "0"])
        changelogs = [t for t in log.list_topics() if t.startswith("changelog__")]
        assert changelogs, log.list_topics()
        for t in changelogs:  # natively: a compacted topic, as Quix asked (it was silently dropped before)
            cfg = log.describe_topic(t).config
            assert cfg.cleanup_policy == "compact" and cfg.partitions == 2, (t, cfg)
        want = {w: set(range(1, n + 1)) for w, n in _expected(40).items()}
        assert _counts_seen(_read_all(log, "counts", 40)) == want
        # a second run with its local state gone: the counts go on from the changelog's
        _send_words(log, "words", 10, start=40)
        _run(QUIX_APP, [k.bootstrap, str(tmp_path / "state2"), "10", "at-least-once", "words", "counts", "0"])
        want = {w: set(range(1, n + 1)) for w, n in _expected(50).items()}
        assert _counts_seen(_read_all(log, "counts", 50)) == want
    finally:
        k.stop()


# ------------------------------------------------------------ Faust

FAUST_APP = textwrap.dedent(
    """
    import asyncio, json, os
    import faust

    bootstrap, data_dir = os.environ["T_BOOTSTRAP"], os.environ["T_DATA_DIR"]
    want = int(os.environ["T_WANT"])
    app = faust.App(
        "faust-count",
        broker=f"kafka://{bootstrap}",
        datadir=data_dir,
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=2,
        topic_replication_factor=1,
        web_enabled=False,
        broker_commit_interval=0.2,
    )
    words = app.topic("fwords", key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    counts = app.Table("fcounts", default=int, partitions=2)
    seen = {"n": 0}

    @app.agent(words)
    async def count(stream):
        async for key, value in stream.items():
            counts[key.decode()] += 1
            seen["n"] += 1
            if seen["n"] >= want:
                print("COUNTS=" + json.dumps(dict(counts.items())), flush=True)  # faust logs stdout
                # past a commit interval: the offsets and the changelog are written; then stop hard
                asyncio.get_event_loop().call_later(1.0, os._exit, 0)

    app.main()
    """
)


def test_faust_table_app_at_least_once_with_a_compacted_changelog(inst, tmp_path):
    pytest.importorskip("faust", reason="pip install faust-streaming (the test extra)")
    k = _started(inst, "fwords", 30)
    try:
        log = k.log
        env = {"T_BOOTSTRAP": k.bootstrap, "T_DATA_DIR": str(tmp_path / "faust"), "T_WANT": "30"}
        r = _run(FAUST_APP, ["worker", "-l", "warn"], env)
        line = [x for x in (r.stdout + r.stderr).splitlines() if "COUNTS=" in x]
        assert line, r.stdout[-2000:] + r.stderr[-4000:]
        got = json.loads(line[-1].split("COUNTS=", 1)[1])
        assert got == {w.decode(): n for w, n in _expected(30).items()}
        changelog = log.describe_topic("faust-count-fcounts-changelog").config
        assert changelog.cleanup_policy == "compact", changelog
    finally:
        k.stop()


# ------------------------------------------------------------ Quix Streams, exactly once

EOS_ARGS = ("exactly-once", "ewords", "ecounts")


def test_quix_streams_exactly_once_windowed_count_survives_kill_9(inst, tmp_path):
    """processing_guarantee="exactly-once": transactional producer, read_committed
    consumer, offsets sent in the transaction. Killed -9 mid-run, restarted with
    its local state gone (recovered from the changelog): a read_committed reader
    of the output sees every count 1..n of every word exactly once."""
    pytest.importorskip("quixstreams", reason="pip install quixstreams (the test extra)")
    n = 120
    k = _listener(inst, group_initial_rebalance_delay_ms=100)
    try:
        log = k.log
        log.create_topic("ewords", partitions=2, ring_bytes=1 << 20)
        _send_words(log, "ewords", n)
        env = {**os.environ}
        first = subprocess.Popen(
            [sys.executable, "-c", QUIX_APP, k.bootstrap, str(tmp_path / "s1"), "0", *EOS_ARGS, "0.02"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + DEADLINE_S
            committed = 0
            while committed < n // 3:  # some transactions committed, the rest to do
                assert first.poll() is None, first.stdout.read().decode()[-4000:]
                assert time.monotonic() < deadline, "the first run committed nothing"
                time.sleep(0.2)
                committed = sum(log.committed_offsets("quix-exactly-once").values())
        finally:
            first.kill()  # kill -9, mid-transaction most likely
            first.wait(10)
        assert committed < n
        _run(QUIX_APP, [k.bootstrap, str(tmp_path / "s2"), "0", *EOS_ARGS, "0"])  # fresh state: the changelog restores
        assert sum(log.committed_offsets("quix-exactly-once").values()) == n
        with log.consumer(auto_offset_reset="earliest", isolation_level="read_committed") as c:
            c.assign([("ecounts", p) for p in range(log.describe_topic("ecounts").config.partitions)])
            out = []
            while True:
                b = c.poll_batch(10_000, timeout=0.5)
                if not b:
                    break
                out += b
        seen = collections.defaultdict(list)
        for m in out:
            seen[m.key].append(json.loads(m.value)["n"])
        want = _expected(n)
        assert {w: sorted(v) for w, v in seen.items()} == {w: list(range(1, c + 1)) for w, c in want.items()}
        with log.consumer(auto_offset_reset="earliest", isolation_level="read_uncommitted") as c:
            c.assign([("ecounts", p) for p in range(log.describe_topic("ecounts").config.partitions)])
            dirty = 0
            while True:
                b = c.poll_batch(10_000, timeout=0.5)
                if not b:
                    break
                dirty += len(b)
        assert dirty >= len(out)
    finally:
        k.stop()
