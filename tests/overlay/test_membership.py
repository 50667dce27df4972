"""The agent's registration loop against an in-process orchestrator servicer (real gRPC)."""

from __future__ import annotations

import asyncio
import logging

from cnm import errors, server
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from netdriver_service.membership import Membership

log = logging.getLogger("tests.membership")


class Orchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.registered: list[pb.Host] = []
        self.heartbeats = 0
        self.forget_after = 2  # answer reregister on this heartbeat
        self.refuse_first = True
        self.lost_reports: list[list[str]] = []

    async def RegisterHost(self, request, context):
        if self.refuse_first:
            self.refuse_first = False
            raise errors.Unavailable("orchestrator starting")
        self.registered.append(request.host)
        return pb.RegisterHostResponse(host=request.host, heartbeat_interval={})

    async def HeartbeatHost(self, request, context):
        self.heartbeats += 1
        self.lost_reports.append(list(request.lost_endpoint_ids))
        return pb.HeartbeatHostResponse(
            reregister=self.heartbeats == self.forget_after,
            unknown_endpoint_ids=[e for e in request.lost_endpoint_ids if e.startswith("x")])


async def _ready() -> bool:
    return True


async def test_registers_retries_heartbeats_and_registers_again_when_forgotten():
    fake = Orchestrator()
    name = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
    running = await server.start(
        listen="127.0.0.1:0",
        services=[(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, fake, name)],
        logger=log, readiness=_ready,
    )
    membership = Membership(
        orchestrator=f"127.0.0.1:{running.port}", host_id="h9", advertise="unix:/tmp/h9.sock",
        underlay_ip=lambda: "10.99.0.9", ready=_ready,
        # Before each registration the agent forgets its peers generations: the orchestrator
        # may have started its count again, and must not find its pushes ignored.
        registering=lambda: forgotten.append(len(fake.registered)),
    )
    forgotten: list[int] = []
    membership.interval = 0.05  # the servicer asks for none: keep this one
    task = asyncio.create_task(membership.run())
    try:
        for _ in range(200):
            if len(fake.registered) >= 2 and fake.heartbeats >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await running.stop(0)
    assert len(fake.registered) >= 2  # the first try failed, and it was forgotten once
    assert forgotten[:3] == [0, 0, 1]  # before the refused try, its retry, the second one
    host = fake.registered[0]
    assert (host.host_id, host.address, host.underlay_ip) == ("h9", "unix:/tmp/h9.sock",
                                                              "10.99.0.9")


async def registrations_across_a_change(change, **membership_fields) -> list[pb.Host]:
    """What a membership registers: once, and once more after ``change()`` (made once
    it heartbeats) changes what it reads; nothing further while heartbeats go on."""
    fake = Orchestrator()
    fake.refuse_first = False
    fake.forget_after = 0  # never
    name = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
    running = await server.start(
        listen="127.0.0.1:0",
        services=[(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, fake, name)],
        logger=log, readiness=_ready,
    )
    membership = Membership(orchestrator=f"127.0.0.1:{running.port}", host_id="h9",
                            advertise="unix:/tmp/h9.sock", ready=_ready, **membership_fields)
    membership.interval = 0.05
    task = asyncio.create_task(membership.run())
    try:
        for _ in range(200):
            if fake.heartbeats >= 2:
                break
            await asyncio.sleep(0.02)
        change()
        for _ in range(200):
            if len(fake.registered) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # heartbeats go on; no further registration
    finally:
        task.cancel()
        await running.stop(0)
    return fake.registered


async def test_a_changed_underlay_address_is_registered_again():
    underlay = ["10.99.0.9"]
    registered = await registrations_across_a_change(
        lambda: underlay.__setitem__(0, "10.99.0.19"), underlay_ip=lambda: underlay[0])
    assert [host.underlay_ip for host in registered] == ["10.99.0.9", "10.99.0.19"]


async def test_the_hosts_routes_are_registered_and_registered_again_when_they_change():
    routes = [["10.99.0.0/24"]]
    registered = await registrations_across_a_change(
        lambda: routes.__setitem__(0, ["10.99.0.0/24", "172.17.0.0/16"]),
        underlay_ip=lambda: "10.99.0.9", routes=lambda: routes[0])
    assert [list(host.routes) for host in registered] == [
        ["10.99.0.0/24"], ["10.99.0.0/24", "172.17.0.0/16"]]


async def test_lost_endpoints_are_reported_at_once_until_answered():
    fake = Orchestrator()
    fake.refuse_first = False
    fake.forget_after = 0
    name = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
    running = await server.start(
        listen="127.0.0.1:0",
        services=[(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, fake, name)],
        logger=log, readiness=_ready,
    )
    lost = {"e1"}  # found at start-up: reported right after registering
    membership = Membership(
        orchestrator=f"127.0.0.1:{running.port}", host_id="h9", advertise="unix:/tmp/h9.sock",
        underlay_ip=lambda: "10.99.0.9", ready=_ready, lost=lambda: sorted(lost),
        forget_lost=lambda ids: lost.difference_update(ids),
    )
    membership.interval = 60  # only a poke can make a heartbeat this soon
    task = asyncio.create_task(membership.run())
    try:
        for _ in range(200):
            if fake.lost_reports:
                break
            await asyncio.sleep(0.01)
        lost.update({"e2", "x9"})  # x9: one the orchestrator does not know
        membership.poke()
        for _ in range(200):
            if len(fake.lost_reports) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await running.stop(0)
    assert fake.lost_reports == [["e1"], ["e1", "e2", "x9"]]
    assert lost == {"e1", "e2"}  # reported until disconnected
