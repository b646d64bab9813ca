"""service/configfile.py — the service config file (TOML) that `shmlog supervisor --config` reads.

Owns: the file's schema as msgspec structs (instance, data dir, permissions
group, metrics port, declared [topics.NAME] and [processes.NAME] workers),
parsing with tomllib, and validation whose errors name the bad key.
Must never: act on the config (the supervisor does) or touch shared memory.

    instance = "default"
    data_dir = "/var/lib/shmlog/default"     # optional: the usual default otherwise
    group = "shmlog"                         # segments, sockets, data dir: 0660/0770 with this group
    metrics_port = 9464                      # loopback; 0 = any free port, -1 = off

    [topics.orders]
    partitions = 4
    retention_ms = 604800000

    [kafka]
    listen = "127.0.0.1:9092"                # the Kafka wire-protocol listener (loopback only by default)

    [processes.billing]
    command = ["python", "-m", "billing"]    # or one string, split like a shell
    replicas = 2
    restart = "on-failure"                   # always | on-failure | never
    backoff_ms = 1000                        # first restart delay, doubled per quick failure
    env = { LOG_LEVEL = "info" }
"""

import os
import re
import shlex
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

import msgspec

from .. import config, errors
from ..kafka.cli import is_loopback, parse_listen

RESTART_POLICIES = ("always", "on-failure", "never")


class TopicSpec(config.TopicConfig, frozen=True, forbid_unknown_fields=True):
    """A [topics.NAME] table: TopicConfig's fields and defaults, unknown keys refused."""

    def topic_config(self) -> config.TopicConfig:
        return config.TopicConfig(**msgspec.structs.asdict(self)).validated()


class ProcessSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: list[str] | str
    replicas: int = 1
    restart: str = "on-failure"
    backoff_ms: int = 1000
    backoff_max_ms: int = 30_000
    stop_timeout_ms: int = 10_000
    env: dict[str, str] = {}
    group: str | None = None  # consumer group of the replicas (default: the process name)
    cwd: str | None = None

    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


class KafkaSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """[kafka]: the Kafka wire-protocol listener the supervisor runs (see shmlog.kafka)."""

    listen: str = ""  # HOST:PORT; empty: no listener
    allow_non_loopback: bool = False
    advertised_host: str | None = None
    auto_create_topics: bool = False
    default_partitions: int = 1
    max_frame_bytes: int = 100 << 20
    max_connections: int = 1024
    max_queued_request_bytes: int = 256 << 20  # request bytes buffered across connections
    fetch_max_bytes: int = 55 << 20  # most record bytes in one Fetch response
    group_initial_rebalance_delay_ms: int = 3000  # Kafka's group.initial.rebalance.delay.ms
    allow_any_local_user: bool = False  # default: only users the native API lets in
    # [kafka.topic_defaults]: settings of the topics the listener creates (auto-created or
    # CreateTopics without them), e.g. ring_bytes = 1048576 (issue 13.6); any [topics.NAME] key but partitions
    topic_defaults: dict[str, int | str | None] = {}

    def options(self) -> dict:
        d = msgspec.structs.asdict(self)
        del d["listen"]
        return d


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    instance: str | None = None
    data_dir: str | None = None
    shm_prefix: str | None = None
    group: str | None = None
    metrics_port: int = 0
    unblock_timeout_ms: int = 500
    topics: dict[str, TopicSpec] = {}
    processes: dict[str, ProcessSpec] = {}
    kafka: KafkaSpec = KafkaSpec()
    path: str | None = None  # where it was read from (set by load)

    def settings(self, instance=None, data_dir=None, shm_prefix=None) -> config.Settings:
        """Arguments win over the file; the file wins over the environment and the defaults."""
        return config.resolve(
            instance or self.instance,
            data_dir or self.data_dir,
            shm_prefix if shm_prefix is not None else self.shm_prefix,
        )

    def topic_configs(self) -> dict[str, config.TopicConfig]:
        return {name: spec.topic_config() for name, spec in self.topics.items()}


def _bad(where: str, msg: str):
    raise errors.InvalidConfig(f"{where}: {msg}")


def validate(cfg: ServiceConfig, where: str = "config") -> ServiceConfig:
    if cfg.instance is not None:
        try:
            config.validate_instance_name(cfg.instance)
        except errors.InvalidArgument as e:
            _bad(where, f"instance: {e}")
    if cfg.group is not None:
        import grp

        try:
            grp.getgrnam(cfg.group)
        except KeyError:
            _bad(where, f"group: no such group {cfg.group!r} on this host (create it with groupadd)")
    if not -1 <= cfg.metrics_port <= 65535:
        _bad(where, f"metrics_port: {cfg.metrics_port} is not a port (0 = any free port, -1 = off)")
    if cfg.unblock_timeout_ms < 1:
        _bad(where, "unblock_timeout_ms: must be a positive number of ms")
    k = cfg.kafka
    if k.listen:
        try:
            host, _ = parse_listen(k.listen)
        except errors.InvalidArgument as e:
            _bad(where, f"kafka.listen: {e}")
        if not k.allow_non_loopback and not is_loopback(host):
            _bad(
                where,
                f"kafka.listen: {host} is not a loopback address (set kafka.allow_non_loopback = true "
                "to expose shmlog beyond this host)",
            )
    if k.max_frame_bytes < 1024 or k.max_connections < 1 or k.default_partitions < 1:
        _bad(where, "kafka: max_frame_bytes >= 1024, max_connections >= 1 and default_partitions >= 1")
    if k.max_queued_request_bytes < k.max_frame_bytes or k.fetch_max_bytes < 1024:
        _bad(where, "kafka: max_queued_request_bytes >= max_frame_bytes and fetch_max_bytes >= 1024")
    if k.group_initial_rebalance_delay_ms < 0:
        _bad(where, "kafka: group_initial_rebalance_delay_ms must be 0 or more")
    try:
        config.validate_topic_defaults(k.topic_defaults, "kafka.topic_defaults")
    except errors.ShmlogError as e:
        _bad(where, str(e))
    for name, spec in cfg.topics.items():
        try:
            config.validate_topic_name(name)
            spec.topic_config()
        except errors.ShmlogError as e:
            _bad(where, f"topics.{name}: {e}")
    for name, pspec in cfg.processes.items():
        key = f"processes.{name}"
        try:
            config.validate_instance_name(name)
        except errors.InvalidArgument:
            _bad(where, f"{key}: process names use 1-64 characters of [a-zA-Z0-9._-]")
        if not pspec.argv():
            _bad(where, f"{key}.command: empty command")
        if not 0 <= pspec.replicas <= 1024:
            _bad(where, f"{key}.replicas: {pspec.replicas} is out of range [0, 1024]")
        if pspec.restart not in RESTART_POLICIES:
            _bad(where, f"{key}.restart: {pspec.restart!r} is not one of {', '.join(RESTART_POLICIES)}")
        for field in ("backoff_ms", "backoff_max_ms", "stop_timeout_ms"):
            if getattr(pspec, field) < 0:
                _bad(where, f"{key}.{field}: must be >= 0")
    return cfg


def _convert(raw, typ, key: str, where: str):
    """msgspec.convert whose error names the TOML key ("topics.orders.partitions: ...")."""
    try:
        return msgspec.convert(raw, type=typ)
    except msgspec.ValidationError as e:
        msg, _, at = str(e).partition(" - at `$")
        sub = at.rstrip("`").lstrip(".")
        unknown = re.fullmatch(r"Object contains unknown field `(.*)`", msg)
        if unknown:
            sub = ".".join(x for x in (sub, unknown.group(1)) if x)
            msg = "unknown key (check its spelling and section)"
        full = ".".join(x for x in (key, sub) if x) or "(top level)"
        _bad(where, f"{full}: {msg.replace('`', '')}")


def parse(text: str, where: str = "config") -> ServiceConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        _bad(where, f"not valid TOML: {e}")
    sections = {}
    for section, typ in (("topics", TopicSpec), ("processes", ProcessSpec)):
        table = raw.pop(section, {})
        if not isinstance(table, dict):
            _bad(where, f"{section}: must be a table of [{section}.NAME] sections")
        sections[section] = {name: _convert(body, typ, f"{section}.{name}", where) for name, body in table.items()}
    cfg = _convert(raw, ServiceConfig, "", where)
    return validate(msgspec.structs.replace(cfg, **sections), where)


def load(path: str) -> ServiceConfig:
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except OSError as e:
        raise errors.InvalidConfig(f"cannot read config file {path}: {e.strerror}") from None
    cfg = parse(text, path)
    return msgspec.structs.replace(cfg, path=os.path.abspath(path))
