"""The agent's node-local CNI endpoint: what ``cnm-cni`` asks, answered in CNI's terms.

A runtime execs a CNI plugin once per container and verb. A Python process
that imports grpcio takes 110-150 ms to start here, more than the whole CNI
reference chain, so the plugin (``cnm_cni``) imports nothing but the
standard library: it forwards the runtime's request over a unix socket to
the agent, which is already running on every host, holds a channel to the
orchestrator, and can look into the container's namespace itself (CHECK).

The protocol, one request per connection, answered once the plugin shut its
side down (the plugin imports neither json nor socket: see cnm_cni/main.py)::

    CNI/1
    CNI_COMMAND=ADD
    CNI_CONTAINERID=...            (CNI_NETNS, CNI_IFNAME, CNI_ARGS likewise)

    {the network configuration, as the runtime gave it}
    -> "0\n{result}" | "0\n" | "1\n{CNI error object}": the exit status, then stdout

The socket is the agent's (0600, root): whoever may exec the plugin as root
may use it. The agent acts with its own identity, which lets it connect and
disconnect containers of its own host only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from cnm import errors, grpc_client, pagination, tracing, validation
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from cnm.tls import Tls
from netdriver_service.agent import Agent

log = logging.getLogger("netdriver.cni")

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
NETWORK_LABEL = "cnm.io/cni-network"  # which CNI network configuration made an endpoint
MAX_REQUEST = 1 << 20
CALL_TIMEOUT = 30.0
STATUS_TIMEOUT = 3.0  # a STATUS is a probe: answered quickly, 50 when cnm does not answer

# CNI's well-known error codes, and cnm's own (>= 100).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
CNM_ERROR = 100
NETWORK_NOT_FOUND = 101
POOL_EXHAUSTED = 102
IN_USE = 103
NOT_ADDED = 104
DRIFTED = 105


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_dict(self) -> dict:
        found = {"code": self.code, "msg": self.msg}
        if self.details:
            found["details"] = self.details
        return found


def from_cnm(error: errors.CnmError, env_fields: tuple[str, ...] = ()) -> CniError:
    """A cnm error as the CNI error a runtime acts on; ``details`` is cnm's reason."""
    reason = error.reason
    if isinstance(error, (errors.Unavailable, errors.DeadlineExceeded)):
        code = TRY_AGAIN_LATER
    elif reason == "NETWORK_NOT_FOUND":
        code = NETWORK_NOT_FOUND
    elif isinstance(error, errors.ResourceExhausted):
        code = POOL_EXHAUSTED
    elif isinstance(error, errors.AlreadyExists):
        code = IN_USE
    elif reason in ("NAMESPACE_NOT_FOUND", "INVALID_NAMESPACE", "SANDBOX_IS_HOST",
                    "SANDBOX_NOT_ALLOWED") or error.metadata.get("field") in env_fields:
        code = INVALID_ENVIRONMENT
    elif isinstance(error, errors.InvalidArgument):
        code = INVALID_CONFIG
    else:
        code = CNM_ERROR
    return CniError(code, error.message.splitlines()[0], reason)


def _config_error(message: str) -> CniError:
    return CniError(INVALID_CONFIG, message)


class Request:
    """A plugin's request, checked: the environment's variables and the configuration."""

    def __init__(self, raw: dict) -> None:
        self.command = raw.get("command", "")
        self.container_id = raw.get("containerID", "")
        self.netns = raw.get("netns", "")
        self.ifname = raw.get("ifname", "")
        self.args = raw.get("args", "")
        config = raw.get("config")
        if not isinstance(config, dict):
            raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object")
        self.config = config
        self.version = config.get("cniVersion", "")
        if self.version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION,
                           f"cniVersion {self.version!r} is not supported (supported: "
                           f"{', '.join(SUPPORTED_VERSIONS)})")
        self.name = config.get("name", "")
        network = config.get("network")
        if not isinstance(network, str) or not network:
            raise _config_error('the network configuration has no "network" (the cnm network '
                                "to attach containers to)")
        self.network = network
        self.runtime = config.get("runtimeConfig") or {}
        if not isinstance(self.runtime, dict):
            raise _config_error("runtimeConfig is not a JSON object")

    def require_container(self, netns: bool) -> None:
        """ADD, CHECK and DEL need CNI_CONTAINERID and CNI_IFNAME, ADD and CHECK also
        CNI_NETNS (the specification's rules)."""
        try:
            validation.check_id("CNI_CONTAINERID", self.container_id)
        except errors.InvalidArgument as error:
            raise CniError(INVALID_ENVIRONMENT, error.message) from None
        try:
            validation.check_ifname("CNI_IFNAME", self.ifname)
        except errors.InvalidArgument as error:
            raise CniError(INVALID_ENVIRONMENT, error.message) from None
        if netns and not self.netns:
            raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is required")

    def port_mappings(self) -> list[pb.PortMapping]:
        found = self.runtime.get("portMappings") or []
        if not isinstance(found, list):
            raise _config_error("runtimeConfig.portMappings is not a list")
        mappings = []
        for item in found:
            if not isinstance(item, dict):
                raise _config_error("a port mapping is not a JSON object")
            protocol = str(item.get("protocol") or "tcp").lower()
            if protocol not in ("tcp", "udp"):
                raise _config_error(f"port mapping protocol {protocol!r}: want tcp or udp")
            try:
                host_port, container_port = int(item.get("hostPort")), int(
                    item.get("containerPort"))
            except (TypeError, ValueError):
                raise _config_error(f"port mapping {item}: hostPort and containerPort must be "
                                    "numbers") from None
            if not 1 <= host_port <= 65535:
                # As the portmap plugin: a runtime always gives the host port (0 would be
                # the orchestrator's "any free one", which no CNI result could report).
                raise _config_error(f"port mapping {item}: hostPort must be 1-65535")
            mappings.append(pb.PortMapping(
                protocol=pb.PROTOCOL_UDP if protocol == "udp" else pb.PROTOCOL_TCP,
                host_ip=str(item.get("hostIP") or ""), host_port=host_port,
                container_port=container_port))
        return mappings

    def _ips(self) -> dict[int, str]:
        """runtimeConfig.ips: at most one address of each family, by family."""
        ips = self.runtime.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise _config_error("runtimeConfig.ips is not a list of addresses")
        found: dict[int, str] = {}
        for ip in ips:
            address = ip.split("/", 1)[0]
            family = 6 if ":" in address else 4
            if family in found:
                raise _config_error(f"runtimeConfig.ips: one address of each family at most, "
                                    f"not {ips}")
            found[family] = address
        return found

    def address(self) -> str:
        return self._ips().get(4, "")

    def ipv6_address(self) -> str:
        return self._ips().get(6, "")

    def dns_names(self) -> list[str]:
        """The container's names on the network: the pod's (``K8S_POD_NAME`` in CNI_ARGS,
        as kubelet and containerd pass it, skipped unless a DNS name), then the aliases
        the runtime gives for this network (``runtimeConfig.aliases``, the capability
        Podman passes ``--network-alias`` in: ``{"<network name>": ["alias", ...]}``)."""
        names = []
        for pair in str(self.args).split(";"):
            key, _, value = pair.partition("=")
            if key.strip() == "K8S_POD_NAME" and value.strip():
                try:
                    names.append(validation.check_dns_name("K8S_POD_NAME", value.strip()))
                except errors.InvalidArgument:
                    pass
                break
        aliases = self.runtime.get("aliases") or {}
        if not isinstance(aliases, dict):
            raise _config_error("runtimeConfig.aliases is not a JSON object of lists")
        mine = aliases.get(self.name) or []
        if not isinstance(mine, list) or not all(isinstance(a, str) for a in mine):
            raise _config_error(f"runtimeConfig.aliases[{self.name!r}] is not a list of names")
        for alias in mine:
            try:
                name = validation.check_dns_name("runtimeConfig.aliases", alias)
            except errors.InvalidArgument as error:
                raise _config_error(error.message) from None
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
        return names

    def mac(self) -> str:
        mac = self.runtime.get("mac") or ""
        if not isinstance(mac, str):
            raise _config_error("runtimeConfig.mac is not a string")
        return mac


class CniService:
    """Answers the plugin's verbs through the orchestrator, as this host's agent."""

    def __init__(self, *, orchestrator: str, agent: Agent, tls: Tls | None = None) -> None:
        self.agent = agent
        self.host_id = agent.host_id
        self.netlink = agent.netlink
        self.channel = grpc_client.RenewingChannel(orchestrator, tls,
                                                   orchestrator_pb2_grpc.OrchestratorServiceStub)
        # network id -> (gateway, whether it answers names): fixed for its life
        self._gateways: dict[str, tuple[str, bool, str]] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: str, request, env_fields: tuple[str, ...] = (),
                    timeout: float = CALL_TIMEOUT):
        try:
            return await self.channel.call(method, request, timeout)
        except errors.CnmError as error:
            raise from_cnm(error, env_fields) from None

    async def handle(self, raw: dict) -> dict:
        """The answer to one request: {"result": ...}, {} or {"error": ...}."""
        tracing.begin()  # each plugin run is a request of its own (cnm/tracing.py)
        try:
            request = Request(raw)
            verbs: dict[str, Callable[[Request], Awaitable[dict | None]]] = {
                "ADD": self.add, "DEL": self.delete, "CHECK": self.check,
                "STATUS": self.status, "GC": self.gc,
            }
            verb = verbs.get(request.command)
            if verb is None:
                raise CniError(INVALID_ENVIRONMENT,
                               f"CNI_COMMAND {request.command!r} is not one of ADD, DEL, "
                               "CHECK, VERSION, STATUS, GC")
            if request.command in ("STATUS", "GC") and request.version != "1.1.0":
                raise CniError(INCOMPATIBLE_VERSION,
                               f"{request.command} needs cniVersion 1.1.0")
            result = await verb(request)
            return {"result": result} if result is not None else {}
        except CniError as error:
            return {"error": error.to_dict()}
        except errors.CnmError as error:
            return {"error": from_cnm(error).to_dict()}

    # --- verbs ------------------------------------------------------------------------

    async def add(self, request: Request) -> dict:
        request.require_container(netns=True)
        reply = await self._call("ConnectContainer", pb.ConnectContainerRequest(
            network=request.network, container_id=request.container_id, host_id=self.host_id,
            sandbox=request.netns, address=request.address(),
            ipv6_address=request.ipv6_address(),
            port_mappings=request.port_mappings(), interface_name=request.ifname,
            mac_address=request.mac(), labels={NETWORK_LABEL: request.name} if request.name
            else {}, dns_names=request.dns_names(),
        ), env_fields=("sandbox", "interface_name", "container_id"))
        endpoint = reply.endpoint
        gateway, dns, ipv6_gateway = await self._gateway(endpoint.network_id)
        # Whether the interface has the container's default route: this agent made it.
        made = self.agent.store.endpoints.get(endpoint.endpoint_id)
        return self._result(request, endpoint, gateway, made is not None and made.default_route,
                            dns, ipv6_gateway)

    async def delete(self, request: Request) -> None:
        request.require_container(netns=False)
        try:
            await self._call("DisconnectContainer", pb.DisconnectContainerRequest(
                network=request.network, container_id=request.container_id,
                allow_missing=True))
        except CniError as error:
            if error.code != NETWORK_NOT_FOUND:  # no network: nothing of it to give back
                raise

    async def check(self, request: Request) -> None:
        request.require_container(netns=True)
        endpoint = await self._endpoint(request)
        link = await self.netlink.get_link(request.ifname, request.netns)
        try:
            if link is None:
                raise CniError(DRIFTED, f"interface {request.ifname} is not in {request.netns}")
            for wanted, family in (
                    (f"{endpoint.address}/{endpoint.prefix_length}", socket.AF_INET),
                    (f"{endpoint.ipv6_address}/{endpoint.ipv6_prefix_length}",
                     socket.AF_INET6)):
                if wanted.startswith("/"):
                    continue  # no address of that family
                if wanted not in await self.netlink.addresses(link.index, request.netns,
                                                              family):
                    raise CniError(DRIFTED, f"interface {request.ifname} lacks its address "
                                            f"{wanted}")
            if link.mac.lower() != endpoint.mac_address.lower():
                raise CniError(DRIFTED, f"interface {request.ifname} has MAC {link.mac}, "
                                        f"not {endpoint.mac_address}")
            expected = _previous_default_route(request.config.get("prevResult"))
            if expected and await self._default_via(request.netns, request.ifname,
                                                    expected) != expected:
                raise CniError(DRIFTED, f"the default route via {expected} is gone")
        finally:
            self.netlink.forget_namespace(request.netns)

    async def status(self, request: Request) -> None:
        try:
            await self._call("GetNetwork", pb.GetNetworkRequest(network=request.network),
                             timeout=STATUS_TIMEOUT)
        except CniError as error:
            if error.code == TRY_AGAIN_LATER:
                raise CniError(NOT_AVAILABLE, f"cnm is not reachable: {error.msg}") from None
            raise

    async def gc(self, request: Request) -> None:
        """Disconnects this host's endpoints made by this network configuration whose
        attachment the runtime no longer lists."""
        valid = request.config.get("cni.dev/valid-attachments") or []
        if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
            raise _config_error("cni.dev/valid-attachments is not a list of attachments")
        kept = {(a.get("containerID"), a.get("ifname")) for a in valid}
        endpoints = await self._list_endpoints(request.network)
        for endpoint in endpoints:
            if endpoint.labels.get(NETWORK_LABEL) != request.name or \
                    (endpoint.container_id, endpoint.container_interface) in kept:
                continue
            await self._call("DisconnectContainer", pb.DisconnectContainerRequest(
                network=endpoint.network_id, container_id=endpoint.container_id,
                allow_missing=True))
            log.info("released by CNI GC", extra={"endpoint": endpoint.endpoint_id,
                                                   "container_id": endpoint.container_id})

    # --- helpers ----------------------------------------------------------------------

    async def _list_endpoints(self, network: str) -> list[pb.Endpoint]:
        return await pagination.fetch_all_async(
            functools.partial(self._call, "ListEndpoints"),
            pb.ListEndpointsRequest(network=network, host_id=self.host_id, page_size=1000),
            "endpoints")

    async def _endpoint(self, request: Request) -> pb.Endpoint:
        reply = await self._call("ListEndpoints", pb.ListEndpointsRequest(
            network=request.network, container_id=request.container_id, host_id=self.host_id))
        if not reply.endpoints:
            raise CniError(NOT_ADDED, f"container {request.container_id} is not attached to "
                                      f"network {request.network}")
        return reply.endpoints[0]

    async def _gateway(self, network_id: str) -> tuple[str, bool, str]:
        """The network's gateway, whether its DNS server answers there (cnm.dns), and its
        IPv6 gateway ("" unless dual stack)."""
        if network_id not in self._gateways:
            reply = await self._call("GetNetwork", pb.GetNetworkRequest(network=network_id))
            self._gateways[network_id] = (
                reply.network.gateway,
                validation.check_network_options(reply.network.options).dns,
                reply.network.ipv6_gateway)
        return self._gateways[network_id]

    async def _default_via(self, netns: str, ifname: str, expected: str) -> str:
        """The gateway of the namespace's default route of ``expected``'s family if it
        leaves through ``ifname``."""
        try:
            route = await self.netlink.default_route(
                netns, socket.AF_INET6 if ":" in expected else socket.AF_INET)
            link = await self.netlink.get_link(ifname, netns)
        finally:
            self.netlink.forget_namespace(netns)
        if route is None or link is None or route[1] != link.index:
            return ""
        return route[0]

    @staticmethod
    def _result(request: Request, endpoint: pb.Endpoint, gateway: str, routed: bool,
                dns: bool = False, ipv6_gateway: str = "") -> dict:
        """The result in the requested version's format, after the previous plugins';
        with ``dns``, the network's DNS server as the container's resolver."""
        previous = request.config.get("prevResult") or {}
        interfaces = list(previous.get("interfaces") or [])
        ips = list(previous.get("ips") or [])
        routes = list(previous.get("routes") or [])
        interfaces.append({"name": endpoint.host_interface})
        interfaces.append({"name": endpoint.container_interface, "mac": endpoint.mac_address,
                           "sandbox": request.netns})
        if endpoint.address:  # else IPv6 only
            ip = {"address": f"{endpoint.address}/{endpoint.prefix_length}",
                  "gateway": gateway, "interface": len(interfaces) - 1}
            if request.version == "0.4.0":
                ip["version"] = "4"
            ips.append(ip)
        if endpoint.ipv6_address:
            ip6 = {"address": f"{endpoint.ipv6_address}/{endpoint.ipv6_prefix_length}",
                   "gateway": ipv6_gateway, "interface": len(interfaces) - 1}
            if request.version == "0.4.0":
                ip6["version"] = "6"
            ips.append(ip6)
        if routed:
            if endpoint.address:
                routes.append({"dst": "0.0.0.0/0", "gw": gateway})
            if endpoint.ipv6_address:
                routes.append({"dst": "::/0", "gw": ipv6_gateway})
        result = {"cniVersion": request.version, "interfaces": interfaces, "ips": ips}
        if routes:
            result["routes"] = routes
        if previous.get("dns"):
            result["dns"] = previous["dns"]
        elif dns:
            result["dns"] = {"nameservers": [gateway or ipv6_gateway],
                             "search": [validation.DNS_DOMAIN]}
        return result


def _previous_default_route(previous) -> str:
    if not isinstance(previous, dict):
        return ""
    for route in previous.get("routes") or []:
        if isinstance(route, dict) and route.get("dst") in ("0.0.0.0/0", "::/0"):
            with contextlib.suppress(ValueError):
                return str(ipaddress.ip_address(route.get("gw", "")))
    return ""


class CniSocket:
    """Serves :class:`CniService` on a unix socket only root may open."""

    def __init__(self, service: CniService, path: str) -> None:
        self.service = service
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> CniSocket:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        previous = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(previous)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(MAX_REQUEST + 1)
            while data and len(data) <= MAX_REQUEST:
                more = await reader.read(MAX_REQUEST + 1 - len(data))
                if not more:
                    break
                data += more
            status, output = await self.answer(data)
            writer.write(f"{status}\n{output}".encode())
            await writer.drain()
        except (ConnectionError, OSError) as error:
            log.warning("CNI request failed", extra={"error": str(error)})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def answer(self, data: bytes) -> tuple[int, str]:
        """(exit status, stdout) for the plugin's request ``data``: a line ``CNI/1``, the
        runtime's CNI_* variables one per line, an empty line, the configuration as the
        runtime gave it (see cnm_cni/main.py)."""
        head, _, body = data.partition(b"\n\n")
        lines = head.decode(errors="replace").split("\n")
        env = dict(line.partition("=")[::2] for line in lines[1:])
        version = ""
        try:
            if lines[0] != "CNI/1" or len(data) > MAX_REQUEST:
                raise CniError(DECODING_FAILURE, "the request is not one cnm-cni sends")
            try:
                config = json.loads(body)
            except ValueError as error:
                raise CniError(DECODING_FAILURE,
                               f"the network configuration is not JSON: {error}") from None
            if isinstance(config, dict) and isinstance(config.get("cniVersion"), str):
                version = config["cniVersion"]
            answer = await self.service.handle({
                "command": env.get("CNI_COMMAND", ""), "containerID": env.get("CNI_CONTAINERID", ""),
                "netns": env.get("CNI_NETNS", ""), "ifname": env.get("CNI_IFNAME", ""),
                "args": env.get("CNI_ARGS", ""), "config": config})
        except CniError as error:
            answer = {"error": error.to_dict()}
        if "error" in answer:
            return 1, json.dumps({"cniVersion": version or SUPPORTED_VERSIONS[-1],
                                  **answer["error"]})
        return 0, json.dumps(answer["result"]) if "result" in answer else ""

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        await self.service.close()
