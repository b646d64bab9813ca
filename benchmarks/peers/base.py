"""The ONE interface every peer adapter implements (one adapter file per peer).

Lifecycle, driven by benchmarks/harness.py and benchmarks/runner.py:
  parent:  peer.check() -> None or reason; peer.setup(workdir) once per session (may start a server);
           ch = peer.channel(row, mode, record_size, tag, count, consumers)  # before forking
  child:   tx = ch.sender(); tx.send(buf) / tx.send_batch([buf, ...]); tx.close()
               optional tx.flush(): pushes records a sender queued (the handshake calls it)
           rx = ch.receiver(i)  (i in range(consumers): T4 fan-out gives each consumer every record)
               rx.recv(timeout) -> buffer | None
               rx.recv_seqs(timeout) -> np.ndarray[uint64] (batch rows)
  parent:  ch.close() after the run; peer.teardown() at session end (always, in finally).

Rows: "T1-msg", "T1-batch", "T2-spin" (the receiver busy-polls), "T2-block" (the receiver sleeps in
the kernel until a record arrives), "T2-block-loaded" (T2-block while every core runs a busy process;
adapters never see it: the harness asks them for "T2-block", see base_row), "T3", "T4". A record's first 8 bytes are its little-endian
sequence number; recv_seqs must read them from the records it actually received.
Must never: create sockets, shared memory or server connections in the parent that a child
would inherit (fork); everything live is made in sender()/receiver().
"""

import time

import numpy as np

ROWS = ("T1-msg", "T1-batch", "T2-spin", "T2-block", "T2-block-loaded", "T3", "T4")
FANOUT = 4  # T4: consumers per producer
LOADED = "-loaded"  # a row run under CPU load (benchmarks/load.py); the peer runs the row without it


def base_row(row):
    """The row a peer adapter implements: "T2-block-loaded" -> "T2-block"."""
    return row[: -len(LOADED)] if row.endswith(LOADED) else row


def seqs_of(bufs):
    """Sequence numbers of a list of bytes-like records (first 8 bytes, little-endian)."""
    if not bufs:
        return np.empty(0, np.uint64)
    return np.frombuffer(b"".join([bytes(b[:8]) for b in bufs]), "<u8")


def spin_until(poll, timeout):
    """Busy-polls poll() (returns a record or None) without sleeping until timeout seconds pass."""
    buf = poll()
    if buf is not None:
        return buf
    end = time.monotonic() + timeout
    while True:
        buf = poll()
        if buf is not None or time.monotonic() > end:
            return buf


class Peer:
    name = "?"

    def check(self):  # None if usable, else a one-line reason to skip
        return None

    def versions(self):  # {"package": "version"}
        return {}

    def modes(self, row):  # {mode_name: one-line honest description}; {} = row not offered
        return {}

    def scale(self, row, mode):
        """Fraction of the row's record count this mode runs (a slow peer measures its rate on fewer
        records so the suite stays within its time budget; the report shows every row's count)."""
        return 1.0

    def setup(self, workdir):
        pass

    def teardown(self):
        pass

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        raise NotImplementedError


class Channel:
    def sender(self):
        raise NotImplementedError

    def receiver(self, index=0):
        raise NotImplementedError

    def close(self):
        pass
