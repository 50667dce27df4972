"""Link deletions in the host's namespace, as the kernel announces them.

When a container's network namespace dies (its last process exited and no
mount holds it: ``ip netns del``, a runtime removing a pod, a killed
``/proc/PID``), the kernel deletes the veths in it, and with each its peer in
the host's namespace, and says so on the RTMGRP_LINK multicast group. The
agent listens there instead of polling its endpoints: a dead container costs
one notification, and a host with a thousand live ones costs nothing. A
socket whose buffer overflowed lost notifications; the callback is then told
to check everything (``None``).

A socket filter keeps every other notification in the kernel: each connect
makes four or five RTM_NEWLINK (the veth, its port joining the bridge, both
going up), which would each wake the agent's event loop for nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
from collections.abc import Callable

from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl import RTM_DELLINK

from netdriver_service.linkdump import deleted_links
from netdriver_service.netns import in_namespace

log = logging.getLogger("netdriver.linkwatch")
RTMGRP_LINK = 1
RECEIVE_BUFFER = 4 << 20  # a thousand deletions at once fit


SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h; Python's socket module lacks it


def _only_deletions() -> bytes:
    """A classic BPF program passing the datagrams whose first message is RTM_DELLINK
    (a notification is one message): nlmsg_type, at offset 4, is in the host's byte
    order, and BPF loads halfwords in network order."""
    wanted = int.from_bytes(struct.pack("=H", RTM_DELLINK), "big")
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in (
        (0x28, 0, 0, 4),            # ldh [4]
        (0x15, 0, 1, wanted),       # jeq #wanted, next, skip one
        (0x06, 0, 0, 0xFFFFFFFF),   # ret #everything
        (0x06, 0, 0, 0),            # ret #0: dropped
    ))


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK |
                         socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    program = _only_deletions()
    code = ctypes.create_string_buffer(program, len(program))  # copied by the kernel
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        struct.pack("HP", len(program) // 8, ctypes.addressof(code)))  # sock_fprog
    except OSError as error:  # unfiltered, the reader skips the rest itself
        log.warning("link notifications unfiltered", extra={"error": str(error)})
    return sock


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
