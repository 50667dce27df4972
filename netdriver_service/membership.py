"""Host membership: the agent registers with the orchestrator and keeps heartbeating.

Registration carries the host id, the address the orchestrator should dial
(``--advertise``) and the underlay address; the orchestrator answers with
the heartbeat interval it expects and brings the host in line (overlay
networks, peers). A heartbeat answered with ``reregister`` (the
orchestrator forgot the host) registers again, and so does a changed underlay
address (the agent reads it again periodically). Heartbeats carry the
endpoints whose container died (the agent's ``lost``); one is sent at once
when a new one is found (``poke``), so the orchestrator hears of a dead
container within a round trip, not a heartbeat interval. Failures are retried with a
capped backoff for as long as the agent runs; they never stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from cnm import errors, grpc_client
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from cnm.tls import Tls

log = logging.getLogger("netdriver.membership")

REGISTER_TIMEOUT = 30.0  # the orchestrator brings the host in line before answering
HEARTBEAT_TIMEOUT = 3.0
MAX_BACKOFF = 5.0


class Membership:
    def __init__(
        self, *, orchestrator: str, host_id: str, advertise: str,
        underlay_ip: Callable[[], str], ready: Callable[[], Awaitable[bool]],
        registering: Callable[[], None] = lambda: None,
        lost: Callable[[], list[str]] = list,
        forget_lost: Callable[[list[str]], None] = lambda ids: None,
        tls: Tls | None = None,
        routes: Callable[[], list[str]] = list,
    ) -> None:
        self.orchestrator = orchestrator
        self.host_id = host_id
        self.advertise = advertise
        self.underlay_ip = underlay_ip
        self.ready = ready
        self.registering = registering  # called before each registration
        self.lost = lost  # endpoints to report lost
        self.forget_lost = forget_lost  # those the orchestrator does not know
        self._poked = asyncio.Event()
        self.tls = tls
        self.interval = 5.0
        self.registered = asyncio.Event()
        self.announced_underlay = ""  # the underlay address the last registration gave
        self.routes = routes  # the host's own routes, reported at registration
        self.announced_routes: list[str] = []

    async def _register(self, stub) -> None:
        underlay_ip = self.underlay_ip()
        if not underlay_ip:
            log.warning(
                "registering with no underlay address: no overlay network can reach this "
                "host; start the agent with --underlay-ip (CNM_UNDERLAY_IP)",
                extra={"orchestrator": self.orchestrator},
            )
        routes = self.routes()
        self.registering()
        reply = await stub.RegisterHost(
            pb.RegisterHostRequest(host=pb.Host(
                host_id=self.host_id, address=self.advertise, underlay_ip=underlay_ip,
                routes=routes,
            )),
            timeout=REGISTER_TIMEOUT,
        )
        self.interval = reply.heartbeat_interval.ToTimedelta().total_seconds() or self.interval
        self.announced_underlay = underlay_ip
        self.announced_routes = routes
        self.registered.set()
        if self.lost():
            self.poke()  # reported now, not an interval later
        log.info("registered", extra={"orchestrator": self.orchestrator,
                                      "advertise": self.advertise,
                                      "heartbeat_interval": self.interval})

    def poke(self) -> None:
        """Heartbeats now (a lost endpoint was found)."""
        self._poked.set()

    async def _pause(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._poked.wait(), self.interval)
        self._poked.clear()

    async def run(self) -> None:
        """Registers, then heartbeats, forever (cancel to stop)."""
        channel = grpc_client.RenewingChannel(self.orchestrator, self.tls,
                                              orchestrator_pb2_grpc.OrchestratorServiceStub)
        try:
            backoff = 0.2
            while not await self.ready():
                await asyncio.sleep(0.2)
            while True:
                try:
                    if self.registered.is_set() and self.underlay_ip() != self.announced_underlay:
                        # The orchestrator tells the other hosts' overlay networks.
                        log.info("underlay address changed; registering again",
                                 extra={"underlay_ip": self.underlay_ip()})
                        self.registered.clear()
                    if self.registered.is_set() and self.routes() != self.announced_routes:
                        # Automatic subnets must avoid them (the agent's resync reads them).
                        log.info("host routes changed; registering again",
                                 extra={"routes": len(self.routes())})
                        self.registered.clear()
                    if not self.registered.is_set():
                        await self._register(channel.stub)
                    else:
                        reply = await channel.stub.HeartbeatHost(
                            pb.HeartbeatHostRequest(host_id=self.host_id,
                                                    lost_endpoint_ids=self.lost()),
                            timeout=HEARTBEAT_TIMEOUT,
                        )
                        if reply.reregister:
                            self.registered.clear()
                            continue
                        self.forget_lost(list(reply.unknown_endpoint_ids))
                    backoff = 0.2
                    await self._pause()
                except grpc.aio.AioRpcError as error:
                    failure = errors.from_rpc_error(error)
                    log.warning(
                        "registration failed" if not self.registered.is_set()
                        else "heartbeat failed",
                        extra={"orchestrator": self.orchestrator, "error": failure.message,
                               "code": error.code().name},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            await channel.close()
