"""Peer adapter: faster-fifo Queue (shared-memory circular buffer, raw bytes, no pickling)."""
import queue as _queue

from .base import Channel, Peer, seqs_of


def _ident(x):
    return x


class _Tx:
    def __init__(self, q):
        self.q = q

    def send(self, buf):
        self.q.put(buf, timeout=30.0)

    def send_batch(self, bufs):
        self.q.put_many(bufs, timeout=30.0)

    def close(self):
        pass


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
            return seqs_of(self.q.get_many(timeout=timeout, max_messages_to_get=10_000))
        except _queue.Empty:
            return seqs_of([])

    def close(self):
        pass


class _Ch(Channel):
    def __init__(self, q):
        self.q = q

    def sender(self):
        return _Tx(self.q)

    def receiver(self):
        return _Rx(self.q)

    def close(self):
        self.q.close()


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

    def modes(self, row):
        q = "Queue(max_size_bytes=64 MiB, dumps=identity, loads=bytes)"
        return {
            "T1-msg": {"queue": f"{q}, put/get per record"},
            "T1-batch": {"many": f"{q}, put_many(1000 records)/get_many(<=10000)"},
            "T2": {"queue": f"two {q}, blocking get"},
            "T3": {"queue": f"{q}, put/get per 1 MiB record"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count):
        import faster_fifo
        return _Ch(faster_fifo.Queue(max_size_bytes=64 << 20, dumps=_ident, loads=bytes))


PEER = FasterFifoPeer()
