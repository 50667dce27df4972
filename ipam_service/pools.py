"""Pool validation and address math, with no I/O.

Everything a request can get wrong is checked here, before Redis is
touched. A pool's addresses are numbered by their offset from the start of
its *dynamic range* (the ip range, or the whole subnet): offset ``i`` is bit
``i`` of the pool's bitmap in Redis. Static (preferred) addresses may lie
anywhere in the subnet; those outside the range have no bit.

IPv4 and IPv6 pools are both supported. IPv4 never hands out the network
and broadcast addresses; IPv6 (no broadcast) never hands out the
Subnet-Router anycast address (the first).

A dynamic range of at most 2^24 addresses (every IPv4 pool: at most a /8) is a
*bitmap* pool: exhausted exactly at capacity, next-fit over the bitmap. A larger
one (an IPv6 /64, up to a /48) cannot be a bitmap (2^64 bits), and is a *sparse*
pool: no bitmap at all, and a next-fit cursor that walks the range address by
address, taking the first one no holder has (one HEXISTS each). Released
addresses are not handed out again until the cursor has gone round the range,
so the cursor stays ahead of every dynamic allocation and a probe meets only
static ones: the cost of an allocation depends neither on the size of the
range nor on how many addresses are taken (bench/ipam_bench.py measures it at
0 and 100,000 allocations against a /24). A sparse pool is never full in
practice; its usage counts saturate at 2^64 - 1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cnm import errors, validation
from cnm.validation import (  # noqa: F401 - part of this module's interface
    MAX_RANGE_ADDRESSES,
    Address,
    Network,
    parse_address,
    parse_network,
    unusable_addresses,
)

GATEWAY_OWNER = "cnm:gateway"
RESERVED_OWNER = "cnm:reserved"
SYSTEM_OWNER_PREFIX = "cnm:"

MAX_OWNER_LENGTH = 256
# Lua 5.1 unpacks at most ~8000 values; a batch goes to HMGET in one unpack.
MAX_BATCH = 4096



def check_pool_id(pool_id: str) -> str:
    return validation.check_id("pool_id", pool_id, reason="INVALID_POOL_ID")


def check_owner(owner: str) -> str:
    """A caller-supplied owner id: non-empty, bounded, no control characters, not in
    cnm's namespace."""
    if not owner:
        raise errors.InvalidArgument("owner is required", reason="OWNER_REQUIRED")
    validation.check_text("owner", owner, MAX_OWNER_LENGTH, reason="INVALID_OWNER")
    if owner.startswith(SYSTEM_OWNER_PREFIX):
        raise errors.InvalidArgument(
            f"owner {errors.capped(owner)!r} is invalid: ids starting with "
            f"{SYSTEM_OWNER_PREFIX!r} are reserved",
            reason="RESERVED_OWNER",
            owner=errors.capped(owner),
        )
    return owner


def check_owners(owners: Iterable[str]) -> list[str]:
    owners = [check_owner(owner) for owner in owners]
    if not owners:
        raise errors.InvalidArgument("owners is empty", reason="OWNER_REQUIRED")
    if len(owners) > MAX_BATCH:
        raise errors.InvalidArgument(
            f"{len(owners)} owners in one batch; the limit is {MAX_BATCH}", reason="BATCH_TOO_LARGE"
        )
    seen: set[str] = set()
    for owner in owners:
        if owner in seen:
            raise errors.InvalidArgument(
                f"owner {errors.capped(owner)!r} appears twice in the batch",
                reason="DUPLICATE_OWNER", owner=errors.capped(owner),
            )
        seen.add(owner)
    return owners


def lua_range_start(network: Network) -> str:
    """The start of a dynamic range as the Lua scripts read it (see ipam_service.lua)."""
    if network.version == 4:
        return str(int(network.network_address))
    return ":".join(str(int(group, 16)) for group in network.network_address.exploded.split(":"))


def hex_of(address: Address) -> str:
    """Fixed-width lower-case hex (8 digits for IPv4, 32 for IPv6), ordered like the numbers."""
    return f"{int(address):0{address.max_prefixlen // 4}x}"


@dataclass(frozen=True)
class PoolSpec:
    """A validated pool definition; immutable once created."""

    pool_id: str
    subnet: Network
    gateway: Address
    ip_range: Network | None = None
    reserved: tuple[Address, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return self.subnet.version

    @property
    def dynamic_range(self) -> Network:
        return self.ip_range or self.subnet

    @property
    def range_start(self) -> int:
        return int(self.dynamic_range.network_address)

    @property
    def range_size(self) -> int:
        return self.dynamic_range.num_addresses

    @property
    def sparse(self) -> bool:
        """Whether the dynamic range is too large for a bitmap (see the module's doc)."""
        return self.range_size > MAX_RANGE_ADDRESSES

    @property
    def unusable(self) -> tuple[Address, ...]:
        """Never held by anyone: network and broadcast (IPv4), Subnet-Router anycast (IPv6)."""
        return unusable_addresses(self.subnet)

    @property
    def usable_size(self) -> int:
        """Addresses of the subnet that can ever be held."""
        return self.subnet.num_addresses - len(self.unusable)

    def bit_of(self, address: Address) -> int | None:
        """The bitmap offset of ``address``, or None when it lies outside the dynamic range
        (or the pool has no bitmap)."""
        if self.sparse:
            return None
        offset = int(address) - self.range_start
        return offset if 0 <= offset < self.range_size else None

    def taken_at_creation(self) -> list[tuple[str, str]]:
        """(address, owner) pairs allocated when the pool is created: gateway, then reserved."""
        return [(str(self.gateway), GATEWAY_OWNER)] + [
            (str(address), RESERVED_OWNER) for address in self.reserved
        ]

    def bits_taken_at_creation(self) -> list[int]:
        """Bitmap offsets never handed out dynamically: unusable, gateway, reserved."""
        addresses = [*self.unusable, self.gateway, *self.reserved]
        return sorted({bit for bit in map(self.bit_of, addresses) if bit is not None})

    def dynamic_capacity(self) -> int:
        return self.range_size - len(self.bits_taken_at_creation())

    def fingerprint(self) -> str:
        """Digest of every parameter; equal digests mean an identical pool."""
        canonical = json.dumps(
            {
                "subnet": str(self.subnet),
                "gateway": str(self.gateway),
                "ip_range": str(self.ip_range) if self.ip_range else "",
                "reserved": [str(address) for address in self.reserved],
                "labels": dict(sorted(self.labels.items())),
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def index_entry(self) -> str:
        """The overlap-index value: ``family start_hex end_hex fingerprint``."""
        return " ".join(
            (
                str(self.family),
                hex_of(self.subnet.network_address),
                hex_of(self.subnet.broadcast_address),
                self.fingerprint(),
            )
        )

    def check_preferred(self, address: Address) -> None:
        """Refuses a static address the pool can never hand out."""
        if address.version != self.family or address not in self.subnet:
            raise errors.InvalidArgument(
                f"address {address} is outside pool {self.pool_id!r} ({self.subnet})",
                reason="ADDRESS_OUTSIDE_POOL",
                address=address,
                pool_id=self.pool_id,
            )
        if address == self.subnet.network_address:
            raise errors.InvalidArgument(
                f"address {address} is the network address of {self.subnet}",
                reason="NETWORK_ADDRESS",
                address=address,
            )
        if address in self.unusable:
            raise errors.InvalidArgument(
                f"address {address} is the broadcast address of {self.subnet}",
                reason="BROADCAST_ADDRESS",
                address=address,
            )
        if address == self.gateway:
            raise errors.InvalidArgument(
                f"address {address} is the gateway of pool {self.pool_id!r}",
                reason="GATEWAY_ADDRESS",
                address=address,
            )
        if address in self.reserved:
            raise errors.InvalidArgument(
                f"address {address} is reserved in pool {self.pool_id!r}",
                reason="RESERVED_ADDRESS",
                address=address,
            )

    def to_meta(self, create_time: str) -> dict[str, str]:
        """The pool's meta HASH. The numeric fields are the ones the Lua scripts read."""
        return {
            "pool_id": self.pool_id,
            "family": str(self.family),
            "subnet": str(self.subnet),
            "prefix_length": str(self.subnet.prefixlen),
            "gateway": str(self.gateway),
            "ip_range": str(self.ip_range) if self.ip_range else "",
            "reserved": json.dumps([str(address) for address in self.reserved]),
            "labels": json.dumps(dict(sorted(self.labels.items()))),
            "fingerprint": self.fingerprint(),
            "create_time": create_time,
            "range_start": lua_range_start(self.dynamic_range),
            **(self._sparse_meta() if self.sparse else {
                "range_size": str(self.range_size), "cursor": "0"}),
        }

    def _sparse_meta(self) -> dict[str, str]:
        """What the Lua scripts read of a sparse pool: its last address, the next-fit
        cursor (its first address, in the same eight decimal groups), and the one address
        of the range nobody may hold (the Subnet-Router anycast address, when inside)."""
        last = ipaddress.ip_network((self.dynamic_range.broadcast_address, 128))
        inside = [str(a) for a in self.unusable if a in self.dynamic_range]
        return {"mode": "sparse", "range_last": lua_range_start(last),
                "cursor": lua_range_start(self.dynamic_range), "skip": ",".join(inside)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> PoolSpec:
        return cls(
            pool_id=meta["pool_id"],
            subnet=ipaddress.ip_network(meta["subnet"]),
            gateway=ipaddress.ip_address(meta["gateway"]),
            ip_range=ipaddress.ip_network(meta["ip_range"]) if meta["ip_range"] else None,
            reserved=tuple(ipaddress.ip_address(a) for a in json.loads(meta["reserved"])),
            labels=json.loads(meta["labels"]),
        )


def build_pool(
    *,
    pool_id: str,
    subnet: str,
    gateway: str = "",
    ip_range: str = "",
    reserved: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> PoolSpec:
    """Validates a create request and returns the pool it describes, gateway resolved."""
    check_pool_id(pool_id)
    checked = validation.check_subnet(subnet, gateway, ip_range, reserved)
    label_map = validation.check_labels(labels or {})

    return PoolSpec(
        pool_id=pool_id,
        subnet=checked.network,
        gateway=checked.gateway,
        ip_range=checked.ip_range,
        reserved=checked.reserved,
        labels=label_map,
    )
