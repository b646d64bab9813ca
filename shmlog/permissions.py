"""permissions.py — who may touch an instance: its owner and its group.

Owns: preparing the data dir (0770 plus setgid, so everything made inside
inherits the instance's group), the instance's gid (the data dir's group),
giving a new shared-memory segment or socket that group, and the
SO_PEERCRED test of an admin-socket peer.
Must never: widen access (nothing is ever world-readable or -writable), or
decide anything about topics.
"""
import grp
import os
import socket
import stat
import struct

SHM_DIR = "/dev/shm"
DIR_MODE = 0o2770          # rwx for owner and group, setgid: new files take the dir's group
FILE_UMASK = 0o007         # files 0660, dirs 0770 for the processes that own the instance


def group_gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        from .errors import InvalidArgument
        raise InvalidArgument(f"no such group {group!r} on this host (create it with groupadd)") from None


def prepare_data_dir(data_dir: str, group: str | None) -> None:
    """The supervisor's view of the data dir: 2770, group = the instance's group
    (when one is configured), applied to what exists below it too. Entries of
    other owners are left as they are (only their owner or root may change them)."""
    os.makedirs(data_dir, mode=0o770, exist_ok=True)
    gid = group_gid(group)
    me = os.geteuid()
    for root, dirs, files in os.walk(data_dir):
        for p in [root] + [os.path.join(root, x) for x in dirs + files]:
            st = os.lstat(p)
            if me not in (0, st.st_uid) or stat.S_ISLNK(st.st_mode):
                continue
            if gid is not None and st.st_gid != gid:
                os.chown(p, -1, gid)
            mode = DIR_MODE if stat.S_ISDIR(st.st_mode) else st.st_mode & 0o770
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(p, mode)


def adopt_segments(shm_names_prefix: str, gid: int | None) -> None:
    """Segments made before the group was set (by clients, or an older
    supervisor): 0660 and the instance's group, where we own them."""
    if gid is None:
        return
    me = os.geteuid()
    for name in os.listdir(SHM_DIR):
        if not name.startswith(shm_names_prefix) or ".live." in name:
            continue
        p = os.path.join(SHM_DIR, name)
        try:
            st = os.lstat(p)
            if me in (0, st.st_uid) and not stat.S_ISLNK(st.st_mode):
                give_group(p, gid)
        except FileNotFoundError:
            pass


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
    if gid is not None and os.stat(path).st_gid != gid:
        os.chown(path, -1, gid)
    os.chmod(path, mode)


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
