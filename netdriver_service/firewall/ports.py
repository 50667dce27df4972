"""Validation of firewall inputs and the rules for port conflicts, shared by all backends."""

from __future__ import annotations

from collections.abc import Iterable

from cnm import errors, validation
from netdriver_service.firewall import NetworkRules, PortRule

PROTOCOLS = tuple(validation.PROTOCOL_NUMBERS)


def validate_network(network: NetworkRules) -> None:
    """The rules of a network, checked as the agent checked its request (cnm.validation)."""
    try:
        validation.check_id("network_id", network.network_id)
        validation.check_ifname("bridge", network.bridge)
        if network.subnet or not network.ipv6_subnet:
            subnet = validation.check_network_subnet(network.subnet).network
            validation.address_inside(subnet, network.gateway, "gateway")
        if network.ipv6_subnet:
            subnet6 = validation.check_ipv6_subnet(network.ipv6_subnet).network
            if network.ipv6_gateway:
                validation.address_inside(subnet6, network.ipv6_gateway, "ipv6_gateway")
        for allowed in network.allowed_networks:
            validation.check_id("allowed_networks", allowed)
    except errors.CnmError as error:
        what = f"firewall rules of network {errors.capped(network.network_id)!r}"
        raise errors.with_context(error, what) from error


def validate_port(port: PortRule) -> None:
    """A mapping, checked as the agent checked its request (cnm.validation)."""
    try:
        validation.check_id("endpoint_id", port.endpoint_id)
        validation.check_id("network_id", port.network_id)
        if port.protocol not in PROTOCOLS:
            raise errors.InvalidArgument(
                f"protocol {errors.capped(port.protocol)!r} not one of {PROTOCOLS}",
                reason="INVALID_PROTOCOL")
        if port.host_ip and validation.check_host_ip(port.host_ip) != port.host_ip:
            raise errors.InvalidArgument(
                f"host ip {port.host_ip!r} is not in normal form (every address is '')",
                reason="INVALID_ADDRESS")
        container = validation.parse_address(port.container_ip, "container ip")
        if port.host_ip and validation.parse_address(port.host_ip, "host ip").version \
                != container.version:
            raise errors.InvalidArgument(
                f"host ip {port.host_ip} and container ip {container} are of different "
                "families", reason="INVALID_ADDRESS")
        validation.check_port("host_port", port.host_port)
        validation.check_port("container_port", port.container_port)
    except errors.CnmError as error:
        what = f"port mapping of endpoint {errors.capped(port.endpoint_id)!r}"
        raise errors.with_context(error, what) from error


def describe_binding(port: PortRule) -> str:
    return f"{port.host_ip or '*'}:{port.host_port}/{port.protocol}"


def overlaps(a: PortRule, b: PortRule) -> bool:
    """Whether two mappings claim the same port of the host.

    A mapping on every address overlaps any mapping of the same protocol and
    port, like Docker (which refuses 0.0.0.0:80 next to 10.0.0.1:80), of the same
    family: a dual-stack container's mapping on every address is one per family.
    """
    if (a.protocol, a.host_port) != (b.protocol, b.host_port):
        return False
    if (":" in a.container_ip) != (":" in b.container_ip):
        return False
    return not a.host_ip or not b.host_ip or a.host_ip == b.host_ip


class _Holders:
    """Mappings indexed by (protocol, host port), so that finding the one a mapping
    overlaps costs the same with 1 mapping on the host as with thousands."""

    def __init__(self, ports: Iterable[PortRule] = ()) -> None:
        self._by_port: dict[tuple[str, int], list[PortRule]] = {}
        self._all: set[PortRule] = set()
        for port in ports:
            self.add(port)

    def __contains__(self, port: PortRule) -> bool:
        return port in self._all

    def add(self, port: PortRule) -> None:
        self._by_port.setdefault((port.protocol, port.host_port), []).append(port)
        self._all.add(port)

    def overlapping(self, port: PortRule) -> PortRule | None:
        """The first held mapping that claims the same host port as ``port``."""
        for held in self._by_port.get((port.protocol, port.host_port), ()):
            if overlaps(port, held):
                return held
        return None


def validate_ports(ports: Iterable[PortRule]) -> list[PortRule]:
    """Checks every mapping and that the request does not overlap itself.

    Returns the mappings without exact repeats.
    """
    unique: list[PortRule] = []
    seen = _Holders()
    for port in ports:
        validate_port(port)
        if port in seen:
            continue
        other = seen.overlapping(port)
        if other is not None:
            raise errors.InvalidArgument(
                f"port mappings {describe_binding(other)} of endpoint {other.endpoint_id!r} "
                f"and {describe_binding(port)} of endpoint {port.endpoint_id!r} overlap",
                reason="PORT_MAPPINGS_OVERLAP",
            )
        seen.add(port)
        unique.append(port)
    return unique


def split_against(existing: Iterable[PortRule], wanted: list[PortRule]) -> list[PortRule]:
    """The mappings of ``wanted`` not yet in ``existing``.

    Raises AlreadyExists naming the endpoint that holds a host port one of
    them needs (the same mapping of the same endpoint is not a conflict).
    """
    holders = _Holders(existing)
    missing = []
    for port in wanted:
        if port in holders:
            continue
        holder = holders.overlapping(port)
        if holder is not None:
            raise errors.AlreadyExists(
                f"host port {describe_binding(port)} for endpoint {port.endpoint_id!r} is "
                f"taken by endpoint {holder.endpoint_id!r} "
                f"({describe_binding(holder)} -> {holder.container_ip}:"
                f"{holder.container_port})",
                reason="PORT_ALLOCATED", endpoint_id=holder.endpoint_id,
                protocol=port.protocol, host_ip=holder.host_ip, host_port=port.host_port,
            )
        missing.append(port)
    return missing
