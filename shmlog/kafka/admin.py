"""kafka/admin.py — the listener's answers to Kafka's admin requests on topics, records and groups.

Owns: CreatePartitions (a topic grows through Log.alter_topic; only broker
0 may be named in an assignment), DeleteRecords (Log.delete_records: a
partition's log start offset moves forward, durably), DeleteGroups (the
native group delete, after the coordinator's view says the Kafka group is
empty), OffsetDelete (Log.delete_offsets; refused per partition for topics
an active group subscribes to), DescribeCluster (this node the one broker and
controller) and ListGroups (the coordinator's live Kafka groups and the
native groups, with states and types filters), and the one place the
consumer protocol's subscription bytes are read (the topics a member
subscribes to, for OffsetDelete). Each handler takes a decoded request dict
and returns the response dict. Must never: encode bytes (codec.py does),
keep topic, record or offset state of its own (the Log holds it all), or
change a group's membership (coordinator.py does).
"""

import logging
import struct

from .. import errors
from ..control.tables import validate_group_name
from . import codes
from .handlers import NODE_ID

logger = logging.getLogger("shmlog.kafka")

# Kafka's ACL operations (AclOperation codes) a broker without an authorizer
# reports as allowed on the cluster resource: CREATE, ALTER, DESCRIBE,
# CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE
CLUSTER_OPERATIONS = sum(1 << op for op in (5, 7, 8, 9, 10, 11, 12))
NO_OPERATIONS = -(1 << 31)  # Kafka's "not asked for"
ENDPOINT_BROKER = 1
GROUP_TYPE = "classic"  # every group here speaks the classic protocol (JoinGroup / SyncGroup)
NATIVE_STATES = {"Empty": "Empty", "Stable": "Stable", "Rebalancing": "PreparingRebalance"}


def subscribed_topics(metadata: bytes) -> set[str]:
    """The topics of a ConsumerProtocolSubscription (any version: version
    int16, then the topics array, the same in each), or an empty set when
    the bytes are not one."""
    try:
        (n,) = struct.unpack_from(">i", metadata, 2)
        pos, out = 6, set()
        for _ in range(max(n, 0)):
            (size,) = struct.unpack_from(">h", metadata, pos)
            pos += 2
            if size < 0 or pos + size > len(metadata):
                return set()
            out.add(bytes(metadata[pos : pos + size]).decode())
            pos += size
        return out
    except (struct.error, UnicodeDecodeError):
        return set()


class Admin:
    def __init__(self, listener):
        self.listener = listener
        self.log = listener.log
        self.data = listener.handlers.data
        self.groups = listener.groups  # the coordinator: its live Kafka groups

    # ------------------------------------------------------------ topics

    async def create_partitions(self, conn, req, version):
        names = [t["Name"] for t in req["Topics"]]
        out = []
        for t in req["Topics"]:
            if names.count(t["Name"]) > 1:
                code, msg = codes.INVALID_REQUEST, "Duplicate topic in request."
            else:
                code, msg = self._grow(t, req.get("ValidateOnly", False))
            out.append({"Name": t["Name"], "ErrorCode": code, "ErrorMessage": msg})
        return {"ThrottleTimeMs": 0, "Results": out}

    def _grow(self, t, validate_only):
        """(error code, message) of one topic's CreatePartitions, as Kafka's broker words them."""
        name, count = t["Name"], t["Count"]
        h = self.data.handle(name)
        if h is None:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, f"The topic '{name}' does not exist."
        have = h.partitions
        if count < have:
            return (
                codes.INVALID_PARTITIONS,
                f"Topic currently has {have} partitions, which is higher than the requested {count}.",
            )
        if count == have:
            return codes.INVALID_PARTITIONS, f"Topic already has {have} partitions."
        assignments = t.get("Assignments")
        if assignments is not None:
            if len(assignments) != count - have:
                return (
                    codes.INVALID_REPLICA_ASSIGNMENT,
                    f"Increasing the number of partitions by {count - have} but {len(assignments)} "
                    "assignments provided.",
                )
            for a in assignments:
                unknown = sorted(set(a["BrokerIds"]) - {NODE_ID})
                if unknown:
                    return codes.INVALID_REPLICA_ASSIGNMENT, f"Unknown broker(s) in replica assignment: {unknown}."
                if len(a["BrokerIds"]) != 1:
                    return (
                        codes.INVALID_REPLICA_ASSIGNMENT,
                        f"Inconsistent replication factor: the topic has 1, an assignment names {len(a['BrokerIds'])}.",
                    )
        if validate_only:
            return codes.NONE, None
        try:
            self.log.alter_topic(name, partitions=count)
        except errors.UnknownTopicOrPartition:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, f"The topic '{name}' does not exist."
        except (errors.InvalidArgument, errors.InvalidType) as e:
            return codes.INVALID_PARTITIONS, str(e)
        except errors.ShmlogError as e:
            return codes.UNKNOWN_SERVER_ERROR, str(e)
        logger.info("topic %r: %d -> %d partitions", name, have, count)
        return codes.NONE, None

    # ------------------------------------------------------------ records

    async def delete_records(self, conn, req, version):
        out = []
        for t in req["Topics"]:
            h = self.data.handle(t["Name"])
            parts = []
            for dp in t["Partitions"]:
                p = dp["PartitionIndex"]
                r = {"PartitionIndex": p, "LowWatermark": -1, "ErrorCode": 0}
                if h is None or not 0 <= p < h.partitions:
                    r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    try:
                        r["LowWatermark"] = self.log.delete_records(t["Name"], {p: dp["Offset"]})[p]
                    except errors.OffsetOutOfRange:
                        r["ErrorCode"] = codes.OFFSET_OUT_OF_RANGE
                    except errors.UnknownTopicOrPartition:
                        r["ErrorCode"] = codes.UNKNOWN_TOPIC_OR_PARTITION
                    except errors.ShmlogError as e:
                        logger.warning("DeleteRecords %s/%d: %s", t["Name"], p, e)
                        r["ErrorCode"] = codes.KAFKA_STORAGE_ERROR
                parts.append(r)
            out.append({"Name": t["Name"], "Partitions": parts})
        self.data.wake()  # long-polling fetches below the new start answer OFFSET_OUT_OF_RANGE
        return {"ThrottleTimeMs": 0, "Topics": out}

    # ------------------------------------------------------------ cluster

    async def describe_cluster(self, conn, req, version):
        h = self.listener.handlers
        body = {
            "ThrottleTimeMs": 0,
            "ErrorCode": 0,
            "ErrorMessage": None,
            "EndpointType": ENDPOINT_BROKER,
            "ClusterId": h.cluster_id(),
            "ControllerId": NODE_ID,
            "Brokers": [dict(h.broker(), BrokerId=NODE_ID, IsFenced=False)],
            "ClusterAuthorizedOperations": (
                CLUSTER_OPERATIONS if req.get("IncludeClusterAuthorizedOperations") else NO_OPERATIONS
            ),
        }
        if req.get("EndpointType", ENDPOINT_BROKER) != ENDPOINT_BROKER:
            body.update(
                ErrorCode=codes.UNSUPPORTED_ENDPOINT_TYPE,
                ErrorMessage="The request was sent to an endpoint of type BROKER, but we wanted an endpoint "
                "of type CONTROLLER",
                Brokers=[],
            )
        return body

    # ------------------------------------------------------------ groups

    def _states(self) -> dict[str, tuple[str, str]]:
        """{group id: (protocol type, state)}: the coordinator's live Kafka
        groups, then the native groups (which share the offset table)."""
        out = {gid: (g.protocol_type or "consumer", g.state) for gid, g in self.groups.groups.items()}
        for gid in self.log.list_groups():
            if gid not in out:
                try:
                    state = NATIVE_STATES.get(self.log.describe_group(gid).state, "Stable")
                except errors.UnknownGroup:  # deleted meanwhile
                    continue
                out[gid] = ("consumer", state)
        return out

    async def list_groups(self, conn, req, version):
        states = {s.lower() for s in req.get("StatesFilter") or []}
        types = {s.lower() for s in req.get("TypesFilter") or []}
        groups = [
            {"GroupId": gid, "ProtocolType": pt, "GroupState": st, "GroupType": GROUP_TYPE}
            for gid, (pt, st) in sorted(self._states().items())
            if (not states or st.lower() in states) and (not types or GROUP_TYPE in types)
        ]
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "Groups": groups}

    async def delete_groups(self, conn, req, version):
        return {
            "ThrottleTimeMs": 0,
            "Results": [{"GroupId": gid, "ErrorCode": self._delete_group(gid)} for gid in req["GroupsNames"]],
        }

    def _delete_group(self, gid) -> int:
        try:
            validate_group_name(gid)
        except errors.ShmlogError:
            return codes.INVALID_GROUP_ID
        g = self.groups.groups.get(gid)
        if g is not None and g.members:
            return codes.NON_EMPTY_GROUP
        try:
            self.log.delete_group(gid)  # the native delete: `shmlog group delete`
        except errors.UnknownGroup:
            if g is None:
                return codes.GROUP_ID_NOT_FOUND
        except errors.GroupNotEmpty:  # native members
            return codes.NON_EMPTY_GROUP
        except errors.ShmlogError as e:
            logger.warning("DeleteGroups %r: %s", gid, e)
            return codes.UNKNOWN_SERVER_ERROR
        self.groups.forget(gid)
        logger.info("deleted group %r", gid)
        return codes.NONE

    async def offset_delete(self, conn, req, version):
        gid = req["GroupId"]
        code, subscribed = self._offset_delete_group(gid)
        results = {}
        todo = []
        for t in req["Topics"]:
            h = self.data.handle(t["Name"])
            for p in t["Partitions"]:
                tp = (t["Name"], p["PartitionIndex"])
                if h is None or not 0 <= tp[1] < h.partitions:
                    results[tp] = codes.UNKNOWN_TOPIC_OR_PARTITION
                elif tp[0] in subscribed:
                    results[tp] = codes.GROUP_SUBSCRIBED_TO_TOPIC
                else:
                    results[tp] = codes.NONE
                    todo.append(tp)
        if code:
            return {"ErrorCode": code, "ThrottleTimeMs": 0, "Topics": []}
        if todo:
            try:
                for tp in self.log.delete_offsets(gid, todo):  # owned by a live native member
                    results[tp] = codes.GROUP_SUBSCRIBED_TO_TOPIC
            except errors.UnknownGroup:
                pass  # a Kafka group that never committed: nothing to delete
        by_topic: dict[str, list] = {}
        for (topic, p), c in results.items():
            by_topic.setdefault(topic, []).append({"PartitionIndex": p, "ErrorCode": c})
        return {
            "ErrorCode": 0,
            "ThrottleTimeMs": 0,
            "Topics": [{"Name": n, "Partitions": ps} for n, ps in by_topic.items()],
        }

    def _offset_delete_group(self, gid) -> tuple[int, set[str]]:
        """(group error code, topics whose offsets stay: the active group subscribes to them)."""
        try:
            validate_group_name(gid)
        except errors.ShmlogError:
            return codes.INVALID_GROUP_ID, set()
        g = self.groups.groups.get(gid)
        if g is None:
            return (codes.NONE if gid in self.log.list_groups() else codes.GROUP_ID_NOT_FOUND), set()
        if not g.members:
            return codes.NONE, set()
        if g.protocol_type != "consumer":
            return codes.NON_EMPTY_GROUP, set()  # Kafka's answer: no subscription to read
        topics: set[str] = set()
        for m in g.members.values():
            topics |= subscribed_topics(m.metadata_for(g.protocol) if g.protocol else m.protocols[0][1])
        return codes.NONE, topics
