"""Unit tests of pool validation and address math (no Redis)."""

from __future__ import annotations

import ipaddress

import pytest

from cnm import errors
from ipam_service import pools


def build(**kwargs):
    kwargs.setdefault("pool_id", "net1")
    kwargs.setdefault("subnet", "10.1.0.0/24")
    return pools.build_pool(**kwargs)


def test_defaults_gateway_to_first_usable_address():
    spec = build()
    assert spec.gateway == ipaddress.ip_address("10.1.0.1")
    assert spec.usable_size == 254
    assert spec.range_size == 256
    assert spec.bits_taken_at_creation() == [0, 1, 255]
    assert spec.dynamic_capacity() == 253


def test_ip_range_bits_are_relative_to_the_range():
    spec = build(subnet="10.2.0.0/22", gateway="10.2.3.254", ip_range="10.2.1.0/24")
    assert spec.range_start == int(ipaddress.ip_address("10.2.1.0"))
    assert spec.bit_of(ipaddress.ip_address("10.2.1.7")) == 7
    assert spec.bit_of(ipaddress.ip_address("10.2.0.7")) is None
    # Network, broadcast and gateway all lie outside the range: every bit is free.
    assert spec.bits_taken_at_creation() == []
    assert spec.dynamic_capacity() == 256


def test_ip_range_equal_to_subnet_is_the_same_pool_as_none():
    assert build(ip_range="10.1.0.0/24") == build()
    assert build(ip_range="10.1.0.0/24").fingerprint() == build().fingerprint()


def test_reserved_addresses_are_sorted_deduplicated_and_taken():
    spec = build(reserved=["10.1.0.9", "10.1.0.3", "10.1.0.9"])
    assert [str(a) for a in spec.reserved] == ["10.1.0.3", "10.1.0.9"]
    assert spec.taken_at_creation() == [
        ("10.1.0.1", pools.GATEWAY_OWNER),
        ("10.1.0.3", pools.RESERVED_OWNER),
        ("10.1.0.9", pools.RESERVED_OWNER),
    ]
    assert spec.bits_taken_at_creation() == [0, 1, 3, 9, 255]


def test_fingerprint_tells_parameters_apart():
    base = build().fingerprint()
    assert build(gateway="10.1.0.1").fingerprint() == base
    assert build(gateway="10.1.0.254").fingerprint() != base
    assert build(labels={"a": "b"}).fingerprint() != base
    assert build(reserved=["10.1.0.5"]).fingerprint() != base


def test_index_entry_is_fixed_width_hex():
    assert build(subnet="10.0.0.0/8").index_entry().split()[:3] == ["4", "0a000000", "0affffff"]
    assert pools.hex_of(ipaddress.ip_address("::1")) == "0" * 31 + "1"


def test_meta_round_trip():
    spec = build(
        subnet="172.20.0.0/16", ip_range="172.20.4.0/22", reserved=["172.20.0.9"], labels={"k": "v"}
    )
    meta = spec.to_meta("2026-01-01T00:00:00Z")
    assert pools.PoolSpec.from_meta(meta) == spec
    assert meta["range_start"] == str(int(ipaddress.ip_address("172.20.4.0")))
    assert meta["range_size"] == "1024"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"subnet": "10.1.0.0"}, "INVALID_CIDR"),
        ({"subnet": "10.1.0/24x"}, "INVALID_CIDR"),
        ({"subnet": "300.1.0.0/24"}, "INVALID_CIDR"),
        ({"subnet": ""}, "INVALID_CIDR"),
        ({"subnet": "10.1.0.5/24"}, "HOST_BITS_SET"),
        ({"subnet": "10.1.0.0/31"}, "SUBNET_TOO_SMALL"),
        ({"subnet": "10.1.0.0/32"}, "SUBNET_TOO_SMALL"),
        ({"subnet": "8.0.0.0/7", "ip_range": "8.0.0.0/7"}, "RANGE_TOO_LARGE"),
        ({"subnet": "fd00::/47", "ip_range": "fd00::/120"}, "SUBNET_TOO_LARGE"),
        ({"subnet": "fd00::/127"}, "SUBNET_TOO_SMALL"),
        ({"subnet": "fd00::/120", "gateway": "10.1.0.1"}, "ADDRESS_OUTSIDE_SUBNET"),
        ({"subnet": "fd00::/120", "gateway": "fd00::"}, "INVALID_ADDRESS"),
        ({"subnet": "fd00::/120", "ip_range": "10.1.0.0/24"}, "RANGE_OUTSIDE_SUBNET"),
        ({"subnet": "10.1.0.0/24", "ip_range": "fd00::/120"}, "RANGE_OUTSIDE_SUBNET"),
        ({"subnet": "10.1.0.0/24", "gateway": "::a01:1"}, "ADDRESS_OUTSIDE_SUBNET"),
        ({"subnet": "10.0.0.0/7"}, "RANGE_TOO_LARGE"),
        ({"gateway": "10.2.0.1"}, "ADDRESS_OUTSIDE_SUBNET"),
        ({"gateway": "10.1.0.0"}, "INVALID_ADDRESS"),
        ({"gateway": "10.1.0.255"}, "INVALID_ADDRESS"),
        ({"gateway": "nope"}, "INVALID_ADDRESS"),
        ({"ip_range": "10.2.0.0/24"}, "RANGE_OUTSIDE_SUBNET"),
        ({"ip_range": "10.1.0.0/23"}, "RANGE_OUTSIDE_SUBNET"),
        ({"ip_range": "10.1.0.4/24"}, "HOST_BITS_SET"),
        ({"ip_range": "10.1.0.1/32"}, "RANGE_EMPTY"),
        ({"reserved": ["10.3.0.1"]}, "ADDRESS_OUTSIDE_SUBNET"),
        ({"reserved": ["10.1.0.1"]}, "INVALID_ADDRESS"),
        ({"pool_id": ""}, "INVALID_POOL_ID"),
        ({"pool_id": "a b"}, "INVALID_POOL_ID"),
        ({"pool_id": "x" * 65}, "INVALID_POOL_ID"),
        ({"labels": {"": "v"}}, "INVALID_LABEL"),
        ({"labels": {"k" * 129: "v"}}, "INVALID_LABEL"),
        ({"labels": {"k": "v" * 1025}}, "INVALID_LABEL"),
    ],
)
def test_bad_pools_are_refused(kwargs, reason):
    with pytest.raises(errors.InvalidArgument) as caught:
        build(**kwargs)
    assert caught.value.reason == reason
    assert "\n" not in caught.value.message


def test_ipv6_pool_with_a_small_range_in_a_slash_64():
    spec = build(subnet="fd00:1::/64", ip_range="fd00:1::1:0/112")
    assert spec.gateway == ipaddress.ip_address("fd00:1::1")
    assert spec.unusable == (ipaddress.ip_address("fd00:1::"),)
    assert spec.usable_size == 2**64 - 1
    assert spec.bits_taken_at_creation() == []
    assert spec.dynamic_capacity() == 65536
    assert spec.bit_of(ipaddress.ip_address("fd00:1::1:5")) == 5
    meta = spec.to_meta("2026-01-01T00:00:00Z")
    assert meta["range_start"] == "64768:1:0:0:0:0:1:0"
    assert pools.PoolSpec.from_meta(meta) == spec
    assert spec.index_entry().split()[:3] == [
        "6",
        "fd000001" + "0" * 24,
        "fd000001" + "0" * 8 + "f" * 16,
    ]


def test_ipv6_has_no_broadcast_address():
    spec = build(subnet="fd00::/126")
    # fd00:: is unusable, ::1 the gateway: ::2 and ::3 remain.
    assert spec.bits_taken_at_creation() == [0, 1]
    assert spec.dynamic_capacity() == 2
    spec.check_preferred(ipaddress.ip_address("fd00::3"))
    with pytest.raises(errors.InvalidArgument) as caught:
        spec.check_preferred(ipaddress.ip_address("fd00::"))
    assert caught.value.reason == "NETWORK_ADDRESS"


def test_slash_30_holds_exactly_one_endpoint():
    assert build(subnet="10.1.0.0/30").dynamic_capacity() == 1


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.9.0.1", "ADDRESS_OUTSIDE_POOL"),
        ("fd00::1", "ADDRESS_OUTSIDE_POOL"),
        ("10.1.0.0", "NETWORK_ADDRESS"),
        ("10.1.0.255", "BROADCAST_ADDRESS"),
        ("10.1.0.1", "GATEWAY_ADDRESS"),
        ("10.1.0.3", "RESERVED_ADDRESS"),
    ],
)
def test_preferred_addresses_that_can_never_be_handed_out(address, reason):
    spec = build(reserved=["10.1.0.3"])
    with pytest.raises(errors.InvalidArgument) as caught:
        spec.check_preferred(ipaddress.ip_address(address))
    assert caught.value.reason == reason


def test_preferred_address_outside_ip_range_is_fine():
    spec = build(ip_range="10.1.0.128/25")
    spec.check_preferred(ipaddress.ip_address("10.1.0.7"))


@pytest.mark.parametrize(
    ("owner", "reason"),
    [("", "OWNER_REQUIRED"), ("cnm:gateway", "RESERVED_OWNER"), ("x" * 257, "INVALID_OWNER")],
)
def test_bad_owners(owner, reason):
    with pytest.raises(errors.InvalidArgument) as caught:
        pools.check_owner(owner)
    assert caught.value.reason == reason


def test_batch_owners_must_be_distinct_and_bounded():
    assert pools.check_owners(["a", "b"]) == ["a", "b"]
    for owners, reason in [
        (["a", "a"], "DUPLICATE_OWNER"),
        ([], "OWNER_REQUIRED"),
        ([str(i) for i in range(pools.MAX_BATCH + 1)], "BATCH_TOO_LARGE"),
    ]:
        with pytest.raises(errors.InvalidArgument) as caught:
            pools.check_owners(owners)
        assert caught.value.reason == reason
