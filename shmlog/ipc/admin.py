"""ipc/admin.py — the supervisor's admin socket: wire format, server and client.

Owns: where an instance's admin socket lives, the request/response structs
(msgpack via msgspec, one request per SOCK_SEQPACKET connection), the
server (accept in the supervisor's loop, then a thread per connection,
bounded, with a deadline per client; peer credentials checked with
SO_PEERCRED before a request is read) and the client call that turns an
error reply back into the shmlog exception.
Must never: carry out a request itself (the supervisor's handlers do), let
a client's silence or slowness hold the supervisor's loop, or answer a
peer that is neither our uid, root, nor in the instance's group.
"""

import hashlib
import os
import socket
import threading
from typing import Any

import msgspec

from .. import config, errors, permissions, safefile

MAX_MESSAGE = 1 << 20
CALL_TIMEOUT_S = 60.0  # creating a topic allocates its rings; stopping fsyncs everything


class Request(msgspec.Struct):
    op: str
    args: dict[str, Any] = {}


class Reply(msgspec.Struct):
    ok: bool
    result: Any = None
    error: str | None = None  # a class name of shmlog.errors
    message: str | None = None


_encoder = msgspec.msgpack.Encoder()
_req_decoder = msgspec.msgpack.Decoder(Request)
_rep_decoder = msgspec.msgpack.Decoder(Reply)


def socket_path(settings: config.Settings) -> str:
    """<data_dir>/admin.sock; a unix socket path holds 107 bytes, so a deeper
    data dir gets a name in /dev/shm derived from the instance instead."""
    p = os.path.join(settings.data_dir, "admin.sock")
    if len(p.encode()) <= 107:
        return p
    tag = hashlib.sha1(f"{settings.shm_prefix}{settings.instance}\0{settings.data_dir}".encode()).hexdigest()[:16]
    return os.path.join(permissions.SHM_DIR, f"{settings.shm_prefix}{settings.instance}.{tag}.admin.sock"[-100:])


class Client:
    """One supervisor's admin socket."""

    def __init__(self, path: str):
        self.path = path

    def call(self, op: str, timeout: float = CALL_TIMEOUT_S, **args):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(timeout)
            try:
                s.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise errors.SupervisorError(f"no supervisor answers at {self.path}") from e
            except PermissionError:
                raise errors.PermissionDenied(
                    f"no access to the supervisor's admin socket {self.path}: run as the instance's user "
                    "or a member of its group"
                ) from None
            try:
                s.sendall(_encoder.encode(Request(op, args)))
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered before we asked (a busy server): its reply is queued
            try:
                data = s.recv(MAX_MESSAGE)
            except socket.timeout:
                raise errors.Timeout(f"the supervisor did not answer {op!r} within {timeout} s") from None
            except ConnectionResetError:
                data = b""
        finally:
            s.close()
        if not data:
            raise errors.SupervisorError(f"the supervisor closed the admin socket during {op!r}")
        rep = _rep_decoder.decode(data)
        if rep.ok:
            return rep.result
        cls = getattr(errors, rep.error or "", None)
        if not (isinstance(cls, type) and issubclass(cls, errors.ShmlogError)):
            cls = errors.ShmlogError
        raise cls(rep.message)


def client(settings: config.Settings) -> Client | None:
    """A client of the instance's supervisor, or None when none listens."""
    path = socket_path(settings)
    if not os.path.exists(path):
        return None
    c = Client(path)
    try:
        c.call("ping", timeout=5.0)
    except errors.SupervisorError:
        return None
    return c


class Server:
    """The listening socket. The supervisor's loop calls serve_one() when it is
    readable: it only accepts, and hands the connection to a thread of its own
    (at most max_clients at once), so a client that connects and says nothing,
    or reads its reply slowly, costs a thread for CLIENT_DEADLINE_S, never the
    loop's time. Past max_clients a connection is answered "busy" at once.
    Handlers run one at a time under `lock` (the supervisor's: its loop and
    the metrics thread read the same instance)."""

    CLIENT_DEADLINE_S = 2.0  # to send the request, and again to take the reply
    MAX_CLIENTS = 16

    def __init__(
        self, settings: config.Settings, handlers: dict, gid: int | None, lock=None, max_clients: int = MAX_CLIENTS
    ):
        self.path = socket_path(settings)
        self.handlers = handlers
        self.gid = gid
        self.lock = lock or threading.Lock()
        self.slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients
        if os.path.exists(self.path):
            if _answers(self.path):
                raise errors.AlreadyRunning(f"a supervisor already listens at {self.path}")
            os.unlink(self.path)  # a dead supervisor's
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        permissions.give_group(self.path, gid, 0o660)
        self.sock.listen(64)
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def serve_one(self, log) -> bool:
        """Accepts one connection and starts its thread; False when none was waiting."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:  # EMFILE and the like: the next tick retries
            log.warning("admin: accept failed: %s", e)
            return False
        if not self.slots.acquire(blocking=False):
            self._busy(conn)
            return True
        try:
            threading.Thread(target=self._serve, args=(conn, log), name="admin-client", daemon=True).start()
        except BaseException:
            self.slots.release()
            conn.close()
            raise
        return True

    def _busy(self, conn):
        """Every slot is taken (silent or slow clients): say so without waiting for anything."""
        with conn:
            conn.setblocking(False)
            try:
                conn.recv(MAX_MESSAGE)  # read what came, so the close is no reset
            except OSError:
                pass
            try:
                conn.send(
                    _encoder.encode(
                        Reply(
                            False,
                            error="Timeout",
                            message=(f"the supervisor is busy with {self.max_clients} admin connections; retry"),
                        )
                    )
                )
            except OSError:
                pass

    def _serve(self, conn, log):
        try:
            with conn:
                conn.settimeout(self.CLIENT_DEADLINE_S)
                ok, (pid, uid, _) = permissions.peer_allowed(conn, self.gid)
                try:
                    data = conn.recv(MAX_MESSAGE)  # read even when refusing: unread data would reset
                except OSError:
                    return  # silent past the deadline, or gone
                if not ok:
                    log.warning("admin: refused pid %d uid %d (not the instance's user or group)", pid, uid)
                    rep = Reply(
                        False,
                        error="PermissionDenied",
                        message=f"uid {uid} is neither the instance's user nor in its group",
                    )
                elif not data:
                    return
                else:
                    with self.lock:
                        rep = self._dispatch(data, log)
                try:
                    conn.sendall(_encoder.encode(rep))
                except OSError:
                    pass  # the client went away
        finally:
            self.slots.release()

    def _dispatch(self, data: bytes, log) -> Reply:
        try:
            req = _req_decoder.decode(data)
            handler = self.handlers.get(req.op)
            if handler is None:
                raise errors.InvalidArgument(f"unknown admin request {req.op!r}")
            try:
                result = handler(**req.args)
            except TypeError as e:
                if "argument" not in str(e):
                    raise
                raise errors.InvalidArgument(f"bad arguments for {req.op!r}: {e}") from None
            return Reply(True, result=result)
        except errors.ShmlogError as e:
            return Reply(False, error=type(e).__name__, message=str(e))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return Reply(False, error="InvalidArgument", message=f"bad admin request: {e}")
        except Exception as e:  # the supervisor goes on; the caller learns why
            if isinstance(e, OSError):
                # an OS failure a handler let through (a write outside safefile): a full
                # filesystem or quota is NoSpace, a refusal PermissionDenied, as safefile's own
                mapped = safefile.os_error(e, e.filename or "the instance's data dir", "write")
                if isinstance(mapped, errors.ShmlogError):
                    return Reply(False, error=type(mapped).__name__, message=str(mapped))
            log.exception("admin: %s failed", data[:64])
            return Reply(False, error="SupervisorError", message=f"the supervisor failed: {e!r}")

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _answers(path: str) -> bool:
    try:
        Client(path).call("ping", timeout=2.0)
        return True
    except errors.ShmlogError:
        return False
