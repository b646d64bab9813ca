"""service/workers.py — the [processes.NAME] workers a supervisor runs.

Owns: starting each declared command's replicas (each in its own session,
with SHMLOG_INSTANCE, SHMLOG_DATA_DIR, SHMLOG_SHM_PREFIX, SHMLOG_GROUP,
SHMLOG_GROUP_INSTANCE_ID, SHMLOG_WORKER, SHMLOG_REPLICA, SHMLOG_REPLICAS in
their environment so replicas of one command join one consumer group),
restarting them by policy with exponential backoff, reconciling with a
reloaded config, and stopping them (SIGTERM, then SIGKILL after their stop
timeout). Must never: block the supervisor's loop (tick() only polls), or
touch shared memory.
"""

import logging
import os
import signal
import subprocess
import time

from .. import config
from .configfile import ProcessSpec

logger = logging.getLogger("shmlog.workers")

QUICK_FAILURE_S = 10.0  # a replica that ran less than this doubles its backoff


class Replica:
    def __init__(self, name: str, index: int, spec: ProcessSpec):
        self.name, self.index, self.spec = name, index, spec
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.restarts = 0
        self.backoff_s = spec.backoff_ms / 1000
        self.next_start: float | None = 0.0  # monotonic time of the next (re)start; None: never again
        self.last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class Workers:
    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.replicas: dict[tuple[str, int], Replica] = {}

    # ------------------------------------------------------------ config

    def apply(self, processes: dict[str, ProcessSpec]):
        """Makes the running set match processes: new replicas start, removed
        ones stop, replicas whose spec changed restart."""
        want = {(name, i): spec for name, spec in processes.items() for i in range(spec.replicas)}
        for key in [k for k, r in self.replicas.items() if k not in want or want[k] != r.spec]:
            self._stop([self.replicas.pop(key)])
        for key, spec in want.items():
            if key not in self.replicas:
                self.replicas[key] = Replica(key[0], key[1], spec)
        self.tick()

    # ------------------------------------------------------------ running

    def _env(self, r: Replica) -> dict:
        s = self.settings
        env = dict(os.environ)
        env.update(r.spec.env)
        env.update(
            {
                "SHMLOG_INSTANCE": s.instance,
                "SHMLOG_DATA_DIR": s.data_dir,
                "SHMLOG_SHM_PREFIX": s.shm_prefix,
                "SHMLOG_GROUP": r.spec.group or r.name,
                "SHMLOG_GROUP_INSTANCE_ID": f"{r.name}-{r.index}",
                "SHMLOG_WORKER": r.name,
                "SHMLOG_REPLICA": str(r.index),
                "SHMLOG_REPLICAS": str(r.spec.replicas),
            }
        )
        env.pop("NOTIFY_SOCKET", None)  # systemd talks to the supervisor only
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        return env

    def _start(self, r: Replica):
        try:
            r.proc = subprocess.Popen(
                r.spec.argv(),
                env=self._env(r),
                cwd=r.spec.cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            logger.error("worker %s[%d]: cannot start %s: %s", r.name, r.index, r.spec.argv(), e)
            r.proc = None
            self._schedule_restart(r, failed=True, ran_s=0.0)
            return
        r.started = time.monotonic()
        logger.info("worker %s[%d] started (pid %d)", r.name, r.index, r.proc.pid)

    def _schedule_restart(self, r: Replica, failed: bool, ran_s: float):
        policy = r.spec.restart
        if policy == "never" or (policy == "on-failure" and not failed):
            r.next_start = None
            return
        if ran_s < QUICK_FAILURE_S:
            delay = r.backoff_s
            r.backoff_s = min(max(r.backoff_s * 2, 0.001), r.spec.backoff_max_ms / 1000)
        else:
            r.backoff_s = r.spec.backoff_ms / 1000
            delay = r.backoff_s
        r.next_start = time.monotonic() + delay

    def tick(self):
        """Reaps exited replicas and (re)starts those that are due."""
        now = time.monotonic()
        for r in self.replicas.values():
            if r.proc is not None:
                rc = r.proc.poll()
                if rc is None:
                    continue
                r.last_exit = rc
                r.proc = None
                logger.warning(
                    "worker %s[%d] exited with %s", r.name, r.index, f"signal {-rc}" if rc < 0 else f"status {rc}"
                )
                self._schedule_restart(r, failed=rc != 0, ran_s=now - r.started)
                if r.next_start is not None:
                    r.restarts += 1
            if r.proc is None and r.next_start is not None and now >= r.next_start:
                self._start(r)

    def _stop(self, reps: list[Replica]):
        running = [(r, r.proc) for r in reps if r.proc is not None and r.proc.poll() is None]
        for _, proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for r, proc in running:
            try:
                proc.wait(timeout=r.spec.stop_timeout_ms / 1000)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "worker %s[%d] ignored SIGTERM for %d ms: SIGKILL", r.name, r.index, r.spec.stop_timeout_ms
                )
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for r in reps:
            r.proc = None
            r.next_start = None

    def stop_all(self):
        self._stop(list(self.replicas.values()))

    def describe(self) -> list[dict]:
        return [
            {"process": r.name, "replica": r.index, "pid": r.pid, "restarts": r.restarts, "last_exit": r.last_exit}
            for r in self.replicas.values()
        ]
