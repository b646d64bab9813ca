"""Security: planted symlinks and FIFOs (issue 11 defect 8), squatted shared
memory (defect 9), crafted ring headers (defect 11), permission errors as
PermissionDenied (issue 12 defect 6), and the BufferFull message naming a
stuck producer (issue 11 defect 14).

The attacker runs as another uid (nobody) in the instance's group (nogroup
here, the data dir made 2770 root:nogroup as a supervisor makes it) or
outside it; children drop privileges after fork(), so the interpreter is
already loaded. Tests that need root skip otherwise.
"""

import errno
import multiprocessing
import os
import signal
import pathlib
import shutil
import stat
import tempfile
import time
import traceback

import pytest

import shmlog
from shmlog import config, errors, safefile, storage
from shmlog.control import groups
from shmlog.service import persister
from shmlog.service import supervisor
from shmlog._native import ShmMapping, ffi, lib, trust_of
from shmlog.control import offsets_snapshot
from shmlog.ipc import daemons

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (to drop to another uid in a child)")
NOBODY = 65534  # uid nobody, gid nogroup on Debian
VICTIM = b"precious: must never change\n"


def _as_nobody(fn, *args):
    """fn(*args) in a forked child running as uid nobody with group nogroup;
    returns ("ok", result) or ("error", traceback)."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()

    def child():
        try:
            os.setgroups([NOBODY])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            theirs.send(("ok", fn(*args)))
        except BaseException:
            theirs.send(("error", traceback.format_exc()))

    p = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    p.start()
    try:
        if not ours.poll(60):
            pytest.fail(f"{fn.__name__} as nobody did not answer in 60 s")
        return ours.recv()
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()


def _group_dir(path):
    """A directory as the supervisor leaves a data dir: 2770, group nogroup."""
    os.makedirs(path, exist_ok=True)
    os.chown(path, 0, NOBODY)
    os.chmod(path, 0o2770)
    return str(path)


@pytest.fixture
def open_dir():
    """A directory other uids can traverse (pytest's tmp dirs are 0700)."""
    base = tempfile.mkdtemp(prefix="shmlog-sec-")
    os.chmod(base, 0o711)
    yield pathlib.Path(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def moved(inst, open_dir):
    """inst with its data dir under open_dir (no connection, no shared memory yet)."""
    inst.log.close()
    inst.drop_shared_memory()
    inst.kwargs["data_dir"] = str(open_dir / "data")
    inst.settings = config.resolve(inst.kwargs["instance"], inst.kwargs["data_dir"], inst.prefix)
    os.makedirs(inst.settings.data_dir)
    inst.log = None
    return inst


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim"
    v.write_bytes(VICTIM)
    os.chmod(v, 0o600)
    return v


def _plant(link, target):
    os.symlink(str(target), str(link))
    return "planted"


def _untouched(victim):
    assert victim.read_bytes() == VICTIM, "a file outside the data dir was written"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.stat().st_uid == 0


# ------------------------------------------------------------ defect 8: planted names


@needs_root
def test_write_atomically_tmp_name_symlink_not_followed(open_dir, victim):
    """The old tmp name was path.tmp.<pid>: a group member planted it as a symlink
    and the root writer overwrote its target."""
    meta = _group_dir(open_dir / "meta")
    target = os.path.join(meta, "topics.json")
    assert _as_nobody(_plant, f"{target}.tmp.{os.getpid()}", victim) == ("ok", "planted")
    assert _as_nobody(_plant, f"{target}.tmp", victim) == ("ok", "planted")
    storage.write_atomically(target, b'{"topics": {}}')
    _untouched(victim)
    assert open(target, "rb").read() == b'{"topics": {}}'
    assert [n for n in os.listdir(meta) if safefile.is_tmp_name(n)] == []


@needs_root
def test_replace_over_a_planted_symlink_replaces_the_link(open_dir, victim):
    d = _group_dir(open_dir / "d")
    p = os.path.join(d, "supervisor.json")
    _as_nobody(_plant, p, victim)
    safefile.replace(p, b"new")
    _untouched(victim)
    assert not os.path.islink(p) and open(p, "rb").read() == b"new"


@needs_root
def test_supervisor_state_tmp_symlink_not_followed(open_dir, victim):
    s = config.resolve("sec", _group_dir(open_dir / "data"), "shmlogsec.")
    _as_nobody(_plant, daemons.supervisor_state_path(s) + ".tmp", victim)
    daemons.write_supervisor_state(
        s,
        daemons.SupervisorState(
            pid=os.getpid(), instance="sec", data_dir=s.data_dir, shm_prefix=s.shm_prefix, admin_socket="x"
        ),
    )
    _untouched(victim)
    assert daemons.read_supervisor_state(s).pid == os.getpid()


@needs_root
@pytest.mark.parametrize("ext", ["log", "index", "timeindex"])
def test_segment_file_symlink_refused(open_dir, victim, ext):
    """The persister opened segment files for append through a planted symlink."""
    pdir = _group_dir(open_dir / "0")
    _as_nobody(_plant, os.path.join(pdir, f"{0:020d}.{ext}"), victim)
    w = storage.PartitionWriter(pdir, 1 << 20, 1 << 40)
    with pytest.raises(errors.PermissionDenied) as e:
        w.roll(0, 0)
        w.append(b"\0" * 64, ffi.new("int64_t[3]"), 0)
    assert f"{0:020d}.{ext}" in str(e.value) and "symbolic link" in str(e.value)
    _untouched(victim)


@needs_root
def test_planted_directory_symlink_refused(open_dir, tmp_path):
    """A member swaps a topic directory for a symlink to a directory elsewhere:
    the root persister must not create segment files there."""
    data = _group_dir(open_dir / "data")
    _group_dir(os.path.join(data, "topics"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)
    _as_nobody(_plant, os.path.join(data, "topics", "t"), outside)
    with pytest.raises(errors.PermissionDenied) as e:
        storage.PartitionWriter(os.path.join(data, "topics", "t", "0"), 1 << 20, 1 << 40).roll(0, 0)
    assert "refusing to follow the symbolic link" in str(e.value) and f"uid {NOBODY}" in str(e.value)
    assert list(outside.iterdir()) == []


@needs_root
def test_lock_file_symlink_refused(open_dir, victim):
    """supervisor.lock was opened O_CREAT through a symlink, then truncated and
    rewritten with the pid: the victim's content was gone."""
    s = config.resolve("sec", _group_dir(open_dir / "data"), "shmlogsec.")
    _as_nobody(_plant, daemons.supervisor_lock_path(s), victim)
    with pytest.raises(errors.PermissionDenied):
        supervisor.Supervisor(s)._take_lock()
    _untouched(victim)


@needs_root
def test_offsets_lock_symlink_creates_nothing_outside(moved, tmp_path):
    inst = moved
    _group_dir(inst.settings.data_dir)
    meta = _group_dir(os.path.join(inst.settings.data_dir, "meta"))
    inst.log = inst.connect()
    elsewhere = tmp_path / "created-by-root"
    _as_nobody(_plant, os.path.join(meta, "offsets.lock"), elsewhere)
    with pytest.raises(errors.PermissionDenied):
        offsets_snapshot.snapshot_offsets(inst.log)
    assert not elsewhere.exists()


def test_fifo_does_not_hang_a_writer(tmp_path):
    """A FIFO planted at a log name would block open() for write forever."""
    os.mkfifo(tmp_path / "persister.log")
    t0 = time.monotonic()
    with pytest.raises((errors.PermissionDenied, OSError)) as e:
        safefile.open_append(str(tmp_path / "persister.log"))
    assert time.monotonic() - t0 < 5
    assert (
        not isinstance(e.value, OSError) or e.value.errno == errno.ENXIO or isinstance(e.value, errors.PermissionDenied)
    )


def test_hard_link_refused(tmp_path, victim):
    os.link(victim, tmp_path / "00000000000000000000.log")
    with pytest.raises(errors.PermissionDenied) as e:
        safefile.open_append(str(tmp_path / "00000000000000000000.log"))
    assert "hard links" in str(e.value)
    _untouched(victim)


def test_admin_symlink_in_the_path_is_followed(tmp_path):
    """A symlink the admin (root or the instance's owner) made keeps working."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    safefile.replace(str(tmp_path / "link" / "f"), b"x")
    assert (real / "f").read_bytes() == b"x"


# ------------------------------------------------------------ defect 9: squatted segments


def _squat_ctl(name, size):
    seg = ShmMapping.create(name, size, mode=0o666)
    lim = ffi.new("struct shm_ctl_limits *", [1024, 1024, 4096, 65536])
    assert lib.shm_ctl_init(seg.base, seg.size, lim, b"/elsewhere", 10, 0, 0) == lib.SHM_OK
    os.chmod("/dev/shm" + name, 0o666)
    return "squatted"


@needs_root
def test_squatted_control_segment_refused(inst):
    inst.log.close()
    inst.drop_shared_memory()
    s = inst.settings
    lim = ffi.new("struct shm_ctl_limits *", [1024, 1024, 4096, 65536])
    assert _as_nobody(_squat_ctl, s.ctl_name, lib.shm_ctl_size(lim)) == ("ok", "squatted")
    with pytest.raises(errors.PermissionDenied) as e:
        inst.log = inst.connect()
    msg = str(e.value)
    assert s.ctl_name in msg and f"uid {NOBODY}" in msg or "every user" in msg
    assert "Remove it" in msg


def _chmod_world(path):
    os.chmod(path, 0o666)


def test_world_readable_ring_refused(inst):
    inst.log.create_topic("w", persistence="none", ring_bytes=1 << 16)
    gen = inst.log.describe_topic("w").generation
    path = "/dev/shm" + inst.settings.ring_name(gen, 0)
    os.chmod(path, 0o664)
    with inst.connect() as other:
        with pytest.raises(errors.PermissionDenied) as e:
            other.producer().send("w", b"x")
    assert path in str(e.value) and "every user" in str(e.value) and "0664" in str(e.value)


@needs_root
def test_ring_of_another_owner_refused(inst):
    inst.log.create_topic("o", persistence="none", ring_bytes=1 << 16)
    gen = inst.log.describe_topic("o").generation
    path = "/dev/shm" + inst.settings.ring_name(gen, 0)
    os.chown(path, NOBODY, NOBODY)  # as if nobody had created it first
    with inst.connect() as other:
        with pytest.raises(errors.PermissionDenied) as e:
            other.consumer().assign([("o", 0, 0)])
    assert path in str(e.value) and f"uid {NOBODY}" in str(e.value)


def test_trust_of_a_group_data_dir(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    t = trust_of(str(d))
    assert (t.uid, t.has_gid) == (os.geteuid(), 0)
    os.chmod(d, 0o2770)
    t = trust_of(str(d))
    assert (t.gid, t.has_gid) == (d.stat().st_gid, 1)


# ------------------------------------------------------------ defect 11: crafted ring header


def _warm_producer(kw, topic, go, n):
    log = shmlog.connect(**kw, autostart=False)
    p = log.producer(max_block_ms=200)
    p.send(topic, b"warm", partition=0)
    go.wait(30)
    errs = 0
    for i in range(n):
        try:
            p.send(topic, b"x" * (i % 300), partition=0)
        except errors.ShmlogError:
            errs += 1
            if errs >= 5:  # errors, not a crash: enough
                break
    os._exit(0)


def _warm_consumer(kw, topic, go, n):
    log = shmlog.connect(**kw, autostart=False)
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([(topic, 0, 0)])
    c.poll(timeout=1)
    go.wait(30)
    for _ in range(n):
        try:
            c.poll_batch(100, timeout=0.01)
        except errors.ShmlogError:
            c.assign([(topic, 0, 0)])
    os._exit(0)


def _warm_persister(kw, go):
    argv = ["--instance", kw["instance"], "--data-dir", kw["data_dir"], "--shm-prefix", kw["shm_prefix"]]
    persister.main(argv)
    os._exit(0)


CORRUPTIONS = {
    "capacity": lambda h: setattr(h, "capacity", 1 << 40),
    "base_position": lambda h: setattr(h, "base_position", 12345),
    "tail_near_end": lambda h: (
        setattr(h, "tail_pos", h.base_position + h.capacity - 8),
        setattr(h, "head_pos", h.base_position + 8),
    ),
    "head_tail_absurd": lambda h: (
        setattr(h, "tail_pos", 2**64 - 3),
        setattr(h, "head_pos", 2**63 + 5),
        setattr(h, "persisted_pos", 2**63 + 1),
    ),
    "max_frame_bytes": lambda h: setattr(h, "max_frame_bytes", 2**32 - 1),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_crafted_ring_header_never_crashes(inst, what):
    """Producer, consumer and persister map the ring, then its header is rewritten
    through another mapping: each gets errors or carries on, never a signal."""
    kw = dict(inst.kwargs)
    with inst.connect() as log:
        log.create_topic("c", persistence="disk", ring_bytes=1 << 16, fsync="never")
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = {"persister": inst.process(_warm_persister, kw, go)}
    procs["persister"].start()
    deadline = time.monotonic() + 20
    while not daemons.persister_running(inst.settings.data_dir):
        assert time.monotonic() < deadline, "persister did not start"
        time.sleep(0.01)
    procs["producer"] = inst.process(_warm_producer, kw, "c", go, 3000)
    procs["consumer"] = inst.process(_warm_consumer, kw, "c", go, 300)
    procs["producer"].start()
    procs["consumer"].start()
    time.sleep(1.0)  # each has mapped the ring and used it
    with inst.connect() as log:
        gen = log.describe_topic("c").generation
    seg = ShmMapping.open(inst.settings.ring_name(gen, 0), writable=True, trust=trust_of(inst.settings.data_dir))
    h = ffi.cast("struct shm_ring_header *", seg.base)
    CORRUPTIONS[what](h)
    go.set()
    for name in ("producer", "consumer"):
        procs[name].join(60)
        assert not procs[name].is_alive(), f"{name} hung after the header was corrupted"
    time.sleep(0.5)
    pers = procs["persister"]
    if pers.is_alive():
        os.kill(pers.pid, signal.SIGTERM)
        pers.join(30)
    codes = {n: p.exitcode for n, p in procs.items()}
    seg.close()
    for n, c in codes.items():
        assert c is not None and c >= 0, (
            f"{n} died of signal {-c} ({signal.Signals(-c).name}) after {what} was corrupted: {codes}"
        )


def test_raw_mapping_is_not_a_handle(inst):
    """A caller passing a mapping where a handle belongs gets an error, not a wild read."""
    inst.log.create_topic("r", persistence="none", ring_bytes=1 << 16)
    ring = inst.log.ring(inst.log.topic_handle("r"), 0, writable=False)
    cur = ffi.new("struct shm_cursor *")
    assert lib.shm_ring_seek(ffi.cast("struct shm_ring *", ring.base), cur, 0) == lib.SHM_E_INVALID
    assert lib.shm_ring_seek(ring.h, cur, 0) == lib.SHM_OK


# ------------------------------------------------------------ issue 12 defect 6


def _connect_as_outsider(kw, autostart):
    try:
        shmlog.connect(**kw, autostart=autostart)
        return "attached"
    except errors.PermissionDenied as e:
        return f"PermissionDenied: {e}"
    except PermissionError as e:
        return f"bare PermissionError: {e}"


def _cli_as_outsider(kw):
    import contextlib
    import io
    from shmlog import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(
            [
                "--instance",
                kw["instance"],
                "--data-dir",
                kw["data_dir"],
                "--shm-prefix",
                kw["shm_prefix"],
                "produce",
                "t",
                "-",
            ]
        )
    return rc, err.getvalue()


@needs_root
@pytest.mark.parametrize("autostart", [False, True])
def test_outsider_gets_permission_denied(moved, autostart):
    """Another uid (not in the group) on a 2770 data dir: PermissionDenied naming the
    data dir, and nothing left in /dev/shm."""
    inst = moved
    d = inst.settings.data_dir
    os.chmod(d, 0o2770)  # root's, group root: nobody is outside
    status, res = _as_nobody(_connect_as_outsider, inst.kwargs, autostart)
    assert status == "ok", res
    assert res.startswith("PermissionDenied") and d in res, res
    assert inst.segments() == []


@needs_root
def test_outsider_cli_exits_6(moved):
    inst = moved
    os.chmod(inst.settings.data_dir, 0o2770)
    status, res = _as_nobody(_cli_as_outsider, inst.kwargs)
    assert status == "ok", res
    rc, err = res
    assert rc == 6, err
    assert "permission" in err.lower() or "access" in err.lower()


@needs_root
def test_unwritable_data_dir_leaves_no_segment(moved):
    """The data dir is readable and searchable for nobody but not writable: the
    connect is refused before the control segment exists."""
    inst = moved
    os.chmod(inst.settings.data_dir, 0o755)
    status, res = _as_nobody(_connect_as_outsider, inst.kwargs, False)
    assert status == "ok", res
    assert res.startswith("PermissionDenied") and "write" in res, res
    assert inst.segments() == []


# ------------------------------------------------------------ defect 14: BufferFull names the stuck producer


def _hold_a_reservation(kw, topic, ready):
    lib.shm_test_set_hold_ns(120 * 10**9)  # reserve, then sleep before the commit
    log = shmlog.connect(**kw, autostart=False)
    p = log.producer()
    ready.set()
    p.send(topic, b"held", partition=0)


def test_buffer_full_names_the_producer_holding_a_reservation(inst):
    log = inst.log
    log.create_topic("s", persistence="none", ring_bytes=1 << 16)
    p = log.producer(max_block_ms=300)
    p.send("s", b"first", partition=0)
    ready = multiprocessing.get_context("fork").Event()
    holder = inst.process(_hold_a_reservation, inst.kwargs, "s", ready)
    holder.start()
    assert ready.wait(20)
    deadline = time.monotonic() + 20
    while log.describe_topic("s").partitions[0].end_offset < 2:  # its reservation is open
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        with pytest.raises(errors.BufferFull) as e:
            for _ in range(10_000):
                p.send("s", b"v" * 1000, partition=0)
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "reservation" in msg and "offsets 1..1" in msg, msg
        assert "alive" in msg and "persister" not in msg, msg
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        os.kill(holder.pid, signal.SIGCONT)
        holder.join(10)


# ------------------------------------------------------------ defect 9: squatted liveness tokens


def _create_token(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    os.fchmod(fd, 0o666)
    os.close(fd)
    return "created"


@needs_root
def test_squatted_liveness_token_refused(inst):
    """Another user pre-creates this process's token name: it could unlink it
    later and make us look dead (our open reservation sealed under us)."""
    from shmlog import liveness

    prefix = liveness.token_prefix(inst.prefix, "squat")
    path = f"{prefix}{os.getpid()}-{liveness.start_time()}"
    try:
        assert _as_nobody(_create_token, path) == ("ok", "created")
        with pytest.raises(errors.PermissionDenied) as e:
            liveness.ensure_token(prefix)
        assert path in str(e.value)
    finally:
        liveness.release_tokens(prefix)
        if os.path.exists(path):
            os.unlink(path)


def _hold_token_lock(path, ready, done):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    done.wait(60)


@needs_root
def test_squatter_cannot_keep_a_dead_writer_alive(inst):
    """A token for a dead (pid, start time), made and locked by another uid, is not
    proof of life: the writer is seen dead, so its reservation can be sealed."""
    from shmlog import liveness

    ctx = multiprocessing.get_context("fork")
    gone = ctx.Process(target=lambda: None)
    gone.start()
    gone.join()
    pid, st = gone.pid, 12345  # a pid now unused, with some start time
    prefix = liveness.token_prefix(inst.prefix, "keepalive")
    path = f"{prefix}{pid}-{st}"
    ready, done = ctx.Event(), ctx.Event()

    def squatter():
        os.setgroups([NOBODY])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        _hold_token_lock(path, ready, done)

    p = inst.process(squatter)
    p.start()
    try:
        assert ready.wait(20)
        assert lib.shm_process_alive(prefix.encode(), pid, st) == 0
    finally:
        done.set()
        p.join(10)
        if os.path.exists(path):
            os.unlink(path)
