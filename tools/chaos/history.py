"""history.py — the campaign's history files: one JSONL file per process launch.

Owns: appending events (one os.write per batch on an O_APPEND fd, so a
kill -9 leaves whole lines: what was written before the kill is on disk in
the page cache) and reading them back, dropping a torn last line.
Must never: buffer an acknowledgement in user space after claiming it (a
worker writes an ack line only after the acknowledging call returned, and
the line is in the kernel before the worker acts on it).
"""

import json
import os
import time


class Writer:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def write(self, *events: dict):
        if events:
            os.write(self.fd, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events).encode())

    def event(self, ev: str, **fields):
        self.write({"ev": ev, "t": time.time(), **fields})

    def close(self):
        os.close(self.fd)


def read(path: str):
    """Every whole event in a file; a torn last line (writer killed mid-write) is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def read_dir(run_dir: str):
    """{file stem: [events]} for every history file of a run."""
    hdir = os.path.join(run_dir, "history")
    return {n[:-6]: read(os.path.join(hdir, n)) for n in sorted(os.listdir(hdir)) if n.endswith(".jsonl")}
