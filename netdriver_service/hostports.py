"""Published host ports, held by a bound socket each, as Docker does.

Publishing a port is a DNAT rule, and a DNAT rule silently wins over any
service of the host listening on that port. So the agent binds the port
first, in the host's network namespace: a port a host socket already holds
is refused (ALREADY_EXISTS, PORT_IN_USE), and while it is published nothing
else on the host can take it. The socket is bound, not listening (the DNAT
answers), and without SO_REUSEADDR, so no other socket may share the port.
Sockets live in this process: after a restart the agent binds them again
for every endpoint it finds (:meth:`HostPorts.restore`).
"""

from __future__ import annotations

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


def _bind(port: PortSpec) -> socket.socket:
    proto = socket.IPPROTO_SCTP if port.protocol == "sctp" else 0
    held = socket.socket(socket.AF_INET, _TYPES[port.protocol], proto)
    try:
        held.bind((port.host_ip or "0.0.0.0", port.host_port))
    except BaseException:
        held.close()
        raise
    return held


def _bind_all(ports: tuple[PortSpec, ...]) -> list[socket.socket]:
    """Binds every port, or none (the error names the first that failed)."""
    bound: list[socket.socket] = []
    try:
        for port in ports:
            try:
                bound.append(_bind(port))
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


class HostPorts:
    """The sockets holding each endpoint's published ports."""

    def __init__(self, host_ns: str | None) -> None:
        self.host_ns = host_ns  # None: the agent's own namespace is the host's
        self._held: dict[str, list[socket.socket]] = {}

    async def reserve(self, endpoint_id: str, ports: Iterable[PortSpec]) -> None:
        """Holds ``ports`` for ``endpoint_id`` (once); PORT_IN_USE if the host has one."""
        wanted = tuple(ports)
        if endpoint_id in self._held or not wanted:
            return
        if self.host_ns is None:
            bound = _bind_all(wanted)
        else:
            bound = await netns.in_namespace(self.host_ns, lambda: _bind_all(wanted))
        self._held[endpoint_id] = bound

    async def release(self, endpoint_id: str) -> None:
        for held in self._held.pop(endpoint_id, ()):
            with contextlib.suppress(OSError):
                held.close()

    async def restore(self, endpoints: Iterable[tuple[str, tuple[PortSpec, ...]]]) -> None:
        """After a restart: holds again the ports of every endpoint found. A port taken
        meanwhile cannot be refused any more: said loudly, and the rest go on."""
        for endpoint_id, ports in endpoints:
            try:
                await self.reserve(endpoint_id, ports)
            except errors.CnmError as error:
                log.warning("published port not held again after restart",
                            extra={"endpoint": endpoint_id, "error": error.message})

