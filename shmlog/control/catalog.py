"""control/catalog.py — the durable record of which topics exist: <data_dir>/meta/topics.json.

Owns: reading and atomically rewriting (write, fsync, rename, fsync dir) the
topics with their id, config and metadata state, so topics survive a reboot
with their settings and an interrupted topic change is completed, never
half-applied. Must never: be written outside the control segment's lock (one
writer at a time), leave a half-written file behind, or let a damaged file
pass as "no topics" (that would make a restore forget every topic).

The commit order of topic metadata (control/plane.py follows it; this is the
contract, read it before changing either file)
===============================================================================

Three places hold topic metadata: this catalog (on disk, durable: the
truth across a reboot), the control segment's topic table (shared memory:
the truth for running processes, gone at a reboot) and the partition
directories <data_dir>/topics/<topic>@<id>/<p>/ (the records).

INVARIANT. After any crash at any instant, the first process that takes
the control lock and reconciles (instance.Log._reconcile_locked: every
attach that finds a difference, every restore, every topic change before
it starts) ends with: the control segment's LIVE topics are exactly the
catalog's topics, with the catalog's id and config; no partition directory
is removed unless the catalog durably said "deleting" for that very id; a
topic whose "deleting" intent reached the disk never comes back.

How: every change first writes its INTENT here (fsynced), then changes the
control segment and the directories, then marks the intent done (fsynced).
Reconciling always rolls an intent FORWARD (the change had not been
acknowledged, so either outcome is allowed; forward is the one that never
drops records a producer may already have had acknowledged).

The id: each creation draws a random non-zero 64-bit topic id (Kafka's
topic ids). It names the directory (`<topic>@<016x id>`), sits in the
control segment's topic entry and in each partition directory's
`partition.metadata`, so two lives of one topic name never share a file:
a persister or reader of the old life that is late cannot write or read
the new one's records (defect 11.4).

create_topic(name, cfg)
  C1 catalog: {name: id=new, state=creating, config=cfg}     (fsync)
  C2 mkdir topics/<name>@<id>/<p> with partition.metadata    (fsync)
  C3 control segment: reserve entry, create rings, publish LIVE
  C4 catalog: state=live                                     (fsync)
  death before C1 is durable: nothing happened. After C1: reconcile sees
  "creating" and completes it: directories made if missing, rings restored
  from whatever records the directories hold (producers may have written and
  been acknowledged between C3 and a crash), state=live. A CREATING entry a
  dead creator left in the table is dropped and remade from the catalog.

alter_topic(name, changes)
  A1 catalog: state=altering, config=new, prev=old           (fsync)
  A2 mkdir the new partitions' directories (existing ones are NEVER emptied:
     they can only hold this id's records), create their rings starting
     where those directories end, set max_frame_bytes on the old rings
  A3 control segment: entry's config := new (partitions published last)
  A4 catalog: state=live, prev dropped                       (fsync)
  death before A1: the old config stays everywhere. After A1: reconcile
  applies the catalog's config to the control segment (the same A2-A3 code,
  idempotent), then A4. A control segment that has more partitions than the
  catalog (only damage can do that: partitions never shrink) is adopted
  into the catalog rather than losing those partitions.

delete_topic(name)
  D1 catalog: state=deleting                                 (fsync)
  D2 control segment: rings marked deleted and unlinked, entry freed
  D3 rename topics/<name>@<id> -> trash/<name>@<id> (one atomic rename;
     both directories fsynced), then remove it
  D4 catalog: entry removed                                  (fsync)
  death before D1: the topic stays. After D1: reconcile frees a LIVE entry
  with that id, completes D3 and D4; trash/ only ever holds directories a
  durable "deleting" moved there, so reconcile empties it.

A LIVE control-segment topic the catalog does not know (a catalog restored
from a backup, damage) is adopted into it, and a catalog topic whose id
differs from the live entry's keeps the live one (its ring holds records
maybe not on disk yet); the other id's directory is left where it is and
reported. Neither path deletes anything.
"""

import os

import msgspec

from .. import errors
from .. import safefile
from ..config import TopicConfig
from ..storage import write_atomically

FORMAT = 2
LIVE, CREATING, ALTERING, DELETING = "live", "creating", "altering", "deleting"


class TopicRecord(msgspec.Struct, kw_only=True, frozen=True):
    id: str  # 16 hex digits: the topic id (never 0)
    config: TopicConfig
    state: str = LIVE  # live | creating | altering | deleting (an intent)
    prev: TopicConfig | None = None  # altering: the config before

    @property
    def topic_id(self) -> int:
        return int(self.id, 16)


class Catalog(msgspec.Struct):
    format: int = FORMAT
    topics: dict[str, TopicRecord] = {}
    migrated: bool = False  # read from the format-1 file: save before relying on the ids


def format_id(topic_id: int) -> str:
    return f"{topic_id:016x}"


def new_topic_id() -> int:
    while True:
        v = int.from_bytes(os.urandom(8), "little")
        if v:
            return v


def path(data_dir: str) -> str:
    return os.path.join(data_dir, "meta", "topics.json")


def _damaged(p: str, why) -> errors.CorruptMetadata:
    return errors.CorruptMetadata(
        f"{p} is damaged ({why}). It lists the instance's topics: restore it from a backup, or move "
        "it away to start with no topics (the records under topics/ are kept and can be re-adopted "
        "by re-creating each topic's entry); nothing was changed"
    )


def load(data_dir: str) -> Catalog:
    """The catalog; an empty one when the file does not exist. CorruptMetadata
    (naming the file) when it cannot be read as a catalog."""
    p = path(data_dir)
    try:
        raw = safefile.read_bytes(p)
    except FileNotFoundError:
        return Catalog()
    try:
        doc = msgspec.json.decode(raw)
        if not isinstance(doc, dict):
            raise _damaged(p, "not a JSON object")
        if "format" not in doc:  # format 1: {"topics": {name: config}}; ids are drawn now
            old = msgspec.convert(doc, type=dict[str, dict[str, TopicConfig]]).get("topics", {})
            return Catalog(
                topics={n: TopicRecord(id=format_id(new_topic_id()), config=c) for n, c in old.items()}, migrated=True
            )
        cat = msgspec.convert(doc, type=Catalog)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _damaged(p, e) from None
    if cat.format != FORMAT:
        raise _damaged(p, f"format {cat.format}, this shmlog reads format {FORMAT}")
    for name, rec in cat.topics.items():
        if (
            rec.state not in (LIVE, CREATING, ALTERING, DELETING)
            or len(rec.id) != 16
            or not all(c in "0123456789abcdef" for c in rec.id)
            or rec.topic_id == 0
        ):
            raise _damaged(p, f"topic {name!r} has state {rec.state!r} and id {rec.id!r}")
    return cat


def save(data_dir: str, cat: Catalog):
    """Atomically replaces the file (write, fsync, rename, fsync dir): a crash
    leaves the old catalog or the new one."""
    p = path(data_dir)
    safefile.makedirs(os.path.dirname(p))
    cat.migrated = False
    data = msgspec.json.encode({"format": FORMAT, "topics": cat.topics})
    write_atomically(p, msgspec.json.format(data, indent=2))
