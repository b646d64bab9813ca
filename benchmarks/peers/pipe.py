"""Peer adapter: a kernel pipe (os.pipe), the floor for a blocking wake between processes.

Every record is a 4-byte little-endian length and the record's bytes, written with one os.write
and read with os.read/os.readv (a pipe is a byte stream). T2-block's receiver sleeps in read(2):
the kernel's own wake-up, the floor issue 13 measures shmlog's blocking mode against. The pipe is
made in the parent and inherited by fork, as multiprocessing's queues are (benchmarks/runner.py).
"""

import os
import select
import struct

from .base import Channel, Peer, seqs_of, spin_until

_LEN = struct.Struct("<I")


def _read_exact(fd, n, timeout):
    """n bytes from fd, or None when none came within timeout (a partial record is waited for)."""
    chunks, got = [], 0
    while got < n:
        if not chunks and timeout is not None:
            r, _, _ = select.select([fd], [], [], timeout)
            if not r:
                return None
        b = os.read(fd, n - got)
        if not b:
            raise EOFError("the pipe's writer closed")
        chunks.append(b)
        got += len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Tx:
    def __init__(self, fd):
        self.fd = fd

    def send(self, buf):
        data = _LEN.pack(len(buf)) + bytes(buf)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def send_batch(self, bufs):
        for b in bufs:
            self.send(b)

    def close(self):
        pass


class _Rx:
    def __init__(self, fd, spin):
        self.fd, self.spin = fd, spin
        if spin:
            os.set_blocking(fd, False)

    def _poll(self):
        try:
            head = os.read(self.fd, 4)
        except BlockingIOError:
            return None
        if not head:
            raise EOFError("the pipe's writer closed")
        if len(head) < 4:
            head += self._rest(4 - len(head))
        return self._rest(_LEN.unpack(head)[0])

    def _rest(self, n):
        chunks, got = [], 0
        while got < n:
            try:
                b = os.read(self.fd, n - got)
            except BlockingIOError:
                continue  # the writer is mid-record: its bytes follow at once
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def recv(self, timeout):
        if self.spin:
            return spin_until(self._poll, timeout)
        head = _read_exact(self.fd, 4, timeout)
        if head is None:
            return None
        return _read_exact(self.fd, _LEN.unpack(head)[0], None)

    def recv_seqs(self, timeout):
        first = self.recv(timeout)
        return seqs_of([] if first is None else [first])

    def close(self):
        pass


class _Ch(Channel):
    def __init__(self, spin):
        self.r, self.w = os.pipe()
        self.spin = spin

    def sender(self):
        return _Tx(self.w)

    def receiver(self, index=0):
        return _Rx(self.r, self.spin)

    def close(self):
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class PipePeer(Peer):
    name = "pipe"

    def versions(self):
        import platform

        return {"kernel": platform.release()}

    def scale(self, row, mode):
        return {("T1-msg", "write-read"): 0.5}.get((row, mode), 1.0)

    def modes(self, row):
        return {
            "T1-msg": {"write-read": "os.pipe, one write(2) and two read(2) per record"},
            "T2-spin": {"nonblocking": "two os.pipe, the receiver loops on a non-blocking read(2)"},
            "T2-block": {"read": "two os.pipe, the receiver sleeps in read(2): the kernel's wake-up floor"},
            "T3": {"write-read": "os.pipe, 1 MiB records through the 64 KiB pipe buffer"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        return _Ch(spin=row == "T2-spin")


PEER = PipePeer()
