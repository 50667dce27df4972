"""Firewall backends of the host agent, behind one Protocol.

The drivers describe *what* a network or an endpoint needs (masquerade,
isolation, published ports) with the plain dataclasses below; a backend
decides *how*. Backends are chosen by name from :data:`BACKENDS`:
``nftables`` (the real one) and ``none`` (no filtering, no NAT).

Contract for every backend:
- every method is idempotent: adding what is there, or removing what is
  gone, succeeds and changes nothing;
- each call is one atomic change of the ruleset (all or nothing);
- only cnm's own tables are ever touched;
- ``add_ports`` raises ``cnm.errors.AlreadyExists`` naming the endpoint that
  holds a (protocol, host_ip, host_port) already, and then changes nothing;
- ``add_network`` and ``add_ports`` never rebuild part of a ruleset that was
  flushed away (that would bring back one network's rules and leave the
  others' isolation silently gone): they raise ``FailedPrecondition`` with
  reason :data:`TABLE_MISSING`, change nothing, and the caller syncs the
  whole state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cnm import errors

TABLE_MISSING = "FIREWALL_TABLE_MISSING"


@dataclass(frozen=True)
class NetworkRules:
    """What a network needs from the firewall on this host."""

    network_id: str
    bridge: str  # the network's bridge interface
    subnet: str  # CIDR, e.g. "192.168.0.0/24"; "" on an IPv6-only network
    gateway: str  # address on the bridge
    internal: bool = False  # no masquerade, no traffic in or out of the network
    enable_icc: bool = True  # containers on the network may talk to each other
    allowed_networks: tuple[str, ...] = ()  # ids of networks whose traffic may reach this one
    ipv6_subnet: str = ""  # the network's IPv6 subnet (CIDR), if it has one
    ipv6_gateway: str = ""
    masquerade_ipv6: bool = True  # NAT66 of its IPv6 traffic leaving the host


@dataclass(frozen=True)
class PortRule:
    """One published port: host_ip:host_port -> container_ip:container_port."""

    endpoint_id: str
    network_id: str
    protocol: str  # "tcp", "udp" or "sctp"
    host_ip: str  # "" means every address of the host
    host_port: int
    container_ip: str
    container_port: int


class Firewall(Protocol):
    name: str

    async def ensure_base(self) -> None:
        """Creates cnm's tables, chains, sets and maps if missing."""

    async def add_network(self, network: NetworkRules) -> None:
        """Installs the network's NAT and isolation rules."""

    async def remove_network(self, network_id: str) -> None:
        """Removes every rule and element of the network (its ports included)."""

    async def add_ports(self, ports: list[PortRule]) -> None:
        """Publishes ports, all in one transaction."""

    async def remove_ports(self, endpoint_id: str, ports: list[PortRule] | None = None) -> None:
        """Removes every published port of the endpoint.

        ``ports``, when the caller knows what it published for the endpoint,
        lets a backend remove them without reading every port of the host.
        """

    async def list_ports(self) -> list[PortRule]:
        """The published ports, read from the kernel."""

    async def list_networks(self) -> list[str]:
        """Ids of the networks that have rules, read from the kernel."""

    async def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        """Makes the kernel hold exactly these networks and ports.

        Returns one line per repair made (missing table, network, port, or a
        stale one removed); empty when everything was already in place.
        """

    async def drift(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        """What ``sync`` with the same arguments would repair, changing nothing."""

    async def element_count(self) -> int:
        """Number of rules and set/map elements in cnm's tables."""


def table_missing(what: str) -> errors.FailedPrecondition:
    """The error of an add that found cnm's ruleset (or part of it) gone."""
    return errors.FailedPrecondition(
        f"{what}: cnm's firewall table or one of its sets is missing (flushed?); "
        "the whole state must be synchronized", reason=TABLE_MISSING,
    )
