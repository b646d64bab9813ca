"""kafka/configs.py — topic and broker configs over the Kafka protocol.

Owns: the map between Kafka's topic config names and shmlog's TopicConfig
fields (TOPIC_CONFIGS: native field, type, alterable or read-only, the broker
config it defaults from, documentation), the configs Kafka has that shmlog
does not act on (FIXED: accepted only at the value shmlog behaves as and
reported read-only; UNSUPPORTED: refused with the reason), Kafka strings <->
native values, the config a topic the listener creates gets when nothing is
said (defaults), the broker's configs (node 0: the listener's options, read
only), CreateTopics' config parsing and the config list its v5+ response
carries, and the answers to DescribeConfigs (32), AlterConfigs (33) and
IncrementalAlterConfigs (44). Each handler takes a decoded request dict and
returns the response dict. Must never: keep a config of its own (the Log's
topic table holds every topic's; the listener's options are the broker's),
encode bytes (codec.py does), or change a topic except through
Log.alter_topic.
"""

import logging
import re
from typing import Any, NamedTuple

import msgspec

from .. import config, errors
from . import codes

logger = logging.getLogger("shmlog.kafka")

TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8  # ConfigResource types
# ConfigSource
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5
# ConfigType (DescribeConfigs v3+)
BOOLEAN, STRING, INT, LONG, LIST = 1, 2, 3, 5, 7
TYPE_NAMES = {BOOLEAN: "BOOLEAN", STRING: "STRING", INT: "INT", LONG: "LONG", LIST: "LIST"}
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3  # IncrementalAlterConfigs operations
LONG_MAX, INT_MAX = (1 << 63) - 1, (1 << 31) - 1
MAX_MESSAGE_BYTES = 1048588  # Kafka's max.message.bytes default: the largest batch a topic it creates takes
CLEANUP_WORDS = ("compact", "delete")


class Spec(NamedTuple):
    """A Kafka topic config shmlog acts on."""

    field: str  # the TopicConfig field
    type: int  # ConfigType
    broker: str  # the broker config it defaults from (its synonym)
    doc: str
    alterable: bool = True  # False: fixed at creation (read-only)
    unlimited: bool = False  # Kafka's -1 means no limit (stored as None)


TOPIC_CONFIGS = {
    "cleanup.policy": Spec(
        "cleanup_policy",
        LIST,
        "log.cleanup.policy",
        "delete: retention removes whole old segments; compact: the cleaner keeps the latest record "
        "per key; compact,delete: both. compact needs shmlog.persistence=disk.",
    ),
    "retention.ms": Spec(
        "retention_ms",
        LONG,
        "log.retention.ms",
        "A segment whose newest record is older than this is deleted (-1: no time limit).",
        unlimited=True,
    ),
    "retention.bytes": Spec(
        "retention_bytes",
        LONG,
        "log.retention.bytes",
        "Old segments are deleted while a partition holds more than this (-1: no size limit).",
        unlimited=True,
    ),
    "segment.bytes": Spec("segment_bytes", INT, "log.segment.bytes", "A segment file rolls at this size."),
    "segment.ms": Spec("segment_ms", LONG, "log.roll.ms", "A segment file rolls at this age."),
    "max.message.bytes": Spec(
        "max_message_bytes",
        INT,
        "message.max.bytes",
        "The largest record batch the topic takes (at most half the ring less its frame header).",
    ),
    "delete.retention.ms": Spec(
        "delete_retention_ms",
        LONG,
        "log.cleaner.delete.retention.ms",
        "Compacted topics: how long a tombstone outlives the compaction that reached it.",
    ),
    "min.compaction.lag.ms": Spec(
        "min_compaction_lag_ms",
        LONG,
        "log.cleaner.min.compaction.lag.ms",
        "Compacted topics: a record younger than this is never compacted away.",
    ),
    "shmlog.fsync": Spec(
        "fsync",
        STRING,
        "shmlog.default.fsync",
        "When the persister fsyncs segment files: never, always or interval:N (ms).",
    ),
    "shmlog.overflow": Spec(
        "overflow",
        STRING,
        "shmlog.default.overflow",
        "shmlog.persistence=none: overwrite the oldest records when the ring is full, or block producers "
        "until the slowest live consumer has read them.",
    ),
    "shmlog.ring.bytes": Spec(
        "ring_bytes",
        LONG,
        "shmlog.default.ring.bytes",
        "Each partition's shared-memory ring (a power of two); fixed at creation.",
        alterable=False,
    ),
    "shmlog.persistence": Spec(
        "persistence",
        STRING,
        "shmlog.default.persistence",
        "disk: copied to segment files and replayable; none: in memory only. Fixed at creation.",
        alterable=False,
    ),
}
BY_FIELD = {s.field: name for name, s in TOPIC_CONFIGS.items()}


class Fixed(NamedTuple):
    """A Kafka topic config shmlog does not act on: it behaves as value."""

    value: str
    type: int
    broker: str
    doc: str


_NO_CLOCK = "Record timestamps are not checked against the clock."
FIXED = {
    "min.insync.replicas": Fixed("1", INT, "min.insync.replicas", "One host, one replica: acks=all means in the ring."),
    "compression.type": Fixed(
        "producer", STRING, "compression.type", "Batches are stored as the producer compressed them."
    ),
    "message.timestamp.type": Fixed(
        "CreateTime",
        STRING,
        "log.message.timestamp.type",
        "Records keep the producer's timestamps (LogAppendTime topics are not supported).",
    ),
    "unclean.leader.election.enable": Fixed(
        "false", BOOLEAN, "unclean.leader.election.enable", "One replica: a leader is never elected."
    ),
    "preallocate": Fixed("false", BOOLEAN, "log.preallocate", "Segment files are not preallocated."),
    "message.timestamp.before.max.ms": Fixed(
        str(LONG_MAX),
        LONG,
        "log.message.timestamp.before.max.ms",
        "Record timestamps are not checked against the clock.",
    ),
    "message.timestamp.after.max.ms": Fixed(
        str(LONG_MAX),
        LONG,
        "log.message.timestamp.after.max.ms",
        "Record timestamps are not checked against the clock.",
    ),
    "remote.storage.enable": Fixed("false", BOOLEAN, "remote.log.storage.system.enable", "No tiered storage."),
    "leader.replication.throttled.replicas": Fixed(
        "", LIST, "leader.replication.throttled.replicas", "No replication: nothing to throttle."
    ),
    "follower.replication.throttled.replicas": Fixed(
        "", LIST, "follower.replication.throttled.replicas", "No replication: nothing to throttle."
    ),
}

_NO_TIERS = "shmlog has no tiered storage"
_SEGMENTS = "shmlog's segment files and indexes are laid out by shmlog, not configurable"
_CLEANER = "the cleaner's schedule is shmlog's own (min.compaction.lag.ms and delete.retention.ms are honoured)"
_RECOMPRESS = "batches are stored as produced: the listener never recompresses"
_OLD_FORMATS = "message formats v0/v1 are not served"
UNSUPPORTED = {
    "flush.messages": "use shmlog.fsync (never, always, interval:N) instead",
    "flush.ms": "use shmlog.fsync (never, always, interval:N) instead",
    "index.interval.bytes": _SEGMENTS,
    "segment.index.bytes": _SEGMENTS,
    "segment.jitter.ms": _SEGMENTS,
    "file.delete.delay.ms": _SEGMENTS,
    "max.compaction.lag.ms": _CLEANER,
    "min.cleanable.dirty.ratio": _CLEANER,
    "local.retention.ms": _NO_TIERS,
    "local.retention.bytes": _NO_TIERS,
    "remote.log.copy.disable": _NO_TIERS,
    "remote.log.delete.on.disable": _NO_TIERS,
    "compression.gzip.level": _RECOMPRESS,
    "compression.lz4.level": _RECOMPRESS,
    "compression.zstd.level": _RECOMPRESS,
    "message.format.version": _OLD_FORMATS,
    "message.downconversion.enable": _OLD_FORMATS,
    "message.timestamp.difference.max.ms": "record timestamps are not checked against the clock",
}


class ConfigError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _invalid(name: str, raw: object, why: str) -> ConfigError:
    return ConfigError(codes.INVALID_CONFIG, f"Invalid value {raw} for configuration {name}: {why}")


def _kafka_words(message: str) -> str:
    """A native validation message in Kafka's config names (cleanup_policy -> cleanup.policy)."""
    return re.sub(r"\b(" + "|".join(BY_FIELD) + r")\b", lambda m: BY_FIELD[m.group(1)], message)


def cleanup_words(raw: str) -> list[str]:
    """cleanup.policy's list ("compact, delete"), each word checked."""
    words = [w.strip() for w in raw.split(",")]
    if not raw.strip() or any(w not in CLEANUP_WORDS for w in words):
        raise _invalid("cleanup.policy", raw, "String must be one of: compact, delete (or both, comma-separated)")
    return words


def parse(name: str, raw: str | None) -> Any:
    """A Kafka config value as the native TopicConfig value (type checks here, ranges in
    TopicConfig.validated); ConfigError for an unknown, unsupported or malformed one.
    Fixed configs return their value string (only that value passes)."""
    if raw is None:
        raise ConfigError(codes.INVALID_REQUEST, f"Null value not supported for topic config: {name}")
    spec = TOPIC_CONFIGS.get(name)
    if spec is None:
        fixed = FIXED.get(name)
        if fixed is not None:
            norm = raw.strip().lower() if fixed.type == BOOLEAN else raw.strip()
            if norm != fixed.value:
                raise _invalid(name, raw, f"shmlog does not act on {name}: it behaves as {name}={fixed.value}")
            return fixed.value
        why = UNSUPPORTED.get(name)
        if why is not None:
            raise ConfigError(codes.INVALID_CONFIG, f"Topic config {name} is not supported by shmlog: {why}")
        raise ConfigError(codes.INVALID_CONFIG, f"Unknown topic config name: {name}")
    s = raw.strip()
    if spec.type in (INT, LONG):
        try:
            n = int(s)
        except ValueError:
            raise _invalid(name, raw, f"Not a number of type {TYPE_NAMES[spec.type]}") from None
        if not -(1 << 63) <= n <= LONG_MAX or (spec.type == INT and not -(1 << 31) <= n <= INT_MAX):
            raise _invalid(name, raw, f"Not a number of type {TYPE_NAMES[spec.type]}")
        return None if spec.unlimited and n == -1 else n
    if spec.type == LIST:
        return ",".join(sorted(set(cleanup_words(s))))
    return s


def render(name: str, value: Any) -> str:
    """A native value as Kafka's string."""
    if value is None:
        return "-1"
    return str(value)


class Entry(NamedTuple):
    name: str
    value: str
    read_only: bool
    source: int
    type: int
    doc: str
    synonyms: list  # [(name, value, source)]


class Configs:
    """The listener's config answers, over its Log and options."""

    def __init__(self, listener):
        self.listener = listener
        self.log = listener.log
        self.handlers = listener.handlers
        self.data = listener.handlers.data

    # ------------------------------------------------------------ defaults

    def defaults(self, ring_bytes: int | None = None) -> config.TopicConfig:
        """What a topic the listener creates gets when nothing is said: shmlog's
        topic defaults, over them the listener's topic defaults, and Kafka's
        max.message.bytes (1048588) unless those set one, capped by what a ring
        of ring_bytes holds."""
        td = self.handlers.topic_defaults
        base = msgspec.structs.replace(config.TOPIC_DEFAULTS, **td)
        ring = base.ring_bytes if ring_bytes is None else ring_bytes
        mmb = td.get("max_message_bytes") or MAX_MESSAGE_BYTES
        return msgspec.structs.replace(base, max_message_bytes=min(mmb, config.max_message_cap(ring)))

    def _source(self, field: str, value: Any, default: config.TopicConfig) -> int:
        if value != getattr(default, field):
            return DYNAMIC_TOPIC_CONFIG
        return STATIC_BROKER_CONFIG if field in self.handlers.topic_defaults else DEFAULT_CONFIG

    def _validated(self, cfg: config.TopicConfig) -> config.TopicConfig:
        try:
            return cfg.validated()
        except (errors.InvalidArgument, errors.InvalidType) as e:
            raise ConfigError(codes.INVALID_CONFIG, _kafka_words(str(e))) from None
        except msgspec.ValidationError as e:
            raise ConfigError(codes.INVALID_CONFIG, str(e)) from None

    def _check_each(self, base: config.TopicConfig, changes: dict[str, Any], raw: dict[str, str]) -> None:
        """Each change alone on base, so a bad value is reported under its own name."""
        for field, v in changes.items():
            try:
                msgspec.structs.replace(base, **{field: v}).validated()
            except (errors.InvalidArgument, errors.InvalidType) as e:
                name = BY_FIELD[field]
                raise _invalid(name, raw.get(name, v), _kafka_words(str(e))) from None

    # ------------------------------------------------------------ CreateTopics

    def create_config(self, partitions: int, configs: dict[str, str | None]) -> config.TopicConfig:
        """The validated TopicConfig of a CreateTopics entry (ConfigError when a config is
        unknown, unsupported or invalid). max.message.bytes is capped by the ring."""
        changes: dict[str, Any] = {}
        for name, value in configs.items():
            v = parse(name, value)
            spec = TOPIC_CONFIGS.get(name)
            if spec is not None:
                changes[spec.field] = v
        raw = {k: v for k, v in configs.items() if v is not None}
        ring = changes.get("ring_bytes")
        base = msgspec.structs.replace(self.defaults(ring), partitions=max(partitions, 1))
        if ring is not None:  # first: the other configs are checked against this ring
            self._check_each(base, {"ring_bytes": ring}, raw)
            base = msgspec.structs.replace(base, ring_bytes=ring)
        if isinstance(changes.get("max_message_bytes"), int):  # at most what the ring holds, whatever was asked
            cap = config.max_message_cap(base.ring_bytes if ring is None else ring)
            changes["max_message_bytes"] = min(changes["max_message_bytes"], cap)
        self._check_each(base, changes, raw)
        return self._validated(msgspec.structs.replace(base, **changes))

    def create_kwargs(self, cfg: config.TopicConfig) -> dict[str, Any]:
        """create_topic's keyword arguments for a config create_config made."""
        out = msgspec.structs.asdict(cfg)
        out.pop("partitions")
        return out

    def created_configs(self, cfg: config.TopicConfig) -> list[dict[str, Any]]:
        """CreateTopics v5+'s Configs of a topic: every config DescribeConfigs lists."""
        return [
            {
                "Name": e.name,
                "Value": e.value,
                "ReadOnly": e.read_only,
                "ConfigSource": e.source,
                "IsSensitive": False,
            }
            for e in self.topic_entries(cfg)
        ]

    # ------------------------------------------------------------ describe

    def topic_entries(self, cfg: config.TopicConfig) -> list[Entry]:
        d = msgspec.structs.replace(self.defaults(cfg.ring_bytes), ring_bytes=self.defaults().ring_bytes)
        out = []
        for name, spec in TOPIC_CONFIGS.items():
            v, dv = getattr(cfg, spec.field), getattr(d, spec.field)
            src = self._source(spec.field, v, d)
            base_src = STATIC_BROKER_CONFIG if spec.field in self.handlers.topic_defaults else DEFAULT_CONFIG
            syn = [(name, render(name, v), src)] if src == DYNAMIC_TOPIC_CONFIG else []
            syn.append((spec.broker, render(name, dv), base_src))
            out.append(Entry(name, render(name, v), not spec.alterable, src, spec.type, spec.doc, syn))
        for name, f in FIXED.items():
            out.append(Entry(name, f.value, True, DEFAULT_CONFIG, f.type, f.doc, [(f.broker, f.value, DEFAULT_CONFIG)]))
        return out

    def broker_entries(self) -> list[Entry]:
        """Node 0's configs: the listener's options (STATIC_BROKER_CONFIG), the
        topic defaults under their broker names, and the constants of one node."""
        lis, h = self.listener, self.handlers
        d = self.defaults()
        static, const = STATIC_BROKER_CONFIG, DEFAULT_CONFIG

        def e(name, value, typ, source, doc):
            return Entry(name, value, True, source, typ, doc, [(name, value, source)])

        out = [
            e("broker.id", "0", INT, const, "This listener is the only broker."),
            e("node.id", "0", INT, const, "This listener is the only node (broker and controller)."),
            e("num.partitions", str(h.default_partitions), INT, static, "Partitions of an auto-created topic."),
            e("auto.create.topics.enable", str(bool(h.auto_create)).lower(), BOOLEAN, static, "--auto-create-topics."),
            e("default.replication.factor", "1", INT, const, "One host: one replica."),
            e("offsets.topic.replication.factor", "1", INT, const, "Offsets live in shmlog's offset table."),
            e("transaction.state.log.replication.factor", "1", INT, const, "One host: one replica."),
            e("delete.topic.enable", "true", BOOLEAN, const, "DeleteTopics deletes."),
            e("socket.request.max.bytes", str(lis.max_frame_bytes), INT, static, "--max-frame-bytes."),
            e("queued.max.request.bytes", str(lis.request_bytes.limit), LONG, static, "--max-queued-request-bytes."),
            e("max.connections", str(lis.max_connections), INT, static, "--max-connections."),
            e("connections.max.idle.ms", str(int(lis.idle_timeout_s * 1000)), LONG, static, "Idle connections close."),
            e("fetch.max.bytes", str(h.fetch_max_bytes), INT, static, "--fetch-max-bytes."),
            e(
                "group.initial.rebalance.delay.ms",
                str(lis.groups.initial_delay_ms),
                INT,
                static,
                "--group-initial-rebalance-delay-ms.",
            ),
        ]
        for name, spec in TOPIC_CONFIGS.items():
            src = STATIC_BROKER_CONFIG if spec.field in h.topic_defaults else DEFAULT_CONFIG
            v = render(name, getattr(d, spec.field))
            out.append(e(spec.broker, v, spec.type, src, f"The default of topic config {name}: {spec.doc}"))
        seen = {x.name for x in out}
        for f in FIXED.values():
            if f.broker not in seen:
                out.append(e(f.broker, f.value, f.type, const, f.doc))
        return out

    async def describe_configs(self, conn, req, version):
        synonyms = bool(req.get("IncludeSynonyms"))
        docs = bool(req.get("IncludeDocumentation"))
        results = []
        for r in req["Resources"]:
            rt, rn = r["ResourceType"], r["ResourceName"]
            res: dict[str, Any] = {
                "ErrorCode": 0,
                "ErrorMessage": None,
                "ResourceType": rt,
                "ResourceName": rn,
                "Configs": [],
            }
            try:
                entries = self._entries(rt, rn)
            except ConfigError as e:
                res["ErrorCode"], res["ErrorMessage"] = e.code, str(e)
                results.append(res)
                continue
            keys = r.get("ConfigurationKeys")
            wanted = set(keys) if keys else None  # null or empty: every config (Kafka's rule)
            res["Configs"] = [
                {
                    "Name": x.name,
                    "Value": x.value,
                    "ReadOnly": x.read_only,
                    "ConfigSource": x.source,
                    "IsDefault": x.source != DYNAMIC_TOPIC_CONFIG,
                    "IsSensitive": False,
                    "Synonyms": [{"Name": n, "Value": v, "Source": s} for n, v, s in x.synonyms] if synonyms else [],
                    "ConfigType": x.type,
                    "Documentation": x.doc if docs else None,
                }
                for x in entries
                if wanted is None or x.name in wanted
            ]
            results.append(res)
        return {"ThrottleTimeMs": 0, "Results": results}

    def _entries(self, rt: int, rn: str) -> list[Entry]:
        if rt == TOPIC:
            return self.topic_entries(self._topic(rn).config)
        if rt == BROKER:
            self._broker(rn)
            return self.broker_entries()
        if rt == BROKER_LOGGER:
            self._broker(rn)
            return []  # the listener logs through Python's logging, not per-logger broker configs
        raise ConfigError(codes.INVALID_REQUEST, f"Unsupported resource type {rt} (topics 2, brokers 4)")

    def _topic(self, name: str):
        try:
            config.validate_topic_name(name)
        except errors.ShmlogError as e:
            raise ConfigError(codes.INVALID_TOPIC_EXCEPTION, str(e)) from None
        h = self.data.handle(name)
        if h is None:
            raise ConfigError(codes.UNKNOWN_TOPIC_OR_PARTITION, f"The topic '{name}' does not exist.")
        return h

    @staticmethod
    def _broker(name: str) -> None:
        if name not in ("", "0"):
            raise ConfigError(
                codes.INVALID_REQUEST, f"Unexpected broker id, expected 0 or empty string, but received {name}"
            )

    # ------------------------------------------------------------ alter

    async def alter_configs(self, conn, req, version):
        """AlterConfigs: replace semantics, as Kafka's: every alterable config
        the request does not name goes back to its default."""
        return self._alter(req, incremental=False)

    async def incremental_alter_configs(self, conn, req, version):
        """IncrementalAlterConfigs: SET, DELETE (back to the default), APPEND and
        SUBTRACT (list configs: cleanup.policy)."""
        return self._alter(req, incremental=True)

    def _alter(self, req, incremental: bool):
        resources = req["Resources"]
        keys = [(r["ResourceType"], r["ResourceName"]) for r in resources]
        out = []
        for r in resources:
            rt, rn = r["ResourceType"], r["ResourceName"]
            code, msg = codes.NONE, None
            try:
                if keys.count((rt, rn)) > 1:
                    raise ConfigError(codes.INVALID_REQUEST, f"Duplicate resource in request: {rn!r} (type {rt})")
                if rt == TOPIC:
                    self._alter_topic(rn, r["Configs"], incremental, req.get("ValidateOnly", False))
                elif rt in (BROKER, BROKER_LOGGER):
                    self._broker(rn)
                    raise ConfigError(
                        codes.INVALID_REQUEST,
                        "Broker configs of this listener are read-only: set them with its options "
                        "(`shmlog kafka-listener --help`, the supervisor's [kafka] section)",
                    )
                else:
                    raise ConfigError(codes.INVALID_REQUEST, f"Unsupported resource type {rt} (topics 2)")
            except ConfigError as e:
                code, msg = e.code, str(e)
            out.append({"ErrorCode": code, "ErrorMessage": msg, "ResourceType": rt, "ResourceName": rn})
        return {"ThrottleTimeMs": 0, "Responses": out}

    def _alter_topic(self, name: str, configs: list[dict], incremental: bool, validate_only: bool) -> None:
        h = self._topic(name)
        cur = h.config
        d = self.defaults(cur.ring_bytes)
        names = [c["Name"] for c in configs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(codes.INVALID_REQUEST, f"Error due to duplicate config keys: {', '.join(dup)}")
        # the target config: replace semantics start from the defaults, incremental ones from now
        target: dict[str, Any] = {}
        if not incremental:
            target = {s.field: getattr(d, s.field) for s in TOPIC_CONFIGS.values() if s.alterable}
        raw: dict[str, str] = {}
        for c in configs:
            cname, value = c["Name"], c.get("Value")
            op = c.get("ConfigOperation", SET) if incremental else SET
            if op not in (SET, DELETE, APPEND, SUBTRACT):
                raise ConfigError(codes.INVALID_REQUEST, f"Unknown config operation {op} for {cname}")
            if op == DELETE:
                spec = TOPIC_CONFIGS.get(cname)
                if spec is not None:
                    target[spec.field] = getattr(d, spec.field)
                elif cname not in FIXED:
                    parse(cname, "")  # unknown or unsupported: its error
                continue
            if value is not None:
                raw[cname] = value
            if op in (APPEND, SUBTRACT):
                spec = TOPIC_CONFIGS.get(cname)
                if spec is None or spec.type != LIST:
                    if spec is None and cname not in FIXED:
                        parse(cname, "")
                    raise ConfigError(
                        codes.INVALID_CONFIG,
                        f"Config value {'append' if op == APPEND else 'subtract'} is not allowed for config "
                        f"key: {cname} (only list configs: cleanup.policy)",
                    )
                if value is None:
                    raise ConfigError(codes.INVALID_REQUEST, f"Null value not supported for : {cname}")
                have = target.get(spec.field, getattr(cur, spec.field)).split(",")
                delta = cleanup_words(value)
                words = set(have) | set(delta) if op == APPEND else set(have) - set(delta)
                if not words:
                    raise _invalid(cname, value, "cleanup.policy needs compact, delete or both")
                target[spec.field] = ",".join(sorted(words))
                continue
            v = parse(cname, value)
            spec = TOPIC_CONFIGS.get(cname)
            if spec is not None:
                target[spec.field] = v
        # read-only configs may be named at the value they have (tools send back what they described)
        for field in [f for f in target if not TOPIC_CONFIGS[BY_FIELD[f]].alterable]:
            if target[field] != getattr(cur, field):
                kname = BY_FIELD[field]
                raise ConfigError(
                    codes.INVALID_CONFIG,
                    f"{kname} is fixed at creation (read-only): it is {render(kname, getattr(cur, field))}; "
                    "delete and recreate the topic to change it",
                )
            del target[field]
        changes = {f: v for f, v in target.items() if v != getattr(cur, f)}
        self._check_each(cur, changes, raw)
        self._validated(msgspec.structs.replace(cur, **changes))
        if validate_only or not changes:
            return
        try:
            self.log.alter_topic(name, **changes)
        except errors.UnknownTopicOrPartition:
            raise ConfigError(codes.UNKNOWN_TOPIC_OR_PARTITION, f"The topic '{name}' does not exist.") from None
        except (errors.InvalidArgument, errors.InvalidType) as e:
            raise ConfigError(codes.INVALID_CONFIG, _kafka_words(str(e))) from None
        except errors.ShmlogError as e:
            raise ConfigError(codes.UNKNOWN_SERVER_ERROR, str(e)) from None
        logger.info("topic %r: configs %s", name, {BY_FIELD[f]: v for f, v in changes.items()})
