"""worker.py — the campaign's client processes: `python -m tools.chaos.worker KIND JSON`.

Owns: one process kind each (producer, consumer, member, kafka, admin,
readback), what it does through shmlog's public API, and the history it
writes (history.Writer, one file per launch). Every record carries a unique
id in its value: b"id=<worker>:<seq>|b=<boot>|g=<generation>|" + padding.

What an acknowledgement promises (what the checker holds each level to):
  "durable"  send_batch returned and then Producer.flush(durable=True)
             returned: the record is fsynced; it must survive every fault
             (kill -9 of anything, reboot = /dev/shm dropped, ENOSPC) until
             its topic is deleted or retention removes it.
  "ring"     send_batch returned (or a Kafka client got acks=1/all): the
             record is in the ring and visible; it must survive process
             kills, not a reboot that comes before the persister copied it
             (durable topic) and not a reboot or a ring lap (ephemeral).
A "read" is what a consumer returned: (partition, offset, id) under the
topic generation it saw before and after the poll.

Must never: use shmlog internals beyond the public API (topic_handle's
generation is how a process tells topic generations apart), or write an ack
line before the call that acknowledges returned.
"""

import json
import os
import random
import signal
import sys
import time

import shmlog
from shmlog import errors

from .history import Writer

stop = False


def _on_term(*_):
    global stop
    stop = True


def payload(wid: str, seq: int, boot: int, gen, pad: int) -> bytes:
    return f"id={wid}:{seq}|b={boot}|g={gen}|".encode() + b"x" * pad


def parse(value: bytes | None):
    """(id, boot, gen) of a campaign record; None for a value that is not one."""
    if not value or not value.startswith(b"id="):
        return None
    try:
        parts = value.split(b"|", 3)
        rid = parts[0][3:].decode()
        boot = int(parts[1][2:])
        g = parts[2][2:].decode()
        return rid, boot, (None if g == "None" else int(g))
    except (ValueError, IndexError, UnicodeDecodeError):
        return ("?" + value[:40].hex(), None, None)


def connect(a):
    return shmlog.connect(
        a["instance"], a["data_dir"], autostart=False, shm_prefix=a["shm_prefix"], unblock_timeout_ms=a["unblock_ms"]
    )


def gen_of(log, topic):
    try:
        return log.topic_handle(topic).generation
    except errors.ShmlogError:
        return None


def retrying_connect(a, h):
    while not stop:
        try:
            return connect(a)
        except errors.ShmlogError as e:
            h.event("err", op="connect", err=type(e).__name__, msg=str(e)[:200])
            time.sleep(0.2)
    sys.exit(0)


# ------------------------------------------------------------------ producer


def producer(a, h):
    rng = random.Random(a["seed"])
    log = retrying_connect(a, h)
    p = log.producer(max_block_ms=a.get("max_block_ms", 2000))
    seq = 0
    wid = a["wid"]
    while not stop:
        topic = rng.choice(a["topics"])
        try:
            h0 = log.topic_handle(topic)
            durable = h0.config.persistence == "disk"
            part = rng.randrange(h0.partitions)
            n = rng.randint(1, 20)
            values = [payload(wid, seq + i, a["boot"], h0.generation, rng.randint(0, 200)) for i in range(n)]
            t0 = time.time()
            md = p.send_batch(topic, values, partition=part)[0]
            g2 = gen_of(log, topic)
            base = dict(
                topic=topic,
                boot=a["boot"],
                gen=h0.generation,
                gen2=g2,
                p=md.partition,
                off=md.base_offset,
                w=wid,
                s0=seq,
                n=n,
                t0=t0,
            )
            seq += n
            h.event("ack", lvl="ring", **base)
            if durable:
                p.flush(durable=True, timeout=a.get("flush_timeout", 10.0))
                h.event("ack", lvl="durable", **base)
        except (errors.UnknownTopicOrPartition, errors.Closed) as e:
            h.event("err", op="send", topic=topic, err=type(e).__name__, msg=str(e)[:200])
            p.close()
            p = log.producer(max_block_ms=a.get("max_block_ms", 2000))
            time.sleep(0.05)
        except errors.ShmlogError as e:
            h.event("err", op="send", topic=topic, err=type(e).__name__, msg=str(e)[:200])
            time.sleep(0.05)
        time.sleep(a.get("pause", 0.002))


# ------------------------------------------------------------------ consumers


def _record_reads(h, a, kind, topic, g0, g1, sess, msgs, group=None):
    recs = []
    for m in msgs:
        pid = parse(m.value)
        recs.append([m.partition, m.offset] + (list(pid) if pid else ["?", None, None]))
    if recs:
        h.event("read", kind=kind, topic=topic, boot=a["boot"], gen=g0, gen2=g1, sess=sess, group=group, recs=recs)


def consumer(a, h):
    """A consumer without a group reading every partition of one topic from
    the earliest offset; poll() one record at a time or poll_batch."""
    rng = random.Random(a["seed"])
    log = retrying_connect(a, h)
    topic = a["topic"]
    sess = 0
    c = None
    parts = c_gen = None
    while not stop:
        try:
            hd = log.topic_handle(topic)
            if c is None or hd.partitions != parts or hd.generation != c_gen:
                if c is not None:
                    c.close()
                c = log.consumer(topics=[topic], auto_offset_reset="earliest")
                parts, c_gen = hd.partitions, hd.generation
                sess += 1
                h.event("sess", kind="consumer", topic=topic, boot=a["boot"], gen=c_gen, sess=sess, parts=parts)
            g0 = gen_of(log, topic)
            if rng.random() < 0.5:
                msgs = c.poll_batch(rng.choice([1, 10, 100]), timeout=0.3)
            else:
                msgs = []
                deadline = time.monotonic() + 0.3
                while len(msgs) < 50 and time.monotonic() < deadline:
                    m = c.poll(timeout=0.05)
                    if m is not None:
                        msgs.append(m)
            g1 = gen_of(log, topic)
            _record_reads(h, a, "consumer", topic, g0, g1, sess, msgs)
        except errors.CorruptRecord as e:
            h.event("refused", topic=topic, boot=a["boot"], sess=sess, msg=str(e)[:300])
            c = None
            time.sleep(0.5)
        except errors.ShmlogError as e:
            c = _drop_consumer(h, c, topic, e)


def _drop_consumer(h, c, topic, e):
    """A poll failed with e: record it, close the consumer (it is made anew), pause a little."""
    h.event("err", op="poll", topic=topic, err=type(e).__name__, msg=str(e)[:200])
    try:
        if c is not None:
            c.close()
    except errors.ShmlogError:
        pass
    time.sleep(0.1)
    return None


def member(a, h):
    """A consumer-group member: poll, then commit(durable=True) what it read
    (at-least-once: a record is redelivered only above the last commit)."""
    rng = random.Random(a["seed"])
    log = retrying_connect(a, h)
    topic, group = a["topic"], a["group"]
    state = {"sess": 0}

    def changed(_c, tps):
        state["sess"] += 1

    c = None
    while not stop:
        try:
            if c is None:
                c = log.consumer(
                    group=group,
                    topics=[topic],
                    auto_offset_reset="earliest",
                    enable_auto_commit=False,
                    session_timeout_ms=3000,
                    heartbeat_interval_ms=300,
                    on_assign=changed,
                    on_revoke=changed,
                    on_lost=changed,
                )
                state["sess"] += 1
            g0 = gen_of(log, topic)
            msgs = c.poll_batch(rng.choice([10, 100]), timeout=0.3)
            g1 = gen_of(log, topic)
            _record_reads(h, a, "member", topic, g0, g1, state["sess"], msgs, group=group)
            if msgs:
                last = {}
                for m in msgs:
                    last[m.partition] = m.offset + 1
                c.commit({(topic, p): o for p, o in last.items()}, durable=True)
                h.event(
                    "commit",
                    group=group,
                    topic=topic,
                    boot=a["boot"],
                    gen=g0,
                    gen2=gen_of(log, topic),
                    offs={str(p): o for p, o in last.items()},
                )
        except errors.CommitFailed as e:
            h.event("err", op="commit", err=type(e).__name__, msg=str(e)[:200])
        except errors.CorruptRecord as e:
            h.event("refused", topic=topic, boot=a["boot"], sess=state["sess"], msg=str(e)[:300])
            time.sleep(0.5)
        except errors.ShmlogError as e:
            c = _drop_consumer(h, c, topic, e)


# ------------------------------------------------------------------ Kafka client


def kafka(a, h):
    """kafka-python against the listener: gzip batches of many small records
    (what librdkafka and the JVM client send). acks=1: "in the ring"."""
    import logging

    logging.disable(logging.CRITICAL)
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    rng = random.Random(a["seed"])
    wid, seq = a["wid"], 0
    prod = None
    while not stop:
        try:
            if prod is None:
                prod = KafkaProducer(
                    bootstrap_servers=f"127.0.0.1:{a['port']}",
                    acks=1,
                    compression_type="gzip",
                    linger_ms=20,
                    batch_size=32768,
                    retries=0,
                    request_timeout_ms=3000,
                    max_block_ms=3000,
                )
            n = rng.randint(50, 400)
            t0 = time.time()
            s0, seq = seq, seq + n  # ids are never reused, even when this batch fails
            futs = [
                (s0 + i, prod.send(a["topic"], payload(wid, s0 + i, a["boot"], None, rng.randint(0, 30))))
                for i in range(n)
            ]
            prod.flush(timeout=5)
            acks = []
            for s, f in futs:
                try:
                    md = f.get(timeout=0)
                    acks.append((s, md.partition, md.offset))
                except KafkaError as e:
                    h.event("err", op="kafka-send", err=type(e).__name__, msg=str(e)[:200])
            if acks:
                h.event("kack", lvl="ring", topic=a["topic"], boot=a["boot"], w=wid, t0=t0, recs=acks)
        except Exception as e:  # kafka-python raises many kinds while the listener is down
            h.event("err", op="kafka", err=type(e).__name__, msg=str(e)[:200])
            try:
                if prod is not None:
                    prod.close(timeout=0.5)
            except Exception:
                pass
            prod = None
            time.sleep(0.3)


# ------------------------------------------------------------------ admin and read-back


def describe_all(log):
    out = {}
    for t in log.list_topics():
        try:
            d = log.describe_topic(t)
        except errors.ShmlogError:
            continue
        out[t] = {
            "gen": d.generation,
            "persistence": d.config.persistence,
            "partitions": len(d.partitions),
            "start": [pi.log_start_offset for pi in d.partitions],
            "end": [pi.end_offset for pi in d.partitions],
            "offline": [pi.offline_offset for pi in d.partitions],
        }  # quarantined from that offset
    return out


def admin(a, h):
    """One admin request, or a list of them (a["ops"]), then a describe of every topic.
    Exit status 1 when a request failed (TopicExists for an "ensure" excepted)."""
    log = connect(a)
    failed = False
    for req in a.get("ops") or [a]:
        op = req["op"]
        t0 = time.time()
        if a.get("marker"):
            open(a["marker"], "w").close()  # the campaign times a supervisor kill from here
        try:
            if op in ("create", "ensure"):
                try:
                    log.create_topic(req["topic"], **req["config"])
                except errors.TopicExists:
                    if op == "create":
                        raise
            elif op == "delete":
                log.delete_topic(req["topic"])
            elif op == "alter":
                log.alter_topic(req["topic"], **req["changes"])
            elif op != "describe":
                raise ValueError(f"unknown admin op {op!r}")
            res = {"ok": True}
        except errors.ShmlogError as e:
            res = {"ok": False, "err": type(e).__name__, "msg": str(e)[:300]}
            failed = True
        h.event(
            "admin",
            op="create" if op == "ensure" else op,
            topic=req.get("topic"),
            boot=a["boot"],
            t0=t0,
            **res,
            args={k: req[k] for k in ("config", "changes") if k in req},
        )
    h.event("describe", boot=a["boot"], topics=describe_all(log))
    if failed:
        sys.exit(1)


def _segment_bases(log, topic, p):
    d = log.partition_dir(topic, p)  # topics/<topic>@<id>/<p>/
    try:
        return sorted(int(n[:-4]) for n in os.listdir(d) if n.endswith(".log") and n[:-4].isdigit())
    except FileNotFoundError:
        return []


def readback(a, h):
    """Every record of every topic from its log start to its end, after the
    faults stopped. A refusal (CorruptRecord) is recorded and the read goes on
    at the next segment file (the documented data-dir layout)."""
    log = connect(a)
    topics = describe_all(log)
    h.event("describe", boot=a["boot"], topics=topics, final=True)
    for topic, d in topics.items():
        for p in range(d["partitions"]):
            start, end = d["start"][p], d["end"][p]
            pos = start
            c = log.consumer()
            c.assign([(topic, p, pos)])
            idle = time.monotonic()
            while pos < end:
                try:
                    msgs = c.poll_batch(1000, timeout=0.5)
                    stuck = not msgs and time.monotonic() - idle > 5
                    err = None
                except errors.CorruptRecord as e:
                    msgs, stuck, err = [], True, e
                if stuck:
                    # a refusal names the damage; no progress and no error for 5 s is a silent
                    # stall: either way the read goes on at the next segment file, if any
                    nxt = [b for b in _segment_bases(log, topic, p) if b > pos]
                    h.event(
                        "refused" if err else "stuck",
                        topic=topic,
                        boot=a["boot"],
                        p=p,
                        at=pos,
                        next=nxt[0] if nxt else None,
                        msg=str(err)[:300] if err else None,
                    )
                    if not nxt:
                        break
                    pos = nxt[0]
                    c.close()
                    c = log.consumer()
                    c.assign([(topic, p, pos)])
                    idle = time.monotonic()
                    continue
                if msgs:
                    idle = time.monotonic()
                    pos = msgs[-1].offset + 1
                    _record_reads(h, a, "readback", topic, d["gen"], d["gen"], 0, msgs)
            c.close()
    h.event("done")


KINDS = {
    "producer": producer,
    "consumer": consumer,
    "member": member,
    "kafka": kafka,
    "admin": admin,
    "readback": readback,
}


def main():
    kind, a = sys.argv[1], json.loads(sys.argv[2])
    signal.signal(signal.SIGTERM, _on_term)
    h = Writer(a["history"])
    h.event("start", kind=kind, pid=os.getpid(), wid=a.get("wid"), boot=a["boot"])
    KINDS[kind](a, h)
    h.event("exit")


if __name__ == "__main__":
    main()
