"""permissions.py — who may touch an instance: its owner and its group.

Owns: preparing the data dir (0770 plus setgid, so everything made inside
inherits the instance's group), checking that this process may use the data
dir before anything is created, the instance's gid (the data dir's group)
and whom its segments may belong to (segment_trust), giving a segment or
socket that group, and the SO_PEERCRED test of an admin-socket peer.
Must never: widen access (nothing is ever world-readable or -writable),
change a file it reached by a name that could have been swapped for a
symlink (every chown/chmod goes through an O_PATH|O_NOFOLLOW fd), or decide
anything about topics.
"""

import grp
import os
import socket
import stat
import struct

from . import errors, safefile
from ._native import trust_of

SHM_DIR = "/dev/shm"
DIR_MODE = 0o2770  # rwx for owner and group, setgid: new files take the dir's group
FILE_UMASK = 0o007  # files 0660, dirs 0770 for the processes that own the instance


def group_gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        from .errors import InvalidArgument

        raise InvalidArgument(f"no such group {group!r} on this host (create it with groupadd)") from None


def check_data_dir(data_dir: str, create: bool = False, write: bool = False) -> None:
    """PermissionDenied (naming the dir and the fix) unless this process can
    use data_dir: search it, and with write also create files in it (checked
    before a segment is created, so a refused connect leaves nothing behind).
    create: make it (and its parents, safely) when missing."""
    try:
        if create:
            safefile.makedirs(data_dir)
        need = os.X_OK | (os.W_OK if write else 0)
        if not os.access(data_dir, need, effective_ids=os.access in os.supports_effective_ids):
            st = os.stat(data_dir)
            raise errors.PermissionDenied(
                f"no {'write ' if write else ''}access to data dir {data_dir} (owner uid {st.st_uid}, "
                f"group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}) for uid {os.geteuid()}: run as "
                "the instance's user or a member of its group, or pass another data_dir"
            )
    except OSError as e:
        raise safefile.os_error(e, data_dir, "use data dir") from None


def segment_trust(data_dir: str):
    """Whom the instance's segments may belong to (struct shm_trust, see shm.c)."""
    return trust_of(data_dir)


def _fix_entry(name: str, dir_fd: int | None, gid: int | None, mode_of) -> None:
    """chown/chmod of the entry itself through an O_PATH|O_NOFOLLOW fd (a name
    swapped for a symlink between the look and the change is never followed)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode) or os.geteuid() not in (0, st.st_uid):
            return  # links are left alone; others' entries are theirs to change
        via = f"/proc/self/fd/{fd}"  # the inode we hold, whatever the name points to now
        if gid is not None and st.st_gid != gid:
            os.chown(via, -1, gid)
        mode = mode_of(st)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(via, mode)
    finally:
        os.close(fd)


def prepare_data_dir(data_dir: str, group: str | None) -> None:
    """The supervisor's view of the data dir: 2770, group = the instance's group
    (when one is configured), applied to what exists below it too. Entries of
    other owners are left as they are (only their owner or root may change them)."""
    safefile.makedirs(data_dir)
    gid = group_gid(group)

    def mode_of(st):
        return DIR_MODE if stat.S_ISDIR(st.st_mode) else st.st_mode & 0o770

    top = safefile.open_dir(data_dir)
    try:
        _fix_entry(".", top, gid, mode_of)
    finally:
        os.close(top)
    for _, dirs, files, dfd in os.fwalk(data_dir, follow_symlinks=False):
        for name in dirs + files:
            _fix_entry(name, dfd, gid, mode_of)


def adopt_segments(shm_names_prefix: str, gid: int | None) -> None:
    """Segments made before the group was set (by clients, or an older
    supervisor): 0660 and the instance's group, where we own them."""
    if gid is None:
        return
    for name in os.listdir(SHM_DIR):
        if not name.startswith(shm_names_prefix) or ".live." in name:
            continue
        _fix_entry(os.path.join(SHM_DIR, name), None, gid, lambda st: 0o660)


def instance_gid(data_dir: str) -> int | None:
    """The instance's group: the data dir's group once a supervisor set it up
    (setgid dir); None (the creator's group) before."""
    try:
        st = os.stat(data_dir)
    except OSError:
        return None
    return st.st_gid if st.st_mode & 0o2000 else None


def give_group(path: str, gid: int | None, mode: int = 0o660) -> None:
    """A segment or socket of the instance: mode and group (owner keeps it)."""
    _fix_entry(path, None, gid, lambda st: mode)


def shm_path(name: str) -> str:
    return SHM_DIR + name if name.startswith("/") else os.path.join(SHM_DIR, name)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a unix-socket peer, from the kernel (SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def _groups_of(pid: int, gid: int) -> set[int]:
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass
    return groups


def peer_allowed(sock: socket.socket, instance_gid_: int | None) -> tuple[bool, tuple[int, int, int]]:
    """May this peer administer the instance? Root, our own uid, or a member of its group."""
    pid, uid, gid = peer_credentials(sock)
    if uid in (0, os.geteuid()):
        return True, (pid, uid, gid)
    if instance_gid_ is not None and instance_gid_ in _groups_of(pid, gid):
        return True, (pid, uid, gid)
    return False, (pid, uid, gid)
