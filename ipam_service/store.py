"""The Redis store of pools and allocations.

Redis is the only state: every method is one or two round trips, every
multi-key change one Lua script (see :mod:`ipam_service.lua`), so any number
of IPAM processes may share one Redis. Every script is idempotent, which is
what makes redis-py's retry after a lost reply safe.

Keys, hash-tagged so that a pool's keys share one Cluster slot::

    cnm:ipam:{<pool-id>}:meta | :addresses | :owners | :holders | :bitmap | :order
    cnm:ipam:{pools}:index        HASH pool id -> "family first_hex last_hex fingerprint"
    cnm:ipam:{pools}:index-times  HASH pool id -> when its index entry was made (unix s)

Redis URLs: every form :mod:`cnm.redis_client` accepts (plain, TLS, unix,
Sentinel, Cluster).

Needs Redis 7.0 or later (BITPOS and BITCOUNT with BIT ranges).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import Histogram
from redis.asyncio.cluster import RedisCluster

from cnm import errors
from cnm.redis_client import connect, redact, unavailable
from ipam_service import lua
from ipam_service.pools import Address, PoolSpec

INDEX_KEY = "cnm:ipam:{pools}:index"
INDEX_TIMES_KEY = "cnm:ipam:{pools}:index-times"
INDEX_KEYS = [INDEX_KEY, INDEX_TIMES_KEY]
# An index entry without pool keys older than this was left by a create or
# delete cut short (each takes milliseconds); list_pools removes it.
STALE_INDEX_SECONDS = 60
LIST_CONCURRENCY = 64
# Allocations read per script call when listing a whole pool.
LIST_PAGE = 1000


def pool_keys(pool_id: str) -> list[str]:
    """meta, addresses, owners, holders, bitmap, order: as every per-pool script takes them."""
    prefix = f"cnm:ipam:{{{pool_id}}}"
    return [f"{prefix}:{part}"
            for part in ("meta", "addresses", "owners", "holders", "bitmap", "order")]


@dataclass(frozen=True)
class Usage:
    size: int
    allocated: int
    free: int


@dataclass(frozen=True)
class AllocationsPage:
    rows: list[tuple[str, str]]  # (address, owner)
    after: str  # the order key to continue after; "" on the last page


@dataclass(frozen=True)
class StoredPool:
    spec: PoolSpec
    create_time: str
    usage: Usage


@dataclass(frozen=True)
class Allocated:
    address: str
    prefix_length: int
    gateway: str
    newly_allocated: bool


@dataclass(frozen=True)
class Batch:
    addresses: list[str]
    prefix_length: int
    gateway: str


def _pool_not_found(pool_id: str) -> errors.NotFound:
    return errors.NotFound(f"pool {pool_id!r} not found", reason="POOL_NOT_FOUND", pool_id=pool_id)


def _subnet_of_entry(entry: str) -> str:
    family, first, last, *_ = entry.split()
    address = ipaddress.IPv4Address if family == "4" else ipaddress.IPv6Address
    networks = ipaddress.summarize_address_range(address(int(first, 16)), address(int(last, 16)))
    return ", ".join(map(str, networks))


ALLOCATE_SECONDS = Histogram(
    "cnm_ipam_allocate_redis_seconds",
    "Round trip of one allocation's script to Redis (the allocation itself, atomic there)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))


class RedisStore:
    """Pools and allocations in Redis; stateless apart from the client."""

    def __init__(self, client: aioredis.Redis | RedisCluster, where: str) -> None:
        self.client = client
        self.where = where
        register = client.register_script
        self._index_reserve = register(lua.INDEX_RESERVE)
        self._index_release = register(lua.INDEX_RELEASE)
        self._index_collect = register(lua.INDEX_COLLECT)
        self._create = register(lua.CREATE_POOL)
        self._get = register(lua.GET_POOL)
        self._delete = register(lua.DELETE_POOL)
        self._allocate = register(lua.ALLOCATE)
        self._batch = register(lua.BATCH_ALLOCATE)
        self._release = register(lua.RELEASE)
        self._transfer = register(lua.TRANSFER)
        self._list_allocations = register(lua.LIST_ALLOCATIONS)

    @classmethod
    def from_url(cls, url: str, timeout: float = 2.0) -> RedisStore:
        return cls(connect(url, timeout), redact(url))

    async def close(self) -> None:
        await self.client.aclose()

    def _redis(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return unavailable(doing, self.where)

    async def ping(self) -> bool:
        with self._redis("ping"):
            return bool(await self.client.ping())

    async def create_pool(self, spec: PoolSpec) -> StoredPool:
        """Reserves the subnet in the overlap index, then writes the pool keys."""
        doing = f"create pool {spec.pool_id!r}"
        entry = spec.index_entry()
        family, first, last, fingerprint = entry.split()
        with self._redis(doing):
            reply = await self._index_reserve(
                keys=INDEX_KEYS, args=[spec.pool_id, family, first, last, fingerprint]
            )
        if reply[0] == "overlap":
            other_id, other_entry = reply[1], reply[2]
            raise errors.AlreadyExists(
                f"subnet {spec.subnet} overlaps pool {other_id!r} ({_subnet_of_entry(other_entry)})",
                reason="SUBNET_OVERLAP",
                pool_id=spec.pool_id,
                clashing_pool_id=other_id,
                clashing_subnet=_subnet_of_entry(other_entry),
            )
        if reply[0] == "different":
            raise self._exists_differently(spec)
        reserved_by_us = reply[0] == "reserved"
        meta = spec.to_meta(
            datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z")
        )
        args: list[object] = [fingerprint, 2 * len(meta)]
        for field, value in meta.items():
            args += [field, value]
        bits = spec.bits_taken_at_creation()
        args += [0 if spec.sparse else spec.range_size, len(bits), *bits]
        for address, owner in spec.taken_at_creation():
            args += [address, owner]
        try:
            with self._redis(doing):
                outcome = await self._create(keys=pool_keys(spec.pool_id), args=args)
        except BaseException:
            if reserved_by_us:
                await self._undo_index_entry(spec, entry)
            raise
        if outcome == "different":
            if reserved_by_us:
                await self._undo_index_entry(spec, entry)
            raise self._exists_differently(spec)
        return await self.get_pool(spec.pool_id)

    def _exists_differently(self, spec: PoolSpec) -> errors.AlreadyExists:
        return errors.AlreadyExists(
            f"pool {spec.pool_id!r} already exists with different parameters",
            reason="POOL_EXISTS",
            pool_id=spec.pool_id,
        )

    async def _undo_index_entry(self, spec: PoolSpec, entry: str) -> None:
        """Drops our index entry unless the pool keys made it (a lost reply is not a failure).

        Best effort: if Redis is gone, the entry stays and a repeated identical
        create completes the pool, or a delete removes the entry.
        """
        with contextlib.suppress(redis.exceptions.RedisError):
            meta_key = pool_keys(spec.pool_id)[0]
            if await self.client.hget(meta_key, "fingerprint") != spec.fingerprint():
                await self._index_release(keys=INDEX_KEYS, args=[spec.pool_id, entry])

    async def get_pool(self, pool_id: str) -> StoredPool:
        meta_key, addresses_key, _, _, bitmap_key, _ = pool_keys(pool_id)
        with self._redis(f"get pool {pool_id!r}"):
            reply = await self._get(keys=[meta_key, addresses_key, bitmap_key])
        if not reply:
            raise _pool_not_found(pool_id)
        flat, allocated, free = reply
        meta = dict(zip(flat[::2], flat[1::2], strict=True))
        spec = PoolSpec.from_meta(meta)
        if free < 0:  # a sparse pool: counted here, its size being no Lua number
            inside = sum(1 for address in spec.unusable if address in spec.dynamic_range)
            free = spec.range_size - inside - allocated
        return StoredPool(spec, meta["create_time"], Usage(spec.usable_size, allocated, free))

    async def get_spec(self, pool_id: str) -> PoolSpec:
        """The pool's parameters alone: no bitmap count (up to 2 MiB) as in get_pool."""
        with self._redis(f"get pool {pool_id!r}"):
            meta = await self.client.hgetall(pool_keys(pool_id)[0])
        if not meta:
            raise _pool_not_found(pool_id)
        return PoolSpec.from_meta(meta)

    async def list_pools(self) -> list[StoredPool]:
        with self._redis("list pools"):
            index = await self.client.hgetall(INDEX_KEY)
        pool_ids = sorted(index)
        # Bounded: one connection per read in flight, and the client's pool is finite.
        limit = asyncio.Semaphore(LIST_CONCURRENCY)

        async def get(pool_id: str) -> StoredPool:
            async with limit:
                return await self.get_pool(pool_id)

        found = await asyncio.gather(*(get(pool_id) for pool_id in pool_ids),
                                     return_exceptions=True)
        pools = []
        for pool_id, result in zip(pool_ids, found, strict=True):
            # An index entry without pool keys is a create in flight, or a
            # create or delete cut short: that one would block its subnet forever.
            if isinstance(result, errors.NotFound):
                with self._redis(f"collect index entry of pool {pool_id!r}"):
                    await self._index_collect(
                        keys=INDEX_KEYS, args=[pool_id, index[pool_id], STALE_INDEX_SECONDS])
                continue
            if isinstance(result, BaseException):
                raise result
            pools.append(result)
        return pools

    async def delete_pool(self, pool_id: str, force: bool) -> None:
        """Deletes the pool keys, then the index entry (so a crash never hides a pool)."""
        doing = f"delete pool {pool_id!r}"
        with self._redis(doing):
            status, held = await self._delete(keys=pool_keys(pool_id), args=["1" if force else "0"])
        if status == "in_use":
            raise errors.FailedPrecondition(
                f"pool {pool_id!r} still has {held} allocated address(es); release them or "
                "delete with force",
                reason="POOL_IN_USE",
                pool_id=pool_id,
                allocated=held,
            )
        with self._redis(doing):
            await self._index_release(keys=INDEX_KEYS, args=[pool_id, ""])
            # A create of the same id may have slipped in between the two
            # steps (index and keys live in different slots): keep it indexed.
            if await self.client.exists(pool_keys(pool_id)[0]):
                with contextlib.suppress(errors.NotFound):
                    spec = (await self.get_pool(pool_id)).spec
                    family, first, last, fingerprint = spec.index_entry().split()
                    await self._index_reserve(
                        keys=INDEX_KEYS, args=[pool_id, family, first, last, fingerprint]
                    )

    async def allocate(
        self,
        pool_id: str,
        owner: str,
        preferred: Address | None = None,
        owner_is_prefix: bool = False,
    ) -> Allocated:
        doing = f"allocate an address in pool {pool_id!r} for {owner!r}"
        fingerprint = ""
        if preferred is not None:
            spec = await self.get_spec(pool_id)
            spec.check_preferred(preferred)
            fingerprint = spec.fingerprint()
        started = time.perf_counter()
        with self._redis(doing):
            reply = await self._allocate(
                keys=pool_keys(pool_id),
                args=[owner, str(preferred) if preferred else "", fingerprint,
                      "1" if owner_is_prefix else "0"],
            )
        ALLOCATE_SECONDS.observe(time.perf_counter() - started)
        status = reply[0]
        if status == "ok":
            return Allocated(reply[1], int(reply[3]), reply[4], bool(reply[2]))
        if status in ("not_found", "changed"):
            raise _pool_not_found(pool_id)
        if status == "exhausted":
            raise errors.ResourceExhausted(
                f"pool {pool_id!r} has no free address", reason="POOL_EXHAUSTED", pool_id=pool_id
            )
        if status == "taken":
            raise errors.AlreadyExists(
                f"address {preferred} in pool {pool_id!r} is held by {reply[1]!r}",
                reason="ADDRESS_IN_USE",
                address=preferred,
                owner=reply[1],
            )
        if status == "owner_holds":
            raise errors.AlreadyExists(
                f"owner {owner!r} already holds {reply[1]} in pool {pool_id!r}, not {preferred}",
                reason="OWNER_HOLDS_OTHER_ADDRESS",
                owner=owner,
                address=reply[1],
            )
        raise errors.Internal(f"{doing}: unexpected script reply {reply!r}")

    async def allocate_batch(self, pool_id: str, owners: list[str]) -> Batch:
        doing = f"allocate {len(owners)} addresses in pool {pool_id!r}"
        with self._redis(doing):
            reply = await self._batch(keys=pool_keys(pool_id), args=owners)
        if reply[0] == "not_found":
            raise _pool_not_found(pool_id)
        if reply[0] == "exhausted":
            raise errors.ResourceExhausted(
                f"pool {pool_id!r} has {reply[1]} free address(es), {reply[2]} needed",
                reason="POOL_EXHAUSTED",
                pool_id=pool_id,
                free=reply[1],
                needed=reply[2],
            )
        return Batch(addresses=list(reply[3:]), prefix_length=int(reply[1]), gateway=reply[2])

    async def release(self, pool_id: str, *, address: str = "", owner: str = "") -> str:
        """Releases by address or by owner; '' when nothing was held."""
        mode, value = ("owner", owner) if owner else ("address", address)
        doing = f"release {mode} {value!r} in pool {pool_id!r}"
        with self._redis(doing):
            reply = await self._release(keys=pool_keys(pool_id), args=[mode, value])
        if reply[0] == "not_found":
            raise _pool_not_found(pool_id)
        if reply[0] == "protected":
            what = "gateway" if reply[1] == "cnm:gateway" else "a reserved address"
            raise errors.FailedPrecondition(
                f"address {value} is the {what} of pool {pool_id!r}; it lives as long as the pool",
                reason="ADDRESS_PROTECTED",
                address=value,
            )
        return reply[1] if reply[0] == "released" else ""

    async def transfer(self, pool_id: str, address: str, from_owner: str,
                       to_owner: str) -> tuple[int, str]:
        """Hands ``address`` from ``from_owner`` to ``to_owner`` (already done: fine);
        returns the pool's (prefix length, gateway)."""
        doing = f"hand {address} in pool {pool_id!r} from {from_owner!r} to {to_owner!r}"
        with self._redis(doing):
            reply = await self._transfer(keys=pool_keys(pool_id),
                                         args=[address, from_owner, to_owner])
        if reply[0] == "ok":
            return int(reply[1]), reply[2]
        if reply[0] == "not_found":
            raise _pool_not_found(pool_id)
        if reply[0] == "not_held":
            held = f"held by {reply[1]!r}" if reply[1] else "not allocated"
            raise errors.FailedPrecondition(
                f"address {address} in pool {pool_id!r} is {held}, not by {from_owner!r}",
                reason="ADDRESS_NOT_HELD", address=address, owner=reply[1])
        if reply[0] == "owner_holds":
            raise errors.AlreadyExists(
                f"owner {to_owner!r} already holds {reply[1]} in pool {pool_id!r}",
                reason="OWNER_HOLDS_OTHER_ADDRESS", owner=to_owner, address=reply[1])
        raise errors.Internal(f"{doing}: unexpected script reply {reply!r}")

    async def allocations_page(self, pool_id: str, after: str, size: int) -> AllocationsPage:
        """Up to ``size`` allocations in address order, after the address whose order key
        is ``after`` ("" for the first page)."""
        with self._redis(f"list allocations of pool {pool_id!r}"):
            reply = await self._list_allocations(keys=pool_keys(pool_id), args=[after, size])
        if reply is None:
            raise _pool_not_found(pool_id)
        rows = [(address, owner) for address, owner in zip(reply[2::3], reply[3::3], strict=True)]
        return AllocationsPage(rows, reply[-3] if reply[0] else "")

    async def list_allocations(self, pool_id: str) -> list[tuple[str, str]]:
        """Every allocation of a pool, in address order."""
        rows, after = [], ""
        while True:
            page = await self.allocations_page(pool_id, after, LIST_PAGE)
            rows += page.rows
            if not page.after:
                return rows
            after = page.after

