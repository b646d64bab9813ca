"""kafka/coordinator.py — the Kafka group coordinator inside the listener process.

Owns: Kafka-protocol consumer groups: membership (JoinGroup / SyncGroup /
Heartbeat / LeaveGroup, session expiry), static members (KIP-345: an
instance id's newest join replaces its member id without a rebalance and
fences the old one), the rebalance state machine (Empty ->
PreparingRebalance -> CompletingRebalance -> Stable, with Kafka's
group.initial.rebalance.delay.ms before an empty group's first generation), client-side
assignment (the leader's SyncGroup carries every member's opaque assignment
bytes), FindCoordinator (itself), DescribeGroups (ListGroups is admin.py's, over
this coordinator's groups), and
OffsetCommit / OffsetFetch, which go to shmlog's shared group offset table
(log.commit_offsets / log.committed_offsets) so native consumers and `shmlog
group describe` see what Kafka clients committed, and the reverse (any
offset is stored, as in Kafka; commit metadata strings go beside it, to
offset_metadata.CommitMetadata).
Must never: interpret subscription or assignment bytes, block the event loop,
or keep an offset anywhere but the shared table.
"""

import asyncio
import logging
import time
import uuid

from .. import errors
from ..control.tables import validate_group_name
from . import codes
from .data import LEADER_EPOCH
from .offset_metadata import METADATA_MAX_CHARS, CommitMetadata

logger = logging.getLogger("shmlog.kafka")

EXPIRY_CHECK_S = 0.1  # how often sessions are checked
INITIAL_REBALANCE_DELAY_MS = 3000  # Kafka's group.initial.rebalance.delay.ms
MIN_SESSION_MS, MAX_SESSION_MS = 1000, 30 * 60_000


class Member:
    __slots__ = (
        "member_id",
        "instance_id",
        "client_id",
        "client_host",
        "session_ms",
        "rebalance_ms",
        "protocol_type",
        "protocols",
        "last_seen",
        "join_fut",
        "sync_fut",
        "assignment",
    )

    def __init__(self, member_id, instance_id, client_id, client_host):
        self.member_id = member_id
        self.instance_id = instance_id
        self.client_id = client_id
        self.client_host = client_host
        self.session_ms = 45000
        self.rebalance_ms = 300000
        self.protocol_type = "consumer"
        self.protocols = []  # [(name, metadata bytes)] in the member's preference order
        self.last_seen = time.monotonic()
        self.join_fut = None  # pending JoinGroup answer
        self.sync_fut = None  # pending SyncGroup answer
        self.assignment = b""

    def metadata_for(self, protocol):
        return next((m for n, m in self.protocols if n == protocol), b"")


class Group:
    def __init__(self, group_id):
        self.group_id = group_id
        self.state = "Empty"
        self.generation = 0
        self.protocol_type = None
        self.protocol = None
        self.leader = None
        self.members: dict[str, Member] = {}
        self.static: dict[str, str] = {}  # group.instance.id -> its current member id
        self.rebalance_task = None
        self.delaying = False  # the initial delay of an empty group's first join runs
        self.new_member_added = False  # a member joined during the current initial delay


class GroupCoordinator:
    def __init__(self, log_, initial_delay_ms=INITIAL_REBALANCE_DELAY_MS):
        self.log = log_
        self.initial_delay_ms = initial_delay_ms
        self.metadata = CommitMetadata(log_)
        self.groups: dict[str, Group] = {}
        self.listener = None
        self._expiry = None

    def start(self):
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    def stop(self):
        if self._expiry is not None:
            self._expiry.cancel()
        for g in self.groups.values():
            if g.rebalance_task is not None:
                g.rebalance_task.cancel()

    # ------------------------------------------------------------ coordinator lookup

    async def find_coordinator(self, conn, req, version):
        host, port = self._advertised()
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "ErrorMessage": None, "NodeId": 0, "Host": host, "Port": port}

    def _advertised(self):
        return self.listener.advertised if self.listener is not None else ("127.0.0.1", 9092)

    # ------------------------------------------------------------ membership

    def _group(self, group_id) -> Group:
        g = self.groups.get(group_id)
        if g is None:
            g = self.groups[group_id] = Group(group_id)
        return g

    async def join_group(self, conn, req, version):
        group_id = req["GroupId"]
        try:
            validate_group_name(group_id)  # the shared offset table's rule for group ids
        except errors.ShmlogError:
            return _join_error(codes.INVALID_GROUP_ID)
        session_ms = req["SessionTimeoutMs"]
        if not MIN_SESSION_MS <= session_ms <= MAX_SESSION_MS:
            return _join_error(codes.INVALID_SESSION_TIMEOUT)
        g = self._group(group_id)
        protocols = [(p["Name"], bytes(p["Metadata"])) for p in req["Protocols"]]
        ptype = req["ProtocolType"]
        if not protocols or (g.members and (ptype != g.protocol_type or not self._common(g, protocols))):
            return _join_error(codes.INCONSISTENT_GROUP_PROTOCOL)
        member_id = req["MemberId"]
        instance_id = req.get("GroupInstanceId")
        replaced = None
        if member_id:  # Kafka's order: fenced, then unknown instance, then unknown member
            if self._fenced(g, member_id, instance_id):
                return _join_error(codes.FENCED_INSTANCE_ID, member_id)
            m = g.members.get(member_id)
            if m is None or (instance_id is not None and instance_id not in g.static):
                return _join_error(codes.UNKNOWN_MEMBER_ID, member_id)
            if g.state in ("Stable", "CompletingRebalance") and self._unchanged(m, ptype, protocols):
                # Kafka: a known member joining again with the same metadata (it lost
                # the answer, or is not the leader and has nothing new) gets the current
                # generation; only the leader's join or new metadata rebalances
                m.last_seen = time.monotonic()
                if g.state == "CompletingRebalance" or member_id != g.leader:
                    return self._join_answer(g, m)
        else:
            member_id = f"{conn.client_id or 'member'}-{uuid.uuid4()}"
            replaced = g.members.get(g.static.get(instance_id, "")) if instance_id is not None else None
            m = Member(member_id, instance_id, conn.client_id or "", str(conn.peer[0]) if conn.peer else "")
            if replaced is None:
                g.members[member_id] = m
                g.new_member_added = True
            else:
                self._replace_static(g, replaced, m)
            if instance_id is not None:
                g.static[instance_id] = member_id
        m.session_ms = session_ms
        rb = req.get("RebalanceTimeoutMs", -1)
        m.rebalance_ms = rb if rb > 0 else session_ms
        m.protocol_type = ptype
        m.protocols = protocols
        m.last_seen = time.monotonic()
        g.protocol_type = ptype
        if replaced is not None and g.state == "Stable" and self._choose_protocol(g) == g.protocol:
            # KIP-345: a static member back within its session takes its old
            # member's place and assignment; the generation and the others stand
            logger.info("group %r: static member %r is back as %s", g.group_id, instance_id, member_id)
            return self._join_answer(g, m)
        _resolve(m.join_fut, _join_error(codes.UNKNOWN_MEMBER_ID, member_id))
        m.join_fut = asyncio.get_running_loop().create_future()
        fut = m.join_fut
        self._prepare_rebalance(g)
        self._maybe_complete_join(g)
        return await fut

    def _fenced(self, g, member_id, instance_id):
        """Kafka's isStaticMemberFenced: the instance id is known and names another member."""
        return instance_id is not None and g is not None and g.static.get(instance_id, member_id) != member_id

    def _unchanged(self, m, ptype, protocols):
        return ptype == m.protocol_type and protocols == m.protocols

    def _replace_static(self, g, old, new):
        """KIP-345: `new` (a new member id of old's instance id) takes old's place,
        its assignment and, where old led, the leadership; old is fenced."""
        new.assignment = old.assignment
        g.members = {(new.member_id if x is old else k): (new if x is old else x) for k, x in g.members.items()}
        if g.leader == old.member_id:
            g.leader = new.member_id
        _resolve(old.join_fut, _join_error(codes.FENCED_INSTANCE_ID, old.member_id))
        _resolve(old.sync_fut, {"ErrorCode": codes.FENCED_INSTANCE_ID, "Assignment": b""})
        logger.info(
            "group %r: member %s replaced by %s (instance %r)",
            g.group_id,
            old.member_id,
            new.member_id,
            new.instance_id,
        )

    def _join_answer(self, g, m):
        """The current generation's JoinGroup answer for m (the leader gets the members)."""
        return {
            "ThrottleTimeMs": 0,
            "ErrorCode": 0,
            "GenerationId": g.generation,
            "ProtocolType": g.protocol_type,
            "ProtocolName": g.protocol,
            "Leader": g.leader,
            "MemberId": m.member_id,
            "Members": self._members_list(g) if m.member_id == g.leader else [],
        }

    def _members_list(self, g):
        return [
            {"MemberId": x.member_id, "GroupInstanceId": x.instance_id, "Metadata": x.metadata_for(g.protocol)}
            for x in g.members.values()
        ]

    def _common(self, g, protocols):
        names = {n for n, _ in protocols}
        return all(names & {n for n, _ in x.protocols} for x in g.members.values())

    def _prepare_rebalance(self, g):
        if g.state == "PreparingRebalance":
            return
        if g.state == "CompletingRebalance":
            for x in g.members.values():  # the generation being synced is void
                _resolve(x.sync_fut, {"ErrorCode": codes.REBALANCE_IN_PROGRESS, "Assignment": b""})
        first = g.state == "Empty"
        g.state = "PreparingRebalance"
        timeout_ms = max((x.rebalance_ms for x in g.members.values()), default=5000)
        if g.rebalance_task is not None:
            g.rebalance_task.cancel()
        loop = asyncio.get_running_loop()
        if first and self.initial_delay_ms > 0:
            g.delaying, g.new_member_added = True, False
            g.rebalance_task = loop.create_task(self._initial_delay(g, timeout_ms))
        else:
            g.rebalance_task = loop.create_task(self._join_deadline(g, timeout_ms / 1000))

    async def _initial_delay(self, g, timeout_ms):
        """Kafka's InitialDelayedJoin: an empty group's first generation waits
        group.initial.rebalance.delay.ms, again after each new member's join,
        in all at most the rebalance timeout, so members started together
        land in one generation instead of one each."""
        delay = self.initial_delay_ms
        remaining = max(timeout_ms - delay, 0)
        while True:
            await asyncio.sleep(delay / 1000)
            if not (g.new_member_added and remaining > 0):
                break
            g.new_member_added = False
            delay = min(delay, remaining)
            remaining = max(remaining - delay, 0)
        g.delaying = False
        self._complete_overdue(g)

    async def _join_deadline(self, g, timeout_s):
        await asyncio.sleep(timeout_s)
        self._complete_overdue(g)

    def _complete_overdue(self, g):
        """The join phase is over: dynamic members that did not rejoin leave the
        group; static ones stay (Kafka keeps them until their session ends)."""
        for x in [x for x in g.members.values() if x.join_fut is None or x.join_fut.done()]:
            if x.instance_id is None:
                self._remove(g, x, "did not rejoin within the rebalance timeout", rebalance=False)
        self._maybe_complete_join(g, force=True)

    def _maybe_complete_join(self, g, force=False):
        if g.state != "PreparingRebalance":
            return
        waiting = [x for x in g.members.values() if x.join_fut is not None and not x.join_fut.done()]
        if not waiting:
            if not g.members:
                self._set_empty(g)
            elif force:  # only static members that did not rejoin: wait again for them (Kafka)
                timeout_s = max(x.rebalance_ms for x in g.members.values()) / 1000
                g.rebalance_task = asyncio.get_running_loop().create_task(self._join_deadline(g, timeout_s))
            return
        if (len(waiting) < len(g.members) or g.delaying) and not force:
            return
        if g.rebalance_task is not None and g.rebalance_task is not asyncio.current_task():
            g.rebalance_task.cancel()
        g.rebalance_task = None
        g.generation += 1
        g.protocol = self._choose_protocol(g)
        if g.leader not in g.members or g.members[g.leader] not in waiting:
            g.leader = waiting[0].member_id  # the leader must be a member that is answered now
        g.state = "CompletingRebalance"
        for x in g.members.values():
            x.assignment = b""
            x.last_seen = time.monotonic()
            _resolve(x.join_fut, self._join_answer(g, x))
        logger.info(
            "group %r generation %d: %d members, leader %s, protocol %s",
            g.group_id,
            g.generation,
            len(g.members),
            g.leader,
            g.protocol,
        )

    def _choose_protocol(self, g):
        """The protocol every member supports, by votes of each member's first choice among those."""
        common: set[str] | None = None
        for x in g.members.values():
            names = [n for n, _ in x.protocols]
            common = set(names) if common is None else common & set(names)
        assert common is not None, "chosen only for a group with members"
        votes: dict[str, int] = {}
        for x in g.members.values():
            first = next(n for n, _ in x.protocols if n in common)
            votes[first] = votes.get(first, 0) + 1
        return max(votes, key=lambda n: votes[n])

    def _set_empty(self, g):
        g.state = "Empty"
        g.leader = None
        g.protocol = None
        g.delaying = False
        if g.rebalance_task is not None and g.rebalance_task is not asyncio.current_task():
            g.rebalance_task.cancel()
        g.rebalance_task = None

    def _remove(self, g, m, why, rebalance=True):
        g.members.pop(m.member_id, None)
        if m.instance_id is not None and g.static.get(m.instance_id) == m.member_id:
            del g.static[m.instance_id]
        _resolve(m.join_fut, _join_error(codes.UNKNOWN_MEMBER_ID, m.member_id))
        _resolve(m.sync_fut, {"ErrorCode": codes.UNKNOWN_MEMBER_ID, "Assignment": b""})
        logger.info("group %r: member %s leaves (%s)", g.group_id, m.member_id, why)
        if g.leader == m.member_id:
            g.leader = None
        if not rebalance:
            return
        if not g.members:
            self._set_empty(g)
        else:
            self._prepare_rebalance(g)
            self._maybe_complete_join(g)

    def _check_member(self, g, member_id, generation, instance_id=None):
        if self._fenced(g, member_id, instance_id):
            return codes.FENCED_INSTANCE_ID
        if g is None or member_id not in g.members:
            return codes.UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return codes.ILLEGAL_GENERATION
        return codes.NONE

    async def sync_group(self, conn, req, version):
        g = self.groups.get(req["GroupId"])
        err = self._check_member(g, req["MemberId"], req["GenerationId"], req.get("GroupInstanceId"))
        if err:
            return {"ThrottleTimeMs": 0, "ErrorCode": err, "Assignment": b""}
        assert g is not None  # _check_member refuses a missing group
        m = g.members[req["MemberId"]]
        m.last_seen = time.monotonic()
        if g.state == "PreparingRebalance":
            return {"ThrottleTimeMs": 0, "ErrorCode": codes.REBALANCE_IN_PROGRESS, "Assignment": b""}
        if g.state == "Stable":
            return self._sync_answer(g, m)
        _resolve(m.sync_fut, {"ErrorCode": codes.REBALANCE_IN_PROGRESS, "Assignment": b""})
        m.sync_fut = asyncio.get_running_loop().create_future()
        fut = m.sync_fut
        if m.member_id == g.leader:
            given = {a["MemberId"]: bytes(a["Assignment"]) for a in req["Assignments"]}
            for x in g.members.values():
                x.assignment = given.get(x.member_id, b"")
            g.state = "Stable"
            for x in g.members.values():
                if x.sync_fut is not None and not x.sync_fut.done():
                    x.sync_fut.set_result(self._sync_answer(g, x))
        return await fut

    def _sync_answer(self, g, m):
        return {
            "ThrottleTimeMs": 0,
            "ErrorCode": 0,
            "ProtocolType": g.protocol_type,
            "ProtocolName": g.protocol,
            "Assignment": m.assignment,
        }

    async def heartbeat(self, conn, req, version):
        g = self.groups.get(req["GroupId"])
        err = self._check_member(g, req["MemberId"], req["GenerationId"], req.get("GroupInstanceId"))
        if not err:
            assert g is not None  # _check_member refuses a missing group
            g.members[req["MemberId"]].last_seen = time.monotonic()
            if g.state == "PreparingRebalance":
                err = codes.REBALANCE_IN_PROGRESS
        return {"ThrottleTimeMs": 0, "ErrorCode": err}

    async def leave_group(self, conn, req, version):
        g = self.groups.get(req["GroupId"])
        if version < 3:
            ids = [{"MemberId": req["MemberId"], "GroupInstanceId": None}]
        else:
            ids = req["Members"]
        results = []
        for ident in ids:
            m = None
            instance_id = ident.get("GroupInstanceId")
            if g is not None:
                if instance_id is not None:  # Kafka: a static member leaves by its instance id
                    m = g.members.get(g.static.get(instance_id, ""))
                else:
                    m = g.members.get(ident["MemberId"])
            code = codes.UNKNOWN_MEMBER_ID
            if m is not None and ident["MemberId"] and self._fenced(g, ident["MemberId"], instance_id):
                m, code = None, codes.FENCED_INSTANCE_ID
            if m is None:
                results.append({"MemberId": ident["MemberId"], "GroupInstanceId": instance_id, "ErrorCode": code})
                continue
            self._remove(g, m, "left the group")
            results.append({"MemberId": m.member_id, "GroupInstanceId": m.instance_id, "ErrorCode": 0})
        top = results[0]["ErrorCode"] if version < 3 and results else 0
        return {"ThrottleTimeMs": 0, "ErrorCode": top, "Members": results}

    async def _expire_loop(self):
        while True:
            await asyncio.sleep(EXPIRY_CHECK_S)
            now = time.monotonic()
            for g in list(self.groups.values()):
                for m in list(g.members.values()):
                    waiting = m.join_fut is not None and not m.join_fut.done()
                    if not waiting and now - m.last_seen > m.session_ms / 1000:
                        self._remove(g, m, "session timed out")

    # ------------------------------------------------------------ offsets

    async def offset_commit(self, conn, req, version):
        group_id = req["GroupId"]
        g = self.groups.get(group_id)
        generation = req.get("GenerationIdOrMemberEpoch", -1)
        member_id = req.get("MemberId", "")
        err = codes.NONE
        if generation == -1 and not member_id:
            pass  # assign-mode client (kcat, assign()): accepted
        elif g is not None and g.state == "CompletingRebalance":
            err = codes.REBALANCE_IN_PROGRESS  # the new generation is being synced
        else:
            # Kafka's classic protocol: while PreparingRebalance, members of the
            # current generation may still commit (a revoking client commits
            # the partitions it is giving up then); only CompletingRebalance refuses
            err = self._check_member(g, member_id, generation, req.get("GroupInstanceId"))
            if not err:
                assert g is not None  # _check_member refuses a missing group
                g.members[member_id].last_seen = time.monotonic()
        results = {}
        offsets = {}
        notes = []  # (topic, partition, topic id, offset, metadata) of what is committed
        for t in req["Topics"]:
            h = self._handle(t["Name"])
            for p in t["Partitions"]:
                code = err
                md = p.get("CommittedMetadata") or ""  # Kafka stores a null string as ""
                if not code and (h is None or not 0 <= p["PartitionIndex"] < h.partitions):
                    code = codes.UNKNOWN_TOPIC_OR_PARTITION
                if not code and len(md) > METADATA_MAX_CHARS:
                    code = codes.OFFSET_METADATA_TOO_LARGE  # Kafka's offset.metadata.max.bytes
                if not code:
                    # Kafka stores any offset, inside the log or not (the consumer's
                    # auto.offset.reset handles it on fetch); a negative one is "none"
                    off = max(p["CommittedOffset"], -1)
                    offsets[(t["Name"], p["PartitionIndex"])] = off
                    notes.append((t["Name"], p["PartitionIndex"], h.topic_id, off, md))
                results[(t["Name"], p["PartitionIndex"])] = code
        if offsets:
            try:
                self.log.commit_offsets(group_id, offsets, any_offset=True)
            except errors.CommitFailed as e:
                logger.info("group %r: commit refused: %s", group_id, e)
                for tp in offsets:
                    results[tp] = codes.REBALANCE_IN_PROGRESS
                notes = []
            except errors.InvalidArgument as e:
                logger.info("group %r: commit refused: %s", group_id, e)
                for tp in offsets:
                    results[tp] = codes.INVALID_GROUP_ID
            except errors.ShmlogError as e:
                logger.warning("group %r: commit failed: %s", group_id, e)
                for tp in offsets:
                    results[tp] = codes.UNKNOWN_SERVER_ERROR
        await self._note_metadata(group_id, notes, results)
        return {
            "ThrottleTimeMs": 0,
            "Topics": [
                {
                    "Name": t["Name"],
                    "Partitions": [
                        {"PartitionIndex": p["PartitionIndex"], "ErrorCode": results[(t["Name"], p["PartitionIndex"])]}
                        for p in t["Partitions"]
                    ],
                }
                for t in req["Topics"]
            ],
        }

    async def _note_metadata(self, group_id, notes, results):
        """Stores the metadata strings of committed partitions (a thread: file I/O);
        nothing to write when none is given and none was held."""
        notes = [n for n in notes if not results[n[:2]]]
        if not any(n[4] for n in notes) and not self.metadata.known(group_id, [n[:2] for n in notes]):
            return
        try:
            await asyncio.to_thread(self.metadata.update, group_id, notes)
        except (OSError, errors.ShmlogError) as e:  # the offsets are stored; their strings are not
            logger.warning("group %r: commit metadata not stored: %s", group_id, e)
            for n in notes:
                results[n[:2]] = codes.KAFKA_STORAGE_ERROR

    def _handle(self, topic):
        try:
            return self.log.topic_handle(topic)
        except errors.ShmlogError:
            return None

    async def offset_fetch(self, conn, req, version):
        group_id = req["GroupId"]
        try:
            committed = self.log.committed_offsets(group_id)
        except errors.UnknownGroup:
            committed = {}
        except errors.InvalidArgument:
            return {"ThrottleTimeMs": 0, "Topics": [], "ErrorCode": codes.INVALID_GROUP_ID}
        await asyncio.to_thread(self.metadata.refresh)
        topics = req.get("Topics")
        if topics is None:  # v2+: every partition with a commit
            by_topic: dict[str, list[int]] = {}
            for t, p in sorted(committed):
                by_topic.setdefault(t, []).append(p)
            topics = [{"Name": t, "PartitionIndexes": ps} for t, ps in by_topic.items()]
        out = []
        with_metadata = self.metadata.known(group_id)
        for t in topics:
            parts = []
            h = self._handle(t["Name"]) if with_metadata else None
            for p in t["PartitionIndexes"]:
                off = committed.get((t["Name"], p))
                md = "" if h is None or off is None else self.metadata.get(group_id, t["Name"], p, h.topic_id, off)
                parts.append(
                    {
                        "PartitionIndex": p,
                        "CommittedOffset": -1 if off is None else off,
                        "CommittedLeaderEpoch": -1 if off is None else LEADER_EPOCH,
                        "Metadata": md,
                        "ErrorCode": 0,
                    }
                )
            out.append({"Name": t["Name"], "Partitions": parts})
        return {"ThrottleTimeMs": 0, "Topics": out, "ErrorCode": 0}

    # ------------------------------------------------------------ tooling

    async def describe_groups(self, conn, req, version):
        out = []
        for gid in req["Groups"]:
            g = self.groups.get(gid)
            if g is None:
                out.append(
                    {
                        "ErrorCode": 0,
                        "GroupId": gid,
                        "GroupState": "Dead",
                        "ProtocolType": "",
                        "ProtocolData": "",
                        "Members": [],
                    }
                )
                continue
            out.append(
                {
                    "ErrorCode": 0,
                    "GroupId": gid,
                    "GroupState": g.state,
                    "ProtocolType": g.protocol_type or "",
                    "ProtocolData": g.protocol or "",
                    "Members": [
                        {
                            "MemberId": m.member_id,
                            "GroupInstanceId": m.instance_id,
                            "ClientId": m.client_id,
                            "ClientHost": m.client_host,
                            "MemberMetadata": m.metadata_for(g.protocol),
                            "MemberAssignment": m.assignment,
                        }
                        for m in g.members.values()
                    ],
                }
            )
        return {"ThrottleTimeMs": 0, "Groups": out}

    def forget(self, group_id):
        """Drops an empty group (DeleteGroups deleted it): DescribeGroups says Dead from then on."""
        g = self.groups.get(group_id)
        if g is not None and not g.members:
            self._set_empty(g)
            del self.groups[group_id]


def _join_error(code, member_id=""):
    return {
        "ThrottleTimeMs": 0,
        "ErrorCode": code,
        "GenerationId": -1,
        "ProtocolName": None,
        "Leader": "",
        "MemberId": member_id,
        "Members": [],
    }


def _resolve(fut, value):
    if fut is not None and not fut.done():
        fut.set_result(value)
