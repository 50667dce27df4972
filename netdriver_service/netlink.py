"""The one privileged layer: the small set of netlink verbs the drivers use.

Plain data in and out (names, CIDR strings, :class:`Link`); errno values
become cnm's named errors; deleting something that is already gone
succeeds quietly. Every verb takes an optional ``ns``, the path of the
network namespace to act in (``None``: the agent's own). A netlink socket
is opened *for* that namespace, by a short-lived thread that enters it,
opens the socket and exits; no thread that runs anything else ever
changes namespace, and the socket keeps working from the event loop.
Sockets are kept and reused, one per namespace, in a small LRU; a socket
keeps its namespace alive, so callers forget the namespaces they do not own
(a runtime's ``/proc/PID/ns/net``) once done with them.

Everything here is asynchronous (pyroute2's ``AsyncIPRoute``); the only
blocking work (entering a namespace, writing a sysctl) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter
from pyroute2 import AsyncIPRoute
from pyroute2.netlink import (
    NETLINK_ROUTE,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_NOARP, NUD_PERMANENT

from cnm import errors
from netdriver_service.linkdump import Link, read_links
from netdriver_service.netns import check_namespace_path, in_namespace
from netdriver_service.rtnl import IFLA_IFALIAS, NO_IPV6_LINK_LOCAL, Deleter, Rtnl, text

log = logging.getLogger("netdriver.netlink")

# Refusals a step did not expect (a delete finding its object gone is not one), by the
# errno's symbol: bounded by the kernel's errno list.
NETLINK_ERRORS = Counter("cnm_agent_netlink_errors",
                         "Netlink requests the kernel refused, by errno", ["errno"])


class LinkNotFound(errors.NotFound):
    default_reason = "LINK_NOT_FOUND"


class LinkExists(errors.AlreadyExists):
    default_reason = "LINK_EXISTS"


class LinkNotOwned(errors.FailedPrecondition):
    """A link of the name exists but lacks cnm's ownership mark (``metadata["mark"]``: its own)."""

    default_reason = "LINK_NOT_OWNED"


_ERRNO_ERRORS: dict[int, type[errors.CnmError]] = {
    errno.ENODEV: LinkNotFound,
    errno.ENOENT: errors.NotFound,
    errno.ESRCH: errors.NotFound,
    errno.EEXIST: LinkExists,
    errno.EBUSY: errors.FailedPrecondition,
    errno.EINVAL: errors.InvalidArgument,
    errno.ERANGE: errors.InvalidArgument,
    errno.ENETUNREACH: errors.FailedPrecondition,
    errno.EPERM: errors.PermissionDenied,
    errno.EACCES: errors.PermissionDenied,
    errno.ENOSPC: errors.ResourceExhausted,
    errno.EXFULL: errors.ResourceExhausted,  # a bridge has its maximum of 1024 ports
    errno.ENOMEM: errors.ResourceExhausted,
}


def _convert(error: OSError | NetlinkError, what: str) -> errors.CnmError:
    code = error.code if isinstance(error, NetlinkError) else error.errno
    NETLINK_ERRORS.labels(errno.errorcode.get(code or 0, "unknown")).inc()
    cls = _ERRNO_ERRORS.get(code or 0, errors.Internal)
    text = os.strerror(code) if code else str(error)
    return cls(f"{what}: {text}", reason=None, errno=code)


# What a delete finds when the object is already gone; what an add finds when it is there.
GONE = frozenset({errno.ENODEV, errno.ENOENT})
THERE = frozenset({errno.EEXIST})
NO_IPV6 = frozenset({errno.EAFNOSUPPORT})  # the kernel was booted with ipv6.disable=1


@contextlib.contextmanager
def _errors(what: str, *, fine: frozenset[int] = frozenset()):
    """Turns a kernel error of the block into a cnm error that says ``what`` failed; an
    errno in ``fine`` (:data:`GONE`, :data:`THERE`) ends the block quietly instead."""
    try:
        yield
    except (NetlinkError, OSError) as error:
        code = error.code if isinstance(error, NetlinkError) else error.errno
        if code in fine:
            return
        raise _convert(error, what) from error


def _link(message) -> Link:
    info = message.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
    return Link(
        index=message["index"],
        name=message.get_attr("IFLA_IFNAME"),
        kind=kind,
        alias=message.get_attr("IFLA_IFALIAS") or "",
        master=message.get_attr("IFLA_MASTER") or 0,
        up=bool(message["flags"] & 1),
        mtu=message.get_attr("IFLA_MTU") or 0,
        mac=message.get_attr("IFLA_ADDRESS") or "",
    )


# IFLA_AF_SPEC asking for IN6_ADDR_GEN_MODE_NONE.
_NO_IPV6_LINK_LOCAL = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}


VXLAN_PORT = 4789  # IANA
MAIN_TABLE = 254  # RT_TABLE_MAIN
# Routes that claim a destination: unicast, and blackhole, unreachable and prohibit
# (an operator keeping a prefix for something else).
ROUTE_TYPES = frozenset({1, 6, 7, 8})
ZERO_MAC = "00:00:00:00:00:00"
# The neighbour tables a VXLAN device's entries are in (IPv6 where the kernel has it).
NEIGHBOUR_FAMILIES = (socket.AF_INET, *((socket.AF_INET6,)
                                        if os.path.isdir("/proc/sys/net/ipv6") else ()))


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@dataclass(frozen=True)
class VxlanInfo:
    vni: int
    local: str
    port: int
    learning: bool
    proxy: bool


@dataclass(frozen=True)
class Forwarding:
    """What a VXLAN device forwards where, as programmed (never learned).

    - ``flood``: ``00:00:00:00:00:00 dst PEER`` entries of the device, one per
      other host: head-end replication of broadcast and multicast;
    - ``unicast``: ``MAC dst PEER`` entries of the device for remote endpoints;
    - ``bridge_static``: the same MACs pinned to the VXLAN port in the bridge's
      FDB (``master static``), so the bridge never floods a frame for them;
    - ``neighbours``: ``IP lladdr MAC`` entries on the device, which answers ARP
      for them itself (``proxy``): ARP never crosses the underlay.
    """

    flood: frozenset[str]
    unicast: dict[str, str]
    bridge_static: frozenset[str]
    neighbours: dict[str, str]


def _carries(link: Link, mark: str) -> bool:
    return link.alias.startswith(mark) if mark.endswith(":") else link.alias == mark


def netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


@dataclass(frozen=True)
class _Retiring:
    peer_ns: str  # the namespace the link's peer is in ("": the host's, or unknown)
    deletion: asyncio.Future | None


class _Handle:
    """The sockets of one namespace, both opened in it at once: one for the requests of a
    connect (:class:`Rtnl`), and one that pyroute2 is given for everything else when
    first needed (making its AsyncIPRoute costs more than all of a connect's requests)."""

    def __init__(self, rtnl: Rtnl, spare: socket.socket) -> None:
        self.rtnl = rtnl
        self._spare: socket.socket | None = spare
        self._iproute: AsyncIPRoute | None = None

    async def iproute(self) -> AsyncIPRoute:
        if self._iproute is None:
            sock, self._spare = self._spare, None
            if sock is None:
                raise errors.Unavailable("netlink socket closed")
            iproute = AsyncIPRoute(fileno=sock.detach(), groups=0)
            await iproute.setup_endpoint()
            self._iproute = iproute
        return self._iproute

    def close(self) -> None:
        self.rtnl.close()
        if self._spare is not None:
            self._spare.close()
        if self._iproute is not None:
            self._iproute.close()


async def _open_handle(path: str | None) -> _Handle:
    def sockets() -> tuple[socket.socket, socket.socket]:
        return netlink_socket(), netlink_socket()

    rtnl, spare = sockets() if path is None else await in_namespace(path, sockets)
    return _Handle(Rtnl(rtnl), spare)


class Netlink:
    """Netlink verbs over one cached socket per namespace."""

    def __init__(self, host_ns: str | None = None, max_namespaces: int = 64) -> None:
        # host_ns: act on this namespace as "the host" instead of the agent's
        # own (in-process tests); sysctls are then written from inside it too.
        self.host_ns = host_ns
        self._host: _Handle | None = None
        self._namespaces: OrderedDict[tuple[int, int], _Handle] = OrderedDict()
        self._paths: dict[str, tuple[int, int]] = {}
        self._max_namespaces = max_namespaces
        # One dump at a time per socket: the kernel refuses a second (EBUSY) while one
        # runs, and a dump runs until every message of it is read.
        self._dumping: dict[int, asyncio.Lock] = {}
        # Links being deleted in the background (retire_owned_link), by name.
        self._retiring: dict[str, _Retiring] = {}
        self._deleter: Deleter | None = None
        self._reaper: ThreadPoolExecutor | None = None

    async def _dump(self, handle: AsyncIPRoute, request) -> list:
        """Every message of the dump ``request()`` starts on ``handle``, read to the end
        (a dump left half read keeps the socket busy), one dump at a time per socket."""
        lock = self._dumping.setdefault(id(handle), asyncio.Lock())
        async with lock:
            return [message async for message in await request()]

    async def open(self) -> Netlink:
        with _errors("open netlink socket"):
            self._host = await _open_handle(self.host_ns)
            self._deleter = Deleter(
                netlink_socket() if self.host_ns is None
                else await in_namespace(self.host_ns, netlink_socket))
        self._reaper = ThreadPoolExecutor(1, thread_name_prefix="netlink-reaper")
        return self

    async def close(self) -> None:
        await self.settle()
        if self._reaper is not None:
            self._reaper.shutdown()
            self._reaper = None
        if self._deleter is not None:
            self._deleter.close()
            self._deleter = None
        for handle in [self._host, *self._namespaces.values()]:
            if handle is not None:
                handle.close()
        self._host = None
        self._namespaces.clear()
        self._paths.clear()

    async def _handle(self, ns: str | None) -> AsyncIPRoute:
        return await (await self._sockets(ns)).iproute()

    async def _rtnl(self, ns: str | None) -> Rtnl:
        return (await self._sockets(ns)).rtnl

    async def _sockets(self, ns: str | None) -> _Handle:
        if ns is None:
            if self._host is None:
                raise errors.Unavailable("netlink is not open")
            return self._host
        stat = check_namespace_path(ns)
        key = (stat.st_dev, stat.st_ino)
        handle = self._namespaces.get(key)
        if handle is not None:
            self._namespaces.move_to_end(key)
            return handle
        with _errors(f"open netlink socket in namespace {ns!r}"):
            handle = await _open_handle(ns)
        self._namespaces[key] = handle
        self._paths[ns] = key
        while len(self._namespaces) > self._max_namespaces:
            self._drop(next(iter(self._namespaces)))
        return handle

    def _drop(self, key: tuple[int, int]) -> None:
        handle = self._namespaces.pop(key, None)
        for path in [path for path, known in self._paths.items() if known == key]:
            del self._paths[path]
        if handle is not None:
            self._dumping.pop(id(handle._iproute), None)
            handle.close()

    def forget_namespace(self, ns: str) -> None:
        """Closes the cached socket of ``ns``: a netlink socket holds a reference to its
        namespace, and would keep a dead container's namespace (and veths) alive."""
        key = self._paths.get(ns)
        if key is not None:
            self._drop(key)

    async def ping(self) -> bool:
        handle = await self._handle(None)
        await handle.link("get", index=1)
        return True

    # Links ---------------------------------------------------------------

    async def _link_message(self, name: str, ns: str | None = None):
        """The kernel's message for link ``name``; None when there is no such link."""
        handle = await self._handle(ns)
        with _errors(f"get link {name!r}", fine=GONE):
            return (await handle.link("get", ifname=name))[0]
        return None

    async def get_link(self, name: str, ns: str | None = None) -> Link | None:
        """Link ``name``; None when there is no such link."""
        rtnl = await self._rtnl(ns)
        with _errors(f"get link {name!r}"):
            return await rtnl.get_link(name)

    async def get_owned_link(self, name: str, mark: str, ns: str | None = None) -> Link | None:
        """Link ``name`` if it carries ownership ``mark``; None if there is no such link.

        ``mark`` is an exact mark, or a prefix of marks when it ends in ":"
        (an endpoint's veth, whatever its network). A link of that name with
        any other mark, or none, raises :class:`LinkNotOwned`.
        """
        link = await self.get_link(name, ns)
        if link is None or _carries(link, mark):
            return link
        raise LinkNotOwned(
            f"link {name!r} is not marked {mark!r} (its mark: {link.alias or 'none'})",
            interface=name, mark=link.alias,
        )

    async def delete_owned_link(self, name: str, mark: str, ns: str | None = None) -> bool:
        """Deletes link ``name`` if it carries ``mark`` (see :meth:`get_owned_link`);
        False (quietly) when it is not there; :class:`LinkNotOwned` when it is not cnm's."""
        link = await self.get_owned_link(name, mark, ns)
        if link is None:
            return False
        rtnl = await self._rtnl(ns)
        with _errors(f"delete link {name!r}", fine=GONE):
            await rtnl.delete_link(link.index)  # by index: this very link
            return True
        return False

    async def retire_owned_link(self, name: str, mark: str, peer_ns: str = "") -> bool:
        """Takes link ``name`` of the host, if it carries ``mark`` (see
        :meth:`get_owned_link`), out of use at once and deletes it in the background;
        False (quietly) when it is not there.

        Deleting a veth takes the kernel some 15 ms, most of it waiting for RCU grace
        periods, and nothing a disconnect promises needs that: once the link is down
        the bridge forwards nothing to or from it, and its peer has no carrier. Until
        it is gone, :meth:`settle` waits for it, for ``name`` or for ``peer_ns``, the
        namespace its peer is in (whose interface names it still takes).
        """
        link = await self.get_owned_link(name, mark)
        if link is None or self._reaper is None:
            return False
        rtnl = await self._rtnl(None)
        with _errors(f"set {name!r} down", fine=GONE):
            await rtnl.set_down(link.index)
            deletion = asyncio.get_running_loop().run_in_executor(
                self._reaper, self._delete_retired, name, link.index)
            self._retiring[name] = _Retiring(peer_ns, deletion)
            deletion.add_done_callback(lambda _: self._retired(name, deletion))
            return True
        return False

    def _delete_retired(self, name: str, index: int) -> None:
        """In the reaper's thread."""
        with _errors(f"delete link {name!r}", fine=GONE):
            self._deleter.delete_link(index)  # by index: this very link

    def _retired(self, name: str, deletion: asyncio.Future) -> None:
        if self._retiring.get(name, _Retiring("", None)).deletion is deletion:
            del self._retiring[name]
        if not deletion.cancelled() and deletion.exception() is not None:
            # Down and still marked as its endpoint's: the orchestrator's reconciler
            # finds it without a record and deletes it.
            log.warning("could not delete a retired link", extra={
                "interface": name, "error": str(deletion.exception())})

    async def settle(self, name: str | None = None, ns: str | None = None) -> None:
        """Waits until the links retired so far are gone: all of them, or link ``name``
        and those whose peer is in namespace ``ns``."""
        everything = name is None and ns is None
        waits = [
            retiring.deletion for link, retiring in self._retiring.items()
            if everything or link == name or (ns and retiring.peer_ns == ns)
        ]
        if waits:
            await asyncio.wait(waits)  # never cancels them; failures are logged

    async def list_links(self, ns: str | None = None, addresses: bool = False) -> list[Link]:
        """Every link of namespace ``ns`` (the host's when None); with ``addresses``, their
        IPv4 addresses too. The host's are read as :meth:`snapshot_links` reads them."""
        if ns is None:
            links = await self.snapshot_links()
        else:
            handle = await self._handle(ns)
            with _errors("list links"):
                links = [_link(m) for m in await self._dump(handle, lambda: handle.link("dump"))]
        if not addresses:
            return links
        handle = await self._handle(ns)
        by_index: dict[int, list[str]] = {}
        with _errors("list addresses"):
            for message in await self._dump(
                    handle, lambda: handle.addr("dump", family=socket.AF_INET)):
                cidr = f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}"
                by_index.setdefault(message["index"], []).append(cidr)
        return [
            Link(**{**link.__dict__, "addresses": tuple(by_index.get(link.index, ()))})
            for link in links
        ]

    async def snapshot_links(self) -> list[Link]:
        """The links of the agent's own namespace, read and decoded in a worker thread.

        A host with 1,000 endpoints has 2,000 links: pyroute2 would spend 0.8 s
        of event loop decoding them, :func:`read_links` spends 50 ms, off the
        loop, so connects keep being served meanwhile. The socket is opened
        for the host namespace as every handle is; the thread never switches.
        """
        with _errors("list links"):
            if self.host_ns is None:
                sock = netlink_socket()
            else:
                sock = await in_namespace(self.host_ns, netlink_socket)

        def read() -> list[Link]:
            with _errors("list links"), sock:
                return read_links(sock)

        return await asyncio.to_thread(read)

    async def create_bridge(
        self, name: str, *, mtu: int, alias: str, mac: str | None = None,
        mcast_snooping: bool = False,
    ) -> None:
        """Creates bridge ``name``, up, with ``mtu``, marked with ``alias``.

        With ``mac`` the bridge keeps that address; without, the kernel gives
        it the lowest of its ports' and changes it as ports come and go.

        IGMP/MLD snooping is off unless asked for. Until some host on the bridge
        sends multicast queries (cnm runs no querier, nor does Docker), the kernel
        floods every multicast frame to every port whether snooping is on or not;
        but with it on, every port that comes or goes re-arms two query timers on
        every port. At 1,000 ports that is 2,000 timer runs in softirq per connect
        and per disconnect: a connect there took 1.33x its time at 10 ports with
        snooping on, 1.03x with it off. A network whose containers run a querier
        can ask for snooping (``cnm.bridge.mcast_snooping=true``).
        """
        handle = await self._handle(None)
        extra = {"address": mac} if mac else {}
        with _errors(f"create bridge {name!r}"):
            await handle.link(
                "add", ifname=name, kind="bridge", mtu=mtu, state="up",
                br_mcast_snooping=int(mcast_snooping), **extra,
            )
        await self._mark_alias(name, alias)

    async def _mark_alias(self, name: str, alias: str) -> None:
        rtnl = await self._rtnl(None)
        await self._mark_new_link(name, lambda: rtnl.set_link(name, text(IFLA_IFALIAS, alias)))

    async def _mark_new_link(self, name: str, mark, then=None) -> None:
        """Awaits ``mark()``, which sets the ownership mark of link ``name``, just created,
        then ``then()`` if given; deletes the link if any of it fails.

        The kernel takes IFLA_IFALIAS only in a change, never with the add, so
        a link is briefly unmarked: never leave one so, or its name would be
        refused ever after as taken by a link cnm does not own.
        """
        rtnl = await self._rtnl(None)
        try:
            with _errors(f"mark link {name!r}"):
                await mark()
            if then is not None:
                await then()
        except BaseException:
            with contextlib.suppress(OSError):
                await rtnl.delete_link(name)
            raise

    async def create_veth(
        self, name: str, *, mtu: int, master: int, peer_name: str, peer_ns: str, peer_mac: str,
        alias: str, hairpin: bool,
    ) -> None:
        """Creates a veth pair: ``name`` here, a port of bridge ``master`` (in hairpin mode
        if asked), marked with ``alias``, without IPv6, and left **down**; ``peer_name``
        created directly inside namespace ``peer_ns`` (down, with ``peer_mac``; in the
        agent's own when ``peer_ns`` is empty, for a runtime to move).

        The caller sets ``name`` up last, once the container's end is ready, and the
        bridge enables the port once. A port made up at once is enabled before its
        peer has carrier: the bridge walks all its ports for that, again when the
        carrier comes, and every change to a port that is up without carrier walks
        the host's IPv6 routes, one per port. At 1,000 ports on the bridge those
        walks cost about 1 ms per connect. A bridge port needs no IPv6 of its own:
        the containers' IPv6 crosses the bridge at layer 2 all the same.
        """
        rtnl = await self._rtnl(None)
        what = f"create veth {name!r} with peer {peer_name!r} in {peer_ns or 'the host'!r}"
        fd = None
        if peer_ns:
            with _errors(what):
                fd = os.open(peer_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _errors(what):
                await rtnl.create_veth(name, mtu=mtu, master=master, peer_name=peer_name,
                                       peer_ns_fd=fd, peer_mac=peer_mac)
        finally:
            if fd is not None:
                os.close(fd)
        await self._mark_new_link(
            name, lambda: rtnl.mark_bridge_port(name, alias, hairpin),
            then=lambda: self._disable_ipv6(name),
        )

    async def _disable_ipv6(self, name: str) -> None:
        """Turns IPv6 off on link ``name`` of the agent's namespace (its own sysctl only)."""
        try:
            await self.set_sysctl("net", "ipv6", "conf", name, "disable_ipv6", value="1")
        except errors.NotFound:
            if os.path.isdir("/proc/sys/net/ipv6"):
                raise
            # Booted with ipv6.disable=1: no IPv6 to turn off.

    async def set_bridge_port(self, name: str, *, alias: str, hairpin: bool) -> None:
        """Marks bridge port ``name`` with ``alias``, sets its hairpin mode and turns off its
        IPv6 link-local address (see :meth:`disable_ipv6_link_local`), in one request."""
        handle = await self._handle(None)
        port = {"ifname": name, "kind": "bridge_slave", "mode": int(hairpin), "ifalias": alias}
        with _errors(f"set alias and hairpin of {name!r}"):
            try:
                await handle.link("set", **port, IFLA_AF_SPEC=_NO_IPV6_LINK_LOCAL)
            except NetlinkError as error:
                if error.code != errno.EAFNOSUPPORT:  # IPv6 off in the kernel: nothing to turn off
                    raise
                await handle.link("set", **port)

    async def disable_ipv6_link_local(self, link: str | int, ns: str | None = None) -> None:
        """Stops the kernel from giving ``link`` an IPv6 link-local address (addrgenmode none).

        Must come before the link goes up. Without it every new interface of
        an IPv4 network sends DAD, MLD and router solicitations that the
        bridge floods to all its ports: with 1,000 containers on a bridge
        that multicast storm tripled the cost of connecting one more.
        """
        rtnl = await self._rtnl(ns)
        # EAFNOSUPPORT: booted with ipv6.disable=1, no IPv6 to turn off.
        with _errors(f"turn off IPv6 link-local address of {link!r}", fine=NO_IPV6):
            await rtnl.set_link(link, NO_IPV6_LINK_LOCAL)

    async def set_up(self, link: str | int, ns: str | None = None) -> None:
        """Sets ``link`` (a name or an index) up."""
        rtnl = await self._rtnl(ns)
        with _errors(f"set {link!r} up"):
            await rtnl.set_up(link)

    async def set_master(self, name: str, master: int) -> None:
        """Makes link ``name`` a port of bridge ``master`` (an index)."""
        handle = await self._handle(None)
        with _errors(f"attach {name!r} to bridge {master}"):
            await handle.link("set", ifname=name, master=master)

    async def delete_link(self, name: str, ns: str | None = None) -> bool:
        """Deletes link ``name``; returns False (quietly) if it was not there."""
        handle = await self._handle(ns)
        with _errors(f"delete link {name!r}", fine=GONE):
            await handle.link("del", ifname=name)
            return True
        return False

    # Addresses and routes ---------------------------------------------------

    async def add_address(self, name: str | int, cidr: str, ns: str | None = None) -> None:
        """Adds ``cidr`` to link ``name`` (or index); already having it is fine."""
        rtnl = await self._rtnl(ns)
        index = await self._index(name, ns)
        with _errors(f"add address {cidr} to {name!r}", fine=THERE):
            await rtnl.add_address(index, cidr)

    async def add_default_route(
        self, gateway: str, name: str | int, ns: str | None = None
    ) -> None:
        """Adds a default route via ``gateway`` out of ``name``; the same route existing is fine."""
        rtnl = await self._rtnl(ns)
        index = await self._index(name, ns)
        with _errors(f"add default route via {gateway}", fine=THERE):
            await rtnl.add_default_route(gateway, index)
            return
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        if await self.default_route(ns, family) != (gateway, index):
            raise errors.FailedPrecondition(
                f"add default route via {gateway}: the namespace has another default route",
                reason="DEFAULT_ROUTE_EXISTS",
            )

    async def default_route(self, ns: str | None = None,
                            family: int = socket.AF_INET) -> tuple[str, int] | None:
        """(gateway, interface index) of the main table's default route of ``family``
        (IPv4 unless told), if any."""
        handle = await self._handle(ns)
        with _errors("list routes"):
            for message in await self._dump(
                    handle, lambda: handle.route("dump", family=family)):
                if message["dst_len"] == 0 and message.get_attr("RTA_TABLE") == 254:
                    return message.get_attr("RTA_GATEWAY") or "", message.get_attr("RTA_OIF") or 0
        return None

    async def routes(self, except_destinations: frozenset[str] = frozenset(),
                     ns: str | None = None) -> list[str]:
        """The destinations (CIDR) of the main table's routes (ROUTE_TYPES), IPv4 and IPv6,
        but the default routes, link-local ones (fe80::/64 on every link with IPv6) and
        ``except_destinations`` (CIDRs)."""
        skipped = {ipaddress.ip_network(cidr, strict=False) for cidr in except_destinations}
        handle = await self._handle(ns)
        found = set()
        with _errors("list routes"):
            for family, bits in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
                for message in await self._dump(
                        handle, lambda family=family: handle.route("dump", family=family)):
                    if (message["dst_len"] == 0 or message["type"] not in ROUTE_TYPES
                            or message.get_attr("RTA_TABLE") != MAIN_TABLE):
                        continue
                    destination = message.get_attr("RTA_DST")
                    if destination and message["dst_len"] <= bits:
                        network = ipaddress.ip_network(
                            f"{destination}/{message['dst_len']}", strict=False)
                        if network not in skipped and not network.is_link_local:
                            found.add(str(network))
        return sorted(found)

    async def addresses(self, index: int, ns: str | None = None,
                        family: int = socket.AF_INET) -> list[str]:
        """The addresses (CIDR) of link ``index`` of ``family`` (IPv4 unless told), IPv6
        ones of global scope only."""
        handle = await self._handle(ns)
        with _errors("list addresses"):
            return [
                f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}"
                for message in await self._dump(
                    handle, lambda: handle.addr("dump", family=family))
                if message["index"] == index
                and (family == socket.AF_INET or message["scope"] == 0)
            ]

    async def _index(self, name: str | int, ns: str | None) -> int:
        if isinstance(name, int):
            return name
        link = await self.get_link(name, ns)
        if link is None:
            raise LinkNotFound(f"link {name!r} not found" + (f" in {ns!r}" if ns else ""))
        return link.index

    # VXLAN and forwarding entries (the agent's own namespace) ------------------------

    async def create_vxlan(
        self, name: str, *, vni: int, local: str, mtu: int, master: int, alias: str
    ) -> None:
        """Creates VXLAN device ``name``: no learning, ARP proxy, a port of bridge
        ``master`` with bridge learning off, marked with ``alias``, up."""
        handle = await self._handle(None)
        options = {"vxlan_id": vni, "vxlan_port": VXLAN_PORT, "vxlan_learning": 0,
                   "vxlan_proxy": 1}
        if local:
            options["vxlan_local6" if ":" in local else "vxlan_local"] = local
        with _errors(f"create vxlan {name!r} (vni {vni})"):
            await handle.link("add", ifname=name, kind="vxlan", mtu=mtu, **options)
        await self._mark_alias(name, alias)
        try:
            with _errors(f"attach vxlan {name!r} to its bridge"):
                await handle.link("set", ifname=name, master=master)
                await handle.link("set", ifname=name, kind="bridge_slave", learning=0)
                await handle.link("set", ifname=name, state="up")
        except BaseException:
            with contextlib.suppress(NetlinkError, OSError):
                await handle.link("del", ifname=name)
            raise

    async def vxlan_info(self, name: str) -> VxlanInfo | None:
        """The VXLAN parameters of link ``name``; None when it is missing or no VXLAN."""
        message = await self._link_message(name)
        if message is None:
            return None
        info = message.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return None
        data = info.get_attr("IFLA_INFO_DATA")
        return VxlanInfo(
            vni=data.get_attr("IFLA_VXLAN_ID") or 0,
            local=data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or "",
            port=data.get_attr("IFLA_VXLAN_PORT") or 0,
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            proxy=bool(data.get_attr("IFLA_VXLAN_PROXY")),
        )

    async def forwarding(self, index: int) -> Forwarding:
        """The programmed forwarding of VXLAN device ``index``, read from the kernel."""
        handle = await self._handle(None)
        flood: set[str] = set()
        unicast: dict[str, str] = {}
        bridge_static: set[str] = set()
        with _errors("list forwarding entries"):
            for message in await self._dump(handle,
                                             lambda: handle.fdb("dump", ifindex=index)):
                if message["ifindex"] != index:
                    continue
                mac = message.get_attr("NDA_LLADDR") or ""
                dst = message.get_attr("NDA_DST") or ""
                if not message["flags"] & NTF_SELF:  # the bridge's entry for the port
                    if message["state"] & NUD_NOARP and not message["state"] & NUD_PERMANENT:
                        bridge_static.add(mac)
                    continue
                if mac == ZERO_MAC:
                    flood.add(dst)
                elif dst:
                    unicast[mac] = dst
            neighbours = {
                message.get_attr("NDA_DST"): message.get_attr("NDA_LLADDR") or ""
                for family in NEIGHBOUR_FAMILIES
                for message in await self._dump(
                    handle, lambda family=family: handle.neigh("dump", family=family))
                if message["ifindex"] == index and message["state"] & NUD_PERMANENT
            }
        return Forwarding(frozenset(flood), unicast, frozenset(bridge_static), neighbours)

    async def _neigh(self, command: str, what: str, **fields) -> None:
        handle = await self._handle(None)
        fine = {"del": GONE, "append": THERE}.get(command, frozenset())
        with _errors(what, fine=fine):
            await handle.neigh(command, **fields)

    async def add_flood(self, index: int, underlay: str) -> None:
        """Adds ``underlay`` to VXLAN device ``index``'s head-end replication list."""
        await self._neigh(
            "append", f"add flood entry to {underlay}", family=socket.AF_BRIDGE, ifindex=index,
            lladdr=ZERO_MAC, dst=underlay, state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF,
        )

    async def delete_flood(self, index: int, underlay: str) -> None:
        await self._neigh(
            "del", f"delete flood entry to {underlay}", family=socket.AF_BRIDGE, ifindex=index,
            lladdr=ZERO_MAC, dst=underlay, state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF,
        )

    async def set_remote_mac(self, index: int, mac: str, underlay: str) -> None:
        """Pins ``mac`` to ``underlay`` in VXLAN device ``index`` and to the device's
        port in its bridge (replacing any other place it had)."""
        what = f"pin {mac} to {underlay}"
        await self._neigh(
            "replace", what, family=socket.AF_BRIDGE, ifindex=index, lladdr=mac, dst=underlay,
            state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF,
        )
        await self._neigh(
            "replace", what, family=socket.AF_BRIDGE, ifindex=index, lladdr=mac,
            state=NUD_NOARP, flags=NTF_MASTER,
        )

    async def delete_remote_mac(self, index: int, mac: str) -> None:
        what = f"unpin {mac}"
        await self._neigh("del", what, family=socket.AF_BRIDGE, ifindex=index, lladdr=mac,
                          state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
        await self._neigh("del", what, family=socket.AF_BRIDGE, ifindex=index, lladdr=mac,
                          state=NUD_NOARP, flags=NTF_MASTER)

    async def set_neighbour(self, index: int, address: str, mac: str) -> None:
        """A permanent neighbour entry ``address`` at ``mac`` on link ``index``."""
        await self._neigh(
            "replace", f"add neighbour {address} at {mac}", family=_family(address),
            ifindex=index, dst=address, lladdr=mac, state=NUD_PERMANENT,
        )

    async def delete_neighbour(self, index: int, address: str) -> None:
        await self._neigh("del", f"delete neighbour {address}", family=_family(address),
                          ifindex=index, dst=address)

    async def set_mac(self, name: str, mac: str) -> None:
        """Sets the MAC address of link ``name``."""
        handle = await self._handle(None)
        with _errors(f"set MAC of {name!r} to {mac}"):
            await handle.link("set", ifname=name, address=mac)

    # Sysctls -------------------------------------------------------------------

    async def enable_ipv6_forwarding(self) -> None:
        """Turns on IPv6 forwarding in the agent's namespace (a dual-stack network needs it:
        the kernel decides IPv6 forwarding host-wide, not per interface).

        A host that was not forwarding keeps taking router advertisements: forwarding on
        makes the kernel ignore them on every interface with ``accept_ra`` 1 (the
        default), and a host configured by them would lose its default route when it
        expires; those interfaces get ``accept_ra`` 2 (accept even when forwarding)
        first. Done once; nothing changes on a host already forwarding."""

        def enable() -> None:
            base = "/proc/sys/net/ipv6/conf"
            with open(f"{base}/all/forwarding") as current:
                if current.read().strip() == "1":
                    return
            for name in sorted(os.listdir(base)):
                path = f"{base}/{name}/accept_ra"
                with contextlib.suppress(OSError), open(path) as current:
                    if current.read().strip() != "1":
                        continue
                with contextlib.suppress(OSError), open(path, "w") as target:
                    target.write("2")
            with open(f"{base}/all/forwarding", "w") as target:
                target.write("1")

        with _errors("turn on IPv6 forwarding"):
            await self._in_host_ns(enable)

    async def _in_host_ns(self, work: Callable[[], None]) -> None:
        """Runs blocking ``work`` (on /proc/sys) in a worker thread, in the host's
        namespace."""
        if self.host_ns is None:
            await asyncio.to_thread(work)
        else:
            await in_namespace(self.host_ns, work)

    async def set_sysctl(self, *path: str, value: str) -> None:
        """Writes sysctl ``path`` (e.g. "net", "ipv4", "ip_forward") of the agent's namespace.

        Parts are given separately because interface names may contain dots.
        """
        key = "/".join(path)

        def write() -> None:
            with open("/proc/sys/" + key) as current:
                if current.read().strip() == value:
                    return
            with open("/proc/sys/" + key, "w") as target:
                target.write(value)

        with _errors(f"set sysctl {key}={value}"):
            await self._in_host_ns(write)
