"""test_bad_input.py — wrong types, bad values, damaged shared memory, full rings:
each is a clear shmlog error (never a crash, never silent data loss).
"""

import faulthandler
import mmap
import os
import signal
import struct
import time

import numpy as np
import pytest

import shmlog
from shmlog import errors
from shmlog._native import ffi, lib

RING = 1 << 16
SHM = "/dev/shm"
DATA = lib.SHM_RING_HEADER_BYTES


def drain(c, n, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll_batch(timeout=0.05)
    return got


def ring_file(inst, topic, partition=0):
    d = inst.log.describe_topic(topic)
    return SHM + inst.log.settings.ring_name(d.generation, partition)


def frames_of(m):
    """[(position, length, kind)] of committed frames of a mapped ring file, from position 0."""
    out, pos = [], 0
    while pos + 16 <= len(m) - DATA:
        commit, length, kind, _ = struct.unpack_from("<QIHH", m, DATA + pos)
        if commit != pos ^ lib.SHM_COMMIT_XOR:
            break
        out.append((pos, length, kind))
        pos += (length + 7) & ~7
    return out


class RingFile:
    """The ring's /dev/shm object mapped read-write by plain Python (as damage would be)."""

    def __init__(self, path):
        self.f = open(path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), 0)

    def frames(self):
        return frames_of(self.m)

    def close(self):
        self.m.close()
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def topic(inst):
    inst.log.create_topic("t", persistence="none", partitions=2, ring_bytes=RING)
    return "t"


# ---------------------------------------------------------------- wrong types


BAD_SENDS = {
    "str value": dict(value="text"),
    "int value": dict(value=5),
    "list value": dict(value=[b"a"]),
    "int key": dict(value=b"v", key=5),
    "str key": dict(value=b"v", key="k"),
    "headers int": dict(value=b"v", headers=5),
    "header str value": dict(value=b"v", headers={"a": "str"}),
    "header int value": dict(value=b"v", headers={"a": 1}),
    "header non-str key": dict(value=b"v", headers={1: b"x"}),
    "header bytes key": dict(value=b"v", headers=[(b"k", b"x")]),
    "header 1-tuple": dict(value=b"v", headers=[("a",)]),
    "header 3-tuple": dict(value=b"v", headers=[("a", b"x", b"y")]),
    "header bare str": dict(value=b"v", headers=["ab"]),
    "partition str": dict(value=b"v", partition="0"),
    "partition float": dict(value=b"v", partition=1.0),
    "partition bool": dict(value=b"v", partition=True),
}


@pytest.mark.parametrize("kwargs", list(BAD_SENDS.values()), ids=list(BAD_SENDS))
def test_send_wrong_types(inst, topic, kwargs):
    with inst.log.producer() as p:
        p.send(topic, b"warm", partition=0)  # the express path has a writer for the topic
        with pytest.raises(errors.InvalidType) as ei:
            p.send(topic, **kwargs)
        assert isinstance(ei.value, TypeError) and isinstance(ei.value, shmlog.ShmlogError)
        assert str(ei.value)
        with pytest.raises(errors.InvalidType):  # and on a fresh producer
            inst.connect().producer().send(topic, **kwargs)
        assert p.send(topic, b"ok", partition=0).offset == 1  # nothing was written


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.send_batch("t", ["a", "b"]),
        lambda p: p.send_batch("t", [b"a", 1]),
        lambda p: p.send_batch("t", [b"a"], keys=[1]),
        lambda p: p.send_batch("t", [b"a"], keys=["k"]),
        lambda p: p.send_batch("t", [b"a"], keys=[b"k"], partition="1"),
        lambda p: p.send_packed("t", "text", np.array([4], dtype=np.int64)),
        lambda p: p.send_packed("t", b"abcd", [4]),
        lambda p: p.send_packed("t", b"abcd", np.array([4], dtype=np.int64), partition=0.0),
    ],
    ids=[
        "str values",
        "int value",
        "int key",
        "str key",
        "str partition",
        "str data",
        "list lengths",
        "float partition",
    ],
)
def test_batch_wrong_types(inst, topic, call):
    with inst.log.producer() as p:
        with pytest.raises(errors.InvalidType) as ei:
            call(p)
        assert isinstance(ei.value, TypeError)
        assert p.send(topic, b"ok", partition=0).offset == 0
        assert p.send(topic, b"ok", partition=1).offset == 0


@pytest.mark.parametrize("values", [5, None], ids=["int", "None"])
def test_send_batch_non_iterable_values(inst, topic, values):
    with inst.log.producer() as p:
        with pytest.raises(errors.InvalidType):
            p.send_batch(topic, values)


def test_wrong_length_keys_and_bad_timestamps(inst, topic):
    with inst.log.producer() as p:
        with pytest.raises(errors.InvalidArgument):
            p.send_batch(topic, [b"a", b"b"], keys=[b"k"])
        for ts in (-5, "now", 1.5):
            with pytest.raises((errors.InvalidArgument, errors.InvalidType)):
                p.send(topic, b"v", timestamp_ms=ts, partition=0)
            with pytest.raises((errors.InvalidArgument, errors.InvalidType)):
                p.send_batch(topic, [b"v"], timestamp_ms=ts, partition=0)
        assert p.send(topic, b"ok", partition=0).offset == 0


def test_client_options_validated(inst, topic):
    with pytest.raises(errors.InvalidArgument):
        inst.log.producer(max_block_ms=-1)
    with pytest.raises(errors.InvalidArgument):
        inst.log.consumer(auto_offset_reset="smallest")
    with pytest.raises(errors.InvalidArgument):
        inst.log.consumer(max_poll_records=0)
    with pytest.raises(errors.InvalidArgument):
        inst.log.consumer(wait="sleep")
    c = inst.log.consumer(topics=[topic])
    for bad in (-1, "1"):
        with pytest.raises(errors.InvalidArgument):
            c.poll(timeout=bad)
    with pytest.raises(errors.InvalidArgument):
        c.poll_batch(max_messages=0, timeout=0)
    with pytest.raises(errors.InvalidArgument):
        inst.log.consumer().poll(timeout=0)  # nothing assigned
    with pytest.raises(errors.InvalidType):
        c.assign([(topic, 0, "5")])
    with pytest.raises(errors.InvalidArgument):
        inst.connect(unblock_timeout_ms=0)
    with pytest.raises(errors.InvalidArgument):
        shmlog.connect(instance="bad/name", shm_prefix=inst.prefix)


# ---------------------------------------------------------------- sizes


def test_oversize_record_rejected_and_nothing_lost(inst):
    inst.log.create_topic("big", persistence="none", ring_bytes=RING, max_message_bytes=4096)
    with inst.log.producer() as p:
        assert p.send("big", b"a" * 100, partition=0).offset == 0
        assert p.send("big", b"b" * 3900, partition=0).offset == 1  # fits
        for kwargs in (
            dict(value=b"x" * 4096),
            dict(value=b"x" * 100_000),
            dict(value=b"v", key=b"k" * 5000),
            dict(value=b"v", headers={"h": b"x" * 5000}),
        ):
            with pytest.raises(errors.RecordTooLarge) as ei:
                p.send("big", partition=0, **kwargs)
            assert isinstance(ei.value, ValueError) and "max_message_bytes" in str(ei.value)
        with pytest.raises(errors.RecordTooLarge):
            p.send_batch("big", [b"y" * 1000] * 5, partition=0)  # one frame too big
        with pytest.raises(errors.RecordTooLarge):
            p.send_packed("big", b"z" * 5000, np.array([2500, 2500], dtype=np.int64), partition=0)
        assert p.send("big", b"c", partition=0).offset == 2  # no offset gap
        assert p.send_batch("big", [b"d", b"e"], partition=0)[0].base_offset == 3
    c = inst.log.consumer(topics=["big"], auto_offset_reset="earliest")
    ms = drain(c, 5)
    assert [(m.offset, m.value[:1], len(m.value)) for m in ms] == [
        (0, b"a", 100),
        (1, b"b", 3900),
        (2, b"c", 1),
        (3, b"d", 1),
        (4, b"e", 1),
    ]
    assert c.poll(timeout=0.05) is None


def test_default_max_message_bytes_is_a_quarter_ring(inst):
    inst.log.create_topic("q", persistence="none", ring_bytes=RING)
    with inst.log.producer() as p:
        p.send("q", b"x" * (RING // 4 - 200), partition=0)
        with pytest.raises(errors.RecordTooLarge):
            p.send("q", b"x" * (RING // 4), partition=0)


def _sum_wraps_lengths():
    # lengths whose uint64 sum wraps to 3 and whose int64 encoded size wraps to ~120 bytes
    return [2**63 - 1, 2**63 - 1, 5]


def test_packed_check_rejects_wrapping_lengths():
    lens = ffi.new("int64_t[]", _sum_wraps_lengths())
    assert lib.shm_packed_check(lens, 3, 3) != 0


def test_encoded_size_rejects_huge_lengths():
    lens = ffi.new("int64_t[]", _sum_wraps_lengths())
    inp = ffi.new("struct shm_batch_in *")
    inp.count = 3
    inp.values = ffi.from_buffer(b"abc")
    inp.value_lens = lens
    inp.timestamp_ms = 0
    assert lib.shm_batch_encoded_size(inp) < 0


def test_send_packed_huge_lengths_do_not_crash(inst, topic):
    def child():
        faulthandler.disable()  # a crash here is what the test looks for
        log = shmlog.connect(**inst.kwargs)
        p = log.producer()
        try:
            p.send_packed(topic, b"abc", np.array(_sum_wraps_lengths(), dtype=np.int64), partition=0)
        except (errors.InvalidArgument, errors.RecordTooLarge):
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(3)

    proc = inst.process(child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0, f"child exit code {proc.exitcode} (negative = killed by that signal)"


# ---------------------------------------------------------------- names and topic config

BAD_NAMES = ["", "a/b", "x" * 250, ".", "..", "a b", "ü", "a\0b", "tab\t", "../etc", "a:b"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_topic_names(inst, name):
    log = inst.log
    with pytest.raises(errors.InvalidTopicName) as ei:
        log.create_topic(name, persistence="none", ring_bytes=RING)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, errors.InvalidArgument)
    assert "invalid topic name" in str(ei.value)
    for call in (
        lambda: log.describe_topic(name),
        lambda: log.delete_topic(name),
        lambda: log.producer().send(name, b"v"),
        lambda: log.consumer(topics=[name]),
    ):
        with pytest.raises(errors.InvalidTopicName):
            call()
    assert log.list_topics() == []


@pytest.mark.parametrize("name", [None, 5, b"bytes", ["t"]], ids=repr)
def test_non_str_topic_names(inst, name):
    # the message names the type; InvalidType (a TypeError), not InvalidTopicName
    with pytest.raises(errors.InvalidType) as ei:
        inst.log.create_topic(name, persistence="none", ring_bytes=RING)
    assert isinstance(ei.value, shmlog.ShmlogError)
    with pytest.raises(errors.ShmlogError):
        inst.log.delete_topic(name)
    assert inst.log.list_topics() == []


@pytest.mark.parametrize("name", ["abc\n", "a.b-c\n"], ids=repr)
def test_trailing_newline_topic_name_rejected(inst, name):
    with pytest.raises(errors.InvalidTopicName):
        inst.log.create_topic(name, persistence="none", ring_bytes=RING)


def test_edge_valid_topic_names(inst):
    for name in ("x" * 249, "a", "A.b-c_9", "...", "-"):
        inst.log.create_topic(name, persistence="none", ring_bytes=RING)
    assert sorted(inst.log.list_topics()) == sorted(["x" * 249, "a", "A.b-c_9", "...", "-"])


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(partitions=0), errors.InvalidArgument),
        (dict(partitions=-1), errors.InvalidArgument),
        (dict(partitions=4097), errors.InvalidArgument),
        (dict(partitions="2"), errors.InvalidType),
        (dict(partitions=2.0), errors.InvalidType),
        (dict(partitions=True), errors.InvalidType),
        (dict(partitions=None), errors.InvalidType),
        (dict(ring_bytes=3 << 16), errors.InvalidArgument),
        (dict(ring_bytes=(1 << 16) + 8), errors.InvalidArgument),
        (dict(ring_bytes=1 << 15), errors.InvalidArgument),
        (dict(ring_bytes=1 << 37), errors.InvalidArgument),
        (dict(ring_bytes=0), errors.InvalidArgument),
        (dict(ring_bytes=-(1 << 16)), errors.InvalidArgument),
        (dict(ring_bytes=float(1 << 16)), errors.InvalidType),
        (dict(max_message_bytes=100), errors.InvalidArgument),
        (dict(max_message_bytes=RING), errors.InvalidArgument),
        (dict(fsync="sometimes"), errors.InvalidArgument),
        (dict(fsync="interval:0"), errors.InvalidArgument),
        (dict(fsync=100), errors.InvalidType),
        (dict(persistence="tape"), errors.InvalidArgument),
        (dict(retention_ms=0), errors.InvalidArgument),
        (dict(retention_bytes=-2), errors.InvalidArgument),
        (dict(segment_bytes=1), errors.InvalidArgument),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_bad_topic_config(inst, kwargs, exc):
    kwargs = {"ring_bytes": RING, "persistence": "none", **kwargs}
    before = inst.segments()
    with pytest.raises(exc) as ei:
        inst.log.create_topic("cfg", **kwargs)
    assert isinstance(ei.value, shmlog.ShmlogError) and str(ei.value)
    assert inst.log.list_topics() == []
    assert inst.segments() == before  # no ring left behind
    inst.log.create_topic("cfg", persistence="none", ring_bytes=RING)  # the name is still free


# ---------------------------------------------------------------- unknown topic / partition


def test_unknown_topic_or_partition(inst, topic):
    log = inst.log
    with log.producer() as p:
        with pytest.raises(errors.UnknownTopicOrPartition) as ei:
            p.send("nope", b"v")
        assert isinstance(ei.value, KeyError) and "nope" in str(ei.value)
        assert str(ei.value)[0] != "'"  # not KeyError's quoting
        for part in (2, 99, -1):
            with pytest.raises(errors.UnknownTopicOrPartition):
                p.send(topic, b"v", partition=part)
            with pytest.raises(errors.UnknownTopicOrPartition):
                p.send_batch(topic, [b"v"], partition=part)
            with pytest.raises(errors.UnknownTopicOrPartition):
                p.send_packed(topic, b"v", np.array([1], dtype=np.int64), partition=part)
        with pytest.raises(errors.UnknownTopicOrPartition):
            p.send_batch("nope", [b"v"])
        assert p.send(topic, b"fine", partition=1).offset == 0
    for call in (
        lambda: log.describe_topic("nope"),
        lambda: log.delete_topic("nope"),
        lambda: log.consumer(topics=["nope"]),
        lambda: log.consumer().assign([("nope", 0)]),
        lambda: log.consumer().assign([(topic, 2)]),
        lambda: log.consumer().assign([(topic, -1)]),
    ):
        with pytest.raises(errors.UnknownTopicOrPartition):
            call()
    c = log.consumer(topics=[topic])
    for call in (lambda: c.seek(topic, 7, 0), lambda: c.position("nope", 0), lambda: c.end_offsets([(topic, 3)])):
        with pytest.raises(errors.UnknownTopicOrPartition):
            call()


# ---------------------------------------------------------------- damaged segments


def _poke(path, offset, fmt, value):
    """Overwrites a field of a shm object; returns the old bytes."""
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        size = struct.calcsize(fmt)
        old = m[offset : offset + size]
        struct.pack_into(fmt, m, offset, value)
        return old


def _restore(path, offset, old):
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset : offset + len(old)] = old


@pytest.mark.parametrize(
    "field,fmt,value",
    [
        ("magic", "<Q", 0x0123456789ABCDEF),
        ("magic", "<Q", 0),
        ("version", "<I", lib.SHM_LAYOUT_VERSION + 1),
        ("version", "<I", lib.shm_layout_stamp() ^ (0x3 << 8)),  # same number, another architecture's build
        ("version", "<I", 0xFFFFFFFF),
        ("version", "<I", 0),  # never finished by its creator
        ("header_bytes", "<I", 4096),
        ("total_bytes", "<Q", 12345),
        ("capacity", "<Q", RING * 2),
    ],
)
def test_ring_with_wrong_layout_is_refused(inst, topic, field, fmt, value):
    with inst.log.producer() as p:
        p.send(topic, b"before", partition=0)
    path = ring_file(inst, topic, 0)
    off = ffi.offsetof("struct shm_ring_header", field)
    old = _poke(path, off, fmt, value)
    try:
        fresh = inst.connect()  # a new process's view: nothing cached
        with pytest.raises(errors.LayoutMismatch) as ei:
            fresh.producer().send(topic, b"x", partition=0)
        assert "layout version" in str(ei.value) and path[len(SHM) :] in str(ei.value)
        with pytest.raises(errors.LayoutMismatch):
            fresh.consumer(topics=[topic])
        with pytest.raises(errors.LayoutMismatch):
            inst.connect().consumer().assign([(topic, 0, 0)])
        with pytest.raises(errors.LayoutMismatch):
            inst.connect().describe_topic(topic)
        # partition 1 is intact
        assert fresh.producer().send(topic, b"x", partition=1).offset == 0
    finally:
        _restore(path, off, old)
    log = inst.connect()
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    assert log.producer().send(topic, b"after", partition=0).offset == 1
    assert [m.value for m in drain(c, 2)] == [b"before", b"after"]


@pytest.mark.parametrize(
    "field,fmt,value",
    [
        ("magic", "<Q", 0x1122334455667788),
        ("version", "<I", lib.SHM_LAYOUT_VERSION + 1),
        ("version", "<I", lib.shm_layout_stamp() ^ (0xFF << 16)),  # another sizeof(pthread_mutex_t)
        ("header_bytes", "<I", 1024),
        ("total_bytes", "<Q", 4096),
        ("topics_off", "<Q", 8192),
        ("max_topics", "<I", 1 << 20),
    ],
)
def test_control_segment_with_wrong_layout_is_refused(inst, field, fmt, value):
    inst.log.create_topic("ctl", persistence="none", ring_bytes=RING)
    path = SHM + inst.log.settings.ctl_name
    off = ffi.offsetof("struct shm_ctl_header", field)
    old = _poke(path, off, fmt, value)
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.LayoutMismatch) as ei:
            inst.connect()
        assert inst.log.settings.ctl_name in str(ei.value)
        assert time.monotonic() - t0 < 2
    finally:
        _restore(path, off, old)
    assert inst.connect().list_topics() == ["ctl"]


def test_truncated_ring_is_refused(inst, topic):
    path = ring_file(inst, topic, 1)
    os.truncate(path, lib.SHM_RING_HEADER_BYTES + RING // 2)
    with pytest.raises(errors.LayoutMismatch):
        inst.connect().producer().send(topic, b"x", partition=1)
    os.truncate(path, 100)  # shorter than the header
    with pytest.raises(errors.LayoutMismatch):
        inst.connect().consumer().assign([(topic, 1)])


# ---------------------------------------------------------------- corrupted frames


def _three_then_two(inst, topic):
    with inst.log.producer() as p:
        for ch in b"ABCDE":
            p.send(topic, bytes([ch]) * 100, key=b"key", partition=0)


def _flip_in_value(inst, topic, frame_index, letter, bit=0, delta=10):
    with RingFile(ring_file(inst, topic)) as rf:
        pos, length, kind = rf.frames()[frame_index]
        start = DATA + pos
        at = rf.m[start : start + length].find(bytes([letter]) * 100)
        assert at > 16 + 61
        rf.m[start + at + delta] ^= 1 << bit
        return pos


@pytest.mark.parametrize("how", ["poll", "poll_batch", "poll_columns"])
def test_corrupted_value_raises_corrupt_record(inst, topic, how):
    _three_then_two(inst, topic)
    pos = _flip_in_value(inst, topic, 2, ord("C"))
    c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    got = []
    with pytest.raises(errors.CorruptRecord) as ei:
        for _ in range(10):
            if how == "poll":
                m = c.poll(timeout=0.2)
                got += [m] if m else []
            elif how == "poll_batch":
                got += c.poll_batch(timeout=0.2)
            else:
                cols = c.poll_columns(timeout=0.2)
                got += [] if cols is None else [(int(o), cols.value(i)) for i, o in enumerate(cols.offsets)]
    got = [(m.offset, m.value) if isinstance(m, shmlog.Message) else m for m in got]
    assert got == [(0, b"A" * 100), (1, b"B" * 100)]  # records before it are returned
    msg = str(ei.value)
    assert "partition 0" in msg and f"position {pos}" in msg and "CRC" in msg and "seek" in msg
    # it stays refused (no silent skipping), and the position stays on it
    with pytest.raises(errors.CorruptRecord):
        c.poll_batch(timeout=0.2)
    assert c.position(topic, 0) == 2
    # seek past it and go on
    c.seek(topic, 0, 3)
    assert [(m.offset, m.value) for m in drain(c, 2)] == [(3, b"D" * 100), (4, b"E" * 100)]


def test_corrupted_value_without_crc_check_and_framing_damage(inst, topic):
    _three_then_two(inst, topic)
    _flip_in_value(inst, topic, 1, ord("B"), bit=1, delta=0)
    c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest", check_crcs=False)
    c.assign([(topic, 0, 0)])
    ms = drain(c, 5)
    assert ms[1].value == b"@" + b"B" * 99  # 0x42 ^ 0x02: not checked, as asked
    # now damage the structure of frame 3 (D): its first record's length varint
    with RingFile(ring_file(inst, topic)) as rf:
        pos, length, kind = rf.frames()[3]
        rf.m[DATA + pos + 16 + 61] = 0x7E  # record length 63 > what is left
    for crc in (False, True):
        c2 = inst.log.consumer(check_crcs=crc)
        c2.assign([(topic, 0, 0)])
        got = []
        with pytest.raises(errors.CorruptRecord):
            for _ in range(10):
                got += c2.poll_batch(timeout=0.2)
        assert [m.offset for m in got] == ([0, 1, 2] if not crc else [0])


@pytest.mark.parametrize("damage", ["length_huge", "length_short", "kind", "count_big"])
def test_corrupted_frame_header(inst, topic, damage):
    _three_then_two(inst, topic)
    with RingFile(ring_file(inst, topic)) as rf:
        pos, length, kind = rf.frames()[2]
        at = DATA + pos
        if damage == "length_huge":
            struct.pack_into("<I", rf.m, at + 8, RING * 4)
        elif damage == "length_short":
            struct.pack_into("<I", rf.m, at + 8, 20)
        elif damage == "kind":
            struct.pack_into("<H", rf.m, at + 12, 9)
        else:  # batch recordCount beyond the body
            struct.pack_into(">i", rf.m, at + 16 + 57, 1000)
    for crc in (True, False):
        c = inst.log.consumer(check_crcs=crc)
        c.assign([(topic, 0, 0)])
        got = []
        with pytest.raises(errors.CorruptRecord):
            for _ in range(10):
                got += c.poll_batch(timeout=0.2)
        assert [m.offset for m in got] == [0, 1]


def test_corrupted_base_offset_is_detected(inst, topic):
    _three_then_two(inst, topic)
    with RingFile(ring_file(inst, topic)) as rf:
        pos, length, kind = rf.frames()[2]
        rf.m[DATA + pos + 16 + 2] ^= 0x01  # baseOffset += 2^40
    c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest")
    got = []
    try:
        for _ in range(5):
            got += c.poll_batch(timeout=0.1)
    except errors.CorruptRecord:
        got.append("corrupt")
    assert all(m == "corrupt" or m.offset <= 4 for m in got)
    assert [m.offset for m in got if m != "corrupt"] in ([0, 1], [0, 1, 3, 4])


# ---------------------------------------------------------------- full ring, full /dev/shm


def _hold_and_send(kwargs, topic, hold_ns):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    lib.shm_test_set_hold_ns(hold_ns)  # sleep between reserve and commit
    p.send(topic, b"held" * 100, partition=0)
    os._exit(0)


def test_buffer_full_while_a_live_writer_holds_a_reservation(inst):
    inst.log.create_topic("full", persistence="none", ring_bytes=RING)
    child = inst.process(_hold_and_send, inst.kwargs, "full", 60 * 10**9)
    child.start()
    deadline = time.monotonic() + 10
    while inst.log.describe_topic("full").partitions[0].end_offset < 1:
        assert time.monotonic() < deadline, "child never reserved"
        assert child.is_alive()
        time.sleep(0.005)
    p = inst.log.producer(max_block_ms=200)
    sent = 0
    t0 = time.monotonic()
    with pytest.raises(errors.BufferFull) as ei:
        for _ in range(2 * RING // 1000):
            p.send("full", b"f" * 1000, partition=0)
            sent += 1
    elapsed = time.monotonic() - t0
    assert elapsed < 5
    assert ei.value.retriable and "full" in str(ei.value)
    assert RING // 1100 - 3 <= sent <= RING // 1000  # about one lap, no more
    assert child.is_alive()
    d = inst.log.describe_topic("full").partitions[0]
    assert d.sealed_writes == 0  # a live writer is never sealed over
    assert d.end_offset == 1 + sent
    # still full while the writer lives
    with pytest.raises(errors.BufferFull):
        p.send("full", b"f" * 1000, partition=0)
    # the writer dies mid-write: after the unblock timeout its reservation becomes a gap
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    p2 = inst.log.producer(max_block_ms=5000)
    t0 = time.monotonic()
    md = p2.send("full", b"f" * 1000, partition=0)
    assert time.monotonic() - t0 < 4
    assert md.offset == 1 + sent
    assert inst.log.describe_topic("full").partitions[0].sealed_writes == 1


def test_no_space_in_dev_shm(inst, monkeypatch):
    # a ring that could never fit in the tmpfs, past the host-memory reserve
    # check (tests/integration/test_nospace.py, test_ring_memory.py)
    monkeypatch.setenv("SHMLOG_MEMORY_RESERVE_BYTES", "0")
    st = os.statvfs(SHM)
    if st.f_blocks * st.f_frsize >= 1 << 36:
        pytest.skip("/dev/shm is at least 64 GiB: cannot provoke ENOSPC safely")
    # larger than the whole tmpfs: fallocate fails up front, nothing is allocated
    before = inst.segments()
    with pytest.raises(errors.NoSpace) as ei:
        inst.log.create_topic("huge", persistence="none", ring_bytes=1 << 36)
    assert isinstance(ei.value, OSError) and "/dev/shm" in str(ei.value)
    assert inst.log.list_topics() == []
    assert inst.segments() == before
    inst.log.create_topic("huge", persistence="none", ring_bytes=RING)  # the table entry was freed
    assert inst.log.list_topics() == ["huge"]


@pytest.mark.parametrize("timeout", [-1, "x", [1]], ids=repr)
def test_bad_poll_timeout_on_one_partition(inst, timeout):
    """The single-partition fast path checks the timeout like the general path."""
    inst.log.create_topic("to", persistence="none", ring_bytes=RING)
    c = inst.log.consumer(topics=["to"], auto_offset_reset="earliest")
    with pytest.raises(errors.InvalidArgument):
        c.poll(timeout=timeout)
    inst.log.producer().send("to", b"v", partition=0)
    with pytest.raises(errors.InvalidArgument):
        c.poll(timeout=timeout)
    assert c.poll(timeout=1).value == b"v"  # nothing was consumed by the refused calls


def test_max_message_bytes_leaves_room_for_the_frame_header(inst):
    """Half the ring passed validation, then failed in shm_ring_init with
    'cannot initialise ring': the frame, header included, takes at most half."""
    with pytest.raises(errors.InvalidArgument, match="max_message_bytes"):
        inst.log.create_topic("cfg", ring_bytes=RING, persistence="none", max_message_bytes=RING // 2)
    inst.log.create_topic("cfg", ring_bytes=RING, persistence="none", max_message_bytes=RING // 2 - 16)
    assert inst.log.topic_handle("cfg").config.max_message_bytes == RING // 2 - 16


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("where", ["value-first", "value-middle", "value-last", "key", "header-crc", "after-value"])
def test_corrupted_large_record_is_caught_on_the_one_copy_path(inst, where, copy):
    """Records of LARGE_BYTES or more take the consumer's large path: the value
    is copied once from the ring with the batch's CRC-32C summed in the same
    pass (shmx_large_copy), or (copy=False on a block ring) viewed in place
    with the CRC checked there. A flipped bit anywhere the CRC covers -- the
    value's first, middle or last byte, the key, the byte after the value,
    the stored CRC itself -- is CorruptRecord at that offset, the records
    before it are delivered intact, and nothing is skipped silently."""
    big = 1 << 20
    inst.log.create_topic("lg", persistence="none", ring_bytes=8 << 20, overflow="block")
    vals = [bytes([65 + i]) * big for i in range(4)]
    c = inst.log.consumer(topics=["lg"], auto_offset_reset="earliest", copy=copy)
    p = inst.log.producer()
    got = []
    for i, v in enumerate(vals[:3]):  # one at a time: each read finds one frame (the large path from the second)
        p.send("lg", v, key=b"k" * 32, partition=0)
        if i == 2:
            _flip_large(ring_file(inst, "lg"), where, big)
            break
        m = c.poll(timeout=2)
        got.append((m.offset, bytes(m.value)))
    p.send("lg", vals[3], key=b"k" * 32, partition=0)
    with pytest.raises(errors.CorruptRecord):
        for _ in range(10):
            m = c.poll(timeout=0.5)
            if m is not None:
                got.append((m.offset, bytes(m.value)))
    assert c._single is not None and not c._single.on_disk  # the one-copy path's conditions
    assert got == [(0, vals[0]), (1, vals[1])]
    assert c.position("lg", 0) == 2
    c.close()
    p.close()


def _flip_large(path, where, big):
    with RingFile(path) as rf:
        pos, length, _ = rf.frames()[2]
        start = DATA + pos
        at = rf.m[start : start + length].find(b"C" * 64)
        kat = rf.m[start : start + length].find(b"k" * 32)
        flip = {
            "value-first": at,
            "value-middle": at + big // 2 + 7,
            "value-last": at + big - 1,
            "key": kat + 5,
            "header-crc": lib.SHM_FRAME_HEADER_BYTES + lib.SHM_RB_CRC + 1,
            "after-value": at + big,  # the record's headers count
        }[where]
        rf.m[start + flip] ^= 0x04


@pytest.mark.parametrize("how", ["poll", "poll_batch"])
def test_corrupted_large_value_is_caught_by_the_fused_copy_and_check(inst, topic, how):
    """Batches of 4 KiB or more are copied out of the ring and summed in one
    pass (ring.c take_frame): a flipped bit anywhere in the value is still a
    CorruptRecord, and check_crcs=False still returns it as asked."""
    with inst.log.producer() as p:
        for ch in b"ABCDE":
            p.send(topic, bytes([ch]) * 5000, key=b"key", partition=0)
    with RingFile(ring_file(inst, topic)) as rf:
        pos, length, kind = rf.frames()[2]
        start = DATA + pos
        at = rf.m[start : start + length].find(b"C" * 100)
        rf.m[start + at + 4321] ^= 0x10  # deep inside the value, past the fused copy's first blocks
    c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    got = []
    with pytest.raises(errors.CorruptRecord):
        for _ in range(10):
            if how == "poll":
                m = c.poll(timeout=0.2)
                got += [m] if m else []
            else:
                got += c.poll_batch(timeout=0.2)
    assert [m.offset for m in got] == [0, 1] and got[1].value == b"B" * 5000
    assert c.position(topic, 0) == 2
    unchecked = inst.log.consumer(check_crcs=False)
    unchecked.assign([(topic, 0, 0)])
    ms = drain(unchecked, 5)
    assert [m.offset for m in ms] == [0, 1, 2, 3, 4] and ms[2].value != b"C" * 5000
