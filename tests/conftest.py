"""conftest.py — isolation for every test that touches shared memory.

Owns: the `inst` fixture: a fresh instance name, data dir and shm prefix per
test, a connected Log, and cleanup of every /dev/shm entry with that prefix
and of the instance's persister, supervisor and its workers even when the
test fails or a child process died holding things.

SHMLOG_AUTOSTART=0 for the whole suite: a test's connections work directly
(no background supervisor per test, which would cost a Python process each);
the supervisor's own tests ask for one (inst.start_supervisor, or
connect(autostart=True)).
"""

import multiprocessing
import os
import pickle
import signal
import time
import traceback
import uuid

import subprocess
import sys

import psutil
import pytest

os.environ["SHMLOG_AUTOSTART"] = "0"  # before any connect; children inherit it

import shmlog  # noqa: E402
from shmlog.service import supervisor as _supervisor  # noqa: E402
from shmlog.ipc import daemons

SHM_DIR = "/dev/shm"


def _child_main(fn, path, *args):
    """Child body: run fn, pickle ("ok", result) or ("error", traceback) to path."""
    try:
        status = ("ok", fn(*args))
    except BaseException:
        status = ("error", traceback.format_exc())
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(status, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.rename(tmp, path)


class Instance:
    """What a test (and its child processes) need to reach its own instance."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        tag = uuid.uuid4().hex[:10]
        self.kwargs = dict(
            instance=f"t{tag}", data_dir=str(tmp_path / "data"), shm_prefix=f"shmlogtest-{tag}.", unblock_timeout_ms=100
        )
        self.prefix = self.kwargs["shm_prefix"]
        self.settings = shmlog.config.resolve(self.kwargs["instance"], self.kwargs["data_dir"], self.prefix)
        self.log = shmlog.connect(**self.kwargs)
        self.children = []
        self.supervisors = []

    def connect(self, **overrides):
        return shmlog.connect(**{**self.kwargs, **overrides})

    def process(self, target, *args, **kwargs):
        """A forked child process, killed at teardown if still alive."""
        p = multiprocessing.get_context("fork").Process(target=target, args=args, kwargs=kwargs, daemon=True)
        self.children.append(p)
        return p

    def spawn(self, name, fn, *args):
        """Starts fn(*args) in a child whose result (or traceback) collect() returns."""
        path = str(self.tmp_path / f"{name}.pkl")
        pr = self.process(_child_main, fn, path, *args)
        pr.start()
        return name, pr, path

    def collect(self, children, deadline):
        """Joins every spawned child by the deadline; {name: result}; fails on any error or hang."""
        for _, pr, _ in children:
            pr.join(max(0.0, deadline - time.monotonic()))
        hung = [name for name, pr, _ in children if pr.is_alive()]
        assert not hung, f"children still running at the deadline (killed at teardown): {hung}"
        results = {}
        for name, pr, path in children:
            if not os.path.exists(path):
                pytest.fail(f"child {name} exited with code {pr.exitcode} without a result")
            with open(path, "rb") as f:
                status, res = pickle.load(f)
            os.unlink(path)
            if status != "ok":
                pytest.fail(f"child {name} failed:\n{res}")
            results[name] = res
        return results

    def segments(self):
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(self.prefix))

    def _procs(self, module):
        """Live processes running `python -m <module>` for this instance."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cl = p.info["cmdline"] or []
            if module in cl and self.kwargs["instance"] in cl and self.kwargs["data_dir"] in cl:
                try:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
                except psutil.NoSuchProcess:
                    pass
        return out

    @staticmethod
    def _kill(victims):
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)

    def kill_persister(self):
        """kill -9 of the instance's persister(s), however many were started."""
        self._kill(self._procs("shmlog.service.persister"))

    def start_supervisor(self, config_text=None, env=None, args=(), wait=True, timeout=20.0):
        """`shmlog supervisor` of this instance in the foreground, as our child
        (so a test can SIGTERM or kill -9 it); waits until it answers. Stopped at teardown."""
        cmd = [
            sys.executable,
            "-m",
            "shmlog.service.supervisor",
            "--instance",
            self.kwargs["instance"],
            "--data-dir",
            self.kwargs["data_dir"],
            "--shm-prefix",
            self.prefix,
            *args,
        ]
        if config_text is not None:
            path = self.tmp_path / f"shmlog-{len(self.supervisors)}.toml"
            path.write_text(config_text)
            cmd += ["--config", str(path)]
        out = open(self.tmp_path / "supervisor.out", "ab")
        proc = subprocess.Popen(
            cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        out.close()
        self.supervisors.append(proc)
        if wait:
            deadline = time.monotonic() + timeout
            while daemons.running_pid(self.settings) != proc.pid:
                if proc.poll() is not None:
                    pytest.fail(f"the supervisor exited with {proc.returncode}:\n{self.supervisor_output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the supervisor did not answer within {timeout} s:\n{self.supervisor_output()}")
                time.sleep(0.01)
        return proc

    def supervisor_output(self) -> str:
        try:
            return (self.tmp_path / "supervisor.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop_supervisor(self):
        """Clean stop of the instance's supervisor if one answers; kill -9 of any
        other (and of the workers a killed one left behind)."""
        if not self.supervisors and not os.path.exists(daemons.supervisor_state_path(self.settings)):
            return  # none ever ran for this instance
        try:
            daemons.down(self.settings, timeout=30)
        except Exception:
            pass
        victims = self._procs("shmlog.service.supervisor")
        st = daemons.read_supervisor_state(self.settings)
        pids = [w["pid"] for w in (st.workers if st else []) if w.get("pid")]
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._kill(victims)
        for proc in self.supervisors:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    def drop_shared_memory(self):
        """What a reboot does: every segment of the instance is gone."""
        for n in self.segments():
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except FileNotFoundError:
                pass

    def cleanup(self):
        for p in self.children:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            if p.pid:
                p.join(5)
        self.stop_supervisor()
        self.kill_persister()
        try:
            self.log.close()
        except Exception:
            pass
        self.drop_shared_memory()


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    try:
        yield i
    finally:
        i.cleanup()


TIERS = ("unit", "native", "integration", "service", "kafka")


def pytest_collection_modifyitems(config, items):
    """Every test carries its tier (its folder) as a marker (`pytest -m native`),
    and a root_only test is skipped, saying so, when we are not root."""
    not_root = pytest.mark.skip(reason="root-only: needs root (.ci/run runs as root)")
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if os.geteuid() != 0 and item.get_closest_marker("root_only"):
            item.add_marker(not_root)
        for m in item.iter_markers("conformance"):  # travels to the xdist controller with the report
            item.user_properties.append(("conformance", (m.kwargs["client"], m.kwargs["feature"])))


# ------------------------------------------------------------ conformance table
# Every test marked conformance(client=..., feature=...) is one cell's
# evidence in the README's Kafka client x feature table. With
# $SHMLOG_CONFORMANCE_OUT set, the run's outcomes per (client, feature) are
# written there as JSON at the end (tools/conformance-table renders them).
_conformance: dict = {}


def pytest_runtest_logreport(report):
    cells = [v for k, v in report.user_properties if k == "conformance"]
    if not cells or (report.when != "call" and not (report.failed or report.skipped)):
        return
    outcome = "skipped" if report.skipped else "failed" if report.failed else "passed"
    for client, feature in cells:
        _conformance.setdefault(f"{client}|{feature}", []).append({"test": report.nodeid, "outcome": outcome})


def pytest_sessionfinish(session):
    out = os.environ.get("SHMLOG_CONFORMANCE_OUT")
    if out and not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        import json

        with open(out, "w") as f:
            json.dump(_conformance, f, indent=1, sort_keys=True)
