"""Child-process bodies of the workloads (T1/T3 producer+consumer, T2 pinger+ponger) and their sizes.

Clock: time.monotonic_ns() is CLOCK_MONOTONIC, one system-wide clock, so a producer's t0 and a
consumer's t_end are comparable. Every consumer checks seq == expected for every record.
"""
import time

import numpy as np

HELLO_SEQ = (1 << 64) - 1      # handshake record sent before t0 so both ends are connected
BATCH = 1000                   # records per send_batch call

SIZES = {   # quick: the whole suite finishes in < 1 minute on 2 cores
    True: {"T1-msg": 20_000, "T1-batch": 200_000, "T2": 2_000, "T2-warmup": 200, "T3": 256},
    False: {"T1-msg": 500_000, "T1-batch": 5_000_000, "T2": 100_000, "T2-warmup": 5_000, "T3": 512},
}
RECORD = {"T1-msg": 100, "T1-batch": 100, "T2": 64, "T3": 1 << 20}


def now():
    return time.monotonic_ns()


def records(n, size, first=0):
    pad = b"x" * (size - 8)
    return [i.to_bytes(8, "little") + pad for i in range(first, first + n)]


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


def _seq(buf):
    return int.from_bytes(buf[:8], "little")


def producer(ch, n, size, batch, ready, go, deadline):
    recs = records(n, size)                      # built before t0: we time the transport
    chunks = [recs[i:i + batch] for i in range(0, n, batch)] if batch else None
    _wait(ready, deadline, "consumer ready")
    tx = ch.sender()
    tx.send(HELLO_SEQ.to_bytes(8, "little") + b"h" * (size - 8))
    _wait(go, deadline, "consumer to receive the handshake record")
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


def consumer(ch, n, batch, ready, go, deadline):
    rx = ch.receiver()
    ready.set()
    if _seq(_recv(rx, deadline, "handshake record")) != HELLO_SEQ:
        raise AssertionError("first record is not the handshake record")
    go.set()
    expected = 0
    if batch:
        while expected < n:
            s = rx.recv_seqs(0.5)
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
            if _seq(buf) != expected:
                raise AssertionError(f"order/completeness: expected seq {expected}, got {_seq(buf)}")
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
    tx.send(HELLO_SEQ.to_bytes(8, "little") + b"h" * (size - 8))
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
        if _seq(buf) != i:
            raise AssertionError(f"order/completeness: expected echo seq {i}, got {_seq(buf)}")
    tx.close()
    rx.close()
    us = lat[warmup:] / 1000.0
    p = np.percentile(us, [50, 99, 99.9])
    return {"p50": p[0], "p99": p[1], "p99.9": p[2], "max": float(us.max()), "mean": float(us.mean())}


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
        if _seq(buf) != i:
            raise AssertionError(f"order/completeness: expected ping seq {i}, got {_seq(buf)}")
        send(buf)                                  # echo the received record
    tx.close()
    rx.close()
    return {}
