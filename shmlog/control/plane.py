"""control/plane.py — the Python half of an instance's control segment.

Owns: attaching (or creating) the control segment and checking the instance
identity it records, the control lock, restoring topics and offsets from the
data dir into a new segment, reconciling the topic table with the on-disk
catalog after a crash, the topic operations carried out here under the lock
(create, alter, delete), describing topics, the per-process cache of mapped
rings, and the group operations (control/groups.py does the work).
Layer: the control plane. The daemons build on it directly (the supervisor
is its one writer while it runs); the client's Log (client/log.py) extends
it with routing through the supervisor, daemon start-up and the clients.
Must never: produce or consume, start or stop a daemon, talk to the
supervisor, or read a shared field without the C core.
"""

import logging
import os
import shutil
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from .. import config, errors, liveness, permissions, storage
from .._native import ShmMapping, ffi, lib, memory_shortfall, raise_status, unlink_segment
from ..ipc.progress import ProgressWriter
from . import catalog, groups, log_start, offsets_snapshot, transactions
from .ring_map import Ring

logger = logging.getLogger("shmlog")

LOCK_TIMEOUT_NS = 10_000_000_000


class PartitionInfo(msgspec.Struct, frozen=True):
    partition: int
    log_start_offset: int  # oldest offset still readable
    end_offset: int  # offset the next record will get
    ring_bytes: int
    ring_used_bytes: int
    sealed_writes: int  # reservations of dead producers turned into offset gaps
    overwritten_frames: int  # ephemeral: frames dropped to make room
    persisted_lag_bytes: int = 0  # durable: committed bytes the persister has not written yet
    fsynced_lag_bytes: int = 0  # durable: committed bytes not fsynced yet
    offline: str | None = None  # quarantined (damaged files): what and where; writes refused
    offline_offset: int | None = None  # the first offset the damage affects
    slowest_reader_lag_bytes: int | None = None  # bytes the slowest attached consumer has not read (None: none)
    slowest_reader_pid: int | None = None
    blocked_ms: float = 0.0  # overflow="block": time producers waited on a consumer
    blocked_waits: int = 0  # overflow="block": writes that had to wait on a consumer
    resident_bytes: int = 0  # shared memory the ring holds: header + data its first lap reached
    cleaned_to: int | None = None  # compacted topics: offsets below this were compacted by the last cleaner pass
    cleaner_passes: int = 0
    cleaner_bytes_reclaimed: int = 0  # segment bytes the cleaner removed, all passes
    cleaner_records_dropped: int = 0
    last_stable_offset: int = 0  # read_committed readers stop here: end_offset, or an open transaction's first offset


class TopicDescription(msgspec.Struct, frozen=True):
    name: str
    generation: int
    config: config.TopicConfig
    partitions: list[PartitionInfo]


class TopicHandle:
    """A LIVE topic-table entry as this process last saw it."""

    __slots__ = ("name", "index", "generation", "config", "partitions", "epoch", "topic_id")

    def __init__(
        self, name: str, index: int, generation: int, cfg: config.TopicConfig, epoch: int = 0, topic_id: int = 0
    ) -> None:
        self.epoch = epoch  # the topic table's epoch when config was read
        self.name = name
        self.index = index
        self.generation = generation  # this control segment's name for the rings of this life
        self.topic_id = topic_id  # the catalog's id of this life: names its directories
        self.config = cfg
        self.partitions = cfg.partitions


def _c_config(cfg: config.TopicConfig) -> Any:
    c = ffi.new("struct shm_topic_config *")
    c.partitions = cfg.partitions
    c.persistence = config.PERSISTENCE[cfg.persistence]
    c.ring_bytes = cfg.ring_bytes
    c.max_message_bytes = cfg.max_message_bytes
    c.fsync_mode, c.fsync_interval_ms = config.fsync_mode(cfg.fsync)
    c.retention_ms = -1 if cfg.retention_ms is None else cfg.retention_ms
    c.retention_bytes = -1 if cfg.retention_bytes is None else cfg.retention_bytes
    c.segment_bytes = cfg.segment_bytes
    c.segment_ms = cfg.segment_ms
    c.overflow = config.OVERFLOW[cfg.overflow]
    c.cleanup_policy = config.CLEANUP_POLICIES[cfg.cleanup_policy]
    c.delete_retention_ms = cfg.delete_retention_ms
    c.min_compaction_lag_ms = cfg.min_compaction_lag_ms
    return c


def _py_config(c: Any) -> config.TopicConfig:
    mode = {v: k for k, v in config.FSYNC_MODES.items()}[c.fsync_mode]
    return config.TopicConfig(
        partitions=c.partitions,
        ring_bytes=c.ring_bytes,
        persistence={v: k for k, v in config.PERSISTENCE.items()}[c.persistence],
        max_message_bytes=c.max_message_bytes,
        fsync=f"interval:{c.fsync_interval_ms}" if mode == "interval" else mode,
        retention_ms=None if c.retention_ms < 0 else c.retention_ms,
        retention_bytes=None if c.retention_bytes < 0 else c.retention_bytes,
        segment_bytes=c.segment_bytes,
        segment_ms=c.segment_ms,
        overflow={v: k for k, v in config.OVERFLOW.items()}[c.overflow],
        cleanup_policy={v: k for k, v in config.CLEANUP_POLICIES.items()}[c.cleanup_policy],
        delete_retention_ms=c.delete_retention_ms,
        min_compaction_lag_ms=c.min_compaction_lag_ms,
    )


_D = config.TOPIC_DEFAULTS  # create_topic's defaults (one place: config.TopicConfig)


_Plane = TypeVar("_Plane", bound="ControlPlane")


class ControlPlane:
    """An instance's control segment, attached (created and restored when new).
    Clients use its subclass Log (shmlog.connect()); daemons use it as it is."""

    def __init__(
        self,
        settings: config.Settings,
        *,
        max_topics: int = 1024,
        max_groups: int = 1024,
        max_members: int = 4096,
        max_offsets: int = 65536,
        unblock_timeout_ms: int = 500,
        create: bool = True,
    ) -> None:
        self.settings = settings
        self._create = create
        if not isinstance(unblock_timeout_ms, int) or unblock_timeout_ms < 1:
            raise errors.InvalidArgument("unblock_timeout_ms must be a positive int")
        self.unblock_ns = unblock_timeout_ms * 1_000_000
        if create:
            permissions.check_data_dir(settings.data_dir, create=True)
        self._gid = permissions.instance_gid(settings.data_dir)
        self._trust = permissions.segment_trust(settings.data_dir)
        self.token_prefix = liveness.token_prefix(settings.shm_prefix, settings.instance)
        self.token_prefix_c = ffi.new("char[]", self.token_prefix.encode())
        self._handles: dict[str, TopicHandle] = {}
        self._rings: dict[tuple, Ring] = {}
        self._log_starts = log_start.LogStarts(settings.data_dir)
        self._closed = False
        limits = _limits(max_topics, max_groups, max_members, max_offsets)
        while True:
            self._ctl, created = self._attach_ctl(limits)
            if created:
                self._restore()
            elif not lib.shm_ctl_restored(self._ctl.base):
                # the restorer holds the lock; if it died mid-way we finish its work
                with self._lock():
                    state = lib.shm_ctl_restored(self._ctl.base)
                    if not state:
                        self._restore(locked_by_caller=True)
                if state == lib.SHM_CTL_ABANDONED:  # its restore failed: attach the next one
                    self._ctl.close()
                    continue
            else:
                self._reconcile_if_needed()
            break

    # ------------------------------------------------------------ control segment

    def _attach_ctl(self, limits: Any) -> tuple[ShmMapping, bool]:
        name = self.settings.ctl_name
        deadline = time.monotonic() + 5
        while True:
            try:
                seg = ShmMapping.open(name, writable=True, trust=self._trust)
            except errors.SharedMemoryMissing:
                if not self._create:
                    raise self._no_instance() from None
                permissions.check_data_dir(self.settings.data_dir, write=True)  # before a segment exists
                real, dev, ino = self._identity()
                # made under no name and published whole (csrc/shm.c): nobody
                # ever opens a zero-filled or half-stamped header, and a
                # creator killed before the link leaves nothing
                seg = ShmMapping.create_hidden(name, lib.shm_ctl_size(limits), gid=self._gid)
                try:
                    rc = lib.shm_ctl_init(seg.base, seg.size, limits, real, len(real), dev, ino)
                    if rc != lib.SHM_OK:
                        raise_status(rc, f"cannot initialise control segment {name}")
                    # restore before anyone can take the lock: others block on it (topic_handle)
                    lib.shm_ctl_lock(seg.base, -1)
                    seg.publish()
                except errors.TopicExists:
                    seg.close()
                    continue  # another process created it first
                except BaseException:
                    seg.close()
                    raise
                return seg, True
            rc = lib.shm_ctl_check(seg.base, seg.size)
            if rc == lib.SHM_OK and lib.shm_ctl_restored(seg.base) == lib.SHM_CTL_ABANDONED:
                rc = lib.SHM_E_AGAIN  # its creator's restore failed; it unlinks it now
            elif rc == lib.SHM_OK:
                self._check_identity(seg)
                return seg, False
            seg.close()
            if rc != lib.SHM_E_AGAIN:
                raise errors.LayoutMismatch(
                    f"{name} is not a shmlog control segment of layout version "
                    f"{lib.SHM_LAYOUT_VERSION}: it was made by another shmlog version or is "
                    f"damaged; stop its users and remove it (`shmlog doctor --clean`)"
                )
            if time.monotonic() > deadline:
                raise errors.LayoutMismatch(
                    f"control segment {name} was never finished by its creator; remove it with `shmlog doctor --clean`"
                )
            time.sleep(0.001)

    # ------------------------------------------------------------ instance identity (issue 12.4, 12.7)
    #
    # One instance = one name + one data dir + one shm prefix. The creator of
    # the control segment records the data dir's realpath and its device and
    # inode in the header (shm_ctl_init, before the header is published), and
    # every attach compares: another data dir under the same name and prefix
    # (which used to run a second supervisor and persister on the same shared
    # memory) is refused with both dirs named. device+inode, not the string,
    # decide (a symlinked or bind-mounted path to the same dir is the same dir).

    def _identity(self) -> tuple[bytes, int, int]:
        real = os.path.realpath(self.settings.data_dir)
        b = real.encode()
        if len(b) > lib.SHM_DATA_DIR_MAX:
            raise errors.InvalidArgument(f"data dir {real} is longer than {lib.SHM_DATA_DIR_MAX} bytes")
        st = os.stat(real)
        return b, st.st_dev, st.st_ino

    def _check_identity(self, seg: ShmMapping) -> None:
        n, dev, ino = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        theirs = ffi.string(lib.shm_ctl_data_dir(seg.base, n, dev, ino), n[0]).decode(errors="replace")
        ours = os.path.realpath(self.settings.data_dir)
        try:
            st = os.stat(ours)
            if (st.st_dev, st.st_ino) == (dev[0], ino[0]):
                return
        except OSError:
            pass
        seg.close()
        s = self.settings
        hint = (
            f"the data dir {theirs} it was made with was removed or replaced since: stop the instance's "
            "processes and remove its shared memory (`shmlog doctor --clean` or `shmlog down --purge`)"
            if theirs == ours
            else f"use --data-dir {theirs} (or $SHMLOG_DATA_DIR) for this instance, or another --instance "
            "or --shm-prefix for this data dir"
        )
        raise errors.InstanceConflict(
            f"instance {s.instance!r} (shared memory {permissions.shm_path(s.ctl_name)}) belongs to data dir "
            f"{theirs}, not {ours}: one instance is one name, one data dir and one shm prefix; {hint}"
        )

    def _no_instance(self) -> errors.UnknownInstance:
        s = self.settings
        shm = permissions.shm_path(s.ctl_name)
        if os.path.exists(catalog.path(s.data_dir)):
            return errors.InstanceNotRunning(
                f"instance {s.instance!r} is not running: its data dir {s.data_dir} exists but its shared "
                f"memory {shm} does not (after a reboot or `shmlog down --purge`); start it with `shmlog up` "
                "(read-only commands never start an instance)"
            )
        return errors.UnknownInstance(
            f"no instance {s.instance!r}: no shared memory {shm} and no {catalog.path(s.data_dir)} in the "
            "data dir it looked in; check --instance, --data-dir and --shm-prefix (or $SHMLOG_INSTANCE, "
            "$SHMLOG_DATA_DIR, $SHMLOG_SHM_PREFIX)"
        )

    def _lock(self) -> "_Unlocker":
        self._check_open()
        rc = lib.shm_ctl_lock(self._ctl.base, LOCK_TIMEOUT_NS)
        if rc != lib.SHM_OK:
            raise (
                errors.Timeout("the instance's control lock stayed busy for 10 s")
                if rc == lib.SHM_E_TIMEOUT
                else raise_status(rc, "cannot take the control lock")
            )
        return _Unlocker(self._ctl.base)

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Closed("this shmlog connection is closed")

    def _entries(self) -> Iterator[tuple[int, int, int, Any]]:
        base = self._ctl.base
        gen = ffi.new("uint64_t *")
        for i in range(lib.shm_ctl_max_topics(base)):
            st = lib.shm_ctl_topic_state(base, i, gen)
            if st != lib.SHM_TOPIC_FREE:
                yield i, st, gen[0], lib.shm_ctl_topic(base, i)

    def _restore(self, locked_by_caller: bool = False) -> None:
        """A new control segment: the catalog's topics come back (reconcile
        with an empty table), each durable partition's ring starting where its
        segment files end, then the committed offsets. Runs holding the control
        lock (taken in _attach_ctl, or by the caller when it completes the work
        of a restorer that died); running it twice is harmless. A failure
        removes every ring it made and the control segment, so the next
        connect starts over (issue 11.14: no TopicExists until doctor --clean)."""
        progress = ProgressWriter(self.settings.data_dir)
        try:
            self._reconcile_locked(progress)
            offsets_snapshot.restore_offsets(self)
        except BaseException:
            progress.finish()
            if not locked_by_caller:
                self._unlink_all_rings()
                lib.shm_ctl_set_abandoned(self._ctl.base)  # waiters attach the next one
                lib.shm_ctl_unlock(self._ctl.base)
                name = self.settings.ctl_name
                self._ctl.close()
                unlink_segment(name)  # the next connect retries the restore
            raise
        progress.finish()
        # new rings hold no transaction bound: the open transactions' go back before anyone reads
        self.transactions.publish_open_bounds()
        lib.shm_ctl_set_restored(self._ctl.base)
        if not locked_by_caller:
            lib.shm_ctl_unlock(self._ctl.base)
            self.transactions.recover()  # aborts what dead producers left open (flock, then control lock)

    def _unlink_all_rings(self) -> None:
        """Lock held, the control segment is being given up: every ring it names goes."""
        for _, _, gen, e in self._entries():
            for p in range(e.config.partitions):
                unlink_segment(self.settings.ring_name(gen, p))

    # ------------------------------------------------------------ reconciling the catalog and the table
    #
    # catalog.py states the commit order and the invariant; this is the one
    # place that restores it after a crash. Every step below is idempotent and
    # rolls an intent forward, so a reconciler that dies is followed by
    # another that finishes its work.

    def _live_entries(self) -> dict[str, tuple[int, int, int, config.TopicConfig]]:
        """{name: (index, generation, topic_id, config)} of the LIVE topic-table entries."""
        base = self._ctl.base
        return {
            ffi.string(e.name, e.name_len).decode(): (i, gen, lib.shm_ctl_topic_id(base, i), _py_config(e.config))
            for i, st, gen, e in self._entries()
            if st == lib.SHM_TOPIC_LIVE
        }

    def _reconcile_if_needed(self) -> None:
        """Attach to a running instance: if the table and the catalog disagree
        (a topic change whose process died, a catalog damaged since), take the
        lock and reconcile. Lock-free first: it costs one read of the catalog."""
        try:
            cat = catalog.load(self.settings.data_dir)
        except (errors.CorruptMetadata, OSError) as e:
            logger.warning("%s (the running instance goes on; topic changes are refused until it is repaired)", e)
            return
        live = {n: (v[2], v[3]) for n, v in self._live_entries().items()}
        want = {n: (r.topic_id, r.config) for n, r in cat.topics.items() if r.state == catalog.LIVE}
        if want == live and len(want) == len(cat.topics) and not cat.migrated:
            return
        try:
            with self._lock():
                self._reconcile_locked()
        except (errors.ShmlogError, OSError) as e:
            logger.warning(
                "cannot reconcile the topic table with %s: %s (retried by the next topic change)",
                catalog.path(self.settings.data_dir),
                e,
            )

    def _reconcile_locked(self, progress: ProgressWriter | None = None) -> catalog.Catalog:
        """Under the lock: completes every intent of the catalog and makes the
        table's LIVE topics exactly the catalog's; returns the catalog."""
        d = self.settings.data_dir
        cat = catalog.load(d)
        if cat.migrated:
            catalog.save(d, cat)  # ids durable before a directory is renamed to carry one
        for i, st, gen, e in list(self._entries()):
            if st == lib.SHM_TOPIC_CREATING:  # a dead creator's: its rings were never published
                self._drop_entry(i, gen, e.config.partitions, mark_deleted=False)
        live = self._live_entries()
        if progress is not None:
            progress.total = sum(
                r.config.partitions
                for n, r in cat.topics.items()
                if r.config.persistence == "disk" and r.state != catalog.DELETING and n not in live
            )
        for name in sorted(cat.topics):
            rec = cat.topics[name]
            tid = rec.topic_id
            have = live.pop(name, None)
            if rec.state == catalog.DELETING:  # D2-D4 of an interrupted delete
                if have is not None and have[2] == tid:
                    self._drop_entry(have[0], have[1], have[3].partitions, mark_deleted=True)
                elif have is not None:
                    live[name] = have  # another life is live: adopted below
                storage.discard_topic_dir(d, name, tid)
                self._log_starts.discard(name, tid)
                del cat.topics[name]
                catalog.save(d, cat)
                logger.info("completed the deletion of topic %r (id %s)", name, rec.id)
                continue
            if have is not None and have[2] != tid:
                logger.error(
                    "topic %r: the live topic has id %016x but %s says %s; keeping the live one "
                    "(the directory %s is left as it is)",
                    name,
                    have[2],
                    catalog.path(d),
                    rec.id,
                    storage.topic_dir(d, name, tid),
                )
                cat.topics[name] = catalog.TopicRecord(id=catalog.format_id(have[2]), config=have[3])
                catalog.save(d, cat)
                continue
            storage.adopt_legacy_dir(d, name, tid)
            if have is None:  # restore, or C2-C3 of an interrupted create
                cfg = self._restore_topic(name, rec.config, tid, progress)
            else:  # A2-A3 of an interrupted alter (or nothing)
                cfg = self._apply_config(name, have[0], have[1], tid, have[3], rec.config)
            if rec.state != catalog.LIVE or cfg != rec.config:
                if rec.state != catalog.LIVE:
                    logger.info(
                        "completed the %s of topic %r", "creation" if rec.state == catalog.CREATING else "change", name
                    )
                cat.topics[name] = catalog.TopicRecord(id=rec.id, config=cfg)
                catalog.save(d, cat)
        for name, (_, _, tid, cfg) in live.items():  # live but unknown to the catalog: adopted
            logger.warning("topic %r is live but missing from %s: added to it", name, catalog.path(d))
            cat.topics[name] = catalog.TopicRecord(id=catalog.format_id(tid), config=cfg)
            catalog.save(d, cat)
        storage.empty_trash(d)
        return cat

    def _restore_topic(
        self, name: str, cfg: config.TopicConfig, tid: int, progress: ProgressWriter | None = None
    ) -> config.TopicConfig:
        """Under the lock: a table entry and rings for a catalog topic, each
        durable ring starting where its directory's records end (a directory
        that does not exist yet is made, never emptied)."""
        bases: list[tuple[int, int]] = []
        damage: dict[int, storage.Damage] = {}
        if cfg.persistence != "disk":
            self._log_starts.discard(name, tid)  # its rings start at offset 0 again
        for p in range(cfg.partitions):
            if cfg.persistence != "disk":
                bases.append((0, 0))
                continue
            pd = storage.make_partition_dir(self.settings.data_dir, name, p, tid)
            if progress is not None:
                progress.report(name, p)
            rep = self._recover(name, p, pd, damage)
            if progress is not None:
                progress.done += 1
            bases.append((rep.end_offset, rep.end_pos))
        self._create_entry(name, cfg, tid, bases, damage)
        logger.info(
            "restored topic %r (%d partitions%s)",
            name,
            cfg.partitions,
            f", {len(damage)} OFFLINE: {sorted(damage)}" if damage else "",
        )
        return cfg

    @staticmethod
    def _recover(name: str, p: int, pd: str, damage: dict[int, storage.Damage]) -> storage.RecoveryReport:
        """storage.recover_partition at restore, with quarantine (see
        storage/recovery.py, "Quarantine"): damage in partition p's files goes
        into damage[p] instead of refusing the whole instance."""
        rep = storage.recover_partition(pd, quarantine=True)
        if rep.truncated_bytes:
            logger.warning("recovery: %s", rep)
        if rep.damage is not None:
            damage[p] = rep.damage
            logger.error(
                "topic %r partition %d is OFFLINE (quarantined): %s; the other partitions are served",
                name,
                p,
                rep.damage.error,
            )
        return rep

    def _apply_config(
        self, name: str, idx: int, gen: int, tid: int, old: config.TopicConfig, new: config.TopicConfig
    ) -> config.TopicConfig:
        """Under the lock, A2-A3: the LIVE entry idx gets config new (new
        partitions' directories and rings first, published by the entry's
        partition count last); returns the config applied. Partitions never
        shrink and ring_bytes/persistence never change: a catalog that says
        otherwise (damage only) yields to the table for those fields."""
        fixed = {k: getattr(old, k) for k in ("ring_bytes", "persistence") if getattr(old, k) != getattr(new, k)}
        if new.partitions < old.partitions:
            fixed["partitions"] = old.partitions
        if fixed:
            logger.warning(
                "topic %r: keeping %s of the live topic over %s", name, fixed, catalog.path(self.settings.data_dir)
            )
            new = msgspec.structs.replace(new, **fixed)
        if new == old:
            return new
        made: list[str] = []
        damage: dict[int, storage.Damage] = {}
        try:
            for p in range(old.partitions, new.partitions):
                # a ring an interrupted alter made was never published (the
                # entry's count did not include it): nobody wrote it
                unlink_segment(self.settings.ring_name(gen, p))
                base = (0, 0)
                if new.persistence == "disk":
                    pd = storage.make_partition_dir(self.settings.data_dir, name, p, tid)
                    rep = self._recover(name, p, pd, damage)  # records a crashed alter's producers wrote
                    base = (rep.end_offset, rep.end_pos)
                self._make_ring(name, new, gen, p, base, made, damage.get(p))
            if new.overflow != old.overflow:
                for p in range(old.partitions):
                    seg = ShmMapping.open(self.settings.ring_name(gen, p), writable=True, trust=self._trust)
                    rc = lib.shm_ring_set_overflow(seg.base, config.OVERFLOW[new.overflow])
                    seg.close()
                    if rc != lib.SHM_OK:
                        raise_status(rc, f"cannot set overflow of {name!r} partition {p}")
            if new.max_message_bytes != old.max_message_bytes:
                for p in range(old.partitions):
                    seg = ShmMapping.open(self.settings.ring_name(gen, p), writable=True, trust=self._trust)
                    rc = lib.shm_ring_set_max_frame_bytes(seg.base, new.max_message_bytes + lib.SHM_FRAME_HEADER_BYTES)
                    seg.close()
                    if rc != lib.SHM_OK:
                        raise_status(rc, f"cannot set max_message_bytes of {name!r} partition {p}")
        except BaseException:
            for rname in made:
                unlink_segment(rname)
            raise
        rc = lib.shm_ctl_topic_update(self._ctl.base, idx, _c_config(new))
        if rc != lib.SHM_OK:
            raise_status(rc, f"cannot alter topic {name!r}")
        return new

    def has_durable(self) -> bool:
        """Has the instance a topic on disk (so it needs a persister)?"""
        return any(
            e.config.persistence == lib.SHM_PERSIST_DISK for _, st, _, e in self._entries() if st == lib.SHM_TOPIC_LIVE
        )

    # ------------------------------------------------------------ topics

    def create_topic(
        self,
        name: str,
        partitions: int = _D.partitions,
        ring_bytes: int = _D.ring_bytes,
        retention_ms: int | None = _D.retention_ms,
        retention_bytes: int | None = _D.retention_bytes,
        fsync: str = _D.fsync,
        persistence: str = _D.persistence,
        max_message_bytes: int | None = _D.max_message_bytes,
        segment_bytes: int = _D.segment_bytes,
        segment_ms: int = _D.segment_ms,
        overflow: str = _D.overflow,
        cleanup_policy: str = _D.cleanup_policy,
        delete_retention_ms: int = _D.delete_retention_ms,
        min_compaction_lag_ms: int = _D.min_compaction_lag_ms,
    ) -> TopicDescription:
        config.validate_topic_name(name)
        try:
            cfg = config.TopicConfig(
                partitions=partitions,
                ring_bytes=ring_bytes,
                persistence=persistence,
                max_message_bytes=max_message_bytes,
                fsync=fsync,
                retention_ms=retention_ms,
                retention_bytes=retention_bytes,
                segment_bytes=segment_bytes,
                segment_ms=segment_ms,
                overflow=overflow,
                cleanup_policy=cleanup_policy,
                delete_retention_ms=delete_retention_ms,
                min_compaction_lag_ms=min_compaction_lag_ms,
            ).validated()
        except msgspec.ValidationError as e:
            raise errors.InvalidArgument(str(e)) from None
        cfg = _py_config(_c_config(cfg))  # as the table will hold it ("interval:0100" is "interval:100")
        self._create_topic(name, cfg)
        before = set(self._rings)
        try:
            return self.describe_topic(name)
        finally:
            # the description mapped every new partition read-only (2 mappings each); a process that
            # creates 10,000 partitions must not keep 20,000 mappings (vm.max_map_count) and their
            # pages in its RSS for it: the rings stay mapped only while a producer or consumer holds them
            for key in [k for k in self._rings if k not in before]:
                del self._rings[key]

    def _create_topic(self, name: str, cfg: config.TopicConfig) -> None:
        """Creates a validated topic here, under the lock (C1-C4: catalog.py)."""
        d = self.settings.data_dir
        with self._lock():
            cat = self._reconcile_locked()
            if name in cat.topics:
                raise errors.TopicExists(f"topic {name!r} already exists")
            tid = catalog.new_topic_id()
            cat.topics[name] = catalog.TopicRecord(id=catalog.format_id(tid), config=cfg, state=catalog.CREATING)
            catalog.save(d, cat)  # C1: the intent
            try:
                if cfg.persistence == "disk":
                    for p in range(cfg.partitions):  # C2
                        storage.make_partition_dir(d, name, p, tid)
                self._create_entry(name, cfg, tid, [(0, 0)] * cfg.partitions)  # C3
            except BaseException:
                # never published: nobody wrote a record; the intent is withdrawn
                # (were we to die first, a reconciler would complete the creation)
                del cat.topics[name]
                catalog.save(d, cat)
                shutil.rmtree(storage.topic_dir(d, name, tid), ignore_errors=True)
                raise
            cat.topics[name] = catalog.TopicRecord(id=catalog.format_id(tid), config=cfg)
            catalog.save(d, cat)  # C4: done

    def _create_entry(
        self,
        name: str,
        cfg: config.TopicConfig,
        tid: int,
        bases: list[tuple[int, int]],
        damage: dict[int, storage.Damage] | None = None,
    ) -> None:
        """Under the lock: a topic-table entry (topic id tid) and its rings;
        bases[p] = (offset, position); damage[p]: partition p is quarantined
        (its ring is taken offline before the entry is published). The
        directories exist already (C2)."""
        nb = name.encode()
        self._drop_abandoned(nb)
        gen = ffi.new("uint64_t *")
        idx = lib.shm_ctl_topic_reserve(self._ctl.base, nb, len(nb), _c_config(cfg), tid, gen)
        if idx == lib.SHM_E_EXISTS:
            raise errors.TopicExists(f"topic {name!r} already exists")
        if idx == lib.SHM_E_TABLE_FULL:
            raise errors.TableFull(
                f"the instance's topic table is full ({lib.shm_ctl_max_topics(self._ctl.base)} "
                "topics): delete topics or recreate the instance with a larger max_topics"
            )
        if idx < 0:
            raise_status(idx, f"cannot create topic {name!r}")
        made: list[str] = []
        try:
            for p in range(cfg.partitions):
                self._make_ring(name, cfg, gen[0], p, bases[p], made, (damage or {}).get(p))
        except BaseException:
            for rname in made:
                unlink_segment(rname)
            lib.shm_ctl_topic_free(self._ctl.base, idx)
            raise
        lib.shm_ctl_topic_publish(self._ctl.base, idx)

    def _make_ring(
        self,
        name: str,
        cfg: config.TopicConfig,
        generation: int,
        p: int,
        base: tuple[int, int],
        made: list[str],
        damage: storage.Damage | None = None,
    ) -> None:
        """Under the lock: partition p's ring starting at base = (offset, position),
        offline when damage says so; made collects the ring names."""
        rname = self.settings.ring_name(generation, p)
        # the header only: shm_ring_init commits the first data pages, the first lap the rest
        seg = ShmMapping.create(
            rname, lib.SHM_RING_HEADER_BYTES + cfg.ring_bytes, gid=self._gid, commit=lib.SHM_RING_HEADER_BYTES
        )
        made.append(rname)
        rc = lib.shm_ring_init(
            seg.base,
            cfg.ring_bytes,
            generation,
            p,
            config.PERSISTENCE[cfg.persistence],
            cfg.max_message_bytes + lib.SHM_FRAME_HEADER_BYTES,
            base[0],
            base[1],
        )
        if rc == lib.SHM_OK:
            rc = lib.shm_ring_set_overflow(seg.base, config.OVERFLOW[cfg.overflow])
        if rc == lib.SHM_OK and damage is not None:
            rc = lib.shm_ring_set_offline(seg.base, damage.kind, damage.pos, damage.offset)
        seg.close()
        if rc == lib.SHM_E_NOSPACE:
            raise errors.NoSpace(
                f"cannot commit the first {lib.SHM_RING_INITIAL_COMMIT >> 10} KiB of ring {rname}: {memory_shortfall()}"
            )
        if rc != lib.SHM_OK:
            raise_status(rc, f"cannot initialise ring {rname}")

    def _drop_abandoned(self, nb: bytes) -> None:
        """Under the lock: a CREATING entry can only be a dead creator's; remove its rings."""
        idx = lib.shm_ctl_topic_find(self._ctl.base, nb, len(nb))
        if idx < 0:
            return
        gen = ffi.new("uint64_t *")
        if lib.shm_ctl_topic_state(self._ctl.base, idx, gen) == lib.SHM_TOPIC_CREATING:
            self._drop_entry(idx, gen[0], lib.shm_ctl_topic(self._ctl.base, idx).config.partitions, False)

    def _drop_entry(self, idx: int, gen: int, partitions: int, mark_deleted: bool) -> None:
        """Under the lock: an entry's rings (marked deleted first, so live
        handles stop) are unlinked and the entry freed."""
        for p in range(partitions):
            rname = self.settings.ring_name(gen, p)
            if mark_deleted:
                try:
                    seg = ShmMapping.open(rname, writable=True, trust=self._trust)
                    lib.shm_ring_mark_deleted(seg.base)  # live handles see it and stop
                    seg.close()
                except errors.SharedMemoryMissing:
                    pass
            unlink_segment(rname)
        lib.shm_ctl_topic_free(self._ctl.base, idx)

    def delete_topic(self, name: str) -> None:
        config.validate_topic_name(name)
        self._delete_topic(name)
        self._forget(name)

    def _existing_locked(self, name: str) -> tuple[catalog.Catalog, tuple, catalog.TopicRecord]:
        """Under the lock, after reconciling: (catalog, its table entry
        (index, generation, topic id, config), its catalog record) of a topic
        that exists, else UnknownTopicOrPartition."""
        cat = self._reconcile_locked()
        have = self._live_entries().get(name)
        rec = cat.topics.get(name)
        if have is None or rec is None:
            raise errors.UnknownTopicOrPartition(f"topic {name!r} does not exist")
        return cat, have, rec

    def _delete_topic(self, name: str) -> None:
        """Deletes a topic here, under the lock (D1-D4: catalog.py)."""
        d = self.settings.data_dir
        with self._lock():
            cat, have, rec = self._existing_locked(name)
            cat.topics[name] = msgspec.structs.replace(rec, state=catalog.DELETING)
            catalog.save(d, cat)  # D1: the intent
            self._drop_entry(have[0], have[1], have[3].partitions, True)  # D2
            storage.discard_topic_dir(d, name, rec.topic_id)  # D3
            self._log_starts.discard(name, rec.topic_id)
            del cat.topics[name]
            catalog.save(d, cat)  # D4: done

    ALTERABLE = (
        "partitions",
        "retention_ms",
        "retention_bytes",
        "fsync",
        "segment_bytes",
        "segment_ms",
        "max_message_bytes",
        "overflow",
        "cleanup_policy",
        "delete_retention_ms",
        "min_compaction_lag_ms",
    )

    def alter_topic(self, name: str, **changes: Any) -> TopicDescription:
        """Changes a topic's config: retention_ms, retention_bytes, fsync,
        segment_bytes, segment_ms, max_message_bytes, overflow (persistence="none"
        topics: "overwrite" or "block"), cleanup_policy, delete_retention_ms,
        min_compaction_lag_ms, or partitions (grow only,
        like Kafka: the new partitions' rings are created; keys map to other
        partitions from then on). ring_bytes and persistence are fixed at
        creation. Producers opened before a partition increase keep writing to
        the partitions they knew until they reopen the topic."""
        config.validate_topic_name(name)
        bad = sorted(set(changes) - set(self.ALTERABLE))
        if bad:
            raise errors.InvalidArgument(
                f"cannot alter {', '.join(bad)}: alterable are {', '.join(self.ALTERABLE)} "
                "(ring_bytes and persistence are fixed: delete and recreate the topic)"
            )
        if not changes:
            return self.describe_topic(name)
        self._alter_topic(name, changes)
        self._forget(name)
        return self.describe_topic(name)

    def _alter_topic(self, name: str, changes: dict[str, Any]) -> config.TopicConfig | None:
        """Alters a topic here, under the lock (A1-A4: catalog.py); returns its new config."""
        d = self.settings.data_dir
        with self._lock():
            cat, have, rec = self._existing_locked(name)
            idx, gen, tid, old = have
            try:
                new = _py_config(_c_config(msgspec.structs.replace(old, **changes).validated()))
            except msgspec.ValidationError as e:
                raise errors.InvalidArgument(str(e)) from None
            if new.partitions < old.partitions:
                raise errors.InvalidArgument(
                    f"topic {name!r} has {old.partitions} partitions: partitions can only grow"
                )
            cat.topics[name] = catalog.TopicRecord(id=rec.id, config=new, state=catalog.ALTERING, prev=old)
            catalog.save(d, cat)  # A1: the intent
            try:
                new = self._apply_config(name, idx, gen, tid, old, new)  # A2-A3
            except BaseException:
                cat.topics[name] = rec  # not applied: withdrawn
                catalog.save(d, cat)
                raise
            cat.topics[name] = catalog.TopicRecord(id=rec.id, config=new)
            catalog.save(d, cat)  # A4: done
        return new

    def partition_dir(self, name: str, partition: int) -> str:
        """The directory of a durable partition of the topic's current life
        (<data_dir>/topics/<name>@<topic id>/<partition>)."""
        h = self.topic_handle(name)
        return storage.partition_dir(self.settings.data_dir, name, partition, h.topic_id)

    @property
    def transactions(self) -> transactions.Coordinator:
        """The transaction coordinator of this instance, run by this process
        (control/transactions.py: any process may, one at a time)."""
        c = self.__dict__.get("_coordinator")
        if c is None:
            c = self.__dict__["_coordinator"] = transactions.Coordinator(self)
        return c

    def list_topics(self) -> list[str]:
        self._check_open()
        return sorted(
            ffi.string(e.name, e.name_len).decode() for _, st, _, e in self._entries() if st == lib.SHM_TOPIC_LIVE
        )

    def describe_topic(self, name: str) -> TopicDescription:
        h = self.topic_handle(name)
        parts = []
        compacted = h.config.cleanup_policy != "delete"
        for p in range(h.partitions):
            r = self.ring(h, p, writable=False)
            _, end, hp, tp = r.ends()
            start = self.describe_start(h, p)
            cp = (
                storage.read_checkpoint(storage.partition_dir(self.settings.data_dir, h.name, p, h.topic_id))
                if compacted
                else None
            ) or {}
            persisted_lag = fsynced_lag = 0
            if h.config.persistence == "disk":
                persisted_lag = max(tp - lib.shm_ring_counter(r.base, lib.SHM_COUNTER_PERSISTED), 0)
                fsynced_lag = max(tp - lib.shm_ring_counter(r.base, lib.SHM_COUNTER_FSYNCED), 0)
            off = r.offline()
            rpid, rpos = ffi.new("uint32_t *"), ffi.new("uint64_t *")
            slow = lib.shm_ring_slowest_reader(r.base, rpid, rpos)
            parts.append(
                PartitionInfo(
                    p,
                    start,
                    end,
                    h.config.ring_bytes,
                    tp - hp,
                    lib.shm_ring_counter(r.base, lib.SHM_COUNTER_SEALED),
                    lib.shm_ring_counter(r.base, lib.SHM_COUNTER_OVERWRITTEN),
                    persisted_lag,
                    fsynced_lag,
                    self.offline_reason(h, p, r),
                    int(off[2]) if off else None,
                    max(tp - rpos[0], 0) if slow >= 0 else None,
                    rpid[0] if slow >= 0 else None,
                    lib.shm_ring_counter(r.base, lib.SHM_COUNTER_BLOCKED_NS) / 1e6,
                    lib.shm_ring_counter(r.base, lib.SHM_COUNTER_BLOCKED_WAITS),
                    lib.SHM_RING_HEADER_BYTES + lib.shm_ring_counter(r.base, lib.SHM_COUNTER_COMMITTED),
                    cp.get("cleaned_to"),
                    cp.get("passes", 0),
                    cp.get("bytes_reclaimed", 0),
                    cp.get("records_dropped", 0),
                    r.last_stable_offset(end),
                )
            )
        return TopicDescription(name, h.generation, h.config, parts)

    def log_start_floor(self, h: TopicHandle, partition: int, start: int, end: int) -> int:
        """The log start offset of a partition whose records run from start
        (the oldest the ring or the files hold) to end: start, or the offset
        delete_records moved it to (never past end)."""
        floor = self._log_starts.of(h.name, h.topic_id).get(partition)
        return start if floor is None or floor <= start else min(floor, end)

    def delete_records(self, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """Kafka's DeleteRecords: each partition's log start offset moves
        forward to its offset (-1: the end offset); records below it are no
        longer readable (consumers seeking there are out of range, and reset).
        An offset below the current start changes nothing. Returns {partition:
        log start offset}, durable on return (it survives a restart; the
        segment files stay until retention removes them). OffsetOutOfRange for
        an offset past the end or below -1, UnknownTopicOrPartition for a
        partition the topic lacks; then nothing is changed."""
        h = self.topic_handle(topic)
        want: dict[int, int] = {}
        for p, off in offsets.items():
            if not isinstance(off, int) or isinstance(off, bool):
                raise errors.InvalidType(f"offset must be int, not {type(off).__name__}")
            end = self.ring(h, p, writable=False).ends()[1]
            if off == -1:
                off = end
            if not 0 <= off <= end:
                raise errors.OffsetOutOfRange(
                    f"cannot delete records of {topic!r} partition {p} below {off}: the log ends at {end}"
                )
            want[p] = off
        with self._lock():
            if self.topic_handle(topic).topic_id != h.topic_id:
                raise errors.UnknownTopicOrPartition(f"topic {topic!r} was deleted meanwhile")
            self._log_starts.advance(topic, h.topic_id, want)
        return {p: self.describe_start(h, p) for p in want}

    def describe_start(self, h: TopicHandle, partition: int) -> int:
        """The log start offset of one partition (describe_topic's, alone)."""
        start, end = self.ring(h, partition, writable=False).ends()[:2]
        if h.config.persistence == "disk":
            disk = storage.PartitionLog(
                storage.partition_dir(self.settings.data_dir, h.name, partition, h.topic_id)
            ).start_offset()
            if disk is not None:
                start = min(start, disk)
        return self.log_start_floor(h, partition, start, end)

    def offline_reason(self, h: TopicHandle, p: int, ring: Ring | None = None) -> str | None:
        """Why partition p of h refuses writes (quarantined at restore), or None."""
        off = (ring or self.ring(h, p, writable=False)).offline()
        if off is None:
            return None
        return f"topic {h.name!r} partition {p}: " + storage.describe_offline(
            storage.partition_dir(self.settings.data_dir, h.name, p, h.topic_id), off[0], off[1], int(off[2])
        )

    # ------------------------------------------------------------ handles and rings

    def topic_handle(self, name: str) -> TopicHandle:
        """The LIVE topic called name (cached; re-read when the topic table changed)."""
        self._check_open()
        h = self._handles.get(name)
        if h is not None:
            gen = ffi.new("uint64_t *")
            if lib.shm_ctl_topic_state(self._ctl.base, h.index, gen) == lib.SHM_TOPIC_LIVE and gen[0] == h.generation:
                epoch = lib.shmx_ctl_epoch(self._ctl.base)
                if epoch == h.epoch:
                    return h
                cfg = _py_config(lib.shm_ctl_topic(self._ctl.base, h.index).config)
                if cfg != h.config:  # altered: same rings, new config
                    h = self._handles[name] = TopicHandle(name, h.index, h.generation, cfg, epoch, h.topic_id)
                else:
                    h.epoch = epoch
                return h
            self._forget(name)
        config.validate_topic_name(name)
        nb = name.encode()
        idx = lib.shm_ctl_topic_find(self._ctl.base, nb, len(nb))
        gen = ffi.new("uint64_t *")
        if idx < 0 or lib.shm_ctl_topic_state(self._ctl.base, idx, gen) != lib.SHM_TOPIC_LIVE:
            with self._lock():  # a restore in progress holds the lock: wait for it
                idx = lib.shm_ctl_topic_find(self._ctl.base, nb, len(nb))
            if idx < 0 or lib.shm_ctl_topic_state(self._ctl.base, idx, gen) != lib.SHM_TOPIC_LIVE:
                raise errors.UnknownTopicOrPartition(
                    f"topic {name!r} does not exist (create it with create_topic or `shmlog topic create`)"
                )
        epoch = lib.shmx_ctl_epoch(self._ctl.base)
        e = lib.shm_ctl_topic(self._ctl.base, idx)
        h = TopicHandle(name, idx, gen[0], _py_config(e.config), epoch, lib.shm_ctl_topic_id(self._ctl.base, idx))
        self._handles[name] = h
        return h

    def ring(self, handle: TopicHandle, partition: int, writable: bool) -> Ring:
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise errors.InvalidType(f"partition must be int, not {type(partition).__name__}")
        if not 0 <= partition < handle.partitions:
            raise errors.UnknownTopicOrPartition(
                f"topic {handle.name!r} has partitions 0..{handle.partitions - 1}, not {partition}"
            )
        key = (handle.generation, partition, writable)
        r = self._rings.get(key)
        if r is None:
            r = self._rings[key] = Ring(
                self.settings.ring_name(handle.generation, partition),
                handle.name,
                partition,
                writable,
                permissions.segment_trust(self.settings.data_dir),
            )
        return r

    def _forget(self, name: str) -> None:
        """Drops the cached handle and rings of a topic. The mappings stay until
        the producers and consumers using them let go (garbage collection
        unmaps a ShmMapping): unmapping here would pull memory from under them."""
        h = self._handles.pop(name, None)
        if h is not None:
            for key in [k for k in self._rings if k[0] == h.generation]:
                del self._rings[key]

    # ------------------------------------------------------------ consumer groups (control/groups.py)

    def list_groups(self) -> list[str]:
        """Ids of every consumer group (with members or committed offsets)."""
        self._check_open()
        return groups.list_groups(self)

    def describe_group(self, group: str) -> "groups.GroupDescription":
        """Members, assignments, committed offsets, end offsets and lag per partition."""
        self._check_open()
        return groups.describe_group(self, group)

    def commit_offsets(
        self, group: str, offsets: dict[tuple[str, int], int], durable: bool = False, any_offset: bool = False
    ) -> None:
        """Commits {(topic, partition): offset} for a group without membership
        (Kafka assign mode, tools); CommitFailed where a live member owns the partition.
        any_offset=True stores an offset outside the log too, as Kafka's OffsetCommit
        does (-1 removes the commit); a consumer starting there applies auto_offset_reset."""
        self._check_open()
        groups.commit_offsets(self, group, offsets, durable, any_offset)

    def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """{(topic, partition): committed offset} of a group ({} for an unknown group)."""
        self._check_open()
        return groups.committed_offsets(self, group)

    def reset_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        """Sets committed offsets of a group that has no live members; on disk on return."""
        self._check_open()
        groups.reset_offsets(self, group, offsets)

    def delete_group(self, group: str) -> None:
        """Deletes a group without live members and its committed offsets."""
        self._check_open()
        groups.delete_group(self, group)

    def delete_offsets(self, group: str, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Removes a group's committed offsets of [(topic, partition)] that no
        live member owns; returns those refused because one does."""
        self._check_open()
        return groups.delete_offsets(self, group, partitions)

    def reap_groups(self) -> int:
        """Removes dead or timed-out members of every group and rebalances; returns how many."""
        self._check_open()
        return groups.reap(self)

    def snapshot_offsets(self, if_changed_since: int | None = None) -> int:
        """Writes every committed offset to the data dir (fsynced); returns the commit sequence it covers."""
        self._check_open()
        return offsets_snapshot.snapshot_offsets(self, if_changed_since)

    def close(self) -> None:
        if self._closed:
            return
        for r in self._rings.values():
            r.close()
        self._rings.clear()
        self._ctl.close()
        self._closed = True

    def delete_all_topics(self) -> None:
        for name in self.list_topics():
            try:
                self.delete_topic(name)
            except errors.UnknownTopicOrPartition:
                pass

    def destroy(self) -> None:
        """Deletes every topic and the control segment of this instance (tests,
        `shmlog down --purge`). Its daemons are stopped first by the caller
        (Log.destroy): a supervisor would re-create what this removes."""
        self._check_open()
        self.delete_all_topics()
        name = self.settings.ctl_name
        self.close()
        unlink_segment(name)
        liveness.release_tokens(self.token_prefix)
        liveness.sweep_dead(self.token_prefix)

    def __enter__(self: _Plane) -> _Plane:  # a Log's `with` hands back the Log
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Unlocker:
    __slots__ = ("base",)

    def __init__(self, base: Any) -> None:
        self.base = base

    def __enter__(self) -> "_Unlocker":
        return self

    def __exit__(self, *exc: object) -> None:
        lib.shm_ctl_unlock(self.base)


def _limits(max_topics: int, max_groups: int, max_members: int, max_offsets: int) -> Any:
    for name, v, top in (
        ("max_topics", max_topics, 1 << 20),
        ("max_groups", max_groups, 1 << 20),
        ("max_members", max_members, 1 << 20),
        ("max_offsets", max_offsets, 1 << 24),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
            raise errors.InvalidArgument(f"{name} must be an int in 1..{top}, not {v!r}")
    return ffi.new("struct shm_ctl_limits *", [max_topics, max_groups, max_members, max_offsets])
