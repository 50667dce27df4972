"""Checks on requests, done before anything is touched."""

from __future__ import annotations

import hashlib
import ipaddress
import re

from cnm import errors, subnets
from cnm.orchestrator.v1 import orchestrator_pb2 as pb

NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
OBJECT_ID = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
DRIVERS = ("bridge", "overlay")
MTU_OPTION = "com.docker.network.driver.mtu"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
MCAST_SNOOPING_OPTION = "cnm.bridge.mcast_snooping"


def endpoint_id(network_id: str, container_id: str) -> str:
    """Derived, so that a retried connect names the same endpoint (and IPAM owner)."""
    return hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()[:16]


def check_id(kind: str, value: str) -> None:
    if not OBJECT_ID.fullmatch(value):
        raise errors.InvalidArgument(
            f"invalid {kind} {value!r}: want 1-64 characters of [a-zA-Z0-9_.-]", field=kind,
        )


def network(spec: pb.Network) -> pb.Network:
    """The network to create, normalised; InvalidArgument when it cannot be."""
    if not spec.name or not NETWORK_NAME.fullmatch(spec.name) or len(spec.name) > 128:
        raise errors.InvalidArgument(
            f"invalid network name {spec.name!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128",
            field="name",
        )
    driver = spec.driver or "bridge"
    if driver not in DRIVERS:
        raise errors.InvalidArgument(
            f"unsupported driver {driver!r}: supported are {', '.join(DRIVERS)}", field="driver",
        )
    if not spec.subnet:
        raise errors.InvalidArgument("subnet is required (e.g. 10.10.0.0/24)", field="subnet")
    # The same checks, messages and reasons as IPAM's: refused here, before
    # anything is written, rather than by IPAM half-way through the create.
    checked = subnets.check(spec.subnet, spec.gateway, spec.ip_range)
    if driver == "overlay" and checked.network.version != 4:
        raise errors.InvalidArgument(
            f"subnet {checked.network}: overlay networks are IPv4 only", field="subnet",
            reason="OVERLAY_IPV4_ONLY",
        )
    gateway = str(checked.gateway) if spec.gateway else ""
    ip_range = str(checked.ip_range) if checked.ip_range else ""
    mtu = spec.options.get(MTU_OPTION)
    if mtu is not None and not (mtu.isdigit() and 68 <= int(mtu) <= 65535):
        raise errors.InvalidArgument(f"invalid {MTU_OPTION} {mtu!r}: want 68-65535",
                                     field="options")
    for option in (ICC_OPTION, MCAST_SNOOPING_OPTION):
        value = spec.options.get(option)
        if value is not None and value not in ("true", "false"):
            raise errors.InvalidArgument(f"invalid {option} {value!r}: want true or false",
                                         field="options")
    bridge = spec.options.get(BRIDGE_NAME_OPTION)
    if bridge is not None and not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", bridge):
        raise errors.InvalidArgument(f"invalid {BRIDGE_NAME_OPTION} {bridge!r}: 1-15 characters",
                                     field="options")
    return pb.Network(
        name=spec.name, driver=driver, subnet=str(checked.network), gateway=gateway,
        ip_range=ip_range,
        internal=spec.internal, options=dict(spec.options), labels=dict(spec.labels),
    )


def address_in(what: str, value: str, subnet) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(value)
    except ValueError as error:
        raise errors.InvalidArgument(f"invalid {what} {value!r}: not an IP address",
                                     field=what) from error
    if address not in subnet or (
        subnet.version == 4 and address in (subnet.network_address, subnet.broadcast_address)
    ):
        raise errors.InvalidArgument(f"{what} {address} is not a usable address of {subnet}",
                                     field=what)
    return address


def same_network(existing: pb.Network, wanted: pb.Network) -> bool:
    """Whether a create of ``wanted`` repeats the creation of ``existing``."""
    return (
        existing.driver == wanted.driver
        and existing.subnet == wanted.subnet
        and (not wanted.gateway or existing.gateway == wanted.gateway)
        and existing.ip_range == wanted.ip_range
        and existing.internal == wanted.internal
        and dict(existing.options) == dict(wanted.options)
        and dict(existing.labels) == dict(wanted.labels)
    )


def port_mappings(mappings, internal: bool) -> list[pb.PortMapping]:
    normalised = []
    seen = set()
    for mapping in mappings:
        for port, name in ((mapping.host_port, "host port"),
                           (mapping.container_port, "container port")):
            if not 1 <= port <= 65535:
                raise errors.InvalidArgument(f"invalid {name} {port}: want 1-65535",
                                             field="port_mappings")
        if mapping.host_ip:
            try:
                ipaddress.ip_address(mapping.host_ip)
            except ValueError as error:
                raise errors.InvalidArgument(f"invalid host ip {mapping.host_ip!r}",
                                             field="port_mappings") from error
        protocol = mapping.protocol or pb.PROTOCOL_TCP
        key = (protocol, mapping.host_port, mapping.host_ip)
        if key in seen:
            raise errors.InvalidArgument(
                f"port {mapping.host_port}/{pb.Protocol.Name(protocol)} published twice",
                field="port_mappings")
        seen.add(key)
        normalised.append(pb.PortMapping(protocol=protocol, host_ip=mapping.host_ip,
                                         host_port=mapping.host_port,
                                         container_port=mapping.container_port))
    if normalised and internal:
        raise errors.InvalidArgument("an internal network cannot publish ports",
                                     field="port_mappings")
    return normalised


def mapping_key(mapping: pb.PortMapping) -> tuple:
    return (mapping.protocol or pb.PROTOCOL_TCP, mapping.host_ip, mapping.host_port,
            mapping.container_port)


def same_endpoint(existing: pb.Endpoint, host_id: str, sandbox: str, address: str,
                  mappings: list[pb.PortMapping]) -> bool:
    return (
        existing.host_id == host_id
        and existing.sandbox == sandbox
        and (not address or existing.address == address)
        and sorted(map(mapping_key, existing.port_mappings)) == sorted(map(mapping_key, mappings))
    )
