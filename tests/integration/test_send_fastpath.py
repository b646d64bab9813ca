"""test_send_fastpath.py — Producer.send and Consumer.poll have express cases
in C (csrc/fastpath.c ProducerBase.send, ConsumerBase.poll; issue 13.2). The
express case must behave exactly as the general path: the same partitions,
offsets and errors for every way of calling, and it must step aside whenever
its preconditions do not hold (a key, headers, a timestamp, a bytes-like
that is not bytes, a bool or out-of-range partition, a closed producer, a
deleted topic, a compacted topic, a transaction, a forked child, a full
ring)."""

import time

import pytest

import shmlog
from shmlog import errors


def _read_all(log, topic, n, timeout=5.0):
    c = log.consumer([topic], auto_offset_reset="earliest")
    out, end = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        out += c.poll_batch(10_000, timeout=0.2)
    c.close()
    return out


def test_every_calling_form_lands_where_the_general_path_puts_it(inst):
    log = inst.log
    log.create_topic("f", partitions=3, ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    mds = [
        p.send("f", b"a", partition=1),
        p.send("f", b"b", None, None, 1, None),  # all six positionally
        p.send(topic="f", value=b"c", partition=1),
        p.send("f", value=b"d", partition=1, key=None, headers=None, timestamp_ms=None),
        p.send("f", bytearray(b"e"), partition=1),  # bytes-like: the general path
        p.send("f", b"g", key=b"k"),  # keyed: murmur2
        p.send("f", b"h", headers=[("x", b"1")], partition=1),
        p.send("f", b"i", partition=1, timestamp_ms=12345),
        p.send("f", None, partition=1),  # a null value
    ]
    assert all(type(m) is shmlog.RecordMetadata and m.topic == "f" for m in mds)
    on1 = [m.offset for m in mds if m.partition == 1]
    assert on1 == list(range(len(on1))), on1
    got = {(m.partition, m.offset): m for m in _read_all(log, "f", len(mds))}
    for md, want in zip(mds, [b"a", b"b", b"c", b"d", b"e", b"g", b"h", b"i", None]):
        assert got[(md.partition, md.offset)].value == want
    assert got[(mds[6].partition, mds[6].offset)].headers == (("x", b"1"),)
    assert got[(mds[7].partition, mds[7].offset)].timestamp_ms == 12345
    p.close()


def test_bad_calls_raise_what_the_general_path_raises(inst):
    log = inst.log
    log.create_topic("b", partitions=2, ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    p.send("b", b"warm", partition=0)  # the writer is open: later calls find express contexts
    with pytest.raises(TypeError):
        p.send("b", b"x", partiton=0)
    with pytest.raises(TypeError):
        p.send("b", b"x", 0, None, 0, None, "extra")
    with pytest.raises(TypeError):
        p.send("b", b"x", value=b"y")
    with pytest.raises(TypeError):
        p.send()
    with pytest.raises(errors.InvalidType):
        p.send("b", b"x", partition=True)
    with pytest.raises(errors.InvalidType):
        p.send("b", b"x", partition=0.0)
    with pytest.raises(errors.InvalidType):
        p.send("b", "text", partition=0)
    for bad in (-1, 2, 2**70):
        with pytest.raises(errors.UnknownTopicOrPartition):
            p.send("b", b"x", partition=bad)
    with pytest.raises(errors.UnknownTopicOrPartition):
        p.send("nope", b"x")
    with pytest.raises(errors.InvalidArgument):
        p.send("b", b"x", partition=0, timestamp_ms=-5)
    with pytest.raises(errors.RecordTooLarge):
        p.send("b", b"x" * (2 << 20), partition=0)
    assert [m.value for m in _read_all(log, "b", 1)] == [b"warm"]  # nothing else was written
    p.close()
    with pytest.raises(errors.Closed):
        p.send("b", b"x", partition=0)
    with pytest.raises(errors.Closed):
        p.send("b", b"x")


def test_keyless_sends_stick_to_a_partition_then_move_on(inst):
    log = inst.log
    log.create_topic("s", partitions=4, ring_bytes=4 << 20, persistence="none")
    p = log.producer()
    parts = [p.send("s", b"x" * 1000).partition for _ in range(400)]
    runs = [parts[0]]
    for q in parts[1:]:
        if q != runs[-1]:
            runs.append(q)
    # the sticky partition takes STICKY_BYTES (16 KiB) of values, then moves to another one
    assert len(runs) >= 10 and all(a != b for a, b in zip(runs, runs[1:])), runs
    counts = {q: parts.count(q) for q in set(parts)}
    assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 200, counts
    p.close()


def test_deleted_and_recreated_topic(inst):
    log = inst.log
    log.create_topic("d", partitions=1, ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    assert p.send("d", b"1").offset == 0
    log.delete_topic("d")
    with pytest.raises((errors.TopicDeleted, errors.UnknownTopicOrPartition)):
        p.send("d", b"2")
    log.create_topic("d", partitions=1, ring_bytes=1 << 20, persistence="none")
    assert p.send("d", b"3").offset == 0
    assert [m.value for m in _read_all(log, "d", 1)] == [b"3"]
    p.close()


def test_compacted_topic_keyless_send_refused_by_every_form(inst):
    log = inst.log
    log.create_topic("c", partitions=1, ring_bytes=1 << 20, persistence="disk", cleanup_policy="compact")
    p = log.producer()
    assert p.send("c", b"v", key=b"k").offset == 0
    for call in (lambda: p.send("c", b"v"), lambda: p.send("c", b"v", partition=0)):
        with pytest.raises(errors.InvalidArgument, match="without key"):
            call()
    p.close()


def test_transactional_send_goes_through_the_transaction(inst):
    log = inst.log
    log.create_topic("x", partitions=1, ring_bytes=1 << 20, persistence="none")
    p = log.producer(transactional_id="fast-tx")
    p.init_transactions()
    with pytest.raises(errors.InvalidTxnState):
        p.send("x", b"outside", partition=0)
    p.begin_transaction()
    p.send("x", b"in", partition=0)
    p.commit_transaction()
    with pytest.raises(errors.InvalidTxnState):  # the context is parked again: not express
        p.send("x", b"after", partition=0)
    assert [m.value for m in _read_all(log, "x", 1)] == [b"in"]
    p.close()


def _child_sends(kwargs, n):
    log = shmlog.connect(**kwargs)
    p = PRODUCER  # the parent's producer, inherited through fork
    offs = [p.send("k", b"child", partition=0).offset for _ in range(n)]
    log.close()
    return offs


PRODUCER = None


def test_forked_child_sends_with_its_own_slot(inst):
    global PRODUCER
    log = inst.log
    log.create_topic("k", partitions=1, ring_bytes=1 << 20, persistence="none")
    PRODUCER = log.producer()
    PRODUCER.send("k", b"parent", partition=0)
    child = inst.spawn("child", _child_sends, inst.kwargs, 50)
    res = inst.collect([child], time.monotonic() + 30)
    assert res["child"] == list(range(1, 51))
    assert PRODUCER.send("k", b"parent2", partition=0).offset == 51
    vals = [m.value for m in _read_all(log, "k", 52)]
    assert vals == [b"parent"] + [b"child"] * 50 + [b"parent2"]
    PRODUCER.close()
    PRODUCER = None


def test_full_block_ring_times_out_through_the_express_partition(inst):
    log = inst.log
    log.create_topic("full", partitions=1, ring_bytes=1 << 20, persistence="none", overflow="block")
    c = log.consumer(["full"], auto_offset_reset="earliest")
    assert c.poll(0) is None  # attached: it holds the producer back
    p = log.producer(max_block_ms=200)
    sent = 0
    t0 = time.monotonic()
    with pytest.raises(errors.BufferFull):
        while time.monotonic() - t0 < 10:
            p.send("full", sent.to_bytes(8, "little") * 100)
            sent += 1
    assert sent > 100
    got = []
    while (m := c.poll(0.2)) is not None:
        got.append(int.from_bytes(m.value[:8], "little"))
    assert got == list(range(sent)), "a record was lost or reordered"
    p.close()
    c.close()


def test_poll_express_case_steps_aside_for_views_and_groups(inst):
    log = inst.log
    log.create_topic("v", partitions=1, ring_bytes=1 << 20, persistence="none", overflow="block")
    p = log.producer()
    for i in range(100):
        p.send("v", b"%03d" % i, partition=0)
    c = log.consumer(["v"], auto_offset_reset="earliest", copy=False)
    got = [c.poll(1.0) for _ in range(100)]  # one read decoded them: their views live until the next read
    assert [bytes(m.value) for m in got] == [b"%03d" % i for i in range(100)]
    assert c.poll(0) is None  # the next read releases every view first (the Python path)
    with pytest.raises(ValueError):
        bytes(got[0].value)
    c.close()
    g = log.consumer(["v"], group="gx", auto_offset_reset="earliest", enable_auto_commit=False)
    vals = []
    end = time.monotonic() + 10
    while len(vals) < 100 and time.monotonic() < end:
        m = g.poll(0.5)
        if m is not None:
            vals.append(m.value)
    assert vals == [b"%03d" % i for i in range(100)]
    g.close()
    p.close()


class _Bytes(bytes):
    pass


def test_send_batch_packs_every_item_kind_exactly_once(inst):
    """send_batch packs exact bytes and None in one C pass (_fastpath.pack);
    any other item (bytearray, memoryview, a bytes subclass) goes the general
    packing; mixed batches, null values and keys, tuples and empty values all
    come back byte for byte."""
    from shmlog._fastpath import pack

    log = inst.log
    log.create_topic("sb", partitions=1, ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    big = bytes(range(256)) * 300
    batches = [
        [b"a", b"", None, b"bc", big],
        (b"t1", None, b"t2"),  # a tuple
        type("L", (list,), {})([b"l1", b"l2"]),  # a list subclass
        [b"x", bytearray(b"ba"), memoryview(b"mv"), _Bytes(b"sub"), None],  # general packing
        [None, None],
    ]
    for vals in batches:
        p.send_batch("sb", vals, partition=0)
    p.send_batch("sb", [b"v1", b"v2", None], keys=[b"k1", None, b"k3"], partition=0)
    want = [bytes(v) if v is not None else None for vals in batches for v in vals] + [b"v1", b"v2", None]
    got = _read_all(log, "sb", len(want))
    assert [m.value for m in got] == want
    assert [m.key for m in got[-3:]] == [b"k1", None, b"k3"]
    assert [m.offset for m in got] == list(range(len(want)))
    # the C pass itself: exact bytes and None only, lengths as int64, -1 for None
    blob, lens = pack([b"ab", None, b"", b"cde"])
    assert blob == b"abcde" and list(memoryview(lens).cast("q")) == [2, -1, 0, 3]
    assert pack([b"a", bytearray(b"b")]) is None and pack([_Bytes(b"s")]) is None and pack(()) == (b"", b"")
    with pytest.raises(TypeError):
        pack(iter([b"a"]))
    p.close()


def test_send_batch_refuses_what_it_cannot_pack_and_writes_nothing(inst):
    log = inst.log
    log.create_topic("sr", partitions=1, ring_bytes=1 << 20, persistence="none")
    p = log.producer()
    for bad in ([b"ok", "str"], [b"ok", 7], [object()], [b"ok", [b"nested"]]):
        with pytest.raises(errors.InvalidType):
            p.send_batch("sr", bad, partition=0)
    with pytest.raises(errors.InvalidType):
        p.send_batch("sr", [b"v"], keys=["strkey"], partition=0)
    md = p.send_batch("sr", [b"after"], partition=0)
    assert md[0].base_offset == 0  # nothing was written by the refused batches
    assert [m.value for m in _read_all(log, "sr", 1)] == [b"after"]
    p.close()
