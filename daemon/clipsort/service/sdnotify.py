"""The systemd notification protocol (``sd_notify``), without libsystemd.

A datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace.
Outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger()


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``); True when a socket took them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Non-blocking: when the reader's queue is full (net.unix.max_dgram_qlen
    # datagrams), a blocking send would hang the supervisor loop, and with it
    # the watchdog pings. A dropped STATUS is harmless; the next one follows.
    flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, flags) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except BlockingIOError:
        log.debug("sd_notify_dropped", fields=list(fields))
        return False
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the monotonic timestamp systemd >= 253 expects for Type=notify-reload."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between the keep-alive pings systemd expects (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
