"""Kafka listener with real clients on loopback: kcat, kafka-python,
confluent-kafka, aiokafka, and (when Debian's Go toolchain and sarama are
installed) a sarama program. Records cross between Kafka clients and native
shmlog producers/consumers. Every wait is bounded; a test skips, with the
reason, only when its client is not installed."""

import asyncio
import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from kafka_util import kafka  # noqa: F401  (fixture)

KCAT = shutil.which("kcat")
need_kcat = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (Debian: apt-get install -y kcat)")


def kcat(kafka, *args, input=None, timeout=30):
    r = subprocess.run(
        [KCAT, "-b", kafka.bootstrap, *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def native_records(log, topic, partitions, n, timeout=10.0):
    got = []
    with log.consumer(auto_offset_reset="earliest") as c:
        c.assign([(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += c.poll_batch(1000, timeout=0.2)
    return got


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what() if callable(what) else what}")


# ------------------------------------------------------------ kcat


@need_kcat
@pytest.mark.conformance(client="kcat", feature="produce/consume")
@pytest.mark.conformance(client="kcat", feature="codecs")
def test_kcat_list_produce_consume_plain_and_gzip(kafka):
    kafka.log.create_topic("k", partitions=2, ring_bytes=1 << 16, persistence="none")
    meta = kcat(kafka, "-L")
    assert f"broker 0 at 127.0.0.1:{kafka.port} (controller)" in meta and 'topic "k" with 2 partitions' in meta
    kcat(kafka, "-P", "-t", "k", "-p", "0", "-K:", input="a:1\nb:2\n")
    kcat(kafka, "-P", "-t", "k", "-p", "1", "-z", "gzip", "-K:", input="c:3\nd:4\ne:5\n")
    out = kcat(kafka, "-C", "-t", "k", "-o", "beginning", "-e", "-f", "%p/%o %k=%s\n")
    assert sorted(out.splitlines()) == ["0/0 a=1", "0/1 b=2", "1/0 c=3", "1/1 d=4", "1/2 e=5"]
    # the gzip batch is stored compressed, exactly as kcat sent it; native consumers inflate it
    got = native_records(kafka.log, "k", 2, 5)
    assert sorted((m.partition, m.key, m.value) for m in got) == [
        (0, b"a", b"1"),
        (0, b"b", b"2"),
        (1, b"c", b"3"),
        (1, b"d", b"4"),
        (1, b"e", b"5"),
    ]


@need_kcat
@pytest.mark.conformance(client="kcat", feature="produce/consume")
def test_kcat_records_reach_native_consumers_and_back(kafka):
    kafka.log.create_topic("mix", ring_bytes=1 << 16, persistence="none")
    kcat(kafka, "-P", "-t", "mix", "-p", "0", "-K:", "-H", "trace=abc", "-H", "n=1", input="key1:value1\n")
    shown = kcat(kafka, "-C", "-t", "mix", "-o", "beginning", "-e", "-f", "%k|%s|%T|%h\n").splitlines()
    k, v, ts, hdrs = shown[0].split("|")
    (m,) = native_records(kafka.log, "mix", 1, 1)
    assert (m.key, m.value, m.timestamp_ms) == (b"key1", b"value1", int(ts))
    assert m.headers == (("trace", b"abc"), ("n", b"1")) and hdrs == "trace=abc,n=1"
    # native -> kcat: same key, value, headers and timestamp
    with kafka.log.producer() as p:
        p.send("mix", b"from-native", key=b"nk", headers={"h": b"v"}, partition=0, timestamp_ms=1_600_000_000_123)
    shown = kcat(kafka, "-C", "-t", "mix", "-o", "1", "-e", "-f", "%k|%s|%T|%h\n").splitlines()
    assert shown == ["nk|from-native|1600000000123|h=v"]


@need_kcat
@pytest.mark.conformance(client="kcat", feature="groups eager")
@pytest.mark.conformance(client="kcat", feature="commits")
def test_kcat_group_members_share_partitions_and_take_over_a_killed_one(kafka, tmp_path):
    kafka.log.create_topic("g", partitions=4, ring_bytes=1 << 16, persistence="none")
    outs = [open(tmp_path / f"m{i}.out", "w+") for i in range(2)]
    members = [
        subprocess.Popen(
            [
                KCAT,
                "-b",
                kafka.bootstrap,
                "-G",
                "kgrp",
                "g",
                "-o",
                "beginning",
                "-f",
                "%p %s\n",
                "-u",
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=500",
            ],
            stdout=outs[i],
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    try:

        def lines(i):
            outs[i].flush()
            return (tmp_path / f"m{i}.out").read_text().splitlines()

        def produce(tag):
            with kafka.log.producer() as p:
                for part in range(4):
                    p.send("g", f"{tag}{part}".encode(), partition=part)

        # both members joined and split the four partitions
        wait_for(
            lambda: (
                len(kafka.listener.groups.groups.get("kgrp").members) == 2
                if "kgrp" in kafka.listener.groups.groups
                else False
            ),
            30,
            "two kcat members",
        )
        wait_for(lambda: kafka.listener.groups.groups["kgrp"].state == "Stable", 30, "a stable group")
        produce("a")
        wait_for(lambda: len(lines(0)) + len(lines(1)) >= 4, 30, "the first records")
        first = [set(line.split()[0] for line in lines(i)) for i in range(2)]
        assert first[0] and first[1] and not first[0] & first[1]
        members[1].send_signal(signal.SIGKILL)
        members[1].wait(10)
        wait_for(lambda: len(kafka.listener.groups.groups["kgrp"].members) == 1, 30, "the dead member's expiry")
        produce("b")
        # at-least-once: partitions moved before a commit are read again from the start
        wait_for(
            lambda: {line for line in lines(0) if line.split()[1].startswith("b")} == {"0 b0", "1 b1", "2 b2", "3 b3"},
            40,
            lambda: f"the survivor to read every partition: {lines(0)}",
        )
    finally:
        for m in members:
            if m.poll() is None:
                m.send_signal(signal.SIGKILL)
                m.wait(10)
        for f in outs:
            f.close()


# ------------------------------------------------------------ kafka-python


@pytest.mark.conformance(client="kafka-python", feature="produce/consume")
@pytest.mark.conformance(client="kafka-python", feature="groups eager")
@pytest.mark.conformance(client="kafka-python", feature="commits")
@pytest.mark.conformance(client="kafka-python", feature="admin")
def test_kafka_python_defaults_group_commit_resume_and_admin(kafka):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    from kafka.admin import NewTopic

    admin = kp.KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic("kp", num_partitions=2, replication_factor=1)])
        assert kafka.log.describe_topic("kp").config.partitions == 2
        prod = kp.KafkaProducer(bootstrap_servers=kafka.bootstrap)  # defaults: idempotent, acks=all
        futs = [prod.send("kp", key=b"k%d" % i, value=b"v%d" % i) for i in range(20)]
        prod.flush(10)
        assert all(f.get(timeout=10).offset >= 0 for f in futs)
        prod.close(5)

        def consume(n):
            c = kp.KafkaConsumer(
                "kp",
                bootstrap_servers=kafka.bootstrap,
                group_id="kpg",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                consumer_timeout_ms=15000,
            )
            got = []
            for m in c:
                got.append(m.value)
                if len(got) == n:
                    break
            c.commit()
            c.close()
            return got

        assert sorted(consume(20)) == sorted(b"v%d" % i for i in range(20))
        committed = kafka.log.committed_offsets("kpg")
        assert sum(committed.values()) == 20
        prod = kp.KafkaProducer(bootstrap_servers=kafka.bootstrap)
        for i in range(20, 25):
            prod.send("kp", value=b"v%d" % i)
        prod.flush(10)
        prod.close(5)
        assert sorted(consume(5)) == sorted(b"v%d" % i for i in range(20, 25))  # resumed, nothing again
        admin.delete_topics(["kp"])
        assert "kp" not in kafka.log.list_topics()
    finally:
        admin.close()


# ------------------------------------------------------------ confluent-kafka


@pytest.mark.conformance(client="confluent-kafka", feature="produce/consume")
@pytest.mark.conformance(client="confluent-kafka", feature="groups eager")
@pytest.mark.conformance(client="confluent-kafka", feature="commits")
def test_confluent_kafka_delivery_reports_group_and_restart(kafka):
    ck = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
    kafka.log.create_topic("ck", partitions=3, ring_bytes=1 << 16, persistence="none")
    p = ck.Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    reports = []
    for i in range(30):
        p.produce(
            "ck",
            key=b"%d" % i,
            value=b"m%d" % i,
            headers=[("i", b"%d" % i)],
            on_delivery=lambda err, msg: reports.append((err, msg.partition(), msg.offset())),
        )
    assert p.flush(15) == 0
    assert len(reports) == 30 and all(e is None and o >= 0 for e, _, o in reports)

    def consume(n, commit_after):
        c = ck.Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": "ckg",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe(["ck"])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(m.value())
            if len(got) == commit_after:
                c.commit(asynchronous=False)
        c.close()
        return got

    first = consume(30, 30)
    assert sorted(first) == sorted(b"m%d" % i for i in range(30))
    for i in range(30, 36):
        p.produce("ck", value=b"m%d" % i)
    assert p.flush(15) == 0
    # a new consumer of the group starts from the committed offsets (validated by OffsetForLeaderEpoch)
    again = consume(6, 6)
    assert sorted(again) == sorted(b"m%d" % i for i in range(30, 36))
    # a seek that names a leader epoch is validated with OffsetForLeaderEpoch first
    c = ck.Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "ckg2"})
    c.assign([ck.TopicPartition("ck", 0, 0)])
    first = None
    deadline = time.monotonic() + 20
    while first is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        first = m if m is not None and not m.error() else None
    assert first is not None and first.leader_epoch() == 0
    c.seek(ck.TopicPartition("ck", 0, 2, leader_epoch=0))
    got = []
    while len(got) < 1 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.offset())
    c.close()
    assert got == [2] and kafka.listener.requests[23] > 0


# ------------------------------------------------------------ aiokafka


@pytest.mark.conformance(client="aiokafka", feature="produce/consume")
@pytest.mark.conformance(client="aiokafka", feature="groups eager")
@pytest.mark.conformance(client="aiokafka", feature="commits")
def test_aiokafka_produce_and_group_consume(kafka):
    aiokafka = pytest.importorskip("aiokafka", reason="pip install aiokafka")
    kafka.log.create_topic("ak", partitions=2, ring_bytes=1 << 16, persistence="none")

    async def run():
        prod = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await prod.start()
        try:
            for i in range(10):
                await prod.send_and_wait("ak", b"a%d" % i, key=b"%d" % i)
        finally:
            await prod.stop()
        cons = aiokafka.AIOKafkaConsumer(
            "ak", bootstrap_servers=kafka.bootstrap, group_id="akg", auto_offset_reset="earliest"
        )
        await cons.start()
        got = []
        try:
            async with asyncio.timeout(30) if hasattr(asyncio, "timeout") else _nullctx():
                async for m in cons:
                    got.append(m.value)
                    if len(got) == 10:
                        break
            await cons.commit()
        finally:
            await cons.stop()
        return got

    got = asyncio.run(asyncio.wait_for(run(), 60))
    assert sorted(got) == sorted(b"a%d" % i for i in range(10))
    assert sum(kafka.log.committed_offsets("akg").values()) == 10


class _nullctx:
    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


# ------------------------------------------------------------ groups shared with native consumers


@pytest.mark.conformance(client="kafka-python", feature="commits")
def test_kafka_commits_are_shmlog_group_offsets(kafka):
    kp = pytest.importorskip("kafka", reason="pip install kafka-python")
    kafka.log.create_topic("shared", ring_bytes=1 << 16, persistence="none")
    with kafka.log.producer() as p:
        p.send_batch("shared", [b"n%d" % i for i in range(10)], partition=0)
    c = kp.KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id="sg", enable_auto_commit=False)
    tp = kp.TopicPartition("shared", 0)
    c.assign([tp])
    c.commit({tp: kp.structs.OffsetAndMetadata(7, "", -1)})
    c.close()
    assert kafka.log.committed_offsets("sg") == {("shared", 0): 7}
    # and the reverse: a commit made through shmlog is what a Kafka client sees
    kafka.log.commit_offsets("sg", {("shared", 0): 4})
    c = kp.KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id="sg", enable_auto_commit=False)
    assert c.committed(tp) == 4
    c.close()
    # a native group consumer resumes where the Kafka client committed
    c = kp.KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id="sg", enable_auto_commit=False)
    c.assign([tp])
    c.commit({tp: kp.structs.OffsetAndMetadata(6, "", -1)})
    c.close()
    with kafka.log.consumer(
        group="sg", topics=["shared"], auto_offset_reset="earliest", enable_auto_commit=False
    ) as nc:
        m = nc.poll(timeout=10)
        assert m is not None and (m.offset, m.value) == (6, b"n6")
        nc.commit()
    assert kafka.log.describe_group("sg").partitions[0].committed == 7


# ------------------------------------------------------------ Go (sarama)

GOPATH = "/usr/share/gocode"
SARAMA = os.path.join(GOPATH, "src/github.com/Shopify/sarama")
need_sarama = pytest.mark.skipif(
    shutil.which("go") is None or not os.path.isdir(SARAMA),
    reason="Go client needs Debian's golang-go and golang-github-shopify-sarama-dev",
)

SARAMA_PROGRAM = textwrap.dedent("""
    package main

    import (
        "context"
        "fmt"
        "os"
        "time"

        "github.com/Shopify/sarama"
    )

    type handler struct{ got chan string }

    func (h handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
    func (h handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
    func (h handler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
        for m := range c.Messages() {
            s.MarkMessage(m, "")
            h.got <- string(m.Value)
        }
        return nil
    }

    func main() {
        broker, topic := os.Args[1], os.Args[2]
        cfg := sarama.NewConfig()
        cfg.Version = sarama.V1_0_0_0
        cfg.Producer.Return.Successes = true
        cfg.Producer.RequiredAcks = sarama.WaitForAll
        cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
        p, err := sarama.NewSyncProducer([]string{broker}, cfg)
        if err != nil { fmt.Println("producer:", err); os.Exit(1) }
        for i := 0; i < 5; i++ {
            part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(fmt.Sprintf("go%d", i))})
            if err != nil { fmt.Println("send:", err); os.Exit(1) }
            fmt.Printf("sent %d %d\\n", part, off)
        }
        p.Close()
        g, err := sarama.NewConsumerGroup([]string{broker}, "gogrp", cfg)
        if err != nil { fmt.Println("group:", err); os.Exit(1) }
        h := handler{got: make(chan string, 100)}
        ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
        defer cancel()
        go func() { for ctx.Err() == nil { g.Consume(ctx, []string{topic}, h) } }()
        n := 0
        for n < 5 {
            select {
            case v := <-h.got:
                fmt.Println("got", v)
                n++
            case <-ctx.Done():
                fmt.Println("timeout"); os.Exit(1)
            }
        }
        cancel()
        g.Close()
    }
""")


@need_sarama
@pytest.mark.conformance(client="sarama", feature="produce/consume")
@pytest.mark.conformance(client="sarama", feature="groups eager")
@pytest.mark.conformance(client="sarama", feature="commits")
def test_sarama_sync_producer_and_consumer_group(kafka, tmp_path):
    kafka.log.create_topic("go", ring_bytes=1 << 16, persistence="none")
    src = tmp_path / "src" / "saramatest"
    src.mkdir(parents=True)
    (src / "main.go").write_text(SARAMA_PROGRAM)
    env = dict(
        os.environ, GO111MODULE="off", GOPATH=f"{tmp_path}:{GOPATH}", GOFLAGS="", GOCACHE=str(tmp_path / "gocache")
    )
    exe = tmp_path / "saramatest"
    b = subprocess.run(
        ["go", "build", "-o", str(exe), "saramatest"], env=env, capture_output=True, text=True, timeout=400
    )
    if b.returncode != 0:
        pytest.fail(f"go build failed:\n{b.stderr[-3000:]}")
    r = subprocess.run([str(exe), kafka.bootstrap, "go"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(line for line in r.stdout.splitlines() if line.startswith("got")) == [f"got go{i}" for i in range(5)]
    assert kafka.log.committed_offsets("gogrp") == {("go", 0): 5}
