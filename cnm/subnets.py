"""The one validator of subnets, gateways and ip ranges.

IPAM checks a pool with it, and the orchestrator checks a network with it
before writing anything, so both refuse the same inputs with the same
messages and reasons. Addresses of a subnet nobody may hold: IPv4's network
and broadcast addresses, IPv6's Subnet-Router anycast address (the first).
IPAM indexes a pool's dynamic range (the ip range, or the whole subnet) in a
bitmap, so the range is bounded: 2^24 addresses, an IPv4 /8 or an IPv6 /104;
an IPv6 subnet is /64 or longer (counts fit in uint64).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cnm import errors

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A bitmap of 2**24 bits is 2 MiB in Redis: the largest dynamic range IPAM indexes.
MAX_RANGE_ADDRESSES = 2**24


def parse_address(text: str, what: str) -> Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise errors.InvalidArgument(
            f"{what} {text!r} is not an IP address", reason="INVALID_ADDRESS", address=text
        ) from None


def parse_network(text: str, what: str) -> Network:
    if not text or "/" not in text:
        raise errors.InvalidArgument(
            f"{what} {text!r} is not in CIDR notation (want e.g. 10.1.0.0/24)",
            reason="INVALID_CIDR",
            value=text,
        )
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            network = ipaddress.ip_network(text.strip(), strict=False)
            raise errors.InvalidArgument(
                f"{what} {text!r} has host bits set (did you mean {network}?)",
                reason="HOST_BITS_SET",
                value=text,
            ) from None
        raise errors.InvalidArgument(
            f"{what} {text!r} is not a valid CIDR: {error}", reason="INVALID_CIDR", value=text
        ) from None


def unusable_addresses(network: Network) -> tuple[Address, ...]:
    """Addresses of ``network`` nobody may hold."""
    if network.version == 4:
        return (network.network_address, network.broadcast_address)
    return (network.network_address,)


def address_inside(network: Network, text: str, what: str) -> Address:
    """``text`` as an address of ``network`` that someone may hold."""
    address = parse_address(text, what)
    if address.version != network.version or address not in network:
        raise errors.InvalidArgument(
            f"{what} {address} is outside subnet {network}",
            reason="ADDRESS_OUTSIDE_SUBNET",
            address=address,
            subnet=network,
        )
    if address in unusable_addresses(network):
        kind = "network" if address == network.network_address else "broadcast"
        raise errors.InvalidArgument(
            f"{what} {address} is the {kind} address of {network}",
            reason="INVALID_ADDRESS",
            address=address,
        )
    return address


@dataclass(frozen=True)
class Subnet:
    """A checked subnet with its gateway (the first address unless given) and ip range."""

    network: Network
    gateway: Address
    ip_range: Network | None
    reserved: tuple[Address, ...]

    @property
    def dynamic_range(self) -> Network:
        return self.ip_range or self.network


def check(subnet: str, gateway: str = "", ip_range: str = "",
          reserved: Iterable[str] = ()) -> Subnet:
    """Validates a subnet, gateway, ip range and reserved addresses; InvalidArgument if wrong."""
    network = parse_network(subnet, "subnet")
    longest = network.max_prefixlen - 2
    if network.prefixlen > longest:
        raise errors.InvalidArgument(
            f"subnet {network} is too small: a /{network.prefixlen} cannot hold a gateway and "
            f"an endpoint address besides {' and '.join(map(str, unusable_addresses(network)))} "
            f"(use /{longest} or larger)",
            reason="SUBNET_TOO_SMALL",
            subnet=subnet,
        )
    if network.version == 6 and network.prefixlen < 64:
        raise errors.InvalidArgument(
            f"subnet {network} is too large: IPv6 pools take a /64 or longer subnet",
            reason="SUBNET_TOO_LARGE",
            subnet=subnet,
        )
    gateway_address = (address_inside(network, gateway, "gateway") if gateway
                       else network.network_address + 1)

    range_network = None
    if ip_range:
        range_network = parse_network(ip_range, "ip range")
        if range_network.version != network.version or not range_network.subnet_of(network):
            raise errors.InvalidArgument(
                f"ip range {range_network} is outside subnet {network}",
                reason="RANGE_OUTSIDE_SUBNET",
                ip_range=ip_range,
                subnet=network,
            )
        if range_network == network:
            range_network = None

    reserved_addresses = sorted({address_inside(network, text, "reserved address")
                                 for text in reserved})
    if gateway_address in reserved_addresses:
        raise errors.InvalidArgument(
            f"reserved address {gateway_address} is the gateway",
            reason="INVALID_ADDRESS",
            address=gateway_address,
        )
    checked = Subnet(network, gateway_address, range_network, tuple(reserved_addresses))
    dynamic = checked.dynamic_range
    if dynamic.num_addresses > MAX_RANGE_ADDRESSES:
        raise errors.InvalidArgument(
            f"dynamic range {dynamic} holds {dynamic.num_addresses} addresses; the limit "
            f"is {MAX_RANGE_ADDRESSES} (an IPv4 /8, an IPv6 /104): give a smaller subnet or "
            "an ip range",
            reason="RANGE_TOO_LARGE",
        )
    taken = {address for address in (*unusable_addresses(network), gateway_address,
                                      *reserved_addresses) if address in dynamic}
    if dynamic.num_addresses - len(taken) < 1:
        raise errors.InvalidArgument(
            f"ip range {dynamic} has no address left for endpoints once the "
            "unusable, gateway and reserved addresses are taken out",
            reason="RANGE_EMPTY",
        )
    return checked
