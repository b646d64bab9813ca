"""groups.py — consumer groups: membership, assignors, rebalances, committed offsets.

Owns: everything that reads or writes the control segment's group, member and
offset tables (layout and invariants G1-G5 in csrc/shmlog.h), the three
assignors, the durable offsets snapshot (<data_dir>/meta/offsets.msgpack) and
the Membership a group consumer holds. There is no coordinator process: a
structural change (join, leave, a member found dead, a subscription change)
is made by whoever notices it, under the control segment's robust lock, and
members see it through one atomic load of their group's change_seq.

A partition moves between live members in two steps (G4): the rebalance
names the new owner as `pending`; the old owner, on its next poll, commits
what it consumed, runs on_revoke and hands the partition over. A removed
member's partitions move at once. Commits are fenced by ownership (G2): a
member that lost a partition cannot commit it, whatever generation it saw.

Must never: write a structural field without the lock, let a commit change
an owner, or call a user callback while holding the lock.
"""
import inspect
import logging
import os
import threading
import time
import uuid
from typing import Annotated

import msgspec
import numpy as np

from . import config, errors, liveness, safefile, storage
from ._native import ffi, lib

GROUP_NAME_MAX = lib.SHM_GROUP_NAME_MAX
ASSIGNORS = ("range", "roundrobin", "cooperative-sticky")
EAGER = {"range", "roundrobin"}     # Kafka's eager protocol: revoke everything, then assign
LIVE = lib.SHM_ENTRY_LIVE
RELEASE = lib.SHM_OWNER_RELEASE
SNAPSHOT = "offsets.msgpack"


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000     # CLOCK_MONOTONIC: one clock for every process


# ------------------------------------------------------------------ names

def validate_group_name(name) -> str:
    if not isinstance(name, str):
        raise errors.InvalidType(f"group id must be str, not {type(name).__name__}")
    b = name.encode()
    if not b or len(b) > GROUP_NAME_MAX or not name.isprintable():
        raise errors.InvalidArgument(
            f"invalid group id {name!r}: use 1-{GROUP_NAME_MAX} bytes of printable characters")
    return name


def _short_name(value, what, limit=lib.SHM_MEMBER_ID_MAX) -> bytes:
    if not isinstance(value, str):
        raise errors.InvalidType(f"{what} must be str, not {type(value).__name__}")
    b = value.encode()
    if not b or len(b) > limit or not value.isprintable():
        raise errors.InvalidArgument(f"invalid {what} {value!r}: use 1-{limit} bytes of printable characters")
    return b


# ------------------------------------------------------------------ table views

_NP = {"uint32_t": "<u4", "int32_t": "<i4", "uint64_t": "<u8", "int64_t": "<i8"}


def _dtype(ctype: str, fields: list[str]) -> np.dtype:
    """A numpy view of the named fields of a C struct, offsets taken from cffi."""
    t = ffi.typeof(f"struct {ctype}")
    types = dict(t.fields)
    formats = []
    for f in fields:
        ft = types[f].type
        formats.append(f"S{ft.length}" if ft.kind == "array" else _NP[ft.cname])
    return np.dtype({"names": fields, "formats": formats,
                     "offsets": [ffi.offsetof(t, f) for f in fields], "itemsize": ffi.sizeof(t)})


GROUP_DT = _dtype("shm_group_entry", ["state", "name_len", "name"])
MEMBER_DT = _dtype("shm_member_entry", ["state", "group", "token", "pid", "flags", "start_time",
                                        "heartbeat_ms", "polled_ms", "session_timeout_ms",
                                        "max_poll_interval_ms", "instance_id"])
OFFSET_DT = _dtype("shm_offset_entry", ["state", "group", "topic", "partition", "topic_generation",
                                        "pending", "committed", "owner"])


class Tables:
    """Lock-free read views (numpy) and typed pointers (cffi) of the group tables."""

    def __init__(self, base):
        self.base = base
        hdr = ffi.cast("struct shm_ctl_header *", base)
        self.max_groups, self.max_members, self.max_offsets = hdr.max_groups, hdr.max_members, hdr.max_offsets
        self.groups = self._view(lib.shm_ctl_group(base, 0), self.max_groups, GROUP_DT)
        self.members = self._view(lib.shm_ctl_member(base, 0), self.max_members, MEMBER_DT)
        self.offsets = self._view(lib.shm_ctl_offset(base, 0), self.max_offsets, OFFSET_DT)

    @staticmethod
    def _view(ptr, n, dt):
        return np.frombuffer(ffi.buffer(ptr, n * dt.itemsize), dt)

    def group(self, i):
        return lib.shm_ctl_group(self.base, int(i))

    def member(self, i):
        return lib.shm_ctl_member(self.base, int(i))

    def offset(self, i):
        return lib.shm_ctl_offset(self.base, int(i))

    def find_group(self, name: str) -> int:
        nb = name.encode()
        g = self.groups
        hit = np.nonzero((g["state"] == LIVE) & (g["name_len"] == len(nb)) & (g["name"] == nb))[0]
        return int(hit[0]) if len(hit) else -1

    def group_members(self, gi: int) -> np.ndarray:
        m = self.members
        return np.nonzero((m["state"] == LIVE) & (m["group"] == gi))[0]

    def group_offsets(self, gi: int) -> np.ndarray:
        o = self.offsets
        return np.nonzero((o["state"] == LIVE) & (o["group"] == gi))[0]


def _tables(log) -> Tables:
    t = getattr(log, "_group_tables", None)
    if t is None:
        t = log._group_tables = Tables(log._ctl.base)
    return t


def _name(entry, length_field="name_len", field="name") -> str:
    return ffi.unpack(getattr(entry, field), getattr(entry, length_field)).decode()


# ------------------------------------------------------------------ assignors
# Each takes members (ids, sorted), subs {member: set(topics)}, partitions
# {topic: count}, current {(topic, partition): member} and returns
# {(topic, partition): member} for every subscribed partition.

def assign_range(members, subs, partitions, current):
    out = {}
    for topic in sorted(partitions):
        ms = [m for m in members if topic in subs[m]]
        if not ms:
            continue
        n, extra = divmod(partitions[topic], len(ms))
        p = 0
        for i, m in enumerate(ms):
            for _ in range(n + (i < extra)):
                out[(topic, p)] = m
                p += 1
    return out


def assign_roundrobin(members, subs, partitions, current):
    out, i = {}, 0
    for tp in sorted((t, p) for t in partitions for p in range(partitions[t])):
        for _ in range(len(members)):
            m = members[i % len(members)]
            i += 1
            if tp[0] in subs[m]:
                out[tp] = m
                break
    return out


def assign_sticky(members, subs, partitions, current):
    """Cooperative-sticky: keeps every partition where it is unless balance
    needs it elsewhere; moves only what must move. Balance among members of
    one subscription: each holds floor(partitions / members), and only
    `remainder` of them one more; unowned partitions go to the least-loaded
    subscriber."""
    tps = sorted((t, p) for t in partitions for p in range(partitions[t]))
    eligible = {tp: [m for m in members if tp[0] in subs[m]] for tp in tps}
    out, load = {}, {m: 0 for m in members}
    floor, peer_set, extra = {}, {}, {}
    for m in members:
        mine = [tp for tp in tps if m in eligible[tp]]
        peers = frozenset(x for tp in mine for x in eligible[tp]) or frozenset([m])
        floor[m], peer_set[m] = divmod(len(mine), len(peers))[0], peers
        extra.setdefault(peers, len(mine) % len(peers))
    keep = sorted((tp for tp in tps if current.get(tp) in eligible[tp]), key=lambda tp: (tp[1], tp[0]))
    for tp in keep:                                  # up to the floor: stay
        m = current[tp]
        if load[m] < floor[m]:
            out[tp] = m
            load[m] += 1
    for tp in keep:                                  # one more, while the remainder lasts
        m = current[tp]
        if tp not in out and load[m] == floor[m] and extra[peer_set[m]] > 0:
            out[tp] = m
            load[m] += 1
            extra[peer_set[m]] -= 1
    for tp in tps:
        if tp not in out and eligible[tp]:
            m = min(eligible[tp], key=lambda x: (load[x], x))
            out[tp] = m
            load[m] += 1
    return out


ASSIGN = {"range": assign_range, "roundrobin": assign_roundrobin, "cooperative-sticky": assign_sticky}


# ------------------------------------------------------------------ structural changes (under the lock)

def _topic_of(log, index: int, generation: int):
    """(name, partitions) of a LIVE topic entry with that generation, else None."""
    gen = ffi.new("uint64_t *")
    if lib.shm_ctl_topic_state(log._ctl.base, index, gen) != lib.SHM_TOPIC_LIVE or gen[0] != generation:
        return None
    e = lib.shm_ctl_topic(log._ctl.base, index)
    return _name(e), e.config.partitions


def _ensure_group(log, name: str) -> int:
    t = _tables(log)
    gi = t.find_group(name)
    if gi >= 0:
        return gi
    gi = _free_slot(t.groups, "group", "delete unused groups (`shmlog group delete`) or recreate the "
                    "instance with a larger max_groups")
    g = t.group(gi)
    nb = name.encode()
    ffi.memmove(g.name, nb + b"\0" * (256 - len(nb)), 256)
    g.name_len = len(nb)
    g.generation = g.rebalances = g.dirty = 0
    g.assignor = ASSIGNORS.index("cooperative-sticky")
    g.created_ms = int(time.time() * 1000)
    g.rebalanced_ms = 0
    lib.shm_entry_publish(ffi.addressof(g, "state"), LIVE)
    return gi


def _free_slot(table: np.ndarray, what: str, hint: str) -> int:
    """Index of a free entry of a table (lock held), or TableFull saying what to do."""
    free = np.nonzero(table["state"] != LIVE)[0]
    if not len(free):
        raise errors.TableFull(f"the instance's {what} table is full ({len(table)} entries): {hint}")
    return int(free[0])


def _offset_index(t: Tables) -> dict:
    """{(group, topic index, topic generation, partition): entry index} of LIVE entries."""
    o = t.offsets
    live = np.nonzero(o["state"] == LIVE)[0]
    keys = zip(o["group"][live].tolist(), o["topic"][live].tolist(),
               o["topic_generation"][live].tolist(), o["partition"][live].tolist())
    return dict(zip(keys, live.tolist()))


def _new_offset_entry(t: Tables, key, committed: int = -1) -> int:
    i = _free_slot(t.offsets, "committed-offset", "delete unused groups or recreate the instance with a "
                   "larger max_offsets")
    e = t.offset(i)
    e.group, e.topic, e.topic_generation, e.partition = key
    e.pending = 0
    e.commit_ms = 0
    e.commits = 0
    lib.shm_offset_set_owner(e, 0, committed)
    lib.shm_entry_publish(ffi.addressof(e, "state"), LIVE)
    return i


def _free(entry):
    lib.shm_entry_publish(ffi.addressof(entry, "state"), lib.SHM_ENTRY_FREE)


def _rebalance(log, gi: int):
    """Recomputes group gi's assignment from its live members (lock held).
    Idempotent, so a holder that died half way is finished by the next one."""
    t = _tables(log)
    g = t.group(gi)
    g.dirty = 1
    members = {}
    for mi in t.group_members(gi).tolist():
        m = t.member(mi)
        members[_name(m, "member_id_len", "member_id")] = m
    order = sorted(members)
    token_of = {mid: m.token for mid, m in members.items()}
    member_of = {tok: mid for mid, tok in token_of.items()}
    topics = {}                     # name -> (index, generation, partitions)
    subs = {}
    for mid, m in members.items():
        subs[mid] = set()
        for k in range(m.n_topics):
            st = m.topics[k]
            found = _topic_of(log, st.index, st.generation)
            if found:
                topics[found[0]] = (st.index, st.generation, found[1])
                subs[mid].add(found[0])
    if order:
        g.assignor = members[order[0]].assignor
    assignor = ASSIGNORS[g.assignor]
    index = _offset_index(t)
    entry_of = {}
    for name, (ti, tg, n) in topics.items():
        for p in range(n):
            key = (gi, ti, tg, p)
            i = index.get(key)
            entry_of[(name, p)] = i if i is not None else _new_offset_entry(t, key)
    intended = {}
    for tp, i in entry_of.items():
        e = t.offset(i)
        mid = member_of.get(e.pending) or member_of.get(e.owner)
        if mid is not None:
            intended[tp] = mid
    new = ASSIGN[assignor](order, subs, {n: v[2] for n, v in topics.items()}, intended) if order else {}
    for tp, i in entry_of.items():
        e = t.offset(i)
        target = token_of[new[tp]] if tp in new else 0
        if e.owner in member_of:
            e.pending = 0 if e.owner == target else (target or RELEASE)
        else:
            lib.shm_offset_set_owner(e, target, lib.SHM_OFFSET_KEEP)
            e.pending = 0
    kept = set(entry_of.values())
    for i in t.group_offsets(gi).tolist():
        if i in kept:
            continue
        e = t.offset(i)
        if e.owner in member_of:
            e.pending = RELEASE           # its owner gives it up on its next poll
        else:
            lib.shm_offset_set_owner(e, 0, lib.SHM_OFFSET_KEEP)
            e.pending = 0
            if _topic_of(log, e.topic, e.topic_generation) is None:
                _free(e)                  # the topic is gone, and its offsets with it
    lib.shm_group_changed(g, 1)
    g.dirty = 0


def _finish_dirty(log):
    """Lock held: redo a rebalance whose writer died holding the lock."""
    t = _tables(log)
    for gi in np.nonzero(t.groups["state"] == LIVE)[0].tolist():
        if t.group(gi).dirty:
            _rebalance(log, gi)


def _member_dead(log, m, now: int) -> str | None:
    """Why member entry m should leave its group, or None."""
    if now - m.heartbeat_ms > m.session_timeout_ms:
        return "session timeout"
    if now - m.polled_ms > m.max_poll_interval_ms:
        return "max poll interval exceeded"
    if not (m.flags & lib.SHM_MEMBER_STATIC) and not lib.shm_process_alive(log.token_prefix_c, m.pid,
                                                                          m.start_time):
        return "process died"
    return None


def reap(log, group: int | None = None, spare: int = 0) -> int:
    """Removes members that died, stopped heartbeating (session timeout) or
    stopped polling (max poll interval), then rebalances their groups. Any
    member's heartbeat thread and the supervisor call it. Returns how many."""
    t = _tables(log)
    now = monotonic_ms()
    m = t.members
    live = (m["state"] == LIVE) & (m["token"] != spare)
    if group is not None:
        live &= m["group"] == group
    cand = np.nonzero(live & ((now - m["heartbeat_ms"] > m["session_timeout_ms"]) |
                              (now - m["polled_ms"] > m["max_poll_interval_ms"]) |
                              ((m["flags"] & lib.SHM_MEMBER_STATIC) == 0)))[0].tolist()
    suspects = [i for i in cand if _member_dead(log, t.member(i), now)]
    if not suspects:
        return 0
    removed, groups = 0, set()
    with log._lock():
        _finish_dirty(log)
        now = monotonic_ms()
        for i in suspects:
            e = t.member(i)
            if e.state == LIVE and e.token != spare and _member_dead(log, e, now):
                groups.add(e.group)
                _free(e)
                removed += 1
        for gi in groups:
            _rebalance(log, gi)
    return removed


# ------------------------------------------------------------------ offsets: admin, snapshot, restore

class PartitionLag(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    committed: int | None
    end_offset: int
    lag: int | None
    member_id: str | None


class MemberDescription(msgspec.Struct, frozen=True):
    member_id: str
    group_instance_id: str | None
    client_id: str
    pid: int
    assignment: list[tuple[str, int]]


class GroupDescription(msgspec.Struct, frozen=True):
    group: str
    state: str                 # "Empty" | "Stable" | "Rebalancing"
    generation: int
    assignor: str
    rebalances: int
    members: list[MemberDescription]
    partitions: list[PartitionLag]


def list_groups(log) -> list[str]:
    t = _tables(log)
    return sorted(_name(t.group(i)) for i in np.nonzero(t.groups["state"] == LIVE)[0].tolist())


def _group_index(log, group: str) -> int:
    gi = _tables(log).find_group(validate_group_name(group))
    if gi < 0:
        raise errors.UnknownGroup(f"group {group!r} does not exist (`shmlog group list` shows the groups)")
    return gi


def _entries(log, gi: int):
    """[(topic, partition, entry)] of group gi whose topic is live."""
    t = _tables(log)
    out = []
    for i in t.group_offsets(gi).tolist():
        e = t.offset(i)
        found = _topic_of(log, e.topic, e.topic_generation)
        if found:
            out.append((found[0], e.partition, e))
    return sorted(out, key=lambda x: (x[0], x[1]))


def end_offset(log, topic: str, partition: int) -> int:
    return log.ring(log.topic_handle(topic), partition, writable=False).ends()[1]


def describe_group(log, group: str) -> GroupDescription:
    t = _tables(log)
    gi = _group_index(log, group)
    g = t.group(gi)
    members, by_token = [], {}
    for mi in t.group_members(gi).tolist():
        m = t.member(mi)
        mid = _name(m, "member_id_len", "member_id")
        by_token[m.token] = (mid, [])
        members.append((m, mid))
    parts, moving = [], False
    for topic, p, e in _entries(log, gi):
        owner = by_token.get(e.owner)
        if owner:
            owner[1].append((topic, p))
        moving |= e.pending != 0
        end = end_offset(log, topic, p)
        c = e.committed if e.committed >= 0 else None
        parts.append(PartitionLag(topic, p, c, end, None if c is None else max(end - c, 0),
                                  owner[0] if owner else None))
    descs = [MemberDescription(mid, _name(m, "instance_id_len", "instance_id") if m.instance_id_len else None,
                               ffi.string(m.client_id).decode(), m.pid, by_token[m.token][1])
             for m, mid in members]
    state = "Empty" if not descs else "Rebalancing" if moving else "Stable"
    return GroupDescription(group, state, g.generation, ASSIGNORS[g.assignor], g.rebalances,
                            sorted(descs, key=lambda d: d.member_id), parts)


def _check_offset(log, topic, partition, offset):
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise errors.InvalidType(f"offset must be int, not {type(offset).__name__}")
    end = end_offset(log, topic, partition)
    if not 0 <= offset <= end:
        raise errors.OffsetOutOfRange(
            f"cannot commit offset {offset} for {topic!r} partition {partition}: the log ends at {end}")


def _validate_offsets(log, offsets: dict) -> list:
    """[(handle, topic, partition, offset)]; call without the lock (topic lookups may take it)."""
    if not isinstance(offsets, dict):
        raise errors.InvalidType("offsets must be a dict {(topic, partition): offset}")
    out = []
    for tp, off in offsets.items():
        if not (isinstance(tp, tuple) and len(tp) == 2):
            raise errors.InvalidArgument(f"offset keys are (topic, partition) tuples, not {tp!r}")
        h = log.topic_handle(tp[0])
        log.ring(h, tp[1], writable=False)           # validates the partition
        _check_offset(log, tp[0], tp[1], off)
        out.append((h, tp[0], tp[1], off))
    return out


def _entries_for(log, gi: int, todo: list) -> list:
    """Lock held: [(entry index, topic, partition, offset)], creating entries."""
    t = _tables(log)
    index = _offset_index(t)
    out = []
    for h, topic, p, off in todo:
        key = (gi, h.index, h.generation, p)
        i = index.get(key)
        if i is None:
            i = index[key] = _new_offset_entry(t, key)
        out.append((i, topic, p, off))
    return out


def commit_offsets(log, group: str, offsets: dict, durable: bool = False):
    """Unfenced commit (Kafka assign mode, admin tools): each partition must
    have no live owner, else CommitFailed. Creates the group if needed."""
    validate_group_name(group)
    t = _tables(log)
    todo = _validate_offsets(log, offsets)
    with log._lock():
        gi = _ensure_group(log, group)
        todo = _entries_for(log, gi, todo)
    fenced = [(tp, p) for i, tp, p, off in todo
              if lib.shm_offset_commit(log._ctl.base, t.offset(i), 0, off) == lib.SHM_E_FENCED]
    if fenced:
        raise errors.CommitFailed(f"group {group!r}: partitions {fenced} are owned by live members; "
                                  "commit from the member that owns them")
    if durable:
        snapshot_offsets(log)


def committed_offsets(log, group: str) -> dict:
    gi = _tables(log).find_group(validate_group_name(group))
    if gi < 0:
        return {}
    return {(topic, p): e.committed for topic, p, e in _entries(log, gi) if e.committed >= 0}


def reset_offsets(log, group: str, offsets: dict):
    """Sets committed offsets of a group without live members (Kafka's
    kafka-consumer-groups --reset-offsets rule); durable on return."""
    validate_group_name(group)
    t = _tables(log)
    todo = _validate_offsets(log, offsets)
    with log._lock():
        gi = _ensure_group(log, group)
        if len(t.group_members(gi)):
            raise errors.GroupNotEmpty(f"group {group!r} has live members; stop them before resetting offsets")
        for i, _, _, off in _entries_for(log, gi, todo):
            lib.shm_offset_set_owner(t.offset(i), 0, off)
    snapshot_offsets(log)


def delete_group(log, group: str):
    t = _tables(log)
    with log._lock():
        gi = _group_index(log, group)
        if len(t.group_members(gi)):
            raise errors.GroupNotEmpty(f"group {group!r} has live members; stop them before deleting it")
        for i in t.group_offsets(gi).tolist():
            _free(t.offset(i))
        _free(t.group(gi))
    snapshot_offsets(log)


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
    seq = lib.shm_ctl_commit_seq(log._ctl.base)
    if if_changed_since is not None and seq == if_changed_since:
        return seq
    meta = _meta(log)
    fd = safefile.open_rw(os.path.join(meta, "offsets.lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seq = lib.shm_ctl_commit_seq(log._ctl.base)
        t = _tables(log)
        groups = {}
        for gi in np.nonzero(t.groups["state"] == LIVE)[0].tolist():
            rows = [[topic, p, e.committed, e.commit_ms] for topic, p, e in _entries(log, gi) if e.committed >= 0]
            groups[_name(t.group(gi))] = rows
        storage.write_atomically(os.path.join(meta, SNAPSHOT),
                                 msgspec.msgpack.encode({"version": 1, "groups": groups}))
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
_Ms = msgspec.Meta(ge=-2**63, le=2**63 - 1)


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
            "from auto_offset_reset); nothing was restored")
    try:
        snap = msgspec.msgpack.decode(raw, type=_Snapshot)
    except msgspec.DecodeError as e:          # ValidationError included: wrong types, out of range
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
    t = _tables(log)
    base = log._ctl.base
    gen = ffi.new("uint64_t *")
    for group, rows in snap.items():
        gi = _ensure_group(log, group)
        index = _offset_index(t)
        for topic, p, off, commit_ms in rows:
            nb = topic.encode()
            ti = lib.shm_ctl_topic_find(base, nb, len(nb))    # no topic_handle: it may lock
            if ti < 0 or lib.shm_ctl_topic_state(base, ti, gen) != lib.SHM_TOPIC_LIVE:
                continue
            if p >= lib.shm_ctl_topic(base, ti).config.partitions:
                continue
            # A commit past the restored end covered records that were only in
            # the ring (a member reads them before the persister copies them):
            # they are gone and their offsets go to new records, so the group
            # resumes at the truncation point (Kafka's KIP-320), never past
            # new records nor reset to auto_offset_reset (chaos seed 200)
            off = min(off, _restored_end(log, topic, gen[0], p))
            key = (gi, ti, gen[0], p)
            i = index.get(key)
            if i is None:
                i = index[key] = _new_offset_entry(t, key, off)
            else:
                lib.shm_offset_set_owner(t.offset(i), 0, max(off, t.offset(i).committed))
            t.offset(i).commit_ms = commit_ms


def _restored_end(log, topic: str, generation: int, partition: int) -> int:
    """Lock held, restore: the end offset of a partition's ring as the restore
    made it (where its segment files end; 0 for a ring-only topic)."""
    from .instance import Ring                  # instance imports this module
    r = Ring(log.settings.ring_name(generation, partition), topic, partition, False, log._trust)
    try:
        return r.ends()[1]
    finally:
        r.close()


# ------------------------------------------------------------------ a member

class Membership:
    """One consumer's place in a group: its member entry, heartbeat thread and
    view of its assignment. The consumer's poll thread calls sync(); the
    heartbeat thread stamps heartbeat_ms/polled_ms, reaps dead members of
    the group and follows topic changes."""

    def __init__(self, log, consumer, group: str, topics, *, group_instance_id=None, client_id="shmlog",
                 session_timeout_ms=45000, heartbeat_interval_ms=3000, max_poll_interval_ms=300000,
                 partition_assignment_strategy="cooperative-sticky", on_assign=None, on_revoke=None,
                 on_lost=None, enable_auto_commit=True, auto_commit_interval_ms=5000):
        self.group = validate_group_name(group)
        if partition_assignment_strategy not in ASSIGNORS:
            raise errors.InvalidArgument(f"partition_assignment_strategy must be one of {ASSIGNORS}")
        for name, v in (("session_timeout_ms", session_timeout_ms), ("heartbeat_interval_ms", heartbeat_interval_ms),
                        ("max_poll_interval_ms", max_poll_interval_ms),
                        ("auto_commit_interval_ms", auto_commit_interval_ms)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31:
                raise errors.InvalidArgument(f"{name} must be a positive int of milliseconds")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise errors.InvalidArgument("heartbeat_interval_ms must be lower than session_timeout_ms")
        for name, cb in (("on_assign", on_assign), ("on_revoke", on_revoke), ("on_lost", on_lost)):
            if cb is not None and not callable(cb):
                raise errors.InvalidType(f"{name} must be callable")
        self.instance_id = None if group_instance_id is None else _short_name(group_instance_id, "group_instance_id")
        self.client_id = _short_name(client_id, "client_id", 40)
        if isinstance(topics, str):
            topics = [topics]
        topics = list(dict.fromkeys(topics or []))
        if not topics:
            raise errors.InvalidArgument("a group consumer needs topics=[...] to subscribe to")
        if len(topics) > lib.SHM_MEMBER_TOPICS:
            raise errors.InvalidArgument(f"a member subscribes to at most {lib.SHM_MEMBER_TOPICS} topics")
        self.log, self.consumer, self.topics = log, consumer, topics
        self.session_ms, self.beat_ms = session_timeout_ms, heartbeat_interval_ms
        self.max_poll_ms = max_poll_interval_ms
        self.assignor = ASSIGNORS.index(partition_assignment_strategy)
        self.eager = partition_assignment_strategy in EAGER
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self.auto_commit = enable_auto_commit
        self.auto_commit_ms = auto_commit_interval_ms
        self.t = _tables(log)
        self.token = 0
        self.entries = {}            # (topic, partition) -> offset entry index, owned now
        self.seen_seq = -1
        self.seen_generation = -1
        self.polled = True           # set by every poll, cleared by the heartbeat thread
        self.commit_due = False
        self.topics_epoch = lib.shm_ctl_epoch(log._ctl.base)
        self.closed = False
        self.pid, self.start_time = liveness.ensure_token(log.token_prefix)
        self._join()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"shmlog-heartbeat-{group}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------- join / leave

    def _subscription(self):
        out = []
        for name in self.topics:
            h = self.log.topic_handle(name)
            out.append((h.index, h.partitions, h.generation))
        return out

    def _join(self):
        log, t = self.log, self.t
        subs = self._subscription()
        with log._lock():
            _finish_dirty(log)
            gi = _ensure_group(log, self.group)
            g = t.group(gi)
            others = t.group_members(gi).tolist()
            if others and t.member(others[0]).assignor != self.assignor:
                raise errors.InvalidArgument(
                    f"group {self.group!r} uses the {ASSIGNORS[t.member(others[0]).assignor]!r} assignor; "
                    "every member must use the same partition_assignment_strategy")
            mi = self._static_entry(others)
            token = lib.shm_ctl_new_member_token(log._ctl.base)
            if mi >= 0:
                # static member back within its session: same entry and partitions, new token
                m = t.member(mi)
                old = m.token
                same_subs = [(m.topics[k].index, m.topics[k].partitions, m.topics[k].generation)
                             for k in range(m.n_topics)] == subs
                self._fill(m, gi, token, subs)
                for i in t.group_offsets(gi).tolist():
                    e = t.offset(i)
                    if e.owner == old:
                        lib.shm_offset_set_owner(e, token, lib.SHM_OFFSET_KEEP)
                    if e.pending == old:
                        e.pending = token
                if same_subs:
                    lib.shm_group_changed(g, 0)
                else:
                    _rebalance(log, gi)
            else:
                mi = _free_slot(t.members, "member", "close idle consumers or recreate the instance with a "
                                "larger max_members")
                m = t.member(mi)
                self._fill(m, gi, token, subs)
                lib.shm_entry_publish(ffi.addressof(m, "state"), LIVE)
                _rebalance(log, gi)
        self.token, self.gi = token, gi
        self.me = t.member(mi)
        self.gentry = t.group(gi)
        # the hot path's one load: change_seq through a memoryview (G5: x86-64 loads acquire)
        self.seq_view = memoryview(ffi.buffer(ffi.addressof(self.gentry, "change_seq"), 8)).cast("Q")
        self.seen_seq = -1

    def _fill(self, m, gi, token, subs):
        now = monotonic_ms()
        member_id = (self.instance_id.decode() if self.instance_id
                     else f"{self.client_id.decode()}-{uuid.uuid4().hex[:20]}")
        mid = member_id.encode()
        m.group, m.token, m.pid, m.start_time = gi, token, self.pid, self.start_time
        m.flags = lib.SHM_MEMBER_STATIC if self.instance_id else 0
        m.heartbeat_ms = m.polled_ms = now
        m.joined_ms = int(time.time() * 1000)
        m.session_timeout_ms, m.max_poll_interval_ms, m.assignor = self.session_ms, self.max_poll_ms, self.assignor
        ffi.memmove(m.member_id, mid + b"\0" * (64 - len(mid)), 64)
        m.member_id_len = len(mid)
        iid = self.instance_id or b""
        ffi.memmove(m.instance_id, iid + b"\0" * (64 - len(iid)), 64)
        m.instance_id_len = len(iid)
        ffi.memmove(m.client_id, self.client_id + b"\0" * (64 - len(self.client_id)), 64)
        m.n_topics = len(subs)
        for k, (ti, n, tg) in enumerate(subs):
            m.topics[k].index, m.topics[k].partitions, m.topics[k].generation = ti, n, tg
        self.member_id = member_id

    def _static_entry(self, members) -> int:
        """The entry of our group_instance_id among members, or -1."""
        t, iid = self.t, self.instance_id
        if iid is None:
            return -1
        same = [i for i in members if t.member(i).instance_id_len == len(iid)
                and ffi.unpack(t.member(i).instance_id, len(iid)) == iid]
        return same[0] if same else -1

    def _still_member(self) -> bool:
        return self.me.state == LIVE and self.me.token == self.token

    def leave(self):
        """Dynamic members leave at once (their partitions move now); static
        members keep their place until the session timeout, like Kafka."""
        if self.closed:
            return
        self.closed = True
        self.seq_view = (self.seen_seq,)    # the log may unmap the control segment now
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.instance_id is None:
            with self.log._lock():
                if self._still_member():
                    _free(self.me)
                    _rebalance(self.log, self.gi)

    # ---------------------------------------------------------- heartbeat thread

    def _beat_loop(self):
        last_commit = monotonic_ms()
        while not self._stop.wait(self.beat_ms / 1000):
            try:
                now = monotonic_ms()
                polled = now if self.polled else -1
                self.polled = False
                if self._still_member():
                    lib.shm_member_beat(self.me, now, polled)
                if self.auto_commit and now - last_commit >= self.auto_commit_ms:
                    self.commit_due, last_commit = True, now
                reap(self.log, self.gi, spare=self.token)
                epoch = lib.shm_ctl_epoch(self.log._ctl.base)
                if epoch != self.topics_epoch:
                    self.topics_epoch = epoch
                    self._follow_topics()
            except errors.Closed:
                return
            except Exception:      # keep beating: a failed reap is retried next tick
                if self._stop.is_set():
                    return
                logging.getLogger("shmlog").warning("group %r heartbeat: %s", self.group, "failed",
                                                    exc_info=True)

    def _follow_topics(self):
        """A topic was created, deleted or grew: resubscribe if ours changed."""
        subs = []
        for name in self.topics:
            try:
                h = self.log.topic_handle(name)
            except errors.UnknownTopicOrPartition:
                continue
            subs.append((h.index, h.partitions, h.generation))
        m = self.me
        with self.log._lock():
            if not self._still_member():
                return
            cur = [(m.topics[k].index, m.topics[k].partitions, m.topics[k].generation) for k in range(m.n_topics)]
            if cur != subs:
                m.n_topics = len(subs)
                for k, (ti, n, tg) in enumerate(subs):
                    m.topics[k].index, m.topics[k].partitions, m.topics[k].generation = ti, n, tg
                _rebalance(self.log, self.gi)

    # ---------------------------------------------------------- the poll thread

    def sync(self):
        """Brings the consumer's assignment in line with the group: commits and
        revokes what moves away, hands it over, then takes what arrived."""
        if self.closed:
            return
        if self.commit_due:
            self.commit_due = False
            self._commit_quietly(self._positions(self.entries))
        seq = self.seq_view[0]
        if seq == self.seen_seq:
            return
        consumer = self.consumer
        if not self._still_member():
            lost = sorted(self.entries)
            self.entries = {}
            if lost:
                consumer._drop_parts(lost)
                self._callback(self.on_lost or self.on_revoke, lost)
            if self._static_entry(self.t.group_members(self.gi).tolist()) >= 0:
                # another process took our group_instance_id: we are the zombie (Kafka's FENCED_INSTANCE_ID)
                self.leave()
                raise errors.FencedInstance(
                    f"another consumer joined group {self.group!r} with group_instance_id "
                    f"{self.instance_id.decode()!r}; this one is fenced and closed")
            self._join()
            seq = self.seq_view[0]
        self.seen_seq = seq
        generation = self.gentry.generation
        active, revoking = {}, []
        t = self.t
        for i in t.group_offsets(self.gi).tolist():
            e = t.offset(i)
            if e.owner != self.token:
                continue
            found = _topic_of(self.log, e.topic, e.topic_generation)
            if found is None:
                revoking.append(i)
                continue
            tp = (found[0], e.partition)
            if e.pending == 0:
                active[tp] = i
            else:
                revoking.append(i)
        # A partition is held as its offset ENTRY, not its name: a topic deleted
        # and re-created between two syncs (one heartbeat) has the same
        # (name, partition) under a new generation and a new entry. Keeping
        # the old entry made the member read the old life's position and
        # commit into the dead generation's entry, which no snapshot writes
        # (chaos seed 100: a durable commit gone at the next reboot). A new
        # entry for a held name is a revoke of the old one and an assign.
        same = {tp for tp, i in self.entries.items() if active.get(tp) == i}
        if self.eager and generation != self.seen_generation:
            revoked, added = sorted(self.entries), sorted(active)
        else:
            revoked, added = sorted(set(self.entries) - same), sorted(set(active) - same)
        self.seen_generation = generation
        if revoked:
            if self.auto_commit:
                live = [tp for tp in revoked if _topic_of(self.log, t.offset(self.entries[tp]).topic,
                                                          t.offset(self.entries[tp]).topic_generation)]
                self._commit_quietly(self._positions({tp: self.entries[tp] for tp in live}))
            self._callback(self.on_revoke, revoked)
            consumer._drop_parts(revoked)
            for tp in revoked:
                self.entries.pop(tp, None)
        if revoking:
            with self.log._lock():
                for i in revoking:
                    e = t.offset(i)
                    if e.owner == self.token and e.pending != 0:
                        lib.shm_offset_set_owner(e, 0 if e.pending == RELEASE else e.pending, lib.SHM_OFFSET_KEEP)
                        e.pending = 0
                lib.shm_group_changed(self.gentry, 0)
        if added:
            starts = []
            for tp in added:
                self.entries[tp] = active[tp]
                c = t.offset(active[tp]).committed
                starts.append((tp[0], tp[1], c if c >= 0 else None))
            consumer._add_parts(starts)
            self._callback(self.on_assign, added)

    def _callback(self, cb, tps):
        if cb is not None and tps:
            cb(self.consumer, list(tps))

    def _positions(self, entries: dict) -> dict:
        """What to commit for these partitions (positions, or stored offsets)."""
        return self.consumer._commit_positions(list(entries))

    def _commit_quietly(self, offsets):
        """Auto-commit: never raises for a partition that moved on (its new
        owner's offsets rule) or whose topic was deleted."""
        live = {}
        for tp, off in offsets.items():
            try:
                self.log.topic_handle(tp[0])
                live[tp] = off
            except errors.UnknownTopicOrPartition:
                pass
        try:
            self.commit(live)
        except errors.CommitFailed:
            pass

    def commit(self, offsets: dict, durable: bool = False):
        """Fenced commit (G2) of {(topic, partition): next offset}."""
        base = self.log._ctl.base
        todo = []
        for tp, off in offsets.items():
            i = self.entries.get(tp)
            if i is None:
                raise errors.InvalidArgument(
                    f"{tp} is not assigned to this member of group {self.group!r}; it can commit only "
                    f"its own partitions: {sorted(self.entries)}")
            e = self.t.offset(i)
            if _topic_of(self.log, e.topic, e.topic_generation) is None:
                # the snapshot writes live generations only: a commit here would
                # return and never be durable (chaos seed 100)
                raise errors.CommitFailed(
                    f"topic {tp[0]!r} was deleted or re-created since this member was assigned {tp}; "
                    "nothing was committed. Poll to take the new topic's partitions.")
            _check_offset(self.log, tp[0], tp[1], off)
            todo.append((tp, i, off))
        fenced = [tp for tp, i, off in todo
                  if lib.shm_offset_commit(base, self.t.offset(i), self.token, off) == lib.SHM_E_FENCED]
        if fenced:
            raise errors.CommitFailed(
                f"group {self.group!r} moved {fenced} to another member (this member was removed or the "
                "group rebalanced); their offsets were not committed. Poll to rejoin and continue.")
        if durable:
            snapshot_offsets(self.log)

    def committed(self, topic: str, partition: int):
        h = self.log.topic_handle(topic)
        self.log.ring(h, partition, writable=False)
        key = (self.gi, h.index, h.generation, partition)
        i = _offset_index(self.t).get(key)
        if i is None:
            return None
        c = self.t.offset(i).committed
        return c if c >= 0 else None


# the group options a consumer passes through (enable_auto_commit is the consumer's own)
MEMBER_OPTIONS = frozenset(
    name for name, prm in inspect.signature(Membership.__init__).parameters.items()
    if prm.kind is inspect.Parameter.KEYWORD_ONLY) - {"enable_auto_commit"}
