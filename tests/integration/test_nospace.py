"""test_nospace.py — a full data-dir filesystem (ENOSPC) or quota (EDQUOT) is errors.NoSpace.

Owns: a small tmpfs mounted as an instance's data dir (root only; skipped
where mount is refused), filled to its last byte under a running supervisor;
admin requests then get NoSpace naming the path and the fix, and once space
is freed they work and every record written before is still there, across a
reboot (the restore from disk). Also the translation itself: safefile's
os_error and the admin server's catch-all for an OSError a handler let through.
Must never: leave the mount behind (umount in the fixture, even on failure),
or fill any filesystem but its own tmpfs.
"""

import errno
import os
import subprocess
import sys
import types

import msgspec
import pytest

from conftest import Instance  # noqa: E402

import shmlog  # noqa: E402
from shmlog import errors, safefile
from shmlog.ipc import admin  # noqa: E402
from shmlog import Log  # noqa: E402

RECORDS = 300


@pytest.fixture
def tmpfs_inst(tmp_path):
    """An Instance whose data dir is its own 8 MiB tmpfs."""
    data = tmp_path / "data"
    data.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0770", "tmpfs", str(data)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        inst = Instance(tmp_path)
        try:
            yield inst
        finally:
            inst.cleanup()
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def _fill(path):
    """The filesystem of path filled to the last byte; the ballast file's fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    for chunk in (1 << 20, 1 << 16, 4096, 1):
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return fd


def _read_all(log, topic, n):
    c = log.consumer()
    c.assign([(topic, 0, 0)])
    seen = []
    for _ in range(100):
        seen += c.poll_batch(1000, timeout=0.1)
        if len(seen) >= n:
            break
    c.close()
    return sorted(m.value for m in seen)


def test_admin_requests_on_a_full_data_dir_are_nospace_and_lose_nothing(tmpfs_inst):
    inst = tmpfs_inst
    inst.start_supervisor()
    log = inst.connect()
    log.create_topic("keep", partitions=1, ring_bytes=1 << 16, segment_bytes=1 << 16)
    with log.producer() as p:
        for i in range(RECORDS):
            p.send("keep", b"k%05d" % i, partition=0)
        p.flush(durable=True)
    ballast = os.path.join(inst.kwargs["data_dir"], "ballast")
    fd = _fill(ballast)
    try:
        for what, call in (
            ("create", lambda: log.create_topic("new", partitions=2)),
            ("alter", lambda: log.alter_topic("keep", retention_ms=3_600_000)),
            ("delete", lambda: log.delete_topic("keep")),
        ):
            with pytest.raises(errors.NoSpace) as ei:
                call()
            msg = str(ei.value)
            assert inst.kwargs["data_dir"] in msg and "Free space there" in msg, (what, msg)
        # and the CLI: one line, exit code 9 (NoSpace)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "shmlog",
                "topic",
                "create",
                "cli",
                "--instance",
                inst.kwargs["instance"],
                "--data-dir",
                inst.kwargs["data_dir"],
                "--shm-prefix",
                inst.prefix,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 9 and "no space left" in r.stderr, (r.returncode, r.stderr)
    finally:
        os.close(fd)
        os.unlink(ballast)
    assert inst.supervisors[-1].poll() is None, "the supervisor died on ENOSPC"
    log.create_topic("new", partitions=2)  # space freed: works at once
    log.alter_topic("keep", retention_ms=3_600_000)
    assert {"keep", "new"} <= set(log.list_topics())
    assert log.describe_topic("keep").config.retention_ms == 3_600_000
    assert _read_all(log, "keep", RECORDS) == [b"k%05d" % i for i in range(RECORDS)]
    log.close()
    # nothing lost on disk either: a reboot restores both topics and every record
    inst.stop_supervisor()
    inst.kill_persister()
    inst.log.close()
    inst.drop_shared_memory()
    log = Log(inst.settings, start_persister=False)
    try:
        assert {"keep", "new"} <= set(log.list_topics())
        assert len(log.describe_topic("new").partitions) == 2
        assert _read_all(log, "keep", RECORDS) == [b"k%05d" % i for i in range(RECORDS)]
    finally:
        log.close()
        inst.drop_shared_memory()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_filesystem_or_quota_is_nospace_with_the_path_and_the_fix(code):
    e = safefile.os_error(OSError(code, os.strerror(code)), "/d/meta/topics.json", "write")
    assert isinstance(e, errors.NoSpace) and isinstance(e, OSError)
    assert "/d/meta/topics.json" in str(e) and "Free space there" in str(e)
    assert ("quota" in str(e)) == (code == errno.EDQUOT)


@pytest.mark.parametrize(
    "code,cls",
    [
        (errno.ENOSPC, "NoSpace"),
        (errno.EDQUOT, "NoSpace"),
        (errno.EACCES, "PermissionDenied"),
        (errno.EIO, "SupervisorError"),
    ],
)
def test_the_admin_server_translates_an_os_error_a_handler_let_through(code, cls, caplog):
    def handler():
        raise OSError(code, os.strerror(code), "/d/topics/t@1/0/partition.metadata")

    server = types.SimpleNamespace(handlers={"create_topic": handler})
    rep = admin.Server._dispatch(
        server, msgspec.msgpack.encode(admin.Request("create_topic")), shmlog.control.plane.logger
    )
    assert not rep.ok and rep.error == cls, rep
    if cls != "SupervisorError":
        assert "/d/topics/t@1/0/partition.metadata" in rep.message, rep


def test_an_index_write_that_fails_takes_back_its_data(inst, monkeypatch):
    """The persister copies a run (data, then its index rows); ENOSPC on the
    index write used to leave the data in the segment, and the retry of the
    same run appended it again, the runs after it behind the copy: frames a
    run away from their positions, refused by every restore (chaos seed 201)
    or cut off as a torn tail. The failed append now takes back what it
    wrote; the retry writes the run once."""
    import glob
    from shmlog import storage
    from shmlog.service import persister

    log = inst.log
    log.create_topic("d", partitions=1, ring_bytes=1 << 16)
    log.stop_persister()  # this test runs the persister in-process
    p = log.producer()
    values = [b"%04d" % i + b"x" * 100 for i in range(300)]

    def produce(vals):
        for v in vals:
            p.send("d", v, partition=0)
        p.flush()

    real_write, failed = os.write, []

    def write(fd, buf):
        if not failed and os.readlink(f"/proc/self/fd/{fd}").endswith(".index"):
            failed.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(fd, buf)

    produce(values[:200])
    per = persister.Persister(log)
    monkeypatch.setattr(storage.writer.os, "write", write)
    per.run_once()
    assert failed, "the copy wrote no index row"
    monkeypatch.undo()
    per.run_once()  # the retry of the failed run
    produce(values[200:])
    per.run_once()
    per.shutdown()
    p.close()
    log.close()
    pdir = glob.glob(os.path.join(inst.kwargs["data_dir"], "topics", "d@*", "0"))[0]
    assert storage.check_partition(pdir) == ([], [])
    inst.drop_shared_memory()
    inst.log = inst.connect()  # the restore scans the segment
    assert inst.log.describe_topic("d").partitions[0].end_offset == 300
    assert _read_all(inst.log, "d", 300) == values


def test_a_full_disk_error_keeps_its_errno_and_the_persister_publishes_it():
    """safefile's NoSpace/PermissionDenied carry the OS's errno (their message is
    their own), and the persister publishes an errno for any OSError, one raised
    without an errno included: the ring's persist_errno is an int clients pass to
    os.strerror. Before, a NoSpace at a segment roll (errno None) made the
    persister's ring update raise TypeError and the persister exit, over and over."""
    from shmlog import safefile
    from shmlog.service import persister as persister_mod

    full = safefile.os_error(OSError(errno.ENOSPC, "No space left on device"), "/d/t/0/1.log", "create")
    quota = safefile.os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "/d/t/0/1.log", "create")
    denied = safefile.os_error(OSError(errno.EACCES, "Permission denied"), "/d/t/0/1.log", "create")
    assert isinstance(full, shmlog.errors.NoSpace) and full.errno == errno.ENOSPC and "/d/t/0/1.log" in str(full)
    assert isinstance(quota, shmlog.errors.NoSpace) and quota.errno == errno.EDQUOT
    assert isinstance(denied, shmlog.errors.PermissionDenied) and denied.errno == errno.EACCES
    assert not str(full).startswith("[Errno")
    published = []
    part = types.SimpleNamespace(
        error=0, fsynced=7, handle=types.SimpleNamespace(name="t"), partition=0, ring=types.SimpleNamespace(base=None)
    )
    real = persister_mod.lib
    persister_mod.lib = types.SimpleNamespace(shm_ring_publish_fsynced=lambda base, pos, code: published.append(code))
    try:
        for e in (full, shmlog.errors.NoSpace("no errno"), shmlog.errors.PermissionDenied("no errno"), OSError("x")):
            persister_mod._Partition._fail(part, e)
    finally:
        persister_mod.lib = real
    assert published == [errno.ENOSPC, errno.ENOSPC, errno.EACCES, errno.EIO]
    assert all(isinstance(c, int) for c in published)
