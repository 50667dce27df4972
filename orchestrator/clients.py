"""gRPC clients of the IPAM service and of the host agents.

Every call has a deadline, its own timeout cut to what is left of the deadline
of the request being served (cnm.grpc_client.budget), and turns a failed RPC
into cnm's error vocabulary, with what was being done prefixed to the message.
A call to IPAM waits for it to be reachable within that time (IPAM coming back
is used at once; nothing mutates without it), and one cut by the transport is
tried again with jitter while time is left (every IPAM call is idempotent). A
call to an agent fails fast when its agent cannot be reached: the host's
heartbeats say whether it is alive, and its channel is renewed when it
registers again. A deadline that expires
becomes UNAVAILABLE: for the caller the peer is as good as down, and so does a
call gRPC has not ended by then (cnm.grpc_client.deadline_guard).
"""

from __future__ import annotations

import asyncio
import functools
import random

import grpc

from cnm import errors, grpc_client, pagination, tracing
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.tls import Tls

IPAM_TIMEOUT = 5.0
AGENT_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0
RETRY_PAUSE = 0.1  # seconds, at most, between two tries of a call cut by the transport


async def call(what: str, rpc, request, timeout: float, wait_for_ready: bool = False):
    """Runs one unary RPC; failures come back as CnmError saying ``what`` failed."""
    budget = grpc_client.budget(timeout)
    deadline = asyncio.get_running_loop().time() + budget
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise errors.Unavailable(f"{what}: no answer within {budget:g}s (the request's "
                                     f"deadline)")
        try:
            async with grpc_client.deadline_guard(left):
                return await rpc(request, timeout=left, wait_for_ready=wait_for_ready,
                                 metadata=tracing.outgoing())
        except TimeoutError:
            raise errors.Unavailable(f"{what}: no answer within {budget:g}s") from None
        except grpc.aio.AioRpcError as error:
            if wait_for_ready and grpc_client.transport_failure(error) and \
                    deadline - asyncio.get_running_loop().time() > RETRY_PAUSE:
                await asyncio.sleep(RETRY_PAUSE * random.uniform(0.5, 1.0))
                continue
            raise _converted(what, error, budget) from error


def _converted(what: str, error: grpc.aio.AioRpcError, budget: float) -> errors.CnmError:
    cause = errors.from_rpc_error(error)
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"{what}: no answer within {budget:g}s")
    cls = type(cause) if type(cause) is not errors.CnmError else errors.Internal
    return cls(f"{what}: {cause.message}", reason=cause.reason, **cause.metadata)


class Ipam:
    def __init__(self, address: str, tls: Tls | None = None):
        self.address = address
        self._channel = grpc_client.RenewingChannel(address, tls, ipam_pb2_grpc.IpamServiceStub)

    @property
    def stub(self) -> ipam_pb2_grpc.IpamServiceStub:
        return self._channel.stub

    async def close(self) -> None:
        await self._channel.close()

    @staticmethod
    async def _call(what: str, rpc, request):
        return await call(f"ipam: {what}", rpc, request, IPAM_TIMEOUT, wait_for_ready=True)

    async def create_pool(self, pool: ipam_pb2.Pool) -> ipam_pb2.Pool:
        reply = await self._call(f"create pool {pool.pool_id} ({pool.subnet})",
                                 self.stub.CreatePool, ipam_pb2.CreatePoolRequest(pool=pool))
        return reply.pool

    async def delete_pool(self, pool_id: str, force: bool = True) -> None:
        await self._call(f"delete pool {pool_id}", self.stub.DeletePool,
                         ipam_pb2.DeletePoolRequest(pool_id=pool_id, force=force))

    async def list_pools(self) -> list[ipam_pb2.Pool]:
        reply = await self._call("list pools", self.stub.ListPools, ipam_pb2.ListPoolsRequest())
        return list(reply.pools)

    async def allocate(self, pool_id: str, owner: str, preferred: str = "",
                       owner_is_prefix: bool = False):
        return await self._call(
            f"allocate address in pool {pool_id} for {owner}", self.stub.AllocateAddress,
            ipam_pb2.AllocateAddressRequest(pool_id=pool_id, owner=owner,
                                            preferred_address=preferred,
                                            owner_is_prefix=owner_is_prefix))

    async def transfer(self, pool_id: str, address: str, from_owner: str, to_owner: str):
        return await self._call(
            f"hand {address} in pool {pool_id} from {from_owner} to {to_owner}",
            self.stub.TransferAddress, ipam_pb2.TransferAddressRequest(
                pool_id=pool_id, address=address, from_owner=from_owner, to_owner=to_owner))

    async def release_owner(self, pool_id: str, owner: str) -> None:
        await self._call(f"release address of {owner} in pool {pool_id}",
                         self.stub.ReleaseAddress,
                         ipam_pb2.ReleaseAddressRequest(pool_id=pool_id, owner=owner))

    async def list_allocations(self, pool_id: str) -> list[ipam_pb2.Allocation]:
        return await pagination.fetch_all_async(
            functools.partial(self._call, f"list allocations of pool {pool_id}",
                              self.stub.ListAllocations),
            ipam_pb2.ListAllocationsRequest(pool_id=pool_id), "allocations")


class Agent:
    """One host agent, by host id and gRPC address."""

    def __init__(self, host_id: str, address: str, tls: Tls | None = None):
        self.host_id = host_id
        self.address = address
        self._channel = grpc_client.RenewingChannel(address, tls,
                                                    netdriver_pb2_grpc.NetDriverServiceStub)

    @property
    def stub(self) -> netdriver_pb2_grpc.NetDriverServiceStub:
        return self._channel.stub

    @property
    def connected(self) -> bool:
        return self._channel.channel.get_state() == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        await self._channel.close()

    def _what(self, action: str) -> str:
        return f"agent {self.host_id} ({self.address}): {action}"

    async def probe(self) -> netdriver_pb2.GetHostInfoResponse:
        """Checks the agent answers, quickly; UNAVAILABLE when it does not."""
        return await call(self._what("get host info"), self.stub.GetHostInfo,
                          netdriver_pb2.GetHostInfoRequest(), PROBE_TIMEOUT)

    async def get_sandbox(self, sandbox: str) -> netdriver_pb2.Sandbox:
        """The namespace ``sandbox`` names on the host; NOT_FOUND when there is none,
        UNAVAILABLE quickly when the agent does not answer."""
        reply = await call(self._what(f"get sandbox {sandbox}"), self.stub.GetSandbox,
                           netdriver_pb2.GetSandboxRequest(sandbox=sandbox), PROBE_TIMEOUT)
        return reply.sandbox

    async def create_endpoint(self, endpoint: netdriver_pb2.Endpoint,
                              network: netdriver_pb2.Network) -> netdriver_pb2.Endpoint:
        reply = await call(
            self._what(f"create endpoint {endpoint.endpoint_id}"), self.stub.CreateEndpoint,
            netdriver_pb2.CreateEndpointRequest(endpoint=endpoint, network=network),
            AGENT_TIMEOUT,
        )
        return reply.endpoint

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await call(self._what(f"delete endpoint {endpoint_id}"), self.stub.DeleteEndpoint,
                   netdriver_pb2.DeleteEndpointRequest(endpoint_id=endpoint_id), AGENT_TIMEOUT)

    async def create_network(self, network: netdriver_pb2.Network) -> netdriver_pb2.Network:
        reply = await call(self._what(f"create network {network.network_id}"),
                           self.stub.CreateNetwork,
                           netdriver_pb2.CreateNetworkRequest(network=network), AGENT_TIMEOUT)
        return reply.network

    async def delete_network(self, network_id: str) -> None:
        await call(self._what(f"delete network {network_id}"), self.stub.DeleteNetwork,
                   netdriver_pb2.DeleteNetworkRequest(network_id=network_id), AGENT_TIMEOUT)

    async def set_network_peers(self, network_id: str, peers: list[netdriver_pb2.Peer],
                                remote_endpoints: list[netdriver_pb2.RemoteEndpoint],
                                generation: int) -> None:
        await call(self._what(f"set peers of network {network_id}"), self.stub.SetNetworkPeers,
                   netdriver_pb2.SetNetworkPeersRequest(
                       network_id=network_id, peers=peers, remote_endpoints=remote_endpoints,
                       generation=generation),
                   AGENT_TIMEOUT)

    async def create_sandbox(self, name: str) -> netdriver_pb2.Sandbox:
        reply = await call(self._what(f"create sandbox {name}"), self.stub.CreateSandbox,
                           netdriver_pb2.CreateSandboxRequest(name=name), AGENT_TIMEOUT)
        return reply.sandbox

    async def delete_sandbox(self, name: str) -> None:
        await call(self._what(f"delete sandbox {name}"), self.stub.DeleteSandbox,
                   netdriver_pb2.DeleteSandboxRequest(name=name), AGENT_TIMEOUT)

    async def list_sandboxes(self) -> list[netdriver_pb2.Sandbox]:
        return await pagination.fetch_all_async(
            functools.partial(call, self._what("list sandboxes"), self.stub.ListSandboxes,
                              timeout=AGENT_TIMEOUT),
            netdriver_pb2.ListSandboxesRequest(), "sandboxes")

    async def get_state(self) -> netdriver_pb2.GetStateResponse:
        return await call(self._what("get state"), self.stub.GetState,
                          netdriver_pb2.GetStateRequest(), AGENT_TIMEOUT)


class Agents:
    """Channels to the agents, one per (host id, address), reused across requests."""

    def __init__(self, tls: Tls | None = None) -> None:
        self.tls = tls
        self._agents: dict[str, Agent] = {}
        self._closing: set[asyncio.Future] = set()

    def get(self, host_id: str, address: str) -> Agent:
        agent = self._agents.get(host_id)
        if agent is None or agent.address != address:
            if agent is not None:  # the host re-registered from elsewhere
                self._closing.add(asyncio.ensure_future(agent.close()))
                self._closing = {task for task in self._closing if not task.done()}
            agent = Agent(host_id, address, self.tls)
            self._agents[host_id] = agent
        return agent

    def renew(self, host_id: str) -> None:
        """A host (re-)registered: a channel of its that is not connected is made anew, so
        that the next call dials at once instead of waiting out a reconnect backoff."""
        agent = self._agents.get(host_id)
        if agent is not None and not agent.connected:
            del self._agents[host_id]
            self._closing.add(asyncio.ensure_future(agent.close()))
            self._closing = {task for task in self._closing if not task.done()}

    async def forget(self, host_id: str) -> None:
        """Closes the channel of a host that was removed."""
        agent = self._agents.pop(host_id, None)
        if agent is not None:
            await agent.close()

    async def close(self) -> None:
        for agent in self._agents.values():
            await agent.close()
        self._agents.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._closing.clear()
