"""control/tables.py — the control segment's group, member and offset tables
as Python sees them (layout and invariants G1-G5 in csrc/shmlog.h).

Owns: numpy views of the three tables, group-id and member-id validation,
finding and allocating entries (under the control lock, by the caller), and
the constants the group code shares (entry states, the release marker).
Must never: take the lock itself or decide anything about ownership
(groups.py rebalances; client/membership.py joins and leaves).
"""

import time

import numpy as np

from .. import errors
from .._native import ffi, lib
from .assignors import ASSIGNORS

GROUP_NAME_MAX = lib.SHM_GROUP_NAME_MAX
LIVE = lib.SHM_ENTRY_LIVE
RELEASE = lib.SHM_OWNER_RELEASE


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


def change_seq(g) -> int:
    """Group entry g's change counter (G5): one acquire load, an express call."""
    return lib.shmx_group_change_seq(g)


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
    e = t.offset(i)
    e.group, e.topic, e.topic_generation, e.partition = key
    e.pending = 0
    e.commit_ms = 0
    e.commits = 0
    lib.shm_offset_set_owner(e, 0, committed)
    lib.shm_entry_publish(ffi.addressof(e, "state"), LIVE)
    return i


def free_entry(entry):
    lib.shm_entry_publish(ffi.addressof(entry, "state"), lib.SHM_ENTRY_FREE)


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
