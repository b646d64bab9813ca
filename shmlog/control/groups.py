"""control/groups.py — consumer groups: rebalances, reaping, descriptions, committed offsets.

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

from typing import Any

import msgspec
import numpy as np

from .. import errors
from .assignors import ASSIGN, ASSIGNORS
from .offsets_snapshot import snapshot_offsets
from .tables import (
    LIVE,
    MEMBER_STATIC,
    RELEASE,
    commit,
    ensure_group,
    entry_name,
    free_entry,
    group_changed,
    group_entries,
    member_alive,
    member_client_id,
    monotonic_ms,
    new_offset_entry,
    offset_index,
    rebalance_begin,
    set_owner,
    set_pending,
    tables_of,
    topic_of,
    validate_group_name,
)


def rebalance(log, gi: int):
    """Recomputes group gi's assignment from its live members (lock held).
    Idempotent, so a holder that died half way is finished by the next one."""
    t = tables_of(log)
    g = t.group(gi)
    members = {}
    for mi in t.group_members(gi).tolist():
        m = t.member(mi)
        members[entry_name(m, "member_id_len", "member_id")] = m
    order = sorted(members)
    token_of = {mid: m.token for mid, m in members.items()}
    member_of = {tok: mid for mid, tok in token_of.items()}
    topics = {}  # name -> (index, generation, partitions)
    subs: dict[str, set[str]] = {}
    for mid, m in members.items():
        subs[mid] = set()
        for k in range(m.n_topics):
            st = m.topics[k]
            found = topic_of(log, st.index, st.generation)
            if found:
                topics[found[0]] = (st.index, st.generation, found[1])
                subs[mid].add(found[0])
    # reads above, writes from here: a holder that dies before the end leaves dirty set
    rebalance_begin(g, members[order[0]].assignor if order else -1)
    assignor = ASSIGNORS[g.assignor]
    index = offset_index(t)
    entry_of = {}
    for name, (ti, tg, n) in topics.items():
        for p in range(n):
            key = (gi, ti, tg, p)
            i = index.get(key)
            entry_of[(name, p)] = i if i is not None else new_offset_entry(t, key)
    intended = {}
    for tp, i in entry_of.items():
        e = t.offset(i)
        owner_id = member_of.get(e.pending) or member_of.get(e.owner)
        if owner_id is not None:
            intended[tp] = owner_id
    new = ASSIGN[assignor](order, subs, {n: v[2] for n, v in topics.items()}, intended) if order else {}
    for tp, i in entry_of.items():
        e = t.offset(i)
        target = token_of[new[tp]] if tp in new else 0
        if e.owner in member_of:
            set_pending(e, 0 if e.owner == target else (target or RELEASE))
        else:
            set_owner(e, target)
            set_pending(e, 0)
    kept = set(entry_of.values())
    for i in t.group_offsets(gi).tolist():
        if i in kept:
            continue
        e = t.offset(i)
        if e.owner in member_of:
            set_pending(e, RELEASE)  # its owner gives it up on its next poll
        else:
            set_owner(e, 0)
            set_pending(e, 0)
            if topic_of(log, e.topic, e.topic_generation) is None:
                free_entry(e)  # the topic is gone, and its offsets with it
    group_changed(g, rebalanced=True)  # clears dirty after the change_seq release


def finish_dirty(log):
    """Lock held: redo a rebalance whose writer died holding the lock."""
    t = tables_of(log)
    for gi in np.nonzero(t.groups["state"] == LIVE)[0].tolist():
        if t.group(gi).dirty:
            rebalance(log, gi)


def _member_dead(log, m, now: int) -> str | None:
    """Why member entry m should leave its group, or None."""
    if now - m.heartbeat_ms > m.session_timeout_ms:
        return "session timeout"
    if now - m.polled_ms > m.max_poll_interval_ms:
        return "max poll interval exceeded"
    if not (m.flags & MEMBER_STATIC) and not member_alive(log, m):
        return "process died"
    return None


def reap(log, group: int | None = None, spare: int = 0) -> int:
    """Removes members that died, stopped heartbeating (session timeout) or
    stopped polling (max poll interval), then rebalances their groups. Any
    member's heartbeat thread and the supervisor call it. Returns how many."""
    t = tables_of(log)
    now = monotonic_ms()
    m = t.members
    live = (m["state"] == LIVE) & (m["token"] != spare)
    if group is not None:
        live &= m["group"] == group
    cand = np.nonzero(
        live
        & (
            (now - m["heartbeat_ms"] > m["session_timeout_ms"])
            | (now - m["polled_ms"] > m["max_poll_interval_ms"])
            | ((m["flags"] & MEMBER_STATIC) == 0)
        )
    )[0].tolist()
    suspects = [i for i in cand if _member_dead(log, t.member(i), now)]
    if not suspects:
        return 0
    removed, groups = 0, set()
    with log._lock():
        finish_dirty(log)
        now = monotonic_ms()
        for i in suspects:
            e = t.member(i)
            if e.state == LIVE and e.token != spare and _member_dead(log, e, now):
                groups.add(e.group)
                free_entry(e)
                removed += 1
        for gi in groups:
            rebalance(log, gi)
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
    state: str  # "Empty" | "Stable" | "Rebalancing"
    generation: int
    assignor: str
    rebalances: int
    members: list[MemberDescription]
    partitions: list[PartitionLag]


def list_groups(log) -> list[str]:
    t = tables_of(log)
    return sorted(entry_name(t.group(i)) for i in np.nonzero(t.groups["state"] == LIVE)[0].tolist())


def _group_index(log, group: str) -> int:
    gi = tables_of(log).find_group(validate_group_name(group))
    if gi < 0:
        raise errors.UnknownGroup(f"group {group!r} does not exist (`shmlog group list` shows the groups)")
    return gi


def end_offset(log, topic: str, partition: int) -> int:
    return log.ring(log.topic_handle(topic), partition, writable=False).ends()[1]


def describe_group(log, group: str) -> GroupDescription:
    t = tables_of(log)
    gi = _group_index(log, group)
    g = t.group(gi)
    members: list[tuple[Any, str]] = []  # (member entry, member id)
    by_token: dict[int, tuple[str, list[tuple[str, int]]]] = {}
    for mi in t.group_members(gi).tolist():
        m = t.member(mi)
        mid = entry_name(m, "member_id_len", "member_id")
        by_token[m.token] = (mid, [])
        members.append((m, mid))
    parts, moving = [], False
    for topic, p, e in group_entries(log, gi):
        owner = by_token.get(e.owner)
        if owner:
            owner[1].append((topic, p))
        moving |= e.pending != 0
        end = end_offset(log, topic, p)
        c = e.committed if e.committed >= 0 else None
        parts.append(
            PartitionLag(topic, p, c, end, None if c is None else max(end - c, 0), owner[0] if owner else None)
        )
    descs = [
        MemberDescription(
            mid,
            entry_name(m, "instance_id_len", "instance_id") if m.instance_id_len else None,
            member_client_id(m),
            m.pid,
            by_token[m.token][1],
        )
        for m, mid in members
    ]
    state = "Empty" if not descs else "Rebalancing" if moving else "Stable"
    return GroupDescription(
        group, state, g.generation, ASSIGNORS[g.assignor], g.rebalances, sorted(descs, key=lambda d: d.member_id), parts
    )


def check_offset(log, topic, partition, offset):
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise errors.InvalidType(f"offset must be int, not {type(offset).__name__}")
    end = end_offset(log, topic, partition)
    if not 0 <= offset <= end:
        raise errors.OffsetOutOfRange(
            f"cannot commit offset {offset} for {topic!r} partition {partition}: the log ends at {end}"
        )


def _validate_offsets(log, offsets: dict, any_offset: bool = False) -> list:
    """[(handle, topic, partition, offset)]; call without the lock (topic lookups may take it).
    any_offset: Kafka's OffsetCommit rule, any offset >= -1 (-1: none), not only one inside the log."""
    if not isinstance(offsets, dict):
        raise errors.InvalidType("offsets must be a dict {(topic, partition): offset}")
    out = []
    for tp, off in offsets.items():
        if not (isinstance(tp, tuple) and len(tp) == 2):
            raise errors.InvalidArgument(f"offset keys are (topic, partition) tuples, not {tp!r}")
        h = log.topic_handle(tp[0])
        log.ring(h, tp[1], writable=False)  # validates the partition
        if not any_offset:
            check_offset(log, tp[0], tp[1], off)
        elif not isinstance(off, int) or isinstance(off, bool) or not -1 <= off < 2**63:
            raise errors.InvalidArgument(f"offset must be an int from -1 to 2**63-1, not {off!r}")
        out.append((h, tp[0], tp[1], off))
    return out


def _entries_for(log, gi: int, todo: list) -> list:
    """Lock held: [(entry index, topic, partition, offset)], creating entries."""
    t = tables_of(log)
    index = offset_index(t)
    out = []
    for h, topic, p, off in todo:
        key = (gi, h.index, h.generation, p)
        i = index.get(key)
        if i is None:
            i = index[key] = new_offset_entry(t, key)
        out.append((i, topic, p, off))
    return out


def commit_offsets(log, group: str, offsets: dict, durable: bool = False, any_offset: bool = False):
    """Unfenced commit (Kafka assign mode, admin tools): each partition must
    have no live owner, else CommitFailed. Creates the group if needed."""
    validate_group_name(group)
    t = tables_of(log)
    todo = _validate_offsets(log, offsets, any_offset)
    with log._lock():
        gi = ensure_group(log, group)
        todo = _entries_for(log, gi, todo)
    fenced = [(tp, p) for i, tp, p, off in todo if not commit(log, t.offset(i), 0, off)]
    if fenced:
        raise errors.CommitFailed(
            f"group {group!r}: partitions {fenced} are owned by live members; commit from the member that owns them"
        )
    if durable:
        snapshot_offsets(log)


def offset_owner(log, group: str, topic: str, partition: int) -> int:
    """The member token that owns the group's partition now (0: nobody)."""
    gi = tables_of(log).find_group(validate_group_name(group))
    if gi < 0:
        return 0
    h = log.topic_handle(topic)
    i = offset_index(tables_of(log)).get((gi, h.index, h.generation, partition))
    return 0 if i is None else int(tables_of(log).offset(i).owner)


def apply_transaction_offsets(log, offsets: list) -> None:
    """Lock held: a committed transaction's [(group, topic, partition,
    offset)], written whoever owns the partition now (the coordinator
    checked the owner before the decision: control/transactions.py, T5)."""
    t = tables_of(log)
    by_group: dict[str, list] = {}
    for group, topic, p, off in offsets:
        try:
            h = log.topic_handle(topic)
        except errors.UnknownTopicOrPartition:
            continue  # deleted since: its offsets went with it
        by_group.setdefault(group, []).append((h, topic, p, off))
    for group, todo in by_group.items():
        gi = ensure_group(log, group)
        for i, _topic, _p, off in _entries_for(log, gi, todo):
            e = t.offset(i)
            while not commit(log, e, int(e.owner), off):
                pass  # the owner moved between the load and the CAS: not under the lock (G1), once at most


def committed_offsets(log, group: str) -> dict:
    gi = tables_of(log).find_group(validate_group_name(group))
    if gi < 0:
        return {}
    return {(topic, p): e.committed for topic, p, e in group_entries(log, gi) if e.committed >= 0}


def reset_offsets(log, group: str, offsets: dict):
    """Sets committed offsets of a group without live members (Kafka's
    kafka-consumer-groups --reset-offsets rule); durable on return."""
    validate_group_name(group)
    t = tables_of(log)
    todo = _validate_offsets(log, offsets)
    with log._lock():
        gi = ensure_group(log, group)
        if len(t.group_members(gi)):
            raise errors.GroupNotEmpty(f"group {group!r} has live members; stop them before resetting offsets")
        for i, _, _, off in _entries_for(log, gi, todo):
            set_owner(t.offset(i), 0, off)
    snapshot_offsets(log)


def delete_group(log, group: str):
    t = tables_of(log)
    with log._lock():
        gi = _group_index(log, group)
        if len(t.group_members(gi)):
            raise errors.GroupNotEmpty(f"group {group!r} has live members; stop them before deleting it")
        for i in t.group_offsets(gi).tolist():
            free_entry(t.offset(i))
        free_entry(t.group(gi))
    snapshot_offsets(log)


def delete_offsets(log, group: str, partitions) -> list[tuple[str, int]]:
    """Removes the group's committed offsets of partitions [(topic,
    partition)] no live member owns (Kafka's OffsetDelete); returns the
    partitions refused because a live member owns them. Durable on return."""
    wanted = set(partitions)
    owned = []
    with log._lock():
        gi = _group_index(log, group)
        for topic, p, e in group_entries(log, gi):
            if (topic, p) not in wanted:
                continue
            if e.owner != 0 or e.pending != 0:
                owned.append((topic, p))
            else:
                free_entry(e)
    snapshot_offsets(log)
    return owned
