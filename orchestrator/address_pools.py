"""Default address pools: where a network created without a subnet gets one.

As Docker's daemon does (its ``default-address-pools``): each pool is a base prefix
cut into subnets of one size, and a create takes the first subnet, in pool order,
that overlaps no cnm network and no route of a registered host (their agents report
them). IPAM makes the choice atomic: a pool whose subnet another create took a moment
before is refused with SUBNET_OVERLAP, and the create moves on to the next subnet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Pool:
    base: Network
    size: int  # the prefix length of the subnets cut from base

    def __str__(self) -> str:
        return f"base={self.base},size={self.size}"


# Docker's defaults: 172.17-31.0.0/16 as /16s, then 192.168.0.0/16 as /20s.
DEFAULT = (
    *(Pool(ipaddress.ip_network(f"172.{second}.0.0/16"), 16) for second in range(17, 32)),
    Pool(ipaddress.ip_network("192.168.0.0/16"), 20),
)


def parse(text: str) -> Pool:
    """``base=CIDR,size=N`` (Docker's --default-address-pool); ValueError says what is
    wrong."""
    fields = dict(part.partition("=")[::2] for part in text.split(","))
    if set(fields) != {"base", "size"}:
        raise ValueError(f"{text!r}: want base=CIDR,size=N")
    try:
        base = ipaddress.ip_network(fields["base"])
    except ValueError as error:
        raise ValueError(f"{text!r}: base: {error}") from None
    if not fields["size"].isdigit():
        raise ValueError(f"{text!r}: size must be a prefix length")
    size = int(fields["size"])
    # The same bounds as a network's subnet: at least four addresses.
    if not base.prefixlen <= size <= base.max_prefixlen - 2:
        raise ValueError(f"{text!r}: size must be between {base.prefixlen} (the base's "
                         f"length) and {base.max_prefixlen - 2}")
    if base.version == 6 and size < 48:
        raise ValueError(f"{text!r}: an IPv6 network's subnet is a /48 or longer: size must "
                         "be 48 or more")
    return Pool(base, size)


def parse_all(text: str) -> tuple[Pool, ...]:
    """Pools separated by spaces or semicolons. The IPv4 defaults when none is IPv4 (a
    configuration that only adds IPv6 pools, for ``--ipv6`` without a subnet, keeps
    them); there is no default IPv6 pool."""
    pools = tuple(parse(item) for item in text.replace(";", " ").split())
    if not any(pool.base.version == 4 for pool in pools):
        pools = DEFAULT + pools
    return pools


def of_family(pools: Iterable[Pool], version: int) -> tuple[Pool, ...]:
    return tuple(pool for pool in pools if pool.base.version == version)


def free_subnets(pools: Iterable[Pool], taken: Iterable[Network]) -> Iterator[Network]:
    """Each pool's subnets that overlap nothing in ``taken``, in order. Past a clash it
    jumps to the end of the clashing prefix, so the cost grows with ``taken``, not with
    the size of the pools."""
    taken = sorted(set(taken), key=lambda net: (net.version, int(net.network_address)))
    for pool in pools:
        step = 1 << (pool.base.max_prefixlen - pool.size)
        start, end = int(pool.base.network_address), int(pool.base.broadcast_address)
        same_family = [net for net in taken if net.version == pool.base.version]
        while start <= end:
            candidate = ipaddress.ip_network((start, pool.size))
            clash = next((net for net in same_family if net.overlaps(candidate)), None)
            if clash is None:
                yield candidate
                start += step
            else:
                past = int(clash.broadcast_address) + 1
                start = max(start + step, -(-past // step) * step)  # rounded up to a step
