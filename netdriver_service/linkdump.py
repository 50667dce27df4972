"""Links as cnm sees them, read without pyroute2.

pyroute2 decodes every attribute of every link (some 0.4 ms a link); in a
namespace with thousands of links that is most of a resync, and a connect
asks for three or four links by name. This reads the few attributes a
:class:`Link` needs (some 25 us a link) from what the kernel sends without
statistics, on a NETLINK_ROUTE socket of its own: a whole dump
(:func:`read_links`), a deletion notice (:func:`deleted_links`), or one link
asked for by name (:mod:`rtnl`).
"""

from __future__ import annotations

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


NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # rtattr: length, type
U32 = struct.Struct("=I")
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 4, 10, 18, 20
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS, IFLA_INFO_KIND = 29, 1 << 3, 1
SKIP_STATS = RTATTR.pack(8, IFLA_EXT_MASK) + U32.pack(RTEXT_FILTER_SKIP_STATS)


def _attributes(data: bytes | memoryview, offset: int, end: int):
    """(type, payload) of each rtattr in ``data[offset:end]``."""
    while offset + 4 <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        yield kind & 0x3FFF, data[offset + 4:offset + length]  # without NLA_F_NESTED and co
        offset += (length + 3) & ~3


def _text(payload) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode(errors="replace")


def decode_link(data: bytes, offset: int, end: int) -> Link:
    _, _, index, flags, _ = IFINFO.unpack_from(data, offset)
    fields: dict = {"index": index, "up": bool(flags & 1), "name": "", "kind": "", "alias": "",
                    "master": 0, "mtu": 0, "mac": ""}
    for kind, payload in _attributes(data, offset + IFINFO.size, end):
        if kind == IFLA_IFNAME:
            fields["name"] = _text(payload)
        elif kind == IFLA_IFALIAS:
            fields["alias"] = _text(payload)
        elif kind == IFLA_MASTER:
            fields["master"] = U32.unpack_from(payload)[0]
        elif kind == IFLA_MTU:
            fields["mtu"] = U32.unpack_from(payload)[0]
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


def messages(data: bytes):
    """(type, flags, sequence, start of body, end) of each netlink message in ``data``;
    OSError (EPROTO) for a malformed one."""
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, kind, flags, sequence, _ = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size:
            raise OSError(errno.EPROTO, "malformed netlink message")
        yield kind, flags, sequence, offset + NLMSG.size, offset + length
        offset = (offset + length + 3) & ~3


def error_code(data: bytes, start: int) -> int:
    """The errno of the NLMSG_ERROR whose body starts at ``start`` (0: an acknowledgement)."""
    return -struct.unpack_from("=i", data, start)[0]


def _dump_links(sock: socket.socket, sequence: int) -> tuple[list[Link], bool]:
    request = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + SKIP_STATS
    sock.send(NLMSG.pack(NLMSG.size + len(request), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                          sequence, 0) + request)
    links: list[Link] = []
    interrupted = False
    while True:
        data = sock.recv(1 << 20)
        for kind, flags, seq, start, end in messages(data):
            if seq != sequence:
                continue
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                return links, interrupted
            if kind == NLMSG_ERROR:
                code = error_code(data, start)
                if code:
                    raise OSError(code, f"dump links: {os.strerror(code)}")
            elif kind == RTM_NEWLINK:
                links.append(decode_link(data, start, end))


def deleted_links(data: bytes) -> list[Link]:
    """The links an RTM_DELLINK notification in ``data`` (one datagram read from a socket
    bound to RTMGRP_LINK) reports deleted."""
    links = []
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, kind, _, _, _ = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size:
            break
        if kind == RTM_DELLINK:
            links.append(decode_link(data, offset + NLMSG.size, offset + length))
        offset = (offset + length + 3) & ~3
    return links
