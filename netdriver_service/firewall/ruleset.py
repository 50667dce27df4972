"""cnm's nftables ruleset as data: the fixed base and the per-network elements.

Pure functions, no kernel access: they build libnftables JSON commands and
read libnftables JSON listings, so that they can be unit-tested without
root.

Everything lives in one table, ``inet cnm``: IPv4 and IPv6 alike (a dual-stack
network's bridge is in the same interface sets; only its subnets are in sets of
their family). Its chains hold a fixed, small number of rules; every network and
every published port is a set of ELEMENTS of the named sets and maps below, so
adding one costs the same however many exist:

- ``bridges``        every cnm bridge (comment: network id, gateway)
- ``subnet_bridge``  subnet . bridge (comment: network id); ``subnet_bridge6``
                     the IPv6 subnets'
- ``masq_subnets``   subnets of non-internal networks (comment: network id);
                     ``masq_subnets6`` the IPv6 subnets of those whose IPv6 is
                     masqueraded (NAT66)
- ``internal``       bridges of internal networks
- ``self_verdicts``  bridge . bridge : accept, or goto ``icc_off``
- ``allowances``     bridge . hash(allowed network id) (comment: that id);
                     the kernel's record of ``allowed_networks``, so that a
                     network added later finds who allows it
- ``allowed_pairs``  from-bridge . to-bridge pairs that may talk
- ``ports_any_addr`` / ``ports_any_port``
                     proto . host port : container address / container
                     port, published on every local address (comment:
                     endpoint id, network id)
- ``ports_addr_addr`` / ``ports_addr_port``
                     host ip . proto . host port : the same, published on
                     one address
- ``ports_any_addr6`` ... ``ports_addr_port6``
                     the same four for a container's IPv6 address (a
                     mapping on every address of a dual-stack container is
                     in both families' maps)
- ``specific_guard`` proto . host port of every one-address mapping: lets
                     the kernel refuse an every-address mapping that
                     overlaps one (see :func:`publish_batch`)

Bridged traffic between two ports of one bridge reaches the inet-family
forward hook only when br_netfilter is active (built into this kernel and
on by default; ``bridge-nf-call-iptables``, ``-ip6tables``); it then shows up with
``iifname == oifname == bridge``, which is what ``self_verdicts`` keys on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass

from netdriver_service.firewall import NetworkRules, PortRule

FAMILY = "inet"
# The table of the same name cnm used before IPv6 (family ip): removed when found.
OLD_FAMILY = "ip"
TABLE = "cnm"
ICC_OFF_CHAIN = "icc_off"
LOOPBACK = {"prefix": {"addr": "127.0.0.0", "len": 8}}
LOOPBACK6 = "::1"

# Each set: (key field types, value type or None, interval flag). The field
# types decide how keys are converted to and from JSON.
SETS: dict[str, tuple[tuple[str, ...], str | None, bool]] = {
    "bridges": (("ifname",), None, False),
    "subnet_bridge": (("prefix", "ifname"), None, True),
    "subnet_bridge6": (("prefix6", "ifname"), None, True),
    "masq_subnets": (("prefix",), None, True),
    "masq_subnets6": (("prefix6",), None, True),
    "internal": (("ifname",), None, False),
    "self_verdicts": (("ifname", "ifname"), "verdict", False),
    "allowances": (("ifname", "mark"), None, False),
    "allowed_pairs": (("ifname", "ifname"), None, False),
    "ports_any_addr": (("inet_proto", "inet_service"), "ipv4_addr", False),
    "ports_any_port": (("inet_proto", "inet_service"), "inet_service", False),
    "ports_addr_addr": (("ipv4_addr", "inet_proto", "inet_service"), "ipv4_addr", False),
    "ports_addr_port": (("ipv4_addr", "inet_proto", "inet_service"), "inet_service", False),
    "ports_any_addr6": (("inet_proto", "inet_service"), "ipv6_addr", False),
    "ports_any_port6": (("inet_proto", "inet_service"), "inet_service", False),
    "ports_addr_addr6": (("ipv6_addr", "inet_proto", "inet_service"), "ipv6_addr", False),
    "ports_addr_port6": (("ipv6_addr", "inet_proto", "inet_service"), "inet_service", False),
    "specific_guard": (("inet_proto", "inet_service"), None, False),
}
_NFT_TYPE = {"prefix": "ipv4_addr", "prefix6": "ipv6_addr"}
# (address map, port map) of mappings on every address, and on one address; IPv4, IPv6.
ANY_MAPS, ADDR_MAPS = ("ports_any_addr", "ports_any_port"), ("ports_addr_addr", "ports_addr_port")
ANY_MAPS6 = ("ports_any_addr6", "ports_any_port6")
ADDR_MAPS6 = ("ports_addr_addr6", "ports_addr_port6")
MAP_PAIRS = (ANY_MAPS, ADDR_MAPS, ANY_MAPS6, ADDR_MAPS6)
PORT_MAPS = ANY_MAPS + ADDR_MAPS + ANY_MAPS6 + ADDR_MAPS6
ADDRESS_MAPS = tuple(pair[0] for pair in MAP_PAIRS)
SPECIFIC_ADDRESS_MAPS = (ADDR_MAPS[0], ADDR_MAPS6[0])
NETWORK_SETS = ("bridges", "subnet_bridge", "subnet_bridge6", "masq_subnets", "masq_subnets6",
                "internal", "self_verdicts", "allowances", "allowed_pairs")


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _concat(*parts: object) -> dict:
    return {"concat": list(parts)}


_IIF, _OIF = _meta("iifname"), _meta("oifname")
_SADDR, _DADDR = _payload("ip", "saddr"), _payload("ip", "daddr")
_SADDR6, _DADDR6 = _payload("ip6", "saddr"), _payload("ip6", "daddr")
_CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")
_LOCAL_DADDR = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_ACCEPT, _DROP = {"accept": None}, {"drop": None}


def _dnat_from(maps: tuple[str, str], *key: dict, family: str = "ip") -> list[dict]:
    # Address and port come from two maps: libnftables 1.0.6 crashes parsing
    # a JSON dnat whose map yields the concatenation "address . port". In the inet
    # table the kernel applies a dnat only to packets of its family.
    address_map, port_map = maps
    return [
        _LOCAL_DADDR,
        {"dnat": {"family": family,
                  "addr": {"map": {"key": _concat(*key), "data": "@" + address_map}},
                  "port": {"map": {"key": _concat(*key), "data": "@" + port_map}}}},
    ]


_L4 = (_meta("l4proto"), _payload("th", "dport"))
_DNAT_RULES = [_dnat_from(ADDR_MAPS, _DADDR, *_L4), _dnat_from(ANY_MAPS, *_L4),
               _dnat_from(ADDR_MAPS6, _DADDR6, *_L4, family="ip6"),
               _dnat_from(ANY_MAPS6, *_L4, family="ip6")]
# The host's own connections to [::1] are not DNATed: IPv6 has no route_localnet, and
# a packet from ::1 never leaves the host; the agent proxies them (hostports.py).
_NOT_LOOPBACK6 = _match(_DADDR6, LOOPBACK6, "!=")
_OUTPUT_DNAT_RULES = _DNAT_RULES[:2] + [[_NOT_LOOPBACK6, *rule] for rule in _DNAT_RULES[2:]]

# Chain name -> (base chain properties or None, rules). The rules are written
# exactly as libnftables lists them back, so that :func:`chain_drift` can
# compare the kernel's rules with these.
CHAINS: dict[str, tuple[dict | None, list[list[dict]]]] = {
    ICC_OFF_CHAIN: (None, [
        # Published ports stay reachable on a network without icc, as in Docker.
        [_CT_DNAT, _ACCEPT],
        [_DROP],
    ]),
    "forward": ({"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}, [
        [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), _ACCEPT],
        # Traffic staying on one bridge (bridged, via br_netfilter, or hairpin).
        [{"vmap": {"key": _concat(_IIF, _OIF), "data": "@self_verdicts"}}],
        [_match(_concat(_IIF, _OIF), "@allowed_pairs"), _ACCEPT],
        [_match(_IIF, "@internal"), _DROP],
        [_match(_OIF, "@internal"), _DROP],
        # Published ports: reachable from anywhere but an internal network,
        # other cnm networks included (as through Docker's userland proxy).
        [_CT_DNAT, _match(_OIF, "@bridges"), _ACCEPT],
        # Two different cnm networks: isolated unless allowed above.
        [_match(_IIF, "@bridges"), _match(_OIF, "@bridges"), _DROP],
        [_match(_IIF, "@bridges"), _ACCEPT],
        # Unsolicited traffic routed straight to a container address.
        [_match(_OIF, "@bridges"), _DROP],
    ]),
    "input": ({"type": "filter", "hook": "input", "prio": 0, "policy": "accept"}, [
        # route_localnet is on for the bridges (for 127.0.0.1 published
        # ports): never let a container open a connection to the host's
        # loopback services (answers to the host's own connections pass).
        [_match(_IIF, "@bridges"), _match(_DADDR, LOOPBACK),
         _match({"ct": {"key": "direction"}}, "original"), _DROP],
        [_match(_IIF, "@bridges"), _match(_DADDR6, LOOPBACK6),
         _match({"ct": {"key": "direction"}}, "original"), _DROP],
    ]),
    "prerouting": (
        {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}, _DNAT_RULES,
    ),
    "output": ({"type": "nat", "hook": "output", "prio": -100, "policy": "accept"},
               _OUTPUT_DNAT_RULES),
    "postrouting": ({"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}, [
        # Hairpin: a container reaching its own or a neighbour's published port.
        [_CT_DNAT, _match(_concat(_SADDR, _OIF), "@subnet_bridge"), {"masquerade": None}],
        [_match(_concat(_SADDR, _OIF), "@subnet_bridge"), {"return": None}],
        [_match(_SADDR, "@masq_subnets"), {"masquerade": None}],
        [_CT_DNAT, _match(_concat(_SADDR6, _OIF), "@subnet_bridge6"), {"masquerade": None}],
        [_match(_concat(_SADDR6, _OIF), "@subnet_bridge6"), {"return": None}],
        [_match(_SADDR6, "@masq_subnets6"), {"masquerade": None}],
        # A published port reached on 127.0.0.1 from the host itself.
        [_CT_DNAT, _match(_SADDR, LOOPBACK), _match(_OIF, "@bridges"), {"masquerade": None}],
    ]),
}


# --- keys and elements -------------------------------------------------------

Key = tuple  # one Python value per key field: str, or int for ports and marks


@dataclass(frozen=True)
class Element:
    """One set or map element: key, map value (None in a set), comment."""

    key: Key
    value: object = None  # map value: verdict ("accept", "goto CHAIN"), address or port
    comment: str = ""


Elements = dict[str, dict[Key, Element]]  # set name -> key -> element


def empty_elements() -> Elements:
    return {name: {} for name in SETS}


def _field_to_json(kind: str, value: object) -> object:
    if kind in ("prefix", "prefix6"):
        network = ipaddress.ip_network(value)
        return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
    return value


# nft names a protocol or a port from /etc/protocols and /etc/services when the host
# has them, and prints the number otherwise (an image without netbase): read both.
_PROTOCOL_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp",
                   socket.IPPROTO_SCTP: "sctp"}


def _protocol_from_json(value: object) -> str:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return _PROTOCOL_NAMES.get(int(value), str(value))
    return str(value)


def _service_from_json(value: object) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:  # nft printed a name: the host has /etc/services to read it back from
        return socket.getservbyname(str(value))
    except OSError:
        raise ValueError(f"nft printed port {value!r}, which /etc/services does not name") \
            from None


def _field_from_json(kind: str, value: object) -> object:
    if kind in ("prefix", "prefix6"):
        if isinstance(value, dict):
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        return f"{value}/{32 if kind == 'prefix' else 128}"
    if kind == "inet_proto":
        return _protocol_from_json(value)
    if kind == "inet_service":
        return _service_from_json(value)
    if kind == "mark":
        return int(value)
    return value


def _value_to_json(kind: str | None, value: object) -> object:
    if kind == "verdict":
        if value == "accept":
            return {"accept": None}
        return {"goto": {"target": value.removeprefix("goto ")}}
    return value


def _value_from_json(kind: str | None, value: object) -> object:
    if kind == "verdict":
        if "accept" in value:
            return "accept"
        return "goto " + value["goto"]["target"]
    return _service_from_json(value) if kind == "inet_service" else value


def element_to_json(set_name: str, element: Element, *, with_value: bool = True) -> object:
    fields, value_kind, _ = SETS[set_name]
    parts = [_field_to_json(kind, part) for kind, part in zip(fields, element.key, strict=True)]
    key: object = parts[0] if len(parts) == 1 else _concat(*parts)
    if element.comment:
        key = {"elem": {"val": key, "comment": element.comment}}
    if value_kind is None or not with_value:
        return key
    return [key, _value_to_json(value_kind, element.value)]


def element_from_json(set_name: str, item: object) -> Element:
    fields, value_kind, _ = SETS[set_name]
    value = None
    if value_kind is not None and isinstance(item, list):  # a key alone names it in a delete
        item, raw_value = item
        value = _value_from_json(value_kind, raw_value)
    comment = ""
    if isinstance(item, dict) and "elem" in item:
        comment = item["elem"].get("comment", "")
        item = item["elem"]["val"]
    parts = item["concat"] if isinstance(item, dict) and "concat" in item else [item]
    key = tuple(_field_from_json(kind, part) for kind, part in zip(fields, parts, strict=True))
    return Element(key, value, comment)


def elements_from_listing(listing: dict) -> Elements:
    """The elements of every cnm set found in a ``list table`` JSON answer."""
    found = empty_elements()
    for item in listing.get("nftables", []):
        body = item.get("set") or item.get("map")
        if not body or body.get("table") != TABLE or body.get("name") not in SETS:
            continue
        name = body["name"]
        for raw in body.get("elem", []):
            element = element_from_json(name, raw)
            found[name][element.key] = element
    return found


def rules_from_listing(listing: dict) -> dict[str, list[list[dict]]]:
    """Chain name -> its rules' expressions, from a ``list table`` JSON answer."""
    chains: dict[str, list[list[dict]]] = {}
    for item in listing.get("nftables", []):
        if "chain" in item and item["chain"].get("table") == TABLE:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item and item["rule"].get("table") == TABLE:
            chains.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
    return chains


def set_names_in_listing(listing: dict) -> set[str]:
    return {
        (item.get("set") or item.get("map"))["name"]
        for item in listing.get("nftables", [])
        if item.get("set") or item.get("map")
    }


def count_in_listing(listing: dict) -> int:
    """Rules plus set and map elements in a listing."""
    count = 0
    for item in listing.get("nftables", []):
        if "rule" in item:
            count += 1
        body = item.get("set") or item.get("map")
        if body:
            count += len(body.get("elem", []))
    return count


# --- commands ------------------------------------------------------------------

def obj(kind: str, **fields: object) -> dict:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def table_command(verb: str = "add") -> dict:
    return {verb: {"table": {"family": FAMILY, "name": TABLE}}}


def set_commands(names: list[str] | None = None) -> list[dict]:
    commands = []
    for name in names if names is not None else SETS:
        fields, value_kind, interval = SETS[name]
        types = [_NFT_TYPE.get(kind, kind) for kind in fields]
        body: dict = {"name": name, "type": types[0] if len(types) == 1 else types}
        if interval:
            body["flags"] = ["interval"]
        if value_kind is None:
            commands.append({"add": obj("set", **body)})
        else:
            commands.append({"add": obj("map", **body, map=value_kind)})
    return commands


def chain_commands(name: str) -> list[dict]:
    """Creates chain ``name`` (if missing) and appends its rules."""
    base, rules = CHAINS[name]
    commands = [{"add": obj("chain", name=name, **(base or {}))}]
    commands += [{"add": obj("rule", chain=name, expr=expr)} for expr in rules]
    return commands


def base_commands() -> list[dict]:
    """The whole base: table, sets and maps, chains and their rules."""
    commands = [table_command()] + set_commands()
    for name in CHAINS:
        commands += chain_commands(name)
    return commands


def chain_drift(kernel_chains: dict[str, list[list[dict]]]) -> list[str]:
    """Names of the chains whose rules are missing or differ from :data:`CHAINS`."""
    return [
        name for name, (_, rules) in CHAINS.items() if kernel_chains.get(name) != rules
    ]


def element_command(verb: str, set_name: str, elements: list[Element]) -> dict:
    """``verb`` ("add", "create", "delete") elements; a delete names keys only."""
    with_value = verb != "delete"
    return {verb: obj("element", name=set_name, elem=[
        element_to_json(set_name, element, with_value=with_value) for element in elements
    ])}


# --- what each network and port needs ------------------------------------------

def allowance_mark(network_id: str) -> int:
    """A 32-bit key standing for a network id (the full id is the comment)."""
    return int.from_bytes(hashlib.sha256(network_id.encode()).digest()[:4], "big")


def network_elements(network: NetworkRules) -> Elements:
    """The elements that belong to ``network`` alone (not the allowed pairs)."""
    wanted = empty_elements()
    bridge = network.bridge

    def put(set_name: str, element: Element) -> None:
        wanted[set_name][element.key] = element

    put("bridges", Element((bridge,), comment=f"{network.network_id} "
                                              f"{network.gateway or network.ipv6_gateway}"))
    if network.subnet:  # else IPv6 only
        put("subnet_bridge", Element((network.subnet, bridge), comment=network.network_id))
    if network.ipv6_subnet:
        put("subnet_bridge6", Element((network.ipv6_subnet, bridge), comment=network.network_id))
    if network.internal:
        put("internal", Element((bridge,)))
    else:
        if network.subnet:
            put("masq_subnets", Element((network.subnet,), comment=network.network_id))
        if network.ipv6_subnet and network.masquerade_ipv6:
            put("masq_subnets6", Element((network.ipv6_subnet,), comment=network.network_id))
    verdict = "accept" if network.enable_icc else f"goto {ICC_OFF_CHAIN}"
    put("self_verdicts", Element((bridge, bridge), verdict))
    for allowed in network.allowed_networks:
        put("allowances", Element((bridge, allowance_mark(allowed)), comment=allowed))
    return wanted


def allowed_pair_keys(bridge_of: dict[str, str], allowances: dict[Key, Element]) -> set[Key]:
    """(from-bridge, to-bridge) pairs for every allowance whose both networks are present.

    ``bridge_of`` maps network id -> bridge; ``allowances`` are elements of the
    ``allowances`` set (to-bridge . mark, comment = allowed network id).
    """
    pairs = set()
    for (to_bridge, _), element in allowances.items():
        from_bridge = bridge_of.get(element.comment)
        if from_bridge is not None and from_bridge != to_bridge:
            pairs.add((from_bridge, to_bridge))
    return pairs


def network_of_bridge(bridges: dict[Key, Element]) -> dict[str, str]:
    """bridge -> network id, from ``bridges`` elements."""
    return {key[0]: element.comment.split(" ")[0] for key, element in bridges.items()}


def port_comment(port: PortRule) -> str:
    return f"{port.endpoint_id} {port.network_id}"


def _is_ipv6(address: str) -> bool:
    return ":" in address


def port_elements(port: PortRule) -> list[tuple[str, Element]]:
    """(map name, element) pairs publishing ``port``: its address and its port, in the
    maps of its container address's family."""
    ipv6 = _is_ipv6(port.container_ip)
    if port.host_ip:
        key: Key = (port.host_ip, port.protocol, port.host_port)
        address_map, port_map = ADDR_MAPS6 if ipv6 else ADDR_MAPS
    else:
        key = (port.protocol, port.host_port)
        address_map, port_map = ANY_MAPS6 if ipv6 else ANY_MAPS
    comment = port_comment(port)
    return [(address_map, Element(key, port.container_ip, comment)),
            (port_map, Element(key, port.container_port, comment))]


def ports_from_elements(elements: Elements) -> list[PortRule]:
    """The published ports; a key missing from one of its two maps is no port."""
    ports = []
    for address_map, port_map in MAP_PAIRS:
        for key, address in elements[address_map].items():
            target = elements[port_map].get(key)
            if target is None or key[-2] not in _PROTOCOL_NAMES.values():
                continue
            endpoint_id, _, network_id = address.comment.partition(" ")
            host_ip, (protocol, host_port) = (key[0], key[1:]) if len(key) == 3 else ("", key)
            ports.append(PortRule(
                endpoint_id=endpoint_id, network_id=network_id, protocol=protocol,
                host_ip=host_ip, host_port=host_port, container_ip=address.value,
                container_port=target.value,
            ))
    return sorted(ports, key=port_sort_key)


def port_partners(address_elements: dict[Key, Element]) -> dict[Key, Element]:
    """Port-map elements to delete with these address-map elements (a delete names keys only)."""
    return {key: Element(key, 0, element.comment) for key, element in address_elements.items()}


def port_sort_key(port: PortRule) -> tuple:
    return (port.protocol, port.host_port, port.host_ip, port.endpoint_id,
            _is_ipv6(port.container_ip))


def publish_batch(ports: list[PortRule]) -> list[dict]:
    """One transaction publishing ``ports`` that fails as a whole on any overlap.

    ``create`` (unlike ``add``) fails with EEXIST when the key exists, so the
    kernel itself refuses a taken (protocol, host_ip, host_port). A mapping on
    every address and one on a specific address must not share a protocol and
    port either; that is asserted with a create-then-delete of the key that
    would overlap: on ``specific_guard`` for an every-address mapping, on
    ``ports_any_addr`` for a specific-address one. Costs the same however
    many ports exist: no read, one transaction.
    """
    commands: list[dict] = []
    for port in ports:
        for map_name, element in port_elements(port):
            commands.append(element_command("create", map_name, [element]))
        guard_key = (port.protocol, port.host_port)
        if port.host_ip:
            # Refused if the same family publishes the port on every address.
            any_map = (ANY_MAPS6 if _is_ipv6(port.container_ip) else ANY_MAPS)[0]
            probe = Element(guard_key, "::" if any_map == ANY_MAPS6[0] else "0.0.0.0")
            commands.append(element_command("create", any_map, [probe]))
            commands.append(element_command("delete", any_map, [probe]))
            commands.append(element_command("add", "specific_guard", [Element(guard_key)]))
        else:
            probe = Element(guard_key)
            commands.append(element_command("create", "specific_guard", [probe]))
            commands.append(element_command("delete", "specific_guard", [probe]))
    return commands


def specific_mappings(elements: Elements) -> dict[Key, Element]:
    """The one-address mappings of both families (their keys never collide: an address
    of one family is not one of the other)."""
    return {**elements.get(ADDR_MAPS[0], {}), **elements.get(ADDR_MAPS6[0], {})}


def guard_elements(ports_addr: dict[Key, Element]) -> dict[Key, Element]:
    """What ``specific_guard`` must hold for these specific-address mapping keys."""
    return {(key[1], key[2]): Element((key[1], key[2])) for key in ports_addr}


def guards_freed(all_addr: dict[Key, Element], removed_addr: dict[Key, Element]) -> dict:
    """``specific_guard`` elements to delete when ``removed_addr`` mappings go."""
    kept = guard_elements({key: e for key, e in all_addr.items() if key not in removed_addr})
    return {key: e for key, e in guard_elements(removed_addr).items() if key not in kept}


def desired_elements(networks: list[NetworkRules], ports: list[PortRule]) -> Elements:
    """Every element cnm's sets must hold for exactly these networks and ports."""
    wanted = empty_elements()
    for network in networks:
        for set_name, elements in network_elements(network).items():
            wanted[set_name].update(elements)
    bridge_of = {network.network_id: network.bridge for network in networks}
    for pair in allowed_pair_keys(bridge_of, wanted["allowances"]):
        wanted["allowed_pairs"][pair] = Element(pair)
    for port in ports:
        for map_name, element in port_elements(port):
            wanted[map_name][element.key] = element
    wanted["specific_guard"] = guard_elements(specific_mappings(wanted))
    return wanted


def diff_commands(actual: Elements, wanted: Elements) -> tuple[list[dict], list[str]]:
    """Commands turning ``actual`` into ``wanted``, and one line per change."""
    deletes: list[dict] = []
    adds: list[dict] = []
    lines: list[str] = []
    for set_name in SETS:
        have, want = actual.get(set_name, {}), wanted.get(set_name, {})
        stale = [element for key, element in have.items() if want.get(key) != element]
        missing = [element for key, element in want.items() if have.get(key) != element]
        if stale:
            deletes.append(element_command("delete", set_name, stale))
            lines += [f"removed stale {set_name} element {describe(e)}" for e in stale]
        if missing:
            adds.append(element_command("add", set_name, missing))
            lines += [f"added missing {set_name} element {describe(e)}" for e in missing]
    return deletes + adds, lines


def describe(element: Element) -> str:
    text = " . ".join(str(part) for part in element.key)
    if element.value is not None:
        text += f" : {element.value}"
    if element.comment:
        text += f" ({element.comment})"
    return text


def elements_of_network(actual: Elements, network_id: str) -> Elements:
    """The elements in ``actual`` that belong to ``network_id`` (its ports included)."""
    owner = network_of_bridge(actual["bridges"])
    bridges = {bridge for bridge, owner_id in owner.items() if owner_id == network_id}
    mine = empty_elements()
    for set_name, elements in actual.items():
        for key, element in elements.items():
            if _belongs(set_name, key, element, bridges, network_id):
                mine[set_name][key] = element
    return mine


_OWNED_BY_FIRST_FIELD = ("bridges", "internal", "allowances")
_OWNED_BY_EITHER_FIELD = ("self_verdicts", "allowed_pairs")


def _belongs(set_name: str, key: Key, element: Element, bridges: set[str], network_id: str):
    if set_name in PORT_MAPS:
        return element.comment.partition(" ")[2] == network_id
    if set_name in ("masq_subnets", "masq_subnets6"):
        return element.comment == network_id
    if set_name in ("subnet_bridge", "subnet_bridge6"):
        return key[1] in bridges
    if set_name in _OWNED_BY_FIRST_FIELD:
        return key[0] in bridges
    if set_name in _OWNED_BY_EITHER_FIELD:
        return key[0] in bridges or key[1] in bridges
    return False  # specific_guard: derived from ports_addr, recomputed by the caller
