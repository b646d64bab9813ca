"""kafka/offset_metadata.py — the metadata strings of Kafka offset commits
(OffsetCommit's CommittedMetadata), kept beside shmlog's shared offset table
in <data_dir>/meta/kafka-commit-metadata.msgpack.

Owns: that file (read-merge-write under its flock, replaced atomically and
fsynced, so listeners of one instance share it and it survives restarts) and
the rule that a string belongs to the commit it came with: a row is
(group, topic, topic id, partition, offset, metadata) and is returned only
while the shared table still holds that offset for that topic incarnation
(a later commit of another offset, by any client, native ones included,
leaves it stale: "" is returned and the next write drops it). Rows hold
only non-empty strings, at most METADATA_MAX_CHARS each (Kafka's
offset.metadata.max.bytes), one per committed partition at most.
Must never: hold or decide a committed offset (the shared table does), or
run its file I/O on the event loop (callers use a thread).
"""

import fcntl
import logging
import os
from typing import Annotated

import msgspec

from .. import errors, safefile, storage

METADATA_MAX_CHARS = 4096  # Kafka's offset.metadata.max.bytes (a String's length)
FILE = "kafka-commit-metadata.msgpack"

logger = logging.getLogger("shmlog.kafka")

_Row = tuple[
    str, str, int, Annotated[int, msgspec.Meta(ge=0)], int, str
]  # group, topic, topic id, partition, offset, metadata


class _File(msgspec.Struct):
    version: int
    rows: list[_Row]


class CommitMetadata:
    """{(group, topic, partition): (topic id, offset, metadata)} of one instance."""

    def __init__(self, log_):
        self.log = log_
        self._rows: dict[tuple[str, str, int], tuple[int, int, str]] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of what _rows holds

    def _path(self):
        return os.path.join(self.log.settings.data_dir, "meta", FILE)

    def _load(self):
        """Re-reads the file when another writer replaced it (blocking: call in a thread)."""
        try:
            st = os.stat(self._path())
        except FileNotFoundError:
            self._rows, self._seen = {}, None
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        try:
            f = msgspec.msgpack.decode(safefile.read_bytes(self._path()), type=_File)
        except (msgspec.DecodeError, OSError) as e:
            # it holds metadata strings only, never an offset: keep it aside for the
            # operator and go on without them (OffsetFetch answers "")
            aside = self._path() + ".damaged"
            logger.warning(
                "%s is damaged (%s): moved to %s; Kafka commit metadata starts empty", self._path(), e, aside
            )
            os.replace(self._path(), aside)
            self._rows, self._seen = {}, None
            return
        self._rows = {(g, t, p): (tid, off, md) for g, t, tid, p, off, md in f.rows}
        self._seen = key

    def known(self, group, keys=None) -> bool:
        """Whether any row of group (of these (topic, partition) keys) is held."""
        if keys is None:
            return any(k[0] == group for k in self._rows)
        return any((group, t, p) in self._rows for t, p in keys)

    def get(self, group, topic, partition, topic_id, offset) -> str:
        """The metadata of the commit that stored offset, "" when it is not (or no longer) known."""
        row = self._rows.get((group, topic, partition))
        return row[2] if row is not None and row[:2] == (topic_id, offset) else ""

    def refresh(self):
        """Blocking (a thread): picks up what other listeners wrote."""
        self._load()

    def update(self, group, entries):
        """Blocking (a thread): entries [(topic, partition, topic id, offset, metadata)]
        just committed; drops rows whose commit was replaced (stale) and writes the file
        when anything changed."""
        meta = os.path.dirname(self._path())
        safefile.makedirs(meta)
        fd = safefile.open_rw(os.path.join(meta, FILE + ".lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._load()
            rows = dict(self._rows)
            for topic, p, tid, off, md in entries:
                if md:
                    rows[(group, topic, p)] = (tid, off, md)
                else:
                    rows.pop((group, topic, p), None)
            rows = self._live(rows)
            if rows == self._rows:
                return
            data = [(g, t, tid, p, off, md) for (g, t, p), (tid, off, md) in sorted(rows.items())]
            storage.write_atomically(self._path(), msgspec.msgpack.encode(_File(1, data)))
            st = os.stat(self._path())
            self._rows, self._seen = rows, (st.st_ino, st.st_mtime_ns, st.st_size)
        finally:
            os.close(fd)

    def _live(self, rows):
        """The rows whose offset is still the group's committed offset for that topic incarnation."""
        committed: dict[str, dict] = {}
        out = {}
        for (g, t, p), (tid, off, md) in rows.items():
            if g not in committed:
                try:
                    committed[g] = self.log.committed_offsets(g)
                except errors.ShmlogError:
                    committed[g] = {}
            if committed[g].get((t, p)) != off:
                continue
            try:
                if self.log.topic_handle(t).topic_id != tid:
                    continue
            except errors.ShmlogError:
                continue
            out[(g, t, p)] = (tid, off, md)
        return out
