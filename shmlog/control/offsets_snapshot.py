"""control/offsets_snapshot.py — committed offsets on disk:
<data_dir>/meta/offsets.msgpack.

Owns: writing the snapshot of every group's committed offsets (flock,
tmp + fsync + rename + directory fsync), reading it back with its checks,
and restoring it into a new control segment (capped at each partition's
restored end: KIP-320).
Must never: write the snapshot without its flock, or restore an offset past
what the partition's files hold.
"""

import os
from typing import Annotated

import msgspec
import numpy as np

from .. import config, errors, safefile, storage
from .ring_map import Ring
from .tables import (
    LIVE,
    commit_seq,
    ensure_group,
    entry_name,
    group_entries,
    live_topic,
    new_offset_entry,
    offset_index,
    restore_offset,
    tables_of,
    validate_group_name,
)

SNAPSHOT = "offsets.msgpack"


def _meta(log) -> str:
    d = os.path.join(log.settings.data_dir, "meta")
    safefile.makedirs(d)
    return d


def snapshot_offsets(log, if_changed_since: int | None = None) -> int:
    """Writes every committed offset to <data_dir>/meta/offsets.msgpack
    (tmp + fsync + rename + directory fsync) and returns the commit_seq it
    covers. Writers serialise on a flock and read the table while holding
    it, so a later file never holds older offsets than an earlier one."""
    import fcntl

    seq = commit_seq(log)
    if if_changed_since is not None and seq == if_changed_since:
        return seq
    meta = _meta(log)
    fd = safefile.open_rw(os.path.join(meta, "offsets.lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seq = commit_seq(log)
        t = tables_of(log)
        groups = {}
        for gi in np.nonzero(t.groups["state"] == LIVE)[0].tolist():
            rows = [[topic, p, e.committed, e.commit_ms] for topic, p, e in group_entries(log, gi) if e.committed >= 0]
            groups[entry_name(t.group(gi))] = rows
        storage.write_atomically(os.path.join(meta, SNAPSHOT), msgspec.msgpack.encode({"version": 1, "groups": groups}))
    finally:
        os.close(fd)
    return seq


# The snapshot's schema, checked whole before anything is restored. The file
# is only ever replaced atomically (tmp + fsync + rename), so a file that does
# not match is not a torn write of ours but damage or a foreign edit: Kafka
# refuses to guess about committed offsets it cannot read, and so does shmlog
# (CorruptMetadata naming the file, nothing restored, the segment given up so
# the next connect retries). Partial recovery would silently move a group back
# to auto_offset_reset: a lost commit, which is what the snapshot exists to
# prevent. The user moves the file away to start without committed offsets.
_Partition = msgspec.Meta(ge=0, le=2**31 - 1)
_Offset = msgspec.Meta(ge=-1, le=2**63 - 1)
_Ms = msgspec.Meta(ge=-(2**63), le=2**63 - 1)


class _Snapshot(msgspec.Struct):
    version: int
    groups: dict[str, list[tuple[str, Annotated[int, _Partition], Annotated[int, _Offset], Annotated[int, _Ms]]]]


def _read_snapshot(path: str) -> dict:
    """{group: [(topic, partition, offset, commit_ms)]} of the snapshot, {} when
    there is none; CorruptMetadata naming the file when it is not a snapshot."""
    try:
        raw = safefile.read_bytes(path)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise errors.CorruptMetadata(f"cannot read {path}: {e}") from None

    def damaged(why):
        return errors.CorruptMetadata(
            f"{path} is damaged ({why}). It holds the consumer groups' committed offsets: restore it "
            "from a backup, or move it away to start without committed offsets (groups then start "
            "from auto_offset_reset); nothing was restored"
        )

    try:
        snap = msgspec.msgpack.decode(raw, type=_Snapshot)
    except msgspec.DecodeError as e:  # ValidationError included: wrong types, out of range
        raise damaged(e) from None
    if snap.version != 1:
        raise damaged(f"version {snap.version}, this shmlog reads version 1")
    for group, rows in snap.groups.items():
        try:
            validate_group_name(group)
            for topic, *_ in rows:
                config.validate_topic_name(topic)
        except errors.ShmlogError as e:
            raise damaged(e) from None
    return snap.groups


def restore_offsets(log):
    """Lock held, new control segment: groups and committed offsets from the
    snapshot. Idempotent (a restorer that died is followed by another): an
    entry that exists is updated, never duplicated."""
    path = os.path.join(log.settings.data_dir, "meta", SNAPSHOT)
    snap = _read_snapshot(path)
    t = tables_of(log)
    for group, rows in snap.items():
        gi = ensure_group(log, group)
        index = offset_index(t)
        for topic, p, off, commit_ms in rows:
            found = live_topic(log, topic)  # no topic_handle: it may lock
            if found is None or p >= found[2]:
                continue
            ti, gen = found[:2]
            # A commit past the restored end covered records that were only in
            # the ring (a member reads them before the persister copies them):
            # they are gone and their offsets go to new records, so the group
            # resumes at the truncation point (Kafka's KIP-320), never past
            # new records nor reset to auto_offset_reset (chaos seed 200)
            off = min(off, _restored_end(log, topic, gen, p))
            key = (gi, ti, gen, p)
            i = index.get(key)
            if i is None:
                i = index[key] = new_offset_entry(t, key, off)
            restore_offset(t.offset(i), max(off, t.offset(i).committed), commit_ms)


def _restored_end(log, topic: str, generation: int, partition: int) -> int:
    """Lock held, restore: the end offset of a partition's ring as the restore
    made it (where its segment files end; 0 for a ring-only topic)."""
    r = Ring(log.settings.ring_name(generation, partition), topic, partition, False, log._trust)
    try:
        return r.ends()[1]
    finally:
        r.close()
