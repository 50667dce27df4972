"""The ``bridge`` driver: one Linux bridge per network, a veth pair per endpoint.

The bridge holds the gateway address; each endpoint's host-side veth is a
port of it (hairpin on, so a container reaches its own published ports),
and its peer is created directly inside the container's namespace. NAT,
isolation and published ports are the firewall backend's.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from cnm import errors, validation
from cnm.undo import Undo
from netdriver_service import names
from netdriver_service.faults import Faults
from netdriver_service.firewall import Firewall, NetworkRules, PortRule
from netdriver_service.model import EndpointSpec, NetworkSpec, Peer, RemoteEndpoint, VxlanState
from netdriver_service.netlink import Link, LinkExists, LinkNotOwned, Netlink
from netdriver_service.teardown import Teardown


def network_rules(network: NetworkSpec) -> NetworkRules:
    return NetworkRules(
        network_id=network.network_id, bridge=network.bridge, subnet=network.subnet,
        gateway=network.gateway, internal=network.internal, enable_icc=network.enable_icc,
        allowed_networks=network.allowed_networks, ipv6_subnet=network.ipv6_subnet,
        ipv6_gateway=network.ipv6_gateway, masquerade_ipv6=network.ipv6_masquerade,
    )


def port_rules(endpoint: EndpointSpec) -> list[PortRule]:
    """The firewall's rules for the endpoint's published ports: each onto the container's
    address of the host address's family; one on every address onto each of a
    dual-stack container's addresses."""
    rules = []
    for port in endpoint.ports:
        if port.host_ip:
            targets = [endpoint.ipv6_address if ":" in port.host_ip else endpoint.address]
        else:
            targets = [endpoint.address, endpoint.ipv6_address]
        rules += [PortRule(
            endpoint_id=endpoint.endpoint_id, network_id=endpoint.network_id,
            protocol=port.protocol, host_ip=port.host_ip, host_port=port.host_port,
            container_ip=target, container_port=port.container_port,
        ) for target in targets if target]
    return rules


class BridgeDriver:
    name = "bridge"

    def __init__(self, *, netlink: Netlink, firewall: Firewall, faults: Faults) -> None:
        self.netlink = netlink
        self.firewall = firewall
        self.faults = faults

    # Networks -------------------------------------------------------------------

    async def _owned_bridge(self, network: NetworkSpec) -> Link | None:
        """The network's bridge if it exists; refuses a link of that name cnm does not own."""
        try:
            return await self.netlink.get_owned_link(
                network.bridge, names.network_alias(network.network_id)
            )
        except LinkNotOwned as error:
            owner = names.parse_alias(error.metadata["mark"])
            holder = (
                f"network {owner[1]!r}" if owner and owner[0] == "net"
                else "a link cnm does not own"
            )
            raise errors.AlreadyExists(
                f"network {network.network_id!r}: bridge name {network.bridge!r} is taken by "
                f"{holder}", reason="BRIDGE_NAME_TAKEN", bridge=network.bridge,
            ) from error

    async def network_present(self, network: NetworkSpec) -> bool:
        link = await self._owned_bridge(network)
        return link is not None and link.up

    async def create_network(self, network: NetworkSpec, undo: Undo) -> None:
        what = f"create network {network.network_id!r}"
        bridge = await self._owned_bridge(network)
        if bridge is None:
            await _in_context(
                f"{what}: create bridge {network.bridge!r}",
                self.netlink.create_bridge(
                    network.bridge, mtu=network.mtu, alias=names.network_alias(network.network_id),
                    mac=validation.mac_from_address(network.first_gateway),
                    mcast_snooping=network.mcast_snooping,
                ),
            )
            undo.push(f"delete bridge {network.bridge!r}", lambda: self.netlink.delete_owned_link(
                network.bridge, names.network_alias(network.network_id)))
        elif not bridge.up:
            await self.netlink.set_up(network.bridge)
        self.faults.check("bridge")
        if network.subnet:  # else IPv6 only
            await _in_context(
                f"{what}: add gateway {network.gateway}",
                self.netlink.add_address(network.bridge,
                                         f"{network.gateway}/{network.prefixlen}"),
            )
        await self.netlink.set_sysctl("net", "ipv4", "ip_forward", value="1")
        await self._bridge_ipv6(network, what)
        if not network.internal:
            # Lets a published port answer on 127.0.0.1: the DNATed packet
            # keeps its loopback source until masqueraded on the way out.
            await self.netlink.set_sysctl(
                "net", "ipv4", "conf", network.bridge, "route_localnet", value="1"
            )
        self.faults.check("gateway")
        # Undo only rules this call installs: a failed connect must not take
        # away the rules (and published ports) of a network that had them.
        had_rules = network.network_id in await self.firewall.list_networks()
        await _in_context(
            f"{what}: install firewall rules", self.firewall.add_network(network_rules(network))
        )
        if not had_rules:
            undo.push("remove the network's firewall rules",
                      lambda: self.firewall.remove_network(network.network_id))
        self.faults.check("network_rules")

    async def _bridge_ipv6(self, network: NetworkSpec, what: str) -> None:
        """The bridge's IPv6: never taking router advertisements (a container could send
        one and become the host's default router); off altogether on an IPv4 network;
        on a dual-stack one, the IPv6 gateway (nodad) and host-wide IPv6 forwarding."""
        conf = ("net", "ipv6", "conf", network.bridge)
        if not os.path.isdir("/proc/sys/net/ipv6"):
            if network.ipv6_subnet:
                raise errors.FailedPrecondition(
                    f"{what}: the host has no IPv6 (booted with ipv6.disable=1)",
                    reason="IPV6_NOT_SUPPORTED")
            return
        await self.netlink.set_sysctl(*conf, "accept_ra", value="0")
        if not network.ipv6_subnet:
            await self.netlink.set_sysctl(*conf, "disable_ipv6", value="1")
            return
        await self.netlink.set_sysctl(*conf, "disable_ipv6", value="0")
        await _in_context(
            f"{what}: add IPv6 gateway {network.ipv6_gateway}",
            self.netlink.add_address(
                network.bridge, f"{network.ipv6_gateway}/{network.ipv6_prefixlen}"),
        )
        await self.netlink.enable_ipv6_forwarding()

    async def _repair_network(self, network: NetworkSpec, what: str) -> Link:
        """Makes a known network whole again (its bridge deleted by hand, or down) and
        re-attaches its endpoints' veths to it.

        Not part of the connect that found it broken: a later failure of that
        connect leaves the repair in place rather than break the network again.
        """
        async with Undo(f"{what}: remake the network") as repair:
            await self.create_network(network, repair)
            repair.commit()
        bridge = await self._owned_bridge(network)
        if bridge is None:
            raise errors.Internal(f"{what}: bridge {network.bridge!r} vanished")
        await self.attach_endpoints(network, what)
        return bridge

    async def attach_endpoints(self, network: NetworkSpec, what: str) -> list[str]:
        """Makes every endpoint veth of the network a port of its bridge again (hairpin
        on); returns their names. Nothing to do when the bridge is missing."""
        bridge = await self._owned_bridge(network)
        if bridge is None:
            return []
        attached = []
        for link in await self.netlink.list_links():
            owner = names.parse_alias(link.alias)
            if owner and owner[0] == "ep" and owner[2] == network.network_id and (
                link.master != bridge.index
            ):
                where = f"{what}: re-attach {link.name!r} to bridge {network.bridge!r}"
                await _in_context(where, self.netlink.set_master(link.name, bridge.index))
                await _in_context(
                    where, self.netlink.set_bridge_port(link.name, alias=link.alias, hairpin=True)
                )
                attached.append(link.name)
        return attached

    async def delete_network(self, network: NetworkSpec) -> list[str]:
        teardown = Teardown(f"delete network {network.network_id!r}")
        removed: list[str] = []
        mark = names.network_alias(network.network_id)
        try:
            bridge, foreign = await self.netlink.get_owned_link(network.bridge, mark), None
        except LinkNotOwned as error:
            bridge, foreign = None, error
        if bridge is not None:
            for link in await self.netlink.list_links():
                owner = names.parse_alias(link.alias)
                if owner and owner[0] == "ep" and owner[2] == network.network_id:
                    await teardown.step(
                        f"delete endpoint {owner[1]!r}",
                        lambda endpoint_id=owner[1]: self.delete_endpoint(endpoint_id),
                    )
                    removed.append(owner[1])
            await self.netlink.settle()  # no veth of it outlives the network
        await teardown.step(
            "remove firewall rules", lambda: self.firewall.remove_network(network.network_id)
        )
        if foreign is not None:
            teardown.failures.append(
                errors.with_context(foreign, f"bridge {network.bridge!r} left in place")
            )
        elif bridge is not None:
            await teardown.step(
                f"delete bridge {network.bridge!r}",
                lambda: self.netlink.delete_owned_link(network.bridge, mark),
            )
        teardown.raise_failures()
        return removed

    # Endpoints ------------------------------------------------------------------

    async def create_endpoint(
        self, network: NetworkSpec, endpoint: EndpointSpec, undo: Undo
    ) -> EndpointSpec:
        what = f"connect endpoint {endpoint.endpoint_id!r}"
        ns = endpoint.netns_path
        host = endpoint.host_interface
        bridge = await self._owned_bridge(network)
        if bridge is None or not bridge.up:
            # Known to the agent but gone from the kernel (deleted by hand, or a reboot).
            bridge = await self._repair_network(network, what)
        mine = names.endpoint_owner(endpoint.endpoint_id)
        # The same names, retired by a disconnect and still being deleted: gone first.
        await self.netlink.settle(host, ns)
        try:
            # A leftover of this endpoint whose record is gone: start afresh.
            await self.netlink.delete_owned_link(host, mine)
        except LinkNotOwned as error:
            raise errors.AlreadyExists(
                f"{what}: host interface name {host!r} is taken by a link it does not own",
                reason="INTERFACE_NAME_TAKEN", interface=host,
            ) from error
        peer = await self._container_interface(endpoint, what)
        publishing = self._publish(endpoint, what, undo)
        for retry in (False, True):
            try:
                await self._create_veth(network, endpoint, bridge, peer, what)
                break
            except LinkExists as error:
                # eth0 taken (the container's second network): its first free name, once.
                chosen = retry or bool(endpoint.container_interface)
                taken = set() if chosen else await self._interfaces(ns)
                if peer not in taken:
                    raise errors.AlreadyExists(
                        f"{what}: create veth {host!r}: interface {peer!r} appeared in the "
                        f"sandbox or {host!r} on the host", reason="INTERFACE_NAME_TAKEN",
                    ) from error
                peer = _first_free(taken)
        endpoint = _with_interface(endpoint, peer)
        undo.push(f"delete veth {host!r}", lambda: self.netlink.delete_owned_link(host, mine))
        self.faults.check("veth")
        if not endpoint.peer_on_host:
            await self._configure_container_end(network, endpoint, what)
        # Last, so that the bridge enables the port once, with carrier (see create_veth).
        await _in_context(f"{what}: set bridge port {host!r} up", self.netlink.set_up(host))
        self.faults.check("port")
        if publishing is not None:
            await publishing
        self.faults.check("ports")
        return endpoint

    def _publish(self, endpoint: EndpointSpec, what: str, undo: Undo) -> asyncio.Future | None:
        """Starts publishing the endpoint's ports (None: it has none), beside the plumbing:
        the rules name only its address and the host's ports, and the firewall works in
        a thread of its own (0.5-0.6 ms of a connect's 2-3 in the kernel) while the
        event loop makes the veth; nftables and rtnetlink take different kernel locks.
        Its inverse is pushed now, so a failure of either side undoes both; it waits
        for the publishing to end, and removes the ports only if they went in."""
        if not endpoint.ports:
            return None
        rules = port_rules(endpoint)
        publishing = asyncio.ensure_future(
            _in_context(f"{what}: publish ports", self.firewall.add_ports(rules)))

        async def unpublish() -> None:
            try:
                await publishing
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - not published
                return
            await self.firewall.remove_ports(endpoint.endpoint_id, rules)

        undo.push("unpublish its ports", unpublish)
        return publishing

    async def _configure_container_end(self, network: NetworkSpec, endpoint: EndpointSpec,
                                       what: str) -> None:
        """The container's end, in its namespace: lo and it up, its address, no IPv6
        link-local address, and the default route if it has it."""
        ns, peer = endpoint.netns_path, endpoint.container_interface
        peer_link = await self.netlink.get_link(peer, ns)
        if peer_link is None:
            raise errors.Internal(f"{what}: {peer!r} vanished from the sandbox")
        await _in_context(f"{what}: set lo up", self.netlink.set_up("lo", ns))
        await _in_context(
            f"{what}: configure {peer!r}",
            self.netlink.disable_ipv6_link_local(peer_link.index, ns),
        )
        if endpoint.address:
            await _in_context(
                f"{what}: add address {endpoint.address} to {peer!r}",
                self.netlink.add_address(
                    peer_link.index, f"{endpoint.address}/{network.prefixlen}", ns
                ),
            )
        if endpoint.ipv6_address:
            await _in_context(
                f"{what}: add address {endpoint.ipv6_address} to {peer!r}",
                self.netlink.add_address(
                    peer_link.index, f"{endpoint.ipv6_address}/{network.ipv6_prefixlen}", ns),
            )
        await _in_context(f"{what}: set {peer!r} up", self.netlink.set_up(peer_link.index, ns))
        self.faults.check("address")
        if endpoint.default_route:
            if endpoint.address:
                await _in_context(
                    f"{what}: add default route via {network.gateway}",
                    self.netlink.add_default_route(network.gateway, peer_link.index, ns),
                )
            if endpoint.ipv6_address:
                await _in_context(
                    f"{what}: add IPv6 default route via {network.ipv6_gateway}",
                    self.netlink.add_default_route(network.ipv6_gateway, peer_link.index, ns),
                )
        self.faults.check("route")

    async def _create_veth(
        self, network: NetworkSpec, endpoint: EndpointSpec, bridge: Link, peer: str, what: str
    ) -> None:
        """The endpoint's veth, its peer named ``peer``; LinkExists when a name is taken."""
        try:
            await self.netlink.create_veth(
                endpoint.host_interface, mtu=network.mtu, master=bridge.index, peer_name=peer,
                peer_ns=endpoint.netns_path, peer_mac=endpoint.mac, hairpin=True,
                alias=names.endpoint_alias(endpoint.endpoint_id, network.network_id),
            )
        except LinkExists:
            raise
        except errors.CnmError as error:
            raise errors.with_context(error, what) from error

    async def _container_interface(self, endpoint: EndpointSpec, what: str) -> str:
        """The name asked for (refused if the sandbox has it), else the first to try:
        ``eth0``, which a container's first network finds free. Trying it costs less
        than listing the sandbox's links first, which the others then do."""
        ns = endpoint.netns_path or None  # (None: the peer waits on the host)
        if endpoint.container_interface:
            if await self.netlink.get_link(endpoint.container_interface, ns) is not None:
                raise errors.AlreadyExists(
                    f"{what}: the sandbox already has an interface "
                    f"{endpoint.container_interface!r}", reason="INTERFACE_NAME_TAKEN",
                    interface=endpoint.container_interface,
                )
            return endpoint.container_interface
        return _first_free(set())

    async def _interfaces(self, ns: str) -> set[str]:
        return {link.name for link in await self.netlink.list_links(ns)}

    # What only some drivers have: neutral answers here, overridden where it applies.

    async def set_peers(
        self, network: NetworkSpec, peers: list[Peer], remotes: list[RemoteEndpoint]
    ) -> list[str]:
        """Makes the network's remote peers these (overlay); a bridge has none."""
        raise errors.FailedPrecondition(
            f"set peers: network {network.network_id!r} uses driver {network.driver!r}, "
            "which has no peers", reason="DRIVER_HAS_NO_PEERS",
        )

    def forget_applied(self) -> None:
        """Makes the next set_peers read the kernel again (after a resync)."""

    async def vxlan_state(self, network_id: str, bridge_index: int) -> VxlanState | None:
        """The network's VXLAN device as the kernel has it; a bridge network has none."""
        return None

    async def network_intact(self, network: NetworkSpec) -> bool:
        """Whether resync must remake the network (overlay networks live on every host;
        a bridge network is made when an endpoint needs it)."""
        return True

    async def repair_network(self, network: NetworkSpec) -> list[str]:
        """Remakes what ``network_intact`` found missing; returns what it did."""
        return []

    async def delete_endpoint(
        self, endpoint_id: str, ports: list[PortRule] | None = None, sandbox: str = ""
    ) -> None:
        host = names.host_veth_name(endpoint_id)
        mine = names.endpoint_owner(endpoint_id)
        try:
            link = await self.netlink.get_owned_link(host, mine)
        except LinkNotOwned as error:
            raise errors.FailedPrecondition(
                f"disconnect endpoint {endpoint_id!r}: link {host!r} is not marked as "
                "this endpoint's; left in place", reason="LINK_NOT_OWNED", interface=host,
            ) from error
        teardown = Teardown(f"disconnect endpoint {endpoint_id!r}")
        await teardown.step(
            "remove published ports", lambda: self.firewall.remove_ports(endpoint_id, ports)
        )
        if link is not None:
            await teardown.step(
                f"delete veth {host!r}",
                lambda: self.netlink.retire_owned_link(host, mine, peer_ns=sandbox),
            )
        teardown.raise_failures()


def _first_free(taken: set[str]) -> str:
    """The first ``ethN`` not in ``taken``."""
    number = 0
    while f"eth{number}" in taken:
        number += 1
    return f"eth{number}"


def _with_interface(endpoint: EndpointSpec, interface: str) -> EndpointSpec:
    return replace(endpoint, container_interface=interface)


async def _in_context(what: str, action) -> None:
    """Awaits ``action``; a cnm error it raises is re-raised with ``what`` in front."""
    try:
        await action
    except errors.CnmError as error:
        raise errors.with_context(error, what) from error
