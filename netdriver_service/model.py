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

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2
from netdriver_service import names, netlink

DEFAULT_MTU = 1500
OVERLAY_MTU = DEFAULT_MTU - 50  # room for VXLAN's outer Ethernet, IPv4, UDP and VXLAN headers
MAX_VNI = 0xFFFFFF
OPTION_BRIDGE_NAME = "com.docker.network.bridge.name"
OPTION_MTU = "com.docker.network.driver.mtu"
OPTION_ICC = "com.docker.network.bridge.enable_icc"
OPTION_INTERNAL = "com.docker.network.internal"
# IGMP/MLD snooping on the network's bridge; off unless set to true (see create_bridge).
OPTION_MCAST_SNOOPING = "cnm.bridge.mcast_snooping"

_PROTOCOLS = {
    netdriver_pb2.PROTOCOL_UNSPECIFIED: "tcp",
    netdriver_pb2.PROTOCOL_TCP: "tcp",
    netdriver_pb2.PROTOCOL_UDP: "udp",
    netdriver_pb2.PROTOCOL_SCTP: "sctp",
}
_PROTOCOL_ENUMS = {
    "tcp": netdriver_pb2.PROTOCOL_TCP,
    "udp": netdriver_pb2.PROTOCOL_UDP,
    "sctp": netdriver_pb2.PROTOCOL_SCTP,
}


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

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

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
            network_id=self.network_id, name=self.name, driver=self.driver, subnet=self.subnet,
            gateway=self.gateway, bridge_name=self.bridge, mtu=self.mtu, internal=self.internal,
            enable_icc=self.enable_icc, allowed_networks=list(self.allowed_networks),
            vni=self.vni, options=dict(self.options),
        )


@dataclass(frozen=True)
class PortSpec:
    protocol: str
    host_ip: str
    host_port: int
    container_port: int

    def to_proto(self) -> netdriver_pb2.PortMapping:
        return netdriver_pb2.PortMapping(
            protocol=_PROTOCOL_ENUMS[self.protocol], host_ip=self.host_ip,
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
            and request.container_interface in ("", self.container_interface)
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ports"] = [asdict(port) for port in self.ports]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EndpointSpec:
        ports = tuple(PortSpec(**port) for port in data.get("ports", ()))
        return cls(**{**data, "ports": ports})

    def to_proto(self) -> netdriver_pb2.Endpoint:
        return netdriver_pb2.Endpoint(
            endpoint_id=self.endpoint_id, network_id=self.network_id,
            container_id=self.container_id, sandbox=self.sandbox, address=self.address,
            mac_address=self.mac, host_interface=self.host_interface,
            container_interface=self.container_interface,
            port_mappings=[port.to_proto() for port in self.ports],
            default_route=self.default_route,
        )


def _port_key(port: PortSpec) -> tuple:
    return (port.protocol, port.host_ip, port.host_port, port.container_port)


def _bool_option(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise errors.InvalidArgument(
        f"invalid option {key}={value!r}: want true or false", reason="INVALID_OPTION", option=key
    )


def network_from_proto(message: netdriver_pb2.Network, drivers: tuple[str, ...]) -> NetworkSpec:
    network_id = names.check_id("network_id", message.network_id)
    driver = message.driver or "bridge"
    if driver not in drivers:
        raise errors.InvalidArgument(
            f"network {network_id!r}: unknown driver {driver!r}; this agent has "
            + ", ".join(drivers), reason="UNKNOWN_DRIVER", driver=driver,
        )
    subnet = names.parse_subnet(message.subnet)
    gateway = (
        names.parse_host_address("gateway", message.gateway, subnet)
        if message.gateway
        else str(next(subnet.hosts()))
    )
    options = dict(message.options)
    bridge = message.bridge_name or options.get(OPTION_BRIDGE_NAME, "")
    if bridge and len(bridge) > names.IFNAMSIZ:
        raise errors.InvalidArgument(
            f"network {network_id!r}: bridge name {bridge!r} is {len(bridge)} characters, "
            f"the kernel allows {names.IFNAMSIZ}", reason="INVALID_INTERFACE_NAME", value=bridge,
        )
    bridge = names.check_ifname("bridge name", bridge or names.bridge_name(network_id))
    mtu = message.mtu
    if not mtu and OPTION_MTU in options:
        try:
            mtu = int(options[OPTION_MTU])
        except ValueError as error:
            raise errors.InvalidArgument(
                f"invalid option {OPTION_MTU}={options[OPTION_MTU]!r}", reason="INVALID_OPTION",
                option=OPTION_MTU,
            ) from error
    mtu = names.check_mtu(mtu or (OVERLAY_MTU if driver == "overlay" else DEFAULT_MTU))
    if driver == "overlay" and not 1 <= message.vni <= MAX_VNI:
        raise errors.InvalidArgument(
            f"network {network_id!r}: invalid vni {message.vni}: an overlay network needs "
            f"1-{MAX_VNI}", reason="INVALID_VNI", value=message.vni,
        )
    if message.HasField("enable_icc"):
        enable_icc = message.enable_icc
    else:
        enable_icc = _bool_option(OPTION_ICC, options.get(OPTION_ICC, "true"))
    internal = message.internal or _bool_option(
        OPTION_INTERNAL, options.get(OPTION_INTERNAL, "false")
    )
    allowed = tuple(
        sorted({names.check_id("allowed_networks", value) for value in message.allowed_networks})
    )
    return NetworkSpec(
        network_id=network_id, name=message.name, driver=driver, subnet=str(subnet),
        gateway=gateway, bridge=bridge, mtu=mtu, internal=internal, enable_icc=enable_icc,
        allowed_networks=allowed, vni=message.vni, options=tuple(sorted(options.items())),
        mcast_snooping=_bool_option(
            OPTION_MCAST_SNOOPING, options.get(OPTION_MCAST_SNOOPING, "false")
        ),
    )


def resolve_sandbox(sandbox: str, netns_dir: str) -> str:
    """The namespace path a sandbox field names; InvalidArgument unless it is a network namespace."""
    if not sandbox:
        raise errors.InvalidArgument("endpoint has no sandbox", reason="INVALID_NAMESPACE")
    if "/" in sandbox:
        if not os.path.isabs(sandbox):
            raise errors.InvalidArgument(
                f"sandbox path {sandbox!r} is not absolute", reason="INVALID_NAMESPACE"
            )
        path = os.path.normpath(sandbox)
    else:
        path = os.path.join(netns_dir, names.check_id("sandbox", sandbox))
    netlink.check_namespace_path(path)
    return path


def ports_from_proto(
    messages, endpoint_id: str, network: NetworkSpec
) -> tuple[PortSpec, ...]:
    ports = []
    seen = set()
    for message in messages:
        if message.protocol not in _PROTOCOLS:
            raise errors.InvalidArgument(
                f"endpoint {endpoint_id!r}: unknown protocol {message.protocol}",
                reason="INVALID_PROTOCOL", value=message.protocol,
            )
        host_ip = message.host_ip
        if host_ip:
            try:
                host_ip = str(ipaddress.IPv4Address(host_ip))
            except ValueError as error:
                raise errors.InvalidArgument(
                    f"endpoint {endpoint_id!r}: invalid host_ip {message.host_ip!r}",
                    reason="INVALID_ADDRESS", value=message.host_ip,
                ) from error
        port = PortSpec(
            protocol=_PROTOCOLS[message.protocol], host_ip=host_ip,
            host_port=names.check_port("host_port", message.host_port),
            container_port=names.check_port("container_port", message.container_port),
        )
        key = (port.protocol, port.host_ip, port.host_port)
        if key in seen:
            raise errors.InvalidArgument(
                f"endpoint {endpoint_id!r}: {port.protocol} port {port.host_port} is "
                "published twice", reason="DUPLICATE_PORT", port=port.host_port,
            )
        seen.add(key)
        ports.append(port)
    if ports and network.internal:
        raise errors.FailedPrecondition(
            f"endpoint {endpoint_id!r}: network {network.network_id!r} is internal and "
            "cannot publish ports", reason="INTERNAL_NETWORK_PORTS",
        )
    return tuple(ports)


def endpoint_from_proto(
    message: netdriver_pb2.Endpoint, network: NetworkSpec, netns_dir: str
) -> EndpointSpec:
    endpoint_id = names.check_id("endpoint_id", message.endpoint_id)
    if message.network_id and message.network_id != network.network_id:
        raise errors.InvalidArgument(
            f"endpoint {endpoint_id!r} names network {message.network_id!r} but the request "
            f"describes {network.network_id!r}", reason="NETWORK_MISMATCH",
        )
    address = names.parse_host_address(
        "address", message.address, ipaddress.IPv4Network(network.subnet)
    )
    if address == network.gateway:
        raise errors.InvalidArgument(
            f"endpoint {endpoint_id!r}: address {address} is the network's gateway",
            reason="ADDRESS_IS_GATEWAY",
        )
    container_interface = message.container_interface
    if container_interface:
        names.check_ifname("container_interface", container_interface)
    if message.container_id and len(message.container_id) > 128:
        raise errors.InvalidArgument("container_id is longer than 128 characters")
    mac = (
        names.check_mac(message.mac_address)
        if message.mac_address
        else names.mac_from_address(address)
    )
    ports = ports_from_proto(message.port_mappings, endpoint_id, network)
    netns_path = resolve_sandbox(message.sandbox, netns_dir)
    return EndpointSpec(
        endpoint_id=endpoint_id, network_id=network.network_id, sandbox=message.sandbox,
        netns_path=netns_path, address=address, mac=mac,
        host_interface=names.host_veth_name(endpoint_id),
        container_interface=container_interface, container_id=message.container_id,
        ports=ports, default_route=message.default_route,
        mac_requested=bool(message.mac_address),
    )
