"""The one partition reader (shmlog/client/reader.py) at the switch from the
segment files to the ring: a Consumer (decoded records) and the Kafka
listener's fetch (whole batches) read the same records, in the same order,
from an offset the ring no longer holds, across several segment files and on
into the ring, each through a PartitionReader that starts on the files and
ends on the ring."""

import pytest

from shmlog import storage
from shmlog._native import ffi, lib
from shmlog.kafka import codes
from shmlog.kafka.data import DataPath, FetchCursor, batch_bytes

ROW = lib.SHM_ROW_FIELDS
N = 3000


def _records(inst, topic):
    inst.log.create_topic(topic, persistence="disk", ring_bytes=1 << 16, segment_bytes=1 << 16)
    p = inst.log.producer()
    for i in range(N):
        p.send(topic, b"%08d" % i + b"v" * 92, partition=0)
    p.flush(durable=True, timeout=10)
    p.close()
    assert len(storage.PartitionLog(inst.log.partition_dir(topic, 0)).segments) >= 3
    ring = inst.log.ring(inst.log.topic_handle(topic), 0, writable=False)
    assert ring.ends()[0] > N // 2  # most of it only in the files


def _via_consumer(inst, topic, start):
    c = inst.log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, start)])
    part = c._part(topic, 0)
    got, on_disk = [], []
    while len(got) < N - start:
        batch = c.poll_batch(500, timeout=2)
        assert batch, f"consumer stalled at {len(got)}"
        on_disk.append(part.on_disk)
        got += [(m.offset, m.value) for m in batch]
    assert c.poll_batch(500, timeout=0) == []
    c.close()
    return got, on_disk


def _decode(batch):
    """[(offset, value)] of one uncompressed RecordBatch v2."""
    buf = ffi.from_buffer(batch)
    n = lib.shm_batch_last_delta(buf) + 1
    out = ffi.new("struct shm_records_out *")
    rows = ffi.new("int64_t[]", n * ROW)
    out.rows, out.max_records = rows, n
    assert lib.shm_batch_decode(buf, len(batch), 0, lib.shm_batch_base_offset(buf), out) == n
    r = ffi.unpack(rows, n * ROW)
    return [(r[i * ROW], batch[r[i * ROW + 4] : r[i * ROW + 4] + r[i * ROW + 5]]) for i in range(n)]


def _via_fetch(inst, topic, start):
    dp, fc, h = DataPath(inst.log), FetchCursor(), inst.log.topic_handle(topic)
    got, on_disk, off = [], [], start
    try:
        while off < N:
            code, data = dp.read(fc, h, 0, off, 1 << 14)
            assert code == codes.NONE and data, f"fetch stalled at {off}"
            on_disk.append(fc.reader.on_disk)
            view = memoryview(data)
            while view:
                size = batch_bytes(view)
                got += [(o, v) for o, v in _decode(bytes(view[:size])) if o >= off]
                view = view[size:]
            off = fc.next_offset
        assert dp.read(fc, h, 0, off, 1 << 14) == (codes.NONE, b"")
    finally:
        dp.close()
    return got, on_disk


@pytest.mark.parametrize("start", [0, 1234])
def test_consumer_and_fetch_read_files_then_ring_alike(inst, start):
    _records(inst, "pr")
    want = [(i, b"%08d" % i + b"v" * 92) for i in range(start, N)]
    by_consumer, c_disk = _via_consumer(inst, "pr", start)
    by_fetch, f_disk = _via_fetch(inst, "pr", start)
    assert by_consumer == want
    assert by_fetch == want
    for where in (c_disk, f_disk):  # began on the files, switched once to the ring, stayed there
        assert where[0] and not where[-1]
        assert where == sorted(where, reverse=True)
