"""The one privileged layer: the small set of netlink verbs the drivers use.

Plain data in and out (names, CIDR strings, :class:`Link`); errno values
become cnm's named errors; deleting something that is already gone
succeeds quietly. Every verb takes an optional ``ns``, the path of the
network namespace to act in (``None``: the agent's own). A netlink socket
is opened *for* that namespace, by a short-lived thread that enters it,
opens the socket and exits; no thread that runs anything else ever
changes namespace, and the socket keeps working from the event loop.
Sockets are kept and reused, one per namespace, in a small LRU.

Everything here is asynchronous (pyroute2's ``AsyncIPRoute``); the only
blocking work (entering a namespace, writing a sysctl) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

from cnm import errors

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
_libc = ctypes.CDLL(None, use_errno=True)


class LinkNotFound(errors.NotFound):
    default_reason = "LINK_NOT_FOUND"


class LinkExists(errors.AlreadyExists):
    default_reason = "LINK_EXISTS"


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
    cls = _ERRNO_ERRORS.get(code or 0, errors.Internal)
    text = os.strerror(code) if code else str(error)
    return cls(f"{what}: {text}", reason=None, errno=code)


@contextlib.contextmanager
def _errors(what: str):
    """Turns a kernel error of the block into a cnm error that says ``what`` failed."""
    try:
        yield
    except (NetlinkError, OSError) as error:
        raise _convert(error, what) from error


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


def _selector(link: str | int) -> dict:
    return {"index": link} if isinstance(link, int) else {"ifname": link}


def check_namespace_path(path: str) -> os.stat_result:
    """Stat of ``path`` if it is a network namespace; InvalidArgument otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as error:
        raise errors.InvalidArgument(
            f"namespace {path!r} does not exist", reason="NAMESPACE_NOT_FOUND", path=path
        ) from error
    except OSError as error:
        raise errors.InvalidArgument(
            f"cannot open namespace {path!r}: {error.strerror}", reason="INVALID_NAMESPACE",
            path=path,
        ) from error
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as error:
            raise errors.InvalidArgument(
                f"{path!r} is not a namespace", reason="INVALID_NAMESPACE", path=path
            ) from error
        if kind != CLONE_NEWNET:
            raise errors.InvalidArgument(
                f"{path!r} is not a network namespace", reason="INVALID_NAMESPACE", path=path
            )
        return os.fstat(fd)
    finally:
        os.close(fd)


def _enter_and_run(path: str, action):
    """Enters namespace ``path`` and runs ``action()``: only ever in a thread made for it.

    That thread is used once and never returns to a pool, so no other work
    ever runs in the wrong namespace.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns {path}: {os.strerror(code)}")
    finally:
        os.close(fd)
    return action()


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


async def in_namespace(path: str, action):
    """Awaits ``action()`` run by a new thread that enters namespace ``path`` first, then dies.

    Started directly (no pool hop) and awaited without blocking the loop.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(value=None, error=None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value = _enter_and_run(path, action)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=run, name="cnm-netns-enter", daemon=True).start()
    return await future


async def _open_handle(path: str | None) -> AsyncIPRoute:
    sock = _netlink_socket() if path is None else await in_namespace(path, _netlink_socket)
    handle = AsyncIPRoute(fileno=sock.detach(), groups=0)
    await handle.setup_endpoint()
    return handle


class Netlink:
    """Netlink verbs over one cached socket per namespace."""

    def __init__(self, host_ns: str | None = None, max_namespaces: int = 64) -> None:
        # host_ns: act on this namespace as "the host" instead of the agent's
        # own (in-process tests); sysctls are then written from inside it too.
        self.host_ns = host_ns
        self._host: AsyncIPRoute | None = None
        self._namespaces: OrderedDict[tuple[int, int], AsyncIPRoute] = OrderedDict()
        self._paths: dict[str, tuple[int, int]] = {}
        self._max_namespaces = max_namespaces

    async def open(self) -> Netlink:
        with _errors("open netlink socket"):
            self._host = await _open_handle(self.host_ns)
        return self

    async def close(self) -> None:
        for handle in [self._host, *self._namespaces.values()]:
            if handle is not None:
                handle.close()
        self._host = None
        self._namespaces.clear()
        self._paths.clear()

    async def _handle(self, ns: str | None) -> AsyncIPRoute:
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
            _, oldest = self._namespaces.popitem(last=False)
            oldest.close()
        return handle

    def forget_namespace(self, ns: str) -> None:
        """Closes the cached socket of ``ns``, which would otherwise keep it alive."""
        key = self._paths.pop(ns, None)
        handle = self._namespaces.pop(key, None) if key else None
        if handle is not None:
            handle.close()

    async def ping(self) -> bool:
        handle = await self._handle(None)
        await handle.link("get", index=1)
        return True

    # Links ---------------------------------------------------------------

    async def get_link(self, name: str, ns: str | None = None) -> Link | None:
        handle = await self._handle(ns)
        try:
            messages = await handle.link("get", ifname=name)
        except NetlinkError as error:
            if error.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise _convert(error, f"get link {name!r}") from error
        return _link(messages[0])

    async def list_links(self, ns: str | None = None, addresses: bool = False) -> list[Link]:
        handle = await self._handle(ns)
        with _errors("list links"):
            links = [_link(message) async for message in await handle.link("dump")]
            if not addresses:
                return links
            by_index: dict[int, list[str]] = {}
            async for message in await handle.addr("dump", family=socket.AF_INET):
                cidr = f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}"
                by_index.setdefault(message["index"], []).append(cidr)
        return [
            Link(**{**link.__dict__, "addresses": tuple(by_index.get(link.index, ()))})
            for link in links
        ]

    async def create_bridge(
        self, name: str, *, mtu: int, alias: str, mac: str | None = None
    ) -> None:
        """Creates bridge ``name``, up, with ``mtu``, marked with ``alias``.

        With ``mac`` the bridge keeps that address; without, the kernel gives
        it the lowest of its ports' and changes it as ports come and go.
        """
        handle = await self._handle(None)
        extra = {"address": mac} if mac else {}
        with _errors(f"create bridge {name!r}"):
            await handle.link("add", ifname=name, kind="bridge", mtu=mtu, state="up", **extra)
        with _errors(f"mark bridge {name!r}"):
            await handle.link("set", ifname=name, ifalias=alias)

    async def create_veth(
        self, name: str, *, mtu: int, master: int, peer_name: str, peer_ns: str, peer_mac: str,
    ) -> None:
        """Creates a veth pair: ``name`` here, up and a port of bridge ``master``;
        ``peer_name`` created directly inside namespace ``peer_ns`` (down, with ``peer_mac``)."""
        handle = await self._handle(None)
        fd = os.open(peer_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _errors(f"create veth {name!r} with peer {peer_name!r} in {peer_ns!r}"):
                await handle.link(
                    "add", ifname=name, kind="veth", mtu=mtu, master=master, state="up",
                    peer={"ifname": peer_name, "net_ns_fd": fd, "mtu": mtu, "address": peer_mac},
                )
        finally:
            os.close(fd)

    async def set_bridge_port(self, name: str, *, alias: str, hairpin: bool) -> None:
        """Marks bridge port ``name`` with ``alias``, sets its hairpin mode and turns off its
        IPv6 link-local address (see :meth:`disable_ipv6_link_local`), in one request."""
        handle = await self._handle(None)
        with _errors(f"set alias and hairpin of {name!r}"):
            await handle.link(
                "set", ifname=name, kind="bridge_slave", mode=int(hairpin), ifalias=alias,
                IFLA_AF_SPEC=_NO_IPV6_LINK_LOCAL,
            )

    async def disable_ipv6_link_local(self, link: str | int, ns: str | None = None) -> None:
        """Stops the kernel from giving ``link`` an IPv6 link-local address (addrgenmode none).

        Must come before the link goes up. Without it every new interface of
        an IPv4 network sends DAD, MLD and router solicitations that the
        bridge floods to all its ports: with 1,000 containers on a bridge
        that multicast storm tripled the cost of connecting one more.
        """
        handle = await self._handle(ns)
        with _errors(f"turn off IPv6 link-local address of {link!r}"):
            await handle.link("set", **_selector(link), IFLA_AF_SPEC=_NO_IPV6_LINK_LOCAL)

    async def set_up(self, link: str | int, ns: str | None = None) -> None:
        """Sets ``link`` (a name or an index) up."""
        handle = await self._handle(ns)
        with _errors(f"set {link!r} up"):
            await handle.link("set", **_selector(link), state="up")

    async def delete_link(self, name: str, ns: str | None = None) -> bool:
        """Deletes link ``name``; returns False (quietly) if it was not there."""
        handle = await self._handle(ns)
        try:
            await handle.link("del", ifname=name)
        except NetlinkError as error:
            if error.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise _convert(error, f"delete link {name!r}") from error
        return True

    # Addresses and routes ---------------------------------------------------

    async def add_address(self, name: str | int, cidr: str, ns: str | None = None) -> None:
        """Adds ``cidr`` to link ``name`` (or index); already having it is fine."""
        handle = await self._handle(ns)
        interface = ipaddress.IPv4Interface(cidr)
        try:
            await handle.addr(
                "add", index=await self._index(handle, name, ns),
                address=str(interface.ip), prefixlen=interface.network.prefixlen,
            )
        except NetlinkError as error:
            if error.code != errno.EEXIST:
                raise _convert(error, f"add address {cidr} to {name!r}") from error

    async def add_default_route(
        self, gateway: str, name: str | int, ns: str | None = None
    ) -> None:
        """Adds a default route via ``gateway`` out of ``name``; the same route existing is fine."""
        handle = await self._handle(ns)
        index = await self._index(handle, name, ns)
        try:
            await handle.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except NetlinkError as error:
            if error.code != errno.EEXIST:
                raise _convert(error, f"add default route via {gateway}") from error
            if await self.default_route(ns) != (gateway, index):
                raise errors.FailedPrecondition(
                    f"add default route via {gateway}: the namespace has another default route",
                    reason="DEFAULT_ROUTE_EXISTS",
                ) from error

    async def default_route(self, ns: str | None = None) -> tuple[str, int] | None:
        """(gateway, interface index) of the main table's IPv4 default route, if any."""
        handle = await self._handle(ns)
        with _errors("list routes"):
            async for message in await handle.route("dump", family=socket.AF_INET):
                if message["dst_len"] == 0 and message.get_attr("RTA_TABLE") == 254:
                    return message.get_attr("RTA_GATEWAY") or "", message.get_attr("RTA_OIF") or 0
        return None

    async def addresses(self, index: int, ns: str | None = None) -> list[str]:
        handle = await self._handle(ns)
        with _errors("list addresses"):
            return [
                f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}"
                async for message in await handle.addr("dump", family=socket.AF_INET)
                if message["index"] == index
            ]

    async def _index(self, handle: AsyncIPRoute, name: str | int, ns: str | None) -> int:
        if isinstance(name, int):
            return name
        with _errors(f"find link {name!r}" + (f" in {ns!r}" if ns else "")):
            indexes = await handle.link_lookup(ifname=name)
        if not indexes:
            raise LinkNotFound(f"link {name!r} not found" + (f" in {ns!r}" if ns else ""))
        return indexes[0]

    # Sysctls -------------------------------------------------------------------

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
            if self.host_ns is None:
                await asyncio.to_thread(write)
            else:
                await in_namespace(self.host_ns, write)
