"""service/supervisor.py — one instance's supervisor: `shmlog supervisor`, `shmlog up` / `down`.

Owns: the instance for as long as it runs (an flock on
<data_dir>/supervisor.lock keeps a second supervisor out): recovery at start
(attaching the control segment restores it from the data dir when it is
new), the persister as its child (restarted when it dies), sealing the
half-done writes of dead producers, reaping dead or timed-out group
members (their groups rebalance) every 100 ms and snapshotting committed
offsets every second, the declared
topics and workers of its config, the admin socket (the one writer of topic
metadata), the metrics endpoint, systemd's notify protocol, and the clean
stop on SIGTERM (workers stopped, everything committed written and fsynced,
state marked clean). SIGHUP reloads the config file.
Must never: sit in the data path (producers and consumers never wait for it:
if it dies they go on, and a new supervisor adopts the running instance), or
block its loop on a client.

State file <data_dir>/supervisor.json: pid, admin socket, metrics port,
worker pids, and whether the last supervisor stopped cleanly.
"""

import argparse
import fcntl
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any

import msgspec

from .. import config, errors, liveness, permissions, safefile
from ..ipc import admin, daemons, launch
from .. import kafka
from ..kafka.cli import Running, parse_listen
from . import configfile, notify
from .metrics import InstanceCollector, MetricsServer
from .workers import Workers
from ..control.plane import ControlPlane
from ..client.log import Log
from ..ipc.progress import read_recovery_progress

logger = logging.getLogger("shmlog.supervisor")

TICK_S = 0.1  # sealing, group reaping, persister and worker checks
SLOW_TICK_S = 1.0  # offsets snapshot, metrics rates, STATUS, control-segment check
PERSISTER_RESTART_S = 1.0  # at most one persister start per second
EXIT_ALREADY_RUNNING = 3


class Supervisor:
    def __init__(self, settings: config.Settings, cfg: configfile.ServiceConfig | None = None):
        self.settings = settings
        self.cfg = cfg or configfile.ServiceConfig()
        self.plane: Any = None  # the ControlPlane, once started (Any: None only before start())
        self.lock = threading.Lock()  # the loop and the metrics thread both read the instance
        self.lock_fd: int | None = None
        self.admin: admin.Server | None = None
        self.metrics: MetricsServer | None = None
        self.kafka: Running | None = None  # the Kafka listener and its own Log
        self.kafka_log: Log | None = None
        self.collector: InstanceCollector | None = None
        self.workers = Workers(settings)
        self.persister_proc: Any = None  # subprocess.Popen while one runs
        self.persister_started = 0
        self.persister_restarts = 0
        self.next_persister_start = 0.0
        self.stopping = False
        self.failed_duties: set[tuple[str, str]] = set()  # (duty, exception type) already logged
        self.offsets_seq: int | None = None  # commit sequence of the last offsets snapshot
        self.reload_wanted = False
        self.ctl_ino: int | None = None
        self.gid: int | None = None
        self.state: Any = None  # daemons.SupervisorState once started

    # ------------------------------------------------------------ start

    def start(self):
        s = self.settings
        os.umask(permissions.FILE_UMASK)
        safefile.makedirs(s.data_dir)
        self._take_lock()
        permissions.prepare_data_dir(s.data_dir, self.cfg.group)
        self.gid = permissions.instance_gid(s.data_dir)
        prev = daemons.read_supervisor_state(s)
        if prev is not None and not prev.clean:
            logger.warning("the previous supervisor (pid %d) did not stop cleanly; recovering", prev.pid)
        self._attach()
        permissions.adopt_segments(s.segment_glob_prefix, self.gid)
        self._apply_topics(self.cfg)
        self.admin = admin.Server(s, self._handlers(), self.gid, self.lock)
        if self.cfg.metrics_port >= 0:
            self.collector = InstanceCollector(self)
            self.metrics = MetricsServer(self.collector, self.cfg.metrics_port)
        self.ensure_persister(wait=True)
        self.start_kafka()
        self.workers.apply(self.cfg.processes)
        self.state = daemons.SupervisorState(
            pid=os.getpid(),
            instance=s.instance,
            data_dir=s.data_dir,
            shm_prefix=s.shm_prefix,
            admin_socket=self.admin.path,
            metrics_port=self.metrics.port if self.metrics else None,
            kafka_port=self.kafka.port if self.kafka else None,
            kafka_host=self.kafka.host if self.kafka else None,
            config=self.cfg.path,
            started_ms=int(time.time() * 1000),
            workers=self.workers.describe(),
        )
        daemons.write_supervisor_state(s, self.state)
        logger.info(
            "supervising instance %s (data dir %s, admin %s, metrics %s)",
            s.instance,
            s.data_dir,
            self.admin.path,
            f"127.0.0.1:{self.metrics.port}" if self.metrics else "off",
        )

    def start_kafka(self):
        """[kafka] listen: the listener runs on its own thread with its own
        connection (its topic changes reach us through the admin socket, like
        any client's)."""
        k = self.cfg.kafka
        if not k.listen:
            return
        host, port = parse_listen(k.listen)
        s = self.settings
        self.kafka_log = Log(s, unblock_timeout_ms=self.cfg.unblock_timeout_ms, start_persister=False)
        try:
            self.kafka = kafka.start(self.kafka_log, host, port, **k.options())
        except BaseException:
            self.kafka_log.close()
            self.kafka_log = None
            raise
        logger.info("Kafka listener on %s:%d", self.kafka.host, self.kafka.port)

    def stop_kafka(self):
        if self.kafka is not None:
            self.kafka.stop()  # before its Log closes: its waker sleeps on ring memory
            self.kafka = None
        if self.kafka_log is not None:
            self.kafka_log.close()
            self.kafka_log = None

    def _take_lock(self):
        p = daemons.supervisor_lock_path(self.settings)
        fd = safefile.open_rw(p)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            st = daemons.read_supervisor_state(self.settings)
            raise errors.AlreadyRunning(
                f"another supervisor{f' (pid {st.pid})' if st else ''} holds instance "
                f"{self.settings.instance!r} (data dir {self.settings.data_dir}); stop it first "
                "(`shmlog down`)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.lock_fd = fd

    def _attach(self):
        """Attaches the control segment, restoring it from the data dir when it is new."""
        if self.plane is not None:
            self.plane.close()
        self.plane = ControlPlane(self.settings, unblock_timeout_ms=self.cfg.unblock_timeout_ms)
        self.ctl_ino = self._ctl_ino()

    def _ctl_ino(self) -> int | None:
        try:
            return os.stat(permissions.shm_path(self.settings.ctl_name)).st_ino
        except FileNotFoundError:
            return None

    def _apply_topics(self, cfg: configfile.ServiceConfig):
        """Declared topics: created if absent, altered if changed, never deleted."""
        for name, want in cfg.topic_configs().items():
            try:
                have = self.plane.describe_topic(name).config
            except errors.UnknownTopicOrPartition:
                self.plane.create_topic(name, **msgspec.structs.asdict(want))
                logger.info("created declared topic %r", name)
                continue
            fixed = [k for k in ("ring_bytes", "persistence") if getattr(have, k) != getattr(want, k)]
            if want.partitions < have.partitions:
                fixed.append("partitions (can only grow)")
            if fixed:
                logger.warning(
                    "topic %r: cannot change %s of an existing topic (delete and recreate it)", name, ", ".join(fixed)
                )
            changes = {
                k: getattr(want, k)
                for k in ControlPlane.ALTERABLE
                if getattr(have, k) != getattr(want, k)
                and not (k == "partitions" and want.partitions < have.partitions)
            }
            if changes:
                self.plane.alter_topic(name, **changes)
                logger.info("altered declared topic %r: %s", name, changes)

    # ------------------------------------------------------------ admin requests

    def _handlers(self) -> dict:
        return {
            "ping": lambda: {"pid": os.getpid(), "instance": self.settings.instance},
            "status": self._status,
            "create_topic": self._create_topic,
            "delete_topic": self._delete_topic,
            "alter_topic": self._alter_topic,
            "ensure_persister": lambda: self.ensure_persister(wait=True),
            "reload": self._reload_now,
            "shutdown": self._request_stop,
        }

    def _create_topic(self, name: str, config: dict):
        self.plane.create_topic(name, **config)
        self.ensure_persister(wait=True)

    def _delete_topic(self, name: str):
        self.plane.delete_topic(name)

    def _alter_topic(self, name: str, changes: dict):
        self.plane.alter_topic(name, **changes)
        self.ensure_persister(wait=True)

    def _reload_now(self):
        self.reload()
        return None

    def _request_stop(self):
        self.stopping = True

    def _status(self) -> dict:
        return {
            "pid": os.getpid(),
            "instance": self.settings.instance,
            "data_dir": self.settings.data_dir,
            "topics": self.plane.list_topics(),
            "persister_pid": daemons.persister_pid(self.settings.data_dir)
            if daemons.persister_running(self.settings.data_dir)
            else None,
            "persister_restarts": self.persister_restarts,
            "metrics_port": self.metrics.port if self.metrics else None,
            "workers": self.workers.describe(),
        }

    # ------------------------------------------------------------ persister

    def ensure_persister(self, wait: bool = False):
        """The persister runs while the instance has durable topics: our child,
        or one a client started before we came (adopted as it is)."""
        d = self.settings.data_dir
        if self.persister_proc is not None:
            if self.persister_proc.poll() is None:
                return
            logger.warning(
                "the persister (pid %d) exited with %s", self.persister_proc.pid, self.persister_proc.returncode
            )
            self.persister_proc = None
        if not self.plane.has_durable() or daemons.persister_running(d):
            return
        now = time.monotonic()
        if now < self.next_persister_start and not wait:
            return
        self.next_persister_start = now + PERSISTER_RESTART_S
        if self.persister_started:
            self.persister_restarts += 1
        self.persister_started += 1
        # without wait, the next tick sees it running or polls its exit
        started = daemons.start_persister(self.settings, wait=wait)
        started.close()
        self.persister_proc = started.proc
        if wait and self.persister_proc.poll() is not None:  # exited at once: another persister holds the lock
            self.persister_proc = None

    def stop_persister(self):
        """Everything committed is written and fsynced: the persister does it on SIGTERM."""
        d = self.settings.data_dir
        if self.plane.has_durable() and not daemons.persister_running(d):
            self.ensure_persister(wait=True)  # it died: a last one writes what is left
        self._stop_persister_process()

    def _stop_persister_process(self):
        proc, self.persister_proc = self.persister_proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # our child
            proc.wait(120)
        else:
            daemons.stop_persister(self.settings, timeout=120)  # one we adopted

    # ------------------------------------------------------------ loop

    def seal_dead_writers(self, free_slots: bool):
        prefix = self.plane.token_prefix_c
        for name in self.plane.list_topics():
            try:
                h = self.plane.topic_handle(name)
                for p in range(h.partitions):
                    n = self.plane.ring(h, p, writable=True).seal_dead(prefix, free_slots)
                    if n > 0:
                        logger.warning("%s[%d]: sealed %d write(s) of dead producers", name, p, n)
            except (errors.UnknownTopicOrPartition, errors.PermissionDenied):
                continue

    def _duty(self, fn, *args):
        """One duty of the loop: a failure is logged (once per kind), never fatal."""
        try:
            fn(*args)
        except Exception as e:
            key = (fn.__name__, type(e).__name__)
            if key not in self.failed_duties:
                self.failed_duties.add(key)
                logger.exception("%s failed (it is retried; repeats of this error are not logged)", fn.__name__)

    def snapshot_offsets(self):
        """Committed offsets reach the disk within a second of a commit (the persister does it too)."""
        self.offsets_seq = self.plane.snapshot_offsets(self.offsets_seq)

    def expire_transactions(self):
        """Aborts transactions whose producer died or whose timeout passed
        (control/transactions.py); one stat when none is open."""
        for tid in self.plane.transactions.expire():
            logger.warning("transaction of %r aborted: its producer died or its timeout passed", tid)

    def tick(self):
        """The 100 ms duties."""
        self._duty(self.seal_dead_writers, False)
        self._duty(self.expire_transactions)
        self._duty(self.plane.reap_groups)
        self._duty(self.ensure_persister)
        self._duty(self.workers.tick)

    def slow_tick(self):
        """The once-a-second duties."""
        self._duty(self.seal_dead_writers, True)
        self._duty(self.snapshot_offsets)
        if self.collector is not None:
            self._duty(self.collector.sample)
        self._duty(liveness.sweep_dead, self.plane.token_prefix)
        workers = self.workers.describe()
        if workers != self.state.workers:
            self.state.workers = workers
            daemons.write_supervisor_state(self.settings, self.state)
        up = sum(1 for w in workers if w["pid"])
        notify.notify(
            f"STATUS={len(self.plane.list_topics())} topics, persister "
            f"{'up' if daemons.persister_running(self.settings.data_dir) else 'idle'}, "
            f"{up}/{len(workers)} workers up"
        )

    def instance_gone(self) -> bool:
        return not os.path.isdir(self.settings.data_dir)

    def run(self):
        sel = selectors.DefaultSelector()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def on_term(*_):
            self.stopping = True

        def on_hup(*_):
            self.reload_wanted = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        server = self.admin
        assert server is not None, "run() after start()"
        sel.register(server, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        wd = notify.watchdog_period_s()
        notify.notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=supervising {self.settings.instance}")
        now = time.monotonic()
        next_tick, next_slow, next_wd = now, now, now
        try:
            while not self.stopping:
                now = time.monotonic()
                if wd is not None and now >= next_wd:
                    notify.notify("WATCHDOG=1")
                    next_wd = now + wd
                if self.reload_wanted:
                    self.reload_wanted = False
                    with self.lock:
                        self.reload()
                if now >= next_tick:
                    with self.lock:
                        self.tick()
                    next_tick = now + TICK_S
                if now >= next_slow:
                    if self.instance_gone():
                        logger.warning("the data dir %s is gone; stopping", self.settings.data_dir)
                        break
                    with self.lock:
                        if self._ctl_ino() != self.ctl_ino:
                            logger.warning("the control segment was removed or replaced; re-attaching")
                            self._stop_persister_process()  # its rings are gone
                            self._attach()
                        self.slow_tick()
                    next_slow = now + SLOW_TICK_S
                due = min(next_tick, next_slow, next_wd if wd is not None else next_slow)
                for key, _ in sel.select(max(0.0, due - time.monotonic())):
                    if key.fileobj is wake_r:
                        try:
                            while wake_r.recv(64):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        while server.serve_one(logger):  # accepts only; each client has its thread
                            pass
        finally:
            signal.set_wakeup_fd(old_fd)
            sel.close()
            wake_r.close()
            wake_w.close()
            self.shutdown()

    def reload(self):
        if self.cfg.path is None:
            logger.info("SIGHUP: no config file to reload")
            return
        try:
            cfg = configfile.load(self.cfg.path)
        except errors.ShmlogError as e:
            logger.error("SIGHUP: config not reloaded: %s", e)
            return
        if cfg.settings() != self.settings:
            logger.warning("SIGHUP: instance, data_dir and shm_prefix changes need a restart; ignored")
        old_kafka = self.cfg.kafka
        self.cfg = cfg
        try:
            self._apply_topics(cfg)
        except errors.ShmlogError as e:
            logger.error("SIGHUP: declared topics: %s", e)
        self.workers.apply(cfg.processes)
        if cfg.kafka != old_kafka:
            self.stop_kafka()
            try:
                self.start_kafka()
            except (errors.ShmlogError, OSError) as e:
                logger.error("SIGHUP: Kafka listener: %s", e)
            if self.state is not None:
                self.state.kafka_port = self.kafka.port if self.kafka else None
                self.state.kafka_host = self.kafka.host if self.kafka else None
                daemons.write_supervisor_state(self.settings, self.state)
        logger.info("SIGHUP: reloaded %s", cfg.path)

    def shutdown_partial(self):
        """start() failed: let go of what it took, touch nothing else."""
        self.stop_kafka()
        self.workers.stop_all()
        for x in (self.admin, self.metrics, self.plane):
            if x is not None:
                try:
                    x.close()
                except Exception:
                    pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def shutdown(self):
        """SIGTERM: workers stop, everything committed is written and fsynced, state marked clean."""
        notify.notify("STOPPING=1", "STATUS=stopping")
        logger.info("stopping")
        clean = False
        try:
            self.stop_kafka()
            self.workers.stop_all()
            if not self.instance_gone():
                with self.lock:
                    self.stop_persister()
                    self.plane.snapshot_offsets()
                clean = True
        finally:
            if self.admin is not None:
                self.admin.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.state is not None and not self.instance_gone():
                self.state.clean = clean
                self.state.stopped_ms = int(time.time() * 1000)
                self.state.workers = self.workers.describe()
                daemons.write_supervisor_state(self.settings, self.state)
            if self.plane is not None:
                self.plane.close()
            if self.lock_fd is not None:
                os.close(self.lock_fd)
        logger.info("stopped %s", "cleanly" if clean else "without a final flush")


# ------------------------------------------------------------ entry point


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="shmlog supervisor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the supervisor of one shmlog instance in the foreground (what the systemd unit runs).",
        epilog="examples:\n"
        "  shmlog supervisor                                  # instance from $SHMLOG_INSTANCE or 'default'\n"
        "  shmlog supervisor --config /etc/shmlog/shmlog.toml # declared topics and workers\n"
        "  shmlog supervisor --instance dev --metrics-port 9464\n"
        "  shmlog supervisor --kafka-listen 127.0.0.1:9092      # also serve Kafka clients\n"
        "signals: SIGTERM/SIGINT stop cleanly (everything committed fsynced), SIGHUP reloads the config.\n"
        "exit status: 0 stopped, 1 failed to start, 3 another supervisor holds the instance.",
    )
    ap.add_argument("--config", help="service config file (TOML)")
    ap.add_argument("--instance")
    ap.add_argument("--data-dir")
    ap.add_argument("--shm-prefix")
    ap.add_argument("--metrics-port", type=int, help="override the config's metrics_port (-1 = off)")
    ap.add_argument(
        "--kafka-listen",
        metavar="HOST:PORT",
        help="run the Kafka wire-protocol listener (overrides the config's [kafka] listen)",
    )
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s"
    )
    status = launch.StatusPipe.from_environment()  # whoever started us (up()) learns how it went
    status.send("starting", pid=os.getpid())
    try:
        cfg = configfile.load(args.config) if args.config else configfile.ServiceConfig()
        if args.metrics_port is not None:
            cfg = msgspec.structs.replace(cfg, metrics_port=args.metrics_port)
        if args.kafka_listen is not None:
            cfg = configfile.validate(
                msgspec.structs.replace(cfg, kafka=msgspec.structs.replace(cfg.kafka, listen=args.kafka_listen)),
                "--kafka-listen",
            )
        settings = cfg.settings(args.instance, args.data_dir, args.shm_prefix)
        sup = Supervisor(settings, cfg)
        try:
            with StartupProgress(settings.data_dir, status):
                sup.start()
        except BaseException:
            sup.shutdown_partial()
            raise
    except errors.AlreadyRunning as e:
        logger.error("FATAL AlreadyRunning: %s", e)
        status.send("failed", error="AlreadyRunning", message=str(e))
        return EXIT_ALREADY_RUNNING
    except (errors.ShmlogError, OSError) as e:
        logger.error("FATAL %s", e)
        status.send(
            "failed",
            error=type(e).__name__
            if isinstance(e, errors.ShmlogError)
            else "PermissionDenied"
            if isinstance(e, PermissionError)
            else "SupervisorError",
            message=str(e),
        )
        return 1
    except Exception as e:
        logger.exception("FATAL unexpected error during start-up")
        status.send("failed", error="SupervisorError", message=f"unexpected error during start-up: {e!r}")
        return 1
    st = sup.state
    status.send(
        "ready", pid=os.getpid(), admin_socket=st.admin_socket, metrics_port=st.metrics_port, kafka_port=st.kafka_port
    )
    status.close()
    sup.run()
    return 0


class StartupProgress:
    """While start() runs (a restore of a large log can take minutes): the
    restore's progress (<data_dir>/recovery.json) goes to the launcher's status
    pipe and to systemd, whose start timeout is extended by EXTEND_S each time
    the restore moved within the last launch.PROGRESS_GRACE_S: a long recovery
    is not killed, a hung one still times out."""

    EVERY_S = 0.5
    EXTEND_S = 30

    def __init__(self, data_dir: str, status: launch.StatusPipe):
        self.data_dir, self.status = data_dir, status
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="startup-progress", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(5)

    def _run(self):
        last, moved = None, time.monotonic()
        while not self.done.wait(self.EVERY_S):
            prog = read_recovery_progress(self.data_dir)
            if not prog or prog.pid != os.getpid():
                continue
            now = time.monotonic()
            if prog != last:
                last, moved = prog, now
                self.status.send(
                    "recovering", done=prog.done, total=prog.total, topic=prog.topic, partition=prog.partition
                )
            if now - moved <= launch.PROGRESS_GRACE_S:
                notify.notify(
                    f"EXTEND_TIMEOUT_USEC={self.EXTEND_S * 1_000_000}",
                    f"STATUS=recovering: {prog.done} of {prog.total} durable partitions",
                )


if __name__ == "__main__":
    sys.exit(main())
