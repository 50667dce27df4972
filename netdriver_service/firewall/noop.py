"""The ``none`` firewall backend: no filtering and no NAT.

For hosts where something else owns the firewall. It still keeps the
bookkeeping of published ports (in memory, per agent process), so that two
endpoints are refused the same host port exactly as with ``nftables`` and
``list_ports`` reports what was asked for; nothing reaches the kernel, so
``element_count`` is always 0.
"""

from __future__ import annotations

import asyncio

from netdriver_service.firewall import NetworkRules, PortRule
from netdriver_service.firewall.ports import split_against, validate_network, validate_ports
from netdriver_service.firewall.ruleset import port_sort_key


class NoFirewall:
    name = "none"

    def __init__(self) -> None:
        self._networks: dict[str, NetworkRules] = {}
        self._ports: list[PortRule] = []
        self._lock = asyncio.Lock()

    async def ensure_base(self) -> None:
        return None

    async def add_network(self, network: NetworkRules) -> None:
        validate_network(network)
        self._networks[network.network_id] = network

    async def remove_network(self, network_id: str) -> None:
        async with self._lock:
            self._networks.pop(network_id, None)
            self._ports = [port for port in self._ports if port.network_id != network_id]

    async def add_ports(self, ports: list[PortRule]) -> None:
        ports = validate_ports(ports)
        async with self._lock:
            self._ports += split_against(self._ports, ports)

    async def remove_ports(self, endpoint_id: str, ports: list[PortRule] | None = None) -> None:
        async with self._lock:
            self._ports = [port for port in self._ports if port.endpoint_id != endpoint_id]

    async def list_ports(self) -> list[PortRule]:
        return sorted(self._ports, key=port_sort_key)

    async def list_networks(self) -> list[str]:
        return sorted(self._networks)

    async def drift(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        for network in networks:
            validate_network(network)
        ports = validate_ports(ports)
        lines = []
        if set(self._networks) != {network.network_id for network in networks}:
            lines.append("network bookkeeping differs")
        if sorted(self._ports, key=port_sort_key) != sorted(ports, key=port_sort_key):
            lines.append("port bookkeeping differs")
        return lines

    async def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        for network in networks:
            validate_network(network)
        ports = validate_ports(ports)
        async with self._lock:
            self._networks = {network.network_id: network for network in networks}
            self._ports = list(ports)
        return []

    async def element_count(self) -> int:
        return 0
