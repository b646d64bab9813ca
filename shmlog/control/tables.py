"""control/tables.py — the control segment's group, member and offset tables
as Python sees them (layout and invariants G1-G5 in csrc/shmlog.h).

Owns: numpy views of the three tables, group-id and member-id validation,
finding and allocating entries (under the control lock, by the caller), the
constants the group code shares (entry states, the release marker), and the
group code's one door to the C core: every write to these tables is a call
here to a csrc/control.c function (groups.py, offsets_snapshot.py and
client/membership.py touch neither ffi nor lib functions).
Must never: take the lock itself, decide anything about ownership
(groups.py rebalances; client/membership.py joins and leaves), or assign a
field of a shared struct from Python.
"""

import functools
import time
from collections.abc import Callable

import numpy as np

from .. import errors
from .._native import ffi, lib
from .assignors import ASSIGNORS

GROUP_NAME_MAX = lib.SHM_GROUP_NAME_MAX
LIVE = lib.SHM_ENTRY_LIVE
RELEASE = lib.SHM_OWNER_RELEASE
KEEP = lib.SHM_OFFSET_KEEP  # set_owner: leave the committed offset as it is
MEMBER_STATIC = lib.SHM_MEMBER_STATIC
MEMBER_TOPICS = lib.SHM_MEMBER_TOPICS


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000  # CLOCK_MONOTONIC: one clock for every process


# ------------------------------------------------------------------ names


def validate_group_name(name) -> str:
    if not isinstance(name, str):
        raise errors.InvalidType(f"group id must be str, not {type(name).__name__}")
    b = name.encode()
    if not b or len(b) > GROUP_NAME_MAX or not name.isprintable():
        raise errors.InvalidArgument(f"invalid group id {name!r}: use 1-{GROUP_NAME_MAX} bytes of printable characters")
    return name


def short_name(value, what, limit=lib.SHM_MEMBER_ID_MAX) -> bytes:
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
    return np.dtype(
        {
            "names": fields,
            "formats": formats,
            "offsets": [ffi.offsetof(t, f) for f in fields],
            "itemsize": ffi.sizeof(t),
        }
    )


GROUP_DT = _dtype("shm_group_entry", ["state", "name_len", "name"])
MEMBER_DT = _dtype(
    "shm_member_entry",
    [
        "state",
        "group",
        "token",
        "pid",
        "flags",
        "start_time",
        "heartbeat_ms",
        "polled_ms",
        "session_timeout_ms",
        "max_poll_interval_ms",
        "instance_id",
    ],
)
OFFSET_DT = _dtype(
    "shm_offset_entry", ["state", "group", "topic", "partition", "topic_generation", "pending", "committed", "owner"]
)


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


def tables_of(log) -> Tables:
    t = getattr(log, "_group_tables", None)
    if t is None:
        t = log._group_tables = Tables(log._ctl.base)
    return t


def change_seq_reader(g) -> Callable[[], int]:
    """Group entry g's change counter (G5), one acquire load per call: the
    express C call bound to g, no Python frame around it (about 30 ns; a
    method around it costs 100 more), for the poll loop and sync alike."""
    return functools.partial(lib.shmx_group_change_seq, g)


def entry_name(entry, length_field="name_len", field="name") -> str:
    return ffi.unpack(getattr(entry, field), getattr(entry, length_field)).decode()


# ------------------------------------------------------------------ structural changes (under the lock)


def topic_of(log, index: int, generation: int):
    """(name, partitions) of a LIVE topic entry with that generation, else None."""
    gen = ffi.new("uint64_t *")
    if lib.shm_ctl_topic_state(log._ctl.base, index, gen) != lib.SHM_TOPIC_LIVE or gen[0] != generation:
        return None
    e = lib.shm_ctl_topic(log._ctl.base, index)
    return entry_name(e), e.config.partitions


def ensure_group(log, name: str) -> int:
    t = tables_of(log)
    gi = t.find_group(name)
    if gi >= 0:
        return gi
    gi = free_slot(
        t.groups,
        "group",
        "delete unused groups (`shmlog group delete`) or recreate the instance with a larger max_groups",
    )
    nb = name.encode()
    _check(lib.shm_group_init(t.group(gi), nb, len(nb), ASSIGNORS.index("cooperative-sticky")), "group init")
    return gi


def free_slot(table: np.ndarray, what: str, hint: str) -> int:
    """Index of a free entry of a table (lock held), or TableFull saying what to do."""
    free = np.nonzero(table["state"] != LIVE)[0]
    if not len(free):
        raise errors.TableFull(f"the instance's {what} table is full ({len(table)} entries): {hint}")
    return int(free[0])


def offset_index(t: Tables) -> dict:
    """{(group, topic index, topic generation, partition): entry index} of LIVE entries."""
    o = t.offsets
    live = np.nonzero(o["state"] == LIVE)[0]
    keys = zip(
        o["group"][live].tolist(),
        o["topic"][live].tolist(),
        o["topic_generation"][live].tolist(),
        o["partition"][live].tolist(),
    )
    return dict(zip(keys, live.tolist()))


def new_offset_entry(t: Tables, key, committed: int = -1) -> int:
    i = free_slot(
        t.offsets, "committed-offset", "delete unused groups or recreate the instance with a larger max_offsets"
    )
    lib.shm_offset_init(t.offset(i), *key, committed)
    return i


def publish(entry):
    """Lock held: a filled FREE entry becomes LIVE (release, last)."""
    lib.shm_entry_publish(ffi.addressof(entry, "state"), LIVE)


def free_entry(entry):
    lib.shm_entry_publish(ffi.addressof(entry, "state"), lib.SHM_ENTRY_FREE)


def _check(rc, what):
    if rc != lib.SHM_OK:
        from .._native import raise_status

        raise_status(rc, what)


# groups


def rebalance_begin(g, assignor: int = -1):
    """Lock held: g's rebalance starts writing (dirty), with this assignor (-1: keep)."""
    lib.shm_group_rebalance_begin(g, assignor)


def group_changed(g, rebalanced: bool = False):
    """Lock held: bumps change_seq (G5); a rebalance also bumps the generation and clears dirty."""
    lib.shm_group_changed(g, 1 if rebalanced else 0)


# members


def new_member_token(log) -> int:
    return lib.shm_ctl_new_member_token(log._ctl.base)


def member_fill(m, gi, token, pid, start_time, static, now_ms, session_ms, max_poll_ms, assignor, mid, iid, cid):
    """Lock held: every field of member entry m but state and topics (C: shm_member_fill)."""
    flags = MEMBER_STATIC if static else 0
    rc = lib.shm_member_fill(
        m,
        gi,
        token,
        pid,
        start_time,
        flags,
        now_ms,
        session_ms,
        max_poll_ms,
        assignor,
        mid,
        len(mid),
        iid,
        len(iid),
        cid,
        len(cid),
    )
    _check(rc, "member fill")


def member_topics(m) -> list:
    """[(topic index, partitions, topic generation)] a member subscribed to."""
    return [(m.topics[k].index, m.topics[k].partitions, m.topics[k].generation) for k in range(m.n_topics)]


def set_member_topics(m, subs):
    """Lock held: the member's subscription [(topic index, partitions, topic generation)]."""
    topics = ffi.new("struct shm_member_topic[]", max(len(subs), 1))
    for k, (ti, n, tg) in enumerate(subs):
        topics[k].index, topics[k].partitions, topics[k].generation = ti, n, tg  # process-local array
    _check(lib.shm_member_set_topics(m, topics, len(subs)), "member topics")


def member_beat(m, heartbeat_ms: int, polled_ms: int):
    lib.shm_member_beat(m, heartbeat_ms, polled_ms)


def member_alive(log, m) -> bool:
    """Whether member m's process lives (its pid and start time)."""
    return bool(lib.shm_process_alive(log.token_prefix_c, m.pid, m.start_time))


def member_client_id(m) -> str:
    return ffi.string(m.client_id).decode()


def same_instance(m, iid: bytes) -> bool:
    return m.instance_id_len == len(iid) and ffi.unpack(m.instance_id, len(iid)) == iid


# offsets


def set_owner(e, owner: int, committed: int = KEEP):
    """Lock held: the owner changes by a pair CAS (G2); committed KEEP leaves the offset."""
    lib.shm_offset_set_owner(e, owner, committed)


def set_pending(e, pending: int):
    """Lock held (G4): the token e moves to, RELEASE, or 0."""
    lib.shm_offset_set_pending(e, pending)


def restore_offset(e, committed: int, commit_ms: int):
    """Lock held, restore: no owner, this committed offset and its time."""
    lib.shm_offset_restore(e, committed, commit_ms)


def commit(log, e, token: int, offset: int) -> bool:
    """The fenced commit (G2): False if token does not own e now (token 0: nobody may)."""
    return lib.shm_offset_commit(log._ctl.base, e, token, offset) != lib.SHM_E_FENCED


def commit_seq(log) -> int:
    return lib.shm_ctl_commit_seq(log._ctl.base)


def topics_epoch(log) -> int:
    return lib.shmx_ctl_epoch(log._ctl.base)


def live_topic(log, name: str):
    """(index, generation, partitions) of the LIVE topic of that name, without
    the lock (no topic_handle: it may lock), else None."""
    base = log._ctl.base
    nb = name.encode()
    ti = lib.shm_ctl_topic_find(base, nb, len(nb))
    gen = ffi.new("uint64_t *")
    if ti < 0 or lib.shm_ctl_topic_state(base, ti, gen) != lib.SHM_TOPIC_LIVE:
        return None
    return ti, gen[0], lib.shm_ctl_topic(base, ti).config.partitions


def group_entries(log, gi: int):
    """[(topic, partition, entry)] of group gi whose topic is live."""
    t = tables_of(log)
    out = []
    for i in t.group_offsets(gi).tolist():
        e = t.offset(i)
        found = topic_of(log, e.topic, e.topic_generation)
        if found:
            out.append((found[0], e.partition, e))
    return sorted(out, key=lambda x: (x[0], x[1]))
