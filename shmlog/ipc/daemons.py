"""ipc/daemons.py — the client↔daemon contract: where an instance's daemons
keep their lock, state and log files, whether they run, and starting and
stopping them.

Owns: the supervisor's state file (supervisor.json) and lock; `up` (start a
detached supervisor unless one answers, and wait for it through its status
pipe) and `down` (ask it to stop over the admin socket, wait for its exit,
optionally purge the instance's shared memory); the persister's lock
(persister.lock: held by the running persister, holding its pid), starting
one and stopping one by SIGTERM; starting the cleaner (the persister's
child, cleaner.lock). The supervisor, `shmlog.connect()` and the
CLI all start and stop daemons through here (one copy).
Must never: import the daemons themselves (they are started as processes,
`python -m shmlog.service.<daemon>`), or decide by reading a daemon's log
whether it started (launch.py's status pipe does).
"""

import fcntl
import os
import signal
import time

import msgspec
import psutil

from .. import config, errors, permissions, safefile
from . import admin, launch
from .progress import read_recovery_progress

SUPERVISOR_MODULE = "shmlog.service.supervisor"
PERSISTER_MODULE = "shmlog.service.persister"
CLEANER_MODULE = "shmlog.service.cleaner"


# ------------------------------------------------------------ the supervisor


class SupervisorState(msgspec.Struct, kw_only=True):
    pid: int
    instance: str
    data_dir: str
    shm_prefix: str
    admin_socket: str
    metrics_port: int | None = None
    kafka_port: int | None = None  # the Kafka listener's bound port, when one runs
    kafka_host: str | None = None
    config: str | None = None
    started_ms: int = 0
    stopped_ms: int | None = None
    clean: bool = False
    workers: list[dict] = []


def supervisor_lock_path(settings: config.Settings) -> str:
    return os.path.join(settings.data_dir, "supervisor.lock")


def supervisor_state_path(settings: config.Settings) -> str:
    return os.path.join(settings.data_dir, "supervisor.json")


def read_supervisor_state(settings: config.Settings) -> SupervisorState | None:
    try:
        return msgspec.json.decode(safefile.read_bytes(supervisor_state_path(settings)), type=SupervisorState)
    except (FileNotFoundError, msgspec.DecodeError, errors.PermissionDenied):
        return None


def write_supervisor_state(settings: config.Settings, st: SupervisorState):
    safefile.replace(supervisor_state_path(settings), msgspec.json.encode(st), sync_dir=False)


def addresses(st: SupervisorState | None) -> dict:
    """Where a running supervisor serves: {"metrics": URL or None, "kafka": HOST:PORT or None}."""
    if st is None:
        return {"metrics": None, "kafka": None}
    return {
        "metrics": f"http://127.0.0.1:{st.metrics_port}/metrics" if st.metrics_port else None,
        "kafka": f"{st.kafka_host or '127.0.0.1'}:{st.kafka_port}" if st.kafka_port else None,
    }


def running_pid(settings: config.Settings) -> int | None:
    """The pid of the supervisor answering on the instance's admin socket, or None."""
    c = admin.client(settings)
    if c is None:
        return None
    try:
        return c.call("ping", timeout=5.0)["pid"]
    except errors.ShmlogError:
        return None


def up(settings: config.Settings, config_path: str | None = None, timeout: float = 20.0) -> int:
    """Starts a background supervisor for the instance unless one runs; returns its pid.
    The supervisor is detached (its own session, parent init, cwd /), like
    ray.init()'s, and runs the installed package whatever our working directory
    (ipc/launch.py). It reports its start-up on a status pipe: a supervisor
    that cannot start is reported at once with its reason (its error, or the
    last lines it wrote when it died before it could say); one that restores a
    large log is waited for past `timeout` while its progress moves."""
    pid = running_pid(settings)
    if pid is not None:
        return pid
    permissions.check_data_dir(settings.data_dir, create=True, write=True)  # PermissionDenied, not EACCES later
    logfile = os.path.join(os.path.abspath(settings.data_dir), "supervisor.log")
    args = [
        "--instance",
        settings.instance,
        "--data-dir",
        os.path.abspath(settings.data_dir),
        "--shm-prefix",
        settings.shm_prefix,
    ]
    if config_path:
        args += ["--config", os.path.abspath(config_path)]
    started = launch.start("the supervisor", SUPERVISOR_MODULE, args, logfile, detach=True)
    try:
        st = started.wait(lambda st: st is not None and st["state"] == "ready", timeout)
        assert st is not None  # wait returns once ready(st) holds
        return st["pid"]
    except errors.AlreadyRunning:
        return _wait_for_other(settings, timeout, logfile)  # a racing up(), or systemd's, got the lock first


def _wait_for_other(settings: config.Settings, timeout: float, logfile: str) -> int:
    """Another supervisor holds the instance's lock: its pid once it answers.
    Past the timeout, waited for while it lives and its restore progresses."""
    start = time.monotonic()
    last, moved = None, start
    while True:
        pid = running_pid(settings)
        if pid is not None:
            return pid
        now = time.monotonic()
        prog = read_recovery_progress(settings.data_dir)
        if prog != last:
            last, moved = prog, now
        if now - start > timeout:
            holder = _lock_holder(settings)
            if (
                holder is None
                or not prog
                or prog.pid != holder.pid
                or now - moved > launch.PROGRESS_GRACE_S
                or now - start > launch.MAX_WAIT_S
            ):
                raise errors.Timeout(
                    f"another supervisor holds instance {settings.instance!r} but did not "
                    f"answer within {timeout:g} s; see {logfile}"
                )
        time.sleep(0.02)


def _lock_holder(settings: config.Settings) -> psutil.Process | None:
    try:
        with open(supervisor_lock_path(settings)) as f:
            proc = psutil.Process(int(f.read().strip()))
        return proc if _alive(proc) else None
    except (OSError, ValueError, psutil.NoSuchProcess):
        return None


def down(settings: config.Settings, purge: bool = False, timeout: float = 120.0) -> bool:
    """Stops the instance's supervisor cleanly (workers stopped, everything
    committed fsynced); True when one was running. purge=True then also removes
    the instance's shared memory (its rings and control segment: ephemeral
    topics are lost, durable ones are restored from the data dir next time)."""
    stopped = False
    c = admin.client(settings)
    if c is not None:
        pid = c.call("ping")["pid"]
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            proc = None
        c.call("shutdown")
        deadline = time.monotonic() + timeout
        while proc is not None and _alive(proc):
            if time.monotonic() > deadline:
                raise errors.Timeout(f"the supervisor (pid {pid}) did not stop within {timeout} s")
            time.sleep(0.01)
        stopped = True
    if purge:
        _purge_shared_memory(settings)
    return stopped


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _purge_shared_memory(settings: config.Settings):
    stop_persister(settings, timeout=120)  # it would write what we remove
    prefix = settings.segment_glob_prefix
    for name in os.listdir(permissions.SHM_DIR):
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(permissions.SHM_DIR, name))
            except FileNotFoundError:
                pass


# ------------------------------------------------------------ the persister


def persister_lock_path(data_dir: str) -> str:
    return os.path.join(data_dir, "persister.lock")


def persister_running(data_dir: str) -> bool:
    """Is a persister holding this data dir's lock?"""
    try:
        fd = safefile.open_read(persister_lock_path(data_dir))
    except (FileNotFoundError, errors.PermissionDenied):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def persister_pid(data_dir: str):
    try:
        return int(safefile.read_bytes(persister_lock_path(data_dir)).strip() or 0) or None
    except (FileNotFoundError, ValueError, errors.PermissionDenied):
        return None


def start_persister(settings: config.Settings, *, wait: bool = True, timeout: float = 10.0) -> launch.Started:
    """Starts the instance's persister as a child of this process; with wait,
    returns once it holds its lock (its exit before that is an error at once)."""
    d = os.path.abspath(settings.data_dir)
    started = launch.start(
        "the persister",
        PERSISTER_MODULE,
        ["--instance", settings.instance, "--data-dir", d, "--shm-prefix", settings.shm_prefix],
        os.path.join(d, "persister.log"),
        detach=False,
    )
    if wait:
        started.wait(lambda _: persister_running(d), timeout)
    return started


def stop_persister(settings: config.Settings, timeout: float = 30.0) -> bool:
    """SIGTERM to the instance's persister, whoever started it; waits until it
    has fsynced and exited. False when none ran."""
    d = settings.data_dir
    deadline = time.monotonic() + timeout
    if not persister_running(d):
        return False
    pid = persister_pid(d)
    while not pid:  # it holds the lock, its pid follows at once
        if time.monotonic() > deadline or not persister_running(d):
            return False
        time.sleep(0.001)
        pid = persister_pid(d)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited meanwhile
    while persister_running(d):
        if time.monotonic() > deadline:
            raise errors.Timeout(f"the persister (pid {pid}) did not stop within {timeout} s")
        time.sleep(0.005)
    return True


# ------------------------------------------------------------ the cleaner (the persister's child)


def cleaner_lock_path(data_dir: str) -> str:
    return os.path.join(data_dir, "cleaner.lock")


def start_cleaner(settings: config.Settings) -> launch.Started:
    """Starts the instance's log cleaner (service/cleaner.py) as a child of this
    process (the persister, which watches it and starts it again when it dies).
    Not waited for: the cleaner has no client waiting on it."""
    d = os.path.abspath(settings.data_dir)
    return launch.start(
        "the cleaner",
        CLEANER_MODULE,
        # --parent: the cleaner exits when we are gone, even if we die before it first looks
        [
            "--instance",
            settings.instance,
            "--data-dir",
            d,
            "--shm-prefix",
            settings.shm_prefix,
            "--parent",
            str(os.getpid()),
        ],
        os.path.join(d, "cleaner.log"),
        detach=False,
    )
