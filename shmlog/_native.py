"""_native.py — the one module that touches cffi's ffi/lib.

Owns: loading the C core (and binding the CPython-API fast path,
shmlog._fastpath, to it), mapping its status codes to shmlog.errors, and
small wrappers around segments. Must never: hold policy (which topic, which
partition, when to retry); callers decide, this module translates.
"""

import errno as _errno
import os
import resource
from typing import NoReturn

import psutil

from . import errors
from ._fastpath import bind as _bind_fastpath
from ._shmlog_c import ffi, lib

# the fast path (csrc/fastpath.c) calls the core through this module's copy of it
_bind_fastpath(
    *(
        int(ffi.cast("uintptr_t", ffi.addressof(lib, f)))
        for f in ("shmx_accum_add", "shmx_send", "shmx_large_copy", "shmx_read", "shm_wait_any", "shmx_ctl_epoch")
    )
)


def address_of(cdata) -> int:
    """A C pointer as the int the fast path's tables hold."""
    return int(ffi.cast("uintptr_t", cdata))


STATUS_ERRORS = {
    lib.SHM_E_TIMEOUT: errors.Timeout,
    lib.SHM_E_FULL: errors.BufferFull,
    lib.SHM_E_TOO_LARGE: errors.RecordTooLarge,
    lib.SHM_E_OUT_OF_RANGE: errors.OffsetOutOfRange,
    lib.SHM_E_CORRUPT: errors.CorruptRecord,
    lib.SHM_E_LAYOUT: errors.LayoutMismatch,
    lib.SHM_E_NO_SLOT: errors.TooManyProducers,
    lib.SHM_E_TOPIC_GONE: errors.TopicDeleted,
    lib.SHM_E_EXISTS: errors.TopicExists,
    lib.SHM_E_NOT_FOUND: errors.UnknownTopicOrPartition,
    lib.SHM_E_TABLE_FULL: errors.TableFull,
    lib.SHM_E_INVALID: errors.InvalidArgument,
    lib.SHM_E_NOSPACE: errors.NoSpace,
    lib.SHM_E_PERM: errors.PermissionDenied,
    lib.SHM_E_FENCED: errors.CommitFailed,
    lib.SHM_E_UNTRUSTED: errors.PermissionDenied,
    lib.SHM_E_OFFLINE: errors.PartitionOffline,
}


def trust_of(data_dir: str):
    """Who may own the instance's segments: its owner (the data dir's owner),
    root, us, and — once a supervisor made the data dir setgid — anyone who
    could give a segment the instance's group. See struct shm_trust."""
    t = ffi.new("struct shm_trust *")
    try:
        st = os.stat(data_dir)
    except OSError:
        t.uid = os.geteuid()
        return t
    t.uid = st.st_uid
    if st.st_mode & 0o2000:
        t.gid, t.has_gid = st.st_gid, 1
    return t


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def raise_status(rc: int, what: str) -> NoReturn:
    """Raises the shmlog error for C status rc; `what` says what was being done."""
    if rc == lib.SHM_E_SYS:
        e = ffi.errno
        raise errors.ShmlogError(f"{what}: {os.strerror(e)} (errno {_errno.errorcode.get(e, e)})")
    cls = STATUS_ERRORS.get(rc, errors.ShmlogError)
    raise cls(f"{what} (status {rc})" if cls is errors.ShmlogError else what)


class ShmMapping:
    """A mapped POSIX shared-memory object. Unmapped by close() or GC."""

    __slots__ = ("name", "map", "base", "size", "writable", "fd")

    def __init__(self, name: str, m, fd: int = -1):
        self.name = name
        self.map = m
        self.base = m.base
        self.size = m.size
        self.writable = bool(m.writable)
        self.fd = fd  # a hidden segment's one handle until publish()

    @classmethod
    def create(
        cls, name: str, size: int, mode: int = 0o660, gid: int | None = None, commit: int | None = None
    ) -> "ShmMapping":
        """A new segment (O_EXCL), mode and group (gid None: ours) set on its
        fd, with memory behind its first `commit` bytes (None: all of it;
        where the kernel cannot commit later, always all)."""
        commit = size if commit is None or not lib.shm_lazy_commit_supported() else min(commit, size)
        shm = os.statvfs("/dev/shm")
        if size > shm.f_blocks * shm.f_frsize:
            raise errors.NoSpace(
                f"cannot make shared-memory segment /dev/shm{name} of {size} bytes: it is larger than all of "
                f"/dev/shm ({shm.f_blocks * shm.f_frsize} bytes) and could never fill; use smaller ring_bytes"
            )
        check_memory_for(name, commit)
        m = ffi.new("struct shm_map *")
        rc = lib.shm_segment_create(name.encode(), size, commit, mode, -1 if gid is None else gid, m)
        if rc != lib.SHM_OK:
            _create_failed(rc, name, size, gid)
        return cls(name, ffi.gc(m, lib.shm_unmap))

    @classmethod
    def create_hidden(cls, name: str, size: int, mode: int = 0o660, gid: int | None = None) -> "ShmMapping":
        """A new segment nobody can open until publish() gives it `name`:
        its creator initialises it first, and one killed before publishing
        leaves nothing (csrc/shm.c shm_segment_create_hidden)."""
        check_memory_for(name, size)
        m, fd = ffi.new("struct shm_map *"), ffi.new("int *")
        rc = lib.shm_segment_create_hidden(size, mode, -1 if gid is None else gid, m, fd)
        if rc != lib.SHM_OK:
            _create_failed(rc, name, size, gid)
        return cls(name, ffi.gc(m, lib.shm_unmap), fd[0])

    def publish(self):
        """Links a hidden segment under its name, atomically; TopicExists
        when another creator's is there (this one then goes with close())."""
        fd, self.fd = self.fd, -1
        try:
            rc = lib.shm_segment_publish(fd, self.name.encode())
        finally:
            os.close(fd)
        if rc != lib.SHM_OK:
            raise_status(rc, f"cannot publish shared-memory segment {self.name}")

    @classmethod
    def open(cls, name: str, writable: bool, offset: int = 0, size: int = 0, *, trust) -> "ShmMapping":
        """Maps an existing segment after checking its owner and mode against
        trust (trust_of(data_dir)); PermissionDenied naming what was found."""
        m = ffi.new("struct shm_map *")
        rc = lib.shm_segment_map_range(name.encode(), int(writable), offset, size, trust, m)
        if rc != lib.SHM_OK:
            if rc == lib.SHM_E_PERM:
                raise errors.PermissionDenied(
                    f"no {'write' if writable else 'read'} access to shared-memory segment /dev/shm{name}: "
                    "run as the instance's user or a member of its group"
                )
            if rc == lib.SHM_E_UNTRUSTED:
                mode = m.st_mode & 0o7777
                why = (
                    "is not a regular file"
                    if (m.st_mode & 0o170000) != 0o100000
                    else f"is accessible to every user (mode {mode:04o})"
                    if mode & 0o007
                    else f"belongs to {_owner(m.st_uid)}, group {m.st_gid}, which is neither the instance's "
                    f"owner ({_owner(trust.uid)}), root, nor its group"
                )
                raise errors.PermissionDenied(
                    f"refusing shared-memory segment /dev/shm{name}: it {why}; another user may have "
                    "created it to read or forge the instance's data. Remove it as its owner or root "
                    f"(rm /dev/shm{name}, or `shmlog doctor --clean`) and reconnect"
                )
            if rc == lib.SHM_E_NOT_FOUND:
                raise errors.SharedMemoryMissing(f"shared-memory segment /dev/shm{name} does not exist")
            _map_failed(rc, name, size)
            raise_status(rc, f"cannot open shared-memory segment {name}")
        return cls(name, ffi.gc(m, lib.shm_unmap))

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.map is not None:
            lib.shm_unmap(self.map)
            self.map = None
            self.base = ffi.NULL


# Shared memory is RAM: a segment's pages are committed when it is made
# (posix_fallocate) or, for a ring, as its first lap reaches them (csrc/ring.c,
# "Memory follows traffic"), and stay resident until it is removed, swap or
# not; /dev/shm's size limit is no guard (it defaults to half the RAM per
# mount, and other tmpfs mounts share the same RAM). A commit that would leave
# the host with less than MEMORY_RESERVE available is refused with NoSpace,
# at creation here and on the data path in C (shm_set_memory_reserve, set once
# at import), rather than left to the kernel's OOM killer (issue 13.6: a few
# hundred auto-created topics took 19 GB and the OOM killer ended the
# process). $SHMLOG_MEMORY_RESERVE_BYTES overrides the reserve (0: no check).
MEMORY_RESERVE_FRACTION = 0.05
MEMORY_RESERVE_MIN = 256 << 20


def memory_reserve(total: int) -> int:
    env = os.environ.get("SHMLOG_MEMORY_RESERVE_BYTES")
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            raise errors.InvalidArgument(
                f"$SHMLOG_MEMORY_RESERVE_BYTES must be a number of bytes, not {env!r}"
            ) from None
    return max(int(total * MEMORY_RESERVE_FRACTION), MEMORY_RESERVE_MIN)


def memory_shortfall() -> str:
    """Why shared memory cannot be committed, and what to do, in words."""
    vm = psutil.virtual_memory()
    reserve, mib = memory_reserve(vm.total), 1 << 20
    return (
        f"the host has {vm.available // mib} MiB of memory available and shmlog keeps {reserve // mib} MiB "
        "of it free (shared memory is RAM; an exhausted host ends in the OOM killer). Use smaller ring_bytes "
        "(create_topic(ring_bytes=...), the Kafka listener's topic defaults), delete topics, or set "
        "$SHMLOG_MEMORY_RESERVE_BYTES"
    )


def check_memory_for(name: str, size: int) -> None:
    """NoSpace when committing `size` bytes of a segment would leave the host
    with less than the reserve of available memory, or when the segment could
    never fit in /dev/shm."""
    vm = psutil.virtual_memory()
    reserve = memory_reserve(vm.total)
    lib.shm_set_memory_reserve(reserve)  # the data path's commits (C) follow the same reserve
    if reserve and size > vm.available - reserve:
        raise errors.NoSpace(
            f"cannot allocate {size >> 20} MiB for shared-memory segment /dev/shm{name}: " + memory_shortfall()
        )


def _set_reserve_at_import() -> None:
    try:
        lib.shm_set_memory_reserve(memory_reserve(psutil.virtual_memory().total))
    except errors.InvalidArgument:  # a bad $SHMLOG_MEMORY_RESERVE_BYTES is raised where a segment is made
        total = psutil.virtual_memory().total
        lib.shm_set_memory_reserve(max(int(total * MEMORY_RESERVE_FRACTION), MEMORY_RESERVE_MIN))


_set_reserve_at_import()


def map_limit(size: int) -> str | None:
    """Why an mmap of `size` bytes failed with ENOMEM when the host's memory is not the reason: this
    process's mappings at vm.max_map_count, or its address-space limit (ulimit -v); None otherwise."""
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        maps = limit = 0
    if limit and maps >= limit - 16:
        return (
            f"this process has {maps:,} memory mappings, the host's limit vm.max_map_count is {limit:,} "
            "(a ring a process uses takes one mapping, two when read-only): raise it "
            "(sysctl -w vm.max_map_count=...) or spread the partitions over more processes"
        )
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and psutil.Process().memory_info().vms + size > soft:
        return (
            f"this process reached its address-space limit (ulimit -v: {soft:,} bytes) mapping {size:,} more "
            "(a ring maps ring_bytes + its header of address space): raise the limit or use smaller rings"
        )
    return None


def _map_failed(rc: int, name: str, size: int) -> None:
    """Raises NoSpace naming the host limit when mmap itself failed with ENOMEM."""
    if rc == lib.SHM_E_NOSPACE and ffi.errno == _errno.ENOMEM:
        why = map_limit(size)
        if why is not None:
            raise errors.NoSpace(f"cannot map shared-memory segment /dev/shm{name}: {why}")


def _create_failed(rc: int, name: str, size: int, gid):
    _map_failed(rc, name, size)
    if rc == lib.SHM_E_NOSPACE and ffi.errno == _errno.ENOMEM:  # C's memory-reserve check
        raise errors.NoSpace(f"cannot commit memory for shared-memory segment /dev/shm{name}: " + memory_shortfall())
    if rc == lib.SHM_E_NOSPACE:
        raise errors.NoSpace(
            f"cannot allocate {size} bytes for shared-memory segment {name}: /dev/shm is full "
            "(free space, delete topics, or use smaller ring_bytes)"
        )
    if rc == lib.SHM_E_PERM:
        raise errors.PermissionDenied(
            f"cannot create shared-memory segment /dev/shm{name} with group {gid}: "
            "run as the instance's user or a member of its group"
        )
    raise_status(rc, f"cannot create shared-memory segment {name}")


def unlink_segment(name: str) -> bool:
    """Removes a shm object by name; False when it did not exist."""
    rc = lib.shm_segment_unlink(name.encode())
    if rc == lib.SHM_E_NOT_FOUND:
        return False
    if rc != lib.SHM_OK:
        raise_status(rc, f"cannot unlink shared-memory segment {name}")
    return True


_SLOT_STATES = {2: "intent published", 3: "reserved"}


def full_ring_cause(ring_handle, token_prefix_c, durable: bool, timeout_ms: int, persist_errno: int = 0) -> str:
    """Why producers of a full ring wait, in words (shm_ring_blocker): the
    producer holding an uncommitted reservation at the ring's head (slot,
    pid, position, offsets, for how long, alive or dead), or the persister
    (with its last write error, persist_errno)."""
    b = ffi.new("struct shm_blocker *")
    if ring_handle is None or lib.shm_ring_blocker(ring_handle, token_prefix_c, b) != lib.SHM_OK:
        b.kind = lib.SHM_BLOCK_PERSISTER if durable else lib.SHM_BLOCK_NONE
    if persist_errno and b.kind != lib.SHM_BLOCK_WRITER:
        return f"the persister cannot write: {os.strerror(persist_errno)}"
    if b.kind == lib.SHM_BLOCK_WRITER:
        if b.slot < 0:
            return (
                f"the oldest frame (position {b.position}) is still being written and no producer "
                "slot names it any more (it is being sealed)"
            )
        held = f" for {b.held_ms / 1000:.1f} s" if b.held_ms >= 0 else ""
        owner = {
            1: "alive but not finishing it (stopped with SIGSTOP, or stuck?): a live writer is never "
            "sealed over; resume or kill it",
            0: "dead: its reservation is sealed as a gap after unblock_timeout_ms",
        }.get(b.alive, "")
        return (
            f"producer pid {b.pid} (slot {b.slot}) has held an uncommitted reservation of offsets "
            f"{b.base_offset}..{b.base_offset + b.count - 1} at position {b.position}{held}"
            f" ({_SLOT_STATES.get(b.state, b.state)}); it is {owner}"
        )
    if b.kind == lib.SHM_BLOCK_READER:
        state = {1: "alive: resume it, let it poll, or close it", 0: "dead: its slot is freed after unblock_timeout_ms"}
        return (
            f"a consumer is behind (overflow=block): reader slot {b.slot}, pid {b.pid}, has not read "
            f"the oldest frame (position {b.position}); it is {state.get(b.alive, 'of unknown state')}"
        )
    if b.kind == lib.SHM_BLOCK_PERSISTER:
        return f"the persister has not copied past position {b.persisted_pos}: it is behind or not running"
    return f"no space was free for {timeout_ms} ms, though nothing blocks the ring now (a burst of writers?)"


def crc32c(data, crc: int = 0) -> int:
    return lib.shm_crc32c(crc, ffi.from_buffer(data), len(data))


def murmur2(data) -> int:
    return lib.shm_murmur2(ffi.from_buffer(data), len(data))


def layout_table() -> dict:
    """{"struct.field": (offset, size)} as the C compiler laid them out."""
    out = {}
    for i in range(lib.shm_layout_field_count):
        f = lib.shm_layout_fields[i]
        out[ffi.string(f.name).decode()] = (f.offset, f.size)
    return out
