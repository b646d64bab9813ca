"""Peer adapter: iceoryx2 publish-subscribe (PyPI `iceoryx2`), zero-copy shared memory.

A service of u8 slices per run, no safe overflow (the publisher retries until delivered, so nothing
is dropped), history 0. The producer loans a sample, copies the record in (ctypes.memmove) and sends;
a consumer copies each sample out (ctypes.string_at) and releases it, or (T3 "zerocopy") returns a
memoryview of the sample's payload itself and releases the sample at its next receive. iceoryx2's publish-subscribe
has no blocking receive: throughput rows busy-poll with os.sched_yield() when empty (2 cores shared
with the producer), T2-spin busy-polls, T2-block waits on an iceoryx2 event (Listener) that the
sender notifies after each send.
Must never: create an iceoryx2 node in the parent (nodes are per process, made after fork).
"""

import ctypes
import os
import time

from .base import Channel, Peer, seqs_of, spin_until

_SLOTS_BYTES = 64 << 20  # subscriber buffer ~64 MiB of records, like the other peers' queues


def _iox():
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    return iox


class _Port:
    def __init__(self, ch):
        iox = self.iox = _iox()
        self.ch = ch
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        self.svc = (
            self.node.service_builder(iox.ServiceName.new(ch.name))
            .publish_subscribe(iox.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .history_size(0)
            .subscriber_max_buffer_size(ch.slots)
            .max_publishers(1)
            .max_subscribers(ch.consumers)
            .open_or_create()
        )
        self.event = None
        if ch.blocking:
            self.event = self.node.service_builder(iox.ServiceName.new(ch.name + "/ev")).event().open_or_create()


class _Tx(_Port):
    def __init__(self, ch):
        super().__init__(ch)
        self.pub = (
            self.svc.publisher_builder()
            .initial_max_slice_len(ch.record_size)
            .backpressure_strategy(self.iox.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.notifier = self.event.notifier_builder().create() if self.event else None

    def send(self, buf):
        n = len(buf)
        s = self.pub.loan_slice_uninit(n)
        ctypes.memmove(s.payload_ptr, buf, n)
        s.assume_init().send()
        if self.notifier is not None:
            self.notifier.notify()

    def send_batch(self, bufs):
        send = self.send
        for b in bufs:
            send(b)

    def close(self):
        self.pub.delete()


class _Rx(_Port):
    def __init__(self, ch):
        super().__init__(ch)
        self.sub = self.svc.subscriber_builder().buffer_size(ch.slots).create()
        self.listener = self.event.listener_builder().create() if self.event else None
        self.spin = ch.spin
        self.held = None  # zerocopy: the sample behind the last view, released at the next receive
        if ch.zero_copy:
            self._poll = self._poll_view

    def _poll(self):
        s = self.sub.receive()
        if s is None:
            return None
        buf = ctypes.string_at(s.payload_ptr, s.header.number_of_elements)
        s.delete()  # give the slot back to the publisher at once
        return buf

    def _poll_view(self):
        if self.held is not None:
            self.held.delete()  # the previous view's sample goes back to the publisher
            self.held = None
        s = self.sub.receive()
        if s is None:
            return None
        self.held = s
        n = s.header.number_of_elements
        return memoryview((ctypes.c_uint8 * n).from_address(s.payload_ptr)).cast("B")  # the payload itself

    def recv(self, timeout):
        if self.spin:
            return spin_until(self._poll, timeout)
        buf = self._poll()
        if buf is not None:
            return buf
        end = time.monotonic() + timeout
        while buf is None and time.monotonic() < end:
            if self.listener is not None:
                self.listener.timed_wait(self.iox.Duration.from_millis(100))
            else:
                os.sched_yield()
            buf = self._poll()
        return buf

    def recv_seqs(self, timeout):
        first = self.recv(timeout)
        if first is None:
            return seqs_of([])
        out = [first]
        while len(out) < 10_000:
            b = self._poll()
            if b is None:
                break
            out.append(b)
        return seqs_of(out)

    def close(self):
        if self.held is not None:
            self.held.delete()
        self.sub.delete()


class _Ch(Channel):
    def __init__(self, name, record_size, consumers, spin, blocking, zero_copy=False):
        self.name, self.record_size, self.consumers = name, record_size, consumers
        self.spin, self.blocking, self.zero_copy = spin, blocking, zero_copy
        self.slots = max(16, min(16_384, _SLOTS_BYTES // max(record_size, 1)))

    def sender(self):
        return _Tx(self)

    def receiver(self, index=0):
        return _Rx(self)


class Iceoryx2Peer(Peer):
    name = "iceoryx2"

    def check(self):
        try:
            _iox()
        except Exception as e:
            return f"iceoryx2 not importable ({type(e).__name__}: {e}; pip install iceoryx2)"

    def versions(self):
        from importlib.metadata import version

        return {"iceoryx2": version("iceoryx2")}

    def scale(self, row, mode):
        return 0.3 if row == "T1-batch" else 1.0  # no batch API: per-record rate on fewer records

    def modes(self, row):
        svc = "publish-subscribe u8 slice, no safe overflow + RetryUntilDelivered, loan+memmove+send"
        poll = "receive() busy-poll with sched_yield, string_at copy-out"
        return {
            "T1-msg": {"pubsub": f"{svc}; {poll}"},
            "T1-batch": {"pubsub": f"{svc} per record (no batch API); receive up to 10000 per call; {poll}"},
            "T2-spin": {"spin": "two services, the receiver busy-polls receive()"},
            "T2-block": {
                "event": "two services + two event services: notify() after each send, "
                "the receiver waits in Listener.timed_wait"
            },
            "T3": {
                "pubsub": f"{svc} per 1 MiB record; {poll}",
                "zerocopy": f"{svc} per 1 MiB record; receive() busy-poll with sched_yield, a memoryview of the "
                "sample's payload (no copy), the sample released at the next receive",
            },
            "T4": {"pubsub": f"{svc}; one publisher, 4 subscribers; {poll}"},
        }.get(row, {})

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        return _Ch(
            f"shmlogbench/{os.getpid()}/{tag}",
            record_size,
            consumers,
            spin=row == "T2-spin",
            blocking=row == "T2-block",
            zero_copy=mode == "zerocopy",
        )


PEER = Iceoryx2Peer()
