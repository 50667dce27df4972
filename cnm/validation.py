"""The one place for the rules of cnm's inputs, used by every service and the CLI.

IPAM, the host agent and the orchestrator check what they are given with
these functions, so that one input is refused by all of them with the same
code, reason and message. The rule that follows from it: whatever the agent
would refuse, the orchestrator refuses first, before its first side effect.

Every check raises :class:`cnm.errors.InvalidArgument` (a reason from the
service's proto, ``field`` naming the field in the metadata) and echoes the
offending value capped (:func:`cnm.errors.capped`), whatever its length.

Subnets: addresses of a subnet nobody may hold are IPv4's network and
broadcast addresses and IPv6's Subnet-Router anycast address (the first).
IPAM keeps an IPv4 pool's dynamic range (the ip range, or the whole subnet) in
a bitmap, so it is bounded: 2^24 addresses, a /8; an IPv6 subnet is /48 to /126,
its range a bitmap up to 2^24 addresses and sparse beyond (ipam_service/pools.py).
A network's subnet is IPv4, with an IPv6 one beside it for dual stack; IPv6-only
networks are refused (reason ``IPV6_NOT_SUPPORTED``). A host's underlay (VXLAN)
address is of either family.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cnm import errors
from cnm.errors import capped

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- text, ids and names -----------------------------------------------------------------

MAX_ID_LENGTH = 64
OBJECT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
IFNAMSIZ = 15  # usable characters of a Linux interface name
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 1024
MAX_CONTAINER_ID = 128
MAX_PATH = 4096
# Not names of anything: as a path component they mean this or the parent directory.
_DOT_NAMES = (".", "..")


def control_character(value: str) -> str | None:
    """The first control or line-separator character of ``value``, or None.

    Such characters forge log lines and terminal output, and no name or label
    needs one.
    """
    for character in value:
        if unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp"):
            return character
    return None


def check_text(field: str, value: str, max_length: int, *, reason: str) -> str:
    """A free-form field: at most ``max_length`` characters, no control characters."""
    if len(value) > max_length:
        raise errors.InvalidArgument(
            f"{field} is {len(value)} characters long; the limit is {max_length}",
            reason=reason, field=field,
        )
    bad = control_character(value)
    if bad is not None:
        raise errors.InvalidArgument(
            f"{field} {capped(value)!r} contains the control character U+{ord(bad):04X}",
            reason=reason, field=field,
        )
    return value


def check_id(field: str, value: str, *, reason: str = "INVALID_ID") -> str:
    """An object id: 1-64 characters of [A-Za-z0-9_.-], not ``.`` or ``..``."""
    if not OBJECT_ID.fullmatch(value) or value in _DOT_NAMES:
        raise errors.InvalidArgument(
            f"invalid {field} {capped(value)!r}: want 1-{MAX_ID_LENGTH} characters of "
            "[A-Za-z0-9_.-], not '.' or '..'",
            reason=reason, field=field, value=capped(value),
        )
    return value


def check_network_name(field: str, value: str) -> str:
    """A network's name (or, in a lookup, its name or id): Docker's rule, at most 128."""
    if not NETWORK_NAME.fullmatch(value):
        raise errors.InvalidArgument(
            f"invalid network name {capped(value)!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most "
            "128 characters",
            reason="INVALID_NETWORK_NAME", field=field, value=capped(value),
        )
    return value


def check_ifname(field: str, value: str) -> str:
    """A Linux interface name this code may make: 1-15 characters of [A-Za-z0-9_.-]."""
    if not IFNAME.fullmatch(value) or value in _DOT_NAMES:
        raise errors.InvalidArgument(
            f"invalid {field} {capped(value)!r}: want 1-{IFNAMSIZ} characters of [A-Za-z0-9_.-]",
            reason="INVALID_INTERFACE_NAME", field=field, value=capped(value),
        )
    return value


def check_sandbox_name(value: str) -> str:
    """A sandbox the agent makes: a namespace name under /var/run/netns."""
    return check_id("sandbox name", value, reason="INVALID_SANDBOX")


def check_sandbox(value: str) -> str:
    """A connect's sandbox: a sandbox name, or the absolute path of a network namespace
    (``/var/run/netns/X``, ``/proc/PID/ns/net``), returned normalised."""
    if "/" not in value:
        return check_sandbox_name(value)
    check_text("sandbox", value, MAX_PATH, reason="INVALID_SANDBOX")
    if not os.path.isabs(value) or "\0" in value:
        raise errors.InvalidArgument(
            f"sandbox path {capped(value)!r} is not absolute", reason="INVALID_SANDBOX",
            field="sandbox",
        )
    return os.path.normpath(value)


def check_container_id(value: str) -> str:
    """The container id an agent records with an endpoint (the orchestrator's are ids)."""
    return check_text("container_id", value, MAX_CONTAINER_ID, reason="INVALID_CONTAINER_ID")


def _check_pairs(pairs: Mapping[str, str], what: str, field: str, reason: str) -> None:
    """Keys of 1-128 characters, values of at most 1024, no control characters."""
    for key, value in pairs.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE or (
            control_character(key) or control_character(value)
        ):
            raise errors.InvalidArgument(
                f"{what} {capped(key)!r} is invalid: keys take 1-{MAX_LABEL_KEY} characters, "
                f"values at most {MAX_LABEL_VALUE}, neither a control character",
                reason=reason, field=field, key=capped(key),
            )


def check_timestamp(field: str, stamp) -> float:
    """A google.protobuf.Timestamp a caller gave, as Unix seconds; INVALID_ARGUMENT when
    it is outside protobuf's range (years 1-9999) or its nanos are not 0-999999999."""
    if not (-62135596800 <= stamp.seconds <= 253402300799 and 0 <= stamp.nanos < 10**9):
        raise errors.InvalidArgument(
            f"{field} is not a valid time (seconds {stamp.seconds}, nanos {stamp.nanos})",
            reason="INVALID_ARGUMENT", field=field)
    return stamp.seconds + stamp.nanos / 1e9


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """Keys of 1-128 characters, values of at most 1024, no control characters."""
    _check_pairs(labels, "label", field, "INVALID_LABEL")
    return dict(labels)


# --- ports and protocols ------------------------------------------------------------------

# Protocol enum numbers, the same in every service's proto; 0 (unspecified) is tcp.
PROTOCOLS = {0: "tcp", 1: "tcp", 2: "udp", 3: "sctp"}
PROTOCOL_NUMBERS = {"tcp": 1, "udp": 2, "sctp": 3}


def check_port(field: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise errors.InvalidArgument(
            f"invalid {field} {value}: want 1-65535", reason="INVALID_PORT", field=field,
            value=value,
        )
    return value


def protocol_name(value: int) -> str:
    """``tcp``, ``udp`` or ``sctp`` for a Protocol enum number; INVALID_PROTOCOL otherwise
    (an undefined number arrives as it was sent)."""
    name = PROTOCOLS.get(value)
    if name is None:
        raise errors.InvalidArgument(
            f"unknown protocol {value}: want PROTOCOL_TCP, PROTOCOL_UDP or PROTOCOL_SCTP",
            reason="INVALID_PROTOCOL", field="protocol", value=value,
        )
    return name


def check_host_ip(value: str) -> str:
    """A port mapping's host address, normalised; "" (and 0.0.0.0 or ::) for every
    address. An IPv6 one publishes to the container's IPv6 address (dual stack)."""
    if not value:
        return ""
    address = parse_address(value.strip("[]"), "host_ip")
    return "" if address.is_unspecified else str(address)


@dataclass(frozen=True)
class PortMapping:
    """A checked port mapping: protocol name, normalised host address, ports."""

    protocol: str
    host_ip: str
    host_port: int
    container_port: int


def check_port_mappings(mappings: Iterable, internal: bool, ephemeral: bool = False,
                        ipv6: bool = True, ipv4: bool = True) -> list[PortMapping]:
    """Checks and normalises port mappings (messages with protocol, host_ip, host_port,
    container_port) as every service does: no mapping twice, none overlapping another of
    the same request, none on an internal network, none on a host address of a family
    the container has no address of (``ipv6``, ``ipv4``). With ``ephemeral`` (the
    orchestrator, which chooses them) a host port of 0 means any free one."""
    checked: list[PortMapping] = []
    held: dict[tuple[str, int], set[str]] = {}
    for mapping in mappings:
        port = PortMapping(
            protocol=protocol_name(mapping.protocol),
            host_ip=check_host_ip(mapping.host_ip),
            host_port=mapping.host_port if ephemeral and mapping.host_port == 0
            else check_port("host_port", mapping.host_port),
            container_port=check_port("container_port", mapping.container_port),
        )
        if not ipv6 and ":" in port.host_ip:
            raise errors.InvalidArgument(
                f"a port published on an IPv6 host address ({port.host_ip}) needs the "
                "container's IPv6 address: its network is not dual stack",
                reason="INVALID_ADDRESS", field="port_mappings", host_ip=port.host_ip)
        if port.protocol == "sctp" and port.host_ip == "::1":
            raise errors.InvalidArgument(
                "sctp on [::1]: the host's own IPv6 loopback cannot be forwarded to a "
                "container (no route_localnet in IPv6) and only TCP and UDP are relayed: "
                "publish it on another address", reason="INVALID_ADDRESS",
                field="port_mappings", host_ip=port.host_ip)
        if not ipv4 and port.host_ip and ":" not in port.host_ip:
            raise errors.InvalidArgument(
                f"a port published on an IPv4 host address ({port.host_ip}) needs the "
                "container's IPv4 address: its network is IPv6 only",
                reason="INVALID_ADDRESS", field="port_mappings", host_ip=port.host_ip)
        if port.host_port == 0:
            checked.append(port)
            continue
        holders = held.setdefault((port.protocol, port.host_port), set())
        if port.host_ip in holders:
            raise errors.InvalidArgument(
                f"{port.protocol} port {port.host_port} is published twice",
                reason="DUPLICATE_PORT", field="port_mappings", port=port.host_port,
            )
        if holders and ("" in holders or not port.host_ip):
            raise errors.InvalidArgument(
                f"{port.protocol} port {port.host_port} is published on every address and on "
                "one address in the same request", reason="PORT_MAPPINGS_OVERLAP",
                field="port_mappings", port=port.host_port,
            )
        holders.add(port.host_ip)
        checked.append(port)
    if checked and internal:
        raise errors.FailedPrecondition(
            "an internal network cannot publish ports", reason="INTERNAL_NETWORK_PORTS",
            field="port_mappings",
        )
    return checked


# --- addresses and subnets --------------------------------------------------------------------

# A bitmap of 2**24 bits is 2 MiB in Redis: the largest dynamic range IPAM keeps as a
# bitmap (every IPv4 one; a larger IPv6 one is a sparse pool, ipam_service/pools.py).
MAX_RANGE_ADDRESSES = 2**24
IPV6_LATER = ("IPv6-only networks come in a later version of cnm (dual stack is here: an "
              "IPv4 subnet, and the IPv6 one with --ipv6)")


def parse_address(text: str, what: str) -> Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise errors.InvalidArgument(
            f"{what} {capped(text)!r} is not an IP address", reason="INVALID_ADDRESS",
            field=what, address=capped(text),
        ) from None


def parse_network(text: str, what: str) -> Network:
    if not text or "/" not in text:
        raise errors.InvalidArgument(
            f"{what} {capped(text)!r} is not in CIDR notation (want e.g. 10.1.0.0/24)",
            reason="INVALID_CIDR", field=what, value=capped(text),
        )
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            network = ipaddress.ip_network(text.strip(), strict=False)
            raise errors.InvalidArgument(
                f"{what} {capped(text)!r} has host bits set (did you mean {network}?)",
                reason="HOST_BITS_SET", field=what, value=capped(text),
            ) from None
        raise errors.InvalidArgument(
            f"{what} {capped(text)!r} is not a valid CIDR: {capped(str(error))}",
            reason="INVALID_CIDR", field=what, value=capped(text),
        ) from None


def require_ipv4(value: Address | Network, what: str) -> None:
    """IPV6_NOT_SUPPORTED for an IPv6 address or subnet where cnm handles only IPv4."""
    if value.version != 4:
        raise errors.InvalidArgument(
            f"{what} is IPv6: {IPV6_LATER}", reason="IPV6_NOT_SUPPORTED",
            value=str(value),
        )


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
            reason="ADDRESS_OUTSIDE_SUBNET", field=what, address=address, subnet=network,
        )
    if address in unusable_addresses(network):
        kind = "network" if address == network.network_address else "broadcast"
        raise errors.InvalidArgument(
            f"{what} {address} is the {kind} address of {network}",
            reason="INVALID_ADDRESS", field=what, address=address,
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


def check_subnet(subnet: str, gateway: str = "", ip_range: str = "",
                 reserved: Iterable[str] = ()) -> Subnet:
    """Validates a subnet, gateway, ip range and reserved addresses; InvalidArgument if wrong."""
    network = parse_network(subnet, "subnet")
    longest = network.max_prefixlen - 2
    if network.prefixlen > longest:
        raise errors.InvalidArgument(
            f"subnet {network} is too small: a /{network.prefixlen} cannot hold a gateway and "
            f"an endpoint address besides {' and '.join(map(str, unusable_addresses(network)))} "
            f"(use /{longest} or larger)",
            reason="SUBNET_TOO_SMALL", field="subnet", subnet=network,
        )
    if network.version == 6 and network.prefixlen < 48:
        raise errors.InvalidArgument(
            f"subnet {network} is too large: IPv6 pools take a /48 or longer subnet",
            reason="SUBNET_TOO_LARGE", field="subnet", subnet=network,
        )
    gateway_address = (address_inside(network, gateway, "gateway") if gateway
                       else network.network_address + 1)

    range_network = None
    if ip_range:
        range_network = parse_network(ip_range, "ip range")
        if range_network.version != network.version or not range_network.subnet_of(network):
            raise errors.InvalidArgument(
                f"ip range {range_network} is outside subnet {network}",
                reason="RANGE_OUTSIDE_SUBNET", field="ip_range", ip_range=range_network,
                subnet=network,
            )
        if range_network == network:
            range_network = None

    reserved_addresses = sorted({address_inside(network, text, "reserved address")
                                 for text in reserved})
    if gateway_address in reserved_addresses:
        raise errors.InvalidArgument(
            f"reserved address {gateway_address} is the gateway",
            reason="INVALID_ADDRESS", field="reserved address", address=gateway_address,
        )
    checked = Subnet(network, gateway_address, range_network, tuple(reserved_addresses))
    dynamic = checked.dynamic_range
    if dynamic.version == 4 and dynamic.num_addresses > MAX_RANGE_ADDRESSES:
        raise errors.InvalidArgument(
            f"dynamic range {dynamic} holds {dynamic.num_addresses} addresses; the limit "
            f"is {MAX_RANGE_ADDRESSES} (a /8): give a smaller subnet or an ip range",
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


def check_network_subnet(subnet: str, gateway: str = "", ip_range: str = "") -> Subnet:
    """A network's subnet: as :func:`check_subnet`, and IPv4 (the data path's only family)."""
    checked = check_subnet(subnet, gateway, ip_range)
    require_ipv4(checked.network, f"subnet {checked.network}")
    return checked


def check_ipv6_subnet(subnet: str, gateway: str = "", ip_range: str = "") -> Subnet:
    """A network's IPv6 subnet (dual stack): as :func:`check_subnet`, and IPv6."""
    checked = check_subnet(subnet, gateway, ip_range)
    if checked.network.version != 6:
        raise errors.InvalidArgument(
            f"ipv6 subnet {checked.network} is not IPv6", reason="WRONG_ADDRESS_FAMILY",
            field="ipv6_subnet", subnet=checked.network,
        )
    return checked


def check_endpoint_address(network: Network, gateway: str, text: str, what: str) -> str:
    """An address an endpoint of ``network`` may hold: inside, usable, not the gateway."""
    address = str(address_inside(network, text, what))
    if address == gateway:
        raise errors.InvalidArgument(
            f"{what} {address} is the network's gateway", reason="ADDRESS_IS_GATEWAY",
            field=what, address=address,
        )
    return address


def subnets_overlap(subnet: str, other_subnet: str, what: str, other: str) -> None:
    """ALREADY_EXISTS (reason SUBNET_OVERLAP) when two subnets overlap: the one code for
    the one condition, whichever service finds it."""
    one, two = ipaddress.ip_network(subnet), ipaddress.ip_network(other_subnet)
    if one.version == two.version and one.overlaps(two):
        raise errors.AlreadyExists(
            f"{what}: subnet {one} overlaps {two} of {other}", reason="SUBNET_OVERLAP",
            subnet=one, clashing_subnet=two,
        )


# --- MAC addresses -----------------------------------------------------------------------------

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def mac_from_address(address: str) -> str:
    """A locally administered MAC derived from an IPv4 address, as Docker does: 02:42:a:b:c:d;
    from an IPv6 one (an IPv6-only network), 02:42 and its last 32 bits.

    The agent gives it to an endpoint, and the orchestrator knows it in advance (an overlay
    endpoint's MAC is pushed to the other hosts while its own host makes it)."""
    octets = ipaddress.ip_address(address).packed[-4:]
    return "02:42:" + ":".join(f"{octet:02x}" for octet in octets)


def check_mac(value: str) -> str:
    mac = value.lower()
    if not _MAC.fullmatch(mac):
        raise errors.InvalidArgument(
            f"invalid MAC address {capped(value)!r}", reason="INVALID_MAC", field="mac_address",
            value=capped(value),
        )
    if int(mac[:2], 16) & 1:
        raise errors.InvalidArgument(
            f"invalid MAC address {value!r}: multicast bit set", reason="INVALID_MAC",
            field="mac_address", value=value,
        )
    if mac == "00:00:00:00:00:00":
        raise errors.InvalidArgument("invalid MAC address: all zeros", reason="INVALID_MAC",
                                     field="mac_address")
    return mac


# --- network options ---------------------------------------------------------------------------

OPTION_MTU = "com.docker.network.driver.mtu"
OPTION_BRIDGE_NAME = "com.docker.network.bridge.name"
OPTION_ICC = "com.docker.network.bridge.enable_icc"
OPTION_INTERNAL = "com.docker.network.internal"
# IGMP/MLD snooping on the network's bridge; off unless set to true.
OPTION_MCAST_SNOOPING = "cnm.bridge.mcast_snooping"
# Whether the network answers its containers' names (a DNS server on its gateway).
OPTION_DNS = "cnm.dns"
# Docker's: "nat" (masquerade, NAT66: the default) or "routed" (the IPv6 subnet is
# routed to the host, containers' addresses seen as they are).
OPTION_GATEWAY_MODE_IPV6 = "com.docker.network.bridge.gateway_mode_ipv6"
GATEWAY_MODES = ("nat", "routed")
# The search domain of every network's names (web and web.cnm.internal are one name).
DNS_DOMAIN = "cnm.internal"
# Go's strconv.ParseBool, which Docker reads these options with.
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def check_mtu(value: int) -> int:
    if not 68 <= value <= 65535:
        raise errors.InvalidArgument(
            f"invalid MTU {value}: want 68-65535", reason="INVALID_MTU", field="mtu", value=value
        )
    return value


def _bool_option(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.InvalidArgument(
        f"invalid option {key}={capped(value)!r}: want true or false", reason="INVALID_OPTION",
        field="options", option=key,
    )


@dataclass(frozen=True)
class NetworkOptions:
    """What a network's driver options mean; None where an option is not given."""

    mtu: int | None = None
    bridge_name: str = ""
    enable_icc: bool | None = None
    internal: bool = False
    mcast_snooping: bool = False
    dns: bool = True
    ipv6_masquerade: bool = True


def check_network_options(options: Mapping[str, str]) -> NetworkOptions:
    """Checks every option (as labels are checked) and reads the ones cnm knows; the
    others are kept as they are."""
    _check_pairs(options, "option", "options", "INVALID_OPTION")
    mtu = None
    if OPTION_MTU in options:
        text = options[OPTION_MTU]
        if not (text.isascii() and text.isdigit()):
            raise errors.InvalidArgument(
                f"invalid option {OPTION_MTU}={capped(text)!r}: want 68-65535",
                reason="INVALID_OPTION", field="options", option=OPTION_MTU,
            )
        mtu = check_mtu(int(text))
    bridge = options.get(OPTION_BRIDGE_NAME, "")
    if OPTION_BRIDGE_NAME in options:
        check_ifname(OPTION_BRIDGE_NAME, bridge)
    icc = options.get(OPTION_ICC)
    mode = options.get(OPTION_GATEWAY_MODE_IPV6, "nat")
    if mode not in GATEWAY_MODES:
        raise errors.InvalidArgument(
            f"invalid option {OPTION_GATEWAY_MODE_IPV6}={capped(mode)!r}: want "
            f"{' or '.join(GATEWAY_MODES)}", reason="INVALID_OPTION", field="options",
            option=OPTION_GATEWAY_MODE_IPV6)
    return NetworkOptions(
        mtu=mtu, bridge_name=bridge,
        enable_icc=None if icc is None else _bool_option(OPTION_ICC, icc),
        internal=_bool_option(OPTION_INTERNAL, options.get(OPTION_INTERNAL, "false")),
        mcast_snooping=_bool_option(OPTION_MCAST_SNOOPING,
                                    options.get(OPTION_MCAST_SNOOPING, "false")),
        dns=_bool_option(OPTION_DNS, options.get(OPTION_DNS, "true")),
        ipv6_masquerade=mode == "nat",
    )


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def check_dns_name(field: str, value: str) -> str:
    """A name other containers find this one by (a container name, an alias): DNS
    labels of letters, digits, ``-`` and ``_``, at most 63 each and 253 in all."""
    if not (len(value) <= 253 and all(_DNS_LABEL.fullmatch(label)
                                      for label in value.split("."))):
        raise errors.InvalidArgument(
            f"invalid {field} {capped(value)!r}: want DNS labels (letters, digits, - and _, "
            "1-63 each, no - at either end) of at most 253 characters in all",
            reason="INVALID_DNS_NAME", field=field)
    return value


# --- hosts --------------------------------------------------------------------------------------

_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
MAX_GENERATION = 2**63 - 1


def _check_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_HOSTNAME_LABEL.fullmatch(part)
                                    for part in host.removesuffix(".").split("."))


def check_host_address(value: str) -> str:
    """Where a host's agent is dialled: ``HOST:PORT`` (HOST an IP address, ``[IPv6]`` or a
    DNS name; PORT 1-65535) or ``unix:`` and an absolute path."""
    def refuse(why: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"invalid host address {capped(value)!r}: {why}", reason="INVALID_HOST_ADDRESS",
            field="address", value=capped(value),
        )

    check_text("address", value, MAX_PATH, reason="INVALID_HOST_ADDRESS")
    if value.startswith("unix:"):
        # unix:///abs/path is gRPC's URI form of unix:/abs/path.
        path = value.removeprefix("unix:").removeprefix("//")
        if not os.path.isabs(path) or path != os.path.normpath(path):
            raise refuse("want unix: and an absolute, normalised socket path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise refuse("want HOST:PORT or unix:/absolute/path")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise refuse("the port is not 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise refuse("the bracketed host is not an IPv6 address") from None
        return value
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if host.replace(".", "").isdigit() or not _check_hostname(host):
            raise refuse("the host is neither an IP address nor a DNS name") from None
    return value


def check_underlay_ip(value: str, *, allow_empty: bool) -> str:
    """A host's VXLAN source address, normalised: a unicast address of either family that
    another host can route to (not link-local: a VXLAN device has no interface to send a
    link-local one out of); "" only where ``allow_empty`` says the host may have none."""
    if not value:
        if allow_empty:
            return ""
        raise errors.InvalidArgument("underlay_ip is required", reason="INVALID_UNDERLAY_IP",
                                     field="underlay_ip")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise errors.InvalidArgument(
            f"invalid underlay_ip {capped(value)!r}: not an IP address",
            reason="INVALID_UNDERLAY_IP", field="underlay_ip", value=capped(value),
        ) from None
    if (address.is_unspecified or address.is_multicast or address.is_loopback
            or address.is_link_local):
        raise errors.InvalidArgument(
            f"invalid underlay_ip {address}: not a unicast address another host can reach",
            reason="INVALID_UNDERLAY_IP", field="underlay_ip", value=str(address),
        )
    return str(address)


def check_generation(value: int) -> int:
    """A peers push's generation: 0 (always apply) to 2^63-1, so that a later one exists."""
    if not 0 <= value <= MAX_GENERATION:
        raise errors.InvalidArgument(
            f"invalid generation {value}: want 0-{MAX_GENERATION}", reason="INVALID_GENERATION",
            field="generation", value=value,
        )
    return value
