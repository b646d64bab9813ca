"""admin.py — the supervisor's admin socket: wire format, server and client.

Owns: where an instance's admin socket lives, the request/response structs
(msgpack via msgspec, one request per SOCK_SEQPACKET connection), the
server's accept-check-dispatch step (peer credentials checked with
SO_PEERCRED before a request is read) and the client call that turns an
error reply back into the shmlog exception.
Must never: carry out a request itself (the supervisor's handlers do), or
answer a peer that is neither our uid, root, nor in the instance's group.
"""
import hashlib
import os
import socket
from typing import Any

import msgspec

from . import config, errors, permissions

MAX_MESSAGE = 1 << 20
CALL_TIMEOUT_S = 60.0          # creating a topic allocates its rings; stopping fsyncs everything


class Request(msgspec.Struct):
    op: str
    args: dict[str, Any] = {}


class Reply(msgspec.Struct):
    ok: bool
    result: Any = None
    error: str | None = None           # a class name of shmlog.errors
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
                    "or a member of its group") from None
            s.sendall(_encoder.encode(Request(op, args)))
            try:
                data = s.recv(MAX_MESSAGE)
            except socket.timeout:
                raise errors.Timeout(f"the supervisor did not answer {op!r} within {timeout} s") from None
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
    """The listening socket; the supervisor's loop calls serve_one() when it is readable."""

    def __init__(self, settings: config.Settings, handlers: dict, gid: int | None):
        self.path = socket_path(settings)
        self.handlers = handlers
        self.gid = gid
        if os.path.exists(self.path):
            if _answers(self.path):
                raise errors.AlreadyRunning(f"a supervisor already listens at {self.path}")
            os.unlink(self.path)                       # a dead supervisor's
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        permissions.give_group(self.path, gid, 0o660)
        self.sock.listen(64)
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def serve_one(self, log) -> bool:
        """Accepts and answers one request; False when none was waiting."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        with conn:
            conn.settimeout(1.0)                     # a silent client cannot hold the loop for long
            ok, (pid, uid, _) = permissions.peer_allowed(conn, self.gid)
            try:
                data = conn.recv(MAX_MESSAGE)        # read even when refusing: unread data would reset
            except OSError:
                return True
            if not ok:
                log.warning("admin: refused pid %d uid %d (not the instance's user or group)", pid, uid)
                rep = Reply(False, error="PermissionDenied",
                            message=f"uid {uid} is neither the instance's user nor in its group")
            else:
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
                    rep = Reply(True, result=result)
                except errors.ShmlogError as e:
                    rep = Reply(False, error=type(e).__name__, message=str(e))
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    rep = Reply(False, error="InvalidArgument", message=f"bad admin request: {e}")
                except Exception as e:                  # the supervisor goes on; the caller learns why
                    log.exception("admin: %s failed", data[:64])
                    rep = Reply(False, error="SupervisorError", message=f"the supervisor failed: {e!r}")
            try:
                conn.sendall(_encoder.encode(rep))
            except OSError:
                pass                                    # the client went away
        return True

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
