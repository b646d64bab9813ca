"""test_multiprocess.py — many producer processes, independent consumer processes.

What must hold (docs/DESIGN.md, "Partition ring"): a reservation is one atomic
step on the tail, so the byte order of frames is their offset order and every
record gets exactly one offset; a send is synchronous, so the offset it
returns is where the record is. Several processes appending to ONE partition
therefore interleave, but each producer's records keep their order, and every
independent reader sees every record exactly once, intact, at the offset its
producer was told. With keys, the partition is Kafka's murmur2 choice, so the
same key always lands in the same partition, from whichever process.

Every record's value is self-checking: producer id, sequence number and two
64-bit mixes of them (see _mix), so a torn, stale or misplaced record is
caught by the parent, which checks everything with numpy.

Children report through pickle files in tmp_path (never through a pipe that
could fill up), and every wait has a deadline.
"""

import multiprocessing
import random
import struct
import time
from array import array

import numpy as np

import shmlog

CTX = multiprocessing.get_context("fork")

# ------------------------------------------------------------------ payloads

MASK = (1 << 64) - 1
C1, C2, C3, C4 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93
REC = np.dtype([("pid", "<u4"), ("seq", "<u4"), ("a", "<u8"), ("b", "<u8")])  # 24 bytes
VALUE_BYTES = REC.itemsize
KEY_BYTES = 8


def _mix(pid: int, seq: int) -> tuple[int, int]:
    a = (pid * C1 + seq * C2 + C3) & MASK
    b = ((a ^ (a >> 29)) * C4) & MASK
    return a, b


def _mix_np(pid, seq):
    with np.errstate(over="ignore"):
        a = pid.astype(np.uint64) * np.uint64(C1) + seq.astype(np.uint64) * np.uint64(C2) + np.uint64(C3)
        b = (a ^ (a >> np.uint64(29))) * np.uint64(C4)
    return a, b


def payload(pid: int, seq: int) -> bytes:
    return struct.pack("<IIQQ", pid, seq, *_mix(pid, seq))


def _check_values(values: np.ndarray, what: str) -> np.ndarray:
    """values: (n, 24) uint8 -> structured records, after checking every mix."""
    recs = np.ascontiguousarray(values).view(REC).reshape(-1)
    a, b = _mix_np(recs["pid"], recs["seq"])
    bad = np.nonzero((recs["a"] != a) | (recs["b"] != b))[0]
    assert len(bad) == 0, (
        f"{what}: {len(bad)} records with a wrong checksum, first at index {bad[0]}: {bytes(values[bad[0]]).hex()}"
    )
    return recs


# ------------------------------------------------------------------ children


# ------------------------------------------------------------------ single partition, 4 x 250k

N_PRODUCERS = 4
PER_PRODUCER = 250_000
TOTAL = N_PRODUCERS * PER_PRODUCER
MODES = ["send", "send_key", "batch100", "batch_random"]


def _produce(kwargs, topic, pid, n, mode, go):
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=30_000)
    acked = np.empty(n, np.int64)
    go.wait(30)
    t0 = time.monotonic()
    if mode == "send":  # express path after the first send
        for seq in range(n):
            md = p.send(topic, payload(pid, seq), partition=0)
            acked[seq] = md.offset
    elif mode == "send_key":  # keyed full path; 1 partition, so murmur2 % 1 == 0
        for seq in range(n):
            v = payload(pid, seq)
            md = p.send(topic, v, key=v[:KEY_BYTES])
            assert md.partition == 0
            acked[seq] = md.offset
    else:
        rng = random.Random(pid)
        seq = 0
        packed = False
        while seq < n:
            k = 100 if mode == "batch100" else rng.randint(1, 300)
            k = min(k, n - seq)
            vals = [payload(pid, s) for s in range(seq, seq + k)]
            if packed:  # batch_random alternates send_batch / send_packed
                (bm,) = p.send_packed(topic, b"".join(vals), array("q", [VALUE_BYTES] * k), partition=0)
            else:
                (bm,) = p.send_batch(topic, vals, partition=0)
            assert (bm.partition, bm.count) == (0, k), bm
            acked[seq : seq + k] = np.arange(bm.base_offset, bm.base_offset + k)
            seq += k
            packed = mode == "batch_random" and not packed
    p.close()
    log.close()
    return {"acked": acked, "seconds": time.monotonic() - t0}


def _consume_messages(kwargs, topic, total, budget_s):
    """Reads with poll_batch (Message objects)."""
    log = shmlog.connect(**kwargs)
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, 0)])
    offsets, vlens, klens = array("q"), array("q"), array("q")
    vblob, kblob = bytearray(), bytearray()
    zero_k = bytes(KEY_BYTES)
    deadline = time.monotonic() + budget_s
    n = 0
    while n < total and time.monotonic() < deadline:
        for m in c.poll_batch(10_000, timeout=0.2):
            offsets.append(m.offset)
            v, k = m.value, m.key
            vlens.append(-1 if v is None else len(v))
            if v is not None and len(v) == VALUE_BYTES:
                vblob += v
            else:
                vblob += (v or b"")[:VALUE_BYTES].ljust(VALUE_BYTES, b"\0")
            if k is None:
                klens.append(-1)
                kblob += zero_k
            else:
                klens.append(len(k))
                kblob += k[:KEY_BYTES].ljust(KEY_BYTES, b"\0")
            n += 1
    extra = c.poll_batch(100, timeout=0.3)  # nothing may follow the last record
    c.close()
    log.close()
    return {
        "offsets": np.frombuffer(offsets, np.int64).copy(),
        "vlens": np.frombuffer(vlens, np.int64).copy(),
        "values": np.frombuffer(bytes(vblob), np.uint8).reshape(-1, VALUE_BYTES),
        "klens": np.frombuffer(klens, np.int64).copy(),
        "keys": np.frombuffer(bytes(kblob), np.uint8).reshape(-1, KEY_BYTES),
        "extra": [(m.offset, m.value) for m in extra],
    }


def _gather(buf, starts, lens, width):
    out = np.zeros((len(starts), width), np.uint8)
    ok = lens == width
    if ok.any():
        out[ok] = buf[starts[ok, None] + np.arange(width)]
    return out


def _consume_columns(kwargs, topic, total, budget_s):
    """Reads with poll_columns (numpy columns, no per-record objects)."""
    log = shmlog.connect(**kwargs)
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, 0)])
    parts = {k: [] for k in ("offsets", "vlens", "values", "klens", "keys")}
    deadline = time.monotonic() + budget_s
    n = 0
    while n < total and time.monotonic() < deadline:
        cols = c.poll_columns(65_536, timeout=0.2)
        if cols is None:
            continue
        buf = np.frombuffer(cols.values, np.uint8)
        vs, vl = np.asarray(cols.value_starts), np.asarray(cols.value_lengths)
        ks, kl = np.asarray(cols.key_starts), np.asarray(cols.key_lengths)
        parts["offsets"].append(np.array(cols.offsets, np.int64))
        parts["vlens"].append(np.array(vl, np.int64))
        parts["values"].append(_gather(buf, vs, vl, VALUE_BYTES))
        parts["klens"].append(np.array(kl, np.int64))
        parts["keys"].append(_gather(buf, ks, kl, KEY_BYTES))
        n += len(cols)
    extra = c.poll_batch(100, timeout=0.3)
    c.close()
    log.close()
    res = {k: np.concatenate(v) if v else np.empty((0,), np.int64) for k, v in parts.items()}
    res["extra"] = [(m.offset, m.value) for m in extra]
    return res


def _verify_single_partition(name, res, acked):
    offsets = res["offsets"]
    assert not res["extra"], f"{name}: records after the last expected one: {res['extra'][:5]}"
    assert len(offsets) == TOTAL, f"{name}: consumed {len(offsets)} records, expected {TOTAL}"
    d = np.diff(offsets)
    assert (d > 0).all(), f"{name}: offsets not strictly increasing at index {int(np.argmin(d > 0))}"
    # no kills, no overwrites: offsets are dense, so strictly increasing + count = exactly once
    assert offsets[0] == 0 and offsets[-1] == TOTAL - 1, (name, offsets[0], offsets[-1])
    wrong = np.nonzero(res["vlens"] != VALUE_BYTES)[0]
    assert len(wrong) == 0, f"{name}: value of length {res['vlens'][wrong[0]]} at offset {offsets[wrong[0]]}"
    recs = _check_values(res["values"], name)
    for pid in range(N_PRODUCERS):
        mine = recs["pid"] == pid
        seqs = recs["seq"][mine]
        assert len(seqs) == PER_PRODUCER, f"{name}: producer {pid}: {len(seqs)} records"
        assert np.array_equal(seqs, np.arange(PER_PRODUCER)), (
            f"{name}: producer {pid}: records out of order or duplicated"
        )
        got = offsets[mine]
        diff = np.nonzero(got != acked[pid])[0]
        assert len(diff) == 0, (
            f"{name}: producer {pid} seq {diff[0]} was acknowledged at offset "
            f"{acked[pid][diff[0]]} but consumed at {got[diff[0]]}"
        )
    keyed = recs["pid"] == MODES.index("send_key")
    assert (res["klens"][keyed] == KEY_BYTES).all(), f"{name}: keyed producer's key missing"
    assert np.array_equal(res["keys"][keyed], res["values"][keyed][:, :KEY_BYTES]), f"{name}: wrong key"
    assert (res["klens"][~keyed] == -1).all(), f"{name}: a keyless record has a key"
    # the producers really ran at the same time: their records interleave
    return int(np.count_nonzero(np.diff(recs["pid"].astype(np.int64))))


def test_four_producers_one_partition_two_consumers(inst, tmp_path):
    # ~2 x 250k single-record frames of 112-120 B + 2 x 250k batched records of ~32 B:
    # ~80 MB of frames, so a 128 MiB ring is never overwritten (checked at the end)
    topic = "mp"
    inst.log.create_topic(topic, persistence="none", partitions=1, ring_bytes=128 << 20)
    go = CTX.Event()
    start = time.monotonic()
    deadline = start + 150
    consumers = [
        inst.spawn("consumer-messages", _consume_messages, inst.kwargs, topic, TOTAL, 120),
        inst.spawn("consumer-columns", _consume_columns, inst.kwargs, topic, TOTAL, 120),
    ]
    producers = [
        inst.spawn(f"producer-{pid}-{mode}", _produce, inst.kwargs, topic, pid, PER_PRODUCER, mode, go)
        for pid, mode in enumerate(MODES)
    ]
    go.set()
    res = inst.collect(producers + consumers, deadline)
    acked = [res[name]["acked"] for name, _, _ in producers]
    for pid, a in enumerate(acked):
        assert (np.diff(a) > 0).all(), f"producer {pid}: acknowledged offsets not increasing"
    switches = []
    for name, _, _ in consumers:
        switches.append(_verify_single_partition(name, res[name], acked))
    assert switches[0] == switches[1], "the two consumers saw different interleavings"
    assert switches[0] >= N_PRODUCERS - 1
    info = inst.log.describe_topic(topic).partitions[0]
    assert info.end_offset == TOTAL
    assert info.log_start_offset == 0 and info.overwritten_frames == 0, f"the ring was too small for this test: {info}"
    assert info.sealed_writes == 0


# ------------------------------------------------------------------ keys over several partitions

KEYED_PARTITIONS = 4
KEYED_PRODUCERS = 3
KEYED_PER_PRODUCER = 20_000
N_KEYS = 64


def kafka_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (signed 32-bit result), in plain Python."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, n: int) -> int:
    return (kafka_murmur2(key) & 0x7FFFFFFF) % n


def _key(i: int) -> bytes:
    return b"key-%03d" % i


KREC = struct.Struct("<IIIIQ")  # pid, seq, key index, per-(pid, key) sequence, mix


def _kpayload(pid, seq, ki, kseq):
    return KREC.pack(pid, seq, ki, kseq, _mix(pid * 1000 + ki, seq * 100_000 + kseq)[1])


def _produce_keyed(kwargs, topic, pid, n, go):
    log = shmlog.connect(**kwargs)
    p = log.producer(max_block_ms=30_000)
    rng = random.Random(1000 + pid)
    kseq = [0] * N_KEYS
    acked = {}  # seq -> (partition, offset)
    go.wait(30)
    seq = 0
    while seq < n:
        k = min(n - seq, rng.randint(1, 50))
        batch = []
        for s in range(seq, seq + k):
            ki = rng.randrange(N_KEYS)
            batch.append((s, ki, _kpayload(pid, s, ki, kseq[ki])))
            kseq[ki] += 1
        if pid == 0:  # one send per record, key chooses the partition
            for s, ki, v in batch:
                md = p.send(topic, v, key=_key(ki))
                acked[s] = (md.partition, md.offset)
        elif pid == 1:  # with headers, too
            for s, ki, v in batch:
                md = p.send(topic, v, key=_key(ki), headers={"pid": b"1", "seq": str(s).encode()})
                acked[s] = (md.partition, md.offset)
        else:  # send_batch with keys: grouped by partition, order kept
            mds = p.send_batch(topic, [v for _, _, v in batch], keys=[_key(ki) for _, ki, _ in batch])
            by_part = {}
            for s, ki, _ in batch:
                by_part.setdefault(kafka_partition(_key(ki), KEYED_PARTITIONS), []).append(s)
            assert sorted(md.partition for md in mds) == sorted(by_part), (mds, sorted(by_part))
            for md in mds:
                seqs = by_part[md.partition]
                assert md.count == len(seqs)
                for i, s in enumerate(seqs):
                    acked[s] = (md.partition, md.base_offset + i)
        seq += k
    p.close()
    log.close()
    return acked


def _consume_keyed(kwargs, topic, total, budget_s):
    log = shmlog.connect(**kwargs)
    c = log.consumer(topics=[topic], auto_offset_reset="earliest")
    got = []
    deadline = time.monotonic() + budget_s
    while len(got) < total and time.monotonic() < deadline:
        for m in c.poll_batch(5_000, timeout=0.2):
            got.append((m.partition, m.offset, m.key, m.value, m.headers))
    extra = c.poll_batch(100, timeout=0.3)
    c.close()
    log.close()
    return {"got": got, "extra": [(m.partition, m.offset) for m in extra]}


def test_murmur2_matches_kafka():
    # Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java)
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    from shmlog._native import lib

    for k, want in cases.items():
        assert kafka_murmur2(k) == want, k
        assert lib.shm_murmur2(k, len(k)) == want, k


def test_keys_same_partition_across_processes(inst, tmp_path):
    topic = "keyed"
    inst.log.create_topic(topic, persistence="none", partitions=KEYED_PARTITIONS, ring_bytes=8 << 20)
    total = KEYED_PRODUCERS * KEYED_PER_PRODUCER
    go = CTX.Event()
    deadline = time.monotonic() + 90
    consumers = [inst.spawn(f"keyed-consumer-{i}", _consume_keyed, inst.kwargs, topic, total, 75) for i in range(2)]
    producers = [
        inst.spawn(f"keyed-producer-{pid}", _produce_keyed, inst.kwargs, topic, pid, KEYED_PER_PRODUCER, go)
        for pid in range(KEYED_PRODUCERS)
    ]
    go.set()
    res = inst.collect(producers + consumers, deadline)
    acked = [res[name] for name, _, _ in producers]
    desc = inst.log.describe_topic(topic)
    assert all(p.overwritten_frames == 0 and p.log_start_offset == 0 for p in desc.partitions), desc
    assert sum(p.end_offset for p in desc.partitions) == total

    views = []
    for name, _, _ in consumers:
        r = res[name]
        assert not r["extra"], f"{name}: unexpected records {r['extra'][:5]}"
        got = r["got"]
        assert len(got) == total, f"{name}: consumed {len(got)}, expected {total}"
        key_part = {}
        last_off = {}
        last_kseq = {}
        seen = {}
        for part, off, key, value, headers in got:
            assert off > last_off.get(part, -1), f"{name}: partition {part} offset {off} after {last_off[part]}"
            last_off[part] = off
            assert len(value) == KREC.size, f"{name}: value of {len(value)} bytes at {part}/{off}"
            pid, seq, ki, kseq, mix = KREC.unpack(value)
            assert mix == _mix(pid * 1000 + ki, seq * 100_000 + kseq)[1], f"{name}: bad checksum at {part}/{off}"
            assert key == _key(ki), f"{name}: record {pid}/{seq} has key {key!r}, expected {_key(ki)!r}"
            key_part.setdefault(key, set()).add(part)
            assert part == kafka_partition(key, KEYED_PARTITIONS), (
                f"{name}: key {key!r} in partition {part}, Kafka's partitioner says {kafka_partition(key, KEYED_PARTITIONS)}"
            )
            want_h = (("pid", b"1"), ("seq", str(seq).encode())) if pid == 1 else ()
            assert tuple(headers) == want_h, f"{name}: record {pid}/{seq} has headers {headers!r}"
            # per (producer, key) order survives, whatever the interleaving
            assert kseq == last_kseq.get((pid, ki), -1) + 1, (
                f"{name}: producer {pid} key {ki}: sequence {kseq} after {last_kseq.get((pid, ki))}"
            )
            last_kseq[(pid, ki)] = kseq
            assert (pid, seq) not in seen, f"{name}: record {pid}/{seq} delivered twice"
            seen[(pid, seq)] = (part, off)
        assert all(len(ps) == 1 for ps in key_part.values()), f"{name}: a key in several partitions"
        assert len(key_part) == N_KEYS
        assert len({next(iter(ps)) for ps in key_part.values()}) == KEYED_PARTITIONS
        for pid in range(KEYED_PRODUCERS):
            for seq in range(KEYED_PER_PRODUCER):
                assert seen.get((pid, seq)) == acked[pid][seq], (
                    f"{name}: record {pid}/{seq} acknowledged at {acked[pid][seq]}, consumed at {seen.get((pid, seq))}"
                )
        views.append(seen)
    assert views[0] == views[1]
