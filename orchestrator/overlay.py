"""Overlay networks across hosts: VNIs, and every host kept in line.

An overlay network exists on every registered host, not only where it has
endpoints: it is created on all healthy hosts when it is created, and a
host that registers (new, or an agent that restarted) gets every overlay
network. Each host of a network is then told its peers and the remote
endpoints (``push_peers``). Whether the network is in line on a host is
recorded per host and shown by ``GetNetwork`` (``Network.hosts``); a host
that was unhealthy or unreachable is brought in line when it registers
again or by the reconciler.

A push is a full replacement, so pushes must never go back in time, yet
they are not serialised: each carries a generation taken (Redis INCR, and
never below Redis's clock in microseconds: a count started again after
Redis lost it still goes past what the agents applied)
*after* the change it follows was recorded and *before* the records are
read, and an agent ignores a generation older than the last it applied.
The highest generation delivered therefore holds everything recorded
before it was taken, and every later change brings its own push. A connect
pushes its endpoint while the agent is still creating it (its MAC is
derived from its address, so it is known in advance); if another push
was taken meanwhile (it could not see the uncommitted endpoint), the
connect pushes again once its endpoint is recorded.

What it keeps (VXLAN ids, per-host states, peer generations) is in the
store (orchestrator/store.py); hosts and their health come from
orchestrator/hosts.py. Nothing here imports the flows.
"""

from __future__ import annotations

import asyncio
import logging

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator import validation
from orchestrator.hosts import Hosts
from orchestrator.store import STATE_READY, Store, Vnis
from orchestrator.translate import agent_network

log = logging.getLogger("orchestrator.overlay")

DRIVER = pb.DRIVER_OVERLAY
DEFAULT_VNI_RANGE = "4096-16777215"

def no_underlay(host_id: str) -> str:
    """Why a host cannot take part in overlay networks, for its per-host state."""
    return (f"host {host_id!r} has no underlay (VTEP) address, so no other host can reach "
            "it: start its agent with --underlay-ip (CNM_UNDERLAY_IP), or give it a "
            "default route")


def parse_vni_range(spec: str) -> tuple[int, int]:
    """``FIRST-LAST`` (or one number) as a range of VXLAN ids; ValueError when invalid."""
    return validation.number_range(spec, 0xFFFFFF, single=True)


class Overlay:
    """Keeps every overlay network on every registered host."""

    def __init__(self, store: Store, hosts: Hosts, vnis: Vnis):
        self.store = store
        self.hosts = hosts
        self.vnis = vnis

    async def host_states(self, network_id: str) -> dict[str, tuple[bool, str]]:
        return await self.store.host_states(network_id)

    async def forget_network(self, network_id: str) -> None:
        """Drops what is kept of a deleted overlay network: host states and its VNI."""
        await self.store.forget_host_states(network_id)
        await self.vnis.release(network_id)

    async def networks(self) -> list[pb.Network]:
        return [network for network, state in await self.store.list_networks()
                if network.driver == DRIVER and state == STATE_READY]

    def healthy(self, host: pb.Host) -> bool:
        return self.hosts.healthy(host)

    # --- peers -------------------------------------------------------------------

    async def generation(self, network_id: str) -> int:
        return await self.store.peers_generation(network_id)

    async def push_peers(self, network_id: str, skip_host: str = "",
                         pending: pb.Endpoint | None = None) -> tuple[int, bool]:
        """Tells every healthy host of the network its peers and remote endpoints.

        Returns (generation, whether every host took it). ``skip_host``: a host
        whose view did not change (its own endpoint came or went); ``pending``:
        an endpoint being connected, not recorded yet. A host that fails marks
        the network for the reconciler; so does a host that is not healthy (it
        is brought in line when it registers again).
        """
        # The generation is taken before anything is read.
        generation = await self.store.next_peers_generation(network_id)
        hosts, endpoints = await self.store.peers_view(network_id)
        if pending is not None and all(e.endpoint_id != pending.endpoint_id for e in endpoints):
            endpoints.append(pending)
        underlays = {host.host_id: host.underlay_ip for host in hosts if host.underlay_ip}
        failures: list[str] = []

        async def push(host: pb.Host) -> None:
            # VXLAN sends over one family: the hosts of the other one are out of reach.
            reach = {peer_id: underlay for peer_id, underlay in underlays.items()
                     if peer_id != host.host_id
                     and (":" in underlay) == (":" in host.underlay_ip)}
            if len(reach) < len(underlays) - (host.host_id in underlays):
                log.warning("hosts of the other underlay family are out of this host's reach",
                            extra={"host": host.host_id, "network": network_id,
                                   "unreached": sorted(set(underlays) - set(reach)
                                                       - {host.host_id})})
            peers = [nd.Peer(host_id=peer_id, underlay_ip=underlay)
                     for peer_id, underlay in sorted(reach.items())]
            remotes = [nd.RemoteEndpoint(address=endpoint.address,
                                         mac_address=endpoint.mac_address,
                                         underlay_ip=reach[endpoint.host_id],
                                         dns_names=list(endpoint.dns_names),
                                         ipv6_address=endpoint.ipv6_address)
                       for endpoint in endpoints
                       if endpoint.host_id in reach and endpoint.mac_address]
            agent = self.hosts.agent_of(host)
            try:
                await agent.set_network_peers(network_id, peers, remotes, generation)
            except errors.CnmError as error:
                failures.append(error.message)
                await self.store.set_host_state(network_id, host.host_id, False, error.message)

        # On the network, yet with no VTEP address now (an agent restarted without
        # one): no peer can reach it; shown, not silently left out.
        for host in hosts:
            if host.host_id not in underlays:
                await self.store.set_host_state(network_id, host.host_id, False,
                                          no_underlay(host.host_id))
        targets = [host for host in hosts
                   if host.host_id != skip_host and host.host_id in underlays]
        waiting = [host for host in targets if not self.healthy(host)]
        await asyncio.gather(*(push(host) for host in targets if self.healthy(host)))
        if failures or waiting:
            await self.store.mark_peers_dirty(network_id)
            if failures:
                log.warning("overlay peers not pushed everywhere",
                            extra={"network": network_id, "errors": failures})
            return generation, False
        return generation, True

    # --- putting networks on hosts ------------------------------------------------

    async def ensure_on_host(self, network: pb.Network, host: pb.Host) -> bool:
        """Creates the network on the host (idempotent); records whether that worked.

        The caller pushes the peers (``push_peers``) afterwards.
        """
        agent = self.hosts.agent_of(host)
        try:
            if not await self.hosts.underlay_ip(host):
                raise errors.FailedPrecondition(no_underlay(host.host_id),
                                                reason="NO_UNDERLAY_ADDRESS")
            await agent.create_network(agent_network(network))
        except errors.CnmError as error:
            await self.store.set_host_state(network.network_id, host.host_id, False, error.message)
            log.warning("overlay network not in line on host",
                        extra={"network": network.network_id, "host": host.host_id,
                               "error": error.message})
            return False
        await self.store.add_network_host(network.network_id, host.host_id)
        await self.store.set_host_state(network.network_id, host.host_id, True)
        return True

    async def spread_network(self, network: pb.Network) -> None:
        """Puts a new overlay network on every healthy host, then tells them their peers.

        A host that is unhealthy or fails is recorded as not ready; it is
        brought in line when it registers again, or by the reconciler.
        """
        hosts = await self.store.list_hosts()
        for host in hosts:
            if not self.healthy(host):
                await self.store.set_host_state(network.network_id, host.host_id, False,
                                          "host is not healthy (missed heartbeats)")
        await asyncio.gather(*(self.ensure_on_host(network, host)
                               for host in hosts if self.healthy(host)))
        await self.push_peers(network.network_id)

    async def ensure_ready(self, network: pb.Network, host: pb.Host) -> None:
        """Before a connect: the network is on the host with its peers (a host that
        missed the create, or a static host that never registered)."""
        ready = await self.store.host_ready(network.network_id, host.host_id)
        if not ready and await self.ensure_on_host(network, host):
            await self.push_peers(network.network_id)

    async def sync_host(self, host: pb.Host) -> None:
        """Brings a (re-)registered host in line: every overlay network, with its peers
        (and the other hosts learn its address)."""
        networks = await self.networks()
        await asyncio.gather(*(self.ensure_on_host(network, host) for network in networks))
        for network in networks:
            await self.push_peers(network.network_id)

    async def host_left(self, host_id: str) -> None:
        """A removed host leaves every overlay network's peer lists."""
        for network in await self.networks():
            await self.store.remove_network_host(network.network_id, host_id)
            await self.push_peers(network.network_id)

    async def delete_from_hosts(self, network: pb.Network) -> None:
        """Deletes the network from every host it may be on. A host that cannot be
        reached keeps it until the reconciler finds it there with no record left."""
        host_ids = set(await self.store.network_hosts(network.network_id))
        host_ids |= set(await self.host_states(network.network_id))

        async def delete(host_id: str) -> None:
            host = await self.store.get_host(host_id)
            if host is None:
                return
            try:
                await self.hosts.agent_of(host).delete_network(
                    network.network_id)
            except errors.CnmError as error:
                log.warning("overlay network left on a host",
                            extra={"network": network.network_id, "host": host_id,
                                   "error": error.message})

        await asyncio.gather(*(delete(host_id) for host_id in sorted(host_ids)))

    async def reconcile(self) -> list[str]:
        """Brings in line every healthy host that is not, for every overlay network,
        and pushes again the peers of networks a push missed."""
        repaired = []
        hosts = [host for host in await self.store.list_hosts() if self.healthy(host)]
        for network in await self.networks():
            states = await self.host_states(network.network_id)
            missing = [host for host in hosts
                       if not states.get(host.host_id, (False, ""))[0]]
            if not missing:
                continue
            results = await asyncio.gather(*(self.ensure_on_host(network, host)
                                             for host in missing))
            if any(results):
                await self.push_peers(network.network_id)
            repaired += [f"{network.network_id} on {host.host_id}"
                         for host, done in zip(missing, results, strict=True) if done]
        for network_id in await self.store.peers_dirty():
            found = await self.store.get_network(network_id)
            if found is None or found[0].driver != DRIVER or found[1] != STATE_READY:
                await self.store.clear_peers_dirty(network_id)
                continue
            _, complete = await self.push_peers(network_id)
            if complete:
                await self.store.clear_peers_dirty(network_id)
                repaired.append(f"peers of {network_id}")
        return repaired
