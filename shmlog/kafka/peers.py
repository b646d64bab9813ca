"""kafka/peers.py — who is on the other end of a listener connection, and may they in.

Owns: finding the local uid behind a TCP peer and deciding whether that uid
may use the instance the way the native API would let it (root, the
instance's owner, a member of the instance's group). Must never: let in a
loopback peer it cannot identify, or decide anything about the Kafka protocol.

How a TCP peer's uid is found: a connection from a local process has two
sockets in this network namespace, and the kernel lists both in
/proc/net/tcp (IPv4) or /proc/net/tcp6 (IPv6) with the uid that created
each. The client's row is the one whose local address is the peer address
the listener sees and whose remote address is the listener's own address;
its `uid` column is the client's. Both ends are fixed 4-tuples, so the match
is exact; only an ESTABLISHED row counts (a TIME_WAIT row shows uid 0),
so a client that closed before the lookup is not found and is refused.
A peer with no row on a non-loopback listener is a remote host: it has no
local uid, and the operator let it in by allowing non-loopback listening.
The read is O(sockets on the host); fine at connection rate, not per request.
"""

import ipaddress
import os
import pwd
import socket
import stat
import struct

from .. import permissions

TABLES = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}
ESTABLISHED = "01"  # the `st` column; TIME_WAIT rows (06) show uid 0 and never count


def _hex(family, host: str, port: int) -> str:
    """An address as /proc/net/tcp prints it: the raw address in 32-bit words of
    host byte order, each %08X, then ':' and the port %04X."""
    raw = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def tcp_peer_uid(sock: socket.socket) -> int | None:
    """The uid that owns the local client socket connected to sock, or None
    when the peer is not a local socket (remote host, or already gone)."""
    family = sock.family
    if family not in TABLES:
        return None
    peer, local = sock.getpeername(), sock.getsockname()
    want_local = _hex(family, peer[0].split("%")[0], peer[1])
    want_remote = _hex(family, local[0].split("%")[0], local[1])
    try:
        with open(TABLES[family]) as f:
            next(f, None)  # the column titles
            for line in f:
                cols = line.split()
                if len(cols) > 7 and cols[1] == want_local and cols[2] == want_remote and cols[3] == ESTABLISHED:
                    return int(cols[7])
    except OSError:
        return None
    return None


def instance_identity(data_dir: str) -> tuple[set[int], int | None]:
    """(uids that own the instance, its group id or None): root, this
    process's euid and the data dir's owner; the group when the data dir is
    the instance's group's (setgid, see permissions.py)."""
    owners = {0, os.geteuid()}
    try:
        st = os.stat(data_dir)
        if stat.S_ISDIR(st.st_mode):
            owners.add(st.st_uid)
    except OSError:
        pass
    return owners, permissions.instance_gid(data_dir)


def uid_allowed(uid: int, owners: set[int], gid: int | None) -> bool:
    """The native API's rule for a local uid: an owner, or a member of the group."""
    if uid in owners:
        return True
    if gid is None:
        return False
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return False  # no account: no known groups
    return gid in os.getgrouplist(pw.pw_name, pw.pw_gid)


def describe_uid(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def is_loopback_peer(sock: socket.socket) -> bool:
    try:
        a = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
    except (ValueError, OSError):
        return False
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)


def refusal(sock: socket.socket, owners: set[int], gid: int | None) -> str | None:
    """None when this TCP peer may use the instance, else why not (for the log)."""
    uid = tcp_peer_uid(sock)
    if uid is None:
        if is_loopback_peer(sock):
            return "its local uid cannot be found (/proc/net/tcp)"
        return None  # a remote host: let in by allow_non_loopback, it has no local uid
    if uid_allowed(uid, owners, gid):
        return None
    return (
        f"{describe_uid(uid)} is not root, the instance's owner or a member of its group "
        f"(the native API refuses it too); start the listener with allow_any_local_user "
        f"(--allow-any-local-user) to serve every local user"
    )
