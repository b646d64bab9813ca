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
adapters never see it: the harness asks them for "T2-block", see base_row), "T3", "T4". A record's first 8
bytes AND its last 8 bytes are its little-endian sequence number (stamp); a consumer checks both ends of
every record it actually received: seq_of per record, recv_seqs through seqs_of / seqs_at (vectorised).
Must never: create sockets, shared memory or server connections in the parent that a child
would inherit (fork); everything live is made in sender()/receiver().
"""

import struct
import time

import numpy as np

ROWS = ("T1-msg", "T1-batch", "T2-spin", "T2-block", "T2-block-loaded", "T3", "T4")
FANOUT = 4  # T4: consumers per producer
LOADED = "-loaded"  # a row run under CPU load (benchmarks/load.py); the peer runs the row without it


def base_row(row):
    """The row a peer adapter implements: "T2-block-loaded" -> "T2-block"."""
    return row[: -len(LOADED)] if row.endswith(LOADED) else row


SEQ_BYTES = 8
MIN_RECORD = 2 * SEQ_BYTES  # the head and the tail sequence number


class IntegrityError(AssertionError):
    """A record's first and last 8 bytes disagree, or it is too short to hold both."""


def stamp(seq, size, fill=b"x"):
    """A record of `size` bytes: seq (little-endian u64) in its first and its last 8 bytes."""
    if size < MIN_RECORD:
        raise ValueError(f"a record needs at least {MIN_RECORD} bytes for its two sequence numbers, got {size}")
    s = seq.to_bytes(SEQ_BYTES, "little")
    return s + fill * (size - MIN_RECORD) + s


_U64 = struct.Struct("<Q").unpack_from


def seq_of(buf):
    """The sequence number of one bytes-like record (bytes, memoryview of a zero-copy view): its first
    8 bytes, checked equal to its last 8 bytes (both ends are read from the record itself, in place:
    two unpack_from calls, no slices)."""
    n = len(buf)
    if n < MIN_RECORD:
        raise IntegrityError(f"integrity: a {n}-byte record cannot hold its head and tail sequence numbers")
    (head,) = _U64(buf, 0)
    (tail,) = _U64(buf, n - SEQ_BYTES)
    if head != tail:
        raise IntegrityError(f"integrity: head seq {head} != tail seq {tail}")
    return head


def seqs_at(blob, starts, lengths):
    """Sequence numbers of the records blob[starts[i] : starts[i] + lengths[i]] (blob: uint8 array), the
    head and tail 8 bytes gathered by fancy indexing and compared, no per-record Python."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    if len(starts) == 0:
        return np.empty(0, np.uint64)
    if (lengths < MIN_RECORD).any():
        bad = int(np.flatnonzero(lengths < MIN_RECORD)[0])
        raise IntegrityError(
            f"integrity: a {int(lengths[bad])}-byte record cannot hold its head and tail sequence numbers"
        )
    # every byte offset of the blob as the start of a little-endian u64 (a 1-byte-strided view, no
    # copy): one gather per end, each element read from the record's own bytes
    if len(blob) < SEQ_BYTES:
        raise IntegrityError("integrity: the received bytes cannot hold a sequence number")
    at = np.ndarray((len(blob) - SEQ_BYTES + 1,), "<u8", blob, 0, (1,))
    ends = starts + lengths - SEQ_BYTES
    if starts.min() < 0 or ends.max() >= len(at):
        raise IntegrityError("integrity: a record lies outside the received bytes")
    head, tail = at[starts], at[ends]
    if not np.array_equal(head, tail):
        bad = int(np.flatnonzero(head != tail)[0])
        raise IntegrityError(f"integrity: head seq {int(head[bad])} != tail seq {int(tail[bad])}")
    return head


def seqs_of(bufs):
    """Sequence numbers of a list of bytes-like records: one join, lengths via np.fromiter, ends by
    cumsum, then seqs_at (the same method for every peer whose batch receive returns a list)."""
    if not bufs:
        return np.empty(0, np.uint64)
    lengths = np.fromiter(map(len, bufs), np.int64, len(bufs))
    ends = np.cumsum(lengths)
    return seqs_at(np.frombuffer(b"".join(bufs), np.uint8), ends - lengths, lengths)


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
