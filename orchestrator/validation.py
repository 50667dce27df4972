"""Checks on requests, done before anything is touched."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cnm import errors, validation
from cnm.orchestrator.v1 import orchestrator_pb2 as pb

DRIVERS = ("bridge", "overlay")


def number_range(text: str, maximum: int, *, single: bool = False) -> tuple[int, int]:
    """``FIRST-LAST`` (or, with ``single``, one number), 1 <= FIRST <= LAST <= ``maximum``
    (a flag's range of host ports or VXLAN ids); ValueError says what is wrong."""
    first, sep, last = text.partition("-")
    if not sep and single:
        last = first
    if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) <= maximum):
        raise ValueError(f"{text!r}: want FIRST-LAST{' or one number' if single else ''}, "
                         f"1 <= FIRST <= LAST <= {maximum}")
    return int(first), int(last)


def endpoint_id(network_id: str, container_id: str) -> str:
    """Derived, so that a retried connect names the same endpoint (and IPAM owner)."""
    return hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()[:16]


def check_driver(driver: int) -> int:
    """A Driver enum value as given; INVALID_ARGUMENT / UNKNOWN_DRIVER for an undefined one."""
    if driver not in pb.Driver.values():
        raise errors.InvalidArgument(
            f"unsupported driver {driver}: supported are {', '.join(DRIVERS)}",
            reason="UNKNOWN_DRIVER", field="driver",
        )
    return driver


def driver_word(driver: int) -> str:
    """A driver as people say it: "bridge", "overlay"."""
    return pb.Driver.Name(driver or pb.DRIVER_BRIDGE).removeprefix("DRIVER_").lower()


def network(spec: pb.Network) -> pb.Network:
    """The network to create, normalised; InvalidArgument when it cannot be.

    Everything the agents would refuse at a connect is refused here, before anything is
    written: the subnets, the options, the labels.
    """
    validation.check_network_name("name", spec.name)
    driver = check_driver(spec.driver) or pb.DRIVER_BRIDGE
    validation.check_network_options(spec.options)
    validation.check_labels(spec.labels)
    if not has_ipv4(spec):
        return ipv6_only(spec, driver)
    if not spec.subnet:
        # The first free subnet of the default address pools (address_pools.py).
        _refuse(_ipv4_values(spec)[1:], "needs a subnet: give the subnet too, or neither (a "
                "subnet is then chosen from the default address pools)", "INVALID_ARGUMENT")
        return _without_subnet(spec, driver, enable_ipv4=True)
    # The same checks, messages and reasons as IPAM's and the agent's.
    checked = validation.check_network_subnet(spec.subnet, spec.gateway, spec.ip_range)
    gateway = str(checked.gateway) if spec.gateway else ""
    ip_range = str(checked.ip_range) if checked.ip_range else ""
    aux_addresses = check_aux_addresses(spec.aux_addresses, checked)
    return pb.Network(
        name=spec.name, driver=driver, subnet=str(checked.network), gateway=gateway,
        aux_addresses=aux_addresses,
        ip_range=ip_range,
        internal=spec.internal, options=dict(spec.options), labels=dict(spec.labels),
        enable_ipv4=True, **ipv6_fields(spec, driver),
    )


def has_ipv4(network: pb.Network) -> bool:
    """Whether a network has IPv4: all but IPv6-only ones (enable_ipv4 false; unset is
    true, as in networks recorded before the field)."""
    return not network.HasField("enable_ipv4") or network.enable_ipv4


def ipv6_only(spec: pb.Network, driver: int) -> pb.Network:
    """An IPv6-only network to create (enable_ipv4 false), checked: IPv6 on, nothing of
    IPv4."""
    if not (spec.enable_ipv6 or spec.ipv6_subnet):
        raise errors.InvalidArgument(
            "a network without IPv4 needs IPv6: enable_ipv6 (--ipv6), with an IPv6 subnet or "
            "one from the IPv6 default address pools", reason="INVALID_ARGUMENT",
            field="enable_ipv4")
    _refuse(_ipv4_values(spec), "on an IPv6-only network (enable_ipv4 false): it has no "
            "IPv4; give its IPv6 subnet as ipv6_subnet (--subnet with --ipv6)",
            "WRONG_ADDRESS_FAMILY")
    return _without_subnet(spec, driver, enable_ipv4=False)


def _ipv4_values(spec: pb.Network) -> list[tuple[str, str]]:
    """(field, value) of a create's IPv4 fields: the subnet first."""
    return [("subnet", spec.subnet), ("gateway", spec.gateway), ("ip_range", spec.ip_range),
            ("aux_addresses", ", ".join(spec.aux_addresses.values()))]


def _refuse(values: list[tuple[str, str]], why: str, reason: str) -> None:
    """INVALID_ARGUMENT naming the first of ``values`` that is given."""
    for field, value in values:
        if value:
            raise errors.InvalidArgument(f"{field} {value!r} {why}", reason=reason,
                                         field=field)


def _without_subnet(spec: pb.Network, driver: int, enable_ipv4: bool) -> pb.Network:
    """A network to create without an IPv4 subnet: one to choose, or none (IPv6 only)."""
    return pb.Network(name=spec.name, driver=driver, internal=spec.internal,
                      options=dict(spec.options), labels=dict(spec.labels),
                      enable_ipv4=enable_ipv4, **ipv6_fields(spec, driver))


def ipv6_fields(spec: pb.Network, driver: int) -> dict:
    """A dual-stack network's IPv6 fields, checked (none for an IPv4 network)."""
    given = {"ipv6_subnet": spec.ipv6_subnet, "ipv6_gateway": spec.ipv6_gateway,
             "ipv6_ip_range": spec.ipv6_ip_range}
    if not spec.enable_ipv6 and not any(given.values()):
        return {}
    if not spec.ipv6_subnet:
        # The first free subnet of the IPv6 default address pools, as for IPv4.
        _refuse([("ipv6_gateway", spec.ipv6_gateway), ("ipv6_ip_range", spec.ipv6_ip_range)],
                "needs an IPv6 subnet: give the subnet too, or neither (a subnet is then "
                "chosen from the default address pools)", "INVALID_ARGUMENT")
        return {"enable_ipv6": True}
    checked = validation.check_ipv6_subnet(spec.ipv6_subnet, spec.ipv6_gateway,
                                           spec.ipv6_ip_range)
    return {"enable_ipv6": True, "ipv6_subnet": str(checked.network),
            "ipv6_gateway": str(checked.gateway),
            "ipv6_ip_range": str(checked.ip_range) if checked.ip_range else ""}


def ipv6_pool_id(network_id: str) -> str:
    """The IPAM pool of a dual-stack network's IPv6 addresses (its IPv4 pool has the
    network's id)."""
    return network_id + IPV6_POOL_SUFFIX


def network_of_pool(pool_id: str) -> str:
    """The network id an IPAM pool of cnm's belongs to."""
    return pool_id.removesuffix(IPV6_POOL_SUFFIX)


IPV6_POOL_SUFFIX = ".v6"
MAX_AUX_ADDRESSES = 256


def check_aux_addresses(aux: Mapping[str, str], subnet: validation.Subnet) -> dict[str, str]:
    """Docker's --aux-address NAME=IP: each name 1-128 characters, each address a usable
    one of the subnet, not its gateway, and no address given twice."""
    if len(aux) > MAX_AUX_ADDRESSES:
        raise errors.InvalidArgument(
            f"aux_addresses: {len(aux)} addresses, at most {MAX_AUX_ADDRESSES}",
            reason="INVALID_ARGUMENT", field="aux_addresses")
    checked: dict[str, str] = {}
    for name, text in aux.items():
        if not name:
            raise errors.InvalidArgument(f"aux_addresses: {text!r} has no name (NAME=IP)",
                                         reason="INVALID_ARGUMENT", field="aux_addresses")
        validation.check_text("aux_addresses", name, validation.MAX_LABEL_KEY,
                              reason="INVALID_ARGUMENT")
        address = validation.check_endpoint_address(
            subnet.network, str(subnet.gateway), text, f"aux address {name!r}")
        if address in checked.values():
            raise errors.InvalidArgument(
                f"aux address {name!r}: {address} is given twice", reason="INVALID_ARGUMENT",
                field="aux_addresses", address=address)
        checked[name] = address
    return checked


def same_network(existing: pb.Network, wanted: pb.Network) -> bool:
    """Whether a create of ``wanted`` repeats the creation of ``existing``."""
    return (
        existing.driver == wanted.driver
        and (not wanted.subnet or existing.subnet == wanted.subnet)
        and (not wanted.gateway or existing.gateway == wanted.gateway)
        and existing.ip_range == wanted.ip_range
        and existing.internal == wanted.internal
        and dict(existing.options) == dict(wanted.options)
        and dict(existing.labels) == dict(wanted.labels)
        and dict(existing.aux_addresses) == dict(wanted.aux_addresses)
        and existing.enable_ipv6 == wanted.enable_ipv6
        and (not wanted.ipv6_subnet or existing.ipv6_subnet == wanted.ipv6_subnet)
        and (not wanted.ipv6_gateway or existing.ipv6_gateway == wanted.ipv6_gateway)
        and existing.ipv6_ip_range == wanted.ipv6_ip_range
        and has_ipv4(existing) == has_ipv4(wanted)
    )


def port_mappings(mappings, internal: bool, ipv6: bool,
                  ipv4: bool = True) -> list[pb.PortMapping]:
    return [
        pb.PortMapping(protocol=validation.PROTOCOL_NUMBERS[port.protocol],
                       host_ip=port.host_ip, host_port=port.host_port,
                       container_port=port.container_port)
        for port in validation.check_port_mappings(mappings, internal, ephemeral=True,
                                                   ipv6=ipv6, ipv4=ipv4)
    ]


def mapping_key(mapping: pb.PortMapping) -> tuple:
    return (mapping.protocol or pb.PROTOCOL_TCP, mapping.host_ip, mapping.host_port,
            mapping.container_port)


RESERVATION_PREFIX = "held:"


def reservation_owner(host_id: str, address: str = "") -> str:
    """The IPAM owner of an address host ``host_id`` reserved (ReserveAddress): the
    prefix, then the address (IPAM's owner_is_prefix). Never an endpoint id (hex)."""
    return f"{RESERVATION_PREFIX}{host_id}:{address}"


def reservation_host(owner: str) -> str | None:
    """The host of a reservation's IPAM owner; None for any other owner."""
    if not owner.startswith(RESERVATION_PREFIX):
        return None
    return owner[len(RESERVATION_PREFIX):].split(":", 1)[0]


def same_endpoint(existing: pb.Endpoint, wanted: pb.Endpoint) -> bool:
    """Whether a connect asking for ``wanted`` asks for ``existing`` as it is (a repeat):
    what it leaves empty (address, interface name, MAC) is whatever was chosen."""
    return (
        existing.host_id == wanted.host_id
        and existing.sandbox == wanted.sandbox
        and wanted.address in ("", existing.address)
        and wanted.ipv6_address in ("", existing.ipv6_address)
        and wanted.container_interface in ("", existing.container_interface)
        and wanted.mac_address in ("", existing.mac_address)
        and dict(wanted.labels) == dict(existing.labels)
        and wanted.address_reserved == existing.address_reserved
        and wanted.peer_on_host == existing.peer_on_host
        and list(wanted.dns_names) == list(existing.dns_names)
        and same_port_mappings(existing.port_mappings, wanted.port_mappings)
    )


def same_port_mappings(existing, wanted) -> bool:
    """Whether ``wanted`` asks for the mappings ``existing`` has; a host port of 0 in it
    (any free one) matches whichever was chosen."""
    chosen = sorted(map(mapping_key, existing))
    asked = sorted(map(mapping_key, wanted))
    if len(chosen) != len(asked):
        return False
    remaining = list(chosen)
    for key in sorted(asked, key=lambda key: key[2] == 0):  # exact ports first
        match = next((have for have in remaining if have == key or (
            key[2] == 0 and (have[0], have[1], have[3]) == (key[0], key[1], key[3]))), None)
        if match is None:
            return False
        remaining.remove(match)
    return True
