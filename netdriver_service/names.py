"""Names, identifiers and addresses: derivation and validation, no kernel access.

Everything a request carries is checked here before the agent touches the
kernel; each check raises :class:`cnm.errors.InvalidArgument` naming the
field and the value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from cnm import errors

IFNAMSIZ = 15  # usable characters of a Linux interface name
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
IFNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

BRIDGE_PREFIX = "cnm-"
HOST_VETH_PREFIX = "cv"
VXLAN_PREFIX = "cvx"

# Ownership marks, kept in the link's alias (IFLA_IFALIAS).
NETWORK_ALIAS_PREFIX = "cnm:net:"
ENDPOINT_ALIAS_PREFIX = "cnm:ep:"
# The VXLAN device of an overlay network: not a network or an endpoint of its
# own, so parse_alias() does not report it; the overlay driver checks it.
VXLAN_ALIAS_PREFIX = "cnm:vx:"

PROTOCOLS = ("tcp", "udp", "sctp")


def check_id(kind: str, value: str) -> str:
    if not ID_PATTERN.match(value or ""):
        raise errors.InvalidArgument(
            f"invalid {kind} {value!r}: want 1-64 characters of [A-Za-z0-9_.-]",
            reason="INVALID_ID", field=kind, value=value,
        )
    return value


def check_ifname(kind: str, value: str) -> str:
    if not IFNAME_PATTERN.match(value or "") or value in (".", ".."):
        raise errors.InvalidArgument(
            f"invalid {kind} {value!r}: want 1-{IFNAMSIZ} characters of [A-Za-z0-9_.-]",
            reason="INVALID_INTERFACE_NAME", field=kind, value=value,
        )
    return value


def bridge_name(network_id: str) -> str:
    """The default bridge of a network: ``cnm-`` and the id's first 11 characters."""
    return BRIDGE_PREFIX + network_id[: IFNAMSIZ - len(BRIDGE_PREFIX)]


def host_veth_name(endpoint_id: str) -> str:
    """The host-side veth of an endpoint: ``cv`` and 13 hex digits of a hash of its id.

    A hash, not a prefix, because ids from the orchestrator often share long
    prefixes; 52 bits make a collision between two endpoints of one host
    practically impossible, and the ownership mark catches it anyway.
    """
    digest = hashlib.blake2b(endpoint_id.encode(), digest_size=8).hexdigest()
    return HOST_VETH_PREFIX + digest[: IFNAMSIZ - len(HOST_VETH_PREFIX)]


def vxlan_name(network_id: str) -> str:
    """The VXLAN device of an overlay network: ``cvx`` and 12 hex digits of a hash of its id."""
    digest = hashlib.blake2b(network_id.encode(), digest_size=8).hexdigest()
    return VXLAN_PREFIX + digest[: IFNAMSIZ - len(VXLAN_PREFIX)]


def vxlan_alias(network_id: str) -> str:
    return VXLAN_ALIAS_PREFIX + network_id


def network_alias(network_id: str) -> str:
    return NETWORK_ALIAS_PREFIX + network_id


def endpoint_alias(endpoint_id: str, network_id: str) -> str:
    return f"{ENDPOINT_ALIAS_PREFIX}{endpoint_id}:{network_id}"


def endpoint_owner(endpoint_id: str) -> str:
    """The prefix of the marks of an endpoint's links, whatever their network."""
    return f"{ENDPOINT_ALIAS_PREFIX}{endpoint_id}:"


def parse_alias(alias: str | None) -> tuple[str, str, str] | None:
    """``("net", network_id, "")`` or ``("ep", endpoint_id, network_id)``; None if not cnm's."""
    if not alias:
        return None
    if alias.startswith(NETWORK_ALIAS_PREFIX):
        network_id = alias[len(NETWORK_ALIAS_PREFIX):]
        return ("net", network_id, "") if ID_PATTERN.match(network_id) else None
    if alias.startswith(ENDPOINT_ALIAS_PREFIX):
        endpoint_id, _, network_id = alias[len(ENDPOINT_ALIAS_PREFIX):].partition(":")
        if ID_PATTERN.match(endpoint_id) and ID_PATTERN.match(network_id):
            return ("ep", endpoint_id, network_id)
    return None


def mac_from_address(address: str) -> str:
    """A locally administered MAC derived from an IPv4 address, as Docker does: 02:42:a:b:c:d."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{octet:02x}" for octet in octets)


_MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def check_mac(value: str) -> str:
    mac = value.lower()
    if not _MAC_PATTERN.match(mac):
        raise errors.InvalidArgument(
            f"invalid MAC address {value!r}", reason="INVALID_MAC", value=value
        )
    if int(mac[:2], 16) & 1:
        raise errors.InvalidArgument(
            f"invalid MAC address {value!r}: multicast bit set", reason="INVALID_MAC", value=value
        )
    if mac == "00:00:00:00:00:00":
        raise errors.InvalidArgument("invalid MAC address: all zeros", reason="INVALID_MAC")
    return mac


def parse_subnet(value: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(value, strict=True)
    except ValueError as error:
        raise errors.InvalidArgument(
            f"invalid subnet {value!r}: {error}", reason="INVALID_SUBNET", value=value
        ) from error
    if subnet.prefixlen > 30:
        raise errors.InvalidArgument(
            f"subnet {value} is too small: at most /30", reason="INVALID_SUBNET", value=value
        )
    return subnet


def parse_host_address(kind: str, value: str, subnet: ipaddress.IPv4Network) -> str:
    """An address that is a usable host of ``subnet`` (not its network or broadcast address)."""
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError as error:
        raise errors.InvalidArgument(
            f"invalid {kind} {value!r}: {error}", reason="INVALID_ADDRESS", field=kind, value=value
        ) from error
    if address not in subnet:
        raise errors.InvalidArgument(
            f"{kind} {address} is outside the network's subnet {subnet}",
            reason="ADDRESS_OUTSIDE_SUBNET", field=kind, value=value, subnet=str(subnet),
        )
    if address in (subnet.network_address, subnet.broadcast_address):
        raise errors.InvalidArgument(
            f"{kind} {address} is the network or broadcast address of {subnet}",
            reason="INVALID_ADDRESS", field=kind, value=value,
        )
    return str(address)


def check_port(field: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise errors.InvalidArgument(
            f"invalid {field} {value}: want 1-65535", reason="INVALID_PORT", field=field,
            value=value,
        )
    return value


def check_mtu(value: int) -> int:
    if not 68 <= value <= 65535:
        raise errors.InvalidArgument(
            f"invalid MTU {value}: want 68-65535", reason="INVALID_MTU", value=value
        )
    return value
