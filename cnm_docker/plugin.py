"""Docker's network and IPAM plugin protocol, answered with the orchestrator's API.

dockerd posts JSON to ``/Plugin.Activate``, ``/NetworkDriver.*`` and
``/IpamDriver.*`` on the plugin's unix socket (docs/docker.md has every call
and its mapping). The plugin keeps nothing a restart would lose: every answer
is derived from what Docker sends and what the orchestrator records. Docker
names its own ids (network, endpoint) in every call but not the network's
name, and the IPAM calls name a pool; so:

- a pool is its subnet (PoolID ``SUBNET`` or ``SUBNET,IP_RANGE``), and the
  cnm network of a Docker network is the one with that subnet (cnm refuses
  overlapping subnets, so there is at most one); a dual-stack network (``docker
  network create --ipv6``) has two pools, one per family, and is the cnm
  network with both subnets;
- a Docker endpoint is the cnm endpoint whose container id is Docker's
  endpoint id, connected with ``peer_on_host`` (Docker moves the interface
  into the container at Join) from the addresses its host reserved when
  Docker's IPAM asked (``ReserveAddress``; ``address_reserved``).

The one thing held between two calls: each pool asked for, from RequestPool
to the CreateNetwork that makes its network: its ip range (Docker gives
CreateNetwork the subnet and gateway only) and whether cnm chose its subnet.
A pool released while still held there is one whose network was never made
(Docker gives back the pools of a create that failed): its release deletes
nothing, not another Docker network's cnm network with the same subnet.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from cnm import errors, grpc_client, pagination, tracing, validation
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from cnm.tls import Tls

log = logging.getLogger("docker_plugin")

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
ADDRESS_SPACE = "cnm"
CALL_TIMEOUT = 60.0
CREATED_BY = "cnm.io/created-by"  # label of the cnm networks a Docker network made
DOCKER_NETWORK = "cnm.io/docker-network"  # label of endpoints: the Docker network's id
# -o options of docker network create that are the plugin's, not the network's.
DRIVER_OPTION, NAME_OPTION = "cnm.driver", "cnm.name"
DRIVERS = {"bridge": pb.DRIVER_BRIDGE, "overlay": pb.DRIVER_OVERLAY}
# Docker's own options the orchestrator knows (orchestrator/validation.py), and cnm's.
KNOWN_OPTIONS = (validation.OPTION_BRIDGE_NAME, validation.OPTION_MTU, validation.OPTION_ICC,
                 validation.OPTION_INTERNAL, validation.OPTION_MCAST_SNOOPING)
PROTOCOLS = {6: pb.PROTOCOL_TCP, 17: pb.PROTOCOL_UDP}
GATEWAY_REQUEST = "com.docker.network.gateway"

STATUS = {  # HTTP status of each cnm error, with Docker's {"Err": ...} body
    errors.InvalidArgument: 400, errors.NotFound: 404, errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409, errors.ResourceExhausted: 409,
    errors.PermissionDenied: 403, errors.Unauthenticated: 401, errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


# Addresses remembered as released with their endpoint (see Plugin.delete_endpoint).
MAX_RELEASED = 4096


class Plugin:
    def __init__(self, *, orchestrator: str, host_id: str, tls: Tls | None = None) -> None:
        self.host_id = host_id
        self.channel = grpc_client.RenewingChannel(orchestrator, tls,
                                                   orchestrator_pb2_grpc.OrchestratorServiceStub)
        # subnet -> (ip range, chosen by cnm), from RequestPool to a CreateNetwork that made
        # its network.
        self._pending: dict[str, tuple[str, bool]] = {}
        # The cnm networks as last listed, by id. A network never changes under its id: an
        # id that is gone (NOT_FOUND) makes the caller list them again (_fresh_if_stale).
        self._known: dict[str, pb.Network] | None = None
        # The endpoints this plugin connected, by Docker's endpoint id, as the orchestrator
        # answered (asked again after a restart): Join and DeleteEndpoint need no lookup.
        self._connected: dict[str, pb.Endpoint] = {}
        # (subnet, address) of reserved addresses that DeleteEndpoint released with its
        # endpoint, for Docker's ReleaseAddress that follows; oldest dropped first.
        self._released: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def close(self) -> None:
        await self.channel.close()

    def app(self) -> web.Application:
        app = web.Application()
        for path, handler in self.routes().items():
            app.router.add_post(path, functools.partial(self._serve, handler))
        return app

    def routes(self) -> dict[str, Callable[[dict], Awaitable[dict]]]:
        nothing = self._nothing
        return {
            "/Plugin.Activate": self.activate,
            "/NetworkDriver.GetCapabilities": self.network_capabilities,
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": nothing,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": nothing,
            "/NetworkDriver.DiscoverNew": nothing,
            "/NetworkDriver.DiscoverDelete": nothing,
            "/NetworkDriver.ProgramExternalConnectivity": nothing,
            "/NetworkDriver.RevokeExternalConnectivity": nothing,
            "/IpamDriver.GetCapabilities": self.ipam_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": self.release_pool,
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    async def _serve(self, handler, request: web.Request) -> web.Response:
        what = request.path.lstrip("/")
        tracing.begin()  # each of Docker's calls is a request of its own (cnm/tracing.py)
        try:
            body = await request.read()
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError as error:
                raise errors.InvalidArgument(f"{what}: the request is not JSON: {error}") \
                    from None
            if not isinstance(data, dict):
                raise errors.InvalidArgument(f"{what}: the request is not a JSON object")
            started = time.perf_counter()
            answer = await handler(data)
            log.debug("plugin call", extra={
                "call": what, "ms": round((time.perf_counter() - started) * 1000, 2)})
            return web.json_response(answer, content_type=CONTENT_TYPE)
        except errors.CnmError as error:
            log.warning("plugin call refused", extra={"call": what, "error": error.message,
                                                      "reason": error.reason})
            return _error(STATUS.get(type(error), 500), f"cnm: {error.message}")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return _error(400, f"cnm: {what}: malformed request: {error!r}")
        except Exception as error:  # any other failure is said, never a traceback
            log.exception("plugin call failed", extra={"call": what})
            return _error(500, f"cnm: {what} failed: {error}")

    async def _call(self, method: str, request, timeout: float = CALL_TIMEOUT):
        return await self.channel.call(method, request, timeout)

    # --- the plugin and its capabilities -------------------------------------------------

    async def activate(self, _data: dict) -> dict:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def network_capabilities(self, _data: dict) -> dict:
        # "local": each daemon keeps its own Docker network; they meet in cnm's.
        return {"Scope": "local", "ConnectivityScope": "global"}

    async def ipam_capabilities(self, _data: dict) -> dict:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, _data: dict) -> dict:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    async def _nothing(self, _data: dict) -> dict:
        return {}

    # --- IPAM ------------------------------------------------------------------------

    async def request_pool(self, data: dict) -> dict:
        v6 = bool(data.get("V6"))
        subnet = data.get("Pool") or ""
        ip_range = data.get("SubPool") or ""
        if not subnet:
            return await self._chosen_pool(v6, ip_range)
        # The checks CreateNetwork will make, said while Docker still asks for the pool.
        check = validation.check_ipv6_subnet if v6 else validation.check_network_subnet
        network = check(subnet, ip_range=ip_range).network
        existing = await self._network_overlapping(network, fresh=True)
        if existing is not None and str(network) not in _subnets(existing):
            raise errors.AlreadyExists(
                f"subnet {network} overlaps cnm network {existing.name!r} "
                f"({', '.join(_subnets(existing))})")
        self._pending[str(network)] = (ip_range, False)
        pool_id = f"{network},{ip_range}" if ip_range else str(network)
        return {"PoolID": pool_id, "Pool": str(network), "Data": {}}

    async def _chosen_pool(self, v6: bool, ip_range: str) -> dict:
        """A pool on the subnet cnm would choose from its default address pools
        (CreateNetwork with validate_only): nothing is reserved until CreateNetwork, which
        refuses it if another network took it meanwhile."""
        if ip_range:
            raise errors.InvalidArgument("--ip-range needs its --subnet")
        placeholder = f"docker-pool-{uuid.uuid4().hex[:12]}"  # a name no network has
        shown = (await self._call("CreateNetwork", pb.CreateNetworkRequest(
            network=pb.Network(name=placeholder, enable_ipv6=v6), validate_only=True))).network
        subnet = shown.ipv6_subnet if v6 else shown.subnet
        self._pending[subnet] = ("", True)
        return {"PoolID": subnet, "Pool": subnet, "Data": {}}

    async def release_pool(self, data: dict) -> dict:
        """Deletes the cnm network of the pool if a Docker network made it and no host has
        an endpoint on it (another host's Docker network may still use it then)."""
        subnet = str(_subnet_of_pool(data["PoolID"]))
        if self._pending.pop(subnet, None) is not None:
            return {}  # its network was never made: the create failed
        network = await self._network_with_subnet(subnet, fresh=True)
        if network is None or network.labels.get(CREATED_BY) != "docker":
            return {}
        self._known = None
        try:
            await self._call("DeleteNetwork", pb.DeleteNetworkRequest(
                network=network.network_id, allow_missing=True))
        except errors.FailedPrecondition:
            log.info("cnm network kept: endpoints of other hosts are on it",
                     extra={"network": network.name})
        return {}

    async def request_address(self, data: dict) -> dict:
        subnet = _subnet_of_pool(data["PoolID"])
        options = data.get("Options") or {}
        wanted = data.get("Address") or ""
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            # The network's gateway is cnm's to keep: nothing is reserved for it.
            network = await self._network_with_subnet(subnet, fresh=True)
            gateway = _gateway(network, subnet.version) if network is not None else ""
            if wanted and gateway and wanted != gateway:
                raise errors.AlreadyExists(
                    f"cnm network {network.name!r} ({subnet}) has gateway {gateway}, "
                    f"not {wanted}")
            gateway = gateway or wanted or str(next(subnet.hosts()))
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}

        async def reserve(fresh: bool):
            network = await self._network_with_subnet(subnet, fresh=fresh)
            if network is None:
                raise errors.NotFound(f"no cnm network has subnet {subnet}: it was deleted; "
                                      "remove the Docker network and create it again")
            return await self._call("ReserveAddress", pb.ReserveAddressRequest(
                network=network.network_id, host_id=self.host_id, address=wanted,
                ipv6=subnet.version == 6))

        reply = await self._fresh_if_stale(reserve)
        return {"Address": f"{reply.address}/{reply.prefix_length}", "Data": {}}

    async def release_address(self, data: dict) -> dict:
        subnet = _subnet_of_pool(data["PoolID"])
        address = data.get("Address") or ""
        with contextlib.suppress(KeyError):
            del self._released[(str(subnet), address.split("/")[0])]
            return {}  # released with its endpoint

        async def release(fresh: bool) -> None:
            network = await self._network_with_subnet(subnet, fresh=fresh)
            if network is None:
                if fresh:
                    return  # the network is gone, and its reservations with it
                raise errors.NotFound(f"no cnm network has subnet {subnet}")
            if address and address != _gateway(network, subnet.version):
                await self._call("ReleaseAddress", pb.ReleaseAddressRequest(
                    network=network.network_id, host_id=self.host_id, address=address))

        await self._fresh_if_stale(release)
        return {}

    # --- networks --------------------------------------------------------------------

    async def create_network(self, data: dict) -> dict:
        ipv4, ipv6 = data.get("IPv4Data") or [], data.get("IPv6Data") or []
        if len(ipv4) != 1 or len(ipv6) > 1:
            raise errors.InvalidArgument(
                "a cnm network has exactly one IPv4 subnet, and one IPv6 subnet with --ipv6")
        subnet = validation.parse_network(ipv4[0]["Pool"], "subnet")
        gateway = (ipv4[0].get("Gateway") or "").split("/")[0]
        subnet6 = validation.parse_network(ipv6[0]["Pool"], "subnet") if ipv6 else None
        options = data.get("Options") or {}
        generic = dict(options.get("com.docker.network.generic") or {})
        driver_name = str(generic.pop(DRIVER_OPTION, "bridge"))
        if driver_name not in DRIVERS:
            raise errors.InvalidArgument(f"-o {DRIVER_OPTION}={driver_name}: want "
                                         f"{' or '.join(DRIVERS)}")
        name = str(generic.pop(NAME_OPTION, "") or _default_name(subnet))
        unknown = sorted(key for key in generic if key not in KNOWN_OPTIONS)
        if unknown:
            raise errors.InvalidArgument(
                f"unknown option(s) {', '.join(unknown)}: the cnm driver takes "
                f"{DRIVER_OPTION}, {NAME_OPTION}, {', '.join(KNOWN_OPTIONS)}")
        internal = bool(options.get("com.docker.network.internal")) or str(
            generic.pop("com.docker.network.internal", "")).lower() in ("1", "true")
        pools = [str(pool) for pool in (subnet, subnet6) if pool]
        if any(pool not in self._pending for pool in pools):
            raise errors.Unavailable("the cnm plugin restarted while this network was being "
                                     "created: create it again")
        chosen = [pool for pool in pools if self._pending[pool][1]]
        wanted = pb.Network(
            name=name, subnet=str(subnet), gateway=gateway,
            ip_range=self._pending[str(subnet)][0], driver=DRIVERS[driver_name],
            internal=internal, options={k: str(v) for k, v in generic.items()},
            labels={CREATED_BY: "docker"})
        if subnet6 is not None:
            wanted.enable_ipv6 = True
            wanted.ipv6_subnet = str(subnet6)
            wanted.ipv6_gateway = (ipv6[0].get("Gateway") or "").split("/")[0]
            wanted.ipv6_ip_range = self._pending[str(subnet6)][0]
        existing = await self._network_with_subnet(subnet, fresh=True)
        if existing is not None:
            if chosen:
                raise errors.AlreadyExists(
                    f"subnet {subnet}, which cnm chose, was taken meanwhile by cnm network "
                    f"{existing.name!r}: create the network again")
            _check_same(existing, wanted)
        else:
            await self._call("CreateNetwork", pb.CreateNetworkRequest(network=wanted))
        for pool in pools:  # made: a release of its pools now deletes it
            del self._pending[pool]
        if existing is not None:
            return {}
        log.info("cnm network created for a Docker network",
                 extra={"network": name, "docker_network": data.get("NetworkID", "")})
        return {}

    # --- endpoints -------------------------------------------------------------------

    async def create_endpoint(self, data: dict) -> dict:
        interface = data.get("Interface") or {}
        cidr = interface.get("Address") or ""
        if not cidr:
            raise errors.InvalidArgument("no address: use --ipam-driver cnm")
        address = ipaddress.ip_interface(cidr).ip
        cidr6 = interface.get("AddressIPv6") or ""
        address6 = str(ipaddress.ip_interface(cidr6).ip) if cidr6 else ""
        options = data.get("Options") or {}
        mac = interface.get("MacAddress") or ""
        mappings = _port_mappings(options.get("com.docker.network.portmap") or [])

        async def connect(fresh: bool):
            network = await self._network_containing(address, fresh=fresh)
            return await self._call("ConnectContainer", pb.ConnectContainerRequest(
                network=network.network_id, container_id=data["EndpointID"],
                host_id=self.host_id, address=str(address), ipv6_address=address6,
                address_reserved=True, peer_on_host=True, mac_address=mac, port_mappings=mappings,
                labels={DOCKER_NETWORK: data.get("NetworkID", "")}))

        reply = await self._fresh_if_stale(connect)
        self._connected[data["EndpointID"]] = reply.endpoint
        return {} if mac else {"Interface": {"MacAddress": reply.endpoint.mac_address}}

    async def endpoint_info(self, data: dict) -> dict:
        endpoint = await self._endpoint(data["EndpointID"])
        if endpoint is None:
            return {"Value": {}}
        return {"Value": {"cnm.endpoint_id": endpoint.endpoint_id,
                          "cnm.network": endpoint.network_name,
                          "cnm.host_interface": endpoint.host_interface}}

    async def delete_endpoint(self, data: dict) -> dict:
        """Disconnects the endpoint and releases its address: Docker's ReleaseAddress of it
        comes next, always, and is then answered here (after a restart of the plugin it
        goes to the orchestrator, and finds the reservation gone)."""
        endpoint = await self._endpoint(data["EndpointID"])
        if endpoint is not None:
            await self._call("DisconnectContainer", pb.DisconnectContainerRequest(
                network=endpoint.network_id, container_id=endpoint.container_id,
                allow_missing=True, release_address=True))
            if endpoint.address_reserved:
                network = await self._network_by_id(endpoint.network_id)
                self._released[(network.subnet, endpoint.address)] = None
                if endpoint.ipv6_address:
                    self._released[(network.ipv6_subnet, endpoint.ipv6_address)] = None
                while len(self._released) > MAX_RELEASED:
                    self._released.popitem(last=False)
        self._connected.pop(data["EndpointID"], None)
        return {}

    async def join(self, data: dict) -> dict:
        endpoint = await self._endpoint(data["EndpointID"])
        if endpoint is None:
            raise errors.NotFound(f"endpoint {data['EndpointID']} is not connected in cnm")
        network = await self._network_by_id(endpoint.network_id)
        answer = {"InterfaceName": {"SrcName": endpoint.container_interface,
                                    "DstPrefix": "eth"}}
        if network.internal:
            answer["DisableGatewayService"] = True
        else:
            answer["Gateway"] = network.gateway
            if network.ipv6_gateway:
                answer["GatewayIPv6"] = network.ipv6_gateway
        return answer

    # --- lookups ---------------------------------------------------------------------

    async def _fresh_if_stale(self, attempt):
        """``attempt(fresh=False)`` with the networks as last listed; if that finds one
        gone (NOT_FOUND), once more with the networks listed again."""
        try:
            return await attempt(False)
        except errors.NotFound:
            return await attempt(True)

    async def _networks(self, fresh: bool = False) -> list[pb.Network]:
        if fresh or self._known is None:
            listed = await pagination.fetch_all_async(
                functools.partial(self._call, "ListNetworks"),
                pb.ListNetworksRequest(page_size=1000), "networks")
            self._known = {network.network_id: network for network in listed}
        return list(self._known.values())

    async def _network_by_id(self, network_id: str) -> pb.Network:
        if self._known is not None and network_id in self._known:
            return self._known[network_id]
        network = (await self._call("GetNetwork", pb.GetNetworkRequest(
            network=network_id))).network
        if self._known is not None:
            self._known[network_id] = network
        return network

    async def _network_with_subnet(self, subnet, fresh: bool = False) -> pb.Network | None:
        """The network with ``subnet`` as its subnet of that family."""
        return next((n for n in await self._networks(fresh) if str(subnet) in _subnets(n)),
                    None)

    async def _network_overlapping(self, subnet, fresh: bool = False) -> pb.Network | None:
        return next((n for n in await self._networks(fresh)
                     if any(ipaddress.ip_network(mine).overlaps(subnet)  # (never across families)
                            for mine in _subnets(n))), None)

    async def _network_containing(self, address, fresh: bool = False) -> pb.Network:
        for network in await self._networks(fresh):
            if address in ipaddress.ip_network(network.subnet):
                return network
        raise errors.NotFound(f"no cnm network holds {address}: it was deleted; remove the "
                              "Docker network and create it again")

    async def _endpoint(self, docker_endpoint_id: str) -> pb.Endpoint | None:
        """The cnm endpoint of a Docker endpoint: as connected by this plugin, else as the
        orchestrator lists it (after a restart of the plugin)."""
        if docker_endpoint_id in self._connected:
            return self._connected[docker_endpoint_id]
        reply = await self._call("ListEndpoints", pb.ListEndpointsRequest(
            container_id=docker_endpoint_id, host_id=self.host_id))
        return reply.endpoints[0] if reply.endpoints else None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"Err": message}, status=status, content_type=CONTENT_TYPE)


def _subnets(network: pb.Network) -> list[str]:
    """A network's subnets: IPv4, then IPv6 if it has one."""
    return [subnet for subnet in (network.subnet, network.ipv6_subnet) if subnet]


def _gateway(network: pb.Network, version: int) -> str:
    return network.ipv6_gateway if version == 6 else network.gateway


def _subnet_of_pool(pool_id: str):
    return validation.parse_network(str(pool_id).split(",", 1)[0], "PoolID")


def _default_name(subnet) -> str:
    """The cnm network of a Docker network created without -o cnm.name: named after its
    subnet, the one thing every host's Docker sends alike."""
    return f"docker-{subnet.network_address}-{subnet.prefixlen}"


def _check_same(existing: pb.Network, wanted: pb.Network) -> None:
    """A second host's Docker network on a cnm network: the options must agree."""
    differences = [
        f"{field} {getattr(existing, field) or '-'} (asked: {getattr(wanted, field) or '-'})"
        for field in ("name", "driver", "internal", "ip_range", "ipv6_subnet", "ipv6_ip_range")
        if getattr(existing, field) != getattr(wanted, field)
    ]
    for field in ("gateway", "ipv6_gateway"):
        if getattr(wanted, field) and getattr(wanted, field) != getattr(existing, field):
            differences.append(
                f"{field} {getattr(existing, field)} (asked: {getattr(wanted, field)})")
    if differences:
        raise errors.AlreadyExists(
            f"cnm network {existing.name!r} has subnet {existing.subnet} with other options: "
            + "; ".join(differences))


def _port_mappings(portmap: list) -> list[pb.PortMapping]:
    mappings = []
    for item in portmap:
        protocol = PROTOCOLS.get(item.get("Proto"))
        if protocol is None:
            raise errors.InvalidArgument(f"port mapping {item}: protocol must be tcp or udp")
        host_port, end = int(item.get("HostPort") or 0), int(item.get("HostPortEnd") or 0)
        if not host_port or (end and end != host_port):
            raise errors.InvalidArgument(
                f"port mapping {item}: cnm publishes one given host port per mapping "
                "(-p HOST:CONTAINER), not a range or a port Docker picks")
        mappings.append(pb.PortMapping(protocol=protocol, host_ip=item.get("HostIP") or "",
                                       host_port=host_port, container_port=int(item["Port"])))
    return mappings
