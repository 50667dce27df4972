"""An in-memory firewall backend with the contract of netdriver_service.firewall.Firewall."""

from __future__ import annotations

from cnm import errors
from netdriver_service.firewall import NetworkRules, PortRule


class FakeFirewall:
    name = "fake"

    def __init__(self) -> None:
        self.networks: dict[str, NetworkRules] = {}
        self.ports: dict[tuple[str, str, int], PortRule] = {}
        self.base = False

    async def ensure_base(self) -> None:
        self.base = True

    async def add_network(self, network: NetworkRules) -> None:
        self.networks[network.network_id] = network

    async def remove_network(self, network_id: str) -> None:
        self.networks.pop(network_id, None)
        for key, rule in list(self.ports.items()):
            if rule.network_id == network_id:
                del self.ports[key]

    async def add_ports(self, ports: list[PortRule]) -> None:
        for rule in ports:
            holder = self.ports.get((rule.protocol, rule.host_ip, rule.host_port))
            if holder is not None and holder.endpoint_id != rule.endpoint_id:
                raise errors.AlreadyExists(
                    f"{rule.protocol} port {rule.host_port} is published by endpoint "
                    f"{holder.endpoint_id!r}"
                )
        for rule in ports:
            self.ports[(rule.protocol, rule.host_ip, rule.host_port)] = rule

    async def remove_ports(self, endpoint_id: str, ports: list[PortRule] | None = None) -> None:
        for key, rule in list(self.ports.items()):
            if rule.endpoint_id == endpoint_id:
                del self.ports[key]

    async def list_ports(self) -> list[PortRule]:
        return list(self.ports.values())

    async def list_networks(self) -> list[str]:
        return sorted(self.networks)

    async def drift(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        return self._differences(networks, ports)

    async def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        repaired = self._differences(networks, ports)
        self.networks = {network.network_id: network for network in networks}
        self.ports = {(p.protocol, p.host_ip, p.host_port): p for p in ports}
        return repaired

    def _differences(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        repaired = []
        wanted = {network.network_id: network for network in networks}
        for network_id in set(self.networks) - set(wanted):
            repaired.append(f"removed stale network {network_id}")
        for network_id in set(wanted) - set(self.networks):
            repaired.append(f"restored network {network_id}")
        wanted_ports = {(p.protocol, p.host_ip, p.host_port): p for p in ports}
        for key in set(wanted_ports) - set(self.ports):
            repaired.append(f"restored port {key}")
        for key in set(self.ports) - set(wanted_ports):
            repaired.append(f"removed stale port {key}")
        return repaired

    async def element_count(self) -> int:
        return len(self.networks) + len(self.ports)
