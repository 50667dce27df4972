"""The network flows: create/delete networks, connect/disconnect containers.

Each flow validates first, takes a Redis lock on what it changes, writes an
intent before its first side effect, pushes the inverse of every completed
step (cnm.undo) and drops them only once the outcome is recorded
(which clears the intent in the same Redis script). An undo step that fails
leaves the intent behind, and the reconciler finishes the job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import random
import time
import uuid

from prometheus_client import Counter

from cnm import errors
from cnm import validation as cnm_validation
from cnm.errors import capped
from cnm.ipam.v1 import ipam_pb2
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.undo import Undo
from orchestrator import address_pools, faults, overlay, validation
from orchestrator.clients import Agents, Ipam
from orchestrator.hosts import HEARTBEAT_INTERVAL, STALE_AFTER, Hosts
from orchestrator.overlay import Overlay
from orchestrator.store import STATE_DELETING, STATE_READY, Intent, Lock, Op, Store, Vnis, now
from orchestrator.translate import agent_endpoint, agent_network

log = logging.getLogger("orchestrator.flows")

# Flows that a crash or a lost lock cut short, undone or finished by whoever came next.
INTENTS_SETTLED = Counter("cnm_orchestrator_intents_settled",
                          "Abandoned intents undone or finished, by operation", ["op"])
for _op in Op:
    INTENTS_SETTLED.labels(str(_op))

MANAGED_LABEL = "cnm.io/managed-by"
MANAGED_VALUE = "cnm-orchestrator"
NETWORK_NAME_LABEL = "cnm.io/network-name"
PENDING_WAIT = 10.0
GONE_GRACE = 5.0  # seconds a gone container's endpoint is kept before it is released
# Where a host port is chosen for a mapping that asks for any (Docker's fallback range).
EPHEMERAL_PORTS = (49153, 65535)
EPHEMERAL_ATTEMPTS = 5  # choices of a host port before a connect gives up
# Seconds: an endpoint recorded this close to the moment its host's state was read may
# not be in that state yet; it is judged at the next look.
LOST_MARGIN = 2.0


def _sandbox_of(request: pb.ConnectContainerRequest) -> str:
    if not request.peer_on_host:
        return cnm_validation.check_sandbox(request.sandbox or request.container_id)
    if request.sandbox:
        raise errors.InvalidArgument("a connect with peer_on_host has no sandbox: the "
                                     "runtime moves the interface", field="sandbox")
    return ""


def _endpoint_address(network: pb.Network, address: str) -> str:
    """``address`` checked as one an endpoint of ``network`` may hold."""
    if not network.subnet:
        raise errors.InvalidArgument(
            f"address {capped(address)!r}: network {network.name!r} is IPv6 only (give an "
            "IPv6 address)", reason="ADDRESS_OUTSIDE_SUBNET", field="address")
    return cnm_validation.check_endpoint_address(ipaddress.ip_network(network.subnet),
                                                 network.gateway, address, "address")


def _reservation(network: pb.Network, address: str | None,
                 ipv6: bool) -> tuple[str, str]:
    """The IPAM pool a host's reservation of ``address`` (None: of any address of the
    family ``ipv6`` says) is in, and ``address`` checked as one an endpoint may hold in
    that family's subnet ("" for None); INVALID_ARGUMENT for a family the network has
    not."""
    if not (ipv6 or ":" in (address or "")):
        if not network.subnet:
            raise errors.InvalidArgument(
                f"network {network.name!r} is IPv6 only: no IPv4 address to reserve (ipv6)",
                reason="ADDRESS_OUTSIDE_SUBNET", field="address")
        return network.network_id, "" if address is None else _endpoint_address(network,
                                                                                address)
    if not network.ipv6_subnet:
        raise errors.InvalidArgument(
            f"network {network.name!r} has no IPv6 subnet: no IPv6 address to reserve",
            reason="ADDRESS_OUTSIDE_SUBNET", field="address")
    return validation.ipv6_pool_id(network.network_id), "" if address is None else \
        cnm_validation.check_endpoint_address(ipaddress.ip_network(network.ipv6_subnet),
                                              network.ipv6_gateway, address, "address")


def _addresses(endpoint: pb.Endpoint) -> list[tuple[str, str]]:
    """(IPAM pool, address) of each address of the endpoint."""
    return [(pool_id, address) for pool_id, address in (
        (endpoint.network_id, endpoint.address),
        (validation.ipv6_pool_id(endpoint.network_id), endpoint.ipv6_address)) if address]


def _pools_exhausted(network: pb.Network, pools) -> errors.CnmError:
    listed = " ".join(str(pool) for pool in pools)
    return errors.ResourceExhausted(
        f"no free subnet left in the default address pools ({listed}): each overlaps a "
        "network or a route of a host; give a --subnet, or add a pool with the "
        "orchestrator's --default-address-pool base=CIDR,size=N (env "
        "CNM_DEFAULT_ADDRESS_POOLS)", reason="ADDRESS_POOLS_EXHAUSTED", network=network.name)


def _derived_mac(endpoint: pb.Endpoint) -> str:
    """The MAC the agent derives for the endpoint (from its IPv6 address if it has no
    IPv4 one)."""
    return cnm_validation.mac_from_address(endpoint.address or endpoint.ipv6_address)


async def _all(*steps) -> list:
    """Runs ``steps`` at once, each to its end; their results, or the first failure."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _endpoint_ipv6(network: pb.Network, request: pb.ConnectContainerRequest) -> tuple[str, int]:
    """The IPv6 address a connect asks for ("": any) and the prefix length, on a dual-stack
    network; ("", 0) on an IPv4 one (which refuses an IPv6 address). An address its host
    reserved (Docker's IPAM) comes with its IPv6 one, reserved too."""
    if not network.ipv6_subnet:
        if request.ipv6_address:
            raise errors.InvalidArgument(
                f"ipv6_address {capped(request.ipv6_address)!r}: network "
                f"{network.name!r} has no IPv6 subnet (create it with one to have dual stack)",
                reason="ADDRESS_OUTSIDE_SUBNET", field="ipv6_address")
        return "", 0
    if request.address_reserved and not request.ipv6_address:
        raise errors.InvalidArgument(
            f"address_reserved on dual-stack network {network.name!r} needs the IPv6 "
            "address reserved too (ReserveAddress with ipv6)", field="ipv6_address")
    subnet = ipaddress.ip_network(network.ipv6_subnet)
    address = cnm_validation.check_endpoint_address(
        subnet, network.ipv6_gateway, request.ipv6_address, "ipv6_address") \
        if request.ipv6_address else ""
    return address, subnet.prefixlen


async def _no_sandbox() -> None:
    """The sandbox check of a connect that has none (peer_on_host)."""


def _retrieve(future: asyncio.Future) -> None:
    """Marks a future's exception retrieved (its caller may not need the answer)."""
    if not future.cancelled():
        future.exception()


def encode(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def decode_endpoint(intent: Intent) -> pb.Endpoint:
    return pb.Endpoint.FromString(base64.b64decode(intent.data["endpoint"]))


def _in_sandbox(endpoint: pb.Endpoint, name: str, path: str) -> bool:
    """Whether ``endpoint`` is in the sandbox called ``name`` at ``path`` (its host's)."""
    return endpoint.sandbox in (name, path) or endpoint.container_id == name


class Orchestrator:
    """The flows, over a Store, the IPAM client and the agents' clients."""

    def __init__(self, store: Store, ipam: Ipam, agents: Agents,
                 heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 vni_range: tuple[int, int] = overlay.parse_vni_range(overlay.DEFAULT_VNI_RANGE),
                 gone_grace: float = GONE_GRACE, stale_after: float = STALE_AFTER,
                 default_pools: tuple[address_pools.Pool, ...] = address_pools.DEFAULT,
                 ephemeral_ports: tuple[int, int] = EPHEMERAL_PORTS):
        self.store = store
        self.default_pools = default_pools
        self.ephemeral_ports = ephemeral_ports
        self.ipam = ipam
        self.agents = agents
        self.gone_grace = gone_grace
        self.hosts = Hosts(store, agents, heartbeat_interval, stale_after)
        self._releasing_gone: set[str] = set()  # endpoint ids this replica will release
        self.vnis = Vnis(store, vni_range)
        self.overlay = Overlay(store, self.hosts, self.vnis)
        self._background: set[asyncio.Task] = set()

    # --- hosts --------------------------------------------------------------

    async def register_host(self, host: pb.Host) -> pb.Host:
        record = await self.hosts.register(host)
        # A new host, or an agent that restarted: either way it gets every
        # overlay network with its peers before the registration returns.
        await self.overlay.sync_host(record)
        # What was forgotten while it was unreachable goes now, not at the next pass.
        self._in_background(self.release_quarantined(record.host_id))
        # A host that rebooted (or whose agent lost its state) registers with none of its
        # containers: their endpoints are given back now, not at the next host pass.
        self._in_background(self.repair_host(record.host_id))
        return record

    async def repair_host(self, host_id: str) -> None:
        """Repairs the endpoints recorded on ``host_id`` that its kernel lacks (see
        :meth:`repair_lost_endpoints`), from its state read now."""
        host = await self.store.get_host(host_id)
        if host is None:
            return
        asked = time.time()
        try:
            state = await self.hosts.agent_of(host).get_state()
        except errors.CnmError as error:
            log.warning("host not checked after its registration",
                        extra={"host": host_id, "error": error.message})
            return
        recreated, released, failed = await self.repair_lost_endpoints(host_id, state, asked)
        if recreated or released or failed:
            log.log(logging.WARNING if failed else logging.INFO,
                    "endpoints repaired after a registration",
                    extra={"host": host_id, "recreated_endpoints": recreated,
                           "released_lost_endpoints": released, "errors": failed})

    async def repair_lost_endpoints(self, host_id: str, state: nd.GetStateResponse,
                                    asked: float) -> tuple[list[str], list[str], list[str]]:
        """Records of ``host_id`` its agent's ``state`` (read at ``asked``) lacks: each made
        again or released (:meth:`repair_lost_endpoint`); one committed after the state
        was read, or with a flow at work on it, is left for later. Returns the endpoints
        recreated, released, and the errors."""
        recreated: list[str] = []
        released: list[str] = []
        failed: list[str] = []
        reported = {endpoint.endpoint_id for endpoint in state.endpoints}
        for endpoint_id in sorted(await self.store.endpoint_ids(host_id=host_id) or ()):
            if endpoint_id in reported:
                continue
            async with self.store.try_lock(f"ep:{endpoint_id}") as taken:
                if not taken:
                    continue  # a flow is at work on it
                try:
                    endpoint = await self.store.get_endpoint(endpoint_id)
                    if endpoint is None or endpoint.create_time.ToNanoseconds() / 1e9 \
                            >= asked - LOST_MARGIN or \
                            await self.store.get_intent(f"ep:{endpoint_id}") is not None:
                        continue
                    done = await self.repair_lost_endpoint(endpoint)
                    what = f"{host_id}/{endpoint_id} ({endpoint.container_id} on " \
                           f"{endpoint.network_name})"
                    if done == "recreated":
                        recreated.append(what)
                    elif done == "released":
                        released.append(what)
                except errors.CnmError as error:
                    failed.append(f"repair {endpoint_id}: {error.message}")
        return recreated, released, failed

    def _in_background(self, work) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def heartbeat(self, host_id: str, lost_endpoint_ids=()) -> tuple[bool, list[str]]:
        """Records a host's heartbeat and the endpoints it reports lost (their container
        died). Returns whether the host is known, and the reported ids it has no record
        of."""
        for endpoint_id in lost_endpoint_ids:
            cnm_validation.check_id("lost_endpoint_ids", endpoint_id)
        if not await self.hosts.heartbeat(host_id):
            return False, []
        marked, unknown = await self.store.mark_gone(host_id, list(lost_endpoint_ids),
                                                     time.time())
        for endpoint_id, since in marked.items():
            self._release_gone_later(endpoint_id, since)
        return True, unknown

    def _release_gone_later(self, endpoint_id: str, since: float) -> None:
        """Releases a gone container's endpoint once the grace period after ``since`` has
        passed (once per replica; the host reports it until then, and the reconciler
        releases those whose replica died)."""
        if endpoint_id in self._releasing_gone:
            return
        self._releasing_gone.add(endpoint_id)

        async def release() -> None:
            try:
                await asyncio.sleep(max(0.0, since + self.gone_grace - time.time()))
                await self.release_gone(endpoint_id)
            except errors.CnmError as error:
                log.warning("gone container's endpoint not released yet",
                            extra={"endpoint": endpoint_id, "error": error.message})
            finally:
                self._releasing_gone.discard(endpoint_id)

        self._in_background(release())

    async def release_gone(self, endpoint_id: str) -> bool:
        """Disconnects an endpoint whose container its host reported gone; False when it
        is not (or no longer) such an endpoint."""
        if not await self.disconnect_endpoint(endpoint_id, force=False, gone_only=True):
            return False
        log.info("released the endpoint of a gone container", extra={"endpoint": endpoint_id})
        return True

    async def release_expired_gone(self) -> list[str]:
        """Releases every endpoint reported gone longer than the grace period ago (the
        replica that heard of it may have died). Returns their ids."""
        released = []
        horizon = time.time() - self.gone_grace
        for endpoint_id, since in sorted((await self.store.gone_times()).items()):
            if since > horizon or endpoint_id in self._releasing_gone:
                continue
            try:
                if await self.release_gone(endpoint_id):
                    released.append(endpoint_id)
            except errors.CnmError as error:  # its host unreachable: the next pass
                log.warning("gone container's endpoint not released yet",
                            extra={"endpoint": endpoint_id, "error": error.message})
        return released

    async def with_states(self, endpoints: list[pb.Endpoint]) -> list[pb.Endpoint]:
        """Sets each endpoint's state: GONE if its host reported its container gone,
        STALE if its host has been silent longer than ``--stale-after``, else ACTIVE."""
        if not endpoints:
            return endpoints
        gone = await self.store.gone_times([e.endpoint_id for e in endpoints])
        hosts = {host.host_id: host for host in await self.store.list_hosts()}
        for endpoint in endpoints:
            since = gone.get(endpoint.endpoint_id)
            if since is not None:
                endpoint.state = pb.ENDPOINT_STATE_GONE
                endpoint.gone_time.FromNanoseconds(int(since * 1e9))
            elif self.hosts.stale(hosts.get(endpoint.host_id)):
                endpoint.state = pb.ENDPOINT_STATE_STALE
            else:
                endpoint.state = pb.ENDPOINT_STATE_ACTIVE
        return endpoints

    async def delete_host(self, host_id: str, allow_missing: bool = False,
                          force: bool = False) -> None:
        """Forgets a host and its endpoints (their addresses are released). A host that
        still heartbeats is refused unless ``force``: its containers would keep using
        addresses handed out again."""
        host = await self.store.get_host(host_id)
        if host is None:
            if allow_missing:
                return
            raise errors.NotFound(f"host {host_id!r} not found", reason="HOST_NOT_FOUND",
                                  host=host_id)
        if not force and self.hosts.fresh(host):
            raise errors.FailedPrecondition(
                f"host {host_id!r} is alive (its agent heartbeats): its endpoints' addresses "
                f"would be handed out while its containers use them; stop its agent first, "
                f"or force", reason="HOST_ALIVE", host=host_id)
        for endpoint_id in sorted(await self.store.endpoint_ids(host_id=host_id) or ()):
            async with self.store.lock(f"ep:{endpoint_id}"):
                endpoint = await self.store.get_endpoint(endpoint_id)
                if endpoint is None:
                    continue
                await self._release_owner(endpoint)
                await self.store.forget_endpoint(endpoint, f"ep:{endpoint_id}")
        await self.store.delete_host(host_id)
        await self.agents.forget(host_id)
        await self.overlay.host_left(host_id)
        await self.release_quarantined(host_id)  # declared gone: nothing holds them now

    # --- networks -----------------------------------------------------------

    async def create_network(self, spec: pb.Network, validate_only: bool = False) -> pb.Network:
        wanted = validation.network(spec)
        if validate_only:
            return await self._preview_network(wanted)
        lock_name = f"name:{wanted.name}"
        async with self.store.lock(lock_name):
            existing = await self._network_named(wanted)
            if existing is not None:
                return existing
            network = pb.Network()
            network.CopyFrom(wanted)
            network.network_id = uuid.uuid4().hex[:12]
            # A create under this name cut short left its intent: undo it before
            # ours replaces it, or its pool would be forgotten.
            abandoned = await self.store.get_intent(lock_name)
            if abandoned is not None:
                await self.settle_network_intent(abandoned)
            intent = self.store.new_intent(lock_name, Op.CREATE_NETWORK, lock=lock_name,
                                           network_id=network.network_id, name=network.name)
            await self.store.put_intent(intent)
            faults.point("create-network-intent")
            async with Undo(logger=log) as undo:
                undo.push("drop intent", lambda: self._drop_intent_unless(undo, intent.key))
                # Pushed first: IPAM may have reserved the subnet even if the call
                # failed, and deleting a pool that does not exist succeeds.
                undo.push("delete pool",
                          lambda: self.ipam.delete_pool(network.network_id, force=True))
                if validation.has_ipv4(network):
                    network.gateway = (await self._network_pool(network, 4)).gateway
                faults.point("create-network-ipam")
                if network.enable_ipv6:
                    undo.push("delete IPv6 pool", lambda: self.ipam.delete_pool(
                        validation.ipv6_pool_id(network.network_id), force=True))
                    network.ipv6_gateway = (await self._network_pool(network, 6)).gateway
                if network.driver == overlay.DRIVER:
                    network.vni = await self.vnis.allocate(network.network_id)
                    undo.push("release vni", lambda: self.vnis.release(network.network_id))
                    faults.point("create-network-vni")
                network.create_time.CopyFrom(now())
                if not await self.store.record_network(network, intent.key):
                    raise errors.AlreadyExists(f"network {network.name!r} already exists")
                undo.commit()
            if network.driver == overlay.DRIVER:
                await self.overlay.spread_network(network)
        log.info("network created", extra={"network": network.name, "id": network.network_id,
                                           "vni": network.vni})
        return network

    async def _network_named(self, wanted: pb.Network) -> pb.Network | None:
        """The network recorded under ``wanted``'s name, if a create of ``wanted`` repeats
        its creation; None when there is none; ALREADY_EXISTS when it differs."""
        existing_id = await self.store.network_id_by_name(wanted.name)
        found = await self.store.get_network(existing_id) if existing_id is not None else None
        if found is None:
            return None
        existing, state = found
        if state != STATE_READY:
            raise errors.FailedPrecondition(
                f"network {wanted.name!r} is being deleted; retry", network=wanted.name)
        if validation.same_network(existing, wanted):
            return existing
        raise errors.AlreadyExists(
            f"network {wanted.name!r} already exists with different parameters "
            f"(subnet {existing.subnet or existing.ipv6_subnet}, "
            f"driver {validation.driver_word(existing.driver)})",
            network=wanted.name,
        )

    async def _preview_network(self, wanted: pb.Network) -> pb.Network:
        """The network a create of ``wanted`` would make (validate_only), checked against
        what is recorded, with nothing made or reserved: a subnet chosen from the default
        address pools where none is given, the first address as the gateway."""
        existing = await self._network_named(wanted)
        if existing is not None:
            return existing
        networks, routes = await self._taken_subnets()
        preview = pb.Network()
        preview.CopyFrom(wanted)
        for version, subnet_field, gateway_field, wanted_family in (
                (4, "subnet", "gateway", validation.has_ipv4(wanted)),
                (6, "ipv6_subnet", "ipv6_gateway", wanted.enable_ipv6)):
            if not wanted_family:
                continue
            subnet = getattr(preview, subnet_field)
            if subnet:
                for other, theirs in networks:
                    cnm_validation.subnets_overlap(subnet, theirs, f"network {wanted.name!r}",
                                                   f"network {other.name!r}")
            else:
                pools = self._default_pools_of(wanted, version)
                taken = [ipaddress.ip_network(theirs) for _, theirs in networks] + routes
                chosen = next(address_pools.free_subnets(pools, taken), None)
                if chosen is None:
                    raise _pools_exhausted(wanted, pools)
                setattr(preview, subnet_field, str(chosen))
            if not getattr(preview, gateway_field):
                first = next(ipaddress.ip_network(getattr(preview, subnet_field)).hosts())
                setattr(preview, gateway_field, str(first))
        return preview

    async def _taken_subnets(self) -> tuple[list[tuple[pb.Network, str]], list]:
        """(network, subnet) of every subnet of every network, and the routes of every
        host: what a subnet chosen from the default address pools must not overlap."""
        networks, hosts = await asyncio.gather(self.store.list_networks(),
                                               self.store.list_hosts())
        subnets = [(other, subnet) for other, _ in networks
                   for subnet in (other.subnet, other.ipv6_subnet) if subnet]
        return subnets, [ipaddress.ip_network(route) for host in hosts for route in host.routes]

    def _default_pools_of(self, network: pb.Network, version: int) -> list:
        """The default address pools of IP ``version``; FAILED_PRECONDITION (NO_IPV6_POOL)
        when there is none."""
        pools = address_pools.of_family(self.default_pools, version)
        if not pools:
            raise errors.FailedPrecondition(
                f"network {network.name!r}: no IPv6 default address pool to choose its IPv6 "
                "subnet from: give one (--subnet fd00:1::/64 with --ipv6), or add a "
                "pool with the orchestrator's --default-address-pool base=CIDR6,size=64 "
                "(env CNM_DEFAULT_ADDRESS_POOLS)", reason="NO_IPV6_POOL", network=network.name)
        return pools

    async def _create_pool(self, network: pb.Network) -> ipam_pb2.Pool:
        return await self.ipam.create_pool(ipam_pb2.Pool(
            pool_id=network.network_id, subnet=network.subnet, gateway=network.gateway,
            ip_range=network.ip_range, reserved_addresses=sorted(network.aux_addresses.values()),
            labels={MANAGED_LABEL: MANAGED_VALUE, NETWORK_NAME_LABEL: network.name},
        ))

    async def _network_pool(self, network: pb.Network, version: int) -> ipam_pb2.Pool:
        """The network's IPAM pool of IP ``version``: on its subnet of that family (an
        overlap names the network holding it), else on a free one of the default pools."""
        subnet = network.subnet if version == 4 else network.ipv6_subnet
        if not subnet:
            return await self._create_pool_in_default_pools(network, version)
        try:
            return await (self._create_pool if version == 4 else self._create_ipv6_pool)(network)
        except errors.AlreadyExists as error:
            if error.reason != "SUBNET_OVERLAP":
                raise
            raise await self._overlap(network, error, subnet) from error

    async def _create_ipv6_pool(self, network: pb.Network) -> ipam_pb2.Pool:
        return await self.ipam.create_pool(ipam_pb2.Pool(
            pool_id=validation.ipv6_pool_id(network.network_id), subnet=network.ipv6_subnet,
            gateway=network.ipv6_gateway, ip_range=network.ipv6_ip_range,
            labels={MANAGED_LABEL: MANAGED_VALUE, NETWORK_NAME_LABEL: network.name},
        ))

    async def _create_pool_in_default_pools(self, network: pb.Network,
                                            version: int = 4) -> ipam_pb2.Pool:
        """The network's pool (of IP ``version``) on the first free subnet of the default
        address pools (address_pools.py), set as its subnet. A subnet another create took
        meanwhile (or an IPAM pool that is no network's) is refused by IPAM atomically,
        and the next one is tried."""
        pools = self._default_pools_of(network, version)
        networks, routes = await self._taken_subnets()
        taken = [ipaddress.ip_network(subnet) for _, subnet in networks] + routes
        create = self._create_pool if version == 4 else self._create_ipv6_pool
        while True:
            subnet = next(address_pools.free_subnets(pools, taken), None)
            if subnet is None:
                raise _pools_exhausted(network, pools)
            if version == 4:
                network.subnet = str(subnet)
            else:
                network.ipv6_subnet = str(subnet)
            try:
                return await create(network)
            except errors.AlreadyExists as error:
                if error.reason != "SUBNET_OVERLAP":
                    raise
                log.info("default subnet taken meanwhile; trying the next",
                         extra={"network": network.name, "subnet": str(subnet)})
                clash = error.metadata.get("clashing_subnet", "")
                taken += [ipaddress.ip_network(part) for part in clash.split(", ") if part]
                taken.append(subnet)

    async def _overlap(self, network: pb.Network, error: errors.CnmError,
                       subnet: str = "") -> errors.CnmError:
        """IPAM's SUBNET_OVERLAP, naming the network that holds the clashing pool (a user
        knows networks, not pool ids). ``subnet``: the network's that clashed (its IPv4
        one unless told)."""
        subnet = subnet or network.subnet
        clashing_id = error.metadata.get("clashing_pool_id", "")
        found = (await self.store.get_network(validation.network_of_pool(clashing_id))
                 if clashing_id else None)
        if found is None:
            return errors.AlreadyExists(
                f"subnet {subnet} overlaps IPAM pool {clashing_id!r}, which is not a "
                "network's", reason="SUBNET_OVERLAP", network=network.name,
                clashing_pool_id=clashing_id)
        other = found[0]
        theirs = other.ipv6_subnet if ":" in subnet else other.subnet
        return errors.AlreadyExists(
            f"subnet {subnet} overlaps subnet {theirs} of network {other.name!r} "
            f"({other.network_id})", reason="SUBNET_OVERLAP", network=network.name,
            clashing_network=other.name, clashing_network_id=other.network_id)

    async def _drop_intent_unless(self, undo: Undo, key: str) -> None:
        if not undo.failed:
            await self.store.drop_intent(key)

    async def quarantined_endpoints(self, network_id: str) -> list[pb.Endpoint]:
        return sorted((e for e in await self.store.quarantined() if e.network_id == network_id),
                      key=lambda endpoint: endpoint.container_id)

    async def get_network(self, name_or_id: str) -> tuple[pb.Network, list[pb.Endpoint]]:
        """A network with its per-host state, and its endpoints."""
        network, _ = await self.store.resolve_network(name_or_id)
        endpoint_ids = await self.store.network_endpoint_ids(network.network_id)
        endpoints = sorted(await self.with_states(await self.store.get_endpoints(endpoint_ids)),
                           key=lambda endpoint: endpoint.container_id)
        if network.driver == overlay.DRIVER:
            states = await self.overlay.host_states(network.network_id)
            for host_id, (ready, message) in sorted(states.items()):
                network.hosts.add(host_id=host_id, ready=ready, message=message)
            return network, endpoints
        for host_id in await self.store.network_hosts(network.network_id):
            network.hosts.add(host_id=host_id, ready=True)
        return network, endpoints

    async def list_networks(self, driver: int = 0, label_filters=()) -> list[pb.Network]:
        wanted = parse_label_filters(label_filters)
        networks = []
        for network, _ in await self.store.list_networks():
            if driver and network.driver != driver:
                continue
            if not labels_match(network, wanted):
                continue
            networks.append(network)
        return sorted(networks, key=lambda network: network.name)

    async def delete_network(self, name_or_id: str, force: bool,
                             allow_missing: bool = False) -> None:
        try:
            network, _ = await self.store.resolve_network(name_or_id)
        except errors.NotFound:
            if allow_missing:
                return
            raise
        await self._delete_network(network, force)

    async def _delete_network(self, network: pb.Network, force: bool) -> None:
        if not force:
            # Refuse before the network is marked deleting: with a host down
            # it would stay so (no connect, no create of its name) until the
            # host came back.
            await self._probe_network_hosts(network)
        lock_name = f"net:{network.network_id}"
        async with self.store.lock(lock_name):
            intent = self.store.new_intent(lock_name, Op.DELETE_NETWORK, lock=lock_name,
                                           network_id=network.network_id, name=network.name,
                                           force=force)
            if not await self.store.begin_delete_network(network, force, intent):
                return
            faults.point("delete-network-intent")
            await self.finish_network_delete(network, intent, force)
        log.info("network deleted", extra={"network": network.name, "id": network.network_id})

    async def _probe_network_hosts(self, network: pb.Network) -> None:
        """UNAVAILABLE when a host the network must be deleted from does not answer."""
        if network.driver == overlay.DRIVER:
            return  # left on a host that is down until the reconciler finds it there
        on_network = set(await self.store.network_hosts(network.network_id))
        hosts = [host for host in await self.store.list_hosts() if host.host_id in on_network]
        results = await asyncio.gather(
            *(self.hosts.agent_of(host).probe() for host in hosts),
            return_exceptions=True)
        failures = [result.message for result in results if isinstance(result, errors.Unavailable)]
        if failures:
            raise errors.Unavailable(
                f"network {network.name!r} cannot be deleted now: " + "; ".join(failures)
                + ": retry, or delete with force", network=network.name,
            )

    async def finish_network_delete(self, network: pb.Network, intent: Intent,
                                    force: bool) -> None:
        """Disconnects what is left, removes the network from its hosts, frees the pool.

        Runs with the network marked deleting (no new endpoint can be
        recorded) and its lock held.
        """
        for endpoint_id in await self.store.network_endpoint_ids(network.network_id):
            await self.disconnect_endpoint(endpoint_id, force=True)
        await self._wait_pending(network.network_id)
        if network.driver == overlay.DRIVER:
            # On every host; one that cannot be reached keeps it until the
            # reconciler finds it there with no record left.
            await self.overlay.delete_from_hosts(network)
            faults.point("delete-network-hosts")
            await self._delete_pool_unless_quarantined(network.network_id)
            await self.overlay.forget_network(network.network_id)
            await self.store.finish_delete_network(network.network_id, network.name, intent.key)
            return
        failures = []
        for host_id in await self.store.network_hosts(network.network_id):
            host = await self.store.get_host(host_id)
            if host is None:
                continue
            try:
                await self.hosts.agent_of(host).delete_network(
                    network.network_id)
            except errors.Unavailable as error:
                if not force:
                    failures.append(error)
                log.warning("network left on unreachable host",
                            extra={"network": network.network_id, "host": host_id,
                                   "error": error.message})
        if failures:
            raise errors.Unavailable(
                f"network {network.name!r} is being deleted but "
                + "; ".join(error.message for error in failures)
                + ": retry, or delete with force",
            )
        faults.point("delete-network-hosts")
        await self._delete_pool_unless_quarantined(network.network_id)
        await self.store.finish_delete_network(network.network_id, network.name, intent.key)

    async def _delete_pool_unless_quarantined(self, network_id: str) -> None:
        """The pool of a deleted network goes, unless an endpoint of it is quarantined (its
        address may still be in a host's kernel): the reconciler deletes it after that."""
        if any(e.network_id == network_id for e in await self.store.quarantined()):
            log.warning("pool kept while endpoints of the deleted network are quarantined",
                        extra={"network": network_id})
            return
        await self._delete_pools(network_id)

    async def _delete_pools(self, network_id: str) -> None:
        """The network's IPAM pools: its IPv4 one and, dual stack, its IPv6 one (deleting
        one that does not exist succeeds)."""
        await asyncio.gather(self.ipam.delete_pool(network_id, force=True),
                             self.ipam.delete_pool(validation.ipv6_pool_id(network_id),
                                                   force=True))

    async def _wait_pending(self, network_id: str) -> None:
        """Lets connects in flight on a deleting network fail and undo themselves."""
        deadline = time.monotonic() + PENDING_WAIT
        while pending := await self.store.network_pending_ids(network_id):
            for endpoint_id in pending:
                await self.settle_if_abandoned(endpoint_id)
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"connects still in flight on network {network_id}: retry", reason="BUSY")
            await asyncio.sleep(0.05)

    async def prune_networks(self, label_filters=(), excluded_label_filters=(),
                             created_before: float | None = None) -> tuple[list[str], list[str]]:
        """(names deleted, names skipped because a host of theirs did not answer), of the
        networks with every label of ``label_filters``, none of
        ``excluded_label_filters``, created before ``created_before`` (seconds)."""
        deleted, skipped = [], []
        wanted, unwanted = parse_label_filters(label_filters), parse_label_filters(
            excluded_label_filters)
        for network, state in await self.store.list_networks():
            if state != STATE_READY or not labels_match(network, wanted) or any(
                    labels_match(network, [one]) for one in unwanted):
                continue
            if created_before is not None and \
                    network.create_time.ToNanoseconds() / 1e9 >= created_before:
                continue
            try:
                await self._delete_network(network, force=False)
            except errors.FailedPrecondition:
                continue
            except errors.Unavailable as error:
                log.warning("network not pruned", extra={"network": network.name,
                                                         "error": error.message})
                skipped.append(network.name)
                continue
            deleted.append(network.name)
        return sorted(deleted), sorted(skipped)

    # --- endpoints ----------------------------------------------------------

    async def connect(self, request: pb.ConnectContainerRequest) -> pb.Endpoint:
        """The connect saga (``_connect``); a host port it chose (a mapping's host port 0)
        that its host turns out to use is chosen again, a few times."""
        in_use: set[tuple[str, int]] = set()  # host ports the host refused, by protocol
        while True:
            try:
                return await self._connect(request, in_use)
            except errors.AlreadyExists as error:
                port = error.metadata.get("host_port", "")
                if error.reason != "PORT_IN_USE" or len(in_use) == EPHEMERAL_ATTEMPTS or \
                        not port.isdigit() or \
                        not any(m.host_port == 0 for m in request.port_mappings):
                    raise
                in_use.add((error.metadata.get("protocol", "tcp"), int(port)))
                log.info("a chosen host port is in use on the host; choosing again",
                         extra={"container": request.container_id, "error": error.message})

    async def _connect(self, request: pb.ConnectContainerRequest,
                       in_use: set[tuple[str, int]] = frozenset()) -> pb.Endpoint:
        """The connect saga: check everything, then under the endpoint's lock write the
        intent (ports reserved), allocate the address, make the endpoint on its host and
        record it. Each step pushes its inverse; a failure undoes them in reverse."""
        network, wanted = await self._connect_request(request)
        # A repeat of a completed connect succeeds whatever the host's health
        # since; an endpoint with an intent (a disconnect cut short) is settled first.
        view = await self.store.connect_view(wanted.endpoint_id, request.host_id)
        lock_name = f"ep:{wanted.endpoint_id}"
        if view.endpoint is not None and not view.intent and not view.gone:
            return await self._repeated_connect(view.endpoint, network, wanted)
        host = view.host
        agent = await self.hosts.agent_for(request.host_id, host)
        if not self.hosts.healthy(host):
            raise errors.Unavailable(
                f"host {request.host_id!r} has missed its heartbeats; not connecting to it",
                reason="HOST_UNHEALTHY", host=request.host_id,
            )
        # Asked while the lock is taken and the records are read: a container that is not
        # there is NOT_FOUND (an agent that does not answer UNAVAILABLE) before anything is
        # allocated. (A repeat does not need the answer: retrieved, never raised.)
        sandbox = asyncio.ensure_future(_no_sandbox() if wanted.peer_on_host
                                        else agent.get_sandbox(wanted.sandbox))
        sandbox.add_done_callback(_retrieve)
        async with self.store.endpoint_lock(wanted.endpoint_id) as lock:
            try:
                existing, intent = lock.endpoint, lock.intent  # read as it was taken
                if intent is not None:
                    await self._settle_intent(intent)
                    existing = await self.store.get_endpoint(wanted.endpoint_id)
                if existing is not None and await self.store.gone_times([wanted.endpoint_id]):
                    # Its container died, and the one connecting now has its id (a name
                    # used again): the dead one's endpoint goes first.
                    await self._disconnect_locked(existing, force=False)
                    existing = None
                if existing is not None:
                    return await self._repeated_connect(existing, network, wanted)
                await sandbox
            finally:
                sandbox.cancel()
            endpoint, intent, default_route = await self._begin_connect(wanted, lock_name,
                                                                        in_use)
            faults.point("connect-intent")
            async with Undo(f"connect {endpoint.endpoint_id}", log) as undo:
                undo.push("forget endpoint",
                          lambda: self._forget_unless(undo, endpoint, intent.key))
                def create():
                    return self._create_on_host(undo, network, endpoint, host, agent,
                                                default_route)

                if endpoint.address_reserved:
                    # The address is known (its host's reservation): IPAM hands it over
                    # while the host makes the endpoint. Both finish before any undo.
                    _, generation = await _all(self._allocate(undo, network, endpoint),
                                               create())
                else:
                    await self._allocate(undo, network, endpoint)
                    generation = await create()
                endpoint.create_time.CopyFrom(now())
                if not await self.store.commit_connect(endpoint, intent.key, lock):
                    raise errors.FailedPrecondition(
                        f"network {network.name!r} was deleted during the connect")
                undo.commit()
        if network.driver == overlay.DRIVER and (
            await self.overlay.generation(network.network_id) != generation
            or endpoint.mac_address != _derived_mac(endpoint)
        ):
            # Another push was taken meanwhile, without the endpoint: push again.
            await self.sync_peers(network.network_id, skip_host=request.host_id)
        endpoint.state = pb.ENDPOINT_STATE_ACTIVE
        return endpoint

    async def _begin_connect(self, wanted: pb.Endpoint, lock_name: str,
                             in_use: set[tuple[str, int]]) -> tuple[pb.Endpoint, Intent, bool]:
        """The connect's intent written and its ports reserved (store.begin_connect), with
        a free host port chosen for each mapping that asks for any (host port 0): chosen
        again when a concurrent connect reserved it first."""
        for attempt in range(EPHEMERAL_ATTEMPTS):
            endpoint = pb.Endpoint()
            endpoint.CopyFrom(wanted)
            chosen = await self._choose_host_ports(endpoint, in_use)
            intent = self.store.new_intent(lock_name, Op.CONNECT, lock=lock_name,
                                           endpoint=encode(endpoint))
            try:
                return endpoint, intent, await self.store.begin_connect(endpoint, intent)
            except errors.AlreadyExists as error:
                if not chosen or error.reason != "PORT_ALLOCATED" or \
                        attempt == EPHEMERAL_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _choose_host_ports(self, endpoint: pb.Endpoint,
                                 in_use: set[tuple[str, int]]) -> bool:
        """Sets a free host port, from the ephemeral range, in each mapping with host
        port 0 (as Docker's -p 80); whether there was one. Free: no endpoint of the host
        holds it on any address, and the host did not refuse it (``in_use``: the agent
        refuses a port a socket of the host holds)."""
        wanted = [m for m in endpoint.port_mappings if m.host_port == 0]
        if not wanted:
            return False
        taken = await self.store.host_ports(endpoint.host_id) | set(in_use)
        first, last = self.ephemeral_ports
        size = last - first + 1
        for mapping in wanted:
            proto = cnm_validation.protocol_name(mapping.protocol)
            start = random.randrange(size)
            port = next((first + (start + step) % size for step in range(size)
                         if (proto, first + (start + step) % size) not in taken), None)
            if port is None:
                raise errors.ResourceExhausted(
                    f"no free {proto} host port left on host {endpoint.host_id} in the "
                    f"ephemeral range {first}-{last}: give a host port, or widen the range "
                    "(the orchestrator's --ephemeral-ports, env CNM_EPHEMERAL_PORTS)",
                    reason="EPHEMERAL_PORTS_EXHAUSTED", host=endpoint.host_id)
            mapping.host_port = port
            taken.add((proto, port))
        return True

    async def _connect_request(
        self, request: pb.ConnectContainerRequest
    ) -> tuple[pb.Network, pb.Endpoint]:
        """Every check a connect makes before its first side effect: the network and the
        endpoint it asks for (address empty when dynamic)."""
        cnm_validation.check_id("container_id", request.container_id)
        network = await self._network_taking_addresses(request.network)
        prefix_length = ipaddress.ip_network(network.subnet).prefixlen if network.subnet else 0
        address = _endpoint_address(network, request.address) if request.address else ""
        ipv6_address, ipv6_prefix_length = _endpoint_ipv6(network, request)
        return network, pb.Endpoint(
            endpoint_id=validation.endpoint_id(network.network_id, request.container_id),
            network_id=network.network_id, network_name=network.name,
            container_id=request.container_id, host_id=request.host_id,
            sandbox=_sandbox_of(request),
            address=address, prefix_length=prefix_length,
            port_mappings=validation.port_mappings(request.port_mappings, network.internal,
                                                   ipv6=bool(ipv6_prefix_length),
                                                   ipv4=bool(prefix_length)),
            container_interface=request.interface_name and cnm_validation.check_ifname(
                "interface_name", request.interface_name),
            mac_address=request.mac_address and cnm_validation.check_mac(request.mac_address),
            labels=cnm_validation.check_labels(request.labels),
            address_reserved=request.address_reserved, peer_on_host=request.peer_on_host,
            dns_names=list(dict.fromkeys(
                cnm_validation.check_dns_name("dns_names", name).lower()
                for name in request.dns_names)),
            ipv6_address=ipv6_address, ipv6_prefix_length=ipv6_prefix_length,
        )

    async def _allocate(self, undo: Undo, network: pb.Network, endpoint: pb.Endpoint) -> None:
        """Saga step: the endpoint's address from IPAM (the one asked for, if any; one its
        host reserved, taken over from the reservation)."""
        # Pushed first: IPAM may have allocated even if the call failed.
        undo.push("give back address", lambda: self._give_back_address(endpoint))
        if endpoint.address_reserved:
            await self._take_reserved(network, endpoint)
            faults.point("connect-ipam")
            return
        # Both families at once (each is its own pool, and the undo pushed above gives back
        # whichever was allocated); one on an IPv4-only or IPv6-only network.
        await _all(*(allocate(network, endpoint) for allocate, length in (
            (self._allocate_ipv4, endpoint.prefix_length),
            (self._allocate_ipv6, endpoint.ipv6_prefix_length)) if length))
        faults.point("connect-ipam")

    async def _allocate_ipv4(self, network: pb.Network, endpoint: pb.Endpoint) -> None:
        try:
            allocation = await self.ipam.allocate(network.network_id, endpoint.endpoint_id,
                                                  endpoint.address)
        except errors.AlreadyExists as error:
            raise errors.AlreadyExists(
                f"address {endpoint.address} is already in use on network {network.name!r}",
                reason="ADDRESS_IN_USE", network=network.name, address=endpoint.address,
            ) from error
        endpoint.address = allocation.address
        endpoint.prefix_length = allocation.prefix_length

    async def _allocate_ipv6(self, network: pb.Network, endpoint: pb.Endpoint) -> None:
        """A dual-stack endpoint's IPv6 address (the one asked for, if any)."""
        try:
            allocation = await self.ipam.allocate(validation.ipv6_pool_id(network.network_id),
                                                  endpoint.endpoint_id, endpoint.ipv6_address)
        except errors.AlreadyExists as error:
            raise errors.AlreadyExists(
                f"address {endpoint.ipv6_address} is already in use on network "
                f"{network.name!r}", reason="ADDRESS_IN_USE", network=network.name,
                address=endpoint.ipv6_address,
            ) from error
        endpoint.ipv6_address = allocation.address

    async def _take_reserved(self, network: pb.Network, endpoint: pb.Endpoint) -> None:
        """The endpoint's addresses (one per family) taken over from its host's
        reservations, both at once."""
        if not endpoint.address and endpoint.prefix_length:
            raise errors.InvalidArgument("address_reserved needs the address reserved",
                                         field="address")

        async def take(pool_id: str, address: str) -> None:
            held = validation.reservation_owner(endpoint.host_id, address)
            try:
                await self.ipam.transfer(pool_id, address, held, endpoint.endpoint_id)
            except errors.FailedPrecondition as error:
                raise errors.FailedPrecondition(
                    f"address {address} of network {network.name!r} is not reserved by "
                    f"host {endpoint.host_id!r}", reason="ADDRESS_NOT_RESERVED",
                    network=network.name, address=address) from error

        await _all(*(take(pool_id, address) for pool_id, address in _addresses(endpoint)))

    async def _give_back_address(self, endpoint: pb.Endpoint) -> None:
        """Releases the endpoint's addresses; ones its host reserved go back to the
        reservation (the runtime that reserved them releases them)."""
        if not endpoint.address_reserved:
            await self._release_owner(endpoint)
            return

        async def give_back(pool_id: str, address: str) -> None:
            held = validation.reservation_owner(endpoint.host_id, address)
            # Not held (never taken, or given back already) or no pool: nothing to do.
            with contextlib.suppress(errors.FailedPrecondition, errors.NotFound):
                await self.ipam.transfer(pool_id, address, endpoint.endpoint_id, held)

        await _all(*(give_back(pool_id, address) for pool_id, address in _addresses(endpoint)))

    async def _release_owner(self, endpoint: pb.Endpoint) -> None:
        """Releases what the endpoint holds in IPAM: its address of each family its network
        has (the prefix lengths are known from the connect's start, before any
        allocation)."""
        if endpoint.prefix_length:
            await self.ipam.release_owner(endpoint.network_id, endpoint.endpoint_id)
        if endpoint.ipv6_prefix_length:
            await self.ipam.release_owner(validation.ipv6_pool_id(endpoint.network_id),
                                          endpoint.endpoint_id)

    async def reserve_address(self, network_name: str, host_id: str, address: str,
                              ipv6: bool = False) -> tuple[str, int, str]:
        """(address, prefix length, gateway) reserved on the network for the host, from
        its IPv6 subnet with ``ipv6`` or an IPv6 ``address``."""
        network, host = await _all(self._network_taking_addresses(network_name),
                                   self.store.get_host(host_id))
        if host is None:
            raise errors.NotFound(f"host {host_id!r} is not registered",
                                  reason="HOST_NOT_FOUND", host=host_id)
        pool_id, address = _reservation(network, address or None, ipv6)
        try:
            allocation = await self.ipam.allocate(pool_id,
                                                  validation.reservation_owner(host_id),
                                                  address, owner_is_prefix=True)
        except errors.AlreadyExists as error:
            raise errors.AlreadyExists(
                f"address {address} is already in use on network {network.name!r}",
                reason="ADDRESS_IN_USE", network=network.name, address=address,
            ) from error
        return allocation.address, allocation.prefix_length, allocation.gateway

    async def release_reserved(self, network_name: str, host_id: str, address: str) -> None:
        network, _ = await self.store.resolve_network(network_name)
        pool_id, address = _reservation(network, address, False)
        await self.ipam.release_owner(pool_id, validation.reservation_owner(host_id, address))

    async def _network_taking_addresses(self, name: str) -> pb.Network:
        """The network ``name`` names, if it may hand out an address (not being deleted)."""
        network, state = await self.store.resolve_network(name)
        if state == STATE_DELETING:
            raise errors.FailedPrecondition(f"network {network.name!r} is being deleted",
                                            network=network.name)
        return network

    async def _create_on_host(self, undo: Undo, network: pb.Network, endpoint: pb.Endpoint,
                              host: pb.Host | None, agent, default_route: bool) -> int:
        """Saga step: the endpoint on its host (and, overlay, on the other hosts' peer lists,
        pushed while the host makes it). Returns the generation of that push (0: none)."""
        if network.driver == overlay.DRIVER and host is not None:
            await self.overlay.ensure_ready(network, host)
        generation = 0  # (begin_connect made the host one of the network's)
        request = agent.create_endpoint(agent_endpoint(endpoint, default_route),
                                        agent_network(network))
        if network.driver == overlay.DRIVER:
            # The other hosts learn the endpoint while its host makes it.
            endpoint.mac_address = _derived_mac(endpoint)
            undo.push("take the endpoint off the other hosts",
                      lambda: self.sync_peers(network.network_id, endpoint.host_id))
            created, (generation, _) = await asyncio.gather(
                request, self.overlay.push_peers(network.network_id, skip_host=endpoint.host_id,
                                                 pending=endpoint))
        else:
            created = await request
        undo.push("delete endpoint on host", lambda: agent.delete_endpoint(endpoint.endpoint_id))
        faults.point("connect-agent")
        endpoint.mac_address = created.mac_address
        endpoint.host_interface = created.host_interface
        endpoint.container_interface = created.container_interface
        return generation

    async def _repeated_connect(self, existing: pb.Endpoint, network: pb.Network,
                                wanted: pb.Endpoint) -> pb.Endpoint:
        """The endpoint of a repeated connect; AlreadyExists when the parameters differ."""
        if validation.same_endpoint(existing, wanted):
            return (await self.with_states([existing]))[0]
        raise errors.AlreadyExists(
            f"container {wanted.container_id!r} is already connected to network "
            f"{network.name!r} with different parameters (host {existing.host_id}, "
            f"address {existing.address})",
            network=network.name, container=wanted.container_id,
        )

    async def _forget_unless(self, undo: Undo, endpoint: pb.Endpoint, intent_key: str) -> None:
        if not undo.failed:
            await self.store.forget_endpoint(endpoint, intent_key)

    async def disconnect(self, network_name: str, container_id: str, force: bool,
                         allow_missing: bool, only_host: str | None = None,
                         release_address: bool = False) -> None:
        """Disconnects a container; with ``only_host`` (an agent caller, bound to its
        host) PERMISSION_DENIED for an endpoint on any other host; with
        ``release_address`` a reserved address is released, not given back."""
        network, _ = await self.store.resolve_network(network_name)
        endpoint_id = validation.endpoint_id(network.network_id, container_id)
        found = await self.disconnect_endpoint(endpoint_id, force, only_host,
                                               release_address=release_address,
                                               network=network)
        if not found and not allow_missing:
            raise errors.NotFound(
                f"container {container_id!r} is not connected to network {network.name!r}",
                reason="NOT_CONNECTED", network=network.name, container=container_id,
            )

    async def disconnect_endpoint(self, endpoint_id: str, force: bool,
                                  only_host: str | None = None, gone_only: bool = False,
                                  release_address: bool = False,
                                  network: pb.Network | None = None) -> bool:
        """Disconnects a recorded endpoint; False when there was none (with ``gone_only``:
        none whose container its host reported gone). ``network``: the endpoint's, if the
        caller has it (a network of another driver than overlay has no peers to push)."""
        async with self.store.endpoint_lock(endpoint_id) as lock:
            endpoint = lock.endpoint  # read as it was taken, with its intent
            if endpoint is None:
                if lock.intent is None:
                    return False
                await self._settle_intent(lock.intent)
                return not gone_only
            if gone_only and not await self.store.gone_times([endpoint_id]):
                return False
            if only_host is not None and endpoint.host_id != only_host:
                raise errors.PermissionDenied(
                    f"the endpoint is on host {endpoint.host_id!r}: an agent acts on its own "
                    f"host ({only_host!r}) only", reason="OTHER_HOST", host_id=endpoint.host_id)
            if release_address:
                # Recorded in the intent: a disconnect cut short releases it too.
                endpoint.address_reserved = False
            await self._disconnect_locked(endpoint, force, lock)
        if network is None or network.driver == overlay.DRIVER:
            await self.sync_peers(endpoint.network_id, skip_host=endpoint.host_id)
        return True

    async def _disconnect_locked(self, endpoint: pb.Endpoint, force: bool,
                                 lock: Lock | None = None) -> None:
        """The disconnect of a recorded endpoint, its lock held: intent, host, IPAM,
        forget (quarantined when ``force`` went past its unreachable host). ``lock``,
        when the disconnect is all its holder does: released with the forgetting."""
        lock_name = f"ep:{endpoint.endpoint_id}"
        intent = self.store.new_intent(lock_name, Op.DISCONNECT, lock=lock_name,
                                       endpoint=encode(endpoint))
        host = await self.store.put_intent_get_host(intent, endpoint.host_id)
        faults.point("disconnect-intent")
        try:
            confirmed = await self._delete_on_host(endpoint, force, host)
        except errors.CnmError:
            await self.store.drop_intent(intent.key)  # nothing changed yet
            raise
        faults.point("disconnect-agent")
        if confirmed:
            await self._release_and_forget(endpoint, intent.key, lock)
        else:  # its kernel may still use address and ports: held until it says not
            await self.store.forget_endpoint(endpoint, intent.key, quarantine=True, lock=lock)

    async def _delete_on_host(self, endpoint: pb.Endpoint, force: bool,
                              host: pb.Host | None) -> bool:
        """Deletes the endpoint on ``host`` (its record as just read: None when it is gone
        from the records); True once the host confirmed it (or is gone), False when
        ``force`` went past an unreachable host."""
        if host is None:
            return True
        try:
            await self.hosts.agent_of(host).delete_endpoint(endpoint.endpoint_id)
        except errors.Unavailable:
            if not force:
                raise
            log.warning("endpoint forgotten on unreachable host: its address and ports are "
                        "held until the host confirms or is removed",
                        extra={"endpoint": endpoint.endpoint_id, "host": host.host_id})
            return False
        return True

    async def release_quarantined(self, host_id: str = "") -> list[str]:
        """Gives back what endpoints disconnected past their unreachable host hold, for
        each whose host now confirms the teardown or is gone. Returns their ids."""
        released = []
        for endpoint in await self.store.quarantined():
            if host_id and endpoint.host_id != host_id:
                continue
            async with self.store.try_lock(f"ep:{endpoint.endpoint_id}") as taken:
                if not taken:
                    continue
                if await self.store.get_endpoint(endpoint.endpoint_id) is not None:
                    # Connected again since (same id: same IPAM owner and ports).
                    await self.store.drop_quarantine(endpoint.endpoint_id)
                    continue
                try:
                    host = await self.store.get_host(endpoint.host_id)
                    if not await self._delete_on_host(endpoint, force=True, host=host):
                        continue
                except errors.CnmError as error:
                    log.warning("quarantined endpoint not released",
                                extra={"endpoint": endpoint.endpoint_id, "error": error.message})
                    continue
                with contextlib.suppress(errors.NotFound):  # its network's pool is gone
                    await self._give_back_address(endpoint)
                await self.store.forget_endpoint(endpoint, f"ep:{endpoint.endpoint_id}")
                released.append(endpoint.endpoint_id)
        return released

    async def _release_and_forget(self, endpoint: pb.Endpoint, intent_key: str,
                                  lock: Lock | None = None) -> None:
        await self._give_back_address(endpoint)
        await self.store.forget_endpoint(endpoint, intent_key, lock=lock)

    async def adopt_endpoint(self, host_id: str, found: nd.Endpoint) -> str:
        """An endpoint a host's kernel has that no record, intent or quarantine knows: its
        record was lost (a Redis crash), so it is recorded again from what the agent
        reports, its address and ports reserved again, rather than a live container cut
        off. Returns "adopted"; "unknown" when the agent cannot say its parameters or its
        network is not recorded (the caller deletes it then); raises when its address or
        ports are another's now (both holders named, nothing deleted). The caller holds
        the endpoint's lock."""
        existing = await self.store.get_network(found.network_id) \
            if found.address or found.ipv6_address else None
        if existing is None:
            return "unknown"
        network, state = existing
        if state != STATE_READY:
            return "unknown"
        endpoint = pb.Endpoint(
            endpoint_id=found.endpoint_id, network_id=network.network_id,
            network_name=network.name, container_id=found.container_id, host_id=host_id,
            sandbox=found.sandbox, address=found.address, mac_address=found.mac_address,
            host_interface=found.host_interface, container_interface=found.container_interface,
            port_mappings=[pb.PortMapping(protocol=m.protocol, host_ip=m.host_ip,
                                          host_port=m.host_port, container_port=m.container_port)
                           for m in found.port_mappings])
        if bool(network.subnet) != bool(found.address):
            return "unknown"  # not an endpoint of this network as it is recorded
        if network.subnet:
            try:
                allocation = await self.ipam.allocate(network.network_id, endpoint.endpoint_id,
                                                      endpoint.address)
            except errors.AlreadyExists as error:
                raise errors.AlreadyExists(
                    f"endpoint {endpoint.endpoint_id} on host {host_id} (container "
                    f"{endpoint.container_id!r}) uses {endpoint.address} on network "
                    f"{network.name!r}, which IPAM gives to another owner: {error.message}",
                    reason="ADDRESS_IN_USE", address=endpoint.address) from error
            endpoint.prefix_length = allocation.prefix_length
        if network.ipv6_subnet and found.ipv6_address:
            endpoint.ipv6_address = found.ipv6_address
            endpoint.ipv6_prefix_length = ipaddress.ip_network(network.ipv6_subnet).prefixlen
            try:
                await self._allocate_ipv6(network, endpoint)
            except errors.CnmError:
                await self._release_owner(endpoint)
                raise
        endpoint.create_time.CopyFrom(now())
        intent = self.store.new_intent(f"ep:{endpoint.endpoint_id}", Op.CONNECT,
                                       lock=f"ep:{endpoint.endpoint_id}",
                                       endpoint=encode(endpoint))
        try:
            await self.store.begin_connect(endpoint, intent)
        except errors.CnmError:  # a port is another's now: say so, keep the address free
            await self._release_owner(endpoint)
            raise
        await self.store.add_network_host(network.network_id, host_id)
        if not await self.store.commit_connect(endpoint, intent.key):
            raise errors.FailedPrecondition(f"network {network.name!r} went meanwhile")
        log.warning("endpoint found on its host without a record: recorded again",
                    extra={"endpoint": endpoint.endpoint_id, "host": host_id,
                           "address": endpoint.address, "container": endpoint.container_id})
        return "adopted"

    async def repair_lost_endpoint(self, endpoint: pb.Endpoint) -> str:
        """An endpoint recorded on a healthy host whose kernel no longer has it (deleted
        behind cnm's back, or lost with its sandbox): made again if its container's
        namespace is still there, else disconnected (its address released). The caller
        holds the endpoint's lock. Returns what was done."""
        host = await self.store.get_host(endpoint.host_id)
        found = await self.store.get_network(endpoint.network_id)
        if host is None or found is None:
            return "left"
        network, _ = found
        agent = self.hosts.agent_of(host)
        siblings = await self.list_endpoints(container_id=endpoint.container_id,
                                             host_id=endpoint.host_id)
        # The container's first network has its default route.
        first = min(siblings or [endpoint], key=lambda e: (e.create_time.ToNanoseconds(),
                                                            e.endpoint_id))
        try:
            if endpoint.peer_on_host:
                # Its runtime moved the interface into the container once; cnm cannot.
                raise errors.NotFound("a runtime-moved interface cannot be made again")
            created = await agent.create_endpoint(
                agent_endpoint(endpoint, first.endpoint_id == endpoint.endpoint_id),
                agent_network(network))
        except errors.NotFound:  # the container is gone: give back what it held
            await self._release_and_forget(endpoint, f"ep:{endpoint.endpoint_id}")
            await self.sync_peers(endpoint.network_id, skip_host=endpoint.host_id)
            return "released"
        if (created.host_interface, created.mac_address) != (endpoint.host_interface,
                                                             endpoint.mac_address):
            endpoint.host_interface = created.host_interface
            endpoint.mac_address = created.mac_address
            await self.store.update_endpoint(endpoint)
        return "recreated"

    async def settle_if_abandoned(self, endpoint_id: str) -> bool:
        """Finishes or undoes an endpoint's connect/disconnect if nobody is running it."""
        async with self.store.try_lock(f"ep:{endpoint_id}") as taken:
            return taken and await self.settle_locked(endpoint_id)

    async def settle_locked(self, endpoint_id: str) -> bool:
        """With the endpoint's lock held, nobody runs its intent: undo/finish it."""
        intent = await self.store.get_intent(f"ep:{endpoint_id}")
        if intent is None:
            return False
        await self._settle_intent(intent)
        return True

    async def _settle_intent(self, intent: Intent) -> None:
        """:meth:`settle_locked` of an endpoint intent already read."""
        endpoint = decode_endpoint(intent)
        INTENTS_SETTLED.labels(str(intent.op)).inc()
        log.info("settling abandoned intent",
                 extra={"op": intent.op, "endpoint": endpoint.endpoint_id, "replica": intent.replica})
        # Undoing a connect and finishing a disconnect are the same steps.
        host = await self.store.get_host(endpoint.host_id)
        await self._delete_on_host(endpoint, force=False, host=host)
        await self._release_and_forget(endpoint, intent.key)

    async def settle_network_intent(self, intent: Intent) -> None:
        """With the intent's lock held: undo a create, finish a delete."""
        network_id = intent.data["network_id"]
        INTENTS_SETTLED.labels(str(intent.op)).inc()
        if intent.op == Op.CREATE_NETWORK:
            found = await self.store.get_network(network_id)
            if found is None:
                await self._delete_pools(network_id)
                await self.vnis.release(network_id)
            await self.store.drop_intent(intent.key)
        elif intent.op == Op.DELETE_NETWORK:
            found = await self.store.get_network(network_id)
            if found is None:
                await self._delete_pools(network_id)
                await self.store.drop_intent(intent.key)
                return
            await self.finish_network_delete(found[0], intent, bool(intent.data.get("force")))

    async def sync_peers(self, network_id: str, skip_host: str = "") -> bool:
        """Pushes an overlay network's peers and remote endpoints to its hosts.

        False when a host missed it (the network is marked and the
        reconciler pushes again). Networks of other drivers, or being
        deleted, need nothing. ``skip_host``: a host whose view did not
        change (its own endpoint came or went).
        """
        found = await self.store.get_network(network_id)
        if found is None or found[1] != STATE_READY or found[0].driver != overlay.DRIVER:
            return True
        _, complete = await self.overlay.push_peers(network_id, skip_host)
        return complete

    async def get_endpoint(self, endpoint_id: str) -> pb.Endpoint:
        endpoint = await self.store.get_endpoint(endpoint_id)
        if endpoint is None:
            raise errors.NotFound(f"endpoint {endpoint_id!r} not found",
                                  reason="ENDPOINT_NOT_FOUND", endpoint=endpoint_id)
        return (await self.with_states([endpoint]))[0]

    async def list_endpoints(self, network: str = "", container_id: str = "",
                             host_id: str = "") -> list[pb.Endpoint]:
        network_id = ""
        if network:
            network_id = (await self.store.resolve_network(network))[0].network_id
        ids = await self.store.endpoint_ids(network_id=network_id, container_id=container_id,
                                            host_id=host_id)
        if ids is None:
            ids = await self.store.all_endpoint_ids()
        endpoints = await self.with_states(await self.store.get_endpoints(sorted(ids)))
        return sorted(endpoints, key=lambda e: (e.network_name, e.container_id))

    # --- sandboxes ----------------------------------------------------------

    async def create_sandbox(self, name: str, host_id: str) -> pb.Sandbox:
        cnm_validation.check_sandbox_name(name)
        agent = await self.hosts.agent(host_id)
        sandbox = await agent.create_sandbox(name)
        return pb.Sandbox(name=sandbox.name, host_id=host_id, path=sandbox.path)

    async def delete_sandbox(self, name: str, host_id: str, allow_missing: bool) -> None:
        cnm_validation.check_sandbox_name(name)
        agent = await self.hosts.agent(host_id)
        known = {sandbox.name: sandbox for sandbox in await agent.list_sandboxes()}
        path = known[name].path if name in known else ""
        endpoints = [endpoint for endpoint in await self.list_endpoints(host_id=host_id)
                     if _in_sandbox(endpoint, name, path)]
        if name not in known and not endpoints:
            if allow_missing:
                return
            raise errors.NotFound(f"sandbox {name!r} not found on host {host_id!r}",
                                  reason="SANDBOX_NOT_FOUND", sandbox=name, host=host_id)
        for endpoint in endpoints:
            await self.disconnect_endpoint(endpoint.endpoint_id, force=False)
        await agent.delete_sandbox(name)
        # A connect that raced the removal made its endpoint in the namespace just
        # deleted: its record (or, still running, its intent) would be a ghost holding an
        # address. Each is disconnected, after the connect finishes (the endpoint's lock).
        for endpoint_id in await self._endpoints_in_sandbox(name, path, host_id):
            await self.disconnect_endpoint(endpoint_id, force=False)

    async def _endpoints_in_sandbox(self, name: str, path: str, host_id: str) -> list[str]:
        found = {endpoint.endpoint_id for endpoint in await self.list_endpoints(host_id=host_id)
                 if _in_sandbox(endpoint, name, path)}
        connecting = [decode_endpoint(intent) for intent in await self.store.intents()
                      if intent.op == Op.CONNECT]
        found |= {endpoint.endpoint_id for endpoint in connecting
                  if endpoint.host_id == host_id and _in_sandbox(endpoint, name, path)}
        return sorted(found)

    async def list_sandboxes(self, host_id: str = "") -> tuple[list[pb.Sandbox], list[str]]:
        """The sandboxes of one host, or of every host asked at once; and the hosts that
        did not answer (only when listing all: one host's failure is the error)."""
        hosts = [host_id] if host_id else [host.host_id for host in await self.store.list_hosts()]

        async def of_host(one: str) -> list[pb.Sandbox] | None:
            agent = await self.hosts.agent(one)
            try:
                sandboxes = await agent.list_sandboxes()
            except errors.Unavailable:
                if host_id:
                    raise
                return None
            endpoints = await self.list_endpoints(host_id=one)
            return [pb.Sandbox(name=sandbox.name, host_id=one, path=sandbox.path,
                               inode=sandbox.inode,
                               endpoints=[e for e in endpoints
                                          if _in_sandbox(e, sandbox.name, sandbox.path)])
                    for sandbox in sandboxes]

        answers = await asyncio.gather(*(of_host(one) for one in hosts))
        result = [sandbox for answer in answers if answer for sandbox in answer]
        unreachable = sorted(one for one, answer in zip(hosts, answers, strict=True)
                             if answer is None)
        return sorted(result, key=lambda s: (s.host_id, s.name)), unreachable


def parse_label_filters(specs) -> list[tuple[str, str | None]]:
    """``KEY`` or ``KEY=VALUE`` filters as (key, value or None)."""
    parsed = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        parsed.append((key, value if sep else None))
    return parsed


def labels_match(network: pb.Network, wanted: list[tuple[str, str | None]]) -> bool:
    """Whether the network has every label of ``wanted`` (a value None: any value)."""
    return all(key in network.labels and (value is None or network.labels[key] == value)
               for key, value in wanted)
