"""The orchestrator's records in Redis: networks, endpoints, hosts, intents, locks.

Every key carries the hash tag ``{cnm-orch}`` so that all of them live in one
slot: the multi-key scripts below then run unchanged on Redis Cluster.

Layout (prefix ``{cnm-orch}:``)::

    net:<id>            HASH  pb (Network bytes), state ("ready"|"deleting"), name
    netname             HASH  name -> network id
    netids              SET   network ids
    net:<id>:eps        SET   endpoint ids recorded on the network
    net:<id>:pending    SET   endpoint ids with a connect in flight
    net:<id>:hosts      SET   host ids that may have the network in their kernel
    net:<id>:peers-gen  STRING generation of the overlay peers last computed (>= clock in us)
    ep:<id>             STRING Endpoint bytes (the record of a connected endpoint)
    ctr:<id>:eps        SET   endpoint ids (recorded or in flight) of a container
    host:<id>:eps       SET   endpoint ids recorded on a host
    host:<id>:ports     HASH  "proto/port/host_ip" -> endpoint id, "proto/port" -> count
    hosts               HASH  host id -> Host bytes
    peers-dirty         SET   overlay network ids whose peers must be pushed again
    intents             HASH  "ep:<id>" | "net:<id>" -> intent JSON
    quarantine          HASH  endpoint id -> Endpoint bytes (forgotten, host unconfirmed)
    gone                HASH  endpoint id -> unix time its host reported its container gone
    replica:<id>        STRING with expiry: a live orchestrator replica
    lock:<name>         STRING with expiry: "<replica id>:<nonce>"

    net:<id>:hoststate  HASH  host id -> JSON {"ready": bool, "message": str} (overlay)
    vni:bits            STRING bitmap, bit N set: VNI N taken
    vni:owner           HASH   vni -> network id
    vni:bynet           HASH   network id -> vni
    vni:cursor          STRING next-fit start

An intent is written before the first side effect of a flow and removed in
the same script that records its outcome, so a crash between steps always
leaves one behind for the reconciler. It names the replica running it; the
replica's lease key expiring means nobody will finish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

import redis.asyncio as redis
from google.protobuf import timestamp_pb2, unknown_fields

from cnm import errors, redis_client
from cnm.orchestrator.v1 import orchestrator_pb2 as pb

PREFIX = "{cnm-orch}:"
STATE_READY = "ready"
STATE_DELETING = "deleting"
HOST_UPDATE_ATTEMPTS = 20


def k(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _port_label(key: str) -> str:
    """A port reservation key ("tcp/8080/" or "tcp/8080/10.0.0.1") as people write it."""
    proto, port, host_ip = (key.split("/", 2) + ["", ""])[:3]
    if ":" in host_ip:
        host_ip = f"[{host_ip}]"
    return f"{host_ip}:{port}/{proto}" if host_ip else f"{port}/{proto}"


def _network_record(raw: bytes) -> pb.Network:
    """A stored network. A record written before Network.driver became an enum carries
    the driver as text in field 3, which the enum field leaves among unknown fields."""
    network = pb.Network.FromString(raw)
    if network.driver == pb.DRIVER_UNSPECIFIED:
        for field in unknown_fields.UnknownFieldSet(network):
            if field.field_number == 3 and field.wire_type == 2:  # length-delimited: text
                word = bytes(field.data).decode()
                network.driver = pb.Driver.Value(f"DRIVER_{(word or 'bridge').upper()}")
        network.DiscardUnknownFields()
    return network


def port_keys(mapping: pb.PortMapping) -> tuple[str, str]:
    """The exact ("proto/port/ip") and wildcard-count ("proto/port") fields of a mapping."""
    proto = pb.Protocol.Name(mapping.protocol or pb.PROTOCOL_TCP).removeprefix("PROTOCOL_").lower()
    return f"{proto}/{mapping.host_port}/{mapping.host_ip}", f"{proto}/{mapping.host_port}"


# Reserves the ports and the DNS names (KEYS[8]: the network's name -> endpoint id; a
# holder with neither record nor pending mark is a leftover, taken over), marks the
# endpoint pending, adds its host to the network's hosts and writes the intent, all or
# nothing.
_BEGIN_CONNECT = """
local net, pending, ctr_eps, intents, ports, ep = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local epid, intent_key, intent = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', net, 'state')
if not state then return {'gone'} end
if state ~= 'ready' then return {'deleting'} end
if redis.call('EXISTS', ep) == 1 then return {'exists'} end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local exact, wild, ip = ARGV[5 + i * 3], ARGV[6 + i * 3], ARGV[7 + i * 3]
  local holder = redis.call('HGET', ports, exact)
  if holder and holder ~= epid then return {'port', exact, holder} end
  if not holder then
    if ip == '' then
      if tonumber(redis.call('HGET', ports, wild) or '0') > 0 then
        return {'port', exact, 'another endpoint'}
      end
    else
      local any = redis.call('HGET', ports, wild .. '/')
      if any and any ~= epid then return {'port', wild .. '/', any} end
    end
  end
end
local m = tonumber(ARGV[6 + n * 3])
local prefix = ARGV[7 + n * 3 + m]
for i = 1, m do
  local holder = redis.call('HGET', KEYS[8], ARGV[6 + n * 3 + i])
  if holder and holder ~= epid and (redis.call('EXISTS', prefix .. holder) == 1
      or redis.call('SISMEMBER', pending, holder) == 1) then
    return {'name', ARGV[6 + n * 3 + i], holder}
  end
end
for i = 0, n - 1 do
  local exact, wild = ARGV[5 + i * 3], ARGV[6 + i * 3]
  if redis.call('HSETNX', ports, exact, epid) == 1 then
    redis.call('HINCRBY', ports, wild, 1)
  end
end
for i = 1, m do
  redis.call('HSET', KEYS[8], ARGV[6 + n * 3 + i], epid)
end
redis.call('SADD', pending, epid)
redis.call('SADD', KEYS[7], ARGV[5 + n * 3])
local others = redis.call('SCARD', ctr_eps) - redis.call('SISMEMBER', ctr_eps, epid)
redis.call('SADD', ctr_eps, epid)
redis.call('HSET', intents, intent_key, intent)
if others == 0 then return {'ok', '1'} end
return {'ok', '0'}
"""

# Records a connected endpoint and clears its intent, unless the network is being deleted;
# then releases the endpoint's lock, if given (KEYS[7], its token ARGV[4]).
_COMMIT_CONNECT = """
local net, pending, net_eps, ep, host_eps, intents = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('HGET', net, 'state') ~= 'ready' then return 0 end
redis.call('SET', ep, ARGV[2])
redis.call('SADD', net_eps, ARGV[1])
redis.call('SREM', pending, ARGV[1])
redis.call('SADD', host_eps, ARGV[1])
redis.call('HDEL', intents, ARGV[3])
if KEYS[7] and redis.call('GET', KEYS[7]) == ARGV[4] then redis.call('DEL', KEYS[7]) end
return 1
"""

# Forgets an endpoint (recorded or pending): indexes, ports and names (KEYS[10]) it holds,
# its intent; then releases the endpoint's lock, if given (KEYS[11], its token last).
_FORGET_ENDPOINT = """
local ep, net_eps, pending, ctr_eps, host_eps, ports, intents, quarantine, gone =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local epid, intent_key = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local quarantined = ARGV[4 + n * 2]
local m = tonumber(ARGV[5 + n * 2])
for i = 1, m do
  if redis.call('HGET', KEYS[10], ARGV[5 + n * 2 + i]) == epid then
    redis.call('HDEL', KEYS[10], ARGV[5 + n * 2 + i])
  end
end
redis.call('DEL', ep)
redis.call('HDEL', gone, epid)
redis.call('SREM', net_eps, epid)
redis.call('SREM', pending, epid)
redis.call('SREM', ctr_eps, epid)
redis.call('SREM', host_eps, epid)
if quarantined ~= '' then
  -- Its host did not confirm the teardown: its ports stay reserved (and its address
  -- allocated) until it does.
  redis.call('HSET', quarantine, epid, quarantined)
else
  for i = 0, n - 1 do
    local exact, wild = ARGV[4 + i * 2], ARGV[5 + i * 2]
    if redis.call('HGET', ports, exact) == epid then
      redis.call('HDEL', ports, exact)
      if redis.call('HINCRBY', ports, wild, -1) <= 0 then redis.call('HDEL', ports, wild) end
    end
  end
  redis.call('HDEL', quarantine, epid)
end
redis.call('HDEL', intents, intent_key)
if KEYS[11] and redis.call('GET', KEYS[11]) == ARGV[6 + n * 2 + m] then
  redis.call('DEL', KEYS[11])
end
return 1
"""

# Marks recorded endpoints of a host gone (the first report's time is kept); returns, per
# id, that time, or false when the host has no such endpoint.
_MARK_GONE = """
local host_eps, gone = KEYS[1], KEYS[2]
local result = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', host_eps, ARGV[i]) == 1 then
    redis.call('HSETNX', gone, ARGV[i], ARGV[1])
    result[i - 1] = redis.call('HGET', gone, ARGV[i])
  else
    result[i - 1] = false
  end
end
return result
"""

_CREATE_NETWORK = """
local net, names, ids, intents = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, name, record, intent_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holder = redis.call('HGET', names, name)
if holder and holder ~= id then return 0 end
redis.call('HSET', net, 'pb', record, 'state', 'ready', 'name', name)
redis.call('HSET', names, name, id)
redis.call('SADD', ids, id)
redis.call('HDEL', intents, intent_key)
return 1
"""

# Marks a network deleting (refused while it has endpoints unless forced).
_BEGIN_DELETE_NETWORK = """
local net, net_eps, pending, intents = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', net) == 0 then return {'gone'} end
local busy = redis.call('SCARD', net_eps) + redis.call('SCARD', pending)
if ARGV[1] ~= '1' and busy > 0 and redis.call('HGET', net, 'state') == 'ready' then
  return {'busy', tostring(busy)}
end
redis.call('HSET', net, 'state', 'deleting')
redis.call('HSET', intents, ARGV[2], ARGV[3])
return {'ok'}
"""

_FINISH_DELETE_NETWORK = """
local net, net_eps, pending, hosts, names, ids, intents, generation =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local id, name, intent_key = ARGV[1], ARGV[2], ARGV[3]
redis.call('DEL', net, net_eps, pending, hosts, generation, KEYS[9])
if redis.call('HGET', names, name) == id then redis.call('HDEL', names, name) end
redis.call('SREM', ids, id)
redis.call('HDEL', intents, intent_key)
return 1
"""

# Takes a lock if free, else returns its holder. With the holder's replica
# lease key as KEYS[2] and the holder seen as ARGV[3], steals the lock if
# that holder still has it and its lease has expired.
_ACQUIRE_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if KEYS[2] == nil then return holder end
if holder == ARGV[3] and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# The same, and when taken, an endpoint's record and intent read under it in the same
# step (KEYS: lock, the holder's replica lease (any key on a first go), the record, the
# intents; ARGV: token, TTL, the holder to steal from ('' on a first go), the intent's
# field). {1, record, intent} when taken; {2, holder} when held; {0} to try again.
_ACQUIRE_LOCK_READING_ENDPOINT = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1])
  if not holder then return {0} end
  if ARGV[3] == '' then return {2, holder} end
  if holder ~= ARGV[3] or redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {1, redis.call('GET', KEYS[3]), redis.call('HGET', KEYS[4], ARGV[4])}
"""

# A network's record and state by id, else by name (KEYS: net:NAME_OR_ID, the names;
# ARGV: the name or id, the prefix of a network's key): {record, state}, or {} if none.
_RESOLVE_NETWORK = """
local found = redis.call('HMGET', KEYS[1], 'pb', 'state')
if found[1] then return found end
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return {} end
found = redis.call('HMGET', ARGV[2] .. id, 'pb', 'state')
if found[1] then return found end
return {}
"""

# The next generation of a network's peers push: higher than every earlier one, and at
# least Redis's clock in microseconds, so that a count started again (Redis flushed or
# replaced) still goes past what the agents applied; 2^53 microseconds is the year 2255.
_NEXT_PEERS_GENERATION = """
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local generation = redis.call('INCR', KEYS[1])
if generation < clock then
  redis.call('SET', KEYS[1], clock)
  generation = clock
end
return generation
"""

_SWAP_HOST = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Op(StrEnum):
    """What an intent is the start of."""

    CREATE_NETWORK = "create-network"
    DELETE_NETWORK = "delete-network"
    CONNECT = "connect"
    DISCONNECT = "disconnect"


@dataclass
class Intent:
    key: str
    op: Op
    replica: str
    started: float
    data: dict

    def to_json(self) -> str:
        return json.dumps(
            {"op": self.op, "replica": self.replica, "started": self.started, **self.data}
        )

    @classmethod
    def from_json(cls, key: str, raw: bytes | str) -> Intent:
        data = json.loads(raw)
        return cls(
            key=key, op=Op(data.pop("op")), replica=data.pop("replica"),
            started=data.pop("started"), data=data,
        )


@dataclass(frozen=True)
class ConnectView:
    endpoint: pb.Endpoint | None  # its record, if connected
    intent: bool  # an operation on it is under way, or was cut short
    gone: bool  # its host reported its container gone
    host: pb.Host | None  # the host's record, if registered


class Store:
    """Typed access to the orchestrator's Redis records."""

    LOCK_TTL_MS = 6_000
    RELEASE_RETRY = 0.1  # seconds between two tries of a release Redis did not answer

    def __init__(self, client: redis.Redis, replica_id: str, lease_seconds: float = 10.0):
        self._releasing: set[asyncio.Task] = set()
        self.r = client
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._begin_connect = client.register_script(_BEGIN_CONNECT)
        self._commit_connect = client.register_script(_COMMIT_CONNECT)
        self._forget_endpoint = client.register_script(_FORGET_ENDPOINT)
        self._mark_gone = client.register_script(_MARK_GONE)
        self._create_network = client.register_script(_CREATE_NETWORK)
        self._begin_delete_network = client.register_script(_BEGIN_DELETE_NETWORK)
        self._finish_delete_network = client.register_script(_FINISH_DELETE_NETWORK)
        self._acquire = client.register_script(_ACQUIRE_LOCK)
        self._acquire_reading = client.register_script(_ACQUIRE_LOCK_READING_ENDPOINT)
        self._resolve_network = client.register_script(_RESOLVE_NETWORK)
        self._extend = client.register_script(_EXTEND_LOCK)
        self._swap_host = client.register_script(_SWAP_HOST)
        self._next_peers_generation = client.register_script(_NEXT_PEERS_GENERATION)
        self._release = client.register_script(_RELEASE_LOCK)

    @classmethod
    def connect(cls, url: str, lease_seconds: float = 10.0) -> Store:
        client = redis_client.connect(url, timeout=5, decode_responses=False)
        return cls(client, uuid.uuid4().hex[:12], lease_seconds)

    async def close(self) -> None:
        for task in list(self._releasing):
            task.cancel()
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    # --- replicas and locks -------------------------------------------------

    async def renew_lease(self) -> None:
        await self.r.set(k("replica", self.replica_id), b"1", px=int(self.lease_seconds * 1000))

    async def drop_lease(self) -> None:
        await self.r.delete(k("replica", self.replica_id))

    @contextlib.asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        """Lock ``name`` if it is free, with no wait: yields whether it was taken (and then
        holds it for the block, as ``async with lock(...)`` does)."""
        lock = self.lock(name, wait=0)
        if not await lock.try_acquire():
            yield False
            return
        try:
            yield True
        except BaseException as error:
            await lock.__aexit__(type(error), error, error.__traceback__)
            raise
        await lock.__aexit__(None, None, None)

    def lock(self, name: str, wait: float = 10.0) -> Lock:
        return Lock(self, name, wait)

    def endpoint_lock(self, endpoint_id: str, wait: float = 10.0) -> EndpointLock:
        """The endpoint's lock (``ep:ID``), which reads its record and intent as it is
        taken (one round trip for both): :attr:`EndpointLock.endpoint`, ``intent``."""
        return EndpointLock(self, endpoint_id, wait)

    def release_later(self, key: str, token: str) -> None:
        """Gives lock ``key`` back once Redis answers again (within its TTL: after it,
        the lock has expired by itself)."""
        async def retry() -> None:
            until = time.monotonic() + self.LOCK_TTL_MS / 1000
            while time.monotonic() < until:
                await asyncio.sleep(self.RELEASE_RETRY)
                with contextlib.suppress(*redis_client.UNREACHABLE):
                    await self._release(keys=[key], args=[token])
                    return

        task = asyncio.create_task(retry())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    # --- networks -----------------------------------------------------------

    async def network_id_by_name(self, name: str) -> str | None:
        value = await self.r.hget(k("netname"), name)
        return value.decode() if value else None

    async def get_network(self, network_id: str) -> tuple[pb.Network, str] | None:
        raw, state = await self.r.hmget(k("net", network_id), ["pb", "state"])
        if raw is None:
            return None
        return _network_record(raw), state.decode()

    async def resolve_network(self, name_or_id: str) -> tuple[pb.Network, str]:
        """A network by id, else by name (as Docker: an id wins); NotFound otherwise.
        One round trip (a script), by name as by id."""
        found = await self._resolve_network(keys=[k("net", name_or_id), k("netname")],
                                            args=[name_or_id, k("net", "")])
        if not found:
            raise errors.NotFound(f"network {name_or_id!r} not found", reason="NETWORK_NOT_FOUND",
                                  network=name_or_id)
        raw, state = found
        return _network_record(raw), state.decode()

    async def list_networks(self) -> list[tuple[pb.Network, str]]:
        ids = sorted(member.decode() for member in await self.r.smembers(k("netids")))
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for network_id in ids:
            pipe.hmget(k("net", network_id), ["pb", "state"])
        found = []
        for raw, state in await pipe.execute():
            if raw is not None:
                found.append((_network_record(raw), state.decode()))
        return found

    async def network_ids(self) -> set[str]:
        return {member.decode() for member in await self.r.smembers(k("netids"))}

    async def record_network(self, network: pb.Network, intent_key: str) -> bool:
        done = await self._create_network(
            keys=[k("net", network.network_id), k("netname"), k("netids"), k("intents")],
            args=[network.network_id, network.name, network.SerializeToString(), intent_key],
        )
        return bool(done)

    async def begin_delete_network(self, network: pb.Network, force: bool,
                                   intent: Intent) -> bool:
        """Marks the network deleting and writes the intent; False when it is already gone.
        FAILED_PRECONDITION / NETWORK_IN_USE while it has endpoints, unless ``force``."""
        network_id = network.network_id
        reply = await self._begin_delete_network(
            keys=[k("net", network_id), k("net", network_id, "eps"),
                  k("net", network_id, "pending"), k("intents")],
            args=["1" if force else "0", intent.key, intent.to_json()],
        )
        outcome = [part.decode() for part in reply]
        if outcome[0] == "busy":
            raise errors.FailedPrecondition(
                f"network {network.name!r} has {outcome[1]} endpoint(s): disconnect them "
                "or delete with force", reason="NETWORK_IN_USE", network=network.name,
            )
        return outcome[0] != "gone"

    async def finish_delete_network(self, network_id: str, name: str, intent_key: str) -> None:
        await self._finish_delete_network(
            keys=[k("net", network_id), k("net", network_id, "eps"),
                  k("net", network_id, "pending"), k("net", network_id, "hosts"),
                  k("netname"), k("netids"), k("intents"), k("net", network_id, "peers-gen"),
                  k("net", network_id, "dnsnames")],
            args=[network_id, name, intent_key],
        )

    async def network_endpoint_ids(self, network_id: str) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(k("net", network_id, "eps")))

    async def network_pending_ids(self, network_id: str) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(k("net", network_id, "pending")))

    async def add_network_host(self, network_id: str, host_id: str) -> None:
        await self.r.sadd(k("net", network_id, "hosts"), host_id)

    async def network_hosts(self, network_id: str) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(k("net", network_id, "hosts")))

    async def next_peers_generation(self, network_id: str) -> int:
        """Monotonic per network, never going back after a restart of the count (see
        _NEXT_PEERS_GENERATION), and far below the 2^63-1 the agents take."""
        return int(await self._next_peers_generation(keys=[k("net", network_id, "peers-gen")]))

    async def mark_peers_dirty(self, network_id: str) -> None:
        await self.r.sadd(k("peers-dirty"), network_id)

    async def clear_peers_dirty(self, network_id: str) -> None:
        await self.r.srem(k("peers-dirty"), network_id)

    async def peers_dirty(self) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(k("peers-dirty")))

    async def peers_generation(self, network_id: str) -> int:
        return int(await self.r.get(k("net", network_id, "peers-gen")) or 0)

    async def peers_view(self, network_id: str) -> tuple[list[pb.Host], list[pb.Endpoint]]:
        """The hosts that have the network and its recorded endpoints (ids in one round
        trip, then the records)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(k("net", network_id, "hosts"))
        pipe.hgetall(k("hosts"))
        pipe.smembers(k("net", network_id, "eps"))
        on_network, raw_hosts, endpoint_ids = await pipe.execute()
        on_network = {member.decode() for member in on_network}
        hosts = [host for host in map(pb.Host.FromString, raw_hosts.values())
                 if host.host_id in on_network]
        endpoints = await self.get_endpoints(sorted(member.decode() for member in endpoint_ids))
        return hosts, endpoints

    # --- overlay: whether each host has a network in line --------------------

    async def set_host_state(self, network_id: str, host_id: str, ready: bool,
                             message: str = "") -> None:
        await self.r.hset(k("net", network_id, "hoststate"), host_id,
                          json.dumps({"ready": ready, "message": message}))

    async def host_states(self, network_id: str) -> dict[str, tuple[bool, str]]:
        raw = await self.r.hgetall(k("net", network_id, "hoststate"))
        states = {}
        for key, value in raw.items():
            data = json.loads(value)
            states[key.decode()] = (bool(data["ready"]), data.get("message", ""))
        return states

    async def host_ready(self, network_id: str, host_id: str) -> bool:
        raw = await self.r.hget(k("net", network_id, "hoststate"), host_id)
        return raw is not None and bool(json.loads(raw)["ready"])

    async def forget_host_states(self, network_id: str) -> None:
        await self.r.delete(k("net", network_id, "hoststate"))

    async def remove_network_host(self, network_id: str, host_id: str) -> None:
        await self.r.srem(k("net", network_id, "hosts"), host_id)
        await self.r.hdel(k("net", network_id, "hoststate"), host_id)

    # --- endpoints ----------------------------------------------------------

    async def get_endpoint(self, endpoint_id: str) -> pb.Endpoint | None:
        raw = await self.r.get(k("ep", endpoint_id))
        return pb.Endpoint.FromString(raw) if raw is not None else None

    async def connect_view(self, endpoint_id: str, host_id: str) -> ConnectView:
        """What a connect reads before its lock, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(k("ep", endpoint_id))
        pipe.hexists(k("intents"), f"ep:{endpoint_id}")
        pipe.hexists(k("gone"), endpoint_id)
        pipe.hget(k("hosts"), host_id)
        endpoint, intent, gone, host = await pipe.execute()
        return ConnectView(
            endpoint=pb.Endpoint.FromString(endpoint) if endpoint is not None else None,
            intent=bool(intent), gone=bool(gone),
            host=pb.Host.FromString(host) if host is not None else None)

    async def get_endpoints(self, endpoint_ids: list[str]) -> list[pb.Endpoint]:
        if not endpoint_ids:
            return []
        raws = await self.r.mget([k("ep", endpoint_id) for endpoint_id in endpoint_ids])
        return [pb.Endpoint.FromString(raw) for raw in raws if raw is not None]

    async def endpoint_ids(self, *, network_id: str = "", container_id: str = "",
                           host_id: str = "") -> set[str] | None:
        """Ids matching every given filter; None when no filter is given."""
        keys = []
        if network_id:
            keys.append(k("net", network_id, "eps"))
        if container_id:
            keys.append(k("ctr", container_id, "eps"))
        if host_id:
            keys.append(k("host", host_id, "eps"))
        if not keys:
            return None
        return {member.decode() for member in await self.r.sinter(keys)}

    async def known_endpoint_ids(self, endpoint_ids: list[str]) -> set[str]:
        """Those of ``endpoint_ids`` that are recorded, have an intent or are quarantined, in
        one round trip."""
        if not endpoint_ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for endpoint_id in endpoint_ids:
            pipe.exists(k("ep", endpoint_id))
            pipe.hexists(k("intents"), f"ep:{endpoint_id}")
            pipe.hexists(k("quarantine"), endpoint_id)
        replies = await pipe.execute()
        return {endpoint_id for index, endpoint_id in enumerate(endpoint_ids)
                if any(replies[3 * index:3 * index + 3])}

    async def all_endpoint_ids(self) -> set[str]:
        ids = set()
        async for key in self.r.scan_iter(match=k("ep", "*"), count=1000):
            ids.add(key.decode().rsplit(":", 1)[1])
        return ids

    async def host_ports(self, host_id: str) -> set[tuple[str, int]]:
        """(protocol, port) of every host port an endpoint of ``host_id`` publishes or has
        reserved, on any address."""
        ports = set()
        for field in await self.r.hkeys(k("host", host_id, "ports")):
            proto, _, rest = field.decode().partition("/")
            ports.add((proto, int(rest.partition("/")[0])))
        return ports

    async def begin_connect(self, endpoint: pb.Endpoint, intent: Intent) -> bool:
        """Reserves the endpoint's ports, marks it pending on its network (and its host as
        one of the network's) and writes the intent, all or nothing. Returns whether it is the container's first network (which
        gets the default route); refuses with the error to report otherwise."""
        args: list = [endpoint.endpoint_id, intent.key, intent.to_json(),
                      len(endpoint.port_mappings)]
        for mapping in endpoint.port_mappings:
            exact, wild = port_keys(mapping)
            args += [exact, wild, mapping.host_ip]
        args.append(endpoint.host_id)
        args += [len(endpoint.dns_names), *endpoint.dns_names, k("ep", "")]
        reply = await self._begin_connect(
            keys=[k("net", endpoint.network_id), k("net", endpoint.network_id, "pending"),
                  k("ctr", endpoint.container_id, "eps"), k("intents"),
                  k("host", endpoint.host_id, "ports"), k("ep", endpoint.endpoint_id),
                  k("net", endpoint.network_id, "hosts"),
                  k("net", endpoint.network_id, "dnsnames")],
            args=args,
        )
        outcome = [part.decode() for part in reply]
        network = repr(endpoint.network_name)
        if outcome[0] == "gone":
            raise errors.NotFound(f"network {network} not found", reason="NETWORK_NOT_FOUND")
        if outcome[0] == "deleting":
            raise errors.FailedPrecondition(f"network {network} is being deleted")
        if outcome[0] == "port":
            raise errors.AlreadyExists(
                f"port {_port_label(outcome[1])} is already published on host "
                f"{endpoint.host_id} by {await self._describe_holder(outcome[2])}",
                reason="PORT_ALLOCATED", port=outcome[1])
        if outcome[0] == "name":
            raise errors.AlreadyExists(
                f"name {outcome[1]!r} is already used on network {network} by "
                f"{await self._describe_holder(outcome[2])}",
                reason="NAME_IN_USE", name=outcome[1])
        if outcome[0] == "exists":
            raise errors.Unavailable(
                f"endpoint {endpoint.endpoint_id} changed concurrently; retry")
        return outcome[1] == "1"

    async def _describe_holder(self, endpoint_id: str) -> str:
        """Who holds a published port, for the error: its container and network if known."""
        if " " in endpoint_id:  # "another endpoint": held through the wildcard count
            return endpoint_id
        holder = await self.get_endpoint(endpoint_id)
        if holder is None:  # being connected right now
            return f"endpoint {endpoint_id}"
        return (f"container {holder.container_id!r} on network {holder.network_name!r} "
                f"(endpoint {endpoint_id})")

    async def commit_connect(self, endpoint: pb.Endpoint, intent_key: str,
                             lock: Lock | None = None) -> bool:
        """Records the connected endpoint; False when its network is being deleted. A
        ``lock`` is released with the record (one round trip less), unless False."""
        keys, args = _lock_handover(lock)
        done = await self._commit_connect(
            keys=[k("net", endpoint.network_id), k("net", endpoint.network_id, "pending"),
                  k("net", endpoint.network_id, "eps"), k("ep", endpoint.endpoint_id),
                  k("host", endpoint.host_id, "eps"), k("intents"), *keys],
            args=[endpoint.endpoint_id, endpoint.SerializeToString(), intent_key, *args],
        )
        if done and lock is not None:
            lock.given_back()
        return bool(done)

    async def update_endpoint(self, endpoint: pb.Endpoint) -> None:
        """Rewrites a recorded endpoint (its indexes stay); nothing when it is gone."""
        await self.r.set(k("ep", endpoint.endpoint_id), endpoint.SerializeToString(), xx=True)

    async def forget_endpoint(self, endpoint: pb.Endpoint, intent_key: str,
                              quarantine: bool = False, lock: Lock | None = None) -> None:
        """Removes an endpoint's record, indexes, port reservations and intent (and its
        quarantine entry). With ``quarantine`` (its host did not confirm the teardown) the
        port reservations stay, and the endpoint is kept in the quarantine until
        :meth:`forget_endpoint` is called again for it. A ``lock`` is released with it."""
        args: list = [endpoint.endpoint_id, intent_key, len(endpoint.port_mappings)]
        for mapping in endpoint.port_mappings:
            args += list(port_keys(mapping))
        args.append(endpoint.SerializeToString() if quarantine else b"")
        args += [len(endpoint.dns_names), *endpoint.dns_names]
        lock_keys, lock_args = _lock_handover(lock)
        await self._forget_endpoint(
            keys=[k("ep", endpoint.endpoint_id), k("net", endpoint.network_id, "eps"),
                  k("net", endpoint.network_id, "pending"),
                  k("ctr", endpoint.container_id, "eps"), k("host", endpoint.host_id, "eps"),
                  k("host", endpoint.host_id, "ports"), k("intents"), k("quarantine"),
                  k("gone"), k("net", endpoint.network_id, "dnsnames"), *lock_keys],
            args=[*args, *lock_args],
        )
        if lock is not None:
            lock.given_back()

    async def mark_gone(self, host_id: str, endpoint_ids: list[str],
                        at: float) -> tuple[dict[str, float], list[str]]:
        """Marks the endpoints recorded on ``host_id`` among ``endpoint_ids`` gone (their
        container died) at ``at``, unless marked already. Returns {id: time marked} for
        those, and the ids the host has no record of."""
        if not endpoint_ids:
            return {}, []
        replies = await self._mark_gone(keys=[k("host", host_id, "eps"), k("gone")],
                                        args=[repr(at), *endpoint_ids])
        marked = {e: float(since) for e, since in zip(endpoint_ids, replies) if since}
        return marked, [e for e in endpoint_ids if e not in marked]

    async def gone_times(self, endpoint_ids: list[str] | None = None) -> dict[str, float]:
        """When each of ``endpoint_ids`` (every one when None) was reported gone, for
        those that were."""
        if endpoint_ids is None:
            return {key.decode(): float(value)
                    for key, value in (await self.r.hgetall(k("gone"))).items()}
        if not endpoint_ids:
            return {}
        values = await self.r.hmget(k("gone"), endpoint_ids)
        return {e: float(value) for e, value in zip(endpoint_ids, values) if value is not None}

    async def drop_quarantine(self, endpoint_id: str) -> None:
        await self.r.hdel(k("quarantine"), endpoint_id)

    async def quarantined(self) -> list[pb.Endpoint]:
        """Endpoints disconnected while their host was unreachable: their address and ports
        are held until the host confirms the teardown or is removed."""
        return [pb.Endpoint.FromString(raw)
                for raw in (await self.r.hgetall(k("quarantine"))).values()]

    # --- intents ------------------------------------------------------------

    def new_intent(self, key: str, op: str, **data) -> Intent:
        return Intent(key=key, op=op, replica=self.replica_id, started=time.time(), data=data)

    async def put_intent(self, intent: Intent) -> None:
        await self.r.hset(k("intents"), intent.key, intent.to_json())

    async def put_intent_get_host(self, intent: Intent, host_id: str) -> pb.Host | None:
        """:meth:`put_intent`, and the host's record read in the same round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(k("intents"), intent.key, intent.to_json())
        pipe.hget(k("hosts"), host_id)
        _, raw = await pipe.execute()
        return pb.Host.FromString(raw) if raw is not None else None

    async def get_intent(self, key: str) -> Intent | None:
        raw = await self.r.hget(k("intents"), key)
        return Intent.from_json(key, raw) if raw is not None else None

    async def drop_intent(self, key: str) -> None:
        await self.r.hdel(k("intents"), key)

    async def intents(self) -> list[Intent]:
        raw = await self.r.hgetall(k("intents"))
        return [Intent.from_json(key.decode(), value) for key, value in raw.items()]

    # --- hosts --------------------------------------------------------------

    async def put_host(self, host: pb.Host) -> None:
        await self.r.hset(k("hosts"), host.host_id, host.SerializeToString())

    async def get_host(self, host_id: str) -> pb.Host | None:
        raw = await self._host_bytes(host_id)
        return pb.Host.FromString(raw) if raw is not None else None

    async def _host_bytes(self, host_id: str) -> bytes | None:
        return await self.r.hget(k("hosts"), host_id)

    async def update_host(self, host_id: str,
                          change: Callable[[pb.Host], bool]) -> pb.Host | None:
        """Changes one host record with compare-and-set; None when there is no such host.

        ``change`` edits the record and says whether to write it. A record
        changed meanwhile (a heartbeat and a learnt underlay address from two
        replicas) is read again and ``change`` re-applied, so neither is lost.
        """
        for _ in range(HOST_UPDATE_ATTEMPTS):
            raw = await self._host_bytes(host_id)
            if raw is None:
                return None
            host = pb.Host.FromString(raw)
            if not change(host):
                return host
            if await self._swap_host(keys=[k("hosts")],
                                     args=[host_id, raw, host.SerializeToString()]):
                return host
        raise errors.Unavailable(f"host {host_id!r} is being changed concurrently; retry",
                                 reason="BUSY", host=host_id)

    async def list_hosts(self) -> list[pb.Host]:
        raw = await self.r.hgetall(k("hosts"))
        return sorted((pb.Host.FromString(value) for value in raw.values()),
                      key=lambda host: host.host_id)

    async def delete_host(self, host_id: str) -> None:
        await self.r.hdel(k("hosts"), host_id)

    async def host_endpoint_count(self, host_id: str) -> int:
        return int(await self.r.scard(k("host", host_id, "eps")))


class Lock:
    """A Redis lock with expiry, stolen only from replicas whose lease expired.

    While held, it is extended every third of its TTL (seconds), and only if it
    still holds our token. If that fails (the lock was taken over, or Redis
    could not be reached for a whole TTL), the task that took the lock is
    cancelled and, if it used ``async with``, ends with UNAVAILABLE: a flow
    never runs on unprotected. A release that cannot reach Redis is tried again
    in the background until Redis answers (or the lock expires): a holder cut
    short by a Redis blip gives its lock back as soon as Redis is back.
    """

    def __init__(self, store: Store, name: str, wait: float):
        self.store = store
        self.key = k("lock", name)
        self.name = name
        self.wait = wait
        self.token = f"{store.replica_id}:{uuid.uuid4().hex[:8]}"
        self.lost = False
        self._given_back = False
        self._keeper: asyncio.Task | None = None

    async def _take(self) -> bool:
        for _ in range(2):  # a second go when the holder's lock expired meanwhile
            taken, holder = await self._attempt(b"")
            if taken:
                return True
            if holder:  # taken over only if the holder's replica lease expired
                return (await self._attempt(holder))[0]
        return False

    async def _attempt(self, holder: bytes) -> tuple[bool, bytes]:
        """One go at the lock, taking it over from ``holder`` if given: (taken, the holder
        found; b"" when none, or when taking over)."""
        ttl = self.store.LOCK_TTL_MS
        if holder:
            replica = k("replica", holder.split(b":", 1)[0].decode())
            return bool(await self.store._acquire(
                keys=[self.key, replica], args=[self.token, ttl, holder])), b""
        reply = await self.store._acquire(keys=[self.key], args=[self.token, ttl, b""])
        return reply == 1, (b"" if reply in (0, 1) else bytes(reply))

    async def try_acquire(self) -> bool:
        if not await self._take():
            return False
        self.lost = self._given_back = False
        self._keeper = asyncio.create_task(self._keep(asyncio.current_task()))
        return True

    async def _keep(self, owner: asyncio.Task | None) -> None:
        ttl = self.store.LOCK_TTL_MS
        last = time.monotonic()
        while True:
            await asyncio.sleep(ttl / 3000)
            if owner is not None and owner.done():
                return  # taken and never released: let it expire
            try:
                if await asyncio.wait_for(
                    self.store._extend(keys=[self.key], args=[self.token, ttl]), ttl / 3000,
                ):
                    last = time.monotonic()
                    continue
            except (TimeoutError, *redis_client.UNREACHABLE):
                if time.monotonic() - last < ttl / 1000:
                    continue
            self.lost = True
            if owner is not None:
                owner.cancel(f"lost the lock {self.name}")
            return

    async def __aenter__(self) -> Self:
        deadline = time.monotonic() + self.wait
        delay = 0.002
        while not await self.try_acquire():
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"{self.name} is busy with another operation; retry", reason="BUSY",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        return self

    def given_back(self) -> None:
        """A store script released the lock along with its own writes (its key and token:
        :func:`_lock_handover`): :meth:`release` has nothing left to tell Redis."""
        self._given_back = True

    async def release(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._given_back:
            return
        try:
            await self.store._release(keys=[self.key], args=[self.token])
        except redis_client.UNREACHABLE:
            self.store.release_later(self.key, self.token)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.release()
        if self.lost and exc_type is asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            raise errors.Unavailable(
                f"lost the lock {self.name} (taken over, or Redis unreachable): retry",
                reason="LOCK_LOST",
            ) from exc


class EndpointLock(Lock):
    """An endpoint's lock that reads the endpoint's record and intent in the step that
    takes it: what they are under the lock, with no round trip of their own."""

    def __init__(self, store: Store, endpoint_id: str, wait: float):
        super().__init__(store, f"ep:{endpoint_id}", wait)
        self.endpoint_id = endpoint_id
        self.endpoint: pb.Endpoint | None = None
        self.intent: Intent | None = None

    async def _attempt(self, holder: bytes) -> tuple[bool, bytes]:
        """:meth:`Lock._attempt`, reading the record and intent once taken."""
        replica = k("replica", holder.split(b":", 1)[0].decode()) if holder else self.key
        reply = await self.store._acquire_reading(
            keys=[self.key, replica, k("ep", self.endpoint_id), k("intents")],
            args=[self.token, self.store.LOCK_TTL_MS, holder, self.name])
        if reply[0] != 1:
            return False, bytes(reply[1]) if reply[0] == 2 else b""
        record, intent = reply[1], reply[2]
        self.endpoint = pb.Endpoint.FromString(record) if record else None
        self.intent = Intent.from_json(self.name, intent) if intent else None
        return True, b""


def _lock_handover(lock: Lock | None) -> tuple[list[str], list[str]]:
    """(keys, args) that let a script release ``lock`` along with its writes."""
    return ([lock.key], [lock.token]) if lock is not None else ([], [])


# --- VXLAN ids ------------------------------------------------------------------

_ALLOCATE_VNI = """
local bits, owner, bynet, cursor_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local network_id, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HGET', bynet, network_id)
if held then return tonumber(held) end
if redis.call('STRLEN', bits) * 8 <= last then redis.call('SETBIT', bits, last, 0) end
local cursor = tonumber(redis.call('GET', cursor_key) or first)
if cursor < first or cursor > last then cursor = first end
local found = redis.call('BITPOS', bits, 0, cursor, last, 'BIT')
if found == -1 and cursor > first then
  found = redis.call('BITPOS', bits, 0, first, cursor - 1, 'BIT')
end
if found == -1 then return -1 end
redis.call('SETBIT', bits, found, 1)
redis.call('HSET', owner, found, network_id)
redis.call('HSET', bynet, network_id, found)
redis.call('SET', cursor_key, found + 1)
return found
"""

_RELEASE_VNI = """
local bits, owner, bynet = KEYS[1], KEYS[2], KEYS[3]
local network_id = ARGV[1]
local vni = redis.call('HGET', bynet, network_id)
if not vni then return 0 end
if redis.call('HGET', owner, vni) == network_id then
  redis.call('HDEL', owner, vni)
  redis.call('SETBIT', bits, tonumber(vni), 0)
end
redis.call('HDEL', bynet, network_id)
return 1
"""


class Vnis:
    """VXLAN ids, unique across the deployment, allocated next-fit from a bitmap.

    One Lua script per change, so two replicas never hand out one id twice;
    a retry for the same network gets the id it already holds.
    """

    def __init__(self, store: Store, vni_range: tuple[int, int]):
        self.r = store.r
        self.first, self.last = vni_range
        self._allocate = self.r.register_script(_ALLOCATE_VNI)
        self._release = self.r.register_script(_RELEASE_VNI)

    @staticmethod
    def _keys() -> list[str]:
        return [k("vni", "bits"), k("vni", "owner"), k("vni", "bynet"), k("vni", "cursor")]

    async def allocate(self, network_id: str) -> int:
        """The network's VNI; RESOURCE_EXHAUSTED when the range is used up."""
        vni = int(await self._allocate(keys=self._keys(),
                                       args=[network_id, self.first, self.last]))
        if vni < 0:
            raise errors.ResourceExhausted(
                f"no VXLAN id left in {self.first}-{self.last} for a new overlay network",
                reason="VNI_EXHAUSTED", first=str(self.first), last=str(self.last),
            )
        return vni

    async def release(self, network_id: str) -> None:
        await self._release(keys=self._keys()[:3], args=[network_id])

    async def holders(self) -> dict[str, int]:
        """network id -> VNI, for every VNI held."""
        raw = await self.r.hgetall(k("vni", "bynet"))
        return {key.decode(): int(value) for key, value in raw.items()}
