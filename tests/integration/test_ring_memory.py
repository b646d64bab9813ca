"""test_ring_memory.py — a ring's memory follows its traffic (issue 13.6; csrc/ring.c M1-M4).

Owns: what /dev/shm really holds for a ring (st_blocks of its tmpfs file, not
only the counter): an idle partition holds its header and the first 64 KiB of
data; writing grows it to the capacity and no further; records written across
every growth step read back in order from another process; a commit the host
cannot afford is NoSpace at creation and on the data path with nothing lost;
kill -9 of producers in the middle of growing loses nothing acknowledged.
Must never: fill the host (every ring here is at most a few MiB), or leave a
child alive (the inst fixture kills them).
"""

import os
import signal
import time
import types

import pytest

from shmlog import errors
from shmlog._native import lib

KIB, MIB = 1 << 10, 1 << 20
SHM = "/dev/shm"
IDLE = lib.SHM_RING_HEADER_BYTES + lib.SHM_RING_INITIAL_COMMIT


def _ring_files(inst, topic_gen):
    return sorted(n for n in inst.segments() if f".g{topic_gen}." in n)


def _resident(name) -> int:
    """Bytes of memory the tmpfs really holds for a segment file."""
    return os.stat(os.path.join(SHM, name)).st_blocks * 512


def _rings(inst, topic):
    d = inst.log.describe_topic(topic)
    return d, _ring_files(inst, d.generation)


def test_an_idle_partition_holds_its_header_and_64_kib(inst):
    inst.log.create_topic("idle", partitions=8, ring_bytes=64 * MIB, persistence="none")
    inst.log.create_topic("idle_durable", partitions=4, ring_bytes=64 * MIB, persistence="disk")
    for topic in ("idle", "idle_durable"):
        d, files = _rings(inst, topic)
        assert len(files) == len(d.partitions)
        for p, f in zip(d.partitions, files):
            assert p.resident_bytes == IDLE
            assert _resident(f) <= IDLE  # the tmpfs holds no more than the counter says
            assert os.stat(os.path.join(SHM, f)).st_size == lib.SHM_RING_HEADER_BYTES + 64 * MIB


def test_writes_grow_the_ring_to_its_capacity_and_no_further(inst):
    inst.log.create_topic("grow", ring_bytes=4 * MIB, persistence="none")
    (f,) = _rings(inst, "grow")[1]
    prod = inst.log.producer()
    seen = [IDLE]
    value = b"g" * 1000
    for i in range(12_000):  # ~12 MB: three laps of a 4 MiB ring
        prod.send("grow", value, partition=0)
        if i % 200 == 0:
            r = inst.log.describe_topic("grow").partitions[0].resident_bytes
            assert r >= seen[-1]  # only grows
            assert _resident(f) <= r + 64 * KIB  # the file follows the counter
            seen.append(r)
    final = inst.log.describe_topic("grow").partitions[0].resident_bytes
    assert final == lib.SHM_RING_HEADER_BYTES + 4 * MIB
    assert _resident(f) == final
    assert len(set(seen)) > 3  # it grew in steps, not in one commit


def _consume_all(kwargs, topic, n, out_path):
    import shmlog

    log = shmlog.connect(**kwargs)
    c = log.consumer(topics=[topic], auto_offset_reset="earliest")
    got, deadline = [], time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        for m in c.poll_batch(1000, timeout=0.5):
            got.append((m.offset, int.from_bytes(m.value[:8], "big"), len(m.value)))
    with open(out_path, "w") as f:
        f.write("\n".join(f"{o} {s} {ln}" for o, s, ln in got))


def test_a_reader_in_another_process_reads_every_record_across_growth(inst, tmp_path):
    """The reader maps the ring while it is still 64 KiB and reads records in
    pages committed after it mapped (M4); sizes vary so frames straddle every
    growth boundary. overflow=block: nothing may be lapped."""
    inst.log.create_topic("across", ring_bytes=2 * MIB, persistence="none", overflow="block")
    n = 6000
    out = tmp_path / "got.txt"
    child = inst.process(_consume_all, inst.kwargs, "across", n, str(out))
    child.start()
    time.sleep(0.5)  # the reader attaches (and maps) before any growth
    prod = inst.log.producer(max_block_ms=30_000)
    sizes = [8 + (i * 7919) % 3000 for i in range(n)]
    for i, size in enumerate(sizes):
        prod.send("across", i.to_bytes(8, "big") + b"x" * (size - 8), partition=0)
    child.join(90)
    assert child.exitcode == 0
    rows = [tuple(map(int, line.split())) for line in out.read_text().splitlines()]
    assert rows == [(i, i, sizes[i]) for i in range(n)]


def test_a_commit_the_host_cannot_afford_is_nospace_and_loses_nothing(inst):
    """The data path's commit checks the memory reserve in C against the real
    MemAvailable: with a reserve larger than the host, the first growth is
    refused with NoSpace naming the fix, the ring keeps every record, and
    once the reserve allows it the same producer goes on."""
    inst.log.create_topic("tight", ring_bytes=8 * MIB, persistence="none")
    prod = inst.log.producer()
    value = b"t" * 1000
    sent = 0
    lib.shm_set_memory_reserve(1 << 62)
    try:
        with pytest.raises(errors.NoSpace, match="cannot commit memory.*OOM killer") as e:
            for _ in range(200):  # 200 KB: past the first 64 KiB
                prod.send("tight", value, partition=0)
                sent += 1
        assert "every record before is kept" in str(e.value)
        assert 0 < sent < 200
        p = inst.log.describe_topic("tight").partitions[0]
        assert p.resident_bytes == IDLE and p.end_offset == sent
    finally:
        lib.shm_set_memory_reserve(0)
    for _ in range(200):
        prod.send("tight", value, partition=0)
    c = inst.log.consumer(topics=["tight"], auto_offset_reset="earliest")
    got = []
    while len(got) < sent + 200:
        batch = c.poll_batch(1000, timeout=2)
        assert batch, f"stalled at {len(got)}"
        got += [m.offset for m in batch]
    assert got == list(range(sent + 200))


def test_a_topic_whose_first_pages_do_not_fit_is_refused_before_anything_is_made(inst, monkeypatch):
    """Creation commits the header (checked against psutil's view) and the
    first data pages (checked in C): either refused is NoSpace naming the fix,
    nothing of the topic left; a 64 MiB ring fits where 44 MiB are free."""
    from shmlog import _native

    before = inst.segments()
    fake = types.SimpleNamespace(total=4 << 30, available=(256 << 20) + 4096)  # reserve: 256 MiB
    monkeypatch.setattr(_native.psutil, "virtual_memory", lambda: fake)
    with pytest.raises(errors.NoSpace, match="MiB of memory available.*ring_bytes") as e:
        inst.log.create_topic("huge", partitions=2, ring_bytes=64 << 20, persistence="none")
    assert "OOM" in str(e.value)
    assert "huge" not in inst.log.list_topics()
    assert inst.segments() == before
    fake.available = 300 << 20
    inst.log.create_topic("huge", partitions=2, ring_bytes=64 << 20, persistence="none")  # 80 KiB each
    assert "huge" in inst.log.list_topics()
    monkeypatch.undo()
    # past psutil's check, C's own (of the header, then of the first data pages) against the real host
    monkeypatch.setattr(_native, "check_memory_for", lambda name, size: None)
    lib.shm_set_memory_reserve(1 << 62)
    try:
        with pytest.raises(errors.NoSpace, match="cannot commit memory.*MiB of memory available.*OOM killer"):
            inst.log.create_topic("late", ring_bytes=1 << 20, persistence="none")
    finally:
        lib.shm_set_memory_reserve(0)
    assert "late" not in inst.log.list_topics()
    assert [n for n in inst.segments() if n not in before] == [f for f in _rings(inst, "huge")[1]]


def _produce_forever(kwargs, topic):
    import shmlog

    log = shmlog.connect(**kwargs)
    prod = log.producer()
    i = 0
    while True:
        prod.send(topic, i.to_bytes(8, "big") + b"k" * (i % 1000), partition=0)
        i += 1


def test_kill_9_while_rings_grow_loses_nothing(inst):
    """Producers killed at random points of their first lap (where a
    reservation may commit pages first): the ring then holds a clean run of
    whole records 0..n (the killed write, never acknowledged, sealed as a gap
    at most), and the next producer goes on and grows it to exactly its
    capacity."""
    import random

    rnd = random.Random(1346)
    for k in range(8):
        topic = f"k{k}"
        inst.log.create_topic(topic, ring_bytes=8 * MIB, persistence="none")
        child = inst.process(_produce_forever, inst.kwargs, topic)
        child.start()
        target, deadline = rnd.randint(1, 8000), time.monotonic() + 20  # ~4.4 MB at most: the first lap
        while inst.log.describe_topic(topic).partitions[0].end_offset < target:
            assert time.monotonic() < deadline, "the producer child made no progress"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        c = inst.log.consumer(topics=[topic], auto_offset_reset="earliest")
        seqs = []
        while batch := c.poll_batch(2000, timeout=0.5):  # a killed reservation is sealed after 100 ms
            for m in batch:
                seq = int.from_bytes(m.value[:8], "big")
                assert len(m.value) == 8 + seq % 1000
                seqs.append(seq)
        assert seqs == list(range(len(seqs))) and len(seqs) >= target
        prod = inst.log.producer()
        for _ in range(3000):  # ~9 MB more: the rest of the first lap and beyond
            prod.send(topic, b"a" * 3000, partition=0)
        p = inst.log.describe_topic(topic).partitions[0]
        assert p.resident_bytes == lib.SHM_RING_HEADER_BYTES + 8 * MIB
        assert p.end_offset >= len(seqs) + 3000
        c.close()
        prod.close()
