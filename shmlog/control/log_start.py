"""control/log_start.py — log start offsets moved forward on request (Kafka's DeleteRecords).

Owns: the file <data_dir>/meta/log-start/<topic>@<topic id>.json, one per
topic life, {partition: offset}: records below a partition's offset are no
longer readable (readers and describe_topic take max(natural start,
this)). Written atomically (safefile: write, fsync, rename, fsync dir), so a
delete_records that returned survives a crash and a restart; read through a
per-process cache re-validated by the file's mtime and size (one stat per
lookup). A topic's file goes with the topic, and an ephemeral topic's at a
restore (its rings start again at offset 0). Must never: lower an offset
(log start only moves forward), move one past the partition's end, delete a
record file (retention does), or be written without the control lock.
"""

import json
import os

from .. import errors, safefile


def path(data_dir: str, topic: str, topic_id: int) -> str:
    return os.path.join(data_dir, "meta", "log-start", f"{topic}@{topic_id:016x}.json")


def _read(p: str) -> dict[int, int]:
    try:
        raw = safefile.read_bytes(p)
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
        return {int(k): int(v) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise errors.CorruptMetadata(f"{p} is damaged ({e}): move it away to make every record readable") from None


class LogStarts:
    """The log start offsets of one instance's topics, as this process last read them."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._cache: dict[str, tuple[tuple[int, int] | None, dict[int, int]]] = {}

    def of(self, topic: str, topic_id: int) -> dict[int, int]:
        """{partition: offset} moved forward by delete_records ({} for none)."""
        p = path(self.data_dir, topic, topic_id)
        try:
            st = os.stat(p)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        hit = self._cache.get(p)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        offsets = {} if stamp is None else _read(p)
        self._cache[p] = (stamp, offsets)
        return offsets

    def advance(self, topic: str, topic_id: int, offsets: dict[int, int]) -> dict[int, int]:
        """Control lock held: moves the partitions' starts forward to offsets
        (never back); durable on return. Returns every partition's start."""
        p = path(self.data_dir, topic, topic_id)
        have = dict(_read(p))
        for part, off in offsets.items():
            if off > have.get(part, -1):
                have[part] = off
        safefile.makedirs(os.path.dirname(p))
        safefile.replace(p, json.dumps({str(k): v for k, v in sorted(have.items())}).encode())
        self._cache.pop(p, None)
        return have

    def discard(self, topic: str, topic_id: int) -> None:
        """Control lock held: the topic life is gone (deleted, or ephemeral and restored empty)."""
        p = path(self.data_dir, topic, topic_id)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        self._cache.pop(p, None)
