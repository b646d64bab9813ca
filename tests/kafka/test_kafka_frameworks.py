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


def _listener(inst):
    # small rings: the frameworks create several topics; durable (the default): changelogs compact
    return Kafka(inst, auto_create_topics=True, topic_defaults={"ring_bytes": 1 << 20})


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
    import sys
    from quixstreams import Application

    bootstrap, state_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = Application(
        broker_address=bootstrap,
        consumer_group="quix-count",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        processing_guarantee="at-least-once",
        commit_interval=0.2,
        loglevel="WARNING",
    )
    words = app.topic("words", key_deserializer="bytes", value_deserializer="bytes")
    counts = app.topic("counts", key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(words)

    def count_word(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return {"word": value.decode(), "n": n}

    sdf = sdf.apply(count_word, stateful=True)
    sdf.to_topic(counts)
    app.run(count=count, timeout=30)
    """
)


def test_quix_streams_stateful_count_with_a_compacted_changelog(inst, tmp_path):
    pytest.importorskip("quixstreams", reason="pip install quixstreams (the test extra)")
    k = _started(inst, "words", 40)
    try:
        log = k.log
        _run(QUIX_APP, [k.bootstrap, str(tmp_path / "state1"), "40"])
        changelogs = [t for t in log.list_topics() if t.startswith("changelog__")]
        assert changelogs, log.list_topics()
        for t in changelogs:  # natively: a compacted topic, as Quix asked (it was silently dropped before)
            cfg = log.describe_topic(t).config
            assert cfg.cleanup_policy == "compact" and cfg.partitions == 2, (t, cfg)
        want = {w: set(range(1, n + 1)) for w, n in _expected(40).items()}
        assert _counts_seen(_read_all(log, "counts", 40)) == want
        # a second run with its local state gone: the counts go on from the changelog's
        _send_words(log, "words", 10, start=40)
        _run(QUIX_APP, [k.bootstrap, str(tmp_path / "state2"), "10"])
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
