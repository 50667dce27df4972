"""Default address pools: parsing, and the first free subnets (orchestrator/address_pools.py)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from orchestrator import address_pools
from orchestrator.address_pools import Pool

net = ipaddress.ip_network


def test_the_defaults_are_dockers():
    pools = address_pools.parse_all("")
    assert [str(pool) for pool in pools[:2]] == ["base=172.17.0.0/16,size=16",
                                                  "base=172.18.0.0/16,size=16"]
    assert str(pools[-2]) == "base=172.31.0.0/16,size=16"
    assert str(pools[-1]) == "base=192.168.0.0/16,size=20"
    assert len(list(address_pools.free_subnets(pools, []))) == 15 + 16


def test_pools_are_parsed_in_order_from_spaces_or_semicolons():
    pools = address_pools.parse_all("base=10.10.0.0/16,size=24; base=10.20.0.0/16,size=20")
    assert pools == (Pool(net("10.10.0.0/16"), 24), Pool(net("10.20.0.0/16"), 20))


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.0/8", "want base=CIDR,size=N"),
    ("base=10.0.0.0/8", "want base=CIDR,size=N"),
    ("base=10.0.0.0/8,size=24,extra=1", "want base=CIDR,size=N"),
    ("base=10.0.0.1/8,size=24", "base: 10.0.0.1/8 has host bits set"),
    ("base=nonsense,size=24", "base: "),
    ("base=10.0.0.0/8,size=x", "size must be a prefix length"),
    ("base=10.0.0.0/16,size=8", "between 16 .* and 30"),
    ("base=10.0.0.0/16,size=31", "between 16 .* and 30"),
    ("base=fd00::/32,size=40", "size must be 48 or more"),
    ("base=fd00::/48,size=127", "between 48 .* and 126"),
])
def test_bad_pools_are_refused_with_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        address_pools.parse(text)


def test_ipv6_pools_come_beside_the_ipv4_defaults_and_are_walked_alike():
    pools = address_pools.parse_all("base=fd00:c0::/48,size=64")
    assert pools[:-1] == address_pools.DEFAULT
    assert address_pools.of_family(pools, 6) == (Pool(net("fd00:c0::/48"), 64),)
    taken = [net("fd00:c0::/64"), net("fd00:c0:0:1::/80"), net("10.0.0.0/8")]
    found = address_pools.free_subnets(address_pools.of_family(pools, 6), taken)
    assert [str(next(found)) for _ in range(2)] == ["fd00:c0:0:2::/64", "fd00:c0:0:3::/64"]
    both = address_pools.parse_all("base=10.5.0.0/16,size=24 base=fd00::/48,size=64")
    assert both == (Pool(net("10.5.0.0/16"), 24), Pool(net("fd00::/48"), 64))


def test_free_subnets_skip_what_is_taken_in_pool_order():
    pools = (Pool(net("10.1.0.0/22"), 24), Pool(net("10.9.0.0/23"), 24))
    taken = [net("10.1.1.128/25"), net("10.1.2.0/23"), net("fd00::/64")]
    assert [str(s) for s in address_pools.free_subnets(pools, taken)] == [
        "10.1.0.0/24", "10.9.0.0/24", "10.9.1.0/24"]
    # A taken prefix larger than the pool's subnets hides all of them at once.
    assert list(address_pools.free_subnets(pools, [net("10.0.0.0/8")])) == []


def test_the_walk_jumps_past_each_clash():
    """4 million /30s, all but the last /16 taken: a walk that looked at each subnet
    would run for hours (the test's timeout fails it); one that jumps past each clash
    looks at about one subnet per taken prefix."""
    huge = (Pool(net("10.0.0.0/8"), 30),)
    taken = [net(f"10.{second}.0.0/16") for second in range(255)]
    found = list(itertools.islice(address_pools.free_subnets(huge, taken), 3))
    assert [str(s) for s in found] == ["10.255.0.0/30", "10.255.0.4/30", "10.255.0.8/30"]
