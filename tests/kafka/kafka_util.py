"""kafka_util.py — what the Kafka listener tests share: a listener on its own
instance (port chosen by the OS) and a raw-socket client that speaks frames.

Owns: the `kafka` fixture's machinery and the raw client. Must never: hide a
listener failure (a refused or closed connection raises in the test).
"""

import socket
import struct

import pytest

import shmlog.kafka


def recv_exact(sock, n) -> bytes:
    """n bytes from sock; ConnectionError when the listener closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the listener")
        buf += chunk
    return buf


class RawClient:
    """One TCP connection to the listener; frames in, frames out, bounded waits."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)

    def send_frame(self, payload: bytes):
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def recv_exact(self, n):
        return recv_exact(self.sock, n)

    def recv_frame(self) -> bytes:
        size = struct.unpack(">i", self.recv_exact(4))[0]
        return self.recv_exact(size)

    def closed_by_peer(self, timeout=5.0) -> bool:
        """True when the listener closes this connection within timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def header_v1(key, version, corr, client_id=b"raw"):
    return struct.pack(">hhih", key, version, corr, len(client_id)) + client_id


class Kafka:
    def __init__(self, inst, **options):
        self.inst = inst
        self.log = inst.log
        self.run = shmlog.kafka.start(inst.log, "127.0.0.1", 0, **options)
        self.port = self.run.port
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.listener = self.run.listener

    def raw(self):
        return RawClient(self.port)

    def stop(self):
        self.run.stop()


@pytest.fixture
def kafka(inst):
    # a short group.initial.rebalance.delay.ms (Kafka's is 3 s) keeps the group tests quick
    k = Kafka(inst, auto_create_topics=True, group_initial_rebalance_delay_ms=100)
    try:
        yield k
    finally:
        k.stop()


def batch(records, producer_id=-1, producer_epoch=-1, base_sequence=-1, compression=0, base_ts=None):
    """A RecordBatch v2 built by kafka-python's own builder (an oracle independent of shmlog).
    records: [(key, value, headers)] or [(key, value, headers, timestamp_ms)]."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=64 << 20,
    )
    for i, r in enumerate(records):
        ts = r[3] if len(r) > 3 else (base_ts or 1_700_000_000_000)
        b.append(i, ts, r[0], r[1], list(r[2]))
    return bytes(b.build())
