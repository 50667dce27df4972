from __future__ import annotations

import asyncio
import io
import logging
import warnings
from dataclasses import dataclass, field

import pytest

from cnm import errors, grpc_client, server
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from orchestrator.clients import Agents, Ipam
from orchestrator.flows import Orchestrator
from orchestrator.reconciler import Reconciler
from orchestrator.service import SERVICE_NAME, OrchestratorServicer
from orchestrator.store import Store
from tests.orchestrator.fakes import FakeAgent, FakeIpam, serve_agent, serve_ipam

log = logging.getLogger("tests.orchestrator")


@dataclass
class World:
    """An orchestrator served in-process over fake IPAM and fake agents h1, h2."""

    ipam: FakeIpam
    agents: dict[str, FakeAgent]
    orch: Orchestrator
    store: Store
    reconciler: Reconciler
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub
    address: str
    servers: dict[str, server.Server] = field(default_factory=dict)
    closers: list = field(default_factory=list)

    async def call(self, method: str, request):
        """Calls the orchestrator; a failure comes back as the CnmError raised."""
        import grpc

        try:
            return await getattr(self.stub, method)(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            raise errors.from_rpc_error(error) from None

    async def new_replica(self) -> Orchestrator:
        """A second orchestrator on the same Redis, IPAM and agents."""
        store = Store.connect(self.redis_url, lease_seconds=5)
        await store.renew_lease()
        ipam = Ipam(self.ipam_address)
        agents = Agents()
        self.closers += [store.close, ipam.close, agents.close]
        return Orchestrator(store, ipam, agents)

    redis_url: str = ""
    ipam_address: str = ""


@pytest.fixture
async def world(redis_url):
    ipam = FakeIpam()
    ipam_server = await serve_ipam(ipam)
    ipam_address = f"127.0.0.1:{ipam_server.port}"
    agents, servers = {}, {"ipam": ipam_server}
    for host_id in ("h1", "h2"):
        agents[host_id] = FakeAgent(host_id)
        servers[host_id] = await serve_agent(agents[host_id])
    store = Store.connect(redis_url, lease_seconds=5)
    await store.renew_lease()
    ipam_client = Ipam(ipam_address)
    agent_clients = Agents()
    orch = Orchestrator(store, ipam_client, agent_clients)
    await orch.hosts.add_static(
        ",".join(f"{h}=127.0.0.1:{servers[h].port}" for h in ("h1", "h2")))
    front = await server.start(
        listen="127.0.0.1:0",
        services=[(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                   OrchestratorServicer(orch), SERVICE_NAME)],
        logger=log, readiness=store.ping,
    )
    servers["orchestrator"] = front
    address = f"127.0.0.1:{front.port}"
    channel = grpc_client.aio_channel(address)
    built = World(
        ipam=ipam, agents=agents, orch=orch, store=store, reconciler=Reconciler(orch),
        stub=orchestrator_pb2_grpc.OrchestratorServiceStub(channel), address=address,
        servers=servers, redis_url=redis_url, ipam_address=ipam_address,
    )
    yield built
    steps = [("close the test's channel", channel.close),
             *((f"close {close.__qualname__}", close) for close in built.closers),
             *((f"stop the {name} server", lambda r=running: r.stop(0))
               for name, running in servers.items()),
             ("close the agent clients", agent_clients.close),
             ("close the IPAM client", ipam_client.close), ("close the store", store.close)]
    for what, step in steps:
        await _bounded_teardown(what, step)


TEARDOWN_STEP = 10.0  # seconds


async def _bounded_teardown(what: str, step) -> None:
    """Runs one teardown step, at most TEARDOWN_STEP seconds. A step past it (seen once
    in a few hundred runs: closing grpc.aio objects after a test stopped a server under
    a pending call) is reported with every task's stack and left behind, so that a hang
    of the library's teardown neither stalls the suite nor hides."""
    running = asyncio.ensure_future(step())
    done, _ = await asyncio.wait({running}, timeout=TEARDOWN_STEP)
    if done:
        running.result()
        return
    stacks = io.StringIO()
    for task in asyncio.all_tasks():
        try:
            task.print_stack(file=stacks)
        except TypeError:  # a frame of grpc's Cython code has no line number
            stacks.write(f"{task!r} (its stack cannot be printed)\n")
    running.cancel()  # not awaited: it may never finish
    warnings.warn(f"world teardown: {what} took over {TEARDOWN_STEP:.0f} s; left "
                  f"behind. Tasks:\n{stacks.getvalue()}", stacklevel=1)


def network_request(name: str = "net1", subnet: str = "10.20.0.0/24", **fields):
    return pb.CreateNetworkRequest(network=pb.Network(name=name, subnet=subnet, **fields))


def connect_request(container: str, network: str = "net1", host: str = "h1", **fields):
    return pb.ConnectContainerRequest(network=network, container_id=container, host_id=host,
                                      **fields)
