"""campaign.py — the nemesis: one scratch instance, its processes, a seeded fault schedule.

Owns: the run directory (history/, logs/, data/ — a small tmpfs mounted on
data/ when mount is permitted), the instance's processes (supervisor with
its persister, a separate Kafka listener, producers, consumers, group
members, a Kafka client), the schedule (random.Random(seed): which fault,
when, against whom, for how long), carrying it out, the quiet end (faults
off, workers stopped, a clean supervisor stop, /dev/shm dropped, a restart
from disk, the read-back), and the cleanup of everything it made.
Must never: judge the outcome (checker.py does, from the histories only),
touch processes or /dev/shm entries of another instance, or leave a mount,
a process or a shm entry behind.

Faults (the event "fault" in history/campaign.jsonl, with its window):
  kill      kill -9 of one process (supervisor, persister, listener, a worker);
            the campaign restarts it (the supervisor restarts its persister)
  stop      SIGSTOP for 0.3-3 s, then SIGCONT
  admin     create / delete / re-create / grow partitions / alter fsync /
            retention (retention_ms 1.5 s, restored later) / temp topics
  admin+kill  an admin request with kill -9 of the supervisor 0-60 ms into it
  reboot    kill -9 of everything, the instance's /dev/shm entries dropped,
            supervisor and workers started again (a new "boot")
  enospc    the data dir's tmpfs filled for 0.5-3 s (ballast file)
  damage    a bit flip or a truncation of a closed segment file of a durable
            partition (the checker then expects a refusal there, never a
            silent loss or a changed record)
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil

from . import history

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHM_DIR = "/dev/shm"

TOPICS = {
    "dur": dict(partitions=2, ring_bytes=1 << 18, persistence="disk", fsync="interval:20", segment_bytes=1 << 16),
    "eph": dict(partitions=2, ring_bytes=1 << 16, persistence="none"),
    "kaf": dict(partitions=1, ring_bytes=1 << 18, persistence="disk", fsync="interval:20", segment_bytes=1 << 16),
}
WEEK_MS = 7 * 86400_000
WEIGHTS = {"kill": 30, "stop": 20, "admin": 16, "admin+kill": 5, "reboot": 4, "enospc": 6, "damage": 5}


class Proc:
    def __init__(self, name, kind, args=None):
        self.name, self.kind, self.args = name, kind, args or {}
        self.popen = None
        self.launch = 0
        self.down_until = 0.0  # restarted by the monitor after this time


class Campaign:
    def __init__(
        self,
        seed: int,
        faults: int,
        duration: float,
        run_dir: str,
        *,
        tmpfs_mb: int = 192,
        kafka: bool = True,
        unblock_ms: int = 500,
        weights: dict | None = None,
        quiet: bool = False,
    ):
        self.seed, self.n_faults, self.duration = seed, faults, duration
        self.rng = random.Random(seed)
        self.run_dir = os.path.abspath(run_dir)
        self.tmpfs_mb = tmpfs_mb
        self.kafka = kafka
        self.unblock_ms = unblock_ms
        self.weights = dict(weights or WEIGHTS)
        self.quiet = quiet
        tag = uuid.UUID(int=random.Random(seed * 7919 + os.getpid()).getrandbits(128)).hex[:10]
        self.instance = f"chaos{tag}"
        self.shm_prefix = f"shmlogchaos-{tag}."
        self.data_dir = os.path.join(self.run_dir, "data")
        self.hdir = os.path.join(self.run_dir, "history")
        self.ldir = os.path.join(self.run_dir, "logs")
        self.boot = 0
        self.procs: dict[str, Proc] = {}
        self.mounted = False
        self.notes = []
        self.admin_busy = threading.Lock()
        self.admin_n = 0
        self.retention_on = set()
        self.temp_topics = []
        self.kport = None
        self.lock = threading.RLock()
        self.rebooting = False
        self.filling = False
        self.h = None

    # ------------------------------------------------------------ setup and teardown

    def env(self):
        return {
            **os.environ,
            "SHMLOG_AUTOSTART": "0",
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }

    def base_args(self):
        return dict(
            instance=self.instance,
            data_dir=self.data_dir,
            shm_prefix=self.shm_prefix,
            unblock_ms=self.unblock_ms,
            boot=self.boot,
        )

    def setup(self):
        if os.path.exists(self.run_dir):
            shutil.rmtree(self.run_dir)
        for d in (self.hdir, self.ldir, self.data_dir):
            os.makedirs(d)
        self.h = history.Writer(os.path.join(self.hdir, "campaign.jsonl"))
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_mb}m,mode=0770", "tmpfs", self.data_dir],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            self.mounted = True
        else:
            self.notes.append(
                f"mount of a tmpfs refused ({r.stderr.strip()}): data dir on the run dir's "
                "filesystem, enospc faults skipped (filling a shared disk is not acceptable)"
            )
            self.weights["enospc"] = 0
        if self.kafka:
            try:
                import kafka  # noqa: F401
            except ImportError:
                self.notes.append("kafka-python not installed: no Kafka client worker")
                self.kafka = False
        self.h.event(
            "setup",
            seed=self.seed,
            faults=self.n_faults,
            duration=self.duration,
            instance=self.instance,
            tmpfs=self.mounted,
            unblock_ms=self.unblock_ms,
            notes=self.notes,
            topics=TOPICS,
        )

    def teardown(self):
        self._kill_instance()
        self._drop_shm()
        if self.mounted:
            subprocess.run(["umount", "-l", self.data_dir], capture_output=True)
            self.mounted = False
        if self.h:
            self.h.close()

    # ------------------------------------------------------------ processes

    def _define(self):
        P = self.procs
        P["supervisor"] = Proc("supervisor", "supervisor")
        if self.kafka:
            P["listener"] = Proc("listener", "listener")
        for i in range(2):
            P[f"producer{i}"] = Proc(f"producer{i}", "producer", dict(topics=["dur", "eph", "dur"]))
        for t in ("dur", "eph", "kaf"):
            P[f"consumer-{t}"] = Proc(f"consumer-{t}", "consumer", dict(topic=t))
        for i in range(2):
            P[f"member-dur{i}"] = Proc(f"member-dur{i}", "member", dict(topic="dur", group="gdur"))
        P["member-kaf0"] = Proc("member-kaf0", "member", dict(topic="kaf", group="gkaf"))
        if self.kafka:
            P["kafka0"] = Proc("kafka0", "kafka", dict(topic="kaf"))

    def _spawn(self, p: Proc):
        p.launch += 1
        logf = open(os.path.join(self.ldir, f"{p.name}.log"), "ab")
        py = sys.executable
        if p.kind == "supervisor":
            cmd = [
                py,
                "-m",
                "shmlog.service.supervisor",
                "--instance",
                self.instance,
                "--data-dir",
                self.data_dir,
                "--shm-prefix",
                self.shm_prefix,
                "--metrics-port",
                "-1",
                "--log-level",
                "WARNING",
            ]
        elif p.kind == "listener":
            cmd = [
                py,
                "-m",
                "shmlog",
                "kafka-listener",
                "--listen",
                f"127.0.0.1:{self.kport}",
                "--instance",
                self.instance,
                "--data-dir",
                self.data_dir,
                "--shm-prefix",
                self.shm_prefix,
            ]
        else:
            wid = f"{p.name}.{self.boot}.{p.launch}"
            a = {
                **self.base_args(),
                **p.args,
                "wid": wid,
                "seed": self.rng.getrandbits(32),
                "port": self.kport,
                "history": os.path.join(self.hdir, f"{wid}.jsonl"),
            }
            cmd = [py, "-m", "tools.chaos.worker", p.kind, json.dumps(a)]
        p.popen = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()
        self.h.event("spawn", name=p.name, kind=p.kind, pid=p.popen.pid, boot=self.boot, launch=p.launch)

    def _alive(self, p: Proc) -> bool:
        return p.popen is not None and p.popen.poll() is None

    def _kill_tree(self, p: Proc):
        if p.popen is None:
            return
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)  # its own session: the supervisor's persister too
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def persister_pid(self):
        sup = self.procs["supervisor"]
        if not self._alive(sup):
            return None
        try:
            for c in psutil.Process(sup.popen.pid).children(recursive=True):
                if "shmlog.service.persister" in c.cmdline():
                    return c.pid
        except psutil.Error:
            pass
        return None

    def _wait_supervisor(self, timeout=30.0) -> bool:
        sock = os.path.join(self.data_dir, "supervisor.json")
        deadline = time.monotonic() + timeout
        pid = self.procs["supervisor"].popen.pid
        while time.monotonic() < deadline:
            try:
                with open(sock) as f:
                    if json.load(f).get("pid") == pid and os.path.exists(os.path.join(self.data_dir, "admin.sock")):
                        return True
            except (OSError, ValueError):
                pass
            if not self._alive(self.procs["supervisor"]):
                return False
            time.sleep(0.05)
        return False

    def _kill_instance(self):
        """kill -9 of every process of this instance, ours or orphaned (a persister
        whose supervisor was killed, an admin child): their command lines name it."""
        victims = []
        for pr in psutil.process_iter(["cmdline"]):
            cl = " ".join(pr.info["cmdline"] or [])
            if self.instance in cl and pr.pid != os.getpid():
                victims.append(pr)
        for pr in victims:
            try:
                pr.send_signal(signal.SIGCONT)
                pr.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=10)
        for p in self.procs.values():
            if p.popen is not None:
                try:
                    p.popen.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def _drop_shm(self):
        for n in os.listdir(SHM_DIR):
            if n.startswith(self.shm_prefix):
                try:
                    os.unlink(os.path.join(SHM_DIR, n))
                except OSError:
                    pass

    def _start_supervisor(self):
        self._spawn(self.procs["supervisor"])
        if not self._wait_supervisor():
            self.h.event("problem", what="supervisor did not come up", boot=self.boot)

    def monitor(self):
        """Restarts dead processes whose down time passed (not during a reboot)."""
        now = time.monotonic()
        with self.lock:
            if self.rebooting:
                return
            for p in self.procs.values():
                if not self._alive(p) and now >= p.down_until:
                    if p.popen is not None:
                        self.h.event("exited", name=p.name, rc=p.popen.returncode, boot=self.boot)
                    self._spawn(p)  # never waits: the loop keeps the schedule

    # ------------------------------------------------------------ admin

    def admin(self, op, topic=None, wait=True, timeout=30.0, **extra):
        """One admin request in a child process (it may hang on a stopped supervisor)."""
        self.admin_n += 1
        a = {
            **self.base_args(),
            "op": op,
            "topic": topic,
            **extra,
            "history": os.path.join(self.hdir, f"admin.{self.admin_n}.jsonl"),
        }
        t0 = time.time()
        logf = open(os.path.join(self.ldir, "admin.log"), "ab")
        pr = subprocess.Popen(
            [sys.executable, "-m", "tools.chaos.worker", "admin", json.dumps(a)],
            cwd=REPO,
            env=self.env(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()

        def finish():
            try:
                pr.wait(timeout)
                ok = True
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait()
                ok = False
            self.h.event(
                "admin-done",
                op=op,
                topic=topic,
                t0=t0,
                n=self.admin_n,
                rc=pr.returncode,
                timed_out=not ok,
                boot=self.boot,
            )

        if wait:
            finish()
        else:
            threading.Thread(target=lambda: (finish(), self.admin_busy.release()), daemon=True).start()
        return pr

    def _ensure(self, topic, tries=6):
        """create_topic until it succeeds (a kill or ENOSPC may fail it): the campaign's
        main topics always come back after a delete."""
        for _ in range(tries):
            pr = self.admin("create", topic, wait=True, config=TOPICS[topic])
            if pr.returncode == 0:
                return True
            time.sleep(0.5)
        return False

    def _admin_op(self, kill_supervisor=False):
        """A random admin operation, in the background (admin_busy held until it ends)."""
        if not self.admin_busy.acquire(blocking=False):
            return None
        r = self.rng
        choice = r.choice(["recreate", "recreate", "grow", "fsync", "retention", "temp", "delete-temp"])
        topic = r.choice(["dur", "eph", "kaf"])
        marker = os.path.join(self.run_dir, f"admin-go.{time.monotonic_ns()}") if kill_supervisor else None
        if choice == "recreate":
            # delete then create: two requests, the second after the first ends
            def both():
                try:
                    self.admin("delete", topic, wait=True, marker=marker)
                    self._ensure(topic)
                finally:
                    self.admin_busy.release()

            threading.Thread(target=both, daemon=True).start()
            desc = {"op": "recreate", "topic": topic}
            if kill_supervisor:
                deadline = time.monotonic() + 15
                while not os.path.exists(marker) and time.monotonic() < deadline:
                    time.sleep(0.002)
        else:
            if choice == "grow":
                desc = {"op": "alter", "topic": "dur", "changes": {"partitions": r.randint(2, 4)}}
            elif choice == "fsync":
                desc = {
                    "op": "alter",
                    "topic": topic if topic != "eph" else "dur",
                    "changes": {"fsync": r.choice(["always", "never", "interval:20", "interval:200"])},
                }
            elif choice == "retention":
                t = r.choice(["dur", "kaf"])
                on = t not in self.retention_on
                (self.retention_on.add if on else self.retention_on.discard)(t)
                desc = {"op": "alter", "topic": t, "changes": {"retention_ms": 1500 if on else WEEK_MS}}
            elif choice == "temp":
                name = f"tmp{self.admin_n}"
                self.temp_topics.append(name)
                desc = {
                    "op": "create",
                    "topic": name,
                    "config": dict(
                        partitions=r.randint(1, 3), ring_bytes=1 << 16, persistence=r.choice(["disk", "none"])
                    ),
                }
            elif self.temp_topics:
                desc = {"op": "delete", "topic": self.temp_topics.pop(0)}
            else:
                desc = {"op": "describe"}
            op = desc.pop("op")
            self.admin(op, wait=False, marker=marker, **desc)
            desc["op"] = op
            if kill_supervisor:
                deadline = time.monotonic() + 15  # the child's start-up is slow on a busy host
                while not os.path.exists(marker) and time.monotonic() < deadline:
                    time.sleep(0.002)
        if kill_supervisor:
            time.sleep(r.uniform(0.0, 0.06))
            sup = self.procs["supervisor"]
            if self._alive(sup):
                sup.popen.send_signal(signal.SIGKILL)
                sup.down_until = time.monotonic() + 0.2
                desc["killed_supervisor"] = True
        return desc

    # ------------------------------------------------------------ faults

    def schedule(self):
        """The seeded plan: (time, kind) pairs; targets and durations are drawn when each fires."""
        r = random.Random(self.seed)
        kinds = [k for k, w in self.weights.items() if w > 0]
        ws = [self.weights[k] for k in kinds]
        lo, hi = min(3.0, self.duration * 0.2), max(self.duration - 1.0, 1.5)
        times = sorted(r.uniform(lo, hi) for _ in range(self.n_faults))
        return [(t, r.choices(kinds, ws)[0]) for t in times]

    def inject(self, kind):
        r = self.rng
        t0 = time.time()
        ev = {"kind": kind, "boot": self.boot}
        if kind in ("kill", "stop"):
            names = sorted(self.procs) + ["persister"]
            name = r.choice(names)
            pid = (
                self.persister_pid()
                if name == "persister"
                else (self.procs[name].popen.pid if self._alive(self.procs[name]) else None)
            )
            if pid is None:
                return None
            ev.update(target=name, pid=pid)
            if kind == "kill":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    return None
                if name != "persister":
                    self.procs[name].down_until = time.monotonic() + r.uniform(0.05, 1.0)
                ev["t1"] = t0
            else:
                d = r.uniform(0.3, 3.0)
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    return None
                threading.Timer(d, self._cont, (pid,)).start()
                ev["t1"] = t0 + d
        elif kind in ("admin", "admin+kill"):
            desc = self._admin_op(kill_supervisor=kind == "admin+kill")
            if desc is None:
                return None
            ev.update(desc)
            ev["t1"] = time.time()
            if kind == "admin+kill" and r.random() < 0.5:
                # and a reboot once the request ended: what the control segment and the
                # catalog disagree on shows when the instance is restored from disk
                if self.admin_busy.acquire(timeout=40):
                    self.admin_busy.release()
                    self.h.event("fault", t0=ev["t1"], **{**ev, "kind": "admin+kill"}, then="reboot")
                    kind = ev["kind"] = "reboot"
                    t0 = time.time()
                    self.reboot()
                    ev["t1"] = time.time()
                    ev["boot"] = self.boot
        elif kind == "reboot":
            if self.admin_busy.locked():
                return None
            self.reboot()
            ev["t1"] = time.time()
            ev["boot"] = self.boot
        elif kind == "enospc":
            if self.filling:
                return None
            d = r.uniform(0.5, 3.0)
            self.filling = True
            threading.Thread(target=self._fill, args=(d,), daemon=True).start()
            ev["t1"] = t0 + d + 0.5
        elif kind == "damage":
            done = self._damage()
            if done is None:
                return None
            ev.update(done)
            ev["t1"] = time.time()
        self.h.event("fault", t0=t0, **ev)
        return ev

    def _cont(self, pid):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def reboot(self):
        with self.lock:
            self.rebooting = True
            self._kill_instance()
            self._drop_shm()
            self.boot += 1
            self.h.event("reboot", boot=self.boot)
            self._start_supervisor()
            self.admin("describe", wait=True)
            for p in self.procs.values():
                if p.kind != "supervisor":
                    self._spawn(p)
            self.rebooting = False

    def _fill(self, seconds):
        """The tmpfs filled to the last byte for `seconds` (fallocate, then writes until ENOSPC)."""
        ballast = os.path.join(self.data_dir, "ballast")
        try:
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                st = os.statvfs(self.data_dir)
                try:
                    os.posix_fallocate(fd, 0, max(st.f_bavail * st.f_frsize - 4096, 4096))
                except OSError:
                    pass
                os.lseek(fd, 0, os.SEEK_END)
                try:
                    while True:
                        os.write(fd, b"\0" * 4096)
                except OSError:
                    pass  # ENOSPC: the tmpfs is full
            finally:
                os.close(fd)
            time.sleep(seconds)
        finally:
            try:
                os.unlink(ballast)
            except FileNotFoundError:
                pass
            self.filling = False

    def _damage(self):
        r = self.rng
        cands = []
        tdir = os.path.join(self.data_dir, "topics")
        for root, _dirs, files in os.walk(tdir):
            logs = sorted((int(f[:-4]), f) for f in files if f.endswith(".log") and f[:-4].isdigit())
            for (base, f), (nxt, _) in zip(logs, logs[1:]):  # closed segments only (not the last)
                cands.append((os.path.join(root, f), base, nxt))
        if not cands:
            return None
        path, base, nxt = r.choice(sorted(cands))
        rel = os.path.relpath(path, tdir).split(os.sep)
        try:
            size = os.path.getsize(path)
            if size < 128:
                return None
            if r.random() < 0.6:
                pos = r.randrange(64, size)
                with open(path, "r+b") as f:
                    f.seek(pos)
                    b = f.read(1)[0]
                    f.seek(pos)
                    f.write(bytes([b ^ (1 << r.randrange(8))]))
                how = "bitflip"
            else:
                pos = r.randrange(64, size)
                os.truncate(path, pos)
                how = "truncate"
        except OSError:
            return None
        topic = rel[0].rpartition("@")[0] or rel[0]  # topics/<topic>@<id>/<p>/
        return {"how": how, "topic": topic, "p": int(rel[1]), "base": base, "next": nxt, "pos": pos, "size": size}

    # ------------------------------------------------------------ the run

    def run(self):
        self.setup()
        try:
            self._define()
            with socket_port() as port:
                self.kport = port
            self._start_supervisor()
            self.admin("batch", ops=[{"op": "create", "topic": t, "config": c} for t, c in TOPICS.items()])
            if self.kafka:
                self._spawn(self.procs["listener"])
                time.sleep(0.5)
            for p in self.procs.values():
                if p.popen is None:
                    self._spawn(p)
            self.h.event("faults-on")
            start = time.monotonic()
            plan = self.schedule()
            i = 0
            while True:
                el = time.monotonic() - start
                if el >= self.duration and i >= len(plan):
                    break
                while i < len(plan) and plan[i][0] <= el:
                    self.inject(plan[i][1])
                    i += 1
                    self.monitor()
                self.monitor()
                if not self.quiet and i % 50 == 0 and i:
                    pass
                time.sleep(0.02)
            self.h.event("faults-off")
            self.quiesce()
        finally:
            self.teardown()

    def quiesce(self):
        """Everything continued and running, a short drain, workers stopped,
        a clean supervisor stop, /dev/shm dropped, a restart from disk, the read-back."""
        for p in self.procs.values():
            if self._alive(p):
                try:
                    os.killpg(p.popen.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.admin_busy.acquire(timeout=120)
        deadline = time.monotonic() + 10
        while self.filling and time.monotonic() < deadline:
            time.sleep(0.05)
        # retention back to a week, and every main topic there (a failed re-create leaves one missing)
        self.admin(
            "batch",
            ops=[{"op": "alter", "topic": t, "changes": {"retention_ms": WEEK_MS}} for t in sorted(self.retention_on)]
            + [{"op": "ensure", "topic": t, "config": c} for t, c in TOPICS.items()],
        )
        for p in self.procs.values():
            p.down_until = 0
        self.monitor()
        time.sleep(2.0)  # consumers catch up
        workers = [p for p in self.procs.values() if p.kind not in ("supervisor", "listener")]
        for p in workers + [self.procs.get("listener")]:
            if p is not None and self._alive(p):
                p.popen.send_signal(signal.SIGTERM)
        for p in workers + [self.procs.get("listener")]:
            if p is None:
                continue
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                self._kill_tree(p)
        sup = self.procs["supervisor"]
        with self.lock:
            self.rebooting = True
        if not self._alive(sup):
            self._spawn(sup)
        self._wait_supervisor(60)  # a SIGTERM before its handler is installed is no clean stop
        clean = False
        if self._alive(sup):
            sup.popen.send_signal(signal.SIGTERM)
            try:
                clean = sup.popen.wait(60) == 0
            except subprocess.TimeoutExpired:
                pass
        self._kill_instance()
        self.h.event("final-stop", clean=clean, boot=self.boot)
        self._drop_shm()
        self.boot += 1
        self.h.event("reboot", boot=self.boot, final=True)
        self._start_supervisor()
        a = {**self.base_args(), "history": os.path.join(self.hdir, "readback.jsonl")}
        r = subprocess.run(
            [sys.executable, "-m", "tools.chaos.worker", "readback", json.dumps(a)],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.h.event("readback-done", rc=r.returncode, stderr=r.stderr[-2000:])
        if r.returncode:
            self.h.event("problem", what="read-back failed", stderr=r.stderr[-2000:])


class socket_port:
    """A free loopback port for the Kafka listener (bound, read, released)."""

    def __enter__(self):
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()
