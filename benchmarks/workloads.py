"""Child-process bodies of the workloads (T1/T3/T4 producer+consumers, T2 pinger+ponger) and their sizes.

Clock: time.monotonic_ns() is CLOCK_MONOTONIC, one system-wide clock, so a producer's t0 and a
consumer's t_end are comparable. Every record carries its sequence number in its first AND its last 8
bytes (peers/base.py stamp); every consumer checks both ends agree and seq == expected for every record.
"""

import time

import numpy as np

from .peers.base import seq_of, stamp

HELLO_SEQ = (1 << 64) - 1  # handshake record sent before t0 so both ends are connected
BATCH = 1000  # records per send_batch call

SIZES = {  # records per run; quick: the whole suite finishes in < 1 minute on 2 cores
    True: {
        "T1-msg": 10_000,
        "T1-batch": 50_000,
        "T2-spin": 300,
        "T2-block": 300,
        "T2-block-loaded": 300,
        "T2-warmup": 30,
        "T3": 32,
        "T4": 3_000,
    },
    False: {
        "T1-msg": 300_000,
        "T1-batch": 3_000_000,
        "T2-spin": 20_000,
        "T2-block": 20_000,
        "T2-block-loaded": 20_000,
        "T2-warmup": 2_000,
        "T3": 384,
        "T4": 100_000,
    },
}
RECORD = {
    "T1-msg": 100,
    "T1-batch": 100,
    "T2-spin": 64,
    "T2-block": 64,
    "T2-block-loaded": 64,
    "T3": 1 << 20,
    "T4": 100,
}
PERCENTILES = (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)  # T2 latency curve


def now():
    return time.monotonic_ns()


def records(n, size, first=0):
    return [stamp(i, size) for i in range(first, first + n)]


def _wait(ev, deadline, what):
    if not ev.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"timed out waiting for {what}")


def _recv(rx, deadline, what):
    while True:
        buf = rx.recv(0.5)
        if buf is not None:
            return buf
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")


_seq = seq_of  # head == tail checked, else IntegrityError


def _handshake(tx, size, gos, deadline):
    """Sends the handshake record until every consumer saw one (a late SUB may miss the first)."""
    hello = stamp(HELLO_SEQ, size, b"h")
    flush = getattr(tx, "flush", None)  # senders that queue records (redis pipelined)
    while True:
        tx.send(hello)
        if flush is not None:
            flush()
        end = time.monotonic() + 0.05
        while time.monotonic() < end:
            if all(g.is_set() for g in gos):
                return
            time.sleep(0.001)
        if time.monotonic() > deadline:
            raise TimeoutError("consumers did not receive the handshake record")


def producer(ch, n, size, batch, readies, gos, deadline):
    """readies/gos: one Event per consumer. Returns t0 (before the first record) and t_sent."""
    recs = records(n, size)  # built before t0: we time the transport
    chunks = [recs[i : i + batch] for i in range(0, n, batch)] if batch else None
    for ready in readies:
        _wait(ready, deadline, "consumer ready")
    tx = ch.sender()
    _handshake(tx, size, gos, deadline)
    t0 = now()
    if batch:
        for c in chunks:
            tx.send_batch(c)
    else:
        send = tx.send
        for r in recs:
            send(r)
    t_sent = now()
    tx.close()
    return {"t0": t0, "t_sent": t_sent}


def consumer(ch, index, n, batch, ready, go, deadline):
    rx = ch.receiver(index)
    ready.set()
    if _seq(_recv(rx, deadline, "handshake record")) != HELLO_SEQ:
        raise AssertionError("first record is not the handshake record")
    go.set()
    expected = 0
    if batch:
        while expected < n:
            s = rx.recv_seqs(0.5)
            s = s[s != HELLO_SEQ] if expected == 0 else s  # repeated handshake records
            if len(s) == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"received {expected} of {n} records")
                continue
            if int(s[0]) != expected or (len(s) > 1 and not (np.diff(s) == 1).all()):
                bad = np.flatnonzero(s != np.arange(expected, expected + len(s), dtype=np.uint64))[0]
                raise AssertionError(f"order/completeness: expected seq {expected + bad}, got {int(s[bad])}")
            expected += len(s)
    else:
        recv = rx.recv
        while expected < n:
            buf = recv(0.5)
            if buf is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"received {expected} of {n} records")
                continue
            seq = _seq(buf)
            if seq != expected:
                if expected == 0 and seq == HELLO_SEQ:  # repeated handshake records
                    continue
                raise AssertionError(f"order/completeness: expected seq {expected}, got {seq}")
            expected += 1
    t_end = now()
    if expected != n:
        raise AssertionError(f"received {expected} records, sent {n}")
    rx.close()
    return {"t_end": t_end, "received": expected}


def pinger(ping, pong, iters, warmup, size, my_ready, peer_ready, deadline):
    rx = pong.receiver()
    my_ready.set()
    _wait(peer_ready, deadline, "ponger ready")
    tx = ping.sender()
    tx.send(stamp(HELLO_SEQ, size, b"h"))
    if _seq(_recv(rx, deadline, "handshake echo")) != HELLO_SEQ:
        raise AssertionError("handshake echo mismatch")
    total = warmup + iters
    recs = records(total, size)
    lat = np.empty(total, np.int64)
    clock, send, recv = time.perf_counter_ns, tx.send, rx.recv
    for i, r in enumerate(recs):
        t1 = clock()
        send(r)
        buf = recv(0.5)
        while buf is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no echo for seq {i}")
            buf = recv(0.5)
        lat[i] = clock() - t1
        seq = _seq(buf)
        if seq != i:
            raise AssertionError(f"order/completeness: expected echo seq {i}, got {seq}")
    tx.close()
    rx.close()
    us = lat[warmup:] / 1000.0
    curve = [float(x) for x in np.percentile(us, PERCENTILES)]
    p = dict(zip(PERCENTILES, curve))
    return {"p50": p[50], "p99": p[99], "p99.9": p[99.9], "max": p[100], "mean": float(us.mean()), "curve": curve}


def ponger(ping, pong, total, my_ready, peer_ready, deadline):
    rx = ping.receiver()
    my_ready.set()
    _wait(peer_ready, deadline, "pinger ready")
    tx = pong.sender()
    tx.send(_recv(rx, deadline, "handshake record"))
    recv, send = rx.recv, tx.send
    for i in range(total):
        buf = recv(0.5)
        while buf is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ping seq {i}")
            buf = recv(0.5)
        seq = _seq(buf)
        if seq != i:
            raise AssertionError(f"order/completeness: expected ping seq {i}, got {seq}")
        send(buf)  # echo the received record
    tx.close()
    rx.close()
    return {}
