"""The names and ownership marks of the links the agent makes, derived from ids.

The checks of what a request carries are :mod:`cnm.validation`'s, shared
with the orchestrator.
"""

from __future__ import annotations

import hashlib

from cnm.validation import IFNAMSIZ, OBJECT_ID

BRIDGE_PREFIX = "cnm-"
HOST_VETH_PREFIX = "cv"
VXLAN_PREFIX = "cvx"

# Ownership marks, kept in the link's alias (IFLA_IFALIAS).
NETWORK_ALIAS_PREFIX = "cnm:net:"
ENDPOINT_ALIAS_PREFIX = "cnm:ep:"
# The VXLAN device of an overlay network: not a network or an endpoint of its
# own, so parse_alias() does not report it; the overlay driver checks it.
VXLAN_ALIAS_PREFIX = "cnm:vx:"


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


def host_peer_name(endpoint_id: str) -> str:
    """The container's end of an endpoint's veth while it waits on the host for the
    runtime to move it (peer_on_host): ``cp`` and 13 hex digits, as host_veth_name."""
    return "cp" + host_veth_name(endpoint_id)[len(HOST_VETH_PREFIX):]


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
        return ("net", network_id, "") if OBJECT_ID.fullmatch(network_id) else None
    if alias.startswith(ENDPOINT_ALIAS_PREFIX):
        endpoint_id, _, network_id = alias[len(ENDPOINT_ALIAS_PREFIX):].partition(":")
        if OBJECT_ID.fullmatch(endpoint_id) and OBJECT_ID.fullmatch(network_id):
            return ("ep", endpoint_id, network_id)
    return None
