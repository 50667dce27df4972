"""IPv6 pools against the real Redis, and the Lua address text checked against Python's."""

from __future__ import annotations

import ipaddress
import random

import pytest
import redis

from cnm import errors
from ipam_service import lua, pools
from ipam_service.store import RedisStore, pool_keys
from tests.ipam.consistency import check_pool

# Evaluates the scripts' own helpers on the real Redis Lua interpreter.
TEXT_PROBE = (
    lua._HELPERS
    + """
local groups = {}
for i = 1, 8 do groups[i] = tonumber(ARGV[i]) end
local text = ipv6_text(groups)
return {text, table.concat(ipv6_groups(text), ':')}
"""
)
RANGE_PROBE = (
    lua._HELPERS
    + """
local range = range_of('6', ARGV[1], ARGV[2])
local reply = {}
for i = 3, #ARGV do
  local text = address_text(range, tonumber(ARGV[i]))
  reply[#reply + 1] = text
  reply[#reply + 1] = bit_of(range, text) or -1
end
return reply
"""
)


def random_groups(rng: random.Random) -> list[int]:
    # Mostly zeros, so that runs of every length and position (and ties) occur.
    return [0 if rng.random() < 0.6 else rng.choice([1, 0xF, 0xABC, 0xFFFF]) for _ in range(8)]


def test_lua_ipv6_text_matches_python(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    rng = random.Random(7)
    cases = [[0] * 8, [0] * 7 + [1], [1] + [0] * 7, [1, 0, 0, 1, 0, 0, 1, 1]]
    cases += [random_groups(rng) for _ in range(3000)]
    try:
        probe = client.register_script(TEXT_PROBE)
        pipe = client.pipeline(transaction=False)
        for groups in cases:
            probe(args=groups, client=pipe)
        replies = pipe.execute()
    finally:
        client.close()
    for groups, (text, parsed) in zip(cases, replies, strict=True):
        number = int("".join(f"{g:04x}" for g in groups), 16)
        assert text == str(ipaddress.IPv6Address(number)), groups
        assert parsed == ":".join(map(str, groups))


def test_lua_range_offsets_cross_groups(redis_url):
    network = ipaddress.ip_network("2001:db8:0:1:0:0:ab00:0/104")
    bits = [0, 1, 65535, 65536, 65537, 2**24 - 1, *random.Random(3).sample(range(2**24), 500)]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        reply = client.eval(RANGE_PROBE, 0, pools.lua_range_start(network), 2**24, *bits)
    finally:
        client.close()
    for bit, text, back in zip(bits, reply[::2], reply[1::2], strict=True):
        assert text == str(network.network_address + bit)
        assert back == bit


@pytest.fixture
async def store(redis_url):
    opened = RedisStore.from_url(redis_url)
    yield opened
    await opened.close()


async def test_ipv6_pool_allocates_canonical_addresses(store, redis_url):
    created = await store.create_pool(
        pools.build_pool(
            pool_id="v6", subnet="2001:db8:1:2::/64", ip_range="2001:db8:1:2:3:4::/112"
        )
    )
    assert str(created.spec.gateway) == "2001:db8:1:2::1"
    assert (created.usage.size, created.usage.allocated, created.usage.free) == (
        2**64 - 1,
        1,
        65536,
    )
    owners = [f"o{i}" for i in range(300)]
    batch = await store.allocate_batch("v6", owners)
    base = ipaddress.ip_address("2001:db8:1:2:3:4::")
    assert batch.addresses == [str(base + i) for i in range(300)]
    assert batch.addresses[:2] == ["2001:db8:1:2:3:4::", "2001:db8:1:2:3:4:0:1"]
    assert batch.prefix_length == 64
    one = await store.allocate("v6", "single")
    assert one.address == "2001:db8:1:2:3:4:0:12c"
    static = await store.allocate("v6", "static", ipaddress.ip_address("2001:db8:1:2::99"))
    assert static.address == "2001:db8:1:2::99"
    with pytest.raises(errors.AlreadyExists):
        await store.allocate("v6", "other", ipaddress.ip_address("2001:db8:1:2:3:4:0:5"))
    with pytest.raises(errors.InvalidArgument):
        await store.allocate("v6", "other", ipaddress.ip_address("2001:db8:1:2::"))
    assert await store.release("v6", address="2001:db8:1:2:3:4:0:5") == "2001:db8:1:2:3:4:0:5"
    assert await store.release("v6", owner="o7") == "2001:db8:1:2:3:4:0:7"
    assert await store.release("v6", address="2001:db8:1:2::99") == "2001:db8:1:2::99"
    holders = check_pool(redis_url, "v6")
    assert len(holders) == 1 + 300 + 1 - 2
    listed = await store.list_allocations("v6")
    assert listed[0] == ("2001:db8:1:2::1", "cnm:gateway")
    assert listed[1] == ("2001:db8:1:2:3:4::", "o0")


async def test_ipv6_exhaustion_and_overlap(store, redis_url):
    await store.create_pool(pools.build_pool(pool_id="small", subnet="fd00:9::/126"))
    got = [(await store.allocate("small", o)).address for o in ("a", "b")]
    assert got == ["fd00:9::2", "fd00:9::3"]
    with pytest.raises(errors.ResourceExhausted):
        await store.allocate("small", "c")
    check_pool(redis_url, "small")
    with pytest.raises(errors.AlreadyExists) as caught:
        await store.create_pool(
            pools.build_pool(pool_id="big", subnet="fd00:9::/64", ip_range="fd00:9::1:0/112")
        )
    assert caught.value.reason == "SUBNET_OVERLAP"
    assert "'small' (fd00:9::/126)" in caught.value.message
    # The same numbers in the other family are no clash.
    await store.create_pool(pools.build_pool(pool_id="v4", subnet="0.0.0.0/30"))
    await store.create_pool(pools.build_pool(pool_id="v6zero", subnet="::/120"))


async def test_ipv6_bits_beyond_the_first_group(store, redis_url):
    await store.create_pool(
        pools.build_pool(pool_id="wide", subnet="fd00:7::/64", ip_range="fd00:7::ab00:0/104")
    )
    address = ipaddress.ip_address("fd00:7::ab01:5")  # offset 65541
    await store.allocate("wide", "s", address)
    client = redis.Redis.from_url(redis_url)
    bitmap = pool_keys("wide")[4]
    try:
        assert client.getbit(bitmap, 65541) == 1
        assert await store.release("wide", owner="s") == str(address)
        assert client.getbit(bitmap, 65541) == 0
        assert client.bitcount(bitmap) == 0
    finally:
        client.close()


async def test_a_64_is_a_sparse_pool_handing_out_addresses_in_order(store, redis_url):
    """A /64 (and up to a /48): no bitmap, a next-fit cursor, the anycast address
    skipped, statics ahead of the cursor skipped, released ones not reused before the
    cursor has gone round."""
    created = await store.create_pool(pools.build_pool(pool_id="wide64", subnet="fd00:64::/64"))
    assert created.spec.sparse and created.spec.gateway == ipaddress.ip_address("fd00:64::1")
    assert created.usage.size == 2**64 - 1 and created.usage.allocated == 1
    static = await store.allocate("wide64", "static", ipaddress.ip_address("fd00:64::3"))
    assert static.address == "fd00:64::3"
    got = [(await store.allocate("wide64", f"o{n}")).address for n in range(3)]
    assert got == ["fd00:64::2", "fd00:64::4", "fd00:64::5"]
    assert await store.release("wide64", owner="o0") == "fd00:64::2"
    assert (await store.allocate("wide64", "o3")).address == "fd00:64::6"
    batch = await store.allocate_batch("wide64", ["o3", "b1", "b2"])
    assert batch.addresses == ["fd00:64::6", "fd00:64::7", "fd00:64::8"]
    # A preferred address far away, and the same owner asking again.
    far = ipaddress.ip_address("fd00:64::ffff:ffff:ffff:fffe")
    assert (await store.allocate("wide64", "far", far)).address == str(far)
    assert (await store.allocate("wide64", "o1")).address == "fd00:64::4"
    usage = (await store.get_pool("wide64")).usage
    assert usage.allocated == 8 and usage.free == 2**64 - 1 - 8
    check_pool(redis_url, "wide64")

    wide48 = await store.create_pool(pools.build_pool(pool_id="wide48", subnet="fd00:48::/48"))
    assert wide48.usage.size == 2**80 - 1  # the service saturates it at 2^64 - 1
    assert (await store.allocate("wide48", "a")).address == "fd00:48::2"
    with pytest.raises(errors.InvalidArgument, match="a /48 or longer"):
        pools.build_pool(pool_id="wide47", subnet="fd00:47::/47")


async def test_a_sparse_cursor_goes_round_the_range(store, redis_url):
    """At the range's last address the cursor starts again at its first; what was
    released by then is handed out again."""
    await store.create_pool(pools.build_pool(pool_id="edge", subnet="fd00:e::/64"))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        meta = pool_keys("edge")[0]
        last = client.hget(meta, "range_last")
        client.hset(meta, "cursor", last)  # as if 2^64 - 2 addresses had been handed out
    finally:
        client.close()
    assert (await store.allocate("edge", "a")).address == "fd00:e::ffff:ffff:ffff:ffff"
    # Round: the anycast address (::) is skipped, the gateway (::1) is held.
    assert (await store.allocate("edge", "b")).address == "fd00:e::2"
    check_pool(redis_url, "edge")
