"""kafka/server.py — the Kafka listener's TCP side: an asyncio server on loopback.

Owns: accepting connections (a configurable maximum), size-prefixed framing
with a frame-size limit, request/response headers (v0-v2 / v0-v1), the API
table (APIS: the versions ApiVersions lists and each API's handler, one entry
per API) and the answers to versions it does not list, dispatching each
request to its handler, and writing responses in request order per connection while
long polls (Fetch, JoinGroup, SyncGroup) wait asynchronously. Must never:
let one client's bad frame, unknown API, slowness or silence crash or stall
the listener or another connection; handle a request's meaning (handlers.py
and coordinator.py do).
"""

import asyncio
import collections
import logging
import socket
import struct
from typing import Any, NamedTuple

from .. import errors
from . import codec, codes, peers
from .admin import Admin
from .txn import Transactions
from .configs import Configs
from .coordinator import INITIAL_REBALANCE_DELAY_MS, GroupCoordinator
from .handlers import FETCH_MAX_BYTES, Handlers

logger = logging.getLogger("shmlog.kafka")


class Api(NamedTuple):
    """One API the listener serves: the versions ApiVersions lists and the
    Listener attribute and method that answer it."""

    min_advertised: int
    max: int
    owner: str  # the Listener attribute holding the handler ("" for ApiVersions, answered here)
    method: str
    deferred: bool = False  # answered when its wait ends (long polls): responses keep request order
    answered_from: int | None = None  # unlisted versions from here up reach the handler, which
    # answers them UNSUPPORTED_VERSION in its own shape (per partition)


# api key -> Api: the ONE table ApiVersions lists and _dispatch serves from (one entry per API;
# see PROTOCOL-NOTES.md §1). Every listed version is served, with one exception Kafka 4 makes
# too (KAFKA-18659): Produce 0-2 are listed, because librdkafka before 2.11.1 (kcat on Debian)
# compresses only when Produce v0 is, and answered UNSUPPORTED_VERSION per partition
# (message sets v0/v1 are not stored). Fetch starts at 4 (RecordBatch v2), as in Kafka 4.
APIS = {
    0: Api(0, 9, "handlers", "produce"),  # 9 flexible
    1: Api(4, 12, "handlers", "fetch", deferred=True, answered_from=0),  # 12 flexible (13+: topic ids)
    2: Api(0, 10, "handlers", "list_offsets"),  # 7+: max timestamp (KIP-734); 6+ flexible
    3: Api(0, 12, "handlers", "metadata"),  # 9+ flexible, 10+ topic ids (answered zero: names only)
    8: Api(0, 8, "groups", "offset_commit"),  # 8 flexible
    9: Api(0, 7, "groups", "offset_fetch"),  # 6+ flexible (8+: several groups per request)
    10: Api(0, 3, "groups", "find_coordinator"),  # 3 flexible (4+: batched keys)
    11: Api(0, 6, "groups", "join_group", deferred=True),  # 6 flexible
    12: Api(0, 4, "groups", "heartbeat"),  # 4 flexible
    13: Api(0, 4, "groups", "leave_group"),  # 4 flexible
    14: Api(0, 4, "groups", "sync_group", deferred=True),  # 4 flexible
    15: Api(0, 5, "groups", "describe_groups"),  # 5 flexible
    16: Api(0, 5, "admin", "list_groups"),  # 4+: states filter, 5: types filter; 3+ flexible
    18: Api(0, 3, "", ""),  # ApiVersions (v4 is answered too, as v3: it saves kafka-python a retry)
    19: Api(0, 5, "handlers", "create_topics"),  # 5 flexible
    20: Api(0, 4, "handlers", "delete_topics"),  # 4 flexible
    22: Api(0, 4, "txn", "init_producer_id"),  # 2+ flexible; 3+: ProducerId/Epoch to resume (KIP-360)
    24: Api(0, 3, "txn", "add_partitions_to_txn"),  # 3 flexible (4+: broker-to-broker, KIP-890)
    25: Api(0, 3, "txn", "add_offsets_to_txn"),  # 3 flexible
    26: Api(0, 3, "txn", "end_txn"),  # 3 flexible
    28: Api(0, 3, "txn", "txn_offset_commit"),  # 3 flexible
    23: Api(0, 4, "handlers", "offset_for_leader_epoch"),  # 4 flexible
    21: Api(0, 2, "admin", "delete_records"),  # 2 flexible
    32: Api(0, 4, "configs", "describe_configs"),  # 4 flexible (v0: Kafka 3's, see codec.VALID_VERSIONS)
    33: Api(0, 2, "configs", "alter_configs"),  # 2 flexible
    44: Api(0, 1, "configs", "incremental_alter_configs"),  # 1 flexible
    37: Api(0, 3, "admin", "create_partitions"),  # 2+ flexible
    42: Api(0, 2, "admin", "delete_groups"),  # 2 flexible
    47: Api(0, 0, "admin", "offset_delete"),
    60: Api(0, 2, "admin", "describe_cluster"),  # flexible
}
ADVERTISED = {k: (a.min_advertised, a.max) for k, a in APIS.items()}  # what ApiVersions lists
DEFERRED = {k for k, a in APIS.items() if a.deferred}
API_VERSIONS = 18
MAX_QUEUED_REQUEST_BYTES = 256 << 20  # request bytes buffered across all connections (see ByteBudget)
MAX_IN_FLIGHT = 64  # requests read ahead of their responses, per connection
FRAME_READ_TIMEOUT_S = 30.0  # a started frame must arrive whole within this


class ByteBudget:
    """Request bytes held across every connection, from a frame's size prefix
    until its handler returned (Kafka's queued.max.request.bytes): bounds the
    listener's memory whatever max_connections x max_frame_bytes is. A frame
    that would pass the limit waits (its socket unread) until others finish.
    The whole bound: limit + max_connections x 128 KiB (each stream reader's
    read-ahead) + the responses being written."""

    SMALL = 1 << 16  # frames up to the stream reader's own buffer are not counted:
    # that much is buffered per connection anyway, and the small
    # requests (metadata, fetch, heartbeats) keep flowing in a flood

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: list[asyncio.Future] = []

    async def acquire(self, n: int, timeout_s: float) -> bool:
        """True once n bytes are reserved; False after timeout_s without room."""
        if n <= self.SMALL:
            return True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.used + n > self.limit:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int):
        if n <= self.SMALL:
            return
        self.used -= n
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class Connection:
    """Per-connection state handlers may keep (fetch cursors)."""

    __slots__ = ("peer", "client_id", "fetch_cursors", "fetch_written")

    def __init__(self, peer):
        self.peer = peer
        self.client_id = None
        self.fetch_cursors = {}
        self.fetch_written = None  # set once the last Fetch's response is written (see _dispatch)


class Listener:
    """A Kafka-protocol front for one shmlog connection (`log`)."""

    def __init__(
        self,
        log_,
        host="127.0.0.1",
        port=9092,
        *,
        advertised_host=None,
        auto_create_topics=False,
        default_partitions=1,
        topic_defaults=None,
        max_frame_bytes=100 << 20,
        max_connections=1024,
        idle_timeout_s=600.0,
        max_queued_request_bytes=MAX_QUEUED_REQUEST_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        allow_any_local_user=False,
        group_initial_rebalance_delay_ms=INITIAL_REBALANCE_DELAY_MS,
    ):
        if max_queued_request_bytes < max_frame_bytes:
            raise errors.InvalidArgument(
                f"max_queued_request_bytes ({max_queued_request_bytes}) must be at least max_frame_bytes "
                f"({max_frame_bytes}): a frame that may never fit would wait forever"
            )
        if fetch_max_bytes < 1024:
            raise errors.InvalidArgument("fetch_max_bytes must be at least 1024 (Kafka's minimum)")
        if group_initial_rebalance_delay_ms < 0:
            raise errors.InvalidArgument("group_initial_rebalance_delay_ms must be 0 or more")
        self.log = log_
        self.host, self.port = host, port
        self.advertised_host = advertised_host
        self.max_frame_bytes = max_frame_bytes
        self.request_bytes = ByteBudget(max_queued_request_bytes)
        self.allow_any_local_user = allow_any_local_user
        self.refused = 0  # connections refused for their local user (tests, metrics)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.schema = codec.schema()
        self.groups = GroupCoordinator(log_, group_initial_rebalance_delay_ms)
        self.groups.listener = self
        self.handlers = Handlers(
            self,
            auto_create_topics=auto_create_topics,
            default_partitions=default_partitions,
            topic_defaults=topic_defaults or {},
            fetch_max_bytes=fetch_max_bytes,
        )
        self.admin = Admin(self)
        self.txn = Transactions(self)
        self.configs = Configs(self)
        self._table = {k: getattr(getattr(self, a.owner), a.method) for k, a in APIS.items() if a.owner}
        self._server: asyncio.Server | None = None
        self._conns = set()
        self._tasks = set()  # one per connection, cancelled by stop()
        self.requests: collections.Counter[int] = collections.Counter()  # api key -> requests decoded (metrics, tests)

    @property
    def advertised(self):
        return self.advertised_host or self.host, self.port

    async def start(self):
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True, limit=1 << 16)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one the OS chose
        self.groups.start()
        self.txn.start()
        logger.info("Kafka listener on %s:%d", self.host, self.port)
        return self

    async def serve_forever(self):
        if self._server is None:
            await self.start()
        assert self._server is not None  # start() set it
        async with self._server:
            await self._server.serve_forever()

    async def stop(self):
        if self._server is not None:
            self._server.close()
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()
        self.groups.stop()
        await self.txn.stop()
        self.handlers.data.close()

    # ------------------------------------------------------------ connections

    async def _serve(self, reader, writer):
        if len(self._conns) >= self.max_connections:
            logger.warning("refusing a connection: %d open (max_connections)", len(self._conns))
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn = Connection(writer.get_extra_info("peername"))
        if not self.allow_any_local_user:
            why = peers.refusal(sock, *peers.instance_identity(self.log.settings.data_dir))
            if why is not None:
                self._conns.add(writer)  # counts against max_connections while refused
                try:
                    await self._refuse(conn, reader, writer, why)
                finally:
                    self._conns.discard(writer)
                return
        self._conns.add(writer)
        me = asyncio.current_task()
        self._tasks.add(me)
        # (api key, version, correlation id, body future[, written future]); None: the sender stops
        queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue(MAX_IN_FLIGHT)
        sender = asyncio.create_task(self._send_loop(queue, writer))
        try:
            await self._read_loop(conn, reader, queue, sender)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            sender.cancel()
        except Exception:  # a bug in a handler: this connection only
            logger.exception("closing the connection from %s", conn.peer)
        finally:
            self._conns.discard(writer)
            if not sender.done():
                try:
                    queue.put_nowait(None)
                except asyncio.QueueFull:
                    sender.cancel()
            try:
                await asyncio.wait_for(sender, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                sender.cancel()
            while not queue.empty():  # long polls still waiting for this connection
                item = queue.get_nowait()
                if item is not None and not item[3].done():
                    item[3].cancel()
            writer.close()
            self._tasks.discard(me)  # last: stop() cancels and awaits every connection

    async def _refuse(self, conn, reader, writer, why):
        """A local user the native API would refuse: logged, its first request
        answered with CLUSTER_AUTHORIZATION_FAILED when it is ApiVersions (what
        every client sends first, so it reports why), then closed."""
        self.refused += 1
        logger.warning("refusing the connection from %s: %s", conn.peer, why)
        try:
            head = await asyncio.wait_for(reader.readexactly(4), 5.0)
            size = struct.unpack(">i", head)[0]
            if 8 <= size <= ByteBudget.SMALL:
                frame = await asyncio.wait_for(reader.readexactly(size), 5.0)
                key, version = struct.unpack_from(">hh", frame, 0)
                if key == API_VERSIONS:
                    item = self._api_versions(frame, version, codes.CLUSTER_AUTHORIZATION_FAILED)
                    writer.write(self.schema.encode_response(item[0], item[1], item[2], item[3].result()))
                    await asyncio.wait_for(writer.drain(), 5.0)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, struct.error):
            pass
        finally:
            writer.close()

    async def _read_loop(self, conn, reader, queue, sender):
        while not sender.done():
            head = await asyncio.wait_for(reader.readexactly(4), self.idle_timeout_s)
            size = struct.unpack(">i", head)[0]
            if size < 8 or size > self.max_frame_bytes:
                logger.warning(
                    "closing %s: frame of %d bytes (max_frame_bytes %d)", conn.peer, size, self.max_frame_bytes
                )
                return
            # the frame's bytes count against the listener-wide budget from before they
            # are read until its handler returned: a flood of half-sent frames waits here
            # (the socket is not read, TCP pushes back) instead of growing memory
            if not await self.request_bytes.acquire(size, self.idle_timeout_s):
                logger.warning(
                    "closing %s: waited %.0f s for %d bytes of max_queued_request_bytes",
                    conn.peer,
                    self.idle_timeout_s,
                    size,
                )
                return
            held = True
            try:
                frame = await asyncio.wait_for(reader.readexactly(size), FRAME_READ_TIMEOUT_S)
                reply = await self._dispatch(conn, frame)
                del frame
                if reply and not reply[3].done():  # a long poll keeps its decoded request
                    reply[3].add_done_callback(lambda _f, n=size: self.request_bytes.release(n))
                    held = False
            finally:
                if held:
                    self.request_bytes.release(size)
            if reply is False:
                return  # undecodable: close, as Kafka does
            if reply is not None:
                await queue.put(reply)

    async def _dispatch(self, conn, frame):
        """(api_key, version, correlation id, awaitable body) to queue, None for
        no response (acks=0), or False to close the connection."""
        key, version = struct.unpack_from(">hh", frame, 0)
        if key == API_VERSIONS:
            return self._api_versions(frame, version)
        api = self.schema.apis.get(key)
        handler = self._table.get(key)
        if api is None or handler is None:
            logger.info("closing %s: unknown api_key=%d", conn.peer, key)
            return False
        a = APIS[key]
        if not (a.min_advertised if a.answered_from is None else a.answered_from) <= version <= a.max:
            return self._unsupported(conn, api, frame, version)
        try:
            key, version, corr, client_id, pos = self.schema.decode_request(frame)
            req, _ = api.request.decode(frame, version, pos)
        except codec.DecodeError as e:
            logger.info("closing %s: malformed %s v%d request: %s", conn.peer, api.name, version, e)
            return False
        conn.client_id = client_id
        self.requests[key] += 1
        if key == 0 and req.get("Acks") == 0:
            await handler(conn, req, version)
            return None
        if key == 1:
            # Fetches of one connection run one after another, each once the previous
            # one's response was written: a client that pipelines fetches and never
            # reads holds one response in memory, not MAX_IN_FLIGHT of them (Kafka
            # mutes a connection until its response is sent, to the same end)
            prev, written = conn.fetch_written, asyncio.get_running_loop().create_future()
            conn.fetch_written = written
            return key, version, corr, asyncio.ensure_future(_after(prev, handler(conn, req, version))), written
        if key in DEFERRED:
            return key, version, corr, asyncio.ensure_future(handler(conn, req, version))
        return key, version, corr, _done(await handler(conn, req, version))

    def _unsupported(self, conn, api, frame, version):
        """A version ApiVersions does not list: UNSUPPORTED_VERSION in the
        response's top-level ErrorCode when that version has one; otherwise
        (or undecodable) the connection is closed, as Kafka does for every
        unsupported version."""
        if api.request.has_version(version) and "ErrorCode" in api.response.top_level(version):
            try:
                _, _, corr, _, pos = self.schema.decode_request(frame)
                api.request.decode(frame, version, pos)
            except codec.DecodeError:
                pass
            else:
                logger.info("%s: %s v%d is not served: UNSUPPORTED_VERSION", conn.peer, api.name, version)
                body = {"ErrorCode": codes.UNSUPPORTED_VERSION, "ThrottleTimeMs": 0}
                return api.key, version, corr, _done(body)
        logger.info("closing %s: unsupported request %s v%d", conn.peer, api.name, version)
        return False

    def _api_versions(self, frame, version, error=codes.NONE):
        corr = struct.unpack_from(">i", frame, 4)[0]
        keys = [{"ApiKey": k, "MinVersion": lo, "MaxVersion": hi} for k, (lo, hi) in sorted(ADVERTISED.items())]
        if error:
            return (
                API_VERSIONS,
                version if 0 <= version <= 4 else 0,
                corr,
                _done({"ErrorCode": error, "ApiKeys": [], "ThrottleTimeMs": 0}),
            )
        if version > 4 or version < 0:
            # KIP-511: a v0 body with UNSUPPORTED_VERSION and every API, header v0
            return API_VERSIONS, 0, corr, _done({"ErrorCode": codes.UNSUPPORTED_VERSION, "ApiKeys": keys})
        return API_VERSIONS, version, corr, _done({"ErrorCode": codes.NONE, "ApiKeys": keys, "ThrottleTimeMs": 0})

    async def _send_loop(self, queue, writer):
        while True:
            item = await queue.get()
            if item is None:
                return
            key, version, corr, fut = item[:4]
            body = await fut
            writer.write(self.schema.encode_response(key, version, corr, body))
            del body
            await writer.drain()
            if len(item) > 4:
                item[4].set_result(None)  # the next Fetch of this connection may run


async def _after(prev, coro):
    """coro, once the future prev (None: nothing to wait for) is resolved or cancelled."""
    try:
        if prev is not None:
            await asyncio.wait([prev])
    except BaseException:
        coro.close()  # cancelled first: the handler never starts
        raise
    return await coro


def _done(value):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
