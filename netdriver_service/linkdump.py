"""Links as cnm sees them, read without pyroute2.

pyroute2 decodes every attribute of every link (some 0.4 ms a link); in a
namespace with thousands of links that is most of a resync, and a connect
asks for three or four links by name. This reads the few attributes a
:class:`Link` needs (some 25 us a link) from what the kernel sends without
statistics, on a NETLINK_ROUTE socket of its own: a whole dump
(:func:`read_links`) or one link by name (:func:`query_link`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "bridge", "veth", ... ("" when the kernel does not say)
    alias: str
    master: int  # index of the bridge the link is a port of; 0 when none
    up: bool
    mtu: int
    mac: str
    addresses: tuple[str, ...] = field(default=())  # CIDRs, IPv4 only


_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # rtattr: length, type
_U32 = struct.Struct("=I")
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 4, 10, 18, 20
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS, IFLA_INFO_KIND = 29, 1 << 3, 1
_SKIP_STATS = _RTATTR.pack(8, IFLA_EXT_MASK) + _U32.pack(RTEXT_FILTER_SKIP_STATS)


def _attributes(data: bytes | memoryview, offset: int, end: int):
    """(type, payload) of each rtattr in ``data[offset:end]``."""
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        yield kind & 0x3FFF, data[offset + 4:offset + length]  # without NLA_F_NESTED and co
        offset += (length + 3) & ~3


def _text(payload) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode(errors="replace")


def _decode_link(data: bytes, offset: int, end: int) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(data, offset)
    fields: dict = {"index": index, "up": bool(flags & 1), "name": "", "kind": "", "alias": "",
                    "master": 0, "mtu": 0, "mac": ""}
    for kind, payload in _attributes(data, offset + _IFINFO.size, end):
        if kind == IFLA_IFNAME:
            fields["name"] = _text(payload)
        elif kind == IFLA_IFALIAS:
            fields["alias"] = _text(payload)
        elif kind == IFLA_MASTER:
            fields["master"] = _U32.unpack_from(payload)[0]
        elif kind == IFLA_MTU:
            fields["mtu"] = _U32.unpack_from(payload)[0]
        elif kind == IFLA_ADDRESS:
            fields["mac"] = ":".join(f"{byte:02x}" for byte in bytes(payload))
        elif kind == IFLA_LINKINFO:
            for info, value in _attributes(payload, 0, len(payload)):
                if info == IFLA_INFO_KIND:
                    fields["kind"] = _text(value)
    return Link(**fields)


def read_links(sock: socket.socket, attempts: int = 3) -> list[Link]:
    """Every link of ``sock``'s namespace, from one dump (blocking: run in a thread).

    ``sock``: a NETLINK_ROUTE socket of its own, not one pyroute2 reads. A
    dump the kernel marks as interrupted (links changed while it ran) is
    taken again, up to ``attempts`` times in all.
    """
    sock.bind((0, 0))
    for sequence in range(1, attempts + 1):
        links, interrupted = _dump_links(sock, sequence)
        if not interrupted:
            break
    return links


def _dump_links(sock: socket.socket, sequence: int) -> tuple[list[Link], bool]:
    request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _SKIP_STATS
    sock.send(_NLMSG.pack(_NLMSG.size + len(request), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                          sequence, 0) + request)
    links: list[Link] = []
    interrupted = False
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, flags, seq, _ = _NLMSG.unpack_from(data, offset)
            if length < _NLMSG.size:
                raise OSError(errno.EPROTO, "malformed netlink message")
            end = offset + length
            if seq == sequence:
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE:
                    return links, interrupted
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    if code:
                        raise OSError(code, f"dump links: {os.strerror(code)}")
                elif kind == RTM_NEWLINK:
                    links.append(_decode_link(data, offset + _NLMSG.size, end))
            offset = (end + 3) & ~3


class LinkQuery:
    """Asks for one link by name on a non-blocking NETLINK_ROUTE socket of its own (not
    one pyroute2 reads), one question at a time."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._sequence = 0
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self.sock.close()

    async def get(self, name: str) -> Link | None:
        """Link ``name`` of the socket's namespace; None when there is none. OSError for
        any other answer of the kernel's."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            self._sequence = self._sequence % 0xFFFFFFFF + 1
            sequence = self._sequence
            await loop.sock_sendall(self.sock, link_request(name, sequence))
            while True:  # (an answer to a question whose asker was cancelled: skipped)
                data = await loop.sock_recv(self.sock, 1 << 16)
                found = _answer(data, sequence, name)
                if found is not _NO_ANSWER:
                    return found


_NO_ANSWER = object()


def link_request(name: str, sequence: int) -> bytes:
    """RTM_GETLINK for link ``name``, without statistics."""
    encoded = name.encode() + b"\0"
    attribute = _RTATTR.pack(4 + len(encoded), IFLA_IFNAME) + encoded
    attribute += b"\0" * (-len(attribute) % 4)
    request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute + _SKIP_STATS
    return _NLMSG.pack(_NLMSG.size + len(request), RTM_GETLINK, NLM_F_REQUEST, sequence,
                       0) + request


def _answer(data: bytes, sequence: int, name: str):
    """The link of the answer to question ``sequence`` in ``data`` (None: no such link),
    or _NO_ANSWER when ``data`` answers another."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, seq, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            raise OSError(errno.EPROTO, "malformed netlink message")
        if seq == sequence:
            if kind == RTM_NEWLINK:
                return _decode_link(data, offset + _NLMSG.size, offset + length)
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                if code == errno.ENODEV:
                    return None
                raise OSError(code, f"get link {name!r}: {os.strerror(code)}")
        offset = (offset + length + 3) & ~3
    return _NO_ANSWER


def deleted_links(data: bytes) -> list[Link]:
    """The links an RTM_DELLINK notification in ``data`` (one datagram read from a socket
    bound to RTMGRP_LINK) reports deleted."""
    links = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        if kind == RTM_DELLINK:
            links.append(_decode_link(data, offset + _NLMSG.size, offset + length))
        offset = (offset + length + 3) & ~3
    return links
