"""client/aio.py — the asyncio API (aiokafka's shape): AIOProducer, AIOConsumer.

Owns: the process's futex waiter (one thread per process, more only past
127 waiting rings, parked in ONE futex_waitv on the ring futex words of
every asyncio consumer that is waiting, in any event loop, plus a control
word), the asyncio consumer's wait (arm in C, register, await, disarm),
and the asyncio producer's futures. Must never: poll (no timer loop looks
for data; a group member's 100 ms membership look is the one timer, as in
the sync Consumer), give a thread to each consumer, block the event loop
on a ring (reads never block; waits are futures), or resolve a future
from a thread other than its loop's.

Wake protocol (the C side and its proof are in csrc/ring.c, shm_wait_arm):
  1. the consumer reads without blocking; nothing -> shm_wait_arm: it
     announces itself on each ring (data_waiters += 1), loads each
     data_seq into vals, re-checks the cursors. Ready -> read again.
  2. otherwise it registers (future, [(data_seq word, val)]) with the
     waiter and bumps the waiter's control word. The waiter thread loads
     the control word BEFORE it snapshots the registrations, so a
     registration made after its snapshot changes the control word and its
     futex_waitv returns at once: no registration is ever left out.
  3. a producer that commits after step 1's announcement sees
     data_waiters != 0 and bumps data_seq past val: the waiter's
     futex_waitv (started before or after) returns; the waiter resolves
     the future through loop.call_soon_threadsafe.
  4. the consumer, woken (or timed out), unregisters, disarms
     (data_waiters -= 1) and reads.
A word whose value already differs from its val makes futex_waitv return
at once, so a wake that lands anywhere between step 1 and the wait is kept.

Death: a consumer process killed while armed leaves data_waiters one too
high on its rings: producers then make a futex wake syscall per commit that
nobody needs (cost, never a lost wake; same as the sync consumer). The
waiter thread dies with its process. A waiting coroutine cancelled (task
cancel, timeout) unregisters and disarms in a finally block. The waiter
thread loads a ring word only under the waiter's lock and only while its
registration stands, so a ring unmapped after unregister() (consumer
stopped, Log closed) is never read; closing the Log while a coroutine still
waits on it is a use-after-close, as for the sync consumer.
"""

import asyncio
import collections
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import errors
from .._native import ffi, lib
from .consumer import GROUP_WAIT_S
from ..records import BatchMetadata, Message, RecordMetadata

if TYPE_CHECKING:
    from .consumer import Consumer
    from .log import Log
    from .producer import BytesLike, Headers, Producer


class TopicPartition(NamedTuple):
    topic: str
    partition: int


TP = tuple[str, int]  # a TopicPartition or a plain (topic, partition) pair
MAX_WORDS = 127  # futex_waitv takes 128 words; one is the control word


# ------------------------------------------------------------------ the waiter


class _Reg:
    """One waiting consumer: its future, its loop, the words it waits on."""

    __slots__ = ("loop", "fut", "words", "vals", "keep", "fired", "shards")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fut: "asyncio.Future[None]", words: Any, vals: list[int], keep: Any
    ) -> None:
        self.loop, self.fut, self.words, self.vals, self.keep = loop, fut, words, vals, keep
        self.fired = False
        self.shards: list[_Shard] = []


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Shard:
    """One waiter thread: at most MAX_WORDS ring words plus its control word."""

    def __init__(self, waiter: "_Waiter") -> None:
        self.waiter = waiter
        self.ctl = ffi.new("uint32_t *")
        self.entries: dict[_Reg, list[tuple[Any, int]]] = {}  # reg -> [(word, val)] it waits on here
        self.nwords = 0
        self.thread = threading.Thread(target=self._run, name="shmlog-aio-waiter", daemon=True)
        self.thread.start()

    def bump(self) -> None:
        lib.shm_word_bump(self.ctl)

    def _run(self) -> None:
        words = ffi.new("uint32_t *[]", MAX_WORDS + 1)
        vals = ffi.new("uint32_t[]", MAX_WORDS + 1)
        changed = ffi.new("uint32_t[]", MAX_WORDS + 1)
        lock = self.waiter.lock
        while True:
            c0 = self.ctl[0]  # BEFORE the snapshot (protocol step 2)
            with lock:
                if self.waiter.stopping:
                    return
                flat = [(reg, w, v) for reg, ent in self.entries.items() for w, v in ent]
            words[0], vals[0] = self.ctl, c0
            for i, (_, w, v) in enumerate(flat, 1):
                words[i], vals[i] = w, v
            lib.shm_futex_waitv(words, vals, len(flat) + 1, -1)
            # A word is read only under the lock and only while its registration
            # stands: once unregister() returned, its ring may be unmapped (the
            # kernel side of futex_waitv copes with that; a load here would not).
            with lock:
                live = [e for e in flat if e[0] in self.entries]
                for i, (_, w, v) in enumerate(live, 1):
                    words[i], vals[i] = w, v
                m = lib.shm_words_changed(words + 1, vals + 1, len(live), changed)
                fired = {live[changed[j]][0] for j in range(m)}
            if fired:
                self.waiter.fire(fired)


class _Waiter:
    """The process's futex waiter: shards of MAX_WORDS words, each one thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shards: list[_Shard] = []
        self.stopping = False
        self.pid = os.getpid()

    def register(self, reg: _Reg) -> None:
        pairs = list(zip(reg.words, reg.vals))
        with self.lock:
            while pairs:
                shard = next((s for s in self.shards if s.nwords < MAX_WORDS), None)
                if shard is None:
                    shard = _Shard(self)
                    self.shards.append(shard)
                take = pairs[: MAX_WORDS - shard.nwords]
                pairs = pairs[len(take) :]
                shard.entries.setdefault(reg, []).extend(take)
                shard.nwords += len(take)
                reg.shards.append(shard)
        for s in set(reg.shards):
            s.bump()

    def unregister(self, reg: _Reg) -> None:
        with self.lock:
            shards = set(reg.shards)
            for s in shards:
                ent = s.entries.pop(reg, None)
                if ent:
                    s.nwords -= len(ent)
            reg.shards = []
        for s in shards:
            s.bump()  # its thread drops the words (it must not wait on them any longer)

    def fire(self, regs: Iterable[_Reg]) -> None:
        for reg in regs:
            if reg.fired:
                continue
            reg.fired = True
            try:
                reg.loop.call_soon_threadsafe(_resolve, reg.fut)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
        with self.lock:
            for reg in regs:
                for s in reg.shards:
                    ent = s.entries.pop(reg, None)
                    if ent:
                        s.nwords -= len(ent)
                reg.shards = []


_waiter: _Waiter | None = None
_waiter_lock = threading.Lock()


def _the_waiter() -> _Waiter:
    """The process's waiter (a forked child makes its own: threads do not survive fork)."""
    global _waiter
    w = _waiter
    if w is None or w.pid != os.getpid():
        with _waiter_lock:
            if _waiter is None or _waiter.pid != os.getpid():
                _waiter = _Waiter()
            w = _waiter
    return w


def waiter_threads() -> int:
    """How many waiter threads this process runs (for tests and metrics)."""
    w = _waiter
    return 0 if w is None or w.pid != os.getpid() else len(w.shards)


# ------------------------------------------------------------------ consumer


class AIOConsumer:
    """aiokafka's AIOKafkaConsumer over a shmlog Consumer.

    AIOConsumer(log, *topics, group_id=None, **options): options are the
    sync Consumer's (auto_offset_reset, enable_auto_commit, max_poll_records,
    group options...). Reads never block the event loop; a coroutine that
    waits for records awaits a future that the process's futex waiter
    resolves when a producer commits to one of its rings."""

    def __init__(self, log: "Log", *topics: str, group_id: str | None = None, **options: Any) -> None:
        if any(not isinstance(t, str) for t in topics):
            raise errors.InvalidType("topics must be str")
        self._log = log
        self._topics = list(topics)
        self._group_id = group_id
        self._options = options
        self._c: Consumer | None = None
        self._arrays: tuple[Any, ...] | None = None
        self._pending: collections.deque[Message] = collections.deque()

    async def start(self) -> None:
        if self._c is not None:
            return
        self._c = self._log.consumer(self._topics or None, group=self._group_id, **self._options)

    async def stop(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            c.close()
        self._arrays = None

    async def __aenter__(self) -> "AIOConsumer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _consumer(self) -> "Consumer":
        if self._c is None:
            raise errors.Closed("this AIOConsumer is not started (await start()) or was stopped")
        return self._c

    # ---------------------------------------------------------- assignment and offsets

    def subscribe(self, topics: str | Iterable[str]) -> None:
        self._consumer().subscribe(topics)
        self._arrays = None

    def assign(self, partitions: Iterable[TP]) -> None:
        self._consumer().assign([(*p,) for p in partitions])
        self._arrays = None

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t, p in self._consumer().assignment()}

    def seek(self, tp: TP, offset: int) -> None:
        self._pending = collections.deque(m for m in self._pending if (m.topic, m.partition) != (*tp,))
        self._consumer().seek(tp[0], tp[1], offset)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        for tp in partitions or self.assignment():
            self.seek(tp, self._consumer().beginning_offsets([(*tp,)])[(tp[0], tp[1])])

    async def seek_to_end(self, *partitions: TP) -> None:
        for tp in partitions or self.assignment():
            self.seek(tp, self._consumer().end_offsets([(*tp,)])[(tp[0], tp[1])])

    async def position(self, tp: TP) -> int:
        return self._consumer().position(tp[0], tp[1])

    async def committed(self, tp: TP) -> int | None:
        return self._consumer().committed(tp[0], tp[1])

    async def end_offsets(self, partitions: Iterable[TP]) -> dict[TopicPartition, int]:
        return {TopicPartition(*k): v for k, v in self._consumer().end_offsets([(*p,) for p in partitions]).items()}

    async def commit(self, offsets: dict[TP, Any] | None = None) -> None:
        """Commits {TopicPartition: next offset} (default: what getone/getmany
        returned so far). Shared-memory writes: it does not block the loop."""
        c = self._consumer()
        if offsets is None and self._pending:
            # records fetched but not returned yet are not consumed
            first: dict[TP, int] = {}
            for m in self._pending:
                first.setdefault((m.topic, m.partition), m.offset)
            offsets = {tp: first.get(tp, c.position(*tp)) for tp in c.assignment()}
        elif offsets is not None:
            offsets = {(k[0], k[1]): (v.offset if hasattr(v, "offset") else v) for k, v in offsets.items()}
        c.commit(offsets)

    # ---------------------------------------------------------- reading

    def _drain(self, max_records: int) -> dict[TopicPartition, list[Message]]:
        c = self._consumer()
        out: dict[TopicPartition, list[Message]] = {}
        total = 0
        pend = self._pending
        while pend and total < max_records:
            m = pend.popleft()
            out.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
            total += 1
        while total < max_records:
            batch = c.poll_batch(max_messages=max_records - total, timeout=0)
            if not batch:
                break
            m = batch[0]
            out.setdefault(TopicPartition(m.topic, m.partition), []).extend(batch)
            total += len(batch)
        return out

    async def getmany(
        self, *partitions: TP, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Message]]:
        """{TopicPartition: [Message]} of up to max_records records (default
        max_poll_records), waiting up to timeout_ms for the first."""
        if partitions:
            raise errors.NotSupported("getmany(*partitions): assign() those partitions instead")
        if not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool) or timeout_ms < 0:
            raise errors.InvalidArgument("timeout_ms must be a number >= 0")
        if max_records is None:
            max_records = self._consumer()._max_poll
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 1:
            raise errors.InvalidArgument("max_records must be an int >= 1")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            out = self._drain(max_records)
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            await self._wait(left)

    async def getone(self) -> Message:
        """The next Message, waiting as long as it takes."""
        while True:
            if self._pending:
                return self._pending.popleft()
            batch = self._consumer().poll_batch(max_messages=self._consumer()._max_poll, timeout=0)
            if batch:
                self._pending.extend(batch[1:])
                return batch[0]
            await self._wait(None)

    def __aiter__(self) -> "AIOConsumer":
        return self

    async def __anext__(self) -> Message:
        if self._c is None:
            raise StopAsyncIteration
        try:
            return await self.getone()
        except errors.Closed:
            raise StopAsyncIteration from None

    async def _wait(self, timeout_s: float | None) -> None:
        """Parks until a ring of this consumer has something (or timeout_s, or
        a stuck frame is due for sealing, or a member's group look is due)."""
        c = self._consumer()
        parts = c._parts
        grouped = c._group is not None
        if grouped:
            timeout_s = GROUP_WAIT_S if timeout_s is None else min(timeout_s, GROUP_WAIT_S)
        if not parts:
            await asyncio.sleep(timeout_s if timeout_s is not None else GROUP_WAIT_S)
            return
        arr = self._arrays
        if arr is None or arr[0] is not parts:
            hdrs = ffi.new("void *[]", [p.ring.hdr for p in parts])
            bases = ffi.new("struct shm_ring *[]", [p.ring.h for p in parts])
            curs = ffi.new("struct shm_cursor *[]", [p.cur for p in parts])
            words = [ffi.addressof(ffi.cast("struct shm_ring_header *", p.ring.hdr), "data_seq") for p in parts]
            arr = self._arrays = (parts, hdrs, bases, curs, words, [p.ring for p in parts])
        _, hdrs, bases, curs, words, rings = arr
        n = len(parts)
        vals = ffi.new("uint32_t[]", n)
        sd = ffi.new("int64_t *")
        if lib.shm_wait_arm(hdrs, bases, curs, n, c._unblock_ns, vals, sd) >= 0:
            return  # something arrived meanwhile
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        reg = _Reg(loop, fut, words, list(vals), (hdrs, rings))
        waiter = _the_waiter()
        try:
            waiter.register(reg)
            if sd[0] >= 0:
                stuck_s = max((sd[0] - time.monotonic_ns()) / 1e9, 0)
                timeout_s = stuck_s if timeout_s is None else min(timeout_s, stuck_s)
            if timeout_s is None:
                await fut
            else:
                handle = loop.call_later(max(timeout_s, 0), _resolve, fut)
                try:
                    await fut
                finally:
                    handle.cancel()
        finally:
            waiter.unregister(reg)
            lib.shm_wait_disarm(hdrs, n)


# ------------------------------------------------------------------ producer


class AIOProducer:
    """aiokafka's AIOKafkaProducer over a shmlog Producer's produce().

    AIOProducer(log, **options): options are the Producer's (linger_ms,
    batch_size, batch_num_messages, compression_type, message_timeout_ms,
    queue_buffering_max_messages, max_block_ms). send() queues the record
    and returns a future of its RecordMetadata; the batch is written by the
    Producer (one frame per batch) and the future resolved on the event
    loop when its delivery report arrives."""

    def __init__(self, log: "Log", **options: Any) -> None:
        if "on_delivery" in options:
            raise errors.InvalidArgument("AIOProducer reports through the futures send() returns, not on_delivery")
        self._log = log
        self._options = options
        self._p: Producer | None = None
        self._loop: Any = None  # asyncio.AbstractEventLoop once started
        self._loop_thread: int | None = None
        self._serve_scheduled = False
        self._space: Any = None  # asyncio.Event once started

    async def start(self) -> None:
        if self._p is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._space = asyncio.Event()
        self._p = self._log.producer(**self._options)
        self._p._report_hook = self._reports_ready

    async def stop(self) -> None:
        """Flushes what was sent (resolving every future) and closes."""
        p = self._p
        if p is None:
            return
        try:
            await self.flush()
        finally:
            self._p = None
            await self._loop.run_in_executor(None, p.close)

    async def __aenter__(self) -> "AIOProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _producer(self) -> "Producer":
        if self._p is None:
            raise errors.Closed("this AIOProducer is not started (await start()) or was stopped")
        return self._p

    def _reports_ready(self) -> None:
        """Called by the Producer (any thread) when delivery reports were queued."""
        if self._serve_scheduled:
            return
        self._serve_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._serve)
        except RuntimeError:
            pass

    def _serve(self) -> None:
        self._serve_scheduled = False
        p = self._p
        if p is not None:
            p.poll(0)
            self._space.set()

    def _settle(self, fut: "asyncio.Future[RecordMetadata]", err: BaseException | None, msg: Message) -> None:
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._settle, fut, err, msg)
            return
        if fut.done():
            return
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(RecordMetadata(msg.topic, msg.partition, msg.offset))

    async def send(
        self,
        topic: str,
        value: "BytesLike | None" = None,
        key: "BytesLike | None" = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: "Headers | None" = None,
    ) -> "asyncio.Future[RecordMetadata]":
        """Queues one record; returns a future of its RecordMetadata (raises
        the shmlog error on failure). Waits (without blocking the loop) while
        queue_buffering_max_messages records await delivery."""
        p = self._producer()
        fut = self._loop.create_future()
        cb = lambda err, msg: self._settle(fut, err, msg)  # noqa: E731
        while True:
            try:
                p.produce(
                    topic, value, key=key, headers=headers, partition=partition, timestamp=timestamp_ms, on_delivery=cb
                )
                return fut
            except errors.BufferFull:
                self._space.clear()
                self._serve()
                if len(p) >= p._max_queued:
                    await self._space.wait()

    async def send_and_wait(
        self,
        topic: str,
        value: "BytesLike | None" = None,
        key: "BytesLike | None" = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: "Headers | None" = None,
    ) -> RecordMetadata:
        fut = await self.send(topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms, headers=headers)
        return await fut

    async def send_batch(
        self,
        values: "list[BytesLike | None]",
        topic: str,
        *,
        partition: int | None = None,
        keys: "list[BytesLike | None] | None" = None,
    ) -> list[BatchMetadata]:
        """The records now, as one frame per partition (the sync send_batch:
        one C call, run in a worker thread so a full ring never blocks the loop)."""
        p = self._producer()
        return await self._loop.run_in_executor(
            None, lambda: p.send_batch(topic, values, keys=keys, partition=partition)
        )

    async def flush(self, timeout: float | None = None) -> int:
        """Writes everything queued and resolves its futures; returns how many records are still queued."""
        p = self._producer()
        left = await self._loop.run_in_executor(None, p.flush, timeout)
        self._serve()
        return left
