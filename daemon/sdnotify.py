"""systemd's sd_notify datagram protocol, without a dependency.

systemd (Type=notify) hands the service a unix datagram socket in NOTIFY_SOCKET; the
service sends newline-separated KEY=VALUE lines to it: READY=1, STATUS=..., STOPPING=1,
WATCHDOG=1. A leading '@' names a socket in the abstract namespace. Without NOTIFY_SOCKET
(a terminal, a test, another supervisor) every call is a silent no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["notify", "watchdog_interval", "watchdog_task"]


def _socket_address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: the kernel wants a leading NUL byte instead of '@'.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd also knows vsock addresses (vsock:CID:PORT); a jam daemon never runs there.
    return None


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=listening") to systemd; True when sent.

    Returns False, and never raises, when NOTIFY_SOCKET is unset or unusable or the
    socket is gone: a supervisor that stopped listening must not stop the music.
    """
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not lines:
        return False
    message = "\n".join(lines).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for.

    systemd sets WATCHDOG_PID to the main process; a child that inherited the
    environment must not ping on its behalf.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        period = int(usec)
    except ValueError:
        return None
    if period <= 0:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return period / 2_000_000


async def watchdog_task() -> None:
    """Ping WATCHDOG=1 from the event loop itself until cancelled.

    Running on the loop (not a thread) is the point: if the loop stalls, the pings stop
    and systemd kills and restarts the daemon. Returns at once when no watchdog is set.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
