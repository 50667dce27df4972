"""The requests of a connect, encoded here and sent on a netlink socket of their own.

A connect makes a handful of rtnetlink requests: ask for a link by name,
create the veth pair, mark the host end, set links up, turn off IPv6
link-local addresses, add the address and the default route. Through
pyroute2 each costs 0.3-0.6 ms of CPU in its request filters and its
encoding and decoding of every attribute; here each is a few ``struct.pack``
calls and the kernel's answer is read for what it says (an acknowledgement,
an errno, or the one link asked for, decoded as :mod:`linkdump` decodes a
dump). That took the agent's CPU per connect from some 10 to some 6 ms, and
it is what lets 8 runtimes connect at once on two cores.

Only these requests: everything else (dumps of addresses and routes, VXLAN,
forwarding entries) goes through pyroute2 (:mod:`netlink`), whose errors and
results are the same as these.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)

from netdriver_service.linkdump import (
    IFINFO,
    IFLA_ADDRESS,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    NLMSG,
    RTATTR,
    SKIP_STATS,
    U32,
    Link,
    decode_link,
    error_code,
    messages,
)

IFF_UP = 0x1
IFLA_NET_NS_FD, IFLA_AF_SPEC = 28, 26
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src len, tos, table, protocol,
#                                       scope, type, flags


def attribute(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    found = RTATTR.pack(4 + len(payload), kind) + payload
    return found + b"\0" * (-len(found) % 4)


def text(kind: int, value: str) -> bytes:
    return attribute(kind, value.encode() + b"\0")


def u32(kind: int, value: int) -> bytes:
    return attribute(kind, U32.pack(value))


def u8(kind: int, value: int) -> bytes:
    return attribute(kind, struct.pack("=B", value))


def mac(kind: int, value: str) -> bytes:
    return attribute(kind, bytes.fromhex(value.replace(":", "")))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def link_selector(link: str | int) -> tuple[int, bytes]:
    """(ifinfomsg index, attributes) that name ``link``: an index, or a name."""
    return (link, b"") if isinstance(link, int) else (0, text(IFLA_IFNAME, link))


NO_IPV6_LINK_LOCAL = attribute(IFLA_AF_SPEC, attribute(socket.AF_INET6, u8(
    IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE)))


def message(kind: int, flags: int, body: bytes, sequence: int) -> bytes:
    """A request: the netlink header, then ``body``."""
    return NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, sequence, 0) + body


def get_link_request(name: str) -> bytes:
    return ifinfo() + text(IFLA_IFNAME, name) + SKIP_STATS


class Rtnl:
    """One namespace's socket for these requests: non-blocking, read from the event loop,
    one request at a time (an answer is matched to its request by sequence number, so
    one left unread by a cancelled request is skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._sequence = 0
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self.sock.close()

    async def request(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes] | None:
        """Sends one request; returns the (type, body) of the message that answers it, or
        None for an acknowledgement. OSError with the kernel's errno for a refusal."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            self._sequence = self._sequence % 0xFFFFFFFF + 1
            sequence = self._sequence
            await loop.sock_sendall(self.sock, message(kind, flags, body, sequence))
            while True:
                answer = _answer(await loop.sock_recv(self.sock, 1 << 16), sequence)
                if answer is not _OTHER:
                    return answer

    async def get_link(self, name: str) -> Link | None:
        """Link ``name``; None when there is none."""
        try:
            answer = await self.request(RTM_GETLINK, 0, get_link_request(name))
        except OSError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
        if answer is None or answer[0] != RTM_NEWLINK:
            raise OSError(errno.EPROTO, f"get link {name!r}: unexpected answer")
        return decode_link(answer[1], 0, len(answer[1]))

    async def set_link(self, link: str | int, attributes: bytes = b"", *, flags: int = 0,
                       change: int = 0) -> None:
        index, selector = link_selector(link)
        await self.request(RTM_NEWLINK, NLM_F_ACK,
                           ifinfo(index, flags, change) + selector + attributes)

    async def set_up(self, link: str | int) -> None:
        await self.set_link(link, flags=IFF_UP, change=IFF_UP)

    async def set_down(self, link: str | int) -> None:
        await self.set_link(link, flags=0, change=IFF_UP)

    async def delete_link(self, link: str | int) -> None:
        index, selector = link_selector(link)
        await self.request(RTM_DELLINK, NLM_F_ACK, ifinfo(index) + selector)

    async def create_veth(self, name: str, *, mtu: int, master: int, peer_name: str,
                          peer_ns_fd: int | None, peer_mac: str) -> None:
        """``peer_ns_fd`` None: the peer stays in this namespace."""
        where = b"" if peer_ns_fd is None else u32(IFLA_NET_NS_FD, peer_ns_fd)
        peer = ifinfo() + text(IFLA_IFNAME, peer_name) + where \
            + u32(IFLA_MTU, mtu) + mac(IFLA_ADDRESS, peer_mac)
        info = text(IFLA_INFO_KIND, "veth") + attribute(
            IFLA_INFO_DATA, attribute(VETH_INFO_PEER, peer))
        await self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                           ifinfo() + text(IFLA_IFNAME, name) + u32(IFLA_MTU, mtu)
                           + u32(IFLA_MASTER, master) + attribute(IFLA_LINKINFO, info))

    async def mark_bridge_port(self, name: str, alias: str, hairpin: bool) -> None:
        """Sets the alias of bridge port ``name`` and its hairpin mode."""
        port = text(IFLA_INFO_SLAVE_KIND, "bridge") + attribute(
            IFLA_INFO_SLAVE_DATA, u8(IFLA_BRPORT_MODE, int(hairpin)))
        await self.set_link(name, text(IFLA_IFALIAS, alias) + attribute(IFLA_LINKINFO, port))

    async def add_address(self, index: int, cidr: str) -> None:
        """IPv4, or IPv6 without duplicate address detection (nodad): the address is the
        endpoint's alone (IPAM says so), and a connect must not wait a second for DAD."""
        interface = ipaddress.ip_interface(cidr)
        packed = interface.ip.packed
        if interface.version == 4:
            header = _IFADDR.pack(socket.AF_INET, interface.network.prefixlen, 0, 0, index)
            body = attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed)
        else:
            header = _IFADDR.pack(socket.AF_INET6, interface.network.prefixlen, IFA_F_NODAD, 0,
                                  index)
            body = attribute(IFA_ADDRESS, packed)
        await self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, header + body)

    async def add_default_route(self, gateway: str, index: int) -> None:
        """The default route of ``gateway``'s family."""
        address = ipaddress.ip_address(gateway)
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        await self.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                           _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                                       RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                           + attribute(RTA_GATEWAY, address.packed) + u32(RTA_OIF, index))


class Deleter:
    """A blocking socket that deletes links, for one worker thread: the kernel does a
    deletion inside the request (a veth's takes some 15 ms, most of it waiting for RCU
    grace periods), and on the event loop's socket that would stall everything else."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._sequence = 0

    def close(self) -> None:
        self.sock.close()

    def delete_link(self, index: int) -> None:
        """Deletes link ``index``. OSError with the kernel's errno for a refusal."""
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        self.sock.sendall(message(RTM_DELLINK, NLM_F_ACK, ifinfo(index), self._sequence))
        while _answer(self.sock.recv(1 << 16), self._sequence) is _OTHER:
            pass


_OTHER = object()


def _answer(data: bytes, sequence: int):
    """What in ``data`` answers request ``sequence``: None (acknowledged), (type, body),
    or _OTHER when nothing does. Raises OSError for an error the kernel answered."""
    for kind, _, seq, start, end in messages(data):
        if seq != sequence:
            continue
        if kind != NLMSG_ERROR:
            return kind, data[start:end]
        code = error_code(data, start)
        if code:
            raise OSError(code, os.strerror(code))
        return None
    return _OTHER
