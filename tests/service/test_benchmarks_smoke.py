"""Smoke tests of the benchmark suite: every peer adapter moves a few records through every row it
offers (seconds, not a benchmark), and the consumers' verification marks a run failed when one record
is dropped, two are swapped, or one record's last 8 bytes (its tail copy of the sequence number) are corrupted. A peer whose package or server is missing is skipped with the reason."""

import tempfile

import pytest

from benchmarks import peers as registry
from benchmarks import runner
from benchmarks.peers.base import Channel
from benchmarks.workloads import HELLO_SEQ

TINY = {"T1-msg": 300, "T1-batch": 3000, "T2-spin": 50, "T2-block": 50, "T3": 4, "T4": 200}


@pytest.fixture(params=list(registry.PEERS))
def peer(request, inst):
    p, reason = registry.load(request.param)
    if p is None:
        pytest.skip(f"{request.param}: {reason}")
    if request.param == "shmlog":
        p.connect_kwargs = inst.kwargs  # the test's own isolated instance
    with tempfile.TemporaryDirectory(prefix="shmlogbench-test-") as workdir:
        try:
            p.setup(workdir)
        except Exception as e:
            pytest.skip(f"{request.param}: setup failed: {e}")
        try:
            yield p
        finally:
            p.teardown()
            if request.param == "shmlog":
                p.connect_kwargs = None


def _run(p, row, mode, n=None, tag=""):
    return runner.run_row(p, row, mode, True, f"smoke{tag}-{row}-{mode}", timeout=20, n=n or TINY[row])


def test_every_row_of_every_peer_delivers_and_verifies(peer):
    ran = 0
    for row in TINY:
        for mode in peer.modes(row):
            r = _run(peer, row, mode)
            assert r["ok"], f"{peer.name} {row} {mode}: {r['error']}"
            if row.startswith("T2"):
                assert 0 < r["value"]["p50"] <= r["value"]["p99"] <= r["value"]["max"]
            else:
                assert r["value"] > 0
            ran += 1
    assert ran >= 4


class _Faulty(Channel):
    """Wraps a channel: its sender drops record `at`, swaps it with the next one, or corrupts its last byte."""

    def __init__(self, ch, fault, at):
        self.ch, self.fault, self.at = ch, fault, at

    def sender(self):
        return _FaultySender(self.ch.sender(), self.fault, self.at)

    def receiver(self, index=0):
        return self.ch.receiver(index)

    def close(self):
        self.ch.close()


class _FaultySender:
    def __init__(self, tx, fault, at):
        self.tx, self.fault, self.at, self.held = tx, fault, at, None
        self.flush = getattr(tx, "flush", None) or (lambda: None)

    def _mangle(self, bufs):
        out = []
        for b in bufs:
            seq = int.from_bytes(b[:8], "little")
            if seq == HELLO_SEQ:
                out.append(b)
            elif seq == self.at:
                if self.fault == "tail":  # the head seq is intact: only the tail check can notice
                    out.append(b[:-1] + bytes([b[-1] ^ 0xFF]))
                elif self.fault == "swap":
                    self.held = b  # sent after the next record
            elif self.held is not None:
                out += [b, self.held]
                self.held = None
            else:
                out.append(b)
        return out

    def send(self, buf):
        for b in self._mangle([buf]):
            self.tx.send(b)

    def send_batch(self, bufs):
        self.tx.send_batch(self._mangle(bufs))

    def close(self):
        self.tx.close()


class _FaultyPeer:
    def __init__(self, peer, fault, at):
        self.peer, self.fault, self.at = peer, fault, at

    def channel(self, *args, **kwargs):
        return _Faulty(self.peer.channel(*args, **kwargs), self.fault, self.at)


@pytest.mark.parametrize("fault", ["drop", "swap"])
def test_verification_fails_a_run_that_lost_or_reordered_a_record(peer, fault):
    for row in ("T1-msg", "T1-batch", "T4"):
        for mode in peer.modes(row):
            n = TINY[row]
            r = _run(_FaultyPeer(peer, fault, n // 2), row, mode, n=n, tag=fault)
            assert not r["ok"] and r["value"] is None, f"{peer.name} {row} {mode}: a {fault} went unnoticed"
            assert "order/completeness" in r["error"], r["error"]
            break  # one mode per row keeps this test in seconds


def test_scaling_points_verify_and_measure(inst):
    from benchmarks import scaling

    r = scaling.partitions(8, rate=20_000, seconds=0.1, instance=inst.kwargs)
    assert r["ok"], r.get("error")
    assert r["records"] == 2000 and r["rate"] > 0 and 0 < r["p50_us"] <= r["p99_us"]
    t = scaling.topics(20, instance=inst.kwargs)
    assert t["ok"], t.get("error")
    assert t["partitions"] == 80 and t["ring_bytes"] == 64 << 20
    # an idle partition holds its header and first 64 KiB, not its 64 MiB ring (memory follows traffic)
    assert 64 << 10 <= t["shm_bytes_per_partition"] <= 96 << 10


def test_group_rows_deliver_every_record_once_and_time_a_rebalance(inst):
    from benchmarks import groups

    if not groups.available():
        pytest.skip("this shmlog has no consumer-group API")
    r = groups.throughput(1, 2, 2000, timeout=60, instance=inst.kwargs)
    assert r["ok"], r.get("error")
    assert r["records"] == 2000 and r["value"] > 0
    rb = groups.rebalance(True, kills=2, instance=inst.kwargs)
    assert rb["ok"], rb.get("error")
    assert len(rb["samples_ms"]) == 2 and 0 < rb["p50_ms"] < 15_000


def test_verification_fails_a_run_whose_record_has_a_corrupted_tail(peer):
    """Every batch receive path (list, columns, packed, aio) and every T3 path (zero-copy views
    included) of every peer; one mode of the per-record rows."""
    for row in ("T1-msg", "T1-batch", "T2-spin", "T2-block", "T3", "T4"):
        modes = list(peer.modes(row))
        for mode in modes if row in ("T1-batch", "T3") else modes[:1]:
            n = TINY[row]
            r = _run(_FaultyPeer(peer, "tail", n // 2), row, mode, n=n, tag="tail")
            assert not r["ok"] and r["value"] is None, f"{peer.name} {row} {mode}: a corrupted tail went unnoticed"
            assert "integrity: head seq" in r["error"], f"{peer.name} {row} {mode}: {r['error']}"
