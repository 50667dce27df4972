"""The ``overlay`` driver: one network across hosts, over VXLAN.

On each host the network is a bridge (exactly as the ``bridge`` driver
makes it: gateway address, NAT, isolation, veth pairs, published ports)
plus a VXLAN device enslaved to it. Containers on different hosts share
the layer-2 segment; each reaches the outside through its own host.

Every host holds the same gateway address with the same MAC (derived from
the gateway address, as the bridge driver does), so a container's gateway
answers locally wherever it runs. ARP never crosses the underlay: the VXLAN device answers ARP
requests itself (``proxy``) from neighbour entries the orchestrator
pushes, and drops those it cannot answer, so no host ever hears another's
gateway. Forwarding is programmed, never learned (see
:class:`netdriver_service.netlink.Forwarding`): ``set_peers`` makes the device's entries
match the peers and remote endpoints it is given.

A host with no underlay address refuses overlay networks. A stale VXLAN
device is made again only once no other device holds the VNI, and gets its
forwarding back at once; should the re-make fail, the old device is put back.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from cnm import errors, validation
from cnm.errors import capped
from cnm.undo import Undo
from netdriver_service import names
from netdriver_service.drivers.bridge import BridgeDriver
from netdriver_service.faults import Faults
from netdriver_service.firewall import Firewall
from netdriver_service.model import NetworkSpec, Peer, RemoteEndpoint, VxlanState
from netdriver_service.netlink import VXLAN_PORT, Forwarding, Link, Netlink, VxlanInfo
from netdriver_service.teardown import Teardown

log = logging.getLogger("netdriver.overlay")


def gateway_mac(network: NetworkSpec) -> str:
    """The gateway's MAC, the same on every host (02:42 and the gateway address, which
    no endpoint has: the IPv6 one on an IPv6-only network)."""
    return validation.mac_from_address(network.first_gateway)


def check_peer_fields(peers: list[Peer], remotes: list[RemoteEndpoint]) -> None:
    """What a peers request can get wrong whatever the network: ids, addresses, MACs."""
    for peer in peers:
        validation.check_id("host_id", peer.host_id)
        validation.check_underlay_ip(peer.underlay_ip, allow_empty=False)
    for remote in remotes:
        if remote.address or not remote.ipv6_address:  # (IPv6 only: no address)
            validation.parse_address(remote.address, "remote endpoint address")
        if remote.ipv6_address:
            validation.parse_address(remote.ipv6_address, "remote endpoint ipv6_address")
        validation.check_mac(remote.mac)
        validation.check_underlay_ip(remote.underlay_ip, allow_empty=False)


def check_peers(
    network: NetworkSpec, peers: list[Peer], remotes: list[RemoteEndpoint]
) -> tuple[list[Peer], list[RemoteEndpoint]]:
    """Validated, normalised peers and remote endpoints of ``network``."""
    what = f"set peers of network {network.network_id!r}"
    checked_peers = [
        Peer(validation.check_id("host_id", peer.host_id),
             validation.check_underlay_ip(peer.underlay_ip, allow_empty=False))
        for peer in peers
    ]
    subnet = ipaddress.IPv4Network(network.subnet) if network.subnet else None
    subnet6 = ipaddress.IPv6Network(network.ipv6_subnet) if network.ipv6_subnet else None
    checked: list[RemoteEndpoint] = []
    addresses: set[str] = set()
    macs: set[str] = set()
    for remote in remotes:
        if subnet is not None:
            address = validation.check_endpoint_address(
                subnet, network.gateway, remote.address, "remote endpoint address")
        elif remote.address or not remote.ipv6_address:
            raise errors.InvalidArgument(
                f"{what}: remote endpoint {capped(remote.address or remote.mac)!r}: the "
                "network is IPv6 only: an ipv6_address and no address",
                reason="ADDRESS_OUTSIDE_SUBNET", field="address")
        else:
            address = ""
        ipv6_address = ""
        if remote.ipv6_address:
            if subnet6 is None:
                raise errors.InvalidArgument(
                    f"{what}: remote endpoint {address} has IPv6 address "
                    f"{capped(remote.ipv6_address)!r} but the network has no IPv6 subnet",
                    reason="ADDRESS_OUTSIDE_SUBNET", field="ipv6_address")
            ipv6_address = validation.check_endpoint_address(
                subnet6, network.ipv6_gateway, remote.ipv6_address,
                "remote endpoint ipv6_address")
        mac = validation.check_mac(remote.mac)
        if address in addresses or mac in macs or (ipv6_address and ipv6_address in addresses):
            raise errors.InvalidArgument(
                f"{what}: remote endpoint {address} ({mac}) is listed twice",
                reason="DUPLICATE_REMOTE_ENDPOINT",
            )
        addresses.update(filter(None, (address, ipv6_address)))
        macs.add(mac)
        checked.append(RemoteEndpoint(
            address, mac, validation.check_underlay_ip(remote.underlay_ip, allow_empty=False),
            tuple(dict.fromkeys(validation.check_dns_name("dns_names", name).lower()
                                for name in remote.dns_names)), ipv6_address))
    return checked_peers, checked


class OverlayDriver(BridgeDriver):
    """The bridge driver's network, plus a VXLAN port and its programmed forwarding.

    Endpoints are the bridge driver's unchanged; a connect that finds the
    bridge gone makes the whole overlay network again (``create_network`` is
    this class's).
    """

    name = "overlay"

    def __init__(
        self, *, netlink: Netlink, firewall: Firewall, faults: Faults,
        underlay_ip: Callable[[], str] = lambda: "",
    ) -> None:
        super().__init__(netlink=netlink, firewall=firewall, faults=faults)
        self.underlay_ip = underlay_ip
        # What set_peers last made each network's VXLAN device hold, with the
        # device's index, by network id; dropped whenever the device is made
        # again or a step fails. Saves reading the device and its whole FDB
        # and neighbour table back on every push.
        self._applied: dict[str, tuple[int, Forwarding]] = {}
        # The forwarding the orchestrator last asked for, by network id (in
        # memory: after a restart the orchestrator pushes every network again).
        # A VXLAN device made again gets it back at once.
        self._wanted: dict[str, Forwarding] = {}

    # Networks -------------------------------------------------------------------

    async def _owned_vxlan(self, network: NetworkSpec) -> Link | None:
        name = names.vxlan_name(network.network_id)
        link = await self.netlink.get_link(name)
        if link is None:
            return None
        if link.alias != names.vxlan_alias(network.network_id):
            raise errors.AlreadyExists(
                f"network {network.network_id!r}: VXLAN device name {name!r} is taken by a "
                "link cnm does not own", reason="INTERFACE_NAME_TAKEN", interface=name,
            )
        return link

    async def _vxlan_current(self, network: NetworkSpec, bridge_index: int) -> bool:
        """Whether the network's VXLAN device is there as it should be now."""
        link = await self._owned_vxlan(network)
        if link is None or not link.up or link.master != bridge_index:
            return False
        info = await self.netlink.vxlan_info(link.name)
        return (
            info is not None and info.vni == network.vni and info.local == self.underlay_ip()
            and not info.learning and info.proxy and link.mtu == network.mtu
        )

    async def network_present(self, network: NetworkSpec) -> bool:
        bridge = await self._owned_bridge(network)
        return (
            bridge is not None and bridge.up and bridge.mac == gateway_mac(network)
            and await self._vxlan_current(network, bridge.index)
        )

    def _local_address(self, what: str) -> str:
        """This host's VTEP address; FAILED_PRECONDITION when it has none."""
        local = self.underlay_ip()
        if not local:
            raise errors.FailedPrecondition(
                f"{what}: this host has no underlay (VTEP) address: it has no default route "
                "to take one from; start the agent with --underlay-ip (CNM_UNDERLAY_IP)",
                reason="NO_UNDERLAY_ADDRESS",
            )
        return local

    async def _check_vni_free(self, network: NetworkSpec, what: str) -> None:
        """Refuses a VNI another VXLAN device of this host holds (the kernel would too,
        but only once the network's own stale device is gone)."""
        own = names.vxlan_name(network.network_id)
        for link in await self.netlink.list_links():
            if link.kind != "vxlan" or link.name == own:
                continue
            info = await self.netlink.vxlan_info(link.name)
            if info is not None and info.vni == network.vni and info.port in (0, VXLAN_PORT):
                raise errors.AlreadyExists(
                    f"{what}: vni {network.vni} is used by VXLAN device {link.name!r} on this "
                    "host", reason="VNI_IN_USE", vni=network.vni, interface=link.name,
                )

    async def create_network(self, network: NetworkSpec, undo: Undo) -> None:
        what = f"create overlay network {network.network_id!r}"
        local = self._local_address(what)
        await super().create_network(network, undo)
        bridge = await self.netlink.get_link(network.bridge)
        if bridge is None:
            raise errors.Internal(f"{what}: bridge {network.bridge!r} vanished")
        mac = gateway_mac(network)
        if bridge.mac != mac:  # a bridge made before bridges had a fixed MAC
            await self.netlink.set_mac(network.bridge, mac)
        if await self._vxlan_current(network, bridge.index):
            return
        await self._check_vni_free(network, what)
        name = names.vxlan_name(network.network_id)
        self._applied.pop(network.network_id, None)
        # Wrong VNI, source or MTU (the network was re-created, or the
        # underlay address changed), or missing: made again, with the
        # forwarding it had. Should a later step fail, the old device comes back.
        stale = await self._owned_vxlan(network)
        kept = self._wanted.get(network.network_id)
        if stale is not None:
            old = await self.netlink.vxlan_info(name)
            old_forwarding = await self.netlink.forwarding(stale.index)
            kept = kept or old_forwarding
            await self.netlink.delete_link(name)
            if old is not None:
                undo.push(f"restore the old VXLAN device {name!r}", lambda: self._restore(
                    network, stale, old, old_forwarding, bridge.index))
        try:
            await self.netlink.create_vxlan(
                name, vni=network.vni, local=local, mtu=network.mtu,
                master=bridge.index, alias=names.vxlan_alias(network.network_id),
            )
        except errors.AlreadyExists as error:
            raise errors.AlreadyExists(
                f"{what}: vni {network.vni} is used by another VXLAN device on this host",
                reason="VNI_IN_USE", vni=network.vni,
            ) from error
        except errors.CnmError as error:
            raise type(error)(f"{what}: {error.message}", reason=error.reason) from error
        undo.push(f"delete VXLAN device {name!r}", lambda: self.netlink.delete_link(name))
        if kept is not None:
            created = await self.netlink.get_link(name)
            if created is None:
                raise errors.Internal(f"{what}: VXLAN device {name!r} vanished")
            await self._program(created.index, kept)
        self.faults.check("vxlan")

    async def _program(self, index: int, forwarding: Forwarding) -> None:
        """Puts ``forwarding`` on a new, empty VXLAN device."""
        for underlay in sorted(forwarding.flood):
            await self.netlink.add_flood(index, underlay)
        for mac, underlay in sorted(forwarding.unicast.items()):
            await self.netlink.set_remote_mac(index, mac, underlay)
        for address, mac in sorted(forwarding.neighbours.items()):
            await self.netlink.set_neighbour(index, address, mac)

    async def _restore(
        self, network: NetworkSpec, link: Link, info: VxlanInfo, forwarding: Forwarding,
        bridge_index: int,
    ) -> None:
        """Undo step: puts back the device a failed re-make deleted, with its forwarding
        (a port of the network's bridge: the bridge it had may be gone)."""
        name = link.name
        self._applied.pop(network.network_id, None)
        try:
            await self.netlink.create_vxlan(
                name, vni=info.vni, local=info.local, mtu=link.mtu, master=bridge_index,
                alias=link.alias,
            )
            restored = await self.netlink.get_link(name)
            if restored is not None:
                await self._program(restored.index, forwarding)
        except errors.CnmError as error:
            # An undo step: the operation's own error is what the caller sees.
            log.warning("could not restore VXLAN device", extra={
                "network_id": network.network_id, "interface": name, "error": error.message,
            })

    async def vxlan_state(self, network_id: str, bridge_index: int) -> VxlanState | None:
        """Network ``network_id``'s VXLAN device as the kernel has it; None when it has none.
        ``bridge_index``: the network's bridge (0 when it has none)."""
        name = names.vxlan_name(network_id)
        link = await self.netlink.get_link(name)
        if link is None or link.alias != names.vxlan_alias(network_id):
            return None
        info = await self.netlink.vxlan_info(name)
        if info is None:
            return None
        forwarding = await self.netlink.forwarding(link.index)
        return VxlanState(
            name=name, vni=info.vni, local=info.local, learning=info.learning,
            proxy=info.proxy, up=link.up,
            attached=bool(bridge_index) and link.master == bridge_index,
            flood_peers=len(forwarding.flood), remote_macs=len(forwarding.unicast),
            neighbours=len(forwarding.neighbours),
        )

    async def repair_network(self, network: NetworkSpec) -> list[str]:
        """Makes a known overlay network whole again when its VXLAN device (or its
        bridge) is missing or stale, with the device's forwarding and the endpoints
        re-attached (resync: an overlay network is on every host, not made lazily);
        returns what it did."""
        if await self.network_intact(network):
            return []
        bridge = await self._owned_bridge(network)
        present = await self._owned_vxlan(network) is not None
        await self._repair_network(network, f"repair overlay network {network.network_id!r}")
        name = names.vxlan_name(network.network_id)
        done = "re-made stale" if present else "re-created missing"
        lines = [f"{done} VXLAN device {name} of network {network.network_id}"]
        if bridge is None:
            lines.append(f"re-created missing bridge {network.bridge} of network "
                         f"{network.network_id}")
        return lines

    async def network_intact(self, network: NetworkSpec) -> bool:
        """The network's bridge and a current VXLAN device on it are there (read only)."""
        bridge = await self._owned_bridge(network)
        return bridge is not None and await self._vxlan_current(network, bridge.index)

    async def delete_network(self, network: NetworkSpec) -> list[str]:
        self._applied.pop(network.network_id, None)
        self._wanted.pop(network.network_id, None)
        teardown = Teardown(f"delete overlay network {network.network_id!r}")
        name = names.vxlan_name(network.network_id)
        link = await self.netlink.get_link(name)
        if link is not None and link.alias == names.vxlan_alias(network.network_id):
            await teardown.step(
                f"delete vxlan {name!r}", lambda: self.netlink.delete_link(name)
            )
        removed: list[str] = []

        async def delete_bridge() -> None:
            removed.extend(await super(OverlayDriver, self).delete_network(network))

        await teardown.step("delete bridge", delete_bridge)
        teardown.raise_failures()
        return removed

    # Peers ----------------------------------------------------------------------

    def forget_applied(self) -> None:
        """Makes the next set_peers of every network read the kernel (after a resync)."""
        self._applied.clear()

    async def set_peers(
        self, network: NetworkSpec, peers: list[Peer], remotes: list[RemoteEndpoint]
    ) -> list[str]:
        """Makes the network's forwarding entries exactly these; returns the changes made.

        Entries are replaced in place, so traffic to an endpoint that stays
        is never interrupted.
        """
        local = self.underlay_ip()
        flood = {peer.underlay_ip for peer in peers if peer.underlay_ip != local}
        unicast = {remote.mac: remote.underlay_ip for remote in remotes}
        # Both families' addresses answered from the device's neighbour table (ARP
        # and neighbour solicitations alike: nothing asked of the network is flooded).
        neighbours = {address: remote.mac for remote in remotes
                      for address in (remote.address, remote.ipv6_address) if address}
        # Popped: should a step fail, the next push reads the kernel again.
        cached = self._applied.pop(network.network_id, None)
        if cached is not None:
            index, current = cached
        else:
            link = await self._owned_vxlan(network)
            if link is None:
                raise errors.FailedPrecondition(
                    f"set peers of network {network.network_id!r}: its VXLAN device is not on "
                    "this host", reason="NETWORK_NOT_ON_HOST", network_id=network.network_id,
                )
            index = link.index
            current = await self.netlink.forwarding(index)
        changes: list[str] = []
        for underlay in sorted(flood - current.flood):
            await self.netlink.add_flood(index, underlay)
            changes.append(f"flood +{underlay}")
        for mac, underlay in sorted(unicast.items()):
            if current.unicast.get(mac) != underlay or mac not in current.bridge_static:
                await self.netlink.set_remote_mac(index, mac, underlay)
                changes.append(f"mac +{mac} via {underlay}")
        for address, mac in sorted(neighbours.items()):
            if current.neighbours.get(address) != mac:
                await self.netlink.set_neighbour(index, address, mac)
                changes.append(f"neighbour +{address} at {mac}")
        for address in sorted(current.neighbours.keys() - neighbours.keys()):
            await self.netlink.delete_neighbour(index, address)
            changes.append(f"neighbour -{address}")
        for mac in sorted((current.unicast.keys() | current.bridge_static) - unicast.keys()):
            await self.netlink.delete_remote_mac(index, mac)
            changes.append(f"mac -{mac}")
        for underlay in sorted(current.flood - flood):
            await self.netlink.delete_flood(index, underlay)
            changes.append(f"flood -{underlay}")
        wanted = Forwarding(frozenset(flood), unicast, frozenset(unicast), neighbours)
        self._applied[network.network_id] = (index, wanted)
        self._wanted[network.network_id] = wanted
        return changes
