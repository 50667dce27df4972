"""Link deletions in the host's namespace, as the kernel announces them.

When a container's network namespace dies (its last process exited and no
mount holds it: ``ip netns del``, a runtime removing a pod, a killed
``/proc/PID``), the kernel deletes the veths in it, and with each its peer in
the host's namespace, and says so on the RTMGRP_LINK multicast group. The
agent listens there instead of polling its endpoints: a dead container costs
one notification, and a host with a thousand live ones costs nothing. A
socket whose buffer overflowed lost notifications; the callback is then told
to check everything (``None``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from pyroute2.netlink import NETLINK_ROUTE

from netdriver_service.linkdump import deleted_links
from netdriver_service.netns import in_namespace

log = logging.getLogger("netdriver.linkwatch")
RTMGRP_LINK = 1
RECEIVE_BUFFER = 4 << 20  # a thousand deletions at once fit


def _socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK |
                         socket.SOCK_CLOEXEC, NETLINK_ROUTE)


class LinkWatch:
    """Calls ``deleted(name)`` for each link deleted in namespace ``ns`` (the agent's
    own when None), ``deleted(None)`` when notifications were lost."""

    def __init__(self, deleted: Callable[[str | None], None], ns: str | None = None) -> None:
        self.deleted = deleted
        self.ns = ns
        self.sock: socket.socket | None = None

    async def start(self) -> LinkWatch:
        sock = _socket() if self.ns is None else await in_namespace(self.ns, _socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, RTMGRP_LINK))
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        return self

    def _read(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    log.warning("link notifications failed", extra={"error": str(error)})
                    return
                self.deleted(None)  # some were dropped: every endpoint is checked
                continue
            for link in deleted_links(data):
                self.deleted(link.name)

    def close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
