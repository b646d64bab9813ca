"""Peer adapter: shmlog (this project). One private instance per session, one topic per run."""

import glob
import os
import shutil
import uuid

import numpy as np

from .base import Channel, Peer, seqs_at, seqs_of


def _seqs_from_columns(cols):
    if cols is None or len(cols) == 0:  # poll_columns returns None on timeout
        return seqs_of([])
    # head and tail 8 bytes of every received record, gathered from the values column in place
    return seqs_at(np.frombuffer(cols.values, np.uint8), cols.value_starts, cols.value_lengths)


_FIT = (
    "16 MiB overflow=block ring (over 8 records for records above 2 MiB): the producer waits, never laps the consumer"
)


class _Tx:
    def __init__(self, ch):
        self.log = ch.peer._connect()
        self.p, self.topic = self.log.producer(), ch.topic
        if ch.mode == "produce":  # the asynchronous producer: records queue, batches go as one frame
            from shmlog.errors import BufferFull

            self.full = BufferFull
            self.send = self._produce
            self.flush = self.p.flush
        elif ch.mode == "zerocopy":  # a loan of the frame's value area, the record memmoved in
            self.send = self._loan

    def send(self, buf):
        self.p.send(self.topic, buf, partition=0)

    def _loan(self, buf):
        with self.p.reserve(self.topic, len(buf), partition=0) as v:
            v[:] = buf  # one memmove into the ring; the commit sums the CRC over it

    def _produce(self, buf):
        while True:  # one partition: the sticky partition is 0
            try:
                return self.p.produce(self.topic, buf)
            except self.full:  # confluent-kafka's idiom for its BufferError: let delivery catch up, retry
                self.p.poll(0.001)

    def send_batch(self, bufs):
        self.p.send_batch(self.topic, bufs, partition=0)

    def close(self):
        self.p.close()  # flushes what produce() queued
        self.log.close()


class _AioRx:
    """The asyncio consumer (shmlog.aio.AIOConsumer.getmany) on an event loop of its own."""

    def __init__(self, ch):
        import asyncio

        from shmlog import aio

        self.log = ch.peer._connect()
        self.loop = asyncio.new_event_loop()
        self.c = aio.AIOConsumer(self.log, ch.topic, auto_offset_reset="earliest")
        self.loop.run_until_complete(self.c.start())

    def _getmany(self, timeout, max_records):
        r = self.loop.run_until_complete(self.c.getmany(timeout_ms=timeout * 1000, max_records=max_records))
        return [m.value for ms in r.values() for m in ms]

    def recv(self, timeout):
        v = self._getmany(timeout, 1)
        return v[0] if v else None

    def recv_seqs(self, timeout):
        return seqs_of(self._getmany(timeout, 10_000))

    def close(self):
        self.loop.run_until_complete(self.c.stop())
        self.loop.close()
        self.log.close()


class _Rx:
    def __init__(self, ch, wait, group=None):
        self.log = ch.peer._connect()
        kw = {"wait": wait} if wait else {}
        if group is not None:  # a consumer group of one member (T4 "groups")
            kw.update(group=group, enable_auto_commit=False)
        if ch.mode in ("zerocopy", "sendview"):  # values are read-only views of the frames in the ring
            kw.update(copy=False, wait="spin")  # busy-polls, as the iceoryx2 receiver does (no futex wake per record)
        self.c = self.log.consumer(topics=[ch.topic], auto_offset_reset="earliest", **kw)
        self.columns = ch.mode == "columns"

    def recv(self, timeout):
        m = self.c.poll(timeout=timeout)
        # (the handshake record arrives alone: no partial poll left); copy=False: a view valid until the next poll
        return None if m is None else m.value

    def recv_seqs(self, timeout):
        if self.columns:
            return _seqs_from_columns(self.c.poll_columns(max_messages=100_000, timeout=timeout))
        return seqs_of([m.value for m in self.c.poll_batch(max_messages=10_000, timeout=timeout)])

    def close(self):
        self.c.close()
        self.log.close()


class _Ch(Channel):
    def __init__(self, peer, topic, mode):
        self.peer, self.topic, self.mode = peer, topic, mode

    def sender(self):
        return _Tx(self)

    def receiver(self, index=0):
        if self.mode == "aio":
            return _AioRx(self)
        return _Rx(
            self, {"spin": "spin", "park": "park"}.get(self.mode), group=f"g{index}" if self.mode == "groups" else None
        )

    def close(self):
        self.peer.log.delete_topic(self.topic)


class ShmlogPeer(Peer):
    name = "shmlog"
    log = None
    connect_kwargs = None  # set (instance, data_dir, shm_prefix) to use an existing isolated instance

    def check(self):
        try:
            import shmlog  # noqa: F401
        except Exception as e:
            return f"shmlog not importable ({type(e).__name__}: {e})"

    def versions(self):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"shmlog": version("shmlog")}
        except PackageNotFoundError:
            import shmlog

            return {"shmlog": getattr(shmlog, "__version__", "unknown")}

    def modes(self, row):
        from .. import groups

        modes = self._modes(row)
        if not groups.available():
            modes.pop("groups", None)  # this shmlog predates consumer groups
        return modes

    def _modes(self, row):
        return {
            "T1-msg": {
                "poll": f"Producer.send per record, Consumer.poll per record (wait=park), {_FIT}",
                "produce": "Producer.produce per record (asynchronous, linger_ms=5, BufferFull -> poll(0.001) and retry, one frame per "
                f"batch, flushed at close), Consumer.poll per record, {_FIT}",
            },
            "T1-batch": {
                "poll_batch": f"send_batch(1000 records) per call, poll_batch(<=10000) -> list[Message], {_FIT}",
                "aio": "send_batch(1000 records) per call, asyncio AIOConsumer.getmany(<=10000) "
                f"(futex waiter thread, no polling), {_FIT}",
                "columns": f"send_batch(1000 records) per call, poll_columns(<=100000) -> numpy columns, {_FIT}",
            },
            "T2-spin": {"spin": "two topics, Consumer(wait='spin') busy-polls"},
            "T2-block": {"park": "two topics, Consumer(wait='park') spins briefly then futex-parks"},
            "T3": {
                "poll": f"Producer.send / Consumer.poll per 1 MiB record (value copied out), {_FIT}",
                "durable64": "as poll, 64 MiB durable ring (fsync=never): producers wait for the persister, "
                "a lapped consumer reads the segment files",
                "zerocopy": "zero copy on both sides: Producer.reserve loan of the frame's value area, the record "
                "memmoved in, CRC-32C summed at commit; Consumer(copy=False, wait='spin').poll (busy-polls like the "
                "iceoryx2 receiver) -> read-only view of the frame in the ring (CRC checked in place, no copy), released "
                "at the next poll; 16 MiB overflow=block ring",
                "sendview": "Producer.send (copy and CRC-32C fused in one pass into the ring); Consumer(copy=False, "
                "wait='spin').poll -> read-only view in the ring as zerocopy; 16 MiB overflow=block ring",
            },
            "T4": {
                "poll": f"one topic, 4 independent Consumers each poll() every record (wait=park), {_FIT}",
                "groups": f"one topic, 4 consumer groups of one member each (like Redis' 4 groups), "
                f"poll() per record, no commits, {_FIT}",
            },
        }.get(row, {})

    def _connect(self):
        import shmlog

        return shmlog.connect(instance=self.instance, data_dir=self.data_dir, shm_prefix=self.prefix, autostart=False)

    def setup(self, workdir):
        if self.connect_kwargs:
            kw = self.connect_kwargs
            self.instance, self.prefix, self.data_dir = kw["instance"], kw["shm_prefix"], kw["data_dir"]
        else:
            u = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.instance, self.prefix = f"bench-{u}", f"shmlogbench-{u}."
            self.data_dir = os.path.join(workdir, "shmlog-data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = self._connect()

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        topic, ring = f"t-{tag}", 64 << 20
        if mode == "durable64":  # a 64 MiB ring backed by segment files: nothing can be lapped away
            self.log.create_topic(topic, partitions=1, ring_bytes=ring, persistence="disk", fsync="never")
            self.log.ensure_persister()
            return _Ch(self, topic, mode)
        # ephemeral: a ring a user would pick (16 MiB, issue 13's definition), lossless because
        # overflow="block" holds the producer back instead of lapping a consumer that is behind
        ring = max(16 << 20, 1 << (8 * record_size).bit_length())
        self.log.create_topic(topic, partitions=1, ring_bytes=ring, persistence="none", overflow="block")
        return _Ch(self, topic, mode)

    def teardown(self):
        try:
            if self.log is not None:
                if hasattr(self.log, "destroy"):
                    self.log.destroy()
                else:
                    self.log.close()
        finally:
            self.log = None
            prefix = getattr(self, "prefix", None)
            for path in glob.glob(f"/dev/shm/{glob.escape(prefix)}*") if prefix else []:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if getattr(self, "data_dir", None):
                shutil.rmtree(self.data_dir, ignore_errors=True)


PEER = ShmlogPeer()
