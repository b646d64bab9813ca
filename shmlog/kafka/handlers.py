"""kafka/handlers.py — what the listener answers to Kafka's produce, fetch and admin requests.

Owns: Metadata (this node the only broker and controller, every partition
led by it at a constant epoch), Produce (one RecordBatch v2 per partition,
stored through data.py; acks=0 answered by nothing), Fetch (a long poll over
stored batches), ListOffsets, OffsetForLeaderEpoch,
CreateTopics (its configs mapped by configs.py) / DeleteTopics and optional
auto-creation. Each handler takes a
decoded request dict and returns the response dict. Must never: encode bytes
(codec.py does) or touch shared memory except through data.py and the Log.
"""

import asyncio
import logging
import time
from typing import Any

from .. import config, errors
from . import codes
from .configs import ConfigError
from .data import LEADER_EPOCH, DataPath, FetchCursor, ProduceError, batch_bytes, committed_only

logger = logging.getLogger("shmlog.kafka")

NODE_ID = 0
FETCH_MAX_BYTES = 55 << 20  # Kafka's broker fetch.max.bytes default: no response holds more records
HELD_POLL_S = 0.005  # a read_committed long poll held by an open transaction looks again this often
# Metadata v8+ authorized operations: Kafka without an authorizer answers every operation the
# resource type supports (AclOperation codes as bits: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7,
# DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12)
TOPIC_OPERATIONS = sum(1 << op for op in (3, 4, 5, 6, 7, 8, 10, 11))
CLUSTER_OPERATIONS = sum(1 << op for op in (5, 7, 8, 9, 10, 11, 12))


class Handlers:
    def __init__(
        self, listener, *, auto_create_topics, default_partitions, topic_defaults, fetch_max_bytes=FETCH_MAX_BYTES
    ):
        self.listener = listener
        self.fetch_max_bytes = fetch_max_bytes
        self.log = listener.log
        self.data = DataPath(listener.log)
        self.auto_create = auto_create_topics
        self.default_partitions = default_partitions
        self.topic_defaults = dict(topic_defaults)

    # ------------------------------------------------------------ metadata

    def cluster_id(self):
        return f"shmlog-{self.log.settings.instance}"

    def broker(self):
        host, port = self.listener.advertised
        return {"NodeId": NODE_ID, "Host": host, "Port": port, "Rack": None}

    def _topic_meta(self, name, h, operations):
        if h is None:
            return {"ErrorCode": codes.UNKNOWN_TOPIC_OR_PARTITION, "Name": name, "Partitions": []}
        return {
            "ErrorCode": 0,
            "Name": name,
            "IsInternal": False,
            "TopicAuthorizedOperations": operations,
            "Partitions": [
                {
                    "ErrorCode": 0,
                    "PartitionIndex": p,
                    "LeaderId": NODE_ID,
                    "LeaderEpoch": LEADER_EPOCH,
                    "ReplicaNodes": [NODE_ID],
                    "IsrNodes": [NODE_ID],
                    "OfflineReplicas": [],
                }
                for p in range(h.partitions)
            ],
        }

    async def metadata(self, conn, req, version):
        topics = req.get("Topics")
        if topics is None or (version == 0 and not topics):
            names = self.log.list_topics()  # all topics
            allow = False
        else:
            names = [t["Name"] for t in topics if t.get("Name") is not None]
            allow = req.get("AllowAutoTopicCreation", True) if version >= 4 else True
        unasked = -(2**31)  # Kafka's "not requested"
        topic_ops = TOPIC_OPERATIONS if req.get("IncludeTopicAuthorizedOperations") else unasked
        out = []
        for name in names:
            h = self.data.handle(name)
            if h is None and allow and self.auto_create:
                h = self._create(name, self.default_partitions, {})[1]
            if h is None and not _valid_name(name):
                out.append({"ErrorCode": codes.INVALID_TOPIC_EXCEPTION, "Name": name, "Partitions": []})
                continue
            out.append(self._topic_meta(name, h, topic_ops))
        return {
            "ThrottleTimeMs": 0,
            "Brokers": [self.broker()],
            "ClusterId": self.cluster_id(),
            "ControllerId": NODE_ID,
            "Topics": out,
            "ClusterAuthorizedOperations": CLUSTER_OPERATIONS
            if req.get("IncludeClusterAuthorizedOperations")
            else unasked,
        }

    # ------------------------------------------------------------ topics

    def _create(self, name, partitions, configs, validate_only=False):
        """(error code, handle or None, message, TopicConfig or None). The configs are
        Kafka's (configs.py maps them); the listener's topic defaults fill the rest."""
        if not _valid_name(name):
            return codes.INVALID_TOPIC_EXCEPTION, None, f"invalid topic name {name!r}", None
        if partitions <= 0:
            return codes.INVALID_PARTITIONS, None, "the number of partitions must be > 0", None
        try:
            cfg = self.listener.configs.create_config(partitions, configs)
        except ConfigError as e:
            return e.code, None, str(e), None
        if validate_only:
            if self.data.handle(name) is not None:
                return codes.TOPIC_ALREADY_EXISTS, None, f"topic {name!r} already exists", None
            return codes.NONE, None, None, cfg
        try:
            self.log.create_topic(name, partitions=partitions, **self.listener.configs.create_kwargs(cfg))
        except errors.TopicExists:
            return codes.TOPIC_ALREADY_EXISTS, None, f"topic {name!r} already exists", None
        except (errors.InvalidArgument, errors.InvalidType) as e:
            return codes.INVALID_CONFIG, None, str(e), None
        except errors.ShmlogError as e:
            return codes.UNKNOWN_SERVER_ERROR, None, str(e), None
        logger.info("created topic %r (%d partitions)", name, partitions)
        h = self.data.handle(name)
        return codes.NONE, h, None, (h.config if h is not None else cfg)

    async def create_topics(self, conn, req, version):
        out = []
        for t in req["Topics"]:
            n = t["NumPartitions"]
            if n == -1:
                n = self.default_partitions
            rf = t["ReplicationFactor"]
            if t.get("Assignments"):
                code, msg, n = _assignment_partitions(t)
                if code:
                    out.append({"Name": t["Name"], "ErrorCode": code, "ErrorMessage": msg})
                    continue
            cfg = None
            if rf not in (-1, 1):
                code, msg = codes.INVALID_REPLICATION_FACTOR, "one broker: replication factor must be 1 (or -1)"
            else:
                configs = {c["Name"]: c["Value"] for c in t.get("Configs") or []}
                if len(configs) < len(t.get("Configs") or []):
                    code, msg = codes.INVALID_REQUEST, "Duplicate config keys in the request"
                else:
                    code, _, msg, cfg = self._create(t["Name"], n, configs, req.get("validateOnly", False))
            r = {"Name": t["Name"], "ErrorCode": code, "ErrorMessage": msg}
            if cfg is not None and version >= 5:  # KIP-525: the topic's configs in the response
                r.update(NumPartitions=cfg.partitions, ReplicationFactor=1)
                r["Configs"] = self.listener.configs.created_configs(cfg)
            out.append(r)
        return {"ThrottleTimeMs": 0, "Topics": out}

    async def delete_topics(self, conn, req, version):
        out = []
        for name in req.get("TopicNames") or []:
            try:
                self.log.delete_topic(name)
                self.data.producer_ids.forget_topic(name)
                code = codes.NONE
            except errors.UnknownTopicOrPartition:
                code = codes.UNKNOWN_TOPIC_OR_PARTITION
            except errors.InvalidArgument:
                code = codes.INVALID_TOPIC_EXCEPTION
            out.append({"Name": name, "ErrorCode": code})
        self.data.wake()
        return {"ThrottleTimeMs": 0, "Responses": out}

    # ------------------------------------------------------------ produce

    async def produce(self, conn, req, version):
        acks = req.get("Acks")
        out = []
        for t in req["TopicData"]:
            h = self.data.handle(t["Name"])
            parts = []
            for pd in t["PartitionData"]:
                p = pd["Index"]
                r = {
                    "Index": p,
                    "ErrorCode": 0,
                    "BaseOffset": -1,
                    "LogAppendTimeMs": -1,
                    "LogStartOffset": -1,
                    "RecordErrors": [],
                    "ErrorMessage": None,
                }
                records = pd.get("Records")
                if version < 3:
                    r["ErrorCode"] = codes.UNSUPPORTED_VERSION
                elif acks not in (-1, 0, 1):
                    r["ErrorCode"] = codes.INVALID_REQUIRED_ACKS
                elif h is None or not 0 <= p < h.partitions:
                    r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
                elif not records:
                    r["ErrorCode"] = codes.INVALID_RECORD
                elif len(records) >= 12 and batch_bytes(records) < len(records):
                    r["ErrorCode"], r["ErrorMessage"] = codes.INVALID_RECORD, "one record batch per partition"
                else:
                    try:
                        r["BaseOffset"] = await self.data.append(h, p, records)
                        r["LogStartOffset"] = self.data.offsets(h, p)[0] if version >= 5 else -1
                    except ProduceError as e:
                        r["ErrorCode"], r["ErrorMessage"] = e.code, str(e)
                        if e.bad_record is not None:
                            r["RecordErrors"] = [{"BatchIndex": e.bad_record, "BatchIndexErrorMessage": str(e)}]
                parts.append(r)
            out.append({"Name": t["Name"], "PartitionResponses": parts})
        return {"Responses": out, "ThrottleTimeMs": 0}

    # ------------------------------------------------------------ fetch

    async def fetch(self, conn, req, version):
        """Kafka's size rules: the whole response holds at most MaxBytes of
        records (and at most the listener's fetch_max_bytes, Kafka's broker
        fetch.max.bytes), each partition at most its PartitionMaxBytes; only
        the first batch of the response may be larger, so a consumer always
        progresses. A partition listed more than once is served once, as
        Kafka's broker does (its request map keeps the first position and
        the last entry's fields)."""
        deadline = time.monotonic() + max(req["MaxWaitMs"], 0) / 1000
        min_bytes = req["MinBytes"]
        max_bytes = min(req.get("MaxBytes", 0x7FFFFFFF), self.fetch_max_bytes)
        wanted = {}  # (topic, partition) -> fetch partition, in first-seen order
        for t in req["Topics"]:
            for fp in t["Partitions"]:
                wanted[(t["Topic"], fp["Partition"])] = fp
        results: dict[tuple[str, int], dict[str, Any]] = {}  # (topic, partition) -> partition response
        committed = version >= 4 and req.get("IsolationLevel", 0) == 1
        while True:
            # what earlier rounds of a long poll hold counts first, wherever it sits in the
            # request: only a response holding nothing yet may take an oversized first batch
            done = {k for k, r in results.items() if r["Records"] or r["ErrorCode"]}
            total = sum(len(results[k]["Records"]) for k in done)
            failed, watch, held = False, [], False
            for (topic, p), fp in wanted.items():
                if (topic, p) in done:
                    continue
                h = self.data.handle(topic)
                r = results[(topic, p)] = self._fetch_partition(
                    conn, h, topic, fp, version, max_bytes - total, total == 0, committed
                )
                n = len(r["Records"])
                total += n
                if r["ErrorCode"]:
                    failed = True
                elif n == 0 and h is not None:
                    if committed and r["LastStableOffset"] <= fp["FetchOffset"] < r["HighWatermark"]:
                        held = True  # records wait behind an open transaction: no ring growth tells when
                    else:
                        watch.append((self.data.ring(h, p), fp["FetchOffset"]))
            left = deadline - time.monotonic()
            if total >= min_bytes or failed or left <= 0 or not (watch or held):
                break
            if held:
                await asyncio.sleep(min(left, HELD_POLL_S))
            else:
                await self.data.wait(watch, left)
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for (topic, _), r in results.items():
            by_topic.setdefault(topic, []).append(r)
        return {
            "ThrottleTimeMs": 0,
            "ErrorCode": 0,
            "SessionId": 0,
            "Responses": [{"Topic": topic, "Partitions": parts} for topic, parts in by_topic.items()],
        }

    def _fetch_partition(self, conn, h, topic, fp, version, budget, first, committed=False):
        p = fp["Partition"]
        r = {
            "PartitionIndex": p,
            "ErrorCode": 0,
            "HighWatermark": -1,
            "LastStableOffset": -1,
            "LogStartOffset": -1,
            "AbortedTransactions": [],
            "PreferredReadReplica": -1,
            "Records": b"",
        }
        if version < 4:  # not listed (message sets v0/v1), answered here when sent anyway
            r["ErrorCode"] = codes.UNSUPPORTED_VERSION
            return r
        if h is None or not 0 <= p < h.partitions:
            r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
            return r
        if fp.get("CurrentLeaderEpoch", -1) > LEADER_EPOCH:
            r["ErrorCode"] = codes.UNKNOWN_LEADER_EPOCH
            return r
        fc = conn.fetch_cursors.get((topic, p))
        if fc is None:
            fc = conn.fetch_cursors[(topic, p)] = FetchCursor()
        start, end = self.data.offsets(h, p)
        lso, aborted = self.data.stable(h, p)
        r["HighWatermark"], r["LastStableOffset"] = end, min(lso, end)
        r["LogStartOffset"] = start
        limit = min(fp["PartitionMaxBytes"], budget)
        if limit <= 0 and not first:
            return r
        if committed and lso <= fp["FetchOffset"] <= end:
            return r  # nothing stable past the fetch offset yet (out of range: read() says so)
        code, data = self.data.read(fc, h, p, fp["FetchOffset"], limit, min_one=first)
        if committed and data:
            data, cut = committed_only(data, lso, aborted)
            if cut is not None:
                fc.next_offset = -1  # the reader went past what is returned: seek next time
        r["ErrorCode"], r["Records"] = code, data
        return r

    # ------------------------------------------------------------ offsets

    async def list_offsets(self, conn, req, version):
        """v2+ IsolationLevel 1 (read_committed): LATEST is the last stable offset
        (the ring's txn_bound; the high watermark when no transaction is open) and
        a timestamp lookup finds no record at or past it."""
        committed = req.get("IsolationLevel", 0) == 1
        out = []
        for t in req["Topics"]:
            h = self.data.handle(t["Name"])
            parts = []
            for lp in t["Partitions"]:
                p = lp["PartitionIndex"]
                r = {
                    "PartitionIndex": p,
                    "ErrorCode": 0,
                    "OldStyleOffsets": [],
                    "Timestamp": -1,
                    "Offset": -1,
                    "LeaderEpoch": LEADER_EPOCH,
                }
                if h is None or not 0 <= p < h.partitions:
                    r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    ts = lp["Timestamp"]
                    start, end = self.data.offsets(h, p, fresh=True)
                    if committed:  # read_committed: nothing at or past the last stable offset
                        end = self.data.ring(h, p).last_stable_offset(end)
                    if ts == -1:
                        off = end
                    elif ts in (-2, -4):  # earliest; earliest local (KIP-405): the same, nothing is tiered
                        off = start
                    elif ts == -3:  # the record with the largest timestamp (KIP-734)
                        off, r["Timestamp"] = await asyncio.get_running_loop().run_in_executor(
                            None, self.data.max_timestamp, h, p
                        )
                    elif ts < 0:
                        off = -1  # -5 (latest tiered, KIP-1005) and later specials: no tiered storage, none
                    else:
                        off, found_ts = await asyncio.get_running_loop().run_in_executor(
                            None, self.data.offset_for_time, h, p, ts
                        )
                        r["Timestamp"] = found_ts
                    if committed and off >= end and ts not in (-1, -2, -4):
                        off, r["Timestamp"] = -1, -1  # a record of an open transaction: not found (Kafka's rule)
                    r["Offset"] = off
                    r["OldStyleOffsets"] = [off] if off >= 0 else []
                parts.append(r)
            out.append({"Name": t["Name"], "Partitions": parts})
        return {"ThrottleTimeMs": 0, "Topics": out}

    async def offset_for_leader_epoch(self, conn, req, version):
        out = []
        for t in req["Topics"]:
            h = self.data.handle(t["Topic"])
            parts = []
            for pp in t["Partitions"]:
                p = pp["Partition"]
                r = {"ErrorCode": 0, "Partition": p, "LeaderEpoch": -1, "EndOffset": -1}
                if h is None or not 0 <= p < h.partitions:
                    r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
                elif pp.get("CurrentLeaderEpoch", -1) > LEADER_EPOCH:
                    r["ErrorCode"] = codes.UNKNOWN_LEADER_EPOCH
                elif pp["LeaderEpoch"] <= LEADER_EPOCH:
                    r["LeaderEpoch"], r["EndOffset"] = LEADER_EPOCH, self.data.offsets(h, p)[1]
                parts.append(r)
            out.append({"Topic": t["Topic"], "Partitions": parts})
        return {"ThrottleTimeMs": 0, "Topics": out}


def _assignment_partitions(t):
    """(error code, message, partition count) of a CreateTopics entry with a
    manual replica assignment, checked as Kafka's controller does
    (ReplicationControlManager): NumPartitions and ReplicationFactor must be
    -1 (INVALID_REQUEST), the partitions 0..n-1 each once, every replica list
    non-empty and naming only known brokers, each once
    (INVALID_REPLICA_ASSIGNMENT). The only broker is this node: [NODE_ID]."""
    if t["ReplicationFactor"] != -1:
        return (
            codes.INVALID_REQUEST,
            "A manual partition assignment was specified, but replication factor was not set to -1.",
            0,
        )
    if t["NumPartitions"] != -1:
        return (
            codes.INVALID_REQUEST,
            "A manual partition assignment was specified, but numPartitions was not set to -1.",
            0,
        )
    seen = set()
    for a in t["Assignments"]:
        p, replicas = a["PartitionIndex"], a["BrokerIds"] or []
        if p in seen:
            return codes.INVALID_REPLICA_ASSIGNMENT, f"Found multiple manual partition assignments for partition {p}", 0
        seen.add(p)
        if not replicas:
            return (
                codes.INVALID_REPLICA_ASSIGNMENT,
                "The manual partition assignment includes an empty replica list.",
                0,
            )
        for b in replicas:
            if b != NODE_ID:
                return (
                    codes.INVALID_REPLICA_ASSIGNMENT,
                    (
                        f"The manual partition assignment includes broker {b}, but no such broker is registered "
                        f"(this listener is the only broker, {NODE_ID})."
                    ),
                    0,
                )
        if len(replicas) > 1:
            return (
                codes.INVALID_REPLICA_ASSIGNMENT,
                (f"The manual partition assignment includes the broker {NODE_ID} more than once."),
                0,
            )
    if seen != set(range(len(seen))):
        return codes.INVALID_REPLICA_ASSIGNMENT, "partitions should be a consecutive 0-based integer sequence", 0
    return codes.NONE, None, len(seen)


def _valid_name(name) -> bool:
    try:
        config.validate_topic_name(name)
        return True
    except errors.ShmlogError:
        return False
