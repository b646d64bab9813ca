"""Peer adapter: faster-fifo Queue (shared-memory circular buffer, raw bytes, no pickling).
Fan-out (T4) has no native form: the producer puts every record into one queue per consumer."""

import queue as _queue

from .base import Channel, Peer, seqs_of, spin_until

_QUEUE = "Queue(max_size_bytes=64 MiB, dumps=identity, loads=bytes)"


def _ident(x):
    return x


class _Tx:
    def __init__(self, qs):
        self.qs = qs

    def send(self, buf):
        for q in self.qs:
            q.put(buf, timeout=30.0)

    def send_batch(self, bufs):
        for q in self.qs:
            q.put_many(bufs, timeout=30.0)

    def close(self):
        pass


class _Rx:
    def __init__(self, q, spin):
        self.q, self.spin = q, spin

    def _poll(self):
        try:
            return self.q.get(block=False)
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
            return seqs_of(self.q.get_many(timeout=timeout, max_messages_to_get=10_000))
        except _queue.Empty:
            return seqs_of([])

    def close(self):
        pass


class _Ch(Channel):
    def __init__(self, qs, spin):
        self.qs, self.spin = qs, spin

    def sender(self):
        return _Tx(self.qs)

    def receiver(self, index=0):
        return _Rx(self.qs[index], self.spin)

    def close(self):
        for q in self.qs:
            q.close()


class FasterFifoPeer(Peer):
    name = "fasterfifo"

    def check(self):
        try:
            import faster_fifo  # noqa: F401
        except ImportError as e:
            return f"faster-fifo not importable ({e})"

    def versions(self):
        from importlib.metadata import version

        return {"faster-fifo": version("faster-fifo")}

    def scale(self, row, mode):
        return {("T1-batch", "many"): 0.3, ("T4", "queues"): 0.3}.get((row, mode), 1.0)

    def modes(self, row):
        return {
            "T1-msg": {"queue": f"{_QUEUE}, put/get per record"},
            "T1-batch": {"many": f"{_QUEUE}, put_many(1000 records)/get_many(<=10000)"},
            "T2-spin": {"get_nowait": f"two {_QUEUE}, the receiver loops on get(block=False)"},
            "T2-block": {"queue": f"two {_QUEUE}, blocking get"},
            "T3": {"queue": f"{_QUEUE}, put/get per 1 MiB record"},
            "T4": {"queues": f"one {_QUEUE} per consumer, the producer puts every record 4 times"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        import faster_fifo

        size = max(64 << 20, 4 * record_size)
        qs = [faster_fifo.Queue(max_size_bytes=size, dumps=_ident, loads=bytes) for _ in range(consumers)]
        return _Ch(qs, spin=row == "T2-spin")


PEER = FasterFifoPeer()
