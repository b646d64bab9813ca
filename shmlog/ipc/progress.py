"""ipc/progress.py — <data_dir>/recovery.json: a restore's progress, written
by whoever restores a control segment and read by `shmlog up`, the
supervisor's launcher and systemd's start-timeout extension.

Owns: the file's shape (RecoveryProgress), writing it atomically at most
every REPORT_S, removing it at the end, reading it tolerantly.
Must never: fail a restore (progress is a courtesy), or trust the file's
content (a damaged one is a warning and "no progress known").
"""

import logging
import os
import time
from typing import Annotated

import msgspec

from .. import errors, safefile

logger = logging.getLogger("shmlog")


class ProgressWriter:
    """<data_dir>/recovery.json while a restore runs ({pid, done, total, topic,
    partition}, in durable partitions), so `shmlog up` can draw a progress bar
    for a large log. Written at most every REPORT_S; removed at the end."""

    REPORT_S = 0.2

    def __init__(self, data_dir):
        self.path = os.path.join(data_dir, "recovery.json")
        self.done = self.total = 0
        self.last = 0.0

    def report(self, topic, partition):
        now = time.monotonic()
        if now - self.last < self.REPORT_S:
            return
        self.last = now
        try:
            safefile.replace(
                self.path,
                msgspec.json.encode(
                    RecoveryProgress(
                        pid=os.getpid(), done=self.done, total=self.total, topic=topic, partition=partition
                    )
                ),
                sync_dir=False,
            )
        except OSError:
            pass  # progress is a courtesy; recovery goes on

    def finish(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class RecoveryProgress(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of <data_dir>/recovery.json: `done` of `total` durable partitions
    restored by process `pid`, now at topic[partition]."""

    pid: Annotated[int, msgspec.Meta(gt=0)]
    done: Annotated[int, msgspec.Meta(ge=0)]
    total: Annotated[int, msgspec.Meta(ge=0)]
    topic: str | None = None
    partition: Annotated[int, msgspec.Meta(ge=0)] | None = None


# path -> the damaged content last warned about (warned once, not per poll)
_damaged_progress_seen: dict[str, object] = {}


def read_recovery_progress(data_dir: str) -> RecoveryProgress | None:
    """What a restore in progress wrote (see ProgressWriter), or None when no
    progress is known: no file, or one that is damaged (not JSON, another shape,
    done > total). The file is advisory (a progress bar, systemd's start timeout
    extension), so a damaged one is a warning, never an error; the restore
    rewrites it whole (rename) at its next report."""
    path = os.path.join(data_dir, "recovery.json")
    try:
        raw = safefile.read_bytes(path)
    except (FileNotFoundError, errors.PermissionDenied):
        return None
    try:
        prog = msgspec.json.decode(raw, type=RecoveryProgress)
        if prog.done > prog.total:
            raise msgspec.ValidationError(f"done {prog.done} > total {prog.total}")
        return prog
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        if _damaged_progress_seen.get(path) != raw:
            _damaged_progress_seen[path] = raw
            logger.warning(
                "ignoring the damaged restore progress file %s (%s): no progress known; "
                "the restore rewrites it as it goes",
                path,
                e,
            )
        return None
