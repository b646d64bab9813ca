"""service/persister.py — the process that turns durable rings into segment files.

Owns: one loop per instance (guarded by an flock on <data_dir>/persister.lock):
copy each durable ring's committed prefix to its active segment (the ring
bytes, unchanged), publish persisted_pos, fsync by the topic's policy (and
at once when a durable flush waits) and publish fsynced_pos, roll segments,
enforce retention (cleanup_policy "delete" or "compact,delete"), and keep
the log cleaner (service/cleaner.py) running as its child while a topic is
compacted. It sleeps on the rings' persist futex until a producer
needs room, a flush waits, or an fsync interval is due; it never busy-loops.
Must never: publish a position it has not written (persisted) or fsynced
(fsynced), or write a frame that is not complete.

Run as `python -m shmlog.service.persister --instance I --data-dir D --shm-prefix P`;
the supervisor starts it (shmlog.connect() does, when none runs) while an
instance has durable topics.
"""

import argparse
import errno
import fcntl
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .. import config, errors, liveness, safefile, storage
from .._native import ffi, lib
from ..control.plane import ControlPlane
from ..ipc import daemons

logger = logging.getLogger("shmlog.persister")

MAX_RUN = 32 << 20  # bytes copied per write
MAX_INDEX = MAX_RUN // storage.INDEX_EVERY + 2
RETENTION_EVERY_S = 1.0
IDLE_WAIT_S = 0.1


class Offline(Exception):
    """The partition is quarantined (storage/recovery.py, "Quarantine"): not persisted."""


def _errno_of(e: OSError) -> int:
    """The errno to publish for an OSError raised without one."""
    if isinstance(e, errors.NoSpace):
        return errno.ENOSPC
    if isinstance(e, PermissionError):
        return errno.EACCES
    return errno.EIO


class _Partition:
    def __init__(self, handle, partition, ring, data_dir):
        self.handle, self.partition, self.ring = handle, partition, ring
        cfg = handle.config
        self.mode, self.interval_ms = config.fsync_mode(cfg.fsync)
        # the directory of this topic life (its id in the name), held open and
        # checked against partition.metadata: FileNotFoundError when the topic
        # was deleted meanwhile (the caller skips it)
        self.writer = storage.PartitionWriter(
            storage.partition_dir(data_dir, handle.name, partition, handle.topic_id),
            cfg.segment_bytes,
            cfg.segment_ms,
            handle.topic_id,
        )
        self.last_fsync = time.monotonic()
        try:
            rep = storage.recover_partition(self.writer.plog.dir, quarantine=True)
            if rep.damage is not None:
                # damaged since the restore (it saw none, or the ring would be
                # offline): quarantined now, nothing copied or removed; the
                # ring keeps what producers already wrote (acks=1 records, lost
                # only by a reboot, as any the persister has not copied)
                lib.shm_ring_set_offline(ring.base, rep.damage.kind, rep.damage.pos, rep.damage.offset)
                raise Offline(rep.damage)
        except BaseException:
            self.writer.close()
            raise
        self.writer.plog.refresh()
        if not self.writer.plog.segments:
            self.pos = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_BASE_POSITION)
            self.offset = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_BASE_OFFSET)
        else:
            self.pos, self.offset = rep.end_pos, rep.end_offset
        self._skip_lost()
        self.writer.resume(self.pos, self.offset)
        persisted = lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_PERSISTED)
        if self.pos > persisted:
            lib.shm_ring_publish_persisted(ring.base, self.pos)  # written before a crash
        self.fsynced = min(self.pos, lib.shm_ring_counter(ring.base, lib.SHM_COUNTER_FSYNCED))
        self.rows = ffi.new("int64_t[]", MAX_INDEX * lib.SHM_INDEX_FIELDS)
        self.out = ffi.new("struct shm_persist_out *")
        self.error = 0
        self.fsync_pending = False

    def _skip_lost(self) -> bool:
        """Files that end below the ring's head (segments deleted while the ring
        lived, or a ring made anew): the records between are gone. The hole is
        recorded (storage.roll, <base>.lost) and copying goes on from the head.
        Producers guard only the ring's persisted position, which may be past
        ours here, so they can lap us again before the first copy: copy() calls
        this again when a scan finds nothing below the head."""
        start, _end, head, _tail = self.ring.ends()
        if self.pos >= head:
            return False
        logger.error(
            "%s[%d]: segment files end at position %d but the ring starts at %d: records between are lost",
            self.handle.name,
            self.partition,
            self.pos,
            head,
        )
        lost = (self.pos, self.offset) if self.writer.plog.segments else None
        self.pos, self.offset = head, start
        self.writer.roll(self.pos, self.offset, lost_from=lost)
        return True

    def reconfigure(self, handle):
        """alter_topic changed retention, fsync policy or segment sizes."""
        self.handle = handle
        cfg = handle.config
        self.mode, self.interval_ms = config.fsync_mode(cfg.fsync)
        self.writer.segment_bytes, self.writer.segment_ms = cfg.segment_bytes, cfg.segment_ms

    def copy(self) -> int:
        """Writes what is committed; returns bytes written."""
        written = 0
        base = self.ring.base
        data = ffi.cast("uint8_t *", base) + lib.SHM_RING_HEADER_BYTES
        while True:
            if self.ring.deleted():
                return written  # the topic was deleted: its directory is on its way out
            try:
                if self.writer.roll_needed():
                    self.writer.roll(self.pos, self.offset)
            except OSError as e:  # the directory vanished, ENOSPC: retried, never fatal
                self._fail(e)
                return written
            room = max(self.writer.segment_bytes - self.writer.active.size, 1)
            rc = lib.shm_persist_scan(
                self.ring.h,
                self.pos,
                self.offset,
                min(MAX_RUN, room),
                storage.INDEX_EVERY,
                self.writer.scan_state(),
                self.rows,
                MAX_INDEX,
                self.out,
            )
            if rc != lib.SHM_OK:
                raise errors.CorruptRecord(
                    f"{self.handle.name}[{self.partition}]: damaged frame in the ring at position {self.pos}"
                )
            out = self.out
            if out.frames == 0:
                try:  # behind the ring's persisted position: producers may lap us
                    if lib.shm_ring_counter(base, lib.SHM_COUNTER_PERSISTED) > self.pos and self._skip_lost():
                        continue
                except OSError as e:
                    self._fail(e)
                return written
            n = out.end_pos - self.pos
            try:
                self.writer.append(ffi.buffer(data + out.slot, n), self.rows, out.index_count, out.end_offset)
            except OSError as e:
                self._fail(e)
                return written
            self.pos, self.offset = out.end_pos, out.end_offset
            lib.shm_ring_publish_persisted(base, self.pos)
            written += n
            if self.mode == lib.SHM_FSYNC_ALWAYS:
                self.fsync()

    def fsync(self):
        """Synchronous fsync of everything written (policy 'always', shutdown)."""
        try:
            self.writer.fsync()
        except OSError as e:
            self._fail(e)
            return
        self._synced(self.pos)

    def fsync_async(self, pool):
        """fsync in a helper thread while copying goes on: it covers what was
        written before it starts, so that position is what it publishes."""
        fds = self.writer.fsync_handles()
        pos = self.pos
        self.fsync_pending = True
        self.last_fsync = time.monotonic()

        def work():
            try:
                for fd in fds or ():
                    os.fsync(fd)
                self._synced(pos)
            except OSError as e:
                self._fail(e)
            finally:
                for fd in fds or ():
                    os.close(fd)
                self.fsync_pending = False

        pool.submit(work)

    def _synced(self, pos):
        self.last_fsync = time.monotonic()
        self.fsynced = max(self.fsynced, pos)
        self.error = 0
        lib.shm_ring_publish_fsynced(self.ring.base, self.fsynced, 0)

    def fsync_due(self) -> bool:
        if self.fsynced >= self.pos or self.fsync_pending:
            return False
        if lib.shm_ring_counter(self.ring.base, lib.SHM_COUNTER_DURABLE_WAITERS):  # a durable flush waits
            return True
        return self.mode == lib.SHM_FSYNC_INTERVAL and (time.monotonic() - self.last_fsync) * 1000 >= self.interval_ms

    def _fail(self, e: OSError):
        # shmlog's own OSErrors (errors.NoSpace, errors.PermissionDenied, from safefile) carry no errno;
        # the ring's persist_errno is an int32 that clients pass to os.strerror
        code = e.errno if e.errno is not None else _errno_of(e)
        if self.error != code:
            logger.error(
                "%s[%d]: cannot persist: %s (producers will get BufferFull; retrying)",
                self.handle.name,
                self.partition,
                os.strerror(e.errno) if e.errno is not None else e,
            )
        self.error = code
        lib.shm_ring_publish_fsynced(self.ring.base, self.fsynced, code)

    def close(self):
        self.writer.close()


class Persister:
    def __init__(self, plane):
        self.plane = plane
        self.parts: dict[tuple, _Partition] = {}
        self.epoch = None
        self.stopping = False
        self.last_retention = 0.0
        self.hdrs = None
        self.ctl_ino = self._ctl_ino()  # the control segment we attached
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self.offsets_seq = None  # commit_seq of the last offsets snapshot
        self.offline = set()  # (generation, partition) of quarantined rings, logged once
        self.cleaner = None  # launch.Started of our cleaner child while one runs

    def sync_topics(self):
        epoch = lib.shmx_ctl_epoch(self.plane._ctl.base)
        if epoch == self.epoch:
            return
        self.epoch = epoch
        live = set()
        for name in self.plane.list_topics():
            try:
                h = self.plane.topic_handle(name)
            except errors.UnknownTopicOrPartition:
                continue
            if h.config.persistence != "disk":
                continue
            for p in range(h.partitions):
                key = (h.generation, p)
                live.add(key)
                if key not in self.parts:
                    try:
                        ring = self.plane.ring(h, p, writable=True)
                        if ring.offline() is None:
                            try:
                                self.parts[key] = _Partition(h, p, ring, self.plane.settings.data_dir)
                            except Offline:
                                pass  # it took the ring offline
                        if ring.offline() is not None:  # quarantined: its files are left alone
                            if key not in self.offline:
                                self.offline.add(key)
                                logger.error("%s", self.plane.offline_reason(h, p, ring))
                            continue
                    except (FileNotFoundError, errors.UnknownTopicOrPartition):
                        # deleted between the listing and here (its directory or ring is gone)
                        live.discard(key)
                        self.epoch = None  # look again next pass
                        continue
                elif self.parts[key].handle.config != h.config:
                    self.parts[key].reconfigure(h)  # alter_topic
        for key in [k for k in self.parts if k not in live]:
            self.parts.pop(key).close()
        self.hdrs = ffi.new("void *[]", [p.ring.base for p in self.parts.values()]) if self.parts else None

    def run_once(self) -> int:
        self.sync_topics()
        written = 0
        for part in list(self.parts.values()):
            if part.ring.deleted():
                continue
            written += part.copy()
            if part.fsync_due():
                part.fsync_async(self.pool)
        now = time.monotonic()
        if now - self.last_retention >= RETENTION_EVERY_S:
            self.last_retention = now
            for part in self.parts.values():
                cfg = part.handle.config
                policy = config.CLEANUP_POLICIES[cfg.cleanup_policy]
                if policy & lib.SHM_CLEANUP_DELETE:  # "compact" alone: the cleaner's, never deleted
                    part.writer.enforce_retention(
                        cfg.retention_ms, cfg.retention_bytes, compacted=bool(policy & lib.SHM_CLEANUP_COMPACT)
                    )
        return written

    # ------------------------------------------------------------ the cleaner, our child

    def ensure_cleaner(self):
        """The cleaner (service/cleaner.py) runs while a compacted topic is
        persisted here: started, and started again (at most once a second,
        the housekeeping tick) when it died."""
        if self.cleaner is not None and self.cleaner.proc.poll() is None:
            return
        if self.cleaner is not None:
            logger.warning("the cleaner (pid %d) exited with %s", self.cleaner.proc.pid, self.cleaner.proc.returncode)
            self.cleaner.close()
            self.cleaner = None
        wanted = any(
            config.CLEANUP_POLICIES[p.handle.config.cleanup_policy] & lib.SHM_CLEANUP_COMPACT
            for p in self.parts.values()
        )
        if wanted and not self.stopping:
            try:
                self.cleaner = daemons.start_cleaner(self.plane.settings)
            except (OSError, errors.ShmlogError) as e:
                logger.error("cannot start the cleaner: %s", e)

    def stop_cleaner(self):
        c, self.cleaner = self.cleaner, None
        if c is None:
            return
        if c.proc.poll() is None:
            c.proc.terminate()
            try:
                c.proc.wait(30)
            except Exception:
                c.proc.kill()
                c.proc.wait(5)
        c.close()

    def wait(self):
        timeout = IDLE_WAIT_S
        for part in self.parts.values():
            if part.mode == lib.SHM_FSYNC_INTERVAL and part.fsynced < part.pos:
                due = part.interval_ms / 1000 - (time.monotonic() - part.last_fsync)
                timeout = min(timeout, max(due, 0))
        if self.hdrs is None:
            time.sleep(timeout)
        else:
            lib.shm_ring_persist_wait(self.hdrs, len(self.parts), int(timeout * 1e9))

    def _ctl_ino(self):
        try:
            return os.stat("/dev/shm" + self.plane.settings.ctl_name).st_ino
        except FileNotFoundError:
            return None

    def orphaned(self) -> bool:
        """The instance was destroyed or replaced (control segment gone or made
        anew, data dir gone): nothing left to persist for in what we mapped."""
        return self._ctl_ino() != self.ctl_ino or not os.path.isdir(self.plane.settings.data_dir)

    def run(self):
        last_check = time.monotonic()
        while not self.stopping:
            if not self.run_once():
                self.wait()
            if time.monotonic() - last_check >= 1.0:
                last_check = time.monotonic()
                if self.orphaned():
                    logger.info("instance %s is gone; exiting", self.plane.settings.instance)
                    break
                liveness.sweep_dead(self.plane.token_prefix)
                self.snapshot_offsets()
                self.ensure_cleaner()
        self.shutdown()

    def snapshot_offsets(self):
        """Committed offsets reach the disk within a second of any commit."""
        try:
            self.offsets_seq = self.plane.snapshot_offsets(self.offsets_seq)
        except OSError as e:
            logger.warning("cannot write the committed-offsets snapshot: %s", e)

    def shutdown(self):
        """Everything committed is written and fsynced before we go."""
        self.stop_cleaner()
        self.pool.shutdown(wait=True)
        if not self.orphaned():
            self.sync_topics()  # a stop that came before the first pass still persists
        for part in self.parts.values():
            part.copy()
            part.fsync()
            part.close()
        if not self.orphaned():
            self.snapshot_offsets()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shmlog.service.persister")
    ap.add_argument("--instance")
    ap.add_argument("--data-dir")
    ap.add_argument("--shm-prefix")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s persister %(levelname)s %(message)s")
    settings = config.resolve(args.instance, args.data_dir, args.shm_prefix)
    os.umask(0o007)  # segment files 0660, dirs 0770 (see permissions.py)
    # handlers before the flock: whoever sees the flock may SIGTERM us at once,
    # and a stop must still copy and fsync everything (shutdown does)
    stop_requested = []

    def stop(*_):
        stop_requested.append(True)
        if p is not None:
            p.stopping = True  # the signal also interrupts the futex wait

    p = None
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fd = safefile.open_rw(daemons.persister_lock_path(settings.data_dir), create_dirs=True)
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            # persister_running() elsewhere holds it for an instant to test it: only a
            # lock held for 100 ms is another persister's
            if attempt == 19:
                return 0  # another persister has it
            time.sleep(0.005)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    plane = ControlPlane(settings)
    p = Persister(plane)
    p.stopping = bool(stop_requested)
    try:
        p.run()
    finally:
        plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
