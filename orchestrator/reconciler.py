"""The reconciler: finishes or undoes abandoned flows and collects leaks.

One pass, run at start-up and then periodically by one replica at a time:

1. every intent whose lock is free belongs to a flow nobody is running any
   more (flows hold the lock for as long as their intent exists): a connect
   is undone, a disconnect or a network delete finished, a network create
   undone;
2. overlay networks whose peers could not be pushed to every host are
   pushed again;
3. endpoints disconnected past an unreachable host (quarantined: their
   address and ports held) are released once their host confirms the
   teardown or is removed; endpoints whose host reported their container gone
   longer than the grace period ago and that no replica released (it died) are
   disconnected;
4. agents: an endpoint in a host's kernel that no record, intent or
   quarantine knows was recorded and its record lost (a Redis crash): it is
   recorded again from what the agent reports, address and ports reserved
   again (a clash with their new holder is reported, both named, and nothing
   deleted); one whose network is not recorded is deleted, and so are
   networks no record knows; and the other way round, endpoints
   recorded on a host that answered but whose kernel no longer has them
   (deleted behind cnm's back, or gone with their sandbox) are made again if
   their container's namespace is still there, else disconnected and their
   address released. This reads each agent's whole kernel state, so it runs
   every ``--host-gc-interval`` rather than every pass;
5. IPAM: pools cnm made for networks that no longer exist are deleted, and so
   are VXLAN ids held for such networks; in a pass that read every host (4.)
   and only then, addresses whose owner is neither a recorded, a quarantined
   endpoint, an endpoint with an intent, nor one a host's kernel holds are
   released (``cnm:*`` owners are IPAM's own): after a Redis crash, a live
   container's address is adopted, never handed to another first, and a host
   that does not answer holds up the release (remove it with ``cnm host rm``).

Each release re-checks the records under the endpoint's lock, so a connect
starting at the same moment is never robbed of its address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, fields

from prometheus_client import Counter

from cnm import errors
from orchestrator import validation
from orchestrator.flows import MANAGED_LABEL, MANAGED_VALUE, Orchestrator, decode_endpoint
from orchestrator.store import Op

log = logging.getLogger("orchestrator.reconciler")

ACTIONS = Counter("cnm_orchestrator_reconciler_actions",
                  "Repairs the reconciler made, by kind (a Report field)", ["kind"])
ERRORS = Counter("cnm_orchestrator_reconciler_errors",
                 "Repairs that failed and hosts that could not be checked")
PASSES = Counter("cnm_orchestrator_reconciler_passes",
                 "Reconciler passes, by what they did: ran, skipped (another replica's "
                 "turn), failed", ["result"])


@dataclass
class Report:
    settled_intents: list[str] = field(default_factory=list)
    released_addresses: list[str] = field(default_factory=list)
    deleted_pools: list[str] = field(default_factory=list)
    released_vnis: list[str] = field(default_factory=list)
    deleted_host_endpoints: list[str] = field(default_factory=list)
    deleted_host_networks: list[str] = field(default_factory=list)
    recreated_endpoints: list[str] = field(default_factory=list)
    adopted_endpoints: list[str] = field(default_factory=list)
    released_quarantined: list[str] = field(default_factory=list)
    released_gone: list[str] = field(default_factory=list)
    released_lost_endpoints: list[str] = field(default_factory=list)
    synced_peers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self) -> None:
        """Adds this pass's actions to the metrics (cnm/metrics.py)."""
        for kind in fields(self):
            if kind.name != "errors":
                ACTIONS.labels(kind.name).inc(len(getattr(self, kind.name)))
        ERRORS.inc(len(self.errors))

    def changed(self) -> bool:
        return any((self.settled_intents, self.released_addresses, self.deleted_pools,
                    self.released_vnis,
                    self.deleted_host_endpoints, self.deleted_host_networks,
                    self.recreated_endpoints, self.released_lost_endpoints,
                    self.adopted_endpoints,
                    self.released_quarantined, self.released_gone,
                    self.synced_peers))


# Every series from the start, at zero (a rate needs the zero before the first action).
for _kind in fields(Report):
    if _kind.name != "errors":
        ACTIONS.labels(_kind.name)
for _result in ("ran", "skipped", "failed"):
    PASSES.labels(_result)


class Reconciler:
    def __init__(self, orchestrator: Orchestrator):
        self.orch = orchestrator
        self.store = orchestrator.store

    async def run_once(self, collect_hosts: bool = True) -> Report | None:
        """One pass; None when another replica is running one.

        ``collect_hosts`` includes step 3, which reads every agent's whole
        kernel state and so is run less often than the rest.
        """
        report = Report()
        async with self.store.try_lock("reconciler") as taken:
            if not taken:
                PASSES.labels("skipped").inc()
                return None
            await self._settle_intents(report)
            report.released_quarantined += await self.orch.release_quarantined()
            report.released_gone += await self.orch.release_expired_gone()
            # The hosts first: what they report and lost its record is adopted before
            # the addresses are judged, and no address an answering host's kernel holds
            # is released; none of unknown owner is while a host does not answer.
            on_hosts = await self._collect_host_objects(report) if collect_hosts else None
            await self._collect_addresses(report, on_hosts)
            await self._collect_vnis(report)
            report.synced_peers += await self.orch.overlay.reconcile()
        PASSES.labels("ran").inc()
        report.count()
        if report.changed() or report.errors:
            # Errors are what an operator must see: a host that could not be checked, a
            # repair that failed.
            log.log(logging.WARNING if report.errors else logging.INFO, "reconciled",
                    extra=vars(report))
        return report

    async def run_forever(self, interval: float, host_interval: float) -> None:
        last_host_pass = -host_interval
        while True:
            collect_hosts = time.monotonic() - last_host_pass >= host_interval
            # A task of its own: a lock lost mid-pass cancels the pass, not the loop.
            one_pass = asyncio.create_task(self.run_once(collect_hosts))
            try:
                report = await one_pass
                if collect_hosts and report is not None:
                    last_host_pass = time.monotonic()
            except asyncio.CancelledError:
                if not one_pass.cancelled() or asyncio.current_task().cancelling():
                    one_pass.cancel()
                    raise
                PASSES.labels("failed").inc()
                log.warning("reconcile pass stopped: it lost a lock")
            except Exception as error:  # noqa: BLE001 - the next pass retries
                PASSES.labels("failed").inc()
                log.warning("reconcile pass failed", extra={"error": str(error)})
            await asyncio.sleep(interval)

    async def _settle_intents(self, report: Report) -> None:
        for intent in await self.store.intents():
            async with self.store.try_lock(intent.data["lock"]) as taken:
                if not taken:
                    continue
                try:
                    current = await self.store.get_intent(intent.key)
                    if current is None:
                        continue
                    if current.op in (Op.CONNECT, Op.DISCONNECT):
                        await self.orch.settle_locked(decode_endpoint(current).endpoint_id)
                    else:
                        await self.orch.settle_network_intent(current)
                    report.settled_intents.append(f"{current.op} {current.key}")
                except errors.CnmError as error:
                    report.errors.append(f"{intent.op} {intent.key}: {error.message}")

    async def _repair_lost_endpoints(self, host_id: str, state, asked: float,
                                     report: Report) -> None:
        recreated, released, failed = await self.orch.repair_lost_endpoints(host_id, state,
                                                                            asked)
        report.recreated_endpoints += recreated
        report.released_lost_endpoints += released
        report.errors += failed

    async def _known_owner(self, endpoint_id: str) -> bool:
        return bool(await self.store.known_endpoint_ids([endpoint_id]))

    async def _creating_network_ids(self) -> set[str]:
        return {intent.data["network_id"] for intent in await self.store.intents()
                if intent.op in (Op.CREATE_NETWORK, Op.DELETE_NETWORK)}

    async def _collect_addresses(self, report: Report, on_hosts: set[str] | None) -> None:
        """Deletes the pools of networks that are gone and, when every host answered
        (``on_hosts``: the endpoint ids their kernels hold), releases the addresses whose
        owner nothing knows."""
        try:
            pools = await self.orch.ipam.list_pools()
        except errors.CnmError as error:
            report.errors.append(error.message)
            return
        network_ids = await self.store.network_ids()
        busy_network_ids = await self._creating_network_ids()
        # A deleted network's pool stays while an endpoint of it is quarantined.
        busy_network_ids |= {e.network_id for e in await self.store.quarantined()}
        for pool in pools:
            # A dual-stack network's IPv6 pool is its id and ".v6".
            network_id = validation.network_of_pool(pool.pool_id)
            if network_id not in network_ids:
                if (pool.labels.get(MANAGED_LABEL) == MANAGED_VALUE
                        and network_id not in busy_network_ids
                        and network_id not in await self.store.network_ids()):
                    await self.orch.ipam.delete_pool(pool.pool_id, force=True)
                    report.deleted_pools.append(pool.pool_id)
                continue
            if on_hosts is None:
                continue
            try:
                allocations = await self.orch.ipam.list_allocations(pool.pool_id)
            except errors.NotFound:
                continue
            owners = [a.owner for a in allocations if not a.owner.startswith("cnm:")]
            known = await self.store.known_endpoint_ids(owners)
            # Read after the allocations: a reservation needs its host registered first.
            hosts = {host.host_id for host in await self.store.list_hosts()}
            for allocation in allocations:
                owner = allocation.owner
                if owner.startswith("cnm:") or owner in known or owner in on_hosts:
                    continue
                holder = validation.reservation_host(owner)
                if holder is not None:  # a host's reservation: held while the host is known
                    if holder not in hosts:
                        await self.orch.ipam.release_owner(pool.pool_id, owner)
                        report.released_addresses.append(
                            f"{pool.pool_id}/{allocation.address}")
                    continue
                async with self.store.try_lock(f"ep:{owner}") as taken:
                    if taken and not await self._known_owner(owner):
                        await self.orch.ipam.release_owner(pool.pool_id, owner)
                        report.released_addresses.append(f"{pool.pool_id}/{allocation.address}")

    async def _collect_vnis(self, report: Report) -> None:
        """Releases VXLAN ids held for networks that are neither recorded nor being made.

        Read in this order (holders, intents, records): a create takes its id
        after writing its intent and clears the intent in the script that
        records the network, so a live create is always seen in one of the two.
        """
        holders = await self.orch.vnis.holders()
        if not holders:
            return
        busy_network_ids = await self._creating_network_ids()
        network_ids = await self.store.network_ids()
        for network_id, vni in sorted(holders.items()):
            if network_id in busy_network_ids or network_id in network_ids:
                continue
            await self.orch.vnis.release(network_id)
            report.released_vnis.append(f"{vni} of {network_id}")

    async def _collect_host_objects(self, report: Report) -> set[str] | None:
        """Brings each answering host's kernel and the records in line; returns the ids of
        the endpoints the hosts hold, or None when a host did not answer."""
        on_hosts: set[str] | None = set()
        for host in await self.store.list_hosts():
            agent = self.orch.hosts.agent_of(host)
            asked = time.time()
            try:
                state = await agent.get_state()
            except errors.CnmError as error:
                report.errors.append(error.message)
                on_hosts = None
                continue
            if on_hosts is not None:
                on_hosts.update(endpoint.endpoint_id for endpoint in state.endpoints)
            await self._repair_lost_endpoints(host.host_id, state, asked, report)
            known = await self.store.known_endpoint_ids([e.endpoint_id for e in state.endpoints])
            for endpoint in state.endpoints:
                endpoint_id = endpoint.endpoint_id
                if endpoint_id in known:
                    continue
                async with self.store.try_lock(f"ep:{endpoint_id}") as taken:
                    try:
                        if not taken or await self._known_owner(endpoint_id):
                            continue
                        # Lost records (a Redis crash): recorded again, not cut off.
                        if await self.orch.adopt_endpoint(host.host_id, endpoint) == "adopted":
                            report.adopted_endpoints.append(f"{host.host_id}/{endpoint_id}")
                            continue
                        await agent.delete_endpoint(endpoint_id)
                        report.deleted_host_endpoints.append(f"{host.host_id}/{endpoint_id}")
                    except errors.CnmError as error:
                        report.errors.append(error.message)
            network_ids = await self.store.network_ids()
            busy_network_ids = await self._creating_network_ids()
            for network in state.networks:
                if network.network_id in network_ids or network.network_id in busy_network_ids:
                    continue
                try:
                    await agent.delete_network(network.network_id)
                    report.deleted_host_networks.append(f"{host.host_id}/{network.network_id}")
                except errors.CnmError as error:
                    report.errors.append(error.message)
        return on_hosts
