"""safefile.py — the one way shmlog opens, creates or replaces a file it writes.

Owns: reaching a directory without following a symlink that someone else
planted, creating directories, replacing a file atomically under an
unpredictable temporary name, opening a file for append / read-write /
read, and turning the OS's permission failures into errors.PermissionDenied
and a full filesystem or quota (ENOSPC, EDQUOT) into errors.NoSpace, each
naming the path and the fix.
Must never: decide what goes into a file, widen a mode, or write through a
name it has not just checked (every open is an openat on a directory fd it
holds, with O_NOFOLLOW).

Threat (issue 11, defect 8): the data dir is 2770, so every member of the
instance's group may create, rename and delete entries in it. A member can
plant a symlink (or a FIFO, or a hard link) at any name a root daemon is
about to open; open(path, "wb") would follow it and overwrite, say,
/etc/shadow. The invariants that stop it:

 S1 Directories are walked one component at a time with openat(O_DIRECTORY |
    O_NOFOLLOW). A symlink on the way is followed only when its owner is root
    or this process's euid: nobody else can make a symlink owned by them
    (lchown needs root), so a planted one is always refused. A symlink the
    admin made (/var/lib/shmlog -> /data/shmlog) keeps working.
 S2 A file is opened relative to the directory fd with O_NOFOLLOW (a
    symlink as the last component fails with ELOOP) and O_NONBLOCK (a
    planted FIFO cannot hang a daemon); after the open, fstat must show a
    regular file with one link (a hard link to a foreign file is refused)
    whose owner is us, root, or the instance's group owns it (the data dir
    is setgid, so every file made inside carries its group; a file of
    another group and owner was not made by the instance).
 S3 A replaced file is written to <name>.tmp.<128 random bits> created with
    O_CREAT | O_EXCL | O_NOFOLLOW (nothing can be waiting at that name),
    fsynced, renamed over the target (rename replaces a planted symlink,
    never follows it), and the directory fsynced.

A process dying at each step of replace(): before the rename, the target is
the old file and a <name>.tmp.<random> file may be left behind (never read
by shmlog; is_tmp_name() recognises it); after the rename, the new file is in
place but maybe not durable until the directory fsync (the old or the new
file after a power loss, never a mix).
"""

import errno
import os
import secrets
import stat
from typing import TypeVar

from . import errors

_E = TypeVar("_E", bound=OSError)

# O_PATH: a directory we may search but not list (a 0711 parent) is still reached
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40


def _denied(path: str, what: str, fix: str) -> errors.PermissionDenied:
    return errors.PermissionDenied(f"{what} {path}: {fix}")


def _keeping_errno(exc: _E, e: OSError) -> _E:
    """exc (a shmlog OSError with its own message) carries e's errno, so a
    caller that records or compares errnos (the persister publishes one in the
    ring) sees the OS's reason; str(exc) stays the message."""
    exc.errno = e.errno
    return exc


def os_error(e: OSError, path: str, doing: str) -> Exception:
    """The shmlog error for an OSError raised while `doing` on path (EACCES/EPERM
    become PermissionDenied with the fix; others stay as they are). Each keeps
    the errno it was made from."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _keeping_errno(
            errors.PermissionDenied(
                f"no access to {path} (cannot {doing}: {os.strerror(e.errno)}, uid {os.geteuid()}); run as the "
                "instance's user or a member of its group, or pass another data_dir"
            ),
            e,
        )
    if e.errno == errno.ELOOP:
        return _keeping_errno(
            _denied(path, f"refusing to {doing}", "it is a symbolic link (someone planted it?); remove it"), e
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(e, path, doing)
    return e


def no_space(e: OSError, path: str, doing: str) -> errors.NoSpace:
    """errors.NoSpace for an ENOSPC (filesystem full, or out of inodes) or EDQUOT
    (the user's quota) while `doing` on path: the path, and what to do about it.
    What was being written is not in place (replace() leaves the old file)."""
    why = "the user's disk quota is exhausted" if e.errno == errno.EDQUOT else "no space left on its filesystem"
    exc = errors.NoSpace(
        f"cannot {doing} {path}: {why}. Free space there (delete what else fills "
        "that filesystem, shorten retention_ms/retention_bytes, delete topics) or grow it, then retry"
    )
    return _keeping_errno(exc, e)


def _trusted_link(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def open_dir(path: str, create: bool = False, mode: int = 0o770, fsyncable: bool = False) -> int:
    """An O_PATH directory fd of path reached under S1 (creating missing
    directories when create), good for openat, fstat, mkdir and rename;
    fsyncable: an O_RDONLY one instead (fsync needs it). The caller closes it."""
    path = os.path.abspath(os.fspath(path))
    pending = [c for c in path.split("/") if c]
    pending.reverse()
    fd = os.open("/", _DIR_FLAGS)
    done = "/"
    links = 0
    try:
        while pending:
            comp = pending.pop()
            if comp == ".":
                continue
            try:
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create or comp == "..":
                    raise
                try:
                    os.mkdir(comp, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                here = os.path.join(done, comp)
                if not _trusted_link(st):
                    raise _denied(
                        here,
                        "refusing to follow the symbolic link",
                        f"it belongs to uid {st.st_uid}, not to this user or root (someone planted it?); remove it",
                    )
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), here)
                target = os.readlink(comp, dir_fd=fd)
                parts = [c for c in target.split("/") if c]
                pending.extend(reversed(parts))
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    done = "/"
                continue
            nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            done = os.path.normpath(os.path.join(done, comp))
        if fsyncable:
            nfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except OSError as e:
        os.close(fd)
        raise os_error(e, path, "reach directory") from None
    except BaseException:
        os.close(fd)
        raise


def makedirs(path: str, mode: int = 0o770) -> None:
    """os.makedirs(path, mode, exist_ok=True) under S1."""
    os.close(open_dir(path, create=True, mode=mode))


def _check_file(fd: int, path: str, dir_gid: int | None) -> None:
    """S2 on an open fd (closes it and raises when the file is not ours to
    write). dir_gid None: only our own files (or root's) pass."""
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "it is not a regular file"
    elif st.st_nlink != 1:
        why = f"it has {st.st_nlink} hard links (a link to another file?)"
    elif st.st_uid not in (0, os.geteuid()):
        if dir_gid is None or st.st_gid != dir_gid:
            why = f"it belongs to uid {st.st_uid} and gid {st.st_gid}, not to this user or the instance's group"
    if why:
        os.close(fd)
        raise _denied(path, "refusing to write", f"{why} (someone planted it?); remove it")


def _open_at(dfd: int, name: str, path: str, flags: int, mode: int, doing: str, owner_only: bool = False) -> int:
    """name opened relative to the directory fd dfd (S2); path only names it in errors."""
    try:
        dir_gid = None if owner_only else os.fstat(dfd).st_gid
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd)
    except OSError as e:
        raise os_error(e, path, doing) from None
    _check_file(fd, path, dir_gid)
    os.set_blocking(fd, True)
    return fd


def _open_in(path: str, flags: int, mode: int, create_dirs: bool, doing: str, owner_only: bool = False) -> int:
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    dfd = open_dir(d, create=create_dirs)
    try:
        return _open_at(dfd, name, path, flags, mode, doing, owner_only)
    finally:
        os.close(dfd)


def open_append_at(dfd: int, name: str, path: str, mode: int = 0o660) -> int:
    """open_append of name in the directory dfd (a directory the caller holds open)."""
    return _open_at(dfd, name, path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode, "open for append")


def open_append(path: str, mode: int = 0o660, create_dirs: bool = False) -> int:
    """fd of path opened O_WRONLY | O_APPEND, created if missing (S1, S2)."""
    return _open_in(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode, create_dirs, "open for append")


def open_rw(path: str, mode: int = 0o660, create_dirs: bool = False, owner_only: bool = False) -> int:
    """fd of path opened O_RDWR, created if missing (lock, pid and liveness
    token files; S1, S2). owner_only: an existing file must be ours (or
    root's), whatever its group (files in a world-writable dir like /dev/shm)."""
    return _open_in(path, os.O_RDWR | os.O_CREAT, mode, create_dirs, "open", owner_only)


def open_write_fd(path: str, mode: int = 0o660) -> int:
    """fd of an existing file opened O_WRONLY without O_APPEND (truncation after recovery)."""
    return _open_in(path, os.O_WRONLY, mode, False, "open for writing")


def open_read(path: str) -> int:
    """fd of an existing regular file for reading, never through a planted
    symlink or FIFO (S1, S2 without the owner test: reading is not writing)."""
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    dfd = open_dir(d)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise os_error(e, path, "read") from None
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _denied(path, "refusing to read", "it is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: str) -> bytes:
    """The whole of a regular file (FileNotFoundError when missing)."""
    fd = open_read(path)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def replace(path: str, data: bytes, sync_dir: bool = True, mode: int = 0o660, create_dirs: bool = False) -> None:
    """Replaces path with data atomically (S3): a crash leaves the old file or
    the new one, never a mix, and never writes anywhere but path."""
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    dfd = open_dir(d, create=create_dirs, fsyncable=sync_dir)
    tmp = f"{name}.tmp.{secrets.token_hex(16)}"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            raise os_error(e, path, "write") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as e:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise os_error(e, path, "write") from None
            raise
        if sync_dir:
            _fsync_dir_fd(dfd, d)
    finally:
        os.close(dfd)


def _fsync_dir_fd(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise os_error(e, path, "fsync directory") from None


def fsync_dir(path: str) -> None:
    fd = open_dir(path, fsyncable=True)
    try:
        _fsync_dir_fd(fd, path)
    finally:
        os.close(fd)


def is_tmp_name(name: str) -> bool:
    """Is name a temporary file replace() makes (left behind by a crash)?"""
    base, sep, tail = name.rpartition(".tmp.")
    return bool(sep and base and len(tail) == 32 and all(c in "0123456789abcdef" for c in tail))
