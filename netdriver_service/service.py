"""The gRPC face of the host agent: thin translation to and from :class:`Agent`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from cnm import errors, pagination
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.version import package_version
from netdriver_service import model
from netdriver_service.agent import Agent
from netdriver_service.model import Peer, RemoteEndpoint

SERVICE_NAME = netdriver_pb2.DESCRIPTOR.services_by_name["NetDriverService"].full_name
T = TypeVar("T")


class NetDriverServicer(netdriver_pb2_grpc.NetDriverServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._running: set[asyncio.Task] = set()

    async def _to_completion(self, operation: Awaitable[T]) -> T:
        """Awaits a mutating operation that the call's cancellation cannot cut short.

        grpc.aio cancels the handler when the client's deadline passes or it
        goes away; cut at an await, an operation would leave a kernel object
        made but not yet on its undo stack. So it runs as its own task, and
        ends (done, or undone) whatever happens to the call.
        """
        task = asyncio.ensure_future(operation)
        self._running.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def GetHostInfo(self, request, context):
        return netdriver_pb2.GetHostInfoResponse(
            host_id=self.agent.host_id, underlay_ip=self.agent.underlay_ip,
            drivers=[model.driver_enum(name) for name in sorted(self.agent.drivers)],
            firewall=netdriver_pb2.Firewall.Value(f"FIREWALL_{self.agent.firewall.name.upper()}"),
            version=package_version() or "0.0.0",
        )

    async def CreateNetwork(self, request, context):
        if not request.HasField("network"):
            raise errors.InvalidArgument("network is required")
        spec = await self._to_completion(self.agent.create_network(request.network))
        return netdriver_pb2.CreateNetworkResponse(network=spec.to_proto())

    async def DeleteNetwork(self, request, context):
        await self._to_completion(self.agent.delete_network(request.network_id))
        return netdriver_pb2.DeleteNetworkResponse()

    async def CreateEndpoint(self, request, context):
        if not request.HasField("endpoint"):
            raise errors.InvalidArgument("endpoint is required")
        network = request.network if request.HasField("network") else None
        endpoint = await self._to_completion(
            self.agent.create_endpoint(request.endpoint, network)
        )
        return netdriver_pb2.CreateEndpointResponse(endpoint=endpoint.to_proto())

    async def DeleteEndpoint(self, request, context):
        await self._to_completion(self.agent.delete_endpoint(request.endpoint_id))
        return netdriver_pb2.DeleteEndpointResponse()

    async def SetNetworkPeers(self, request, context):
        applied, changes = await self._to_completion(self.agent.set_network_peers(
            request.network_id,
            [Peer(peer.host_id, peer.underlay_ip) for peer in request.peers],
            [
                RemoteEndpoint(remote.address, remote.mac_address, remote.underlay_ip,
                               tuple(remote.dns_names), remote.ipv6_address)
                for remote in request.remote_endpoints
            ],
            request.generation,
        ))
        return netdriver_pb2.SetNetworkPeersResponse(changes=changes, applied=applied)

    async def CreateSandbox(self, request, context):
        path = await self._to_completion(self.agent.create_sandbox(request.name))
        return netdriver_pb2.CreateSandboxResponse(
            sandbox=netdriver_pb2.Sandbox(name=request.name, path=path)
        )

    async def DeleteSandbox(self, request, context):
        await self._to_completion(self.agent.delete_sandbox(request.name))
        return netdriver_pb2.DeleteSandboxResponse()

    async def ListSandboxes(self, request, context):
        page = pagination.paginate(self.agent.list_sandboxes(), request,
                                   key=lambda sandbox: sandbox[0])
        return netdriver_pb2.ListSandboxesResponse(
            sandboxes=[netdriver_pb2.Sandbox(name=name, path=path, inode=inode)
                       for name, path, inode in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetSandbox(self, request, context):
        name, path, inode = self.agent.get_sandbox(request.sandbox)
        return netdriver_pb2.GetSandboxResponse(
            sandbox=netdriver_pb2.Sandbox(name=name, path=path, inode=inode))

    async def GetState(self, request, context):
        return await self.agent.get_state()

    async def Resync(self, request, context):
        return netdriver_pb2.ResyncResponse(repaired=await self._to_completion(self.agent.resync()))


def _settled(task: asyncio.Task) -> None:
    """Reads the outcome of an operation whose call went away, so asyncio does not warn."""
    if not task.cancelled():
        task.exception()
