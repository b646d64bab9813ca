"""liveness.py — this process's liveness token.

Owns: the token file /dev/shm/<prefix><instance>.live.<pid>-<start_time>,
created on first need and held with an exclusive flock for the life of the
process. Another process proves us dead by taking that flock (csrc/shm.c
shm_process_alive); the kernel drops it only after our memory is gone, so a
process found dead can write no more. Must never: release the lock while
the process may still write into shared memory. After fork() the child
forgets the parent's token (closing its copy does not drop the parent's
lock) and makes its own on first need; objects holding per-process state
register a reset hook here.
"""

import atexit
import fcntl
import os
import threading
import weakref
from typing import Any

from . import errors, safefile

SHM_DIR = "/dev/shm"

_lock = threading.Lock()
_tokens: dict[str, Any] = {}  # token_prefix -> fd
_fork_hooks: weakref.WeakSet[Any] = weakref.WeakSet()


def start_time(pid: int | None = None) -> int:
    """Process start time in clock ticks since boot (field 22 of /proc/pid/stat)."""
    with open(f"/proc/{pid or os.getpid()}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def token_prefix(shm_prefix: str, instance: str) -> str:
    return f"{SHM_DIR}/{shm_prefix}{instance}.live."


def ensure_token(prefix: str) -> tuple[int, int]:
    """Creates and locks this process's token under prefix; returns (pid, start_time)."""
    pid = os.getpid()
    st = _start_time_cached()
    with _lock:
        if prefix not in _tokens:
            path = f"{prefix}{pid}-{st}"
            fd = safefile.open_rw(path, owner_only=True)  # a squatter's token is refused
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise errors.PermissionDenied(
                    f"liveness token {path} is locked by another process (planted by another "
                    "user?); remove it as its owner or root"
                ) from None
            _tokens[prefix] = fd
    return pid, st


def release_tokens(prefix: str | None = None):
    """Unlinks and unlocks tokens (at exit, or when an instance is destroyed)."""
    with _lock:
        for p in [prefix] if prefix else list(_tokens):
            fd = _tokens.pop(p, None)
            if fd is None:
                continue
            try:
                os.unlink(f"{p}{os.getpid()}-{_start_time_cached()}")
            except FileNotFoundError:
                pass
            os.close(fd)


_st_cache: dict[int, Any] = {}


def _start_time_cached() -> int:
    pid = os.getpid()
    if pid not in _st_cache:
        _st_cache.clear()
        _st_cache[pid] = start_time(pid)
    return _st_cache[pid]


def sweep_dead(prefix: str) -> int:
    """Unlinks the tokens under prefix whose lock is free: their process is gone
    (one that exited through os._exit or was killed left its file behind)."""
    d, base = os.path.split(prefix)
    removed = 0
    for name in os.listdir(d):
        if not name.startswith(base):
            continue
        path = os.path.join(d, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone, or a planted symlink: not a token of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # alive
        else:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)
    return removed


def on_fork(obj):
    """Calls obj._after_fork() in a forked child."""
    _fork_hooks.add(obj)


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()
    for fd in _tokens.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _tokens.clear()
    _st_cache.clear()
    for obj in list(_fork_hooks):
        obj._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(release_tokens)
