"""Peer adapter: multiprocessing.Queue (stdlib, pickles objects, feeder thread + pipe)."""
import multiprocessing as mp
import platform
import queue as _queue

from .base import Channel, Peer, seqs_of

_CTX = mp.get_context("fork")


class _Tx:
    def __init__(self, q):
        self.q = q

    def send(self, buf):
        self.q.put(buf)

    def send_batch(self, bufs):
        self.q.put(bufs)          # the whole list travels as ONE pickled message

    def close(self):
        self.q.close()
        self.q.join_thread()      # flush the feeder thread before exit


class _Rx:
    def __init__(self, q):
        self.q = q

    def recv(self, timeout):
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
    def __init__(self):
        self.q = _CTX.Queue()     # unbounded (the default)

    def sender(self):
        return _Tx(self.q)

    def receiver(self):
        return _Rx(self.q)

    def close(self):
        self.q.close()
        self.q.cancel_join_thread()


class MpQueuePeer(Peer):
    name = "mpqueue"

    def versions(self):
        return {"python-multiprocessing": platform.python_version()}

    def modes(self, row):
        return {
            "T1-msg": {"queue": "mp.Queue put/get per record (pickled bytes, unbounded)"},
            "T1-batch": {"list": "mp.Queue put/get of a list of 1000 records as ONE pickled message"},
            "T2": {"queue": "two mp.Queues, blocking get"},
            "T3": {"queue": "mp.Queue put/get per 1 MiB record (pickled; pipe copies)"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count):
        return _Ch()


PEER = MpQueuePeer()
