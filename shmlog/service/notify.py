"""service/notify.py — systemd's notify protocol, spoken directly (no libsystemd).

Owns: sending READY=1, STOPPING=1, WATCHDOG=1 and STATUS=... datagrams to
$NOTIFY_SOCKET and reading the watchdog interval from $WATCHDOG_USEC.
Must never: fail the caller: without systemd (no $NOTIFY_SOCKET) every call
is a no-op, and a send error is reported, not raised.
"""

import logging
import os
import socket

logger = logging.getLogger("shmlog.notify")


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":  # abstract namespace
        addr = "\0" + addr[1:]
    return addr


def notify(*fields: str) -> bool:
    """Sends one datagram of "KEY=value" lines; True when it was sent."""
    addr = _address()
    if addr is None:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        s.sendto("\n".join(fields).encode(), addr)
        return True
    except OSError as e:
        logger.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    finally:
        s.close()


def watchdog_period_s() -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, or None when no
    watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        return None
