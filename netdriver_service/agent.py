"""The host agent's operations, independent of gRPC.

Each mutating operation validates its whole request first, then runs
under one lock (the kernel state of a host is changed by one operation at
a time), pushes the inverse of every completed step on an
``cnm.undo.Undo`` and drops them only on success. What exists is always
read from the kernel; the store only adds the parameters the kernel does
not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from prometheus_client import Counter

from cnm import errors, validation
from cnm.netdriver.v1 import netdriver_pb2
from cnm.undo import Undo
from netdriver_service import model, names, netns
from netdriver_service.dns import Resolvers
from netdriver_service.drivers import DRIVERS, Driver, make_driver
from netdriver_service.drivers.bridge import network_rules, port_rules
from netdriver_service.drivers.overlay import check_peer_fields, check_peers
from netdriver_service.faults import Faults
from netdriver_service.firewall import TABLE_MISSING, Firewall, PortRule
from netdriver_service.hostports import HostPorts
from netdriver_service.model import EndpointSpec, NetworkSpec, Peer, RemoteEndpoint
from netdriver_service.netlink import Link, LinkNotOwned, Netlink
from netdriver_service.state import Store
from netdriver_service.teardown import Teardown

log = logging.getLogger("netdriver")
T = TypeVar("T")
FIREWALL_PROBE_INTERVAL = 15.0  # seconds between the readiness probe's firewall checks
LOST_MEMORY = 3600.0  # seconds a lost endpoint is reported if the orchestrator never answers
RESYNC_INTERVAL = 30.0  # seconds between two full reconciliations of the firewall

# What a resync found wrong and put right (cnm/metrics.py), by kind:
REPAIR_KINDS = {
    "crash_leftover": "what a request cut short by a crash left in the kernel",
    "container_gone": "an endpoint whose container died",
    "veth_gone": "an endpoint whose veth was deleted",
    "reattached": "a veth detached from its bridge",
    "firewall": "nftables rules or elements missing or stray",
    "network": "a network device missing or changed",
}
RESYNC_REPAIRS = Counter("cnm_agent_resync_repairs",
                         "Drift the agent's resync put right, by kind: "
                         + "; ".join(f"{k}: {v}" for k, v in REPAIR_KINDS.items()), ["kind"])
for _kind in REPAIR_KINDS:
    RESYNC_REPAIRS.labels(_kind)


class Agent:
    def __init__(
        self, *, host_id: str, underlay_ip: str, netlink: Netlink, firewall: Firewall,
        store: Store, faults: Faults | None = None, netns_dir: str = netns.NETNS_DIR,
        sandbox_dirs: tuple[str, ...] = (),
    ) -> None:
        self.host_id = host_id
        self.underlay_ip = underlay_ip
        # Not given: the address of the default route's interface, read again at every
        # resync, as a host's address may change (DHCP, a moved VM).
        self.underlay_from_route = not underlay_ip
        self.netlink = netlink
        self.firewall = firewall
        self.store = store
        self.faults = faults or Faults()
        self.netns_dir = netns_dir
        # An open file of each sandbox's namespace: its /var/run/netns entry may be deleted
        # behind cnm's back, and the sandbox must still be found, listed and deleted.
        self._handles: dict[str, int] = {}
        # A bound socket per published port, in the host's namespace (see hostports).
        self.host_ports = HostPorts(netlink.host_ns)
        # What the agent may plumb (see netns.Confinement), fixed at start-up.
        self.confinement = netns.Confinement.at_start(
            (netns_dir, netns.NETNS_DIR, *sandbox_dirs),
            (netlink.host_ns,) if netlink.host_ns else ())
        self.lock = asyncio.Lock()
        self.started = False
        self.start_error = "not started yet"
        self._firewall_checked = -FIREWALL_PROBE_INTERVAL
        self.drivers: dict[str, Driver] = {
            name: make_driver(name, netlink, firewall, self.faults, lambda: self.underlay_ip)
            for name in DRIVERS
        }
        # Endpoints whose container's namespace died, torn down here, until the
        # orchestrator disconnects them: id -> when it was found (see lost_endpoint_ids).
        self.lost: dict[str, float] = {}
        self.on_lost: Callable[[], None] = lambda: None  # told when one is found
        self._suspects: set[str] = set()
        self._checking: asyncio.Task | None = None
        # Last SetNetworkPeers generation applied, per network (in memory: after
        # a restart the orchestrator pushes every network again).
        self.peer_generations: dict[str, int] = {}
        # The other hosts' endpoints of each overlay network, as last pushed (in memory,
        # like the generations): their names are answered here too.
        self.remotes: dict[str, list[RemoteEndpoint]] = {}
        self.host_routes: list[str] = []  # refresh_routes()
        # Each network's DNS server, in the host's namespace (see dns).
        self.resolvers = Resolvers(netlink.host_ns)

    # Life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuilds the view from the kernel and restores the firewall to match it."""
        await self.refresh_underlay()
        await self.refresh_routes()
        await self.firewall.ensure_base()
        async with self.lock:
            repaired = await self._resync_locked()
            for name in self.store.sandboxes:
                self._hold(name)
            await self.host_ports.restore(
                (e.endpoint_id, e.ports, e.ipv6_address, bool(e.address))
                for e in self.store.endpoints.values())
            for network_id in list(self.store.networks):
                await self._names_changed(network_id)
        self.started = True
        log.info(
            "state rebuilt",
            extra={
                "networks": len(self.store.networks), "endpoints": len(self.store.endpoints),
                "repaired": repaired,
            },
        )

    async def ready(self) -> bool:
        """Readiness probe: netlink and the firewall answer; finishes a start that failed."""
        if not self.started:
            try:
                await self.start()
            except errors.CnmError as error:
                if error.message != self.start_error:
                    log.warning("agent not ready", extra={"error": error.message})
                self.start_error = error.message
                return False
        await self.netlink.ping()
        now = time.monotonic()
        if now - self._firewall_checked >= FIREWALL_PROBE_INTERVAL:
            # Reads the links and the firewall's networks: not every second.
            self._firewall_checked = now
            await self._repair_lost_firewall()
        return True

    async def _repair_lost_firewall(self) -> None:
        """Resynchronizes at once when networks' rules are gone (``nft flush ruleset``):
        their isolation and NAT would stay silently missing until the next resync."""
        # One lookup per bridge, not a dump of every link: cheap with many endpoints.
        wanted = set()
        for spec in list(self.store.networks.values()):
            bridge = await self.netlink.get_link(spec.bridge)
            if bridge is not None and names.parse_alias(bridge.alias) == ("net", spec.network_id, ""):
                wanted.add(spec.network_id)
        if wanted <= set(await self.firewall.list_networks()):
            return
        repaired = await self._resync()
        log.warning("firewall rules were missing; restored", extra={"repaired": repaired})

    async def resync_periodically(self, interval: float = RESYNC_INTERVAL) -> None:
        """Reconciles every ``interval`` seconds (DESIGN: at start-up and periodically)."""
        while True:
            await asyncio.sleep(interval)
            if not self.started:
                continue
            try:
                repaired = await self.resync()
            except errors.CnmError as error:
                log.warning("periodic resync failed", extra={"error": error.message})
                continue
            if repaired:
                log.warning("periodic resync repaired drift", extra={"repaired": repaired})

    async def refresh_underlay(self) -> None:
        """Reads the underlay address from the default route again, unless it was given.
        A route briefly gone keeps the last address."""
        if not self.underlay_from_route:
            return
        address = await self._default_route_address()
        if not address or address == self.underlay_ip:
            return
        if self.underlay_ip:
            log.warning("underlay address changed",
                        extra={"old": self.underlay_ip, "new": address})
        self.underlay_ip = address

    async def refresh_routes(self) -> None:
        """Reads the host's own routes again (not those of cnm's networks, the subnets
        of its bridges): membership reports them, and subnets chosen for networks avoid
        them. No dump of every link: one per endpoint would be read every resync."""
        subnets = frozenset(subnet for spec in list(self.store.networks.values())
                            for subnet in (spec.subnet, spec.ipv6_subnet) if subnet)
        self.host_routes = await self.netlink.routes(except_destinations=subnets)

    def _require_started(self) -> None:
        if not self.started:
            raise errors.Unavailable(
                f"the agent is not ready: {self.start_error}", reason="AGENT_NOT_READY"
            )

    async def _default_route_address(self) -> str:
        """The first address of the interface of the IPv4 default route; without one, the
        first global IPv6 address of the IPv6 default route's (an IPv6-only underlay)."""
        for family in (socket.AF_INET, socket.AF_INET6):
            route = await self.netlink.default_route(family=family)
            if route is not None:
                addresses = await self.netlink.addresses(route[1], family=family)
                if addresses:
                    return addresses[0].split("/")[0]
        return ""

    def driver(self, name: str) -> Driver:
        return self.drivers[name]

    # Networks -----------------------------------------------------------------------

    async def create_network(self, message: netdriver_pb2.Network) -> NetworkSpec:
        self._require_started()
        spec = model.network_from_proto(message, tuple(self.drivers), self.underlay_ip)
        async with self.lock:
            return await self._with_whole_firewall(lambda: self._ensure_network(spec))

    def _check_new_network(self, spec: NetworkSpec) -> None:
        existing = self.store.networks.get(spec.network_id)
        if existing is not None and not existing.same_as(spec):
            raise errors.AlreadyExists(
                f"network {spec.network_id!r} exists on this host with other parameters",
                reason="NETWORK_EXISTS", network_id=spec.network_id,
            )
        for other in self.store.networks.values():
            if other.network_id == spec.network_id:
                continue
            if other.bridge == spec.bridge:
                raise errors.AlreadyExists(
                    f"network {spec.network_id!r}: bridge name {spec.bridge!r} is used by "
                    f"network {other.network_id!r}", reason="BRIDGE_NAME_TAKEN",
                )
            if spec.subnet and other.subnet:
                validation.subnets_overlap(spec.subnet, other.subnet,
                                           f"network {spec.network_id!r}",
                                           f"network {other.network_id!r}")
            if spec.ipv6_subnet and other.ipv6_subnet:
                validation.subnets_overlap(spec.ipv6_subnet, other.ipv6_subnet,
                                           f"network {spec.network_id!r}",
                                           f"network {other.network_id!r}")

    async def _ensure_network(self, spec: NetworkSpec, outer: Undo | None = None) -> NetworkSpec:
        """Creates the network unless it is already fully there (idempotent)."""
        self._check_new_network(spec)
        driver = self.driver(spec.driver)
        known = spec.network_id in self.store.networks
        if known and await driver.network_present(spec) and (
            spec.network_id in await self.firewall.list_networks()  # not flushed away
        ):
            return self.store.networks[spec.network_id]
        intent = f"net:{spec.network_id}"
        async with Undo(f"create network {spec.network_id!r}", log) as undo:
            if not known:
                await self._intend(intent, spec.bridge, undo)
            await driver.create_network(spec, undo)
            if not known:
                await self.store.put_network(spec)
                undo.push("forget the network's record",
                          lambda: self.store.delete_network(spec.network_id))
            # Made: a connect that made it undoes it should the connect fail later.
            if outer is not None:
                outer.adopt(undo)
            undo.commit()
        if not known:
            await self.store.delete_intent(intent)
        await self._names_changed(spec.network_id)
        return spec

    async def delete_network(self, network_id: str) -> None:
        self._require_started()
        validation.check_id("network_id", network_id)
        async with self.lock:
            await self.netlink.settle()  # the veths of its disconnected endpoints
            spec = self.store.networks.get(network_id) or await self._network_from_kernel(
                network_id
            )
            if spec is None:
                return
            removed = await self.driver(spec.driver).delete_network(spec)
            for endpoint_id in {*removed, *(e.endpoint_id for e in self.store.endpoints_of(network_id))}:
                await self._forget_endpoint(endpoint_id)
            await self.store.delete_network(network_id)
            await self.resolvers.stop(network_id)
            self.peer_generations.pop(network_id, None)
            self.remotes.pop(network_id, None)

    async def _network_from_kernel(self, network_id: str) -> NetworkSpec | None:
        """A network cnm marked in the kernel but has no record of (its state dir was lost),
        from its bridge; or, when only its VXLAN device is left, from that."""
        links = await self.netlink.list_links(addresses=True)
        overlay = any(link.alias == names.vxlan_alias(network_id) for link in links)
        for link in links:
            if names.parse_alias(link.alias) == ("net", network_id, ""):
                spec = _network_of_bridge(network_id, link)
                return replace(spec, driver="overlay") if overlay else spec
        if overlay:
            return NetworkSpec(network_id=network_id, subnet="", gateway="", driver="overlay",
                               bridge=names.bridge_name(network_id))
        return None

    def forget_peer_generations(self) -> None:
        """Applies the next push of every network whatever its generation: after a Resync,
        or when the agent registers (the orchestrator may have started its count again)."""
        self.peer_generations.clear()

    async def set_network_peers(
        self, network_id: str, peers: list[Peer], remotes: list[RemoteEndpoint],
        generation: int = 0,
    ) -> tuple[bool, list[str]]:
        """Makes an overlay network's forwarding exactly ``peers`` and ``remotes``.

        Returns (applied, changes); a generation older than the last applied
        one is ignored (applied False).
        """
        self._require_started()
        validation.check_id("network_id", network_id)
        validation.check_generation(generation)
        check_peer_fields(peers, remotes)
        async with self.lock:
            network = self.store.networks.get(network_id)
            if network is None:
                raise errors.NotFound(
                    f"set peers: network {network_id!r} is not on this host",
                    reason="NETWORK_NOT_ON_HOST", network_id=network_id,
                )
            driver = self.driver(network.driver)
            peers, remotes = check_peers(network, peers, remotes)
            if generation and generation < self.peer_generations.get(network_id, 0):
                return False, []
            changes = await driver.set_peers(network, peers, remotes)
            if generation:
                self.peer_generations[network_id] = generation
            self.remotes[network_id] = remotes
            await self._names_changed(network_id)
            if changes:
                log.info("peers set", extra={"network_id": network_id, "changes": changes})
            return True, changes

    # Endpoints -------------------------------------------------------------------------

    async def create_endpoint(
        self, message: netdriver_pb2.Endpoint, network_message: netdriver_pb2.Network | None
    ) -> EndpointSpec:
        self._require_started()
        network_id = message.network_id or (network_message.network_id if network_message else "")
        validation.check_id("endpoint_id", message.endpoint_id)
        validation.check_id("network_id", network_id)
        if network_message is not None and network_message.network_id != network_id:
            raise errors.InvalidArgument(
                f"endpoint names network {network_id!r} but the request describes "
                f"{network_message.network_id!r}", reason="NETWORK_MISMATCH",
            )
        async with self.lock:
            self.lost.pop(message.endpoint_id, None)
            network = self.store.networks.get(network_id)
            if network is None:
                if network_message is None:
                    raise errors.FailedPrecondition(
                        f"connect endpoint {message.endpoint_id!r}: network {network_id!r} is "
                        "not on this host and the request does not describe it",
                        reason="NETWORK_NOT_ON_HOST", network_id=network_id,
                    )
                network = model.network_from_proto(network_message, tuple(self.drivers),
                                                   self.underlay_ip)
                self._check_new_network(network)
            endpoint = model.endpoint_from_proto(message, network, self.netns_dir,
                                                 self.confinement)
            try:
                return await self._with_whole_firewall(lambda: self._connect(network, endpoint))
            finally:
                if not self._own_sandbox(endpoint.netns_path):
                    # A runtime's namespace: a cached socket would keep it, and the
                    # veth in it, alive after the container is gone.
                    self.netlink.forget_namespace(endpoint.netns_path)

    def _own_sandbox(self, path: str) -> bool:
        return any(netns.path_of(name) == path for name in self.store.sandboxes)

    async def _connect(self, network: NetworkSpec, endpoint: EndpointSpec) -> EndpointSpec:
        existing = await self._existing_endpoint(endpoint.endpoint_id)
        if existing is not None:
            if existing.matches(endpoint):
                return existing
            raise errors.AlreadyExists(
                f"endpoint {endpoint.endpoint_id!r} exists with other parameters",
                reason="ENDPOINT_EXISTS", endpoint_id=endpoint.endpoint_id,
            )
        self.resolvers.check_ports(endpoint.ports)
        driver = self.driver(network.driver)
        intent = f"ep:{endpoint.endpoint_id}"
        async with Undo(f"create endpoint {endpoint.endpoint_id!r}", log) as undo:
            if network.network_id not in self.store.networks:
                await self._ensure_network(network, undo)
            self.faults.check("network")
            await self._intend(intent, endpoint.host_interface, undo)
            endpoint = await driver.create_endpoint(network, endpoint, undo)
            endpoint_id = endpoint.endpoint_id
            # After the firewall refused ports other endpoints hold: what is left is the host's.
            await self.host_ports.reserve(endpoint_id, endpoint.ports,
                                          endpoint.ipv6_address, bool(endpoint.address))
            undo.push("release the host ports", lambda: self.host_ports.release(endpoint_id))
            await self.store.put_endpoint(endpoint)
            undo.push("forget the endpoint's record",
                      lambda: self.store.delete_endpoint(endpoint_id))
            self.faults.check("record")
            undo.commit()
        await self.store.delete_intent(intent)
        # Answered by the network's DNS server before the connect is.
        if network.network_id in self.resolvers.running:
            await self.resolvers.added(network, endpoint)
        else:
            await self._names_changed(network.network_id)
        return endpoint

    async def _intend(self, key: str, link: str, undo: Undo) -> None:
        """Records that ``link`` is about to be made, after removing what a crashed
        attempt of the same operation left."""
        await self._remove_crash_leftover(key)
        await self.store.put_intent(key, link)
        undo.push(f"drop intent {key}", lambda: self.store.delete_intent(key))

    async def _remove_crash_leftover(self, key: str) -> str | None:
        """Deletes the link an intent names if it is still unmarked (made, then the agent
        died before marking it); drops the intent. Returns a line when it deleted one."""
        name = self.store.intents.get(key)
        if name is None:
            return None
        link = await self.netlink.get_link(name)
        deleted = link is not None and not link.alias
        if deleted:
            await self.netlink.delete_link(name)
        await self.store.delete_intent(key)
        return f"deleted unmarked {name}, left by a crash while making {key}" if deleted else None

    async def _existing_endpoint(self, endpoint_id: str) -> EndpointSpec | None:
        """The endpoint's record if its veth is really there; drops a record whose veth is gone."""
        record = self.store.endpoints.get(endpoint_id)
        if record is None:
            return None
        mark = names.endpoint_alias(endpoint_id, record.network_id)
        with contextlib.suppress(LinkNotOwned):  # then the connect refuses the name
            if await self.netlink.get_owned_link(record.host_interface, mark) is not None:
                return record
        await self.firewall.remove_ports(endpoint_id, port_rules(record))
        await self.host_ports.release(endpoint_id)
        await self.store.delete_endpoint(endpoint_id)
        self.resolvers.removed(record)
        return None

    async def delete_endpoint(self, endpoint_id: str) -> None:
        self._require_started()
        validation.check_id("endpoint_id", endpoint_id)
        async with self.lock:
            await self._delete_endpoint(endpoint_id)
            self.lost.pop(endpoint_id, None)  # the orchestrator took note

    async def _delete_endpoint(self, endpoint_id: str) -> None:
        record = self.store.endpoints.get(endpoint_id)
        network = self.store.networks.get(record.network_id) if record else None
        driver = self.driver(network.driver if network else "bridge")
        await driver.delete_endpoint(endpoint_id, port_rules(record) if record else None,
                                     sandbox=record.netns_path if record else "")
        await self._forget_endpoint(endpoint_id)

    async def _forget_endpoint(self, endpoint_id: str) -> None:
        await self.host_ports.release(endpoint_id)
        record = self.store.endpoints.get(endpoint_id)
        await self.store.delete_endpoint(endpoint_id)
        if record is None:
            return
        self.resolvers.removed(record)
        if not any(e.netns_path == record.netns_path for e in self.store.endpoints.values()):
            self.netlink.forget_namespace(record.netns_path)

    async def _names_changed(self, network_id: str) -> None:
        """Gives the network's DNS server all the names of its endpoints here, as recorded
        (starting the server if it is not running)."""
        network = self.store.networks.get(network_id)
        if network is not None:
            await self.resolvers.update(network, self.store.endpoints_of(network_id),
                                        self.remotes.get(network_id, ()))

    # Dead containers -------------------------------------------------------------------

    def link_deleted(self, name: str | None) -> None:
        """A link of the host went away (``None``: notifications were lost). If it was an
        endpoint's veth, that endpoint is checked soon, under the lock."""
        if name is None:
            ids = set(self.store.endpoints)
        else:
            ids = {e.endpoint_id for e in list(self.store.endpoints.values())
                   if e.host_interface == name}
        if not ids:
            return
        self._suspects |= ids
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_suspects())

    async def _check_suspects(self) -> None:
        while self._suspects and self.started:
            ids, self._suspects = self._suspects, set()
            try:
                async with self.lock:
                    await self._find_lost(ids)
            except errors.CnmError as error:
                log.warning("could not check endpoints whose veth went away",
                            extra={"endpoints": sorted(ids), "error": error.message})

    async def _find_lost(self, endpoint_ids) -> list[str]:
        """Of ``endpoint_ids``, those whose veth and container's namespace are both gone
        (the container died): what is left of them here (port rules, host ports, record)
        is removed and they are reported lost. With the lock held."""
        found = []
        for endpoint_id in sorted(endpoint_ids):
            record = self.store.endpoints.get(endpoint_id)
            if record is None or self._namespace_alive(record.netns_path):
                continue
            mark = names.endpoint_alias(endpoint_id, record.network_id)
            try:
                if await self.netlink.get_owned_link(record.host_interface, mark) is not None:
                    continue
            except LinkNotOwned:
                continue
            await self.firewall.remove_ports(endpoint_id, port_rules(record))
            await self._forget_endpoint(endpoint_id)
            self.lost[endpoint_id] = time.time()
            found.append(endpoint_id)
            log.info("container gone: endpoint torn down, reported to the orchestrator",
                     extra={"endpoint_id": endpoint_id, "network_id": record.network_id,
                            "container_id": record.container_id, "sandbox": record.sandbox})
        if found:
            self.on_lost()
        return found

    def _namespace_alive(self, path: str) -> bool:
        try:
            netns.check_namespace_path(path)
            return True
        except errors.NotFound:
            # Its /var/run/netns entry was deleted, but the agent's handle keeps it.
            return any(netns.path_of(name) == path for name in self._handles)
        except errors.CnmError:
            return False  # no longer a namespace

    def lost_endpoint_ids(self) -> list[str]:
        """Lost endpoints to report (forgotten after :data:`LOST_MEMORY` unanswered)."""
        horizon = time.time() - LOST_MEMORY
        for endpoint_id in [e for e, since in self.lost.items() if since < horizon]:
            del self.lost[endpoint_id]
        return sorted(self.lost)

    def forget_lost(self, endpoint_ids) -> None:
        """The orchestrator does not know these: no need to report them again."""
        for endpoint_id in endpoint_ids:
            self.lost.pop(endpoint_id, None)

    # Sandboxes ---------------------------------------------------------------------------

    async def create_sandbox(self, name: str) -> str:
        self._require_started()
        validation.check_sandbox_name(name)
        path = netns.path_of(name)
        async with self.lock:
            recorded = name in self.store.sandboxes
            existed = os.path.exists(path)
            if existed and recorded and not self._namespace_alive(path):
                # The agent died between making the file and mounting the namespace on it:
                # an empty file, which nothing could connect to. Made again.
                self._release(name)
                await netns.delete(name)
                existed = False
            if existed and not recorded:
                raise errors.AlreadyExists(
                    f"create sandbox {name!r}: namespace {path} exists and was not created by cnm",
                    reason="SANDBOX_EXISTS", name=name,
                )
            # The record first: a crash before the namespace is made leaves a record
            # a retry completes, never a namespace that looks like someone else's.
            if not recorded:
                await self.store.add_sandbox(name)
            try:
                if not existed:
                    await netns.create(name)
                self._hold(name)
                await self.netlink.set_up("lo", path)
            except BaseException:
                if not existed:
                    self.netlink.forget_namespace(path)
                    await netns.delete(name)
                if not recorded:
                    await self.store.remove_sandbox(name)
                raise
            return path

    async def delete_sandbox(self, name: str) -> None:
        self._require_started()
        validation.check_sandbox_name(name)
        path = netns.path_of(name)
        async with self.lock:
            if name not in self.store.sandboxes:
                if os.path.exists(path):
                    raise errors.FailedPrecondition(
                        f"delete sandbox {name!r}: namespace {path} was not created by cnm",
                        reason="SANDBOX_NOT_OWNED", name=name,
                    )
                return
            teardown = Teardown(f"delete sandbox {name!r}")
            for endpoint in [e for e in self.store.endpoints.values() if e.netns_path == path]:
                await teardown.step(
                    f"disconnect endpoint {endpoint.endpoint_id!r}",
                    lambda endpoint_id=endpoint.endpoint_id: self._delete_endpoint(endpoint_id),
                )
            await self.netlink.settle(ns=path)  # their veths, gone with the namespace
            self.netlink.forget_namespace(path)
            await teardown.step("delete the namespace", lambda: netns.delete(name))
            if not os.path.exists(path):
                await self.store.remove_sandbox(name)
                self._release(name)
            teardown.raise_failures()

    def _hold(self, name: str) -> None:
        """Keeps an open file of sandbox ``name``'s namespace (none when it is gone)."""
        if name in self._handles:
            return
        with contextlib.suppress(OSError):
            self._handles[name] = os.open(netns.path_of(name),
                                          os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _release(self, name: str) -> None:
        fd = self._handles.pop(name, None)
        if fd is not None:
            os.close(fd)

    def list_sandboxes(self) -> list[tuple[str, str, int]]:
        """(name, path, inode) of every sandbox the agent made and still has: by its entry
        under /var/run/netns, else by the agent's own handle on it."""
        found = []
        for name in self.store.sandboxes:
            path = netns.path_of(name)
            with contextlib.suppress(OSError):
                found.append((name, path, os.stat(path).st_ino))
                continue
            fd = self._handles.get(name)
            if fd is not None:
                found.append((name, f"/proc/{os.getpid()}/fd/{fd}", os.fstat(fd).st_ino))
        return sorted(found)

    def get_sandbox(self, sandbox: str) -> tuple[str, str, int]:
        """(name, path, inode) of the namespace ``sandbox`` names, as a connect would
        resolve it (NOT_FOUND, FAILED_PRECONDITION as CreateEndpoint would say)."""
        self._require_started()
        path = model.resolve_sandbox(sandbox, self.netns_dir, self.confinement)
        inode = netns.check_namespace_path(path).st_ino
        return ("" if "/" in sandbox else sandbox), path, inode

    # State -----------------------------------------------------------------------------

    async def get_state(self) -> netdriver_pb2.GetStateResponse:
        self._require_started()
        await self.netlink.settle()  # a veth being deleted is no endpoint's any more
        links = await self.netlink.list_links(addresses=True)
        ports: dict[str, list[PortRule]] = {}
        for rule in await self.firewall.list_ports():
            ports.setdefault(rule.endpoint_id, []).append(rule)
        response = netdriver_pb2.GetStateResponse(
            firewall_elements=await self.firewall.element_count()
        )
        detached = {link.name for _, link in _detached_veths(links)}
        aliases = {link.alias for link in links}
        for link in links:
            owner = names.parse_alias(link.alias)
            if owner is None:
                continue
            kind, object_id, network_id = owner
            if kind == "net":
                # The options are only in the record; the gateway is what the bridge has.
                in_kernel = _network_of_bridge(object_id, link)
                spec = self.store.networks.get(object_id)
                if spec is not None:
                    in_kernel = replace(spec, subnet=in_kernel.subnet, gateway=in_kernel.gateway)
                network = in_kernel.to_proto()
                if names.vxlan_alias(object_id) in aliases:
                    await self._report_vxlan(response, network, link.index)
                response.networks.append(network)
                continue
            record = self.store.endpoints.get(object_id)
            endpoint = (
                record.to_proto()
                if record
                else netdriver_pb2.Endpoint(endpoint_id=object_id, network_id=network_id)
            )
            endpoint.host_interface = link.name
            if link.name in detached:
                response.detached_endpoints.append(object_id)
            del endpoint.port_mappings[:]
            for rule in sorted(ports.get(object_id, []), key=lambda r: (r.protocol, r.host_port)):
                endpoint.port_mappings.append(
                    model.PortSpec(rule.protocol, rule.host_ip, rule.host_port,
                                   rule.container_port).to_proto()
                )
            response.endpoints.append(endpoint)
        # A VXLAN device whose bridge is gone (deleted by hand, or a delete that failed
        # half-way): reported as its network, so that it is seen and can be deleted.
        reported = {network.network_id for network in response.networks}
        for link in links:
            if link.alias.startswith(names.VXLAN_ALIAS_PREFIX):
                network_id = link.alias[len(names.VXLAN_ALIAS_PREFIX):]
                if network_id not in reported and validation.OBJECT_ID.fullmatch(network_id):
                    network = netdriver_pb2.Network(network_id=network_id,
                                                    driver=netdriver_pb2.DRIVER_OVERLAY)
                    await self._report_vxlan(response, network, 0)
                    response.networks.append(network)
        for name, path, inode in self.list_sandboxes():
            response.sandboxes.append(netdriver_pb2.Sandbox(name=name, path=path, inode=inode))
        return response

    async def _report_vxlan(self, response: netdriver_pb2.GetStateResponse,
                            network: netdriver_pb2.Network, bridge_index: int) -> None:
        """Reports the network's VXLAN device, as the kernel has it, in ``response``."""
        for driver in self.drivers.values():
            device = await driver.vxlan_state(network.network_id, bridge_index)
            if device is not None:
                break
        else:
            return
        network.driver = netdriver_pb2.DRIVER_OVERLAY
        response.vxlan_devices[network.network_id].CopyFrom(netdriver_pb2.VxlanDevice(
            name=device.name, vni=device.vni, local_address=device.local,
            learning=device.learning, proxy=device.proxy, up=device.up,
            attached=device.attached, flood_peer_count=device.flood_peers,
            remote_mac_count=device.remote_macs, neighbour_count=device.neighbours,
        ))

    async def resync(self) -> list[str]:
        """Reads the underlay address again (unless it was given: a changed one remakes the
        VXLAN devices, and membership announces it); drops records of what the kernel no
        longer has; makes the firewall match the rest."""
        self._require_started()
        await self.refresh_underlay()
        await self.refresh_routes()
        self.forget_peer_generations()
        return await self._resync()

    async def _resync(self) -> list[str]:
        """Reads the kernel without the lock (a connect never waits for that read);
        only when it shows drift, takes the lock and reads and repairs again."""
        for driver in self.drivers.values():
            driver.forget_applied()
        if not await self._drift_seen():
            return []
        async with self.lock:
            return await self._resync_locked()

    async def _drift_seen(self) -> bool:
        """Whether ``_resync_locked`` would find something to repair, from a snapshot
        read while operations may run: one caught half done shows as drift (then
        checked again under the lock), never the reverse for long."""
        # Intents are made and dropped under the lock: seen without it, a crash left them.
        if self.store.intents and not self.lock.locked():
            return True
        links = await self.netlink.snapshot_links()
        owned = _owned_objects(links)
        if any(("ep", endpoint_id) not in owned for endpoint_id in list(self.store.endpoints)):
            return True
        if any(network_id in self.store.networks for network_id, _ in _detached_veths(links)):
            return True
        networks = list(self.store.networks.values())
        rules = [network_rules(spec) for spec in networks if ("net", spec.network_id) in owned]
        ports = [rule for e in list(self.store.endpoints.values()) for rule in port_rules(e)]
        if await self.firewall.drift(rules, ports):
            return True
        for spec in networks:
            driver = self.driver(spec.driver)
            try:
                if not await driver.network_intact(spec):
                    return True
            except errors.CnmError:
                return True  # the locked pass reports it, as it reports a failed repair
        return False

    async def _resync_locked(self) -> list[str]:
        repaired: list[str] = []

        def add(kind: str, lines: list[str]) -> None:
            RESYNC_REPAIRS.labels(kind).inc(len(lines))
            repaired.extend(lines)

        for driver in self.drivers.values():
            driver.forget_applied()
        for key in list(self.store.intents):
            line = await self._remove_crash_leftover(key)
            add("crash_leftover", [line] if line else [])
        links = await self.netlink.list_links()
        owned = _owned_objects(links)
        # Those whose container died (while the agent was down, or unnoticed) are reported.
        dead = await self._find_lost(
            [e for e in self.store.endpoints if ("ep", e) not in owned])
        add("container_gone", [f"tore down endpoint {endpoint_id}: its container is gone"
                               for endpoint_id in dead])
        for endpoint_id in list(self.store.endpoints):
            if ("ep", endpoint_id) not in owned:
                await self._forget_endpoint(endpoint_id)
                add("veth_gone", [f"dropped endpoint {endpoint_id}: its veth is gone"])
        detached = {network_id for network_id, _ in _detached_veths(links)}
        for spec in [self.store.networks[n] for n in detached if n in self.store.networks]:
            attached = await self.driver(spec.driver).attach_endpoints(
                spec, f"resync network {spec.network_id!r}"
            )
            add("reattached", [f"re-attached {name} to bridge {spec.bridge}" for name in attached])
        networks = [
            network_rules(spec)
            for spec in self.store.networks.values()
            if ("net", spec.network_id) in owned
        ]
        ports = [rule for e in self.store.endpoints.values() for rule in port_rules(e)]
        add("firewall", await self.firewall.sync(networks, ports))
        # After the firewall (an overlay network made again brings its own rules):
        # overlay networks are on every host, so a missing one is made again.
        for spec in self.store.networks.values():
            try:
                add("network", await self.driver(spec.driver).repair_network(spec))
            except errors.CnmError as error:
                log.warning("could not repair network", extra={
                    "network_id": spec.network_id, "error": error.message,
                })
        return repaired

    async def _with_whole_firewall(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs ``operation`` (under the lock); if it found cnm's firewall table flushed
        away (and undid itself), restores the whole firewall and runs it once more."""
        try:
            return await operation()
        except errors.FailedPrecondition as error:
            if error.reason != TABLE_MISSING:
                raise
        repaired = await self._resync_locked()
        log.warning("firewall table was missing; restored", extra={"repaired": repaired})
        return await operation()


def _owned_objects(links: list[Link]) -> set[tuple[str, str]]:
    """(kind, id) of every link marked as cnm's."""
    return {
        names.parse_alias(link.alias)[:2] for link in links if names.parse_alias(link.alias)
    }


def _detached_veths(links: list[Link]) -> list[tuple[str, Link]]:
    """(network id, veth) of every endpoint veth that is not a port of its network's bridge."""
    bridges = {
        owner[1]: link.index
        for link in links
        if (owner := names.parse_alias(link.alias)) and owner[0] == "net"
    }
    return [
        (owner[2], link)
        for link in links
        if (owner := names.parse_alias(link.alias)) and owner[0] == "ep"
        and link.master != bridges.get(owner[2])
    ]


def _network_of_bridge(network_id: str, link: Link) -> NetworkSpec:
    address = link.addresses[0] if link.addresses else ""
    interface = ipaddress.IPv4Interface(address) if address else None
    return NetworkSpec(
        network_id=network_id, bridge=link.name, mtu=link.mtu,
        subnet=str(interface.network) if interface else "",
        gateway=str(interface.ip) if interface else "",
    )
