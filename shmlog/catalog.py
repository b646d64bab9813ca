"""catalog.py — topic configurations on disk: <data_dir>/meta/topics.json.

Owns: reading and atomically rewriting (write, fsync, rename, fsync dir) the
list of topics with their configs, so topics survive a reboot with their
settings. Must never: be written outside the control segment's lock (one
writer at a time), or leave a half-written file behind.
"""
import os

import msgspec

from . import safefile
from .config import TopicConfig


class Catalog(msgspec.Struct):
    topics: dict[str, TopicConfig] = {}


def path(data_dir: str) -> str:
    return os.path.join(data_dir, "meta", "topics.json")


def load(data_dir: str) -> Catalog:
    try:
        return msgspec.json.decode(safefile.read_bytes(path(data_dir)), type=Catalog)
    except FileNotFoundError:
        return Catalog()


def save(data_dir: str, cat: Catalog):
    from .storage import write_atomically
    p = path(data_dir)
    safefile.makedirs(os.path.dirname(p))
    write_atomically(p, msgspec.json.format(msgspec.json.encode(cat), indent=2))
