"""The Redis store and its Lua scripts against the session's real redis-server."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import time

import pytest
import redis

from cnm import errors
from ipam_service import pools
from ipam_service.store import INDEX_KEY, RedisStore, pool_keys, redact
from tests import support
from tests.ipam.consistency import check_pool, snapshot


@pytest.fixture
async def store(redis_url):
    opened = RedisStore.from_url(redis_url)
    yield opened
    await opened.close()


def spec(pool_id="p1", subnet="10.1.0.0/24", **kwargs) -> pools.PoolSpec:
    return pools.build_pool(pool_id=pool_id, subnet=subnet, **kwargs)


async def test_create_allocates_gateway_and_reserved(store, redis_url):
    stored = await store.create_pool(spec(reserved=["10.1.0.200"], labels={"env": "t"}))
    assert str(stored.spec.gateway) == "10.1.0.1"
    assert stored.usage.size == 254 and stored.usage.allocated == 2 and stored.usage.free == 252
    assert stored.create_time.endswith("Z")
    assert check_pool(redis_url, "p1") == {"10.1.0.1": "cnm:gateway", "10.1.0.200": "cnm:reserved"}


async def test_allocations_are_next_fit_and_idempotent_per_owner(store, redis_url):
    await store.create_pool(spec(subnet="10.1.0.0/29"))
    first = await store.allocate("p1", "a")
    assert (first.address, first.prefix_length, first.gateway, first.newly_allocated) == (
        "10.1.0.2",
        29,
        "10.1.0.1",
        True,
    )
    again = await store.allocate("p1", "a")
    assert again.address == "10.1.0.2" and not again.newly_allocated
    assert (await store.allocate("p1", "b")).address == "10.1.0.3"
    assert await store.release("p1", owner="a") == "10.1.0.2"
    # Next-fit: a freed address is not reused before the cursor wraps around.
    assert [(await store.allocate("p1", o)).address for o in "cde"] == [
        "10.1.0.4",
        "10.1.0.5",
        "10.1.0.6",
    ]
    assert (await store.allocate("p1", "f")).address == "10.1.0.2"
    with pytest.raises(errors.ResourceExhausted):
        await store.allocate("p1", "g")
    assert (await store.get_pool("p1")).usage.free == 0
    check_pool(redis_url, "p1")


async def test_allocation_draws_only_from_the_ip_range(store, redis_url):
    await store.create_pool(spec(subnet="10.2.0.0/16", ip_range="10.2.7.248/30"))
    got = [(await store.allocate("p1", f"o{i}")).address for i in range(4)]
    assert got == ["10.2.7.248", "10.2.7.249", "10.2.7.250", "10.2.7.251"]
    with pytest.raises(errors.ResourceExhausted):
        await store.allocate("p1", "o5")
    # A static address outside the range still works.
    static = await store.allocate("p1", "static", ipaddress.ip_address("10.2.0.9"))
    assert static.address == "10.2.0.9"
    assert await store.release("p1", address="10.2.0.9") == "10.2.0.9"
    check_pool(redis_url, "p1")


async def test_preferred_address(store, redis_url):
    await store.create_pool(spec())
    wanted = ipaddress.ip_address("10.1.0.50")
    assert (await store.allocate("p1", "a", wanted)).address == "10.1.0.50"
    assert (await store.allocate("p1", "a", wanted)).newly_allocated is False
    before = snapshot(redis_url)
    with pytest.raises(errors.AlreadyExists) as caught:
        await store.allocate("p1", "b", wanted)
    assert caught.value.reason == "ADDRESS_IN_USE" and "'a'" in caught.value.message
    with pytest.raises(errors.AlreadyExists) as caught:
        await store.allocate("p1", "a", ipaddress.ip_address("10.1.0.51"))
    assert caught.value.reason == "OWNER_HOLDS_OTHER_ADDRESS"
    for address in ("10.1.0.0", "10.1.0.255", "10.1.0.1", "10.9.9.9"):
        with pytest.raises(errors.InvalidArgument):
            await store.allocate("p1", "c", ipaddress.ip_address(address))
    assert snapshot(redis_url) == before
    # The dynamic allocator skips the static address.
    await store.create_pool(spec("p2", "10.3.0.0/29"))
    await store.allocate("p2", "s", ipaddress.ip_address("10.3.0.3"))
    assert [(await store.allocate("p2", o)).address for o in "xyz"] == [
        "10.3.0.2",
        "10.3.0.4",
        "10.3.0.5",
    ]
    check_pool(redis_url, "p1")
    check_pool(redis_url, "p2")


async def test_release_of_free_or_unknown_changes_nothing(store, redis_url):
    await store.create_pool(spec())
    await store.allocate("p1", "a")
    before = snapshot(redis_url)
    assert await store.release("p1", address="10.1.0.99") == ""
    assert await store.release("p1", owner="nobody") == ""
    assert snapshot(redis_url) == before
    with pytest.raises(errors.FailedPrecondition):
        await store.release("p1", address="10.1.0.1")
    assert snapshot(redis_url) == before
    with pytest.raises(errors.NotFound):
        await store.release("nope", owner="a")


async def test_an_address_is_handed_between_owners_never_free_in_between(store, redis_url):
    await store.create_pool(spec())
    held = (await store.allocate("p1", "reservation")).address
    other = (await store.allocate("p1", "other")).address
    assert await store.transfer("p1", held, "reservation", "endpoint") == (24, "10.1.0.1")
    assert check_pool(redis_url, "p1")[held] == "endpoint"
    assert (await store.allocate("p1", "endpoint")).address == held  # the owner holds it
    # Repeated: already done. Refused, changing nothing: the old owner does not hold it,
    # the new owner holds another, a free address, the gateway, no such pool.
    before = snapshot(redis_url)
    assert await store.transfer("p1", held, "reservation", "endpoint") == (24, "10.1.0.1")
    with pytest.raises(errors.FailedPrecondition) as caught:
        await store.transfer("p1", held, "reservation", "third")
    assert caught.value.reason == "ADDRESS_NOT_HELD"
    with pytest.raises(errors.AlreadyExists):
        await store.transfer("p1", held, "endpoint", "other")
    for address, owner in (("10.1.0.99", "nobody"), ("10.1.0.1", "cnm:gateway")):
        with pytest.raises(errors.FailedPrecondition):
            await store.transfer("p1", address, owner if owner == "nobody" else "x", "y")
    with pytest.raises(errors.NotFound):
        await store.transfer("nope", held, "endpoint", "y")
    assert snapshot(redis_url) == before
    assert await store.transfer("p1", held, "endpoint", "reservation") == (24, "10.1.0.1")
    assert await store.release("p1", owner="reservation") == held
    assert other in check_pool(redis_url, "p1")


async def test_a_prefix_owner_names_each_address_it_holds(store, redis_url):
    await store.create_pool(spec(subnet="10.1.0.0/29"))
    first = await store.allocate("p1", "held:h1:", owner_is_prefix=True)
    second = await store.allocate("p1", "held:h1:", owner_is_prefix=True)
    assert first.address != second.address and first.newly_allocated
    static = await store.allocate("p1", "held:h1:", ipaddress.ip_address("10.1.0.6"),
                                  owner_is_prefix=True)
    again = await store.allocate("p1", "held:h1:", ipaddress.ip_address("10.1.0.6"),
                                 owner_is_prefix=True)
    assert (static.address, again.address, again.newly_allocated) == ("10.1.0.6", "10.1.0.6",
                                                                       False)
    with pytest.raises(errors.AlreadyExists):
        await store.allocate("p1", "held:h2:", ipaddress.ip_address("10.1.0.6"),
                             owner_is_prefix=True)
    assert {owner: address for address, owner in check_pool(redis_url, "p1").items()
            if owner.startswith("held:")} == {
        f"held:h1:{a}": a for a in (first.address, second.address, "10.1.0.6")}
    assert await store.release("p1", owner=f"held:h1:{first.address}") == first.address


async def test_batch_is_all_or_nothing(store, redis_url):
    await store.create_pool(spec(subnet="10.1.0.0/28"))  # 13 dynamic addresses
    await store.allocate("p1", "held")
    batch = await store.allocate_batch("p1", ["held", "n1", "n2"])
    assert batch.addresses == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert (batch.prefix_length, batch.gateway) == (28, "10.1.0.1")
    before = snapshot(redis_url)
    with pytest.raises(errors.ResourceExhausted) as caught:
        await store.allocate_batch("p1", [f"x{i}" for i in range(11)])
    assert caught.value.metadata == {"pool_id": "p1", "free": "10", "needed": "11"}
    assert snapshot(redis_url) == before
    batch = await store.allocate_batch("p1", [f"x{i}" for i in range(10)])
    assert len(set(batch.addresses)) == 10
    assert (await store.get_pool("p1")).usage.free == 0
    check_pool(redis_url, "p1")


async def test_overlap_names_the_clashing_pool_and_changes_nothing(store, redis_url):
    await store.create_pool(spec("first", "10.1.0.0/24"))
    before = snapshot(redis_url)
    for subnet in ("10.0.0.0/8", "10.1.0.128/25", "10.1.0.0/24"):
        with pytest.raises(errors.AlreadyExists) as caught:
            await store.create_pool(spec("second", subnet))
        assert caught.value.reason == "SUBNET_OVERLAP"
        assert "'first' (10.1.0.0/24)" in caught.value.message
        assert caught.value.metadata["clashing_pool_id"] == "first"
    assert snapshot(redis_url) == before
    # Adjacent subnets do not overlap.
    await store.create_pool(spec("below", "10.0.255.0/24"))
    await store.create_pool(spec("above", "10.1.1.0/24"))


async def test_recreate_identical_returns_it_different_refused(store, redis_url):
    created = await store.create_pool(spec(labels={"a": "1"}))
    await store.allocate("p1", "a")
    again = await store.create_pool(spec(labels={"a": "1"}))
    assert again.create_time == created.create_time and again.usage.allocated == 2
    before = snapshot(redis_url)
    for different in (
        spec(labels={"a": "2"}),
        spec(gateway="10.1.0.254"),
        spec("p1", "10.9.0.0/24"),
    ):
        with pytest.raises(errors.AlreadyExists) as caught:
            await store.create_pool(different)
        assert caught.value.reason == "POOL_EXISTS"
    assert snapshot(redis_url) == before


async def test_index_entry_without_pool_keys_is_completed_by_identical_create(store, redis_url):
    wanted = spec()
    family, first, last, fingerprint = wanted.index_entry().split()
    # The state a crash between the two steps of create leaves behind.
    await store._index_reserve(keys=[INDEX_KEY], args=["p1", family, first, last, fingerprint])
    with pytest.raises(errors.NotFound):
        await store.get_pool("p1")
    assert await store.list_pools() == []
    with pytest.raises(errors.AlreadyExists):
        await store.create_pool(spec("other", "10.1.0.0/16"))
    stored = await store.create_pool(wanted)
    assert stored.usage.allocated == 1
    check_pool(redis_url, "p1")


async def test_failed_second_step_undoes_the_index_entry(store, redis_url, monkeypatch):
    async def broken(**kwargs):
        raise redis.exceptions.ConnectionError("injected failure")

    monkeypatch.setattr(store, "_create", broken)
    with pytest.raises(errors.Unavailable):
        await store.create_pool(spec())
    assert snapshot(redis_url) == {}


async def test_delete_refused_while_in_use_unless_forced(store, redis_url):
    await store.create_pool(spec(reserved=["10.1.0.9"]))
    await store.allocate("p1", "a")
    before = snapshot(redis_url)
    with pytest.raises(errors.FailedPrecondition) as caught:
        await store.delete_pool("p1", force=False)
    assert caught.value.metadata["allocated"] == "1"
    assert snapshot(redis_url) == before
    await store.release("p1", owner="a")
    await store.delete_pool("p1", force=False)  # only gateway and reserved remain
    assert snapshot(redis_url) == {}
    await store.delete_pool("p1", force=False)  # deleting a missing pool succeeds
    await store.create_pool(spec())
    await store.allocate("p1", "a")
    await store.delete_pool("p1", force=True)
    assert snapshot(redis_url) == {}
    with pytest.raises(errors.NotFound):
        await store.allocate("p1", "a")
    # The subnet is free again.
    await store.create_pool(spec("p2", "10.1.0.0/16"))


async def test_list_pools_and_allocations_are_ordered(store):
    await store.create_pool(spec("b", "10.2.0.0/24"))
    await store.create_pool(spec("a", "10.1.0.0/24"))
    assert [p.spec.pool_id for p in await store.list_pools()] == ["a", "b"]
    await store.allocate("a", "x", ipaddress.ip_address("10.1.0.10"))
    await store.allocate("a", "y", ipaddress.ip_address("10.1.0.9"))
    assert await store.list_allocations("a") == [
        ("10.1.0.1", "cnm:gateway"),
        ("10.1.0.9", "y"),
        ("10.1.0.10", "x"),
    ]
    with pytest.raises(errors.NotFound):
        await store.list_allocations("zzz")


async def test_two_stores_racing_never_share_an_address(redis_url):
    first, second = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    try:
        await first.create_pool(spec(subnet="10.1.0.0/23"))  # 509 dynamic addresses
        results = await asyncio.gather(
            *[(first if i % 2 else second).allocate("p1", f"o{i}") for i in range(600)],
            return_exceptions=True,
        )
    finally:
        await first.close()
        await second.close()
    addresses = [r.address for r in results if not isinstance(r, BaseException)]
    exhausted = [r for r in results if isinstance(r, errors.ResourceExhausted)]
    assert len(addresses) == 509 == len(set(addresses))
    assert len(exhausted) == 91
    assert len(check_pool(redis_url, "p1")) == 510


async def test_large_pool_wraps_around_at_high_fill(store, redis_url):
    await store.create_pool(spec(subnet="10.8.0.0/20"))  # 4093 dynamic addresses
    owners = [f"o{i}" for i in range(4093)]
    for start in range(0, len(owners), 1000):
        await store.allocate_batch("p1", owners[start : start + 1000])
    for owner in owners[::7]:
        await store.release("p1", owner=owner)
    freed = len(owners[::7])
    again = await store.allocate_batch("p1", [f"n{i}" for i in range(freed)])
    assert len(set(again.addresses)) == freed
    with pytest.raises(errors.ResourceExhausted):
        await store.allocate("p1", "one-too-many")
    assert len(check_pool(redis_url, "p1")) == 4094


async def test_unreachable_redis_is_unavailable():
    store = RedisStore.from_url("redis://:secret@127.0.0.1:1/0", timeout=0.5)
    try:
        with pytest.raises(errors.Unavailable) as caught:
            await store.get_pool("p1")
        assert "secret" not in caught.value.message
        assert "get pool 'p1'" in caught.value.message
        assert not await _ping_quietly(store)
    finally:
        await store.close()


async def _ping_quietly(store: RedisStore) -> bool:
    try:
        return await store.ping()
    except errors.Unavailable:
        return False


def test_redact():
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_keys_share_one_hash_tag():
    assert {key.split("}")[0] for key in pool_keys("net-1")} == {"cnm:ipam:{net-1"}


async def test_create_racing_a_delete_of_the_same_id_stays_indexed(store, redis_url, monkeypatch):
    await store.create_pool(spec())
    other = RedisStore.from_url(redis_url)
    release = store._index_release

    async def create_between_delete_steps(**kwargs):
        # The delete has removed the pool keys; a create of the same id lands now.
        await other.create_pool(spec())
        return await release(**kwargs)

    monkeypatch.setattr(store, "_index_release", create_between_delete_steps)
    try:
        await store.delete_pool("p1", force=False)
    finally:
        await other.close()
    assert [p.spec.pool_id for p in await store.list_pools()] == ["p1"]
    with pytest.raises(errors.AlreadyExists) as caught:
        await store.create_pool(spec("p2", "10.1.0.0/16"))
    assert caught.value.reason == "SUBNET_OVERLAP"


async def test_url_forms_pick_the_right_client():
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import SentinelConnectionPool

    from cnm.redis_client import connect

    unix = connect("unix:///tmp/redis.sock?db=2")
    assert unix.connection_pool.connection_kwargs["path"] == "/tmp/redis.sock"
    await unix.aclose()
    sentinel = connect("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/3")
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "mymaster"
    assert sentinel.connection_pool.connection_kwargs["db"] == 3
    assert sentinel.connection_pool.connection_kwargs["password"] == "pw"
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinel.connection_pool.sentinel_manager.sentinels
    ] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    await sentinel.aclose()
    assert isinstance(connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7001"), RedisCluster)
    for bad in ("http://h:1", "redis+sentinel://h:1"):
        with pytest.raises(ValueError):
            connect(bad)


async def test_hung_redis_times_out_as_unavailable_then_recovers(tmp_path):
    redis_server = support.RedisServer(tmp_path / "redis").start()
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    try:
        await store.create_pool(spec())
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(errors.Unavailable) as caught:
                await store.allocate("p1", "a")
            assert "Timeout" in caught.value.message
            assert time.monotonic() - started < 10
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert (await store.allocate("p1", "a")).address == "10.1.0.2"
    finally:
        await store.close()
        redis_server.stop()


async def test_list_pools_with_more_pools_than_connections(redis_url):
    from cnm.redis_client import connect
    from ipam_service.store import LIST_CONCURRENCY

    count = 3 * LIST_CONCURRENCY
    small = RedisStore(connect(redis_url, max_connections=LIST_CONCURRENCY + 8), redis_url)
    try:
        for index in range(count):
            await small.create_pool(spec(f"p{index:03d}", f"10.{index}.0.0/24"))
        listed = await small.list_pools()
        assert [p.spec.pool_id for p in listed] == [f"p{index:03d}" for index in range(count)]
    finally:
        await small.close()


async def test_static_allocation_reads_only_the_pool_parameters(store, monkeypatch):
    await store.create_pool(spec("big", "10.0.0.0/8"))

    async def no_bitmap_count(*args, **kwargs):
        raise AssertionError("GET_POOL (BITCOUNT over the bitmap) run for a static address")

    monkeypatch.setattr(store, "_get", no_bitmap_count)
    got = await store.allocate("big", "x", ipaddress.ip_address("10.200.0.9"))
    assert got.address == "10.200.0.9" and got.newly_allocated
    with pytest.raises(errors.InvalidArgument):
        await store.allocate("big", "y", ipaddress.ip_address("10.0.0.0"))
    with pytest.raises(errors.NotFound):
        await store.allocate("nope", "y", ipaddress.ip_address("10.0.0.9"))


async def test_index_entry_left_by_a_cut_short_create_is_collected_once_stale(store, redis_url):
    from ipam_service.store import INDEX_KEYS, INDEX_TIMES_KEY

    family, first, last, fingerprint = spec().index_entry().split()
    await store._index_reserve(keys=INDEX_KEYS, args=["p1", family, first, last, fingerprint])
    assert await store.list_pools() == []
    # Fresh: it may be a create in flight, so it keeps its subnet.
    with pytest.raises(errors.AlreadyExists):
        await store.create_pool(spec("other", "10.1.0.0/16"))
    direct = redis.Redis.from_url(redis_url)
    try:
        direct.hset(INDEX_TIMES_KEY, "p1", 0)  # made long ago: a create that died
        assert await store.list_pools() == []
        assert direct.hget(INDEX_KEY, "p1") is None and direct.hget(INDEX_TIMES_KEY, "p1") is None
        await store.create_pool(spec("other", "10.1.0.0/16"))
        # An entry from before times were kept gets one, and is kept for now.
        family, first, last, fingerprint = spec("p3", "10.3.0.0/24").index_entry().split()
        await store._index_reserve(keys=[INDEX_KEY], args=["p3", family, first, last,
                                                           fingerprint])
        assert [p.spec.pool_id for p in await store.list_pools()] == ["other"]
        assert direct.hget(INDEX_KEY, "p3") is not None
        assert direct.hget(INDEX_TIMES_KEY, "p3") is not None
    finally:
        direct.close()
