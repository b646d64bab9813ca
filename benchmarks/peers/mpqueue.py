"""Peer adapter: multiprocessing.Queue (stdlib, pickles objects, feeder thread + pipe).
Fan-out (T4) has no native form: the producer puts every record into one queue per consumer."""

import multiprocessing as mp
import platform
import queue as _queue

from .base import Channel, Peer, seqs_of, spin_until

_CTX = mp.get_context("fork")


class _Tx:
    def __init__(self, qs):
        self.qs = qs

    def send(self, buf):
        for q in self.qs:
            q.put(buf)

    def send_batch(self, bufs):
        for q in self.qs:
            q.put(bufs)  # the whole list travels as ONE pickled message

    def close(self):
        for q in self.qs:
            q.close()
            q.join_thread()  # flush the feeder thread before exit


class _Rx:
    def __init__(self, q, spin):
        self.q, self.spin = q, spin

    def _poll(self):
        try:
            return self.q.get_nowait()
        except _queue.Empty:
            return None

    def recv(self, timeout):
        if self.spin:
            return spin_until(self._poll, timeout)
        try:
            return self.q.get(timeout=timeout)
        except _queue.Empty:
            return None

    def recv_seqs(self, timeout):
        try:
            return seqs_of(self.q.get(timeout=timeout))
        except _queue.Empty:
            return seqs_of([])

    def close(self):
        pass


class _Ch(Channel):
    def __init__(self, consumers, spin):
        self.qs = [_CTX.Queue() for _ in range(consumers)]  # unbounded (the default)
        self.spin = spin

    def sender(self):
        return _Tx(self.qs)

    def receiver(self, index=0):
        return _Rx(self.qs[index], self.spin)

    def close(self):
        for q in self.qs:
            q.close()
            q.cancel_join_thread()


class MpQueuePeer(Peer):
    name = "mpqueue"

    def versions(self):
        return {"python-multiprocessing": platform.python_version()}

    def scale(self, row, mode):
        return {
            ("T1-msg", "queue"): 0.3,
            ("T4", "queues"): 0.2,
            ("T2-spin", "get_nowait"): 0.3,
            ("T2-block", "queue"): 0.5,
        }.get((row, mode), 1.0)

    def modes(self, row):
        return {
            "T1-msg": {"queue": "mp.Queue put/get per record (pickled bytes, unbounded)"},
            "T1-batch": {"list": "mp.Queue put/get of a list of 1000 records as ONE pickled message"},
            "T2-spin": {"get_nowait": "two mp.Queues, the receiver loops on get_nowait()"},
            "T2-block": {"queue": "two mp.Queues, blocking get"},
            "T3": {"queue": "mp.Queue put/get per 1 MiB record (pickled; pipe copies)"},
            "T4": {"queues": "one mp.Queue per consumer, the producer puts every record 4 times"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        return _Ch(consumers, spin=row == "T2-spin")


PEER = MpQueuePeer()
