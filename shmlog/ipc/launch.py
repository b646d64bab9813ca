"""ipc/launch.py — how the library starts its daemons (the supervisor, the persister).

Owns: a daemon's command line (this interpreter with -P, so neither the
caller's working directory nor a script directory can put a source tree in
front of the installed package; `-m shmlog.<module>`; absolute paths), its
working directory ("/"), its environment (the caller's, minus systemd's
per-process variables), its own session, and the start-up status channel.

The status channel is a pipe whose write end the daemon inherits (its number
in $SHMLOG_STATUS_FD). A daemon that knows the protocol (StatusPipe) writes
one JSON object per line: {"state": "starting", "pid": N}, then
{"state": "recovering", "done": D, "total": T} while it restores a log, then
{"state": "ready", ...its addresses} or {"state": "failed", "error":
"<class in shmlog.errors>", "message": "..."}, and closes it once ready. The
launcher (Started.wait) reads it with a deadline; end-of-file before "ready"
means the daemon exited (an import error, a crash, a kill), and the
launcher says so at once with the last lines the daemon wrote to its log. A
daemon that does not speak the protocol (the persister) keeps the pipe open
until it exits, so its death is noticed the same way.

Must never: search a log for a word to decide whether a daemon started, wait
on a daemon that already exited, or let the pipe leak into the daemon's own
children (StatusPipe marks it close-on-exec at once).
"""

import json
import os
import select
import subprocess
import sys
import threading
import time

from .. import errors, safefile

STATUS_FD_ENV = "SHMLOG_STATUS_FD"
# systemd's variables name one process (the unit's main one); a daemon we start is not it
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
PROGRESS_GRACE_S = 60.0  # past the deadline, a restore that reported progress this recently is waited for
MAX_WAIT_S = 3600.0


def command(module: str, *args: str) -> list[str]:
    """argv of `python -m module args` that imports the installed package whatever the cwd."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []  # 3.10: cwd "/" alone keeps the source tree out
    return [sys.executable, *safe, "-m", module, *args]


def environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARS and k != STATUS_FD_ENV}


class Started:
    """A daemon being started: the read end of its status pipe."""

    def __init__(self, what: str, fd: int, logfile: str, log_at: int, proc: subprocess.Popen | None):
        self.what, self.fd, self.logfile, self.log_at, self.proc = what, fd, logfile, log_at, proc
        self.status: dict | None = None  # the latest line the daemon wrote
        self.progress_at = time.monotonic()
        self._buf = b""
        self.eof = False

    def _read(self, wait_s: float):
        if self.eof:
            time.sleep(wait_s)
            return
        poller = select.poll()  # not select(): the caller may hold more than 1024 fds
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(wait_s * 1000):
            return
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                st = json.loads(line)
            except ValueError:
                continue
            if isinstance(st, dict) and isinstance(st.get("state"), str):
                if st != self.status:
                    self.progress_at = time.monotonic()
                self.status = st

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the daemon wrote to its log since we started it."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(self.log_at)
                text = f.read()[-65536:].decode(errors="replace")
        except OSError:
            return ""
        return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])

    def wait(self, ready, timeout: float) -> dict | None:
        """Waits until ready(status) is true; the latest status then. Raises the
        error the daemon reported, SupervisorError when it exited without one,
        Timeout past the deadline (extended while it reports recovery progress)."""
        start = time.monotonic()
        deadline = start + timeout
        try:
            while True:
                st = self.status
                if st is not None and st["state"] == "failed":
                    cls = getattr(errors, str(st.get("error")), None)
                    if not (isinstance(cls, type) and issubclass(cls, errors.ShmlogError)):
                        cls = errors.SupervisorError
                    raise cls(f"{self.what} did not start: {st.get('message')}")
                if ready(st):
                    return st
                if self.eof:
                    code = ""
                    if self.proc is not None:
                        try:
                            code = f" with status {self.proc.wait(1.0)}"
                        except subprocess.TimeoutExpired:
                            pass
                    tail = self.log_tail()
                    raise errors.SupervisorError(
                        f"{self.what} exited during start-up{code}{': ' + tail if tail else ''} (see {self.logfile})"
                    )
                now = time.monotonic()
                if now > deadline:
                    recovering = st is not None and st["state"] == "recovering"
                    if not recovering or now - self.progress_at > PROGRESS_GRACE_S or now - start > MAX_WAIT_S:
                        last = f" (last state: {st['state']})" if st else ""
                        raise errors.Timeout(
                            f"{self.what} did not start within {timeout:g} s{last}; see {self.logfile}"
                        )
                self._read(0.02)
        finally:
            self.close()

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def start(what: str, module: str, args: list[str], logfile: str, *, detach: bool) -> Started:
    """Starts `python -m module args` with stdout/stderr appended to logfile.
    detach=True: through /bin/sh, which backgrounds it and exits at once, so init
    adopts it and no zombie is left with the caller (the supervisor started by
    up()); False: our child (the persister, which its starter reaps)."""
    try:
        log_at = os.path.getsize(logfile)
    except OSError:
        log_at = 0
    r, w = os.pipe()  # both close-on-exec; pass_fds hands w to the daemon
    env = environment()
    env[STATUS_FD_ENV] = str(w)
    cmd = command(module, *args)
    try:
        out = os.fdopen(safefile.open_append(logfile), "ab")  # never through a planted symlink
    except (OSError, errors.ShmlogError):
        os.close(r)
        os.close(w)
        raise
    proc = None
    try:
        if detach:
            subprocess.run(
                ["/bin/sh", "-c", 'exec "$@" &', "sh", *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                env=env,
                start_new_session=True,
                pass_fds=(w,),
                check=True,
            )
        else:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                env=env,
                start_new_session=True,
                pass_fds=(w,),
            )
    except BaseException:
        os.close(r)
        raise
    finally:
        out.close()
        os.close(w)
    return Started(what, r, logfile, log_at, proc)


class StatusPipe:
    """The daemon's end: what it reports to whoever started it. A no-op when
    nobody did (systemd, a terminal), and never fatal: a launcher that went
    away only stops listening."""

    def __init__(self, fd: int | None):
        self.fd = fd
        self.lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> "StatusPipe":
        raw = os.environ.pop(STATUS_FD_ENV, None)
        fd = None
        if raw is not None and raw.isdigit():
            fd = int(raw)
            try:
                os.set_inheritable(fd, False)  # our own children (persister, workers) must not hold it
            except OSError:
                fd = None
        return cls(fd)

    def send(self, state: str, **fields):
        with self.lock:
            if self.fd is None:
                return
            try:
                os.write(self.fd, json.dumps({"state": state, **fields}).encode() + b"\n")
            except OSError:
                self._close()

    def close(self):
        with self.lock:
            self._close()

    def _close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
