"""Network drivers, behind one Protocol and chosen by name from :data:`DRIVERS`.

A driver turns a validated :class:`~netdriver_service.model.NetworkSpec` or
:class:`~netdriver_service.model.EndpointSpec` into kernel state through the
netlink layer and the firewall backend. Setup pushes the inverse of each
completed step on the caller's :class:`cnm.undo.Undo` (the caller commits
on success); teardown is best-effort and idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cnm.undo import Undo
from netdriver_service.drivers.bridge import BridgeDriver
from netdriver_service.drivers.overlay import OverlayDriver
from netdriver_service.faults import Faults
from netdriver_service.firewall import Firewall, PortRule
from netdriver_service.model import EndpointSpec, NetworkSpec, Peer, RemoteEndpoint, VxlanState
from netdriver_service.netlink import Netlink


class Driver(Protocol):
    name: str

    async def network_present(self, network: NetworkSpec) -> bool:
        """Whether the network's kernel objects exist on this host, owned by cnm."""

    async def create_network(self, network: NetworkSpec, undo: Undo) -> None:
        """Creates (or completes) the network on this host."""

    async def attach_endpoints(self, network: NetworkSpec, what: str) -> list[str]:
        """Re-attaches endpoint veths that are no longer ports of the network's bridge."""

    async def delete_network(self, network: NetworkSpec) -> list[str]:
        """Deletes the network with every endpoint on it; returns the endpoint ids removed."""

    async def create_endpoint(
        self, network: NetworkSpec, endpoint: EndpointSpec, undo: Undo
    ) -> EndpointSpec:
        """Connects the endpoint; returns it with the chosen interface name filled in."""

    async def delete_endpoint(
        self, endpoint_id: str, ports: list[PortRule] | None = None, sandbox: str = ""
    ) -> None:
        """Disconnects the endpoint: every rule it owns (``ports``: the ones published for
        it, when known) and its veth, which is down on return and deleted soon after
        (``sandbox``: the namespace its peer is in, when known)."""

    async def set_peers(
        self, network: NetworkSpec, peers: list[Peer], remotes: list[RemoteEndpoint]
    ) -> list[str]:
        """Makes the network's forwarding to other hosts exactly this; returns the changes.
        FAILED_PRECONDITION / DRIVER_HAS_NO_PEERS for a driver without peers."""

    def forget_applied(self) -> None:
        """Forgets what set_peers last applied, so that its next call reads the kernel."""

    async def vxlan_state(self, network_id: str, bridge_index: int) -> VxlanState | None:
        """The network's VXLAN device as the kernel has it; None when there is none."""

    async def network_intact(self, network: NetworkSpec) -> bool:
        """False when resync must remake the network on this host."""

    async def repair_network(self, network: NetworkSpec) -> list[str]:
        """Remakes what network_intact found missing; returns a line per repair."""


DRIVERS: dict[str, Callable[..., Driver]] = {"bridge": BridgeDriver, "overlay": OverlayDriver}


def make_driver(
    name: str, netlink: Netlink, firewall: Firewall, faults: Faults,
    underlay_ip: Callable[[], str] = lambda: "",
) -> Driver:
    """The driver called ``name``; ``underlay_ip`` gives the host's VTEP address (overlay)."""
    if name == "overlay":
        return OverlayDriver(
            netlink=netlink, firewall=firewall, faults=faults, underlay_ip=underlay_ip
        )
    return DRIVERS[name](netlink=netlink, firewall=firewall, faults=faults)
