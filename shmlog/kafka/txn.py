"""kafka/txn.py — Kafka's transaction APIs, served by the instance's own
transaction coordinator (control/transactions.py).

Owns: InitProducerId (idempotent and transactional producers), AddPartitionsToTxn
(v0-3, the client versions), AddOffsetsToTxn, TxnOffsetCommit and EndTxn, and
the mapping of coordinator errors to Kafka's codes. A Kafka client's
transaction is the same transaction a native producer runs: the same
producer ids and epochs, the same markers and abort index, so native
read_committed consumers and Kafka ones agree. Must never: block the event
loop on the coordinator's flock or fsync (each call runs in the executor),
or answer success for a write the coordinator refused.
"""

import asyncio
import logging
from typing import Any

from .. import errors
from ..control import transactions
from . import codes

logger = logging.getLogger("shmlog.kafka")

NO_OWNER = (0, 0)  # a Kafka client is not a local process: its transactions end by timeout, not by death
EXPIRE_EVERY_S = 0.5  # how often the listener aborts Kafka clients' transactions past their timeout


def _code(e: errors.ShmlogError) -> int:
    if isinstance(e, errors.ProducerFenced):
        return codes.PRODUCER_FENCED
    if isinstance(e, errors.InvalidTxnState):
        return codes.INVALID_TXN_STATE
    if isinstance(e, errors.InvalidArgument):
        return codes.INVALID_PRODUCER_ID_MAPPING
    if isinstance(e, errors.UnknownTopicOrPartition):
        return codes.UNKNOWN_TOPIC_OR_PARTITION
    if isinstance(e, errors.Timeout):
        return codes.COORDINATOR_NOT_AVAILABLE  # retriable: the coordinator's lock was busy
    return codes.UNKNOWN_SERVER_ERROR


class Transactions:
    def __init__(self, listener):
        self.log = listener.log
        self.coordinator = listener.log.transactions
        self.data = listener.handlers.data
        self._expiry: asyncio.Task | None = None

    def start(self) -> None:
        """The listener aborts timed-out transactions itself (the supervisor's
        tick does too, when one runs): a Kafka client killed inside a
        transaction holds read_committed readers only until its timeout."""
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    async def stop(self) -> None:
        t, self._expiry = self._expiry, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            try:
                if await self._run(self.coordinator.expire):
                    self.data.wake()
            except errors.ShmlogError as e:  # a busy lock, a damaged state file: said, retried
                logger.warning("transaction expiry: %s", e)

    async def _run(self, fn, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def init_producer_id(self, conn, req, version):
        out = {"ThrottleTimeMs": 0, "ErrorCode": 0, "ProducerId": -1, "ProducerEpoch": -1}
        tid = req.get("TransactionalId")
        try:
            if tid is None:
                out["ProducerId"], out["ProducerEpoch"] = await self._run(self.coordinator.new_producer_id), 0
                self.data.producer_ids.fresh.add(out["ProducerId"])
                return out
            timeout = req["TransactionTimeoutMs"]
            try:
                transactions.validate_timeout(timeout)
            except errors.InvalidArgument:
                out["ErrorCode"] = codes.INVALID_TRANSACTION_TIMEOUT
                return out
            out["ProducerId"], out["ProducerEpoch"] = await self._run(self.coordinator.init, tid, timeout, NO_OWNER)
            if out["ProducerEpoch"] == 0:
                self.data.producer_ids.fresh.add(out["ProducerId"])  # a new id: no batches anywhere yet
        except errors.ShmlogError as e:
            out["ErrorCode"] = _code(e)
        return out

    async def add_partitions_to_txn(self, conn, req, version):
        tid, pid, epoch = req["V3AndBelowTransactionalId"], req["V3AndBelowProducerId"], req["V3AndBelowProducerEpoch"]
        wanted = [(t["Name"], p) for t in req["V3AndBelowTopics"] for p in t["Partitions"]]
        bad = {}
        for topic, p in wanted:
            h = self.data.handle(topic)
            if h is None or not 0 <= p < h.partitions:
                bad[(topic, p)] = codes.UNKNOWN_TOPIC_OR_PARTITION
        code = 0
        if bad:
            code = codes.OPERATION_NOT_ATTEMPTED  # Kafka: one unknown partition, none added
        else:
            try:
                await self._run(self.coordinator.add_partitions, tid, pid, epoch, wanted)
            except errors.ShmlogError as e:
                code = _code(e)
        by_topic: dict[str, list] = {}
        for topic, p in wanted:
            by_topic.setdefault(topic, []).append(
                {"PartitionIndex": p, "PartitionErrorCode": bad.get((topic, p), code)}
            )
        return {
            "ThrottleTimeMs": 0,
            "ResultsByTopicV3AndBelow": [{"Name": t, "ResultsByPartition": r} for t, r in by_topic.items()],
        }

    async def add_offsets_to_txn(self, conn, req, version):
        """The group's offsets will commit with the transaction: opens it (as
        Kafka adds the group's offsets partition); TxnOffsetCommit sends them."""
        try:
            await self._run(
                self.coordinator.add_offsets, req["TransactionalId"], req["ProducerId"], req["ProducerEpoch"], []
            )
            return {"ThrottleTimeMs": 0, "ErrorCode": 0}
        except errors.ShmlogError as e:
            return {"ThrottleTimeMs": 0, "ErrorCode": _code(e)}

    async def txn_offset_commit(self, conn, req, version):
        group = req["GroupId"]
        todo, results = [], []
        for t in req["Topics"]:
            parts = []
            for p in t["Partitions"]:
                code = 0
                h = self.data.handle(t["Name"])
                if h is None or not 0 <= p["PartitionIndex"] < h.partitions:
                    code = codes.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    todo.append(
                        transactions.TxnOffset(
                            group,
                            t["Name"],
                            p["PartitionIndex"],
                            p["CommittedOffset"],
                            0,
                            p.get("CommittedMetadata") or "",
                        )
                    )
                parts.append({"PartitionIndex": p["PartitionIndex"], "ErrorCode": code})
            results.append({"Name": t["Name"], "Partitions": parts})
        try:
            await self._run(
                self.coordinator.add_offsets, req["TransactionalId"], req["ProducerId"], req["ProducerEpoch"], todo
            )
        except errors.ShmlogError as e:
            for t in results:
                for p in t["Partitions"]:
                    p["ErrorCode"] = p["ErrorCode"] or _code(e)
        return {"ThrottleTimeMs": 0, "Topics": results}

    async def end_txn(self, conn, req, version):
        try:
            await self._run(
                self.coordinator.end, req["TransactionalId"], req["ProducerId"], req["ProducerEpoch"], req["Committed"]
            )
            code = 0
        except errors.CommitFailed:
            code = codes.INVALID_TXN_STATE  # aborted instead (offsets' partitions moved): the client aborts
        except errors.ShmlogError as e:
            code = _code(e)
        self.data.wake()  # markers and the bound moved: waiting read_committed fetches look again
        return {"ThrottleTimeMs": 0, "ErrorCode": code}
