"""storage/layout.py — where a partition's files live: the data dir's topic
and partition directories, their partition.metadata, the trash, and atomic
file replacement.

Owns: the directory naming (<data_dir>/topics/<topic>@<id>/<partition>/),
checking that a directory is the topic life it claims, listing directories
(skipping what is not ours, with a warning), discarding a topic's
directories through the trash.
Must never: open a segment file or know a frame's layout (segment.py,
writer.py and recovery.py do).
"""

import logging
import os
import shutil

from .. import errors, safefile

logger = logging.getLogger("shmlog.storage")

# ------------------------------------------------------------ directory layout (topic generations)
#
# <data_dir>/topics/<topic>@<id>/<partition>/  one directory per partition of
# one LIFE of a topic: <id> is the catalog's 64-bit topic id in 16 hex digits
# ('@' is not a topic-name character, so the split is unambiguous), and the
# directory's partition.metadata repeats it. A topic deleted and re-created
# gets a new id, hence new directories: nothing written for one life (a late
# persister, a reader) can land in or be read from another's. Deletion
# renames the topic directory into <data_dir>/trash/ (one atomic rename) and
# removes it there, so a half-removed directory is never under topics/.
# Files that are not ours (a stray file, an editor's backup) are skipped with
# a warning wherever directories are listed; they never break anything.

PARTITION_METADATA = "partition.metadata"


def topic_dir(data_dir: str, topic: str, topic_id: int) -> str:
    return os.path.join(data_dir, "topics", f"{topic}@{topic_id:016x}")


def partition_dir(data_dir: str, topic: str, partition: int, topic_id: int) -> str:
    return os.path.join(topic_dir(data_dir, topic, topic_id), str(partition))


def _metadata_text(topic: str, topic_id: int, partition: int) -> bytes:
    return f"version: 0\ntopic: {topic}\ntopic_id: {topic_id:016x}\npartition: {partition}\n".encode()


def make_partition_dir(data_dir: str, topic: str, partition: int, topic_id: int) -> str:
    """Creates (if missing) one partition's directory with its partition.metadata,
    durably (the directory entries fsynced). Never empties an existing one."""
    d = partition_dir(data_dir, topic, partition, topic_id)
    safefile.makedirs(d)
    meta = os.path.join(d, PARTITION_METADATA)
    if not os.path.exists(meta):
        write_atomically(meta, _metadata_text(topic, topic_id, partition))
        fsync_dir(os.path.dirname(d))
        fsync_dir(os.path.dirname(os.path.dirname(d)))
    return d


def check_partition_metadata(dir_fd: int, path: str, topic_id: int):
    """Raises CorruptMetadata unless the directory open as dir_fd is topic_id's
    (a directory without the file, written before it existed, passes)."""
    try:
        fd = os.open(PARTITION_METADATA, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        text = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "topic_id" and v.strip() == f"{topic_id:016x}":
            return
    raise errors.CorruptMetadata(
        f"{path}/{PARTITION_METADATA} does not name topic id {topic_id:016x}: this directory belongs to "
        "another life of the topic; refusing to write into it (move it away)"
    )


def parse_topic_dir(entry: str):
    """(topic, topic_id) of a topics/ entry name, or None when it is not one."""
    name, at, tid = entry.rpartition("@")
    if not at or len(tid) != 16 or not all(c in "0123456789abcdef" for c in tid) or not name:
        return None
    return name, int(tid, 16)


def topic_dirs(data_dir: str):
    """[(topic, topic_id, path)] of every topic directory under topics/ (legacy
    `topics/<topic>` directories, of data dirs made before topic ids, have id
    None); anything else is skipped with a warning."""
    root = os.path.join(data_dir, "topics")
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        p = os.path.join(root, n)
        if not os.path.isdir(p) or os.path.islink(p):
            logger.warning("%s: not a topic directory; ignored", p)
            continue
        parsed = parse_topic_dir(n)
        if parsed is None and "@" in n:
            logger.warning("%s: not a topic directory name (<topic>@<16 hex digits>); ignored", p)
            continue
        out.append((*parsed, p) if parsed else (n, None, p))
    return out


def partition_dirs(topic_path: str):
    """[(partition, path)] of a topic directory, in partition order; stray
    entries (files, names that are not numbers) are skipped with a warning."""
    out = []
    for n in os.listdir(topic_path):
        p = os.path.join(topic_path, n)
        if not n.isdigit() or not os.path.isdir(p) or os.path.islink(p):
            logger.warning("%s: not a partition directory; ignored", p)
            continue
        out.append((int(n), p))
    return sorted(out)


def adopt_legacy_dir(data_dir: str, topic: str, topic_id: int):
    """A data dir from before topic ids keeps topics/<topic>/: it becomes
    topics/<topic>@<id>/ (one rename) once the catalog holds that id."""
    old = os.path.join(data_dir, "topics", topic)
    new = topic_dir(data_dir, topic, topic_id)
    if os.path.isdir(old) and not os.path.islink(old) and not os.path.exists(new):
        os.rename(old, new)
        fsync_dir(os.path.dirname(new))
        logger.warning("adopted %s as %s (topic ids came after it was made)", old, new)


def discard_topic_dir(data_dir: str, topic: str, topic_id: int):
    """Deletion of one life's directory (only under a durable "deleting"
    intent): renamed into trash/ atomically, then removed there."""
    src = topic_dir(data_dir, topic, topic_id)
    trash = os.path.join(data_dir, "trash")
    if os.path.isdir(src):
        safefile.makedirs(trash)
        os.rename(src, os.path.join(trash, os.path.basename(src)))
        fsync_dir(os.path.dirname(src))
        fsync_dir(trash)
    empty_trash(data_dir)


def empty_trash(data_dir: str):
    """trash/ holds only directories a durable delete moved there."""
    trash = os.path.join(data_dir, "trash")
    try:
        names = os.listdir(trash)
    except FileNotFoundError:
        return
    for n in names:
        p = os.path.join(trash, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


fsync_dir = safefile.fsync_dir


def write_atomically(path: str, data: bytes, sync_dir: bool = True):
    """Replaces path with data: a crash leaves the old file or the new one,
    never a mix (safefile.replace: an unpredictable tmp name, O_EXCL|O_NOFOLLOW,
    fsync, rename, fsync the directory)."""
    safefile.replace(path, data, sync_dir=sync_dir)
