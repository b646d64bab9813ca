"""control/ring_map.py — one partition ring mapped into this process.

Owns: mapping a ring (data writable for producers, read-only plus a
writable header for consumers), validating its geometry once at open
(shm_ring_open), and the header reads every layer asks for: ends, deleted,
offline (quarantine), the last stable offset (txn_bound).
Must never: index into the ring from Python (the C core does, through the
handle `h` validated here), or keep a mapping after close.
"""

from .. import errors
from .._native import ShmMapping, ffi, lib


class Ring:
    """One mapped partition ring. Producers map it writable; consumers map the
    data read-only plus the header writable (waiter announcements).

    base is the mapping (header fields only: counters, ends, waits); h is the
    process-local handle (struct shm_ring) every access that indexes into the
    ring takes: its geometry was read and validated once, here (issue 11,
    defect 11), so a header rewritten later cannot send this process outside
    its mapping."""

    __slots__ = (
        "name",
        "topic",
        "partition",
        "seg",
        "base",
        "h",
        "hdr_seg",
        "hdr",
        "rw_seg",
        "rw_h",
        "trust",
        "__weakref__",
    )

    def __init__(self, name, topic, partition, writable, trust):
        self.name = name
        self.topic = topic
        self.partition = partition
        self.trust = trust
        self.seg = self._open(writable)
        self.base = self.seg.base
        self.h = ffi.new("struct shm_ring *")
        rc = lib.shm_ring_open(self.h, self.base, self.seg.size, int(writable))
        if rc != lib.SHM_OK:
            self.seg.close()
            raise errors.LayoutMismatch(
                f"{name} is not a shmlog ring of layout version {lib.SHM_LAYOUT_VERSION} "
                f"(status {rc}); it was made by another shmlog version or is damaged: "
                "remove it with `shmlog doctor --clean`"
            )
        self.rw_seg = self.seg if writable else None
        self.rw_h = self.h if writable else None
        if writable:
            self.hdr_seg, self.hdr = None, self.base
        else:
            self.hdr_seg = self._open(True, lib.SHM_RING_HEADER_BYTES)
            self.hdr = self.hdr_seg.base

    def _open(self, writable: bool, size: int = 0) -> ShmMapping:
        try:
            return ShmMapping.open(self.name, writable=writable, size=size, trust=self.trust)
        except errors.SharedMemoryMissing:
            raise errors.UnknownTopicOrPartition(
                f"topic {self.topic!r} partition {self.partition}: ring {self.name} is missing "
                "(the topic was deleted, or its creation was interrupted)"
            ) from None

    def writable_base(self):
        """A handle on a writable mapping (for sealing a dead producer's write,
        shm_ring_seal_stuck), or None when not permitted. Its geometry is the
        one validated at open (the same ring, mapped once more)."""
        if self.rw_h is None:
            try:
                seg = ShmMapping.open(self.name, writable=True, trust=self.trust)
            except (errors.PermissionDenied, errors.SharedMemoryMissing):
                return None
            h = ffi.new("struct shm_ring *")
            if (
                seg.size != self.seg.size
                or lib.shm_ring_open(h, seg.base, seg.size, 1) != lib.SHM_OK
                or (h.capacity, h.base_position) != (self.h.capacity, self.h.base_position)
            ):
                seg.close()
                return None
            self.rw_seg, self.rw_h = seg, h
        return self.rw_h

    def ends(self):
        """(log_start_offset, end_offset, head_pos, tail_pos)"""
        v = ffi.new("int64_t[2]")
        p = ffi.new("uint64_t[2]")
        lib.shm_ring_ends(self.base, v, v + 1, p, p + 1)
        return v[0], v[1], p[0], p[1]

    def txn_bound(self) -> int:
        """0 when no open transaction holds the partition, else 1 + its last
        stable offset (what the cleaner must not reach)."""
        return lib.shm_ring_counter(self.base, lib.SHM_COUNTER_TXN_BOUND)

    def deleted(self) -> bool:
        return bool(lib.shm_ring_counter(self.base, lib.SHM_COUNTER_DELETED))

    def persisted(self):
        """(persisted position, fsynced position): how far the persister copied and fsynced."""
        return (
            lib.shm_ring_counter(self.base, lib.SHM_COUNTER_PERSISTED),
            lib.shm_ring_counter(self.base, lib.SHM_COUNTER_FSYNCED),
        )

    def last_stable_offset(self, end: int) -> int:
        """Kafka's last stable offset given the partition's end offset (high
        watermark): end when no open transaction holds the partition (txn_bound
        0), else the first offset an open transaction may have written
        (txn_bound - 1), never past end."""
        bound = lib.shm_ring_counter(self.base, lib.SHM_COUNTER_TXN_BOUND)
        return end if bound == 0 else min(int(bound) - 1, end)

    def seal_dead(self, token_prefix_c, free_slots: bool) -> int:
        """Seals the writes that dead producers left reserved (writable handle);
        free_slots also frees their slots. Returns how many were sealed."""
        return lib.shm_ring_seal_dead(self.h, token_prefix_c, int(free_slots))

    def offline(self):
        """(kind, position, offset) of the damage when the partition is
        quarantined (storage/recovery.py, "Quarantine"), else None."""
        kind = lib.shm_ring_counter(self.base, lib.SHM_COUNTER_OFFLINE)
        if not kind:
            return None
        return (
            kind,
            lib.shm_ring_counter(self.base, lib.SHM_COUNTER_OFFLINE_POS),
            ffi.cast("int64_t", lib.shm_ring_counter(self.base, lib.SHM_COUNTER_OFFLINE_OFFSET)),
        )

    def damage_at(self, pos: int) -> bool:
        """A reader from the files reached the ring at pos: is that the damage of a
        quarantined partition (damaged LAST segment: the ring starts at the
        damage, what follows it in the file is not proven)? It gets CorruptRecord
        there, as at any damage, rather than waiting at an end."""
        off = self.offline()
        return off is not None and pos == off[1]

    def close(self):
        for s in (self.seg, self.hdr_seg, self.rw_seg):
            if s is not None:
                s.close()
        self.base = self.hdr = ffi.NULL
        self.h = self.rw_h = None
