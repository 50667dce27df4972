"""In-memory IPAM and host agent servicers, served by real gRPC servers on port 0.

They follow the contracts of ipam.proto and netdriver.proto closely enough
for the orchestrator's flows: owner-idempotent allocation, idempotent
deletes, a network created by the first CreateEndpoint. ``fail`` makes a
method raise a chosen error, to drive the orchestrator's undo paths.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from cnm import errors, server
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.netdriver.v1 import netdriver_pb2_grpc
from cnm.validation import mac_from_address

log = logging.getLogger("tests.fakes")


class Faults:
    def __init__(self) -> None:
        self.fail: dict[str, errors.CnmError] = {}
        # Raised once the method has done its work (a reply lost on the way back).
        self.fail_after: dict[str, errors.CnmError] = {}
        self.calls: list[str] = []

    def check(self, method: str) -> None:
        self.calls.append(method)
        if method in self.fail:
            raise self.fail[method]

    def check_after(self, method: str) -> None:
        if method in self.fail_after:
            raise self.fail_after[method]


class FakeIpam(ipam_pb2_grpc.IpamServiceServicer):
    def __init__(self) -> None:
        self.faults = Faults()
        self.pools: dict[str, ipam_pb2.Pool] = {}
        self.allocations: dict[str, dict[str, str]] = {}  # pool -> address -> owner

    def owners(self, pool_id: str) -> dict[str, str]:
        """owner -> address, endpoint owners only."""
        return {owner: address for address, owner in self.allocations.get(pool_id, {}).items()
                if not owner.startswith("cnm:")}

    async def CreatePool(self, request, context):
        self.faults.check("CreatePool")
        pool = ipam_pb2.Pool()
        pool.CopyFrom(request.pool)
        subnet = ipaddress.ip_network(pool.subnet)
        if pool.pool_id in self.pools:
            return ipam_pb2.CreatePoolResponse(pool=self.pools[pool.pool_id])
        for other in self.pools.values():
            if ipaddress.ip_network(other.subnet).overlaps(subnet):
                raise errors.AlreadyExists(f"subnet {subnet} overlaps pool {other.pool_id}",
                                           reason="SUBNET_OVERLAP",
                                           clashing_pool_id=other.pool_id,
                                           clashing_subnet=other.subnet)
        pool.gateway = pool.gateway or str(next(subnet.hosts()))
        self.pools[pool.pool_id] = pool
        self.allocations[pool.pool_id] = {pool.gateway: "cnm:gateway"}
        self.faults.check_after("CreatePool")
        return ipam_pb2.CreatePoolResponse(pool=pool)

    async def DeletePool(self, request, context):
        self.faults.check("DeletePool")
        if request.pool_id in self.pools:
            if self.owners(request.pool_id) and not request.force:
                raise errors.FailedPrecondition(f"pool {request.pool_id} is in use")
            del self.pools[request.pool_id]
            del self.allocations[request.pool_id]
        return ipam_pb2.DeletePoolResponse()

    async def ListPools(self, request, context):
        self.faults.check("ListPools")
        return ipam_pb2.ListPoolsResponse(pools=sorted(self.pools.values(),
                                                       key=lambda p: p.pool_id))

    def _pool(self, pool_id: str) -> ipam_pb2.Pool:
        if pool_id not in self.pools:
            raise errors.NotFound(f"pool {pool_id} not found")
        return self.pools[pool_id]

    async def AllocateAddress(self, request, context):
        self.faults.check("AllocateAddress")
        pool = self._pool(request.pool_id)
        subnet = ipaddress.ip_network(pool.subnet)
        taken = self.allocations[pool.pool_id]
        owner = request.owner + (request.preferred_address if request.owner_is_prefix else "")
        held = self.owners(pool.pool_id).get(owner)
        reply = {"prefix_length": subnet.prefixlen, "gateway": pool.gateway}
        if held and not (request.owner_is_prefix and not request.preferred_address):
            return ipam_pb2.AllocateAddressResponse(address=held, newly_allocated=False, **reply)
        if request.preferred_address:
            address = request.preferred_address
            if ipaddress.ip_address(address) not in subnet:
                raise errors.InvalidArgument(f"{address} is not in {subnet}")
            if address in taken:
                raise errors.AlreadyExists(f"address {address} is held by another owner")
        else:
            address = next((str(a) for a in subnet.hosts() if str(a) not in taken), None)
            if address is None:
                raise errors.ResourceExhausted(f"pool {pool.pool_id} is full")
        taken[address] = request.owner + (address if request.owner_is_prefix else "")
        self.faults.check_after("AllocateAddress")
        return ipam_pb2.AllocateAddressResponse(address=address, newly_allocated=True, **reply)

    async def ReleaseAddress(self, request, context):
        self.faults.check("ReleaseAddress")
        taken = self.allocations.get(request.pool_id, {})
        for address, owner in list(taken.items()):
            if (request.owner and owner == request.owner) or address == request.address:
                del taken[address]
                return ipam_pb2.ReleaseAddressResponse(address=address)
        return ipam_pb2.ReleaseAddressResponse()

    async def TransferAddress(self, request, context):
        self.faults.check("TransferAddress")
        pool = self._pool(request.pool_id)
        taken = self.allocations[pool.pool_id]
        reply = ipam_pb2.TransferAddressResponse(
            prefix_length=ipaddress.ip_network(pool.subnet).prefixlen, gateway=pool.gateway)
        holder = taken.get(request.address)
        if holder == request.to_owner:
            return reply
        if holder != request.from_owner:
            raise errors.FailedPrecondition(f"{request.address} is not held by "
                                            f"{request.from_owner}", reason="ADDRESS_NOT_HELD")
        if request.to_owner in self.owners(pool.pool_id):
            raise errors.AlreadyExists(f"{request.to_owner} holds another address",
                                       reason="OWNER_HOLDS_OTHER_ADDRESS")
        taken[request.address] = request.to_owner
        return reply

    async def ListAllocations(self, request, context):
        self.faults.check("ListAllocations")
        self._pool(request.pool_id)
        return ipam_pb2.ListAllocationsResponse(allocations=[
            ipam_pb2.Allocation(address=address, owner=owner)
            for address, owner in sorted(self.allocations[request.pool_id].items())
        ])


class FakeAgent(netdriver_pb2_grpc.NetDriverServiceServicer):
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.faults = Faults()
        self.networks: dict[str, nd.Network] = {}
        self.endpoints: dict[str, nd.Endpoint] = {}
        self.sandboxes: dict[str, nd.Sandbox] = {}
        self.peers: dict[str, nd.SetNetworkPeersRequest] = {}
        self.underlay_ip = f"192.0.2.{sum(map(ord, host_id)) % 250 + 1}"
        self.missing_sandboxes: set[str] = set()  # GetSandbox says NOT_FOUND for these
        self.ports_in_use: set[int] = set()  # CreateEndpoint says PORT_IN_USE for these
        # When set, CreateEndpoint waits for it to be set (``held`` counts the waiters).
        self.hold: asyncio.Event | None = None
        self.held = 0

    async def GetHostInfo(self, request, context):
        self.faults.check("GetHostInfo")
        return nd.GetHostInfoResponse(host_id=self.host_id, drivers=[nd.DRIVER_BRIDGE, nd.DRIVER_OVERLAY],
                                      firewall=nd.FIREWALL_NONE, underlay_ip=self.underlay_ip)

    async def SetNetworkPeers(self, request, context):
        self.faults.check("SetNetworkPeers")
        if request.network_id not in self.networks:
            raise errors.NotFound(f"network {request.network_id} is not on this host")
        last = self.peers.get(request.network_id)
        if last is not None and request.generation < last.generation:
            return nd.SetNetworkPeersResponse(applied=False)
        self.peers[request.network_id] = request
        return nd.SetNetworkPeersResponse(applied=True)

    async def CreateNetwork(self, request, context):
        self.faults.check("CreateNetwork")
        self.networks.setdefault(request.network.network_id, request.network)
        return nd.CreateNetworkResponse(network=self.networks[request.network.network_id])

    async def DeleteNetwork(self, request, context):
        self.faults.check("DeleteNetwork")
        self.networks.pop(request.network_id, None)
        self.peers.pop(request.network_id, None)
        for endpoint_id, endpoint in list(self.endpoints.items()):
            if endpoint.network_id == request.network_id:
                del self.endpoints[endpoint_id]
        return nd.DeleteNetworkResponse()

    async def CreateEndpoint(self, request, context):
        self.faults.check("CreateEndpoint")
        for mapping in request.endpoint.port_mappings:
            if mapping.host_port in self.ports_in_use:  # a host process holds it
                raise errors.AlreadyExists(f"port {mapping.host_port} is in use on the host",
                                           reason="PORT_IN_USE", protocol="tcp",
                                           host_port=mapping.host_port)
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        endpoint = request.endpoint
        if endpoint.network_id not in self.networks:
            if request.network.network_id != endpoint.network_id:
                raise errors.NotFound(f"network {endpoint.network_id} is not on this host")
            self.networks[endpoint.network_id] = request.network
        if endpoint.endpoint_id in self.endpoints:
            return nd.CreateEndpointResponse(endpoint=self.endpoints[endpoint.endpoint_id])
        created = nd.Endpoint()
        created.CopyFrom(endpoint)
        created.host_interface = f"cv{endpoint.endpoint_id[:10]}"
        created.container_interface = created.container_interface or (
            f"cp{endpoint.endpoint_id[:10]}" if endpoint.peer_on_host else "eth0")
        created.mac_address = endpoint.mac_address or mac_from_address(
            endpoint.address or endpoint.ipv6_address)  # as the agent derives it
        self.endpoints[endpoint.endpoint_id] = created
        return nd.CreateEndpointResponse(endpoint=created)

    async def DeleteEndpoint(self, request, context):
        self.faults.check("DeleteEndpoint")
        self.endpoints.pop(request.endpoint_id, None)
        return nd.DeleteEndpointResponse()

    async def GetSandbox(self, request, context):
        self.faults.check("GetSandbox")
        if request.sandbox in self.missing_sandboxes:
            raise errors.NotFound(f"namespace {request.sandbox!r} does not exist",
                                  reason="NAMESPACE_NOT_FOUND")
        path = request.sandbox if "/" in request.sandbox else \
            f"/var/run/netns/{request.sandbox}"
        return nd.GetSandboxResponse(sandbox=nd.Sandbox(name=request.sandbox, path=path))

    async def CreateSandbox(self, request, context):
        self.faults.check("CreateSandbox")
        sandbox = nd.Sandbox(name=request.name, path=f"/var/run/netns/{request.name}")
        self.sandboxes.setdefault(request.name, sandbox)
        return nd.CreateSandboxResponse(sandbox=sandbox)

    async def DeleteSandbox(self, request, context):
        self.faults.check("DeleteSandbox")
        self.sandboxes.pop(request.name, None)
        return nd.DeleteSandboxResponse()

    async def ListSandboxes(self, request, context):
        self.faults.check("ListSandboxes")
        return nd.ListSandboxesResponse(sandboxes=sorted(self.sandboxes.values(),
                                                         key=lambda s: s.name))

    async def GetState(self, request, context):
        self.faults.check("GetState")
        return nd.GetStateResponse(networks=list(self.networks.values()),
                                   endpoints=list(self.endpoints.values()),
                                   sandboxes=list(self.sandboxes.values()))


async def _ready() -> bool:
    return True


async def serve_ipam(fake: FakeIpam) -> server.Server:
    name = ipam_pb2.DESCRIPTOR.services_by_name["IpamService"].full_name
    return await server.start(
        listen="127.0.0.1:0",
        services=[(ipam_pb2_grpc.add_IpamServiceServicer_to_server, fake, name)],
        logger=log, readiness=_ready,
    )


async def serve_agent(fake: FakeAgent) -> server.Server:
    name = nd.DESCRIPTOR.services_by_name["NetDriverService"].full_name
    return await server.start(
        listen="127.0.0.1:0",
        services=[(netdriver_pb2_grpc.add_NetDriverServiceServicer_to_server, fake, name)],
        logger=log, readiness=_ready,
    )
