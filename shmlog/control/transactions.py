"""control/transactions.py — the transaction coordinator: producer ids,
transactional ids and their epochs, open transactions, commit and abort.

Owns: <data_dir>/meta/transactions.msgpack (the coordinator's state) and its
flock (transactions.lock), every partition's abort index
(<data_dir>/txn/<topic>@<topic id>/<partition>.aborted, struct shm_txn_abort
records), the rings' txn_bound and txn_aborts words, the transaction
markers (control batches) written into rings, and applying a committed
transaction's consumer offsets. Any process runs it (a producer ending its
transaction, the supervisor aborting a dead or timed-out one, the Kafka
listener): each operation holds the flock from reading the state to saving
it, so the coordinator has one writer at a time and no daemon in the path.
Must never: let a read_committed reader see a record of a transaction that
is open or aborted, commit part of a transaction, or return from a commit
before its decision is durable (when it touches a durable partition).

The invariants, and what a death at each step leaves:

T1 (bound before write) A producer adds a partition to its transaction
   (add_partitions) before it writes there: the coordinator records the
   partition with bound = the ring's next offset at that moment and
   publishes txn_bound = 1 + min(bound of every open transaction there). The
   transaction's records all sit at offsets >= its bound, so a reader that
   stops below txn_bound - 1 (the last stable offset, LSO) never reads an
   open transaction. Death after the state is saved and before the bound is
   published: no record was written yet (the producer had not returned);
   recovery republishes every bound.
T2 (decision before markers) commit_transaction saves the decision
   (PREPARE_COMMIT, fsynced when a durable partition is in it) before it
   writes the first COMMIT marker. Death before the save: the transaction
   is still open and will be aborted (its owner is dead, or at its timeout).
   Death after: whoever takes the flock next (recover(), the supervisor's
   tick, a new init_transactions) rolls it forward: markers again (a second
   marker is harmless: a reader decides a batch by the abort index, never by
   counting markers), offsets again (the same values).
T3 (abort index before bound) An abort writes each partition's ABORT marker,
   then appends (producer id, bound, marker offset, epoch) to the
   partition's abort index (fsynced for a durable partition), counts it in
   the ring's txn_aborts (release), and only then moves txn_bound past the
   transaction. A fenced or timed-out producer's entry ends at INT64_MAX:
   what its old epoch writes after the fence (a zombie's last send) is never
   committed. Death before the append: the state still says PREPARE_ABORT
   (or open): the abort is done again, with a new marker and entry.
T4 (readers) A read_committed reader acquires txn_bound, then txn_aborts;
   when txn_aborts differs from what it loaded it reloads the abort index
   first (shmx_txn_refresh). Everything below the LSO it then uses belongs
   to a transaction that was decided before the bound moved, and if aborted,
   has its entry in what it loaded.
T5 (offsets) A committed transaction's offsets are checked and applied
   under the control lock, so no rebalance moves a partition between the
   check (the member that sent them still owns it) and the write.
T6 (fencing) init_transactions bumps the epoch of its transactional id and
   aborts what the previous epoch left open; every coordinator operation
   with an older epoch raises ProducerFenced.
"""

import fcntl
import os
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import errors, liveness, safefile
from .._native import ffi, lib, raise_status
from . import catalog

STATE_FILE = "transactions.msgpack"
LOCK_FILE = "transactions.lock"
ABORT_DIR = "txn"
ABORT_RECORD = struct.Struct("<qqqii")  # struct shm_txn_abort
INT64_MAX = 2**63 - 1
MAX_EPOCH = 32767
DEFAULT_TIMEOUT_MS = 60_000  # Kafka's transaction.timeout.ms
MAX_TIMEOUT_MS = 900_000  # Kafka's transaction.max.timeout.ms
TID_MAX = 249
LOCK_TIMEOUT_S = 10.0
TID_EXPIRATION_MS = 7 * 86400_000  # Kafka's transactional.id.expiration.ms
IDLE_CHECK_MS = 3_600_000  # expire() reads an unchanged, quiet state this often (ids to forget)
MARKER_WAIT_NS = 10_000_000_000  # a marker waits this long for ring room (a durable ring's persister behind)

EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT = "empty", "ongoing", "prepare_commit", "prepare_abort"


class TxnPartition(msgspec.Struct, frozen=True):
    topic: str
    topic_id: int  # the topic life it was added in (catalog id): a re-created topic is another
    partition: int
    bound: int
    durable: bool


class TxnOffset(msgspec.Struct, frozen=True):
    group: str
    topic: str
    partition: int
    offset: int
    member_token: int  # 0: a group without membership (assign mode)
    metadata: str = ""


class Txn(msgspec.Struct):
    producer_id: int
    epoch: int
    timeout_ms: int
    state: str = EMPTY
    started_ms: int = 0
    owner_pid: int = 0  # the producer process (liveness token): dead -> aborted
    owner_start: int = 0
    partitions: list[TxnPartition] = []
    offsets: list[TxnOffset] = []
    fence: bool = False  # the abort under way fences the epoch (init by another, timeout, death)
    used_ms: int = 0  # the last init or end: an id unused for TID_EXPIRATION_MS is forgotten


class State(msgspec.Struct):
    next_producer_id: int = 1000
    txns: dict[str, Txn] = {}


def _meta(plane) -> str:
    return os.path.join(plane.settings.data_dir, "meta")


def abort_index_path(data_dir: str, topic: str, topic_id: int, partition: int) -> str:
    return os.path.join(data_dir, ABORT_DIR, f"{topic}@{catalog.format_id(topic_id)}", f"{partition}.aborted")


def read_abort_index(data_dir: str, topic: str, topic_id: int, partition: int) -> bytes:
    """The partition's abort index, whole records only (a torn last append is
    not one); b"" when it has none."""
    try:
        data = safefile.read_bytes(abort_index_path(data_dir, topic, topic_id, partition))
    except FileNotFoundError:
        return b""
    return data[: len(data) - len(data) % ABORT_RECORD.size]


def aborted_entries(data: bytes) -> list[tuple[int, int, int, int]]:
    """(producer_id, first_offset, last_offset, max_epoch) of an abort index."""
    return [t[:4] for t in ABORT_RECORD.iter_unpack(data)]


def validate_timeout(timeout_ms: object) -> int:
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise errors.InvalidArgument(f"transaction_timeout_ms must be an int in [1, {MAX_TIMEOUT_MS}]")
    return timeout_ms


def validate_transactional_id(tid: object) -> str:
    if not isinstance(tid, str) or not tid or len(tid) > TID_MAX or "\0" in tid:
        raise errors.InvalidArgument(f"transactional_id must be a non-empty str of at most {TID_MAX} characters")
    return tid


class Coordinator:
    """The coordinator's operations on one instance (the plane: a Log or the
    supervisor's ControlPlane). Thread-safe within a process; the flock
    serialises processes."""

    def __init__(self, plane) -> None:
        self.plane = plane
        self._mutex = threading.Lock()
        # expire(): (state file's (mtime, size, inode), when) after a read that found no open transaction
        self._quiet: tuple[tuple[int, int, int], int] | None = None

    # ------------------------------------------------------------ the flock and the state

    def _locked(self) -> "_Session":
        return _Session(self)

    # ------------------------------------------------------------ producer ids

    def new_producer_id(self) -> int:
        """A producer id no other producer of this instance was given, ever
        (idempotent producers without a transactional id)."""
        with self._locked() as s:
            pid = s.next_producer_id()
            s.save(durable=True)
        return pid

    # ------------------------------------------------------------ the transactional operations

    def init(self, tid: str, timeout_ms: int, owner: tuple[int, int]) -> tuple[int, int]:
        """init_transactions: (producer id, epoch) for tid, fencing every
        older epoch and aborting what it left open (T6)."""
        validate_transactional_id(tid)
        validate_timeout(timeout_ms)
        with self._locked() as s:
            t = s.state.txns.get(tid)
            if t is not None and t.state != EMPTY:
                if t.state == ONGOING:
                    t.state, t.fence = PREPARE_ABORT, True
                s.complete(tid, t)
            if t is None or t.epoch >= MAX_EPOCH:
                t = Txn(producer_id=s.next_producer_id(), epoch=0, timeout_ms=timeout_ms)
            else:
                t = Txn(producer_id=t.producer_id, epoch=t.epoch + 1, timeout_ms=timeout_ms)
            t.owner_pid, t.owner_start = owner
            t.used_ms = _now_ms()
            s.state.txns[tid] = t
            s.save(durable=True)
            return t.producer_id, t.epoch

    def add_partitions(self, tid: str, pid: int, epoch: int, parts: Iterable[tuple[str, int]]) -> None:
        """Adds (topic, partition)s to tid's transaction before the producer
        writes there (T1); starts the transaction if none is open."""
        with self._locked() as s:
            t = s.current(tid, pid, epoch)
            have = {(p.topic, p.partition) for p in t.partitions}
            new = []
            for topic, partition in parts:
                if (topic, partition) in have:
                    continue
                h = self.plane.topic_handle(topic)
                ring = self.plane.ring(h, partition, writable=False)
                bound = ring.ends()[1]
                new.append(TxnPartition(topic, h.topic_id, partition, bound, h.config.persistence == "disk"))
                have.add((topic, partition))
            if not new:
                return
            if t.state == EMPTY:
                t.state, t.started_ms = ONGOING, _now_ms()
            t.partitions = t.partitions + new
            s.save(durable=any(p.durable for p in new))
            s.publish_bounds(new)

    def add_offsets(self, tid: str, pid: int, epoch: int, offsets: list[TxnOffset]) -> None:
        """send_offsets_to_transaction: the offsets commit with the transaction."""
        with self._locked() as s:
            t = s.current(tid, pid, epoch)
            if t.state == EMPTY:
                t.state, t.started_ms = ONGOING, _now_ms()
            keep = {(o.group, o.topic, o.partition): o for o in t.offsets}
            for o in offsets:
                keep[(o.group, o.topic, o.partition)] = o
            t.offsets = list(keep.values())
            s.save(durable=False)

    def end(self, tid: str, pid: int, epoch: int, commit: bool) -> None:
        """commit_transaction / abort_transaction. A commit whose offsets'
        partitions moved to another member is aborted and raises CommitFailed."""
        with self._locked() as s:
            t = s.current(tid, pid, epoch)
            if t.state == EMPTY:
                return
            if commit:
                with self.plane._lock():  # T5: no rebalance between the check and the write
                    lost = s.offsets_lost(t)
                    if not lost:
                        t.state = PREPARE_COMMIT
                        s.save(durable=any(p.durable for p in t.partitions))  # T2
                        s.complete(tid, t, control_locked=True)
                        return
                t.state = PREPARE_ABORT
                s.complete(tid, t)
                raise errors.CommitFailed(
                    f"transaction of {tid!r} aborted: its consumer offsets for {lost} belong to another "
                    "member now (the group rebalanced); nothing of it was committed"
                )
            t.state = PREPARE_ABORT
            s.complete(tid, t)

    def check_write(self, pid: int, epoch: int, topic: str, partition: int) -> None:
        """A transactional batch from elsewhere (the Kafka listener's Produce):
        its producer's transaction must be open with this partition added, at
        this epoch (T1, T6). Raises ProducerFenced or InvalidTxnState."""
        with self._locked() as s:
            for tid, t in s.state.txns.items():
                if t.producer_id != pid:
                    continue
                if epoch != t.epoch:
                    raise errors.ProducerFenced(f"producer {pid} epoch {epoch} of {tid!r} is fenced (now {t.epoch})")
                if t.state == ONGOING and any(p.topic == topic and p.partition == partition for p in t.partitions):
                    return
                raise errors.InvalidTxnState(
                    f"producer {pid} ({tid!r}) wrote {topic!r} partition {partition} "
                    "without adding it to its transaction"
                )
            raise errors.InvalidTxnState(f"producer id {pid} has no transactional id (InitProducerId first)")

    def state_of(self, tid: str) -> Txn | None:
        with self._locked() as s:
            return s.state.txns.get(tid)

    # ------------------------------------------------------------ recovery and expiry

    def expire(self, now_ms: int | None = None) -> list[str]:
        """Aborts (and fences) every open transaction whose producer died or
        whose timeout passed, and rolls forward decided ones; returns their
        transactional ids. The supervisor calls it every tick; cheap when no
        transaction is open (one stat: the state is read again only when the
        file changed, or hourly for ids to forget)."""
        path = os.path.join(_meta(self.plane), STATE_FILE)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        now_ms = _now_ms() if now_ms is None else now_ms
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._quiet is not None and self._quiet[0] == seen and now_ms - self._quiet[1] < IDLE_CHECK_MS:
            return []
        done = []
        with self._locked() as s:
            idle = [
                tid for tid, t in s.state.txns.items() if t.state == EMPTY and now_ms - t.used_ms > TID_EXPIRATION_MS
            ]
            for tid in idle:
                del s.state.txns[tid]
            for tid, t in s.state.txns.items():
                if t.state == EMPTY:
                    continue
                if t.state == ONGOING:
                    dead = t.owner_pid and not liveness_alive(self.plane, t.owner_pid, t.owner_start)
                    if not dead and now_ms - t.started_ms < t.timeout_ms:
                        continue
                    t.state, t.fence = PREPARE_ABORT, True
                s.complete(tid, t)
                done.append(tid)
            if done or idle:
                s.save(durable=True)
            self._quiet = None
            if all(t.state == EMPTY for t in s.state.txns.values()):
                try:  # under the flock: nobody changes the file between the read and this stat
                    st = os.stat(path)
                    self._quiet = ((st.st_mtime_ns, st.st_size, st.st_ino), now_ms)
                except FileNotFoundError:
                    pass
        return done

    def publish_open_bounds(self) -> None:
        """A restore made new rings (no bounds): every undecided or decided but
        unfinished transaction's bounds go back on them (T1), before the
        instance is published. Reads the state without the flock (it is
        replaced atomically; the restorer holds the control lock, which comes
        after the flock in the lock order)."""
        try:
            data = safefile.read_bytes(os.path.join(_meta(self.plane), STATE_FILE))
        except FileNotFoundError:
            return
        state = msgspec.msgpack.decode(data, type=State) if data else State()
        publish_bounds(self.plane, state, [p for t in state.txns.values() if t.state != EMPTY for p in t.partitions])

    def recover(self) -> None:
        """After a restore: aborts what dead producers left open, finishes what was decided."""
        self.expire()

    def last_stable_offset(self, topic: str, partition: int) -> int:
        ring = self.plane.ring(self.plane.topic_handle(topic), partition, writable=False)
        return ring.last_stable_offset(ring.ends()[1])


class _Session:
    """One coordinator operation: the flock held, the state loaded; save()
    writes it back (atomically; fsynced when durable)."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.plane = coord.plane
        self.meta = _meta(self.plane)
        self.fd = -1

    def __enter__(self) -> "_Session":
        self.coord._mutex.acquire()
        try:
            safefile.makedirs(self.meta)
            self.fd = safefile.open_rw(os.path.join(self.meta, LOCK_FILE))
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise errors.Timeout(
                            f"the transaction coordinator's lock ({os.path.join(self.meta, LOCK_FILE)}) stayed "
                            f"held for {LOCK_TIMEOUT_S:.0f} s: a process is stopped inside a transactional call "
                            "(SIGSTOP, a debugger); resume or kill it"
                        ) from None
                    time.sleep(0.001)
            try:
                data = safefile.read_bytes(os.path.join(self.meta, STATE_FILE))
            except FileNotFoundError:
                data = b""
            try:
                self.state = msgspec.msgpack.decode(data, type=State) if data else State()
            except msgspec.DecodeError as e:
                raise errors.CorruptMetadata(
                    f"{os.path.join(self.meta, STATE_FILE)} is damaged ({e}); the transaction coordinator "
                    "cannot run: restore it or remove it (open transactions are then never aborted)"
                ) from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1
        self.coord._mutex.release()

    def next_producer_id(self) -> int:
        pid = self.state.next_producer_id
        self.state.next_producer_id += 1
        return pid

    def save(self, durable: bool) -> None:
        safefile.replace(os.path.join(self.meta, STATE_FILE), msgspec.msgpack.encode(self.state), sync_dir=durable)

    def current(self, tid: str, pid: int, epoch: int) -> Txn:
        t = self.state.txns.get(tid)
        if t is None:
            raise errors.InvalidArgument(f"unknown transactional_id {tid!r}: call init_transactions() first")
        if t.producer_id != pid or t.epoch != epoch:
            raise errors.ProducerFenced(
                f"producer of transactional_id {tid!r} (producer id {pid}, epoch {epoch}) was fenced: "
                f"a newer producer (epoch {t.epoch}) initialised it, or its transaction timed out or "
                "was aborted after its process was presumed dead; close it"
            )
        if t.state in (PREPARE_COMMIT, PREPARE_ABORT):
            self.complete(tid, t)  # a decided transaction its producer did not finish
        return t

    # ------------------------------------------------------------ completing a decided transaction

    def offsets_lost(self, t: Txn) -> list[tuple[str, int]]:
        """Control lock held: partitions whose offsets the sending member no longer owns."""
        lost = []
        for o in t.offsets:
            if o.member_token and _owner(self.plane, o) != o.member_token:
                lost.append((o.topic, o.partition))
        return lost

    def complete(self, tid: str, t: Txn, control_locked: bool = False) -> None:
        """Writes the decided transaction's markers (and abort index entries)
        and offsets, then frees its partitions' bounds (T2, T3)."""
        commit = t.state == PREPARE_COMMIT
        if t.state == ONGOING:
            raise AssertionError("complete() of an undecided transaction")
        marker_epoch = t.epoch + 1 if t.fence else t.epoch
        touched = []
        for p in t.partitions:
            ring = _live_ring(self.plane, p)
            if ring is None:
                continue  # the topic is gone: nothing of it to decide
            at = _write_marker(self.plane, ring, t.producer_id, marker_epoch, commit)
            if not commit:
                _append_abort(self.plane, p, ring, t.producer_id, at, t.epoch, t.fence)
            touched.append(p)
        if commit and t.offsets:
            if control_locked:
                _apply_offsets(self.plane, t.offsets)
            else:
                with self.plane._lock():
                    _apply_offsets(self.plane, t.offsets)
        done = t.partitions
        t.state, t.partitions, t.offsets, t.started_ms, t.used_ms = EMPTY, [], [], 0, _now_ms()
        if t.fence:
            t.epoch, t.fence = marker_epoch, False  # the fenced epoch is gone for good (T6)
        self.save(durable=False)
        self.publish_bounds(done)

    def publish_bounds(self, parts: Iterable[TxnPartition]) -> None:
        publish_bounds(self.plane, self.state, parts)


# ------------------------------------------------------------ ring and table work


def publish_bounds(plane, state: State, parts: Iterable[TxnPartition]) -> None:
    """txn_bound of these partitions from the open transactions of state (T1)."""
    lows: dict[tuple[str, int, int], int] = {}
    for t in state.txns.values():
        if t.state == EMPTY:
            continue
        for p in t.partitions:
            k = (p.topic, p.topic_id, p.partition)
            lows[k] = min(lows.get(k, INT64_MAX), p.bound)
    for p in parts:
        ring = _live_ring(plane, p)
        if ring is None:
            continue
        low = lows.get((p.topic, p.topic_id, p.partition))
        lib.shm_ring_set_txn_bound(_header(ring), 0 if low is None else low + 1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def liveness_alive(plane, pid: int, start: int) -> bool:
    return lib.shm_process_alive(plane.token_prefix_c, pid, start) != 0


def _live_ring(plane, p: TxnPartition):
    try:
        h = plane.topic_handle(p.topic)
    except errors.UnknownTopicOrPartition:
        return None
    if h.topic_id != p.topic_id or p.partition >= h.partitions:
        return None
    return plane.ring(h, p.partition, writable=True)


def _header(ring) -> Any:
    """The ring's header, writable (the coordinator's processes write rings)."""
    h = ring.writable_base()
    if h is None:
        raise errors.PermissionDenied(
            f"the transaction coordinator needs write access to {ring.topic!r} partition {ring.partition}'s ring"
        )
    return ffi.cast("void *", h.hdr)


def _write_marker(plane, ring, pid: int, epoch: int, commit: bool) -> int:
    """Appends one COMMIT or ABORT marker; returns its offset."""
    own_pid, st = liveness.ensure_token(plane.token_prefix)
    slot = lib.shm_ring_claim_slot(ring.h, own_pid, st, plane.token_prefix_c)
    if slot < 0:
        raise_status(slot, f"cannot claim a producer slot in {ring.topic!r} partition {ring.partition}")
    try:
        ctx = ffi.new("struct shm_send_ctx *")
        ctx.ring, ctx.slot = ring.h, slot
        ctx.timeout_ns = MARKER_WAIT_NS
        ctx.unblock_ns = plane.unblock_ns
        ctx.token_prefix = plane.token_prefix_c
        out = ffi.new("struct shm_append_out *")
        kind = lib.SHM_CONTROL_COMMIT if commit else lib.SHM_CONTROL_ABORT
        rc = lib.shm_send_control(ctx, pid, epoch, kind, 0, out)
        if rc != lib.SHM_OK:
            raise_status(rc, f"cannot write a transaction marker to {ring.topic!r} partition {ring.partition}")
        return out.base_offset
    finally:
        lib.shm_ring_release_slot(ring.base, slot)


def _append_abort(plane, p: TxnPartition, ring, pid: int, marker: int, epoch: int, fence: bool) -> None:
    """T3: the abort index entry, durable for a durable partition, then counted."""
    path = abort_index_path(plane.settings.data_dir, p.topic, p.topic_id, p.partition)
    fd = safefile.open_append(path, create_dirs=True)
    try:
        os.write(fd, ABORT_RECORD.pack(pid, p.bound, INT64_MAX if fence else marker, epoch, 0))
        if p.durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    lib.shm_ring_note_aborts(_header(ring), 1)


def _owner(plane, o: TxnOffset) -> int:
    from . import groups

    return groups.offset_owner(plane, o.group, o.topic, o.partition)


def _apply_offsets(plane, offsets: list[TxnOffset]) -> None:
    """Control lock held (T5): the committed transaction's offsets."""
    from . import groups

    groups.apply_transaction_offsets(plane, [(o.group, o.topic, o.partition, o.offset) for o in offsets])


def abort_index_view(data: bytes) -> Any:
    """A C array of struct shm_txn_abort over an abort index's bytes."""
    return ffi.from_buffer("struct shm_txn_abort[]", data) if data else ffi.NULL
