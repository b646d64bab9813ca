"""Machine facts recorded with every result: CPU model, cores, kernel, Python, package versions, date,
git commit, load average. Owns: reading them; must never change the machine's state."""

import datetime
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "shmlog",
    "numpy",
    "cffi",
    "msgspec",
    "psutil",
    "pyzmq",
    "faster-fifo",
    "redis",
    "hiredis",
    "iceoryx2",
    "matplotlib",
    "rich",
)


def package_version(pkg):
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _git_head():
    try:
        g = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return g.stdout.strip() if g.returncode == 0 else "no commit"
    except Exception:
        return "unknown"


def facts():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    try:
        mem = next(int(line.split()[1]) << 10 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except Exception:
        mem = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": _git_head(),
        "start_method": "fork",
        "clock": "CLOCK_MONOTONIC (time.monotonic_ns)",
        "packages": {p: package_version(p) for p in PACKAGES},
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
