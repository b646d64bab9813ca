"""OS-level failures: a full /dev/shm, and access the OS refuses."""

import os
import shutil

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
