"""cli/doctor.py — `shmlog doctor`: is this host fit to run the instance?

Owns: the checks of /dev/shm (size, free space), process limits, the
permissions of the data dir, its files and the instance's segments, and the
search for stale things: liveness tokens of dead processes and rings no
topic refers to (with --clean, their removal). Must never: remove anything
without --clean, or anything a live process may still use (a token is dead
only when its flock can be taken; a ring is stale only when the control
segment names no topic with it and it is older than a creation takes).
"""

import fcntl
import os
import re
import resource
import stat
import time

from .. import config, errors, liveness
from ..ipc import daemons
from . import common

EPILOG = """examples:
  shmlog doctor                  # report; exit 1 when a problem is found
  shmlog doctor --json
  shmlog doctor --clean          # also remove dead processes' tokens and orphaned rings
  shmlog doctor --clean --all-instances   # and dead processes' tokens of every instance on the host
"""

SHM_DIR = liveness.SHM_DIR
LOW_SHM_BYTES = 256 << 20
MIN_NOFILE = 1024
RING_GRACE_S = 10.0  # a ring younger than this may belong to a topic being created
_TOKEN_RE = re.compile(r"\.live\.\d+-\d+$")


def token_is_dead(path: str) -> bool:
    """A token whose flock we can take belongs to a process that is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def instance_tokens(settings: config.Settings) -> tuple[list[str], list[str]]:
    """(live, dead) token names of this instance's processes."""
    base = os.path.basename(liveness.token_prefix(settings.shm_prefix, settings.instance))
    live: list[str] = []
    dead: list[str] = []
    for n in sorted(os.listdir(SHM_DIR)):
        if n.startswith(base):
            (dead if token_is_dead(os.path.join(SHM_DIR, n)) else live).append(n)
    return live, dead


def other_dead_tokens(settings: config.Settings) -> list[str]:
    """Tokens of dead processes of any other shmlog instance on this host (dead
    by the same proof: their flock is free), left by kill -9 or os._exit."""
    mine = os.path.basename(liveness.token_prefix(settings.shm_prefix, settings.instance))
    return [
        n
        for n in sorted(os.listdir(SHM_DIR))
        if _TOKEN_RE.search(n) and not n.startswith(mine) and token_is_dead(os.path.join(SHM_DIR, n))
    ]


class Report:
    def __init__(self):
        self.checks = []
        self.stale = []
        self.cleaned = []

    def add(self, name, status, detail):
        self.checks.append({"check": name, "status": status, "detail": detail})

    @property
    def problems(self):
        return [c for c in self.checks if c["status"] == "problem"]


def check_shm(rep: Report, settings):
    try:
        st = os.statvfs(SHM_DIR)
    except OSError as e:
        rep.add("/dev/shm", "problem", f"{SHM_DIR} is not usable: {e.strerror}")
        return
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    mine = sum(
        _size(os.path.join(SHM_DIR, n)) for n in os.listdir(SHM_DIR) if n.startswith(settings.segment_glob_prefix)
    )
    detail = (
        f"size {common.human_bytes(size)}, free {common.human_bytes(free)}, "
        f"this instance uses {common.human_bytes(mine)}"
    )
    if free < LOW_SHM_BYTES:
        rep.add(
            "/dev/shm",
            "warn",
            detail + f"; under {common.human_bytes(LOW_SHM_BYTES)} free: new topics "
            "may fail with NoSpace (grow it: mount -o remount,size=8G /dev/shm)",
        )
    else:
        rep.add("/dev/shm", "ok", detail)


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def check_limits(rep: Report):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lim = lambda v: "unlimited" if v == resource.RLIM_INFINITY else str(v)  # noqa: E731
    if soft != resource.RLIM_INFINITY and soft < MIN_NOFILE:
        rep.add(
            "open files",
            "warn",
            f"ulimit -n is {lim(soft)} (hard {lim(hard)}); raise it to at least "
            f"{MIN_NOFILE} (LimitNOFILE= in the unit)",
        )
    else:
        rep.add("open files", "ok", f"ulimit -n {lim(soft)} (hard {lim(hard)})")
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if fsize != resource.RLIM_INFINITY:
        rep.add("file size", "warn", f"ulimit -f is {fsize} blocks: segment files cannot grow past it")
    else:
        rep.add("file size", "ok", "ulimit -f unlimited")
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            maps = int(f.read())
        rep.add(
            "memory maps",
            "ok" if maps >= 65530 else "warn",
            f"vm.max_map_count {maps} (each mapped ring takes one or two)",
        )
    except OSError:
        pass


def _mode_problem(path, st, want_dir: bool) -> str | None:
    if st.st_mode & stat.S_IWOTH:
        return f"{path} is world-writable (mode {stat.filemode(st.st_mode)}): chmod o-w {path}"
    need = os.R_OK | os.W_OK | (os.X_OK if want_dir else 0)
    if not os.access(path, need):
        return (
            f"{path} (mode {stat.filemode(st.st_mode)}, uid {st.st_uid}, gid {st.st_gid}) is not "
            "readable and writable by this user: run as the instance's user or a member of its group"
        )
    return None


def check_data_dir(rep: Report, settings):
    d = settings.data_dir
    try:
        st = os.stat(d)
    except FileNotFoundError:
        rep.add("data dir", "ok", f"{d} does not exist yet (made at the first connect)")
        return
    except PermissionError:
        rep.add("data dir", "problem", f"cannot stat {d}: permission denied")
        return
    if not stat.S_ISDIR(st.st_mode):
        rep.add("data dir", "problem", f"{d} is not a directory")
        return
    bad = [_mode_problem(d, st, True)]
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            try:
                s = os.lstat(p)
            except OSError:
                continue
            bad.append(_mode_problem(p, s, stat.S_ISDIR(s.st_mode)))
    bad = [b for b in bad if b]
    if bad:
        rep.add("data dir", "problem", f"{len(bad)} permission problem(s); first: {bad[0]}")
    else:
        rep.add("data dir", "ok", f"{d} (mode {stat.filemode(st.st_mode)})")


def _ring_generation(name: str, settings):
    m = re.fullmatch(re.escape(settings.segment_glob_prefix) + r"g(\d+)\.p(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_segments(rep: Report, settings, live_tokens):
    """Permissions of the instance's segments; rings that no live topic refers to."""
    prefix = settings.segment_glob_prefix
    names = [n for n in sorted(os.listdir(SHM_DIR)) if n.startswith(prefix) and not _TOKEN_RE.search(n)]
    bad = []
    for n in names:
        p = os.path.join(SHM_DIR, n)
        try:
            problem = _mode_problem(p, os.stat(p), False)
        except FileNotFoundError:
            continue
        if problem:
            bad.append(problem)
    rep.add(
        "segment permissions",
        "problem" if bad else "ok",
        f"{len(bad)} problem(s); first: {bad[0]}" if bad else f"{len(names)} segment(s) of this instance",
    )
    ctl = settings.ctl_name.lstrip("/")
    referenced = set()
    if ctl in names:
        try:
            with common.connect(
                instance=settings.instance,
                data_dir=settings.data_dir,
                shm_prefix=settings.shm_prefix,
                autostart=False,
                create=False,
            ) as log:
                for t in log.list_topics():
                    try:
                        h = log.topic_handle(t)
                    except errors.UnknownTopicOrPartition:
                        continue
                    referenced |= {settings.ring_name(h.generation, p).lstrip("/") for p in range(h.partitions)}
        except errors.LayoutMismatch as e:
            rep.add("control segment", "problem", str(e))
            if not live_tokens:
                rep.stale.append(ctl)
            return
        rep.add("control segment", "ok", f"{ctl}: {len(referenced)} ring(s) in use")
    now = time.time()
    for n in names:
        if n == ctl or n in referenced or _ring_generation(n, settings) is None:
            continue
        try:
            age = now - os.stat(os.path.join(SHM_DIR, n)).st_mtime
        except FileNotFoundError:
            continue
        if age >= RING_GRACE_S:
            rep.stale.append(n)


def cmd_doctor(args):
    settings = common.settings(args)
    rep = Report()
    check_shm(rep, settings)
    check_limits(rep)
    check_data_dir(rep, settings)
    live, dead = instance_tokens(settings)
    rep.add(
        "processes",
        "ok",
        f"{len(live)} live process(es) attached" + (f", {len(dead)} dead one(s) left tokens" if dead else ""),
    )
    check_segments(rep, settings, live)
    rep.stale += dead
    others = other_dead_tokens(settings)
    if others:
        rep.add(
            "other instances",
            "warn" if not args.all_instances else "ok",
            f"{len(others)} token(s) of dead processes of other instances"
            + ("" if args.all_instances else "; remove them with --clean --all-instances"),
        )
        if args.all_instances:
            rep.stale += others
    sup = common.supervisor_pid(settings)
    rep.add(
        "supervisor",
        "ok",
        f"running (pid {sup})"
        if sup
        else "not running (`shmlog up` or the systemd unit starts one; the data path works without it)",
    )
    running = daemons.persister_running(settings.data_dir)
    rep.add(
        "persister",
        "ok",
        f"running (pid {daemons.persister_pid(settings.data_dir)})"
        if running
        else "not running (started by connect/`shmlog up` when durable topics exist)",
    )
    if rep.stale:
        rep.add(
            "stale",
            "warn",
            f"{len(rep.stale)} stale segment(s)/token(s)" + ("" if args.clean else "; remove them with --clean"),
        )
    if args.clean:
        for n in rep.stale:
            p = os.path.join(SHM_DIR, n)
            if _TOKEN_RE.search(n) and not token_is_dead(p):
                continue  # came back to life: a new process took it
            try:
                os.unlink(p)
                rep.cleaned.append(n)
            except FileNotFoundError:
                pass
            except PermissionError:
                rep.add("clean", "problem", f"cannot remove {p}: permission denied")
    out = {
        "instance": settings.instance,
        "data_dir": settings.data_dir,
        "shm_prefix": settings.shm_prefix,
        "ok": not rep.problems,
        "checks": rep.checks,
        "stale": rep.stale,
        "cleaned": rep.cleaned,
    }
    mark = {"ok": "ok     ", "warn": "WARN   ", "problem": "PROBLEM"}
    text = "\n".join(f"{mark[c['status']]} {c['check']}: {c['detail']}" for c in rep.checks)
    if rep.stale:
        text += "\nstale:\n" + "\n".join(
            f"  {SHM_DIR}/{n}" + (" (removed)" if n in rep.cleaned else "") for n in rep.stale
        )
    common.emit(args, out, text)
    if rep.problems:
        raise SystemExit(common.EXIT_PROBLEMS_FOUND)


def register(sub, parent):
    d = sub.add_parser(
        "doctor",
        parents=[parent],
        help="check /dev/shm, limits, permissions, stale segments",
        description="Checks the host and the instance; exits 1 when it finds a problem.",
        epilog=EPILOG,
    )
    d.add_argument("--clean", action="store_true", help="remove tokens of dead processes and rings no topic uses")
    d.add_argument(
        "--all-instances",
        action="store_true",
        help="also list (and with --clean remove) dead processes' tokens of every other instance",
    )
    d.set_defaults(func=cmd_doctor)
