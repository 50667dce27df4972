"""systemd's readiness protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET``.

A service started by a ``Type=notify`` unit (deploy/systemd/) says READY=1 once its
health first reports SERVING, and STOPPING=1 when it shuts down; without
``$NOTIFY_SOCKET`` (not under systemd) this does nothing. Ten lines of protocol
rather than a dependency (systemd-python needs libsystemd headers to build).
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Sends ``state`` (e.g. ``READY=1``); whether there was a socket to send it to."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # @: the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True
