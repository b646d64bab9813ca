"""config.py — instance settings and topic configuration, validated.

Owns: where an instance lives (name, data dir, shm prefix, from arguments,
then SHMLOG_* environment variables, then defaults), the naming rules, and
TopicConfig with its validation. Must never: touch shared memory.
"""

import os
import re
from typing import Any

import msgspec

from . import errors
from ._native import lib

_NAME_RE = re.compile(r"[a-zA-Z0-9._-]+")
TOPIC_NAME_MAX = 249
RING_MIN = 1 << 16
RING_MAX = 1 << 36
DEFAULT_RING_BYTES = 64 << 20
DEFAULT_SHM_PREFIX = "shmlog."


def validate_topic_name(name: object) -> str:
    if not isinstance(name, str):
        raise errors.InvalidType(f"topic name must be str, not {type(name).__name__}")
    if not name or len(name) > TOPIC_NAME_MAX or name in (".", "..") or not _NAME_RE.fullmatch(name):
        raise errors.InvalidTopicName(
            f"invalid topic name {name!r}: use 1-{TOPIC_NAME_MAX} characters of [a-zA-Z0-9._-], not '.' or '..'"
        )
    return name


def validate_instance_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not _NAME_RE.fullmatch(name):
        raise errors.InvalidArgument(f"invalid instance name {name!r}: use 1-64 characters of [a-zA-Z0-9._-]")
    return name


def validate_shm_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or len(prefix) > 64 or (prefix and not _NAME_RE.fullmatch(prefix)):
        raise errors.InvalidArgument(f"invalid shm prefix {prefix!r}: use at most 64 characters of [a-zA-Z0-9._-]")
    return prefix


class Settings(msgspec.Struct, frozen=True):
    instance: str
    data_dir: str
    shm_prefix: str

    @property
    def ctl_name(self) -> str:
        return f"/{self.shm_prefix}{self.instance}.ctl"

    def ring_name(self, generation: int, partition: int) -> str:
        return f"/{self.shm_prefix}{self.instance}.g{generation}.p{partition}"

    @property
    def segment_glob_prefix(self) -> str:
        """Every /dev/shm entry of this instance starts with this."""
        return f"{self.shm_prefix}{self.instance}."


def default_data_dir(instance: str) -> str:
    state = os.environ.get("STATE_DIRECTORY")  # systemd StateDirectory=
    if state:
        return os.path.join(state.split(":")[0], instance)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "shmlog", instance)


def resolve(
    instance: str | None = None, data_dir: str | os.PathLike[str] | None = None, shm_prefix: str | None = None
) -> Settings:
    instance = validate_instance_name(instance or os.environ.get("SHMLOG_INSTANCE") or "default")
    data_dir = data_dir or os.environ.get("SHMLOG_DATA_DIR") or default_data_dir(instance)
    if shm_prefix is None:
        shm_prefix = os.environ.get("SHMLOG_SHM_PREFIX", DEFAULT_SHM_PREFIX)
    return Settings(instance, os.path.abspath(os.fspath(data_dir)), validate_shm_prefix(shm_prefix))


PERSISTENCE = {"none": 0, "disk": 1}
# what a producer of a full ephemeral ring does: drop the oldest frames, or wait for the slowest
# live consumer (csrc/ring.c, "overflow=block")
OVERFLOW = {"overwrite": lib.SHM_OVERFLOW_OVERWRITE, "block": lib.SHM_OVERFLOW_BLOCK}
# Kafka's cleanup.policy: "delete" (retention removes whole segments), "compact" (the cleaner
# keeps the latest record per key), or both
CLEANUP_POLICIES = {
    "delete": lib.SHM_CLEANUP_DELETE,
    "compact": lib.SHM_CLEANUP_COMPACT,
    "compact,delete": lib.SHM_CLEANUP_COMPACT | lib.SHM_CLEANUP_DELETE,
}
FSYNC_MODES = {"never": lib.SHM_FSYNC_NEVER, "interval": lib.SHM_FSYNC_INTERVAL, "always": lib.SHM_FSYNC_ALWAYS}


def max_message_cap(ring_bytes: int) -> int:
    """The largest batch a ring of ring_bytes holds: its frame (header
    included) may take half the ring (C: shm_ring_init)."""
    return ring_bytes // 2 - lib.SHM_FRAME_HEADER_BYTES


class TopicConfig(msgspec.Struct, frozen=True, kw_only=True):
    partitions: int = 1
    ring_bytes: int = DEFAULT_RING_BYTES
    persistence: str = "disk"
    max_message_bytes: int | None = None  # default: ring_bytes // 4, at most 1 GiB
    fsync: str = "interval:100"
    retention_ms: int | None = 7 * 86400_000
    retention_bytes: int | None = None
    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * 86400_000
    overflow: str = "overwrite"  # persistence="none" only: "block" never overwrites what a live consumer has not read
    cleanup_policy: str = "delete"  # Kafka's names: "delete", "compact", "compact,delete" ("delete,compact" accepted)
    delete_retention_ms: int = 86400_000  # compacted topics: a tombstone outlives compaction this long
    min_compaction_lag_ms: int = 0  # compacted topics: a record younger than this is never compacted away

    # TopicConfig() is THE topic defaults: create_topic, the config file ([topics.NAME]) and
    # `shmlog topic create` all take theirs from it (TOPIC_DEFAULTS below)

    def validated(self) -> "TopicConfig":
        def need_int(name: str, v: object, lo: int, hi: int | None = None) -> None:
            if not isinstance(v, int) or isinstance(v, bool):
                raise errors.InvalidType(f"{name} must be int, not {type(v).__name__}")
            if v < lo or (hi is not None and v > hi):
                raise errors.InvalidArgument(f"{name}={v} is out of range [{lo}, {hi or 'inf'}]")

        need_int("partitions", self.partitions, 1, 4096)
        need_int("ring_bytes", self.ring_bytes, RING_MIN, RING_MAX)
        if self.ring_bytes & (self.ring_bytes - 1):
            raise errors.InvalidArgument(f"ring_bytes={self.ring_bytes} must be a power of two")
        if self.persistence not in PERSISTENCE:
            raise errors.InvalidArgument(f"persistence must be one of {sorted(PERSISTENCE)}")
        mmb = self.max_message_bytes
        if mmb is None:
            mmb = min(self.ring_bytes // 4, 1 << 30)
        need_int("max_message_bytes", mmb, 256, max_message_cap(self.ring_bytes))
        fsync_mode(self.fsync)
        unlimited: dict[str, Any] = {}
        for name in ("retention_ms", "retention_bytes"):
            v = getattr(self, name)
            if v == -1 and type(v) is int:
                unlimited[name] = None  # Kafka's -1: no limit (stored as None)
            elif v is not None:
                need_int(name, v, 1)
        if self.overflow not in OVERFLOW:
            raise errors.InvalidArgument(f"overflow must be one of {sorted(OVERFLOW)}, not {self.overflow!r}")
        if self.overflow == "block" and self.persistence != "none":
            raise errors.InvalidArgument(
                'overflow="block" needs persistence="none" (a durable topic never overwrites: consumers read the files)'
            )
        policy = self.cleanup_policy
        if isinstance(policy, str):
            policy = ",".join(sorted(p.strip() for p in policy.split(",")))  # Kafka's list: either order
        if policy not in CLEANUP_POLICIES:
            raise errors.InvalidArgument(
                f"cleanup_policy must be one of {', '.join(map(repr, CLEANUP_POLICIES))}, not {self.cleanup_policy!r}"
            )
        if "compact" in policy and self.persistence != "disk":
            raise errors.InvalidArgument(
                f'cleanup_policy={policy!r} needs persistence="disk": compaction rewrites segment files'
            )
        need_int("delete_retention_ms", self.delete_retention_ms, 0)
        need_int("min_compaction_lag_ms", self.min_compaction_lag_ms, 0)
        need_int("segment_bytes", self.segment_bytes, 1 << 16)
        need_int("segment_ms", self.segment_ms, 1)
        return msgspec.structs.replace(self, max_message_bytes=mmb, cleanup_policy=policy, **unlimited)


TOPIC_DEFAULTS = TopicConfig()


def validate_topic_defaults(defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """Topic defaults a creator applies to topics it makes without being told
    (the Kafka listener's auto-created and CreateTopics topics): any TopicConfig
    field but partitions (the listener's default_partitions), checked as a
    topic with them would be. Returns them unchanged."""
    fields = set(msgspec.structs.asdict(TOPIC_DEFAULTS)) - {"partitions"}
    bad = sorted(set(defaults) - fields)
    if bad:
        raise errors.InvalidArgument(
            f"{where}: unknown topic setting(s) {', '.join(bad)}; known: {', '.join(sorted(fields))}"
        )
    try:
        msgspec.structs.replace(TOPIC_DEFAULTS, **defaults).validated()
    except (msgspec.ValidationError, TypeError) as e:
        raise errors.InvalidArgument(f"{where}: {e}") from None
    except errors.ShmlogError as e:
        raise type(e)(f"{where}: {e}") from None
    return dict(defaults)


def fsync_mode(spec: object) -> tuple[int, int]:
    """'never' | 'always' | 'interval:N' (ms) -> (mode, interval_ms)."""
    if not isinstance(spec, str):
        raise errors.InvalidType("fsync must be a str such as 'interval:100'")
    kind, _, arg = spec.partition(":")
    if kind in ("never", "always") and not arg:
        return FSYNC_MODES[kind], 0
    if kind == "interval" and arg.isdigit() and int(arg) > 0:
        return FSYNC_MODES[kind], int(arg)
    raise errors.InvalidArgument(f"fsync={spec!r}: use 'never', 'always' or 'interval:N' (N ms > 0)")
