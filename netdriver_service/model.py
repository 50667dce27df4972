"""The agent's view of networks and endpoints: validated plain data.

``network_from_proto`` / ``endpoint_from_proto`` check every field of a
request (raising :class:`cnm.errors.InvalidArgument`) before anything
touches the kernel; the resulting dataclasses are what drivers, the
firewall adapter and the state store work with.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass, field, replace

from cnm import errors, validation
from cnm.errors import capped
from cnm.netdriver.v1 import netdriver_pb2
from netdriver_service import names, netns

DEFAULT_MTU = 1500
OVERLAY_MTU = DEFAULT_MTU - 50  # room for VXLAN's outer Ethernet, IPv4, UDP and VXLAN headers
OVERLAY_MTU_IPV6 = DEFAULT_MTU - 70  # the same over an IPv6 underlay (its header is 20 more)
MAX_VNI = 0xFFFFFF


@dataclass(frozen=True)
class NetworkSpec:
    network_id: str
    subnet: str
    gateway: str
    bridge: str
    name: str = ""
    driver: str = "bridge"
    mtu: int = DEFAULT_MTU
    internal: bool = False
    enable_icc: bool = True
    allowed_networks: tuple[str, ...] = ()
    vni: int = 0
    options: tuple[tuple[str, str], ...] = ()
    mcast_snooping: bool = False
    ipv6_subnet: str = ""  # dual stack: the IPv6 subnet ("" for IPv4 only)
    ipv6_gateway: str = ""
    ipv6_masquerade: bool = True
    # An IPv6-only network has no subnet nor gateway: its ipv6_subnet is its only one.

    @property
    def first_gateway(self) -> str:
        """The gateway of its first family: IPv4, or IPv6 on an IPv6-only network."""
        return self.gateway or self.ipv6_gateway

    @property
    def dns(self) -> bool:
        """Whether the network answers its containers' names (option cnm.dns)."""
        return validation.check_network_options(dict(self.options)).dns

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def ipv6_prefixlen(self) -> int:
        return ipaddress.IPv6Network(self.ipv6_subnet).prefixlen

    def same_as(self, other: NetworkSpec) -> bool:
        """Equal in every parameter that shapes the kernel state (the name is only a label)."""
        return replace(self, name="") == replace(other, name="")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSpec:
        return cls(
            **{
                **data,
                "allowed_networks": tuple(data.get("allowed_networks", ())),
                "options": tuple(tuple(item) for item in data.get("options", ())),
            }
        )

    def to_proto(self) -> netdriver_pb2.Network:
        return netdriver_pb2.Network(
            network_id=self.network_id, name=self.name, driver=driver_enum(self.driver),
            subnet=self.subnet,
            gateway=self.gateway, bridge_name=self.bridge, mtu=self.mtu, internal=self.internal,
            enable_icc=self.enable_icc, allowed_networks=list(self.allowed_networks),
            vni=self.vni, options=dict(self.options), ipv6_subnet=self.ipv6_subnet,
            ipv6_gateway=self.ipv6_gateway,
            ipv6_masquerade=self.ipv6_masquerade if self.ipv6_subnet else None,
        )


@dataclass(frozen=True)
class PortSpec:
    protocol: str
    host_ip: str
    host_port: int
    container_port: int

    def to_proto(self) -> netdriver_pb2.PortMapping:
        return netdriver_pb2.PortMapping(
            protocol=validation.PROTOCOL_NUMBERS[self.protocol], host_ip=self.host_ip,
            host_port=self.host_port, container_port=self.container_port,
        )


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: str
    network_id: str
    sandbox: str  # as the caller gave it
    netns_path: str  # the namespace it resolves to
    address: str
    mac: str
    host_interface: str
    container_interface: str  # "" until chosen (first free ethN)
    container_id: str = ""
    ports: tuple[PortSpec, ...] = ()
    default_route: bool = False
    mac_requested: bool = field(default=False, compare=False)
    peer_on_host: bool = False  # the container's end waits on the host for the runtime
    dns_names: tuple[str, ...] = ()  # what the network's DNS server answers with its address
    ipv6_address: str = ""  # on a dual-stack network

    def matches(self, request: EndpointSpec) -> bool:
        """Whether ``request`` asks for this endpoint as it is (an idempotent repeat)."""
        return (
            request.network_id == self.network_id
            and request.netns_path == self.netns_path
            and request.address == self.address
            and request.mac == self.mac
            and request.container_id == self.container_id
            and sorted(request.ports, key=_port_key) == sorted(self.ports, key=_port_key)
            and request.default_route == self.default_route
            and request.peer_on_host == self.peer_on_host
            and request.container_interface in ("", self.container_interface)
            and request.dns_names == self.dns_names
            and request.ipv6_address == self.ipv6_address
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ports"] = [asdict(port) for port in self.ports]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EndpointSpec:
        ports = tuple(PortSpec(**port) for port in data.get("ports", ()))
        return cls(**{**data, "ports": ports, "dns_names": tuple(data.get("dns_names", ()))})

    def to_proto(self) -> netdriver_pb2.Endpoint:
        return netdriver_pb2.Endpoint(
            endpoint_id=self.endpoint_id, network_id=self.network_id,
            container_id=self.container_id, sandbox=self.sandbox, address=self.address,
            mac_address=self.mac, host_interface=self.host_interface,
            container_interface=self.container_interface,
            port_mappings=[port.to_proto() for port in self.ports],
            default_route=self.default_route, peer_on_host=self.peer_on_host,
            dns_names=list(self.dns_names), ipv6_address=self.ipv6_address,
        )


def _port_key(port: PortSpec) -> tuple:
    return (port.protocol, port.host_ip, port.host_port, port.container_port)


def driver_name(driver: int) -> str:
    """A Driver enum value as the agent's word for it ("bridge", "overlay"); "" if undefined."""
    if driver == netdriver_pb2.DRIVER_UNSPECIFIED:
        return "bridge"
    if driver not in netdriver_pb2.Driver.values():
        return ""
    return netdriver_pb2.Driver.Name(driver).removeprefix("DRIVER_").lower()


def driver_enum(name: str) -> int:
    return netdriver_pb2.Driver.Value(f"DRIVER_{name.upper()}")


def overlay_mtu(underlay_ip: str) -> int:
    """An overlay network's MTU when none is given: the underlay's, less VXLAN's headers."""
    return OVERLAY_MTU_IPV6 if ":" in underlay_ip else OVERLAY_MTU


def network_from_proto(message: netdriver_pb2.Network, drivers: tuple[str, ...],
                       underlay_ip: str = "") -> NetworkSpec:
    """The network a request describes, checked; ``underlay_ip`` is the host's (an overlay
    network's default MTU depends on its family)."""
    network_id = validation.check_id("network_id", message.network_id)
    driver = driver_name(message.driver)
    if driver not in drivers:
        raise errors.InvalidArgument(
            f"network {network_id!r}: unknown driver {driver or message.driver}; this agent has "
            + ", ".join(drivers), reason="UNKNOWN_DRIVER", driver=driver or message.driver,
        )
    validation.check_text("name", message.name, 128, reason="INVALID_NETWORK_NAME")
    subnet = gateway = ""
    if message.subnet or not message.ipv6_subnet:  # else IPv6 only
        network = validation.check_network_subnet(message.subnet).network
        subnet = str(network)
        gateway = (
            validation.check_endpoint_address(network, "", message.gateway, "gateway")
            if message.gateway
            else str(next(network.hosts()))
        )
    elif message.gateway:
        raise errors.InvalidArgument(
            f"network {network_id!r}: gateway {capped(message.gateway)!r} without a subnet "
            "(an IPv6-only network's gateway is its ipv6_gateway)", reason="INVALID_ADDRESS",
            field="gateway")
    options = validation.check_network_options(message.options)
    bridge = validation.check_ifname(
        "bridge name", message.bridge_name or options.bridge_name or names.bridge_name(network_id)
    )
    mtu = validation.check_mtu(
        message.mtu or options.mtu
        or (overlay_mtu(underlay_ip) if driver == "overlay" else DEFAULT_MTU)
    )
    if driver == "overlay" and not 1 <= message.vni <= MAX_VNI:
        raise errors.InvalidArgument(
            f"network {network_id!r}: invalid vni {message.vni}: an overlay network needs "
            f"1-{MAX_VNI}", reason="INVALID_VNI", value=message.vni,
        )
    if message.HasField("enable_icc"):
        enable_icc = message.enable_icc
    else:
        enable_icc = True if options.enable_icc is None else options.enable_icc
    allowed = tuple(sorted(
        {validation.check_id("allowed_networks", value) for value in message.allowed_networks}
    ))
    ipv6_subnet = ipv6_gateway = ""
    if message.ipv6_subnet:
        checked = validation.check_ipv6_subnet(message.ipv6_subnet, message.ipv6_gateway)
        ipv6_subnet, ipv6_gateway = str(checked.network), str(checked.gateway)
    elif message.ipv6_gateway:
        raise errors.InvalidArgument(
            f"network {network_id!r}: ipv6_gateway {capped(message.ipv6_gateway)!r} without "
            "an ipv6_subnet", reason="INVALID_ADDRESS", field="ipv6_gateway")
    return NetworkSpec(
        network_id=network_id, name=message.name, driver=driver, subnet=subnet,
        gateway=gateway, bridge=bridge, mtu=mtu, internal=message.internal or options.internal,
        enable_icc=enable_icc, allowed_networks=allowed, vni=message.vni,
        options=tuple(sorted(message.options.items())), mcast_snooping=options.mcast_snooping,
        ipv6_subnet=ipv6_subnet, ipv6_gateway=ipv6_gateway,
        ipv6_masquerade=message.ipv6_masquerade if message.HasField("ipv6_masquerade")
        else options.ipv6_masquerade,
    )


def resolve_sandbox(sandbox: str, netns_dir: str, confinement: netns.Confinement) -> str:
    """The namespace path a sandbox field names (a name in ``netns_dir``, or a path), once
    ``confinement`` lets the agent use it."""
    if not sandbox:
        raise errors.InvalidArgument("endpoint has no sandbox", reason="INVALID_SANDBOX",
                                     field="sandbox")
    checked = validation.check_sandbox(sandbox)
    path = checked if "/" in sandbox else os.path.join(netns_dir, checked)
    confinement.resolve(path)
    return path


def ports_from_proto(messages, network: NetworkSpec,
                     ipv6: bool = False) -> tuple[PortSpec, ...]:
    """``ipv6``: whether the container has an IPv6 address (to publish on one)."""
    return tuple(
        PortSpec(port.protocol, port.host_ip, port.host_port, port.container_port)
        for port in validation.check_port_mappings(messages, network.internal, ipv6=ipv6,
                                                   ipv4=bool(network.subnet))
    )


def endpoint_from_proto(
    message: netdriver_pb2.Endpoint, network: NetworkSpec, netns_dir: str,
    confinement: netns.Confinement,
) -> EndpointSpec:
    endpoint_id = validation.check_id("endpoint_id", message.endpoint_id)
    if message.network_id and message.network_id != network.network_id:
        raise errors.InvalidArgument(
            f"endpoint {endpoint_id!r} names network {capped(message.network_id)!r} but the "
            f"request describes {network.network_id!r}", reason="NETWORK_MISMATCH",
        )
    if network.subnet:
        address = validation.check_endpoint_address(
            ipaddress.IPv4Network(network.subnet), network.gateway, message.address, "address"
        )
    elif message.address:
        raise errors.InvalidArgument(
            f"endpoint {endpoint_id!r}: address {capped(message.address)!r} on network "
            f"{network.network_id!r}, which is IPv6 only", reason="ADDRESS_OUTSIDE_SUBNET",
            field="address")
    elif not message.ipv6_address:
        raise errors.InvalidArgument(
            f"endpoint {endpoint_id!r} on IPv6-only network {network.network_id!r} needs an "
            "ipv6_address", reason="INVALID_ADDRESS", field="ipv6_address")
    else:
        address = ""
    ipv6_address = ""
    if message.ipv6_address:
        if not network.ipv6_subnet:
            raise errors.InvalidArgument(
                f"endpoint {endpoint_id!r}: ipv6_address {capped(message.ipv6_address)!r} on "
                f"network {network.network_id!r}, which has no IPv6 subnet",
                reason="ADDRESS_OUTSIDE_SUBNET", field="ipv6_address")
        ipv6_address = validation.check_endpoint_address(
            ipaddress.IPv6Network(network.ipv6_subnet), network.ipv6_gateway,
            message.ipv6_address, "ipv6_address")
    ports = ports_from_proto(message.port_mappings, network, bool(ipv6_address))
    container_interface = message.container_interface
    if container_interface:
        validation.check_ifname("container_interface", container_interface)
    validation.check_container_id(message.container_id)
    mac = (
        validation.check_mac(message.mac_address)
        if message.mac_address
        else validation.mac_from_address(address or ipv6_address)
    )
    if message.peer_on_host:
        if message.sandbox:
            raise errors.InvalidArgument("an endpoint whose peer waits on the host has no "
                                         "sandbox", reason="INVALID_SANDBOX", field="sandbox")
        netns_path = ""
        container_interface = container_interface or names.host_peer_name(endpoint_id)
    else:
        netns_path = resolve_sandbox(message.sandbox, netns_dir, confinement)
    return EndpointSpec(
        endpoint_id=endpoint_id, network_id=network.network_id, sandbox=message.sandbox,
        netns_path=netns_path, address=address, mac=mac,
        host_interface=names.host_veth_name(endpoint_id),
        container_interface=container_interface, container_id=message.container_id,
        ports=ports, default_route=message.default_route,
        mac_requested=bool(message.mac_address), peer_on_host=message.peer_on_host,
        dns_names=tuple(dict.fromkeys(
            validation.check_dns_name("dns_names", name).lower() for name in message.dns_names)),
        ipv6_address=ipv6_address,
    )


# --- overlay peers, and what GetState reports of a VXLAN device -------------------

@dataclass(frozen=True)
class Peer:
    host_id: str
    underlay_ip: str


@dataclass(frozen=True)
class RemoteEndpoint:
    address: str
    mac: str
    underlay_ip: str
    dns_names: tuple[str, ...] = ()
    ipv6_address: str = ""  # on a dual-stack network


@dataclass(frozen=True)
class VxlanState:
    """An overlay network's VXLAN device as the kernel has it (for GetState)."""

    name: str
    vni: int
    local: str
    learning: bool
    proxy: bool
    up: bool
    attached: bool  # a port of the network's bridge
    flood_peers: int  # head-end replication entries: one per other host
    remote_macs: int
    neighbours: int
