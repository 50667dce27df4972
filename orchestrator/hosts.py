"""Hosts: registration, heartbeats and health, and the agent client of each.

A host is healthy while its heartbeats arrive (within three intervals); a
static host (``CNM_HOSTS``) need not heartbeat, and counts as healthy while
its agent answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

from cnm import errors
from cnm import validation as cnm_validation
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator.clients import Agent, Agents
from orchestrator.store import Store, now

HEARTBEAT_INTERVAL = 5
STALE_AFTER = 60.0  # seconds of silence after which a host's endpoints are shown stale


class Hosts:
    """The registered hosts, over the store and the agents' clients."""

    def __init__(self, store: Store, agents: Agents, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 stale_after: float = STALE_AFTER):
        self.store = store
        self.agents = agents
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after

    async def agent(self, host_id: str) -> Agent:
        """The agent of a registered host; NOT_FOUND naming the known hosts otherwise."""
        return await self.agent_for(host_id, await self.store.get_host(host_id) if host_id
                                    else None)

    async def agent_for(self, host_id: str, host: pb.Host | None) -> Agent:
        """:meth:`agent`, given the host's record as just read (None: there is none)."""
        if not host_id:
            raise errors.InvalidArgument("host_id is required", field="host_id")
        if host is None:
            known = ", ".join(h.host_id for h in await self.store.list_hosts()) or "none"
            raise errors.NotFound(f"host {host_id!r} not found (known hosts: {known})",
                                  reason="HOST_NOT_FOUND", host=host_id)
        return self.agents.get(host.host_id, host.address)

    def agent_of(self, host: pb.Host) -> Agent:
        return self.agents.get(host.host_id, host.address)

    def fresh(self, host: pb.Host) -> bool:
        """Whether the host's last heartbeat is recent (three intervals)."""
        if not host.HasField("last_heartbeat_time"):
            return False
        age = time.time() - host.last_heartbeat_time.ToSeconds()
        return age <= 3 * self.heartbeat_interval

    def stale(self, host: pb.Host | None) -> bool:
        """Whether a host has been silent longer than ``stale_after`` (a static host, which
        need not heartbeat, never is; an unrecorded one always is)."""
        if host is None:
            return True
        if host.static or not host.HasField("last_heartbeat_time"):
            return False
        return time.time() - host.last_heartbeat_time.ToSeconds() > self.stale_after

    def healthy(self, host: pb.Host) -> bool:
        return host.static or self.fresh(host)

    async def underlay_ip(self, host: pb.Host) -> str:
        """The host's VXLAN source address: as registered, else asked of its agent once."""
        if not host.underlay_ip:
            info = await self.agent_of(host).probe()
            host.underlay_ip = info.underlay_ip

            def learn(current: pb.Host) -> bool:
                if current.address != host.address or current.underlay_ip == info.underlay_ip:
                    return False  # re-registered from elsewhere meanwhile, or known
                current.underlay_ip = info.underlay_ip
                return True

            await self.store.update_host(host.host_id, learn)
        return host.underlay_ip

    async def add_static(self, spec: str) -> None:
        """``id=address,...`` (CNM_HOSTS): hosts that need not register."""
        for item in filter(None, (part.strip() for part in spec.split(","))):
            host_id, sep, address = item.partition("=")
            if not sep or not host_id or not address:
                raise errors.InvalidArgument(f"invalid host {item!r} in CNM_HOSTS: want id=addr")
            cnm_validation.check_id("host_id", host_id)
            cnm_validation.check_host_address(address)
            await self.store.put_host(pb.Host(host_id=host_id, address=address, static=True))

    async def register(self, host: pb.Host) -> pb.Host:
        """Records a (re-)registration; ALREADY_EXISTS for a host id that a live agent
        elsewhere holds."""
        cnm_validation.check_id("host_id", host.host_id)
        cnm_validation.check_host_address(host.address)
        # Empty: the agent knows of none yet (it is asked again when an overlay needs it).
        cnm_validation.check_underlay_ip(host.underlay_ip, allow_empty=True)
        routes = check_routes(host.routes)
        existing = await self.store.get_host(host.host_id)
        if existing is not None and existing.address != host.address and (
            existing.static or self.fresh(existing)
        ):
            raise errors.AlreadyExists(
                f"host {host.host_id!r} is already registered from {existing.address}",
                host=host.host_id,
            )
        record = pb.Host(host_id=host.host_id, address=host.address, underlay_ip=host.underlay_ip,
                         last_heartbeat_time=now(),
                         static=existing.static if existing is not None else False,
                         routes=routes)
        await self.store.put_host(record)
        self.agents.renew(host.host_id)
        return record

    async def heartbeat(self, host_id: str) -> bool:
        """Records a heartbeat; False when the host is unknown (it must register)."""
        def beat(host: pb.Host) -> bool:
            host.last_heartbeat_time.GetCurrentTime()
            return True

        return await self.store.update_host(host_id, beat) is not None

    async def list(self) -> list[pb.Host]:
        """Every host with its state and endpoint count."""
        hosts = await self.store.list_hosts()

        async def fill(host: pb.Host) -> None:
            healthy = self.fresh(host)
            if not healthy and host.static:  # a static host need not heartbeat
                with contextlib.suppress(errors.CnmError):
                    await self.agent_of(host).probe()
                    healthy = True
            host.state = pb.HOST_STATE_HEALTHY if healthy else pb.HOST_STATE_UNHEALTHY
            host.endpoint_count = await self.store.host_endpoint_count(host.host_id)

        await asyncio.gather(*(fill(host) for host in hosts))
        return hosts


MAX_ROUTES = 4096  # a host's routing table beyond this is not reported as a whole


def check_routes(routes) -> list[str]:
    """A host's reported routes, as CIDR networks; INVALID_ARGUMENT for one that is not."""
    if len(routes) > MAX_ROUTES:
        raise errors.InvalidArgument(
            f"routes: {len(routes)} routes, at most {MAX_ROUTES}", reason="INVALID_ARGUMENT",
            field="routes")
    checked = []
    for route in routes:
        try:
            checked.append(str(ipaddress.ip_network(route)))
        except ValueError:
            raise errors.InvalidArgument(
                f"routes: {errors.capped(route)!r} is not a network in CIDR notation",
                reason="INVALID_CIDR", field="routes", value=errors.capped(route)) from None
    return sorted(set(checked))
