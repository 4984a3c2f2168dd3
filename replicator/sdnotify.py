"""The systemd notify protocol (sd_notify(3)) in plain Python: readiness, watchdog, status.

systemd passes `$NOTIFY_SOCKET` to a `Type=notify` service: a datagram socket, a path or an
abstract name written with a leading "@". Outside systemd (a terminal, Windows, a container)
the variable is unset and every call is a cheap no-op that returns False.
"""

from __future__ import annotations

import os
import socket

from loguru import logger

_warned: set[str] = set()  # sockets we already said we could not reach: say it once


def notify(*states: str) -> bool:
    """Send `READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1` (one datagram, a state a line).

    True when systemd got the datagram; False when not under systemd or the socket is gone
    (logged once per socket). A newline inside a state would start a new one: it becomes a
    space, so a `STATUS=` carrying an error message stays one state.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # an abstract socket name (Linux)
    elif address.startswith("/"):
        target = address
    else:  # vsock:... and other forms are for virtual machines, not for us
        _warn_once(address, "not a path or an abstract socket name")
        return False
    family = getattr(socket, "AF_UNIX", None)
    if family is None:
        return False
    payload = "\n".join(" ".join(s.splitlines()) for s in states).encode("utf-8")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(payload)
    except OSError as exc:
        _warn_once(address, str(exc))
        return False
    _warned.discard(address)
    return True


def watchdog_seconds() -> float | None:
    """The service's watchdog timeout (`WatchdogSec=`) in seconds, or None when systemd does
    not watch this process. Ping with `notify("WATCHDOG=1")` every third of it."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # the watchdog is meant for another process (our parent, say)
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def _warn_once(address: str, reason: str) -> None:
    if address not in _warned:
        _warned.add(address)
        logger.warning(f"cannot notify systemd through NOTIFY_SOCKET={address}: {reason}")
