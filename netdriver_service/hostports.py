"""Published host ports, held by a bound socket each, as Docker does.

Publishing a port is a DNAT rule, and a DNAT rule silently wins over any
service of the host listening on that port. So the agent binds the port
first, in the host's network namespace: a port a host socket already holds
is refused (ALREADY_EXISTS, PORT_IN_USE), and while it is published nothing
else on the host can take it. The socket is bound, not listening (the DNAT
answers), and without SO_REUSEADDR, so no other socket may share the port.
Sockets live in this process: after a restart the agent binds them again
for every endpoint it finds (:meth:`HostPorts.restore`).

The one exception to DNAT: the host's own traffic to the port of a container
with an IPv6 address (dual stack or IPv6 only) published on ``[::1]`` (on
every address, or on ::1 alone). IPv6 has no ``route_localnet``: a packet
from ::1 never leaves the host, so DNAT cannot take it to the container. For
those the socket holding the port serves, and the agent relays each TCP
connection, or each UDP client's datagrams, to the container's IPv6 address,
as Docker's userland proxy does (the container sees the host's gateway
address, as after the masquerade IPv4 uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterable

from cnm import errors
from netdriver_service import netns
from netdriver_service.model import PortSpec

log = logging.getLogger("cnm.netdriver.hostports")

_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "sctp": socket.SOCK_STREAM}


def _bind(port: PortSpec, families: str) -> socket.socket:
    """The port held on its host address; on every address, of the container's
    ``families`` ("4", "6" or "46": one IPv6 socket that also takes IPv4)."""
    proto = socket.IPPROTO_SCTP if port.protocol == "sctp" else 0
    ipv6 = ":" in port.host_ip or ("6" in families and not port.host_ip)
    held = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, _TYPES[port.protocol],
                         proto)
    try:
        if ipv6:
            held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            int(bool(port.host_ip) or "4" not in families))
        held.bind((port.host_ip or ("::" if ipv6 else "0.0.0.0"), port.host_port))
    except BaseException:
        held.close()
        raise
    return held


def _bind_all(ports: tuple[PortSpec, ...], families: str) -> list[socket.socket]:
    """Binds every port, or none (the error names the first that failed)."""
    bound: list[socket.socket] = []
    try:
        for port in ports:
            try:
                bound.append(_bind(port, families))
            except OSError as error:
                raise _refusal(port, error) from error
    except BaseException:
        for held in bound:
            held.close()
        raise
    return bound


def _refusal(port: PortSpec, error: OSError) -> errors.CnmError:
    where = f"{port.host_ip or '*'}:{port.host_port}/{port.protocol}"
    if error.errno == errno.EADDRINUSE:
        return errors.AlreadyExists(
            f"host port {where} is in use on the host (a socket outside cnm holds it)",
            reason="PORT_IN_USE", protocol=port.protocol, host_ip=port.host_ip,
            host_port=port.host_port)
    if error.errno == errno.EADDRNOTAVAIL:
        return errors.InvalidArgument(f"host address {port.host_ip!r} of {where} is not an "
                                      f"address of this host", reason="INVALID_ADDRESS",
                                      host_ip=port.host_ip)
    if error.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
        return errors.FailedPrecondition(
            f"cannot publish {where}: this host's kernel has no {port.protocol.upper()} "
            "(its module is not built or not loaded)", reason="PROTOCOL_NOT_SUPPORTED",
            protocol=port.protocol)
    return errors.Internal(f"reserve host port {where}: {error.strerror}")


RELAY_CONNECT_TIMEOUT = 5.0  # seconds a relayed connection waits for the container
RELAY_BUFFER = 65536
UDP_FLOW_IDLE = 60.0  # seconds a relayed UDP client's flow lives without a datagram


class HostPorts:
    """The sockets holding each endpoint's published ports."""

    def __init__(self, host_ns: str | None) -> None:
        self.host_ns = host_ns  # None: the agent's own namespace is the host's
        self._held: dict[str, list[socket.socket]] = {}
        self._relays: dict[str, list] = {}  # asyncio.Server or UDP relay transports

    async def reserve(self, endpoint_id: str, ports: Iterable[PortSpec],
                      ipv6_address: str = "", ipv4: bool = True) -> None:
        """Holds ``ports`` for ``endpoint_id`` (once); PORT_IN_USE if the host has one.
        ``ipv6_address``: the container's, if it has one (see the module's doc);
        ``ipv4``: whether it has an IPv4 address (not on an IPv6-only network)."""
        wanted = tuple(ports)
        if endpoint_id in self._held or not wanted:
            return
        families = ("4" if ipv4 else "") + ("6" if ipv6_address else "")
        if self.host_ns is None:
            bound = _bind_all(wanted, families)
        else:
            bound = await netns.in_namespace(self.host_ns,
                                             lambda: _bind_all(wanted, families))
        self._held[endpoint_id] = bound
        if ipv6_address:
            relays = []
            try:
                for port, held in zip(wanted, bound, strict=True):
                    if port.host_ip not in ("", "::1"):
                        continue
                    if port.protocol == "tcp":
                        relays.append(await self._relay(held, ipv6_address,
                                                        port.container_port))
                    elif port.protocol == "udp":
                        relays.append(await self._relay_udp(held, ipv6_address,
                                                            port.container_port))
            except BaseException:
                for relay in relays:
                    relay.close()
                await self.release(endpoint_id)
                raise
            self._relays[endpoint_id] = relays

    async def _relay(self, held: socket.socket, address: str, port: int) -> asyncio.Server:
        """Relays the connections ``held`` takes (the host's to [::1]) to the container."""

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.wait_for(self._connect(address, port),
                                                  RELAY_CONNECT_TIMEOUT)
            except (TimeoutError, OSError) as error:
                log.debug("relay to the container failed", extra={
                    "address": address, "port": port, "error": str(error)})
                writer.close()
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                writer.close()
                up_writer.close()

        held.listen(128)
        held.setblocking(False)
        return await asyncio.start_server(relay, sock=held)

    async def _relay_udp(self, held: socket.socket, address: str, port: int):
        """Relays each client's datagrams to ``held`` (the host's to [::1]) to the
        container, and the container's answers back to that client."""
        held.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpRelay(self, address, port), sock=held)
        return transport

    async def _socket(self, kind: int) -> socket.socket:
        """An IPv6 socket of the host's namespace."""
        def make() -> socket.socket:
            return socket.socket(socket.AF_INET6, kind)

        sock = make() if self.host_ns is None else await netns.in_namespace(self.host_ns, make)
        sock.setblocking(False)
        return sock

    async def _connect(self, address: str, port: int):
        """A connection to the container, from the host's namespace."""
        sock = await self._socket(socket.SOCK_STREAM)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def release(self, endpoint_id: str) -> None:
        for relay in self._relays.pop(endpoint_id, ()):
            relay.close()
        for held in self._held.pop(endpoint_id, ()):
            with contextlib.suppress(OSError):
                held.close()

    async def restore(self,
                      endpoints: Iterable[tuple[str, tuple[PortSpec, ...], str, bool]]) -> None:
        """After a restart: holds again the ports of every endpoint found (id, ports,
        IPv6 address, whether it has an IPv4 one). A port taken meanwhile cannot be
        refused any more: said loudly, and the rest go on."""
        for endpoint_id, ports, ipv6_address, ipv4 in endpoints:
            try:
                await self.reserve(endpoint_id, ports, ipv6_address, ipv4)
            except errors.CnmError as error:
                log.warning("published port not held again after restart",
                            extra={"endpoint": endpoint_id, "error": error.message})



async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until end of file, then half-closes: each direction ends on its own."""
    try:
        while data := await reader.read(RELAY_BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


class _UdpRelay(asyncio.DatagramProtocol):
    """The held UDP socket's side: one flow (a socket connected to the container) per
    client, forgotten after UDP_FLOW_IDLE seconds without a datagram."""

    def __init__(self, ports: HostPorts, address: str, port: int) -> None:
        self.ports, self.target = ports, (address, port)
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple, _UdpFlow] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, client) -> None:
        flow = self.flows.get(client)
        if flow is None:
            flow = self.flows[client] = _UdpFlow(self, client)
            asyncio.ensure_future(flow.open())
        flow.send(data)

    def connection_lost(self, exc) -> None:
        for flow in list(self.flows.values()):
            flow.close()


class _UdpFlow(asyncio.DatagramProtocol):
    """One client's datagrams to the container and its answers back."""

    def __init__(self, relay: _UdpRelay, client) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: list[bytes] = []  # sent before the flow's socket was ready
        self.idle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        try:
            sock = await self.relay.ports._socket(socket.SOCK_DGRAM)
            sock.connect(self.relay.target)
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        except OSError as error:
            log.debug("UDP relay to the container failed", extra={"error": str(error)})
            self.close()

    def connection_made(self, transport) -> None:
        self.transport = transport
        for data in self.waiting:
            transport.sendto(data)
        self.waiting.clear()
        self._touch()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.waiting.append(data)
        else:
            self.transport.sendto(data)
            self._touch()

    def datagram_received(self, data: bytes, _) -> None:
        if self.relay.transport is not None:
            self.relay.transport.sendto(data, self.client)
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(UDP_FLOW_IDLE, self.close)

    def close(self) -> None:
        self.relay.flows.pop(self.client, None)
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.close()
