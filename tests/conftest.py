"""conftest.py — isolation for every test that touches shared memory.

Owns: the `inst` fixture: a fresh instance name, data dir and shm prefix per
test, a connected Log, and cleanup of every /dev/shm entry with that prefix
and of the instance's persister even when the test fails or a child process
died holding things.
"""
import multiprocessing
import os
import pickle
import signal
import time
import traceback
import uuid

import psutil
import pytest

import shmlog

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
        self.kwargs = dict(instance=f"t{tag}", data_dir=str(tmp_path / "data"),
                           shm_prefix=f"shmlogtest-{tag}.", unblock_timeout_ms=100)
        self.prefix = self.kwargs["shm_prefix"]
        self.log = shmlog.connect(**self.kwargs)
        self.children = []

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

    def kill_persister(self):
        """kill -9 of the instance's persister(s), however many were started."""
        victims = [p for p in psutil.process_iter(["cmdline"])
                   if "shmlog.persister" in (p.info["cmdline"] or [])
                   and self.kwargs["instance"] in (p.info["cmdline"] or [])]
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)

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
