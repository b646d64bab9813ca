"""The ONE interface every peer adapter implements (one adapter file per peer).

Lifecycle, driven by benchmarks/harness.py:
  parent:  peer.check() -> None or reason; peer.setup(workdir) once per session;
           ch = peer.channel(row, mode, record_size, tag, count)  # before forking; count = records in run
  child:   tx = ch.sender(); tx.send(buf) / tx.send_batch([buf, ...]); tx.close()
           rx = ch.receiver(); rx.recv(timeout) -> buffer | None
                               rx.recv_seqs(timeout) -> np.ndarray[uint64] (batch rows)
  parent:  ch.close() after the run; peer.teardown() at session end (always, in finally).
Rows: "T1-msg", "T1-batch", "T2", "T3". A record's first 8 bytes are its little-endian
sequence number; recv_seqs must read them from the records it actually received.
"""
import numpy as np

ROWS = ("T1-msg", "T1-batch", "T2", "T3")


def seqs_of(bufs):
    """Sequence numbers of a list of bytes-like records (first 8 bytes, little-endian)."""
    if not bufs:
        return np.empty(0, np.uint64)
    return np.frombuffer(b"".join([bytes(b[:8]) for b in bufs]), "<u8")


class Peer:
    name = "?"

    def check(self):            # None if usable, else a one-line reason to skip
        return None

    def versions(self):         # {"package": "version"}
        return {}

    def modes(self, row):       # {mode_name: one-line honest description}; {} = row not offered
        return {}

    def setup(self, workdir):
        pass

    def teardown(self):
        pass

    def channel(self, row, mode, record_size, tag, count):
        raise NotImplementedError


class Channel:
    def sender(self):
        raise NotImplementedError

    def receiver(self):
        raise NotImplementedError

    def close(self):
        pass
