"""The gRPC face of IPAM: proto messages in, validation, the store, proto out."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from cnm import errors, pagination, server
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.tls import Tls
from ipam_service import access, pools
from ipam_service.store import RedisStore, StoredPool, Usage

SERVICE_NAME = ipam_pb2.DESCRIPTOR.services_by_name["IpamService"].full_name
# An allocation listing's page token continues after an address's order key (hex).
_ORDER_KEY = re.compile(r"[0-9a-f]{8}|[0-9a-f]{32}")


UINT64_MAX = 2**64 - 1


def _usage_message(usage: Usage) -> ipam_pb2.PoolUsage:
    """The counts, saturated at 2^64 - 1 (an IPv6 /48 holds 2^80 addresses)."""
    return ipam_pb2.PoolUsage(size=min(usage.size, UINT64_MAX),
                              allocated=min(usage.allocated, UINT64_MAX),
                              free=min(usage.free, UINT64_MAX))


def pool_message(stored: StoredPool) -> ipam_pb2.Pool:
    spec = stored.spec
    message = ipam_pb2.Pool(
        pool_id=spec.pool_id,
        subnet=str(spec.subnet),
        gateway=str(spec.gateway),
        ip_range=str(spec.ip_range) if spec.ip_range else "",
        reserved_addresses=[str(address) for address in spec.reserved],
        labels=dict(spec.labels),
        family=ipam_pb2.IP_FAMILY_IPV4 if spec.family == 4 else ipam_pb2.IP_FAMILY_IPV6,
        usage=_usage_message(stored.usage),
    )
    message.create_time.FromJsonString(stored.create_time)
    return message


class IpamService(ipam_pb2_grpc.IpamServiceServicer):
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def CreatePool(self, request, context):
        pool = request.pool
        spec = pools.build_pool(
            pool_id=pool.pool_id,
            subnet=pool.subnet,
            gateway=pool.gateway,
            ip_range=pool.ip_range,
            reserved=pool.reserved_addresses,
            labels=pool.labels,
        )
        return ipam_pb2.CreatePoolResponse(pool=pool_message(await self.store.create_pool(spec)))

    async def GetPool(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        return ipam_pb2.GetPoolResponse(pool=pool_message(await self.store.get_pool(pool_id)))

    async def ListPools(self, request, context):
        page = pagination.paginate(await self.store.list_pools(), request,
                                   key=lambda pool: pool.spec.pool_id)
        return ipam_pb2.ListPoolsResponse(pools=[pool_message(pool) for pool in page.items],
                                          next_page_token=page.next_page_token)

    async def DeletePool(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        await self.store.delete_pool(pool_id, force=request.force)
        return ipam_pb2.DeletePoolResponse()

    async def AllocateAddress(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        owner = pools.check_owner(request.owner)
        preferred = None
        if request.preferred_address:
            preferred = pools.parse_address(request.preferred_address, "preferred address")
        allocated = await self.store.allocate(pool_id, owner, preferred,
                                              owner_is_prefix=request.owner_is_prefix)
        return ipam_pb2.AllocateAddressResponse(
            address=allocated.address,
            prefix_length=allocated.prefix_length,
            gateway=allocated.gateway,
            newly_allocated=allocated.newly_allocated,
        )

    async def BatchAllocateAddresses(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        owners = pools.check_owners(request.owners)
        batch = await self.store.allocate_batch(pool_id, owners)
        return ipam_pb2.BatchAllocateAddressesResponse(
            allocations=[
                ipam_pb2.Allocation(address=address, owner=owner)
                for owner, address in zip(owners, batch.addresses, strict=True)
            ]
        )

    async def ReleaseAddress(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        target = request.WhichOneof("target")
        if target == "owner":
            released = await self.store.release(pool_id, owner=pools.check_owner(request.owner))
        elif target == "address":
            address = pools.parse_address(request.address, "address")
            released = await self.store.release(pool_id, address=str(address))
        else:
            raise errors.InvalidArgument(
                "give the address or the owner to release", reason="TARGET_REQUIRED"
            )
        return ipam_pb2.ReleaseAddressResponse(address=released)

    async def TransferAddress(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        address = pools.parse_address(request.address, "address")
        prefix_length, gateway = await self.store.transfer(
            pool_id, str(address), pools.check_owner(request.from_owner),
            pools.check_owner(request.to_owner))
        return ipam_pb2.TransferAddressResponse(prefix_length=prefix_length, gateway=gateway)

    async def ListAllocations(self, request, context):
        pool_id = pools.check_pool_id(request.pool_id)
        where = pagination.cursor(request)
        if where.after is not None and not _ORDER_KEY.fullmatch(str(where.after)):
            raise errors.InvalidArgument("page_token does not belong to this listing",
                                         reason="INVALID_PAGE_TOKEN", field="page_token")
        page = await self.store.allocations_page(pool_id, where.after or "", where.size)
        return ipam_pb2.ListAllocationsResponse(
            allocations=[ipam_pb2.Allocation(address=address, owner=owner)
                         for address, owner in page.rows],
            next_page_token=where.next_token(page.after) if page.after else "",
        )


@dataclass
class IpamServer:
    """A running IPAM server and its store; ``stop`` closes both."""

    running: server.Server
    store: RedisStore

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float = 1.0) -> None:
        await self.running.stop(grace)
        await self.store.close()


async def serve(listen: str, redis_url: str, logger: logging.Logger,
                tls: Tls | None = None, insecure: bool = False,
                socket_group: str = "", metrics_listen: str = "",
                otlp_endpoint: str = "") -> IpamServer:
    """Starts the IPAM server on ``listen`` against ``redis_url``; the caller stops it."""
    store = RedisStore.from_url(redis_url)

    async def redis_answers() -> bool:
        return await store.ping()

    running = await server.start(
        listen=listen,
        services=[
            (ipam_pb2_grpc.add_IpamServiceServicer_to_server, IpamService(store), SERVICE_NAME)
        ],
        logger=logger,
        readiness=redis_answers,
        tls=tls,
        policy=access.POLICY,
        insecure=insecure,
        socket_group=socket_group, metrics_listen=metrics_listen,
        otlp_endpoint=otlp_endpoint, service="ipam",
    )
    return IpamServer(running, store)
