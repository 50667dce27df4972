"""The gRPC face of the orchestrator: requests in, their fields checked (cnm.validation),
flows called, responses out."""

from __future__ import annotations

import functools
from datetime import timedelta

from google.protobuf import duration_pb2

from cnm import authz, pagination, validation
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from cnm.redis_client import unavailable
from orchestrator import validation as orchestrator_validation
from orchestrator.flows import Orchestrator

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
_SERVICE = pb.DESCRIPTOR.services_by_name["OrchestratorService"]


def redis_unavailable_is_unavailable(cls):
    """Every RPC of ``cls`` reports Redis being unreachable as UNAVAILABLE."""

    def guard(method):
        @functools.wraps(method)
        async def guarded(self, request, context):
            with unavailable(method.__name__):
                return await method(self, request, context)

        return guarded

    for rpc in _SERVICE.methods:
        setattr(cls, rpc.name, guard(getattr(cls, rpc.name)))
    return cls


@redis_unavailable_is_unavailable
class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, orchestrator: Orchestrator):
        self.orch = orchestrator

    async def CreateNetwork(self, request, context):
        return pb.CreateNetworkResponse(network=await self.orch.create_network(
            request.network, validate_only=request.validate_only))

    async def GetNetwork(self, request, context):
        validation.check_network_name("network", request.network)
        network, endpoints = await self.orch.get_network(request.network)
        return pb.GetNetworkResponse(
            network=network, endpoints=endpoints,
            quarantined_endpoints=await self.orch.quarantined_endpoints(network.network_id))

    async def ListNetworks(self, request, context):
        orchestrator_validation.check_driver(request.driver)
        for label_filter in request.label_filters:
            validation.check_text("label_filters", label_filter, validation.MAX_LABEL_KEY + 1
                                  + validation.MAX_LABEL_VALUE, reason="INVALID_LABEL")
        page = pagination.paginate(
            await self.orch.list_networks(request.driver, request.label_filters), request,
            key=lambda network: network.name)
        return pb.ListNetworksResponse(networks=page.items, next_page_token=page.next_page_token)

    async def DeleteNetwork(self, request, context):
        validation.check_network_name("network", request.network)
        await self.orch.delete_network(request.network, request.force, request.allow_missing)
        return pb.DeleteNetworkResponse()

    async def PruneNetworks(self, request, context):
        for field in ("label_filters", "excluded_label_filters"):
            for label_filter in getattr(request, field):
                validation.check_text(field, label_filter, validation.MAX_LABEL_KEY + 1
                                      + validation.MAX_LABEL_VALUE, reason="INVALID_LABEL")
        deleted, skipped = await self.orch.prune_networks(
            request.label_filters, request.excluded_label_filters,
            validation.check_timestamp("created_before", request.created_before)
            if request.HasField("created_before") else None)
        return pb.PruneNetworksResponse(deleted_networks=deleted, skipped_networks=skipped)

    async def ConnectContainer(self, request, context):
        validation.check_network_name("network", request.network)
        validation.check_id("container_id", request.container_id)
        validation.check_id("host_id", request.host_id)
        return pb.ConnectContainerResponse(endpoint=await self.orch.connect(request))

    async def ReserveAddress(self, request, context):
        validation.check_network_name("network", request.network)
        validation.check_id("host_id", request.host_id)
        address, prefix_length, gateway = await self.orch.reserve_address(
            request.network, request.host_id, request.address, request.ipv6)
        return pb.ReserveAddressResponse(address=address, prefix_length=prefix_length,
                                         gateway=gateway)

    async def ReleaseAddress(self, request, context):
        validation.check_network_name("network", request.network)
        validation.check_id("host_id", request.host_id)
        await self.orch.release_reserved(request.network, request.host_id, request.address)
        return pb.ReleaseAddressResponse()

    async def DisconnectContainer(self, request, context):
        validation.check_network_name("network", request.network)
        validation.check_id("container_id", request.container_id)
        await self.orch.disconnect(request.network, request.container_id, request.force,
                                   request.allow_missing, only_host=authz.bound_host(),
                                   release_address=request.release_address)
        return pb.DisconnectContainerResponse()

    async def GetEndpoint(self, request, context):
        validation.check_id("endpoint_id", request.endpoint_id)
        return pb.GetEndpointResponse(endpoint=await self.orch.get_endpoint(request.endpoint_id))

    async def ListEndpoints(self, request, context):
        if request.network:
            validation.check_network_name("network", request.network)
        for field in ("container_id", "host_id"):
            if getattr(request, field):
                validation.check_id(field, getattr(request, field))
        page = pagination.paginate(
            await self.orch.list_endpoints(request.network, request.container_id,
                                           request.host_id), request,
            key=lambda endpoint: f"{endpoint.network_name}\0{endpoint.container_id}")
        return pb.ListEndpointsResponse(endpoints=page.items,
                                        next_page_token=page.next_page_token)

    async def CreateSandbox(self, request, context):
        validation.check_id("host_id", request.host_id)
        sandbox = await self.orch.create_sandbox(request.name, request.host_id)
        return pb.CreateSandboxResponse(sandbox=sandbox)

    async def DeleteSandbox(self, request, context):
        validation.check_id("host_id", request.host_id)
        await self.orch.delete_sandbox(request.name, request.host_id, request.allow_missing)
        return pb.DeleteSandboxResponse()

    async def ListSandboxes(self, request, context):
        if request.host_id:
            validation.check_id("host_id", request.host_id)
        sandboxes, unreachable = await self.orch.list_sandboxes(request.host_id)
        page = pagination.paginate(sandboxes, request,
                                   key=lambda sandbox: f"{sandbox.host_id}\0{sandbox.name}")
        return pb.ListSandboxesResponse(sandboxes=page.items,
                                        next_page_token=page.next_page_token,
                                        unreachable=unreachable)

    async def RegisterHost(self, request, context):
        host = await self.orch.register_host(request.host)
        interval = duration_pb2.Duration()
        interval.FromTimedelta(timedelta(seconds=self.orch.hosts.heartbeat_interval))
        return pb.RegisterHostResponse(host=host, heartbeat_interval=interval)

    async def HeartbeatHost(self, request, context):
        validation.check_id("host_id", request.host_id)
        known, unknown = await self.orch.heartbeat(request.host_id, request.lost_endpoint_ids)
        return pb.HeartbeatHostResponse(reregister=not known, unknown_endpoint_ids=unknown)

    async def ListHosts(self, request, context):
        page = pagination.paginate(await self.orch.hosts.list(), request,
                                   key=lambda host: host.host_id)
        return pb.ListHostsResponse(hosts=page.items, next_page_token=page.next_page_token)

    async def DeleteHost(self, request, context):
        validation.check_id("host_id", request.host_id)
        await self.orch.delete_host(request.host_id, request.allow_missing, request.force)
        return pb.DeleteHostResponse()
