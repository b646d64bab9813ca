"""OS-level failures: a full /dev/shm, and access the OS refuses."""

import os
import shutil
import time

import pytest

import shmlog
from shmlog import errors


def test_full_dev_shm_fails_at_creation(inst, monkeypatch):
    """A ring larger than all of /dev/shm could never fill (its pages are
    committed as its first lap reaches them, csrc/ring.c M1-M4): NoSpace at
    create_topic, nothing made, no SIGBUS or ENOSPC later. (The host-memory
    reserve check is turned off: it is not what refuses it.)"""
    monkeypatch.setenv("SHMLOG_MEMORY_RESERVE_BYTES", "0")
    free = shutil.disk_usage("/dev/shm").total
    ring = 1 << 36
    if ring <= free:
        pytest.skip("/dev/shm is larger than the largest ring")
    before = inst.segments()
    with pytest.raises(errors.NoSpace, match="larger than all of /dev/shm"):
        inst.log.create_topic("huge", persistence="none", ring_bytes=ring)
    assert inst.segments() == before  # nothing half-made left behind
    assert "huge" not in inst.log.list_topics()
    inst.log.create_topic("small", persistence="none", ring_bytes=1 << 16)  # the instance still works
    assert inst.log.producer().send("small", b"v", partition=0).offset == 0


@pytest.mark.root_only  # switching to another uid needs root
def test_other_user_is_refused(inst):
    inst.log.create_topic("private", persistence="none", ring_bytes=1 << 16)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, try to attach
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                shmlog.connect(**inst.kwargs)
                code = 1
            except errors.PermissionDenied as e:
                os.write(w, str(e).encode()[:500])
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 1000).decode()
    os.close(r)
    assert os.WEXITSTATUS(status) != 1, "another user attached to the instance"
    assert os.WEXITSTATUS(status) == 0, "another user got an error that is not PermissionDenied"
    assert "access" in msg


def _maps():
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def test_a_creator_keeps_no_mapping_of_the_topics_it_creates(inst):
    """create_topic's description maps every partition (2 mappings each, read-only): dropped before
    it returns, so a process creating 10,000 partitions holds neither 20,000 mappings (vm.max_map_count
    is 65,530 by default) nor their pages in its RSS. A producer and a consumer still map what they use."""
    inst.log.create_topic("warm", partitions=1, persistence="none", ring_bytes=1 << 16)
    before = _maps()
    for i in range(50):
        inst.log.create_topic(f"idle-{i}", partitions=4, persistence="none", ring_bytes=1 << 16)
    assert _maps() - before < 20, "the creator kept the new topics' rings mapped"
    p = inst.log.producer()
    assert p.send("idle-7", b"v", partition=3).offset == 0
    c = inst.log.consumer(topics=["idle-7"], auto_offset_reset="earliest")
    assert c.poll(timeout=5).value == b"v"
    c.close()
    p.close()


def _map_beyond_address_space_limit(kwargs):
    import resource

    import psutil

    log = shmlog.connect(**kwargs)
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + (32 << 20), resource.RLIM_INFINITY))
    try:
        log.create_topic("wide", partitions=1, persistence="none", ring_bytes=64 << 20)
    except errors.NoSpace as e:
        return str(e)
    return "created"


def test_a_process_address_space_limit_is_a_clear_error(inst, monkeypatch):
    """mmap's ENOMEM from a host limit (ulimit -v here; vm.max_map_count takes the same path) names
    the limit, never a misleading 'host memory' or a crash."""
    monkeypatch.setenv("SHMLOG_MEMORY_RESERVE_BYTES", "0")
    before = inst.segments()
    (res,) = inst.collect(
        [inst.spawn("wide", _map_beyond_address_space_limit, inst.kwargs)], time.monotonic() + 60
    ).values()
    assert "address-space limit (ulimit -v" in res, res
    assert "wide" not in inst.log.list_topics()
    assert inst.segments() == before  # nothing half-made left behind
