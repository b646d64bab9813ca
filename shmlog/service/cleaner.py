"""service/cleaner.py — the log cleaner: compaction of every compacted topic's
closed segments (storage/compact.py does the work; its essay is the design).

Owns: one loop per instance (an flock on <data_dir>/cleaner.lock): every
CLEAN_EVERY_S it looks at each partition of each topic whose cleanup_policy
has "compact", and runs a pass where there is something to clean (a
cleanable prefix past the last pass's end, or a kept tombstone or marker
whose delete_retention_ms ran out), bounded by the ring's head and its last
stable offset (txn_bound), and writes the partition's checkpoint.
Must never: write a ring, a catalog or the control segment (it reads the
topic table and ring headers only), or keep running when the persister that
started it is gone.

Why its own process, the persister's child, and not a thread of the
persister: cleaning is CPU work in Python (the offset map, a record at a
time) and long fsyncs; in the persister it would hold the GIL and its disk
while producers of durable topics wait on the persister for ring space. A
separate process costs the persister nothing, and a cleaner that crashes
(or is killed -9) stops nothing but cleaning. The persister starts it when
the instance has a compacted topic, starts it again within a second when it
dies, and stops it (SIGTERM) at shutdown; it exits by itself when its parent
changes (the persister died), so two never work at once (and the cleaner
lock says so even then).

Run as `python -m shmlog.service.cleaner --instance I --data-dir D --shm-prefix P`
(the persister does); `--once` runs one pass over every partition and exits.
"""

import argparse
import fcntl
import logging
import os
import signal
import sys
import time

from .. import config, errors, safefile, storage
from .._native import lib
from ..control.plane import ControlPlane
from ..ipc import daemons
from ..storage import compact

logger = logging.getLogger("shmlog.cleaner")

CLEAN_EVERY_S = float(os.environ.get("SHMLOG_CLEAN_EVERY_S", "1.0"))


def compacted(plane: ControlPlane):
    """(handle, partition) of every partition of a compacted durable topic."""
    for name in plane.list_topics():
        try:
            h = plane.topic_handle(name)
        except errors.UnknownTopicOrPartition:
            continue
        if (
            h.config.persistence != "disk"
            or not config.CLEANUP_POLICIES[h.config.cleanup_policy] & lib.SHM_CLEANUP_COMPACT
        ):
            continue
        for p in range(h.partitions):
            yield h, p


def clean_one(plane: ControlPlane, h, p, force: bool = False) -> compact.Result | None:
    """One pass over partition p of h when there is something to clean (force: always)."""
    cfg = h.config
    ring = plane.ring(h, p, writable=False)
    if ring.offline() is not None or ring.deleted():
        return None
    head, txn = ring.ends()[2], ring.txn_bound()
    path = storage.partition_dir(plane.settings.data_dir, h.name, p, h.topic_id)
    params = compact.Params(cfg.delete_retention_ms, cfg.min_compaction_lag_ms, cfg.max_message_bytes)
    now = int(time.time() * 1000)
    if not os.path.isdir(path) or not (force or compact.needs_pass(path, head, txn, params, now)):
        return None
    res = compact.clean_partition(path, params, head, txn, now)
    if res.cleaned_to is not None:
        compact.write_checkpoint(path, res, compact.read_checkpoint(path), now, cfg.delete_retention_ms)
        mb = res.read_bytes / 1e6
        logger.info(
            "%s[%d]: cleaned to offset %d: %d of %d segments rewritten, %d -> %d bytes, %d records dropped, "
            "%.2f s (%.1f MB/s)",
            h.name,
            p,
            res.cleaned_to,
            res.rewritten,
            res.segments,
            res.bytes_before,
            res.bytes_after,
            res.records_dropped,
            res.seconds,
            mb / res.seconds if res.seconds else 0.0,
        )
    return res


def run(plane: ControlPlane, parent: int | None, once: bool, stopping: list) -> None:
    while not stopping:
        for h, p in list(compacted(plane)):
            if stopping or (parent is not None and os.getppid() != parent):
                return
            try:
                clean_one(plane, h, p, force=once)
            except (FileNotFoundError, errors.UnknownTopicOrPartition):
                pass  # deleted meanwhile
            except (errors.ShmlogError, OSError) as e:
                logger.error("%s[%d]: cleaning failed: %s (the segments are left as they were)", h.name, p, e)
        if once:
            return
        deadline = time.monotonic() + CLEAN_EVERY_S
        while not stopping and time.monotonic() < deadline:
            if parent is not None and os.getppid() != parent:
                logger.info("the persister that started us is gone; exiting")
                return
            time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shmlog.service.cleaner")
    ap.add_argument("--instance")
    ap.add_argument("--data-dir")
    ap.add_argument("--shm-prefix")
    ap.add_argument("--once", action="store_true", help="one pass over every compacted partition, then exit")
    ap.add_argument("--parent", type=int, help="the persister's pid: exit when it is no longer our parent")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cleaner %(levelname)s %(message)s")
    settings = config.resolve(args.instance, args.data_dir, args.shm_prefix)
    os.umask(0o007)
    stopping: list = []

    def stop(*_):
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # a persister killed while we started has already left us to init: its pid, not getppid(), says so
    parent = None if args.once else (args.parent or os.getppid())
    if parent is not None and os.getppid() != parent:
        logger.info("the persister that started us (pid %d) is gone; exiting", parent)
        return 0
    fd = safefile.open_rw(daemons.cleaner_lock_path(settings.data_dir), create_dirs=True)
    deadline = time.monotonic() + 5
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline or stopping:
                return 0  # another cleaner works here (one being replaced finishes its swap first)
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    plane = ControlPlane(settings)
    try:
        run(plane, parent, args.once, stopping)
    finally:
        plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
