"""The README's first command as a new user runs it: a fresh clone of this
tree, a fresh venv, `pip install .` (not -e: no compiled core in the source
tree), then `shmlog demo`, as the console script and as `python -m shmlog`,
from inside the clone and from elsewhere. Also: a supervisor that cannot
start is reported at once, with its reason, however it fails."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from shmlog import errors
from shmlog.service import supervisor
from shmlog.ipc import daemons

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh_clone(dst) -> str:
    """`git clone` of this worktree, with the working tree's files (committed or
    not, build products excluded) copied over, so the test sees this code."""
    if (
        shutil.which("git") is None
        or not os.path.isdir(os.path.join(ROOT, ".git"))
        and not os.path.isfile(os.path.join(ROOT, ".git"))
    ):
        pytest.skip("not a git checkout")
    clone = os.path.join(dst, "clone")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = os.path.join(ROOT, os.fsdecode(f))
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(clone, os.fsdecode(f))), exist_ok=True)
            shutil.copy2(src, os.path.join(clone, os.fsdecode(f)))
    assert not [n for n in os.listdir(os.path.join(clone, "shmlog")) if n.startswith("_shmlog_c")]
    return clone


@pytest.mark.slow
def test_the_readme_first_command_in_a_fresh_clone_and_venv(inst, tmp_path):
    clone = _fresh_clone(str(tmp_path))
    venv = str(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    py, exe = os.path.join(venv, "bin", "python"), os.path.join(venv, "bin", "shmlog")
    # `pip install .` (its build tools from the index, as for a user); the dependencies come from the system site
    r = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "."], cwd=clone, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHMLOG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        SHMLOG_INSTANCE=inst.kwargs["instance"], SHMLOG_DATA_DIR=inst.kwargs["data_dir"], SHMLOG_SHM_PREFIX=inst.prefix
    )  # autostart on, as a user has it
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    logfile = os.path.join(inst.kwargs["data_dir"], "supervisor.log")
    for how, argv in (("console script", [exe]), ("python -m", [py, "-m", "shmlog"])):
        for cwd in (clone, elsewhere):
            t0 = time.monotonic()
            r = subprocess.run([*argv, "demo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            took = time.monotonic() - t0
            where = "inside the clone" if cwd == clone else "elsewhere"
            assert r.returncode == 0, f"{how} {where}: {r.stdout}{r.stderr}"
            assert "consumer: 1,000,000 records" in r.stdout, f"{how} {where}: {r.stdout}{r.stderr}"
            assert "no supervisor" not in r.stderr, f"{how} {where}: {r.stderr}"
            assert took < 60, f"{how} {where}: the demo took {took:.1f} s"
            # the supervisor it started ran the installed package, not the clone's source tree
            pid = daemons.running_pid(inst.settings)
            assert pid is not None, f"{how} {where}: no supervisor runs after the demo"
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0] == py.encode()
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            r = subprocess.run([exe, "down"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
    with open(logfile, errors="replace") as f:
        text = f.read()
    assert "Error" not in text, text[-3000:]


def test_up_reports_a_supervisor_that_dies_before_it_can_say_why(inst, tmp_path, monkeypatch):
    """A supervisor that cannot even import its package (here: a broken
    shmlog first on PYTHONPATH) is reported at once with its last words, not
    after a 20 s wait."""
    broken = tmp_path / "broken" / "shmlog"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('this shmlog is broken on purpose')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    t0 = time.monotonic()
    with pytest.raises(errors.SupervisorError, match="broken on purpose"):
        daemons.up(inst.settings, timeout=20)
    assert time.monotonic() - t0 < 8


def test_up_reports_a_config_error_at_once_with_its_reason(inst, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[topics.orders]\npartitons = 4\n")
    t0 = time.monotonic()
    with pytest.raises(errors.InvalidConfig, match="partitons"):
        daemons.up(inst.settings, config_path=str(bad), timeout=20)
    assert time.monotonic() - t0 < 8


def test_connect_from_a_source_tree_without_its_core_says_what_to_do(tmp_path):
    """Imported from a source tree that has no compiled core and with no
    installed copy to fall back on: one clear ImportError, not a bare
    ModuleNotFoundError from deep inside."""
    tree = tmp_path / "tree"
    shutil.copytree(
        os.path.join(ROOT, "shmlog"), tree / "shmlog", ignore=shutil.ignore_patterns("_shmlog_c*", "__pycache__")
    )
    r = subprocess.run(
        [sys.executable, "-S", "-c", "import shmlog"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        timeout=60,
    )
    assert r.returncode != 0
    assert "no compiled C core" in r.stderr and "pip install" in r.stderr, r.stderr


def test_racing_ups_get_the_one_supervisor_that_won(inst):
    """Several up() at once: one supervisor wins the instance's lock; the
    others are told AlreadyRunning on their status pipe and wait for it."""
    import threading

    pids, errs = [], []

    def one():
        try:
            pids.append(daemons.up(inst.settings, timeout=60))
        except Exception as e:  # noqa: BLE001 — the test reports it
            errs.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errs and len(pids) == 4 and len(set(pids)) == 1, (pids, errs)
    assert daemons.running_pid(inst.settings) == pids[0]
