"""Looks at Redis directly: pool consistency, and whole-database snapshots."""

from __future__ import annotations

import ipaddress

import redis

from ipam_service import pools
from ipam_service.store import pool_keys


def check_pool(redis_url: str, pool_id: str) -> dict[str, str]:
    """Asserts the pool's keys agree; returns address -> owner."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        meta_key, addresses_key, owners_key, holders_key, bitmap_key, order_key = pool_keys(pool_id)
        spec = pools.PoolSpec.from_meta(client.hgetall(meta_key))
        addresses = client.smembers(addresses_key)
        holders = client.hgetall(holders_key)
        owners = client.hgetall(owners_key)
        order = client.zrange(order_key, 0, -1)
    finally:
        client.close()
    raw_client = redis.Redis.from_url(redis_url)
    try:
        raw = raw_client.get(bitmap_key) or b""
    finally:
        raw_client.close()
    assert addresses == set(holders), "SET and address->owner HASH differ"
    in_order = [member.split(" ")[1] for member in order]
    assert in_order == sorted(holders, key=ipaddress.ip_address), "order index != holders"
    assert all(int(member.split(" ")[0], 16) == int(ipaddress.ip_address(member.split(" ")[1]))
               for member in order), "an order key is not its address"
    endpoint_holders = {a: o for a, o in holders.items() if o != pools.RESERVED_OWNER}
    assert owners == {o: a for a, o in endpoint_holders.items()}, "owner HASH is not the inverse"
    assert len(set(owners.values())) == len(owners), "an address is held by two owners"
    never = set(spec.unusable)
    if spec.sparse:  # no bitmap; nobody holds what nobody may
        assert raw == b"", "a sparse pool has a bitmap"
        assert not never & {ipaddress.ip_address(a) for a in holders}, "an unusable is held"
        return holders
    for bit in range(spec.range_size):
        address = spec.dynamic_range.network_address + bit
        is_set = bool(raw[bit // 8] >> (7 - bit % 8) & 1) if bit // 8 < len(raw) else False
        expected = str(address) in addresses or address in never
        assert is_set == expected, f"bitmap bit {bit} ({address}) is {is_set}, want {expected}"
    return holders


def snapshot(redis_url: str) -> dict:
    """Every key with its content, to prove a refused request changed nothing."""
    client = redis.Redis.from_url(redis_url)
    try:
        state = {}
        for key in sorted(client.keys("*")):
            kind = client.type(key)
            if kind == b"hash":
                state[key] = client.hgetall(key)
            elif kind == b"set":
                state[key] = client.smembers(key)
            elif kind == b"zset":
                state[key] = client.zrange(key, 0, -1, withscores=True)
            else:
                state[key] = client.get(key)
        return state
    finally:
        client.close()
