"""The gRPC face of the host agent: thin translation to and from :class:`Agent`."""

from __future__ import annotations

from importlib import metadata

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from netdriver_service.agent import Agent

SERVICE_NAME = netdriver_pb2.DESCRIPTOR.services_by_name["NetDriverService"].full_name


def _version() -> str:
    try:
        return metadata.version("cnm")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class NetDriverServicer(netdriver_pb2_grpc.NetDriverServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def GetHostInfo(self, request, context):
        return netdriver_pb2.GetHostInfoResponse(
            host_id=self.agent.host_id, underlay_ip=self.agent.underlay_ip,
            drivers=sorted(self.agent.drivers), firewall=self.agent.firewall.name,
            version=_version(),
        )

    async def CreateNetwork(self, request, context):
        if not request.HasField("network"):
            raise errors.InvalidArgument("network is required")
        spec = await self.agent.create_network(request.network)
        return netdriver_pb2.CreateNetworkResponse(network=spec.to_proto())

    async def DeleteNetwork(self, request, context):
        await self.agent.delete_network(request.network_id)
        return netdriver_pb2.DeleteNetworkResponse()

    async def CreateEndpoint(self, request, context):
        if not request.HasField("endpoint"):
            raise errors.InvalidArgument("endpoint is required")
        network = request.network if request.HasField("network") else None
        endpoint = await self.agent.create_endpoint(request.endpoint, network)
        return netdriver_pb2.CreateEndpointResponse(endpoint=endpoint.to_proto())

    async def DeleteEndpoint(self, request, context):
        await self.agent.delete_endpoint(request.endpoint_id)
        return netdriver_pb2.DeleteEndpointResponse()

    async def SetNetworkPeers(self, request, context):
        network = self.agent.store.networks.get(request.network_id)
        if network is None:
            raise errors.NotFound(f"network {request.network_id!r} is not on this host")
        raise errors.FailedPrecondition(
            f"network {request.network_id!r} uses driver {network.driver!r}, which has no peers",
            reason="DRIVER_HAS_NO_PEERS",
        )

    async def CreateSandbox(self, request, context):
        path = await self.agent.create_sandbox(request.name)
        return netdriver_pb2.CreateSandboxResponse(
            sandbox=netdriver_pb2.Sandbox(name=request.name, path=path)
        )

    async def DeleteSandbox(self, request, context):
        await self.agent.delete_sandbox(request.name)
        return netdriver_pb2.DeleteSandboxResponse()

    async def ListSandboxes(self, request, context):
        return netdriver_pb2.ListSandboxesResponse(
            sandboxes=[
                netdriver_pb2.Sandbox(name=name, path=path)
                for name, path in self.agent.list_sandboxes()
            ]
        )

    async def GetState(self, request, context):
        return await self.agent.get_state()

    async def Resync(self, request, context):
        return netdriver_pb2.ResyncResponse(repaired=await self.agent.resync())
