"""``cnm``: a docker-network-like command line over the orchestrator's gRPC API.

Tables for people, ``--format json`` for programs. Every failure prints one
line, ``cnm: error: <message>``, and exits non-zero with a code per kind of
failure (see EXIT_CODES).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import shtab
from google.protobuf import json_format

from cnm import config, errors, grpc_client, pagination, pki, tls, tracing, validation, version
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from cnm.tls import Tls
from cnm_cli import settings
from cnm_cli.template import Template

EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.ALREADY_EXISTS: 4,
    grpc.StatusCode.FAILED_PRECONDITION: 5,
    grpc.StatusCode.UNAVAILABLE: 6,
    grpc.StatusCode.DEADLINE_EXCEEDED: 6,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 7,
    grpc.StatusCode.PERMISSION_DENIED: 8,
    grpc.StatusCode.UNAUTHENTICATED: 8,
}
TIMEOUT = 60.0
# docker run -p: [[HOST_IP:][HOST_PORT[-LAST]]:]CONTAINER_PORT[-LAST][/PROTO]
PORT_SPEC = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<host>\d+(?:-\d+)?)?:)?"
    r"(?P<container>\d+(?:-\d+)?)(?:/(?P<proto>tcp|udp|sctp))?$"
)
PORT_FORMS = ("[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/tcp|udp|sctp], a range of host ports "
              "onto as many container ports (8000-8001:80-81), or none (any free one)")


class UsageError(Exception):
    """Bad command-line input, found before any call."""


class Parser(argparse.ArgumentParser):
    """Usage errors are one line too, pointing at the command's --help."""

    def error(self, message: str):
        self.exit(2, f"cnm: error: {message} (see '{self.prog} --help')\n")


def sandbox_name(host_id: str, name: str) -> str:
    """The namespace name of container ``name`` on ``host_id``.

    Simulated hosts share /var/run/netns, so the host is part of the name;
    a name too long for the API's 64 characters is hashed instead.
    """
    full = f"cnm-{host_id}-{name}"
    if validation.OBJECT_ID.fullmatch(full):
        return full
    return "cnm-" + hashlib.sha256(f"{host_id}/{name}".encode()).hexdigest()[:20]


def container_name(sandbox: pb.Sandbox) -> str:
    """The name ``cnm run --name`` gave a sandbox (``sandbox_name`` undone); other
    sandboxes, and hashed names, go by the sandbox's own name."""
    prefix = f"cnm-{sandbox.host_id}-"
    if sandbox.name.startswith(prefix) and len(sandbox.name) > len(prefix):
        return sandbox.name[len(prefix):]
    return sandbox.name


def _port_range(text: str, spec: str) -> list[int]:
    first, _, last = text.partition("-")
    ports = list(range(int(first), int(last or first) + 1))
    if not ports:
        raise UsageError(f"invalid port mapping {spec!r}: range {text} is empty")
    return ports


def parse_ports(spec: str) -> list[pb.PortMapping]:
    """``docker run -p``'s forms (PORT_FORMS), checked as the services check them: a host
    port of 0 (none given) is one the orchestrator chooses."""
    match = PORT_SPEC.match(spec)
    if not match:
        raise UsageError(f"invalid port mapping {spec!r}: want {PORT_FORMS}")
    containers = _port_range(match["container"], spec)
    hosts = _port_range(match["host"], spec) if match["host"] else [0] * len(containers)
    if len(hosts) != len(containers):
        raise UsageError(
            f"invalid port mapping {spec!r}: {len(hosts)} host ports onto "
            f"{len(containers)} container ports; give ranges of one length (cnm publishes "
            "each host port it is given)")
    mappings = [pb.PortMapping(
        protocol=validation.PROTOCOL_NUMBERS[match["proto"] or "tcp"],
        host_ip=(match["ip"] or "").strip("[]"), host_port=host, container_port=container,
    ) for host, container in zip(hosts, containers, strict=True)]
    try:
        checked = validation.check_port_mappings(mappings, internal=False, ephemeral=True)
    except errors.InvalidArgument as error:
        raise UsageError(f"invalid port mapping {spec!r}: {error.message}") from None
    for mapping, port in zip(mappings, checked, strict=True):
        mapping.host_ip = port.host_ip
    return mappings


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise UsageError(f"invalid {what} {item!r}: want KEY=VALUE")
        pairs[key] = value
    return pairs


def format_port(mapping: pb.PortMapping) -> str:
    proto = pb.Protocol.Name(mapping.protocol or pb.PROTOCOL_TCP).removeprefix("PROTOCOL_").lower()
    host = f"{mapping.host_ip}:" if mapping.host_ip else ""
    return f"{host}{mapping.host_port}->{mapping.container_port}/{proto}"


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


class Client:
    def __init__(self, address: str, tls: Tls | None = None):
        self.channel = grpc_client.channel(address, tls)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)

    def __getattr__(self, method: str):
        rpc = getattr(self.stub, method)
        return lambda request: rpc(request, timeout=TIMEOUT, metadata=tracing.outgoing())

    def list_all(self, method: str, request, field: str) -> list:
        """Every item a List RPC selects, through all of its pages."""
        return pagination.fetch_all(getattr(self, method), request, field)


# --- network ---------------------------------------------------------------


DRIVERS = {"bridge": pb.DRIVER_BRIDGE, "overlay": pb.DRIVER_OVERLAY}


def parse_driver(name: str) -> int:
    if name not in DRIVERS:
        raise UsageError(f"unknown driver {name!r}: want {' or '.join(DRIVERS)}")
    return DRIVERS[name]


def driver_word(driver: int) -> str:
    return pb.Driver.Name(driver or pb.DRIVER_BRIDGE).removeprefix("DRIVER_").lower()


def network_dict(network: pb.Network, endpoints=None, quarantined=()) -> dict:
    """A network as JSON, with its driver as people write it (as `docker network` prints)."""
    shown = to_dict(network)
    shown["driver"] = driver_word(network.driver)
    if endpoints is not None:
        shown["endpoints"] = [to_dict(endpoint) for endpoint in endpoints]
    if quarantined:
        shown["quarantined_endpoints"] = [to_dict(endpoint) for endpoint in quarantined]
    return shown


def by_family(values: list[str] | None, flag: str) -> tuple[str, str]:
    """Docker's repeatable --subnet, --gateway and --ip-range: at most one of each
    family, told apart by their form (an IPv6 one has a colon); (IPv4, IPv6)."""
    found = {4: "", 6: ""}
    for value in values or ():
        family = 6 if ":" in value else 4
        if found[family]:
            raise UsageError(f"{flag}: two IPv{family} values ({found[family]}, {value}): "
                             "give one of each family at most")
        found[family] = value
    return found[4], found[6]


def network_create(client: Client, args) -> int:
    subnet, subnet6 = by_family(args.subnet, "--subnet")
    gateway, gateway6 = by_family(args.gateway, "--gateway")
    ip_range, ip_range6 = by_family(args.ip_range, "--ip-range")
    if (subnet6 or gateway6 or ip_range6) and not args.ipv6:
        raise UsageError("an IPv6 --subnet, --gateway or --ip-range needs --ipv6")
    if not args.ipv4 and not args.ipv6:
        raise UsageError("--ipv4=false needs --ipv6: a network has IPv4, IPv6 or both")
    network = pb.Network(
        name=args.name, driver=parse_driver(args.driver), subnet=subnet, gateway=gateway,
        ip_range=ip_range, internal=args.internal,
        options=parse_pairs(args.opt, "option"), labels=parse_pairs(args.label, "label"),
        aux_addresses=parse_pairs(args.aux_address, "aux address"),
        enable_ipv6=args.ipv6, ipv6_subnet=subnet6, ipv6_gateway=gateway6,
        ipv6_ip_range=ip_range6, enable_ipv4=args.ipv4,
    )
    reply = client.CreateNetwork(pb.CreateNetworkRequest(network=network))
    print(reply.network.network_id)
    return 0


# docker network ls --format's fields, with their column headers.
NETWORK_FIELDS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                  "Subnet": "SUBNET", "Gateway": "GATEWAY", "IPv6": "IPV6",
                  "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT"}
NETWORK_FILTERS = {
    "driver": None, "label": None, "name": None, "id": None,
    "type": ("custom", "builtin"), "scope": ("local", "global", "swarm"),
}


def both(ipv4: str, ipv6: str) -> str:
    """A network's value of each family it has, as one cell."""
    return ",".join(value for value in (ipv4, ipv6) if value)


def parse_bool(text: str) -> bool:
    """A flag's true or false, as Docker's --ipv4=false."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def network_scope(network: pb.Network) -> str:
    """Docker's word: a bridge network is the host's own, an overlay one spans hosts."""
    return "global" if network.driver == pb.DRIVER_OVERLAY else "local"


def network_fields(network: pb.Network) -> dict[str, object]:
    return {
        "ID": network.network_id, "Name": network.name, "Driver": driver_word(network.driver),
        "Scope": network_scope(network), "Subnet": both(network.subnet, network.ipv6_subnet),
        "Gateway": both(network.gateway, network.ipv6_gateway),
        "IPv6": network.enable_ipv6, "Internal": network.internal, "Labels": dict(network.labels),
        "CreatedAt": network.create_time.ToJsonString() if network.HasField("create_time")
        else "",
    }


def network_filters(specs: list[str]) -> dict[str, list[str]]:
    """Docker's --filter KEY=VALUE: values of one key are alternatives, keys all apply."""
    filters: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if key not in NETWORK_FILTERS or not sep:
            raise UsageError(f"invalid filter {spec!r}: want driver=NAME, id=PREFIX, "
                             "label=KEY[=VALUE], name=PART, scope=local|global|swarm or "
                             "type=custom|builtin")
        allowed = NETWORK_FILTERS[key]
        if allowed and value not in allowed:
            raise UsageError(f"invalid filter {spec!r}: {key} is one of {', '.join(allowed)}")
        if key == "driver":
            parse_driver(value)  # an unknown one is refused here
        filters.setdefault(key, []).append(value)
    return filters


def network_ls(client: Client, args) -> int:
    template = None
    if args.format not in ("table", "json"):
        try:
            template = Template(args.format, NETWORK_FIELDS, "network")
        except ValueError as error:
            raise UsageError(str(error)) from None
    filters = network_filters(args.filter or [])
    drivers = filters.get("driver", [])
    networks = client.list_all("ListNetworks", pb.ListNetworksRequest(
        # One driver is the orchestrator's filter; several, alternatives, are ours.
        driver=parse_driver(drivers[0]) if len(drivers) == 1 else pb.DRIVER_UNSPECIFIED,
        label_filters=filters.get("label", [])), "networks")
    wanted = {
        "driver": lambda n, values: driver_word(n.driver) in
        {driver_word(parse_driver(v)) for v in values},
        "name": lambda n, values: any(value in n.name for value in values),
        "id": lambda n, values: any(n.network_id.startswith(value) for value in values),
        "type": lambda n, values: "custom" in values,  # every cnm network is user-made
        "scope": lambda n, values: network_scope(n) in values,
    }
    networks = [n for n in networks if all(
        test(n, filters[key]) for key, test in wanted.items() if key in filters)]
    if args.quiet:
        for network in networks:
            print(network.network_id)
    elif args.format == "json":
        print_json([network_dict(network) for network in networks])
    elif template is not None:
        template.print([network_fields(network) for network in networks])
    else:
        print_table(["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "GATEWAY"],
                    [[n.network_id, n.name, driver_word(n.driver), network_scope(n),
                      both(n.subnet, n.ipv6_subnet), both(n.gateway, n.ipv6_gateway)]
                     for n in networks])
    return 0


def network_inspect(client: Client, args) -> int:
    """Like docker: the networks found are printed, each one missing is an error."""
    found, status = [], 0
    for name in args.networks:
        try:
            reply = client.GetNetwork(pb.GetNetworkRequest(network=name))
            found.append(network_dict(reply.network, reply.endpoints,
                                      reply.quarantined_endpoints))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            status = report(error)
    print_json(found)
    return status


def network_rm(client: Client, args) -> int:
    """Like docker: -f makes a missing network no error; --disconnect is cnm's own."""
    status = 0
    for name in args.networks:
        try:
            client.DeleteNetwork(pb.DeleteNetworkRequest(
                network=name, force=args.disconnect, allow_missing=args.force))
            print(name)
        except grpc.RpcError as error:
            status = report(error)
        except errors.NotFound as error:
            print(f"cnm: error: {error.message}", file=sys.stderr)
            status = EXIT_CODES[error.code]
    return status


def network_prune(client: Client, args) -> int:
    request = pb.PruneNetworksRequest()
    for spec in args.filter or ():
        key, sep, value = spec.partition("=")
        if key == "label" and sep and value:
            request.label_filters.append(value)
        elif key == "label!" and sep and value:
            request.excluded_label_filters.append(value)
        elif key == "until" and sep:
            request.created_before.FromNanoseconds(int(parse_until(value) * 1e9))
        else:
            raise UsageError(f"invalid filter {spec!r}: want label=KEY[=VALUE], "
                             "label!=KEY[=VALUE] or until=TIMESTAMP|DURATION")
    if not args.force:
        print("WARNING! This will remove all custom networks not used by at least one "
              "container.\nAre you sure you want to continue? [y/N] ", end="", file=sys.stderr,
              flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    reply = client.PruneNetworks(request)
    if reply.deleted_networks:
        print("Deleted Networks:")
        for name in reply.deleted_networks:
            print(name)
    for name in reply.skipped_networks:
        print(f"cnm: warning: network {name} not pruned: a host that has it did not answer",
              file=sys.stderr)
    return 0


UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_until(text: str, now: float | None = None) -> float:
    """Docker's until=: a duration before now (10m, 24h, 1h30m), Unix seconds, or an
    RFC 3339 date-time; the time in Unix seconds."""
    now = time.time() if now is None else now
    duration = re.fullmatch(r"(?:\d+(?:\.\d+)?[hms])+", text)
    if duration:
        return now - sum(float(amount) * UNITS[unit] for amount, unit in
                         re.findall(r"(\d+(?:\.\d+)?)([hms])", text))
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid until {text!r}: want a duration (10m, 24h), Unix seconds "
                         "or an RFC 3339 time (2026-12-01T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def resolve_container(client: Client, host_id: str, container: str) -> str:
    """The container id of ``container``: a sandbox made by ``cnm run`` if there is one."""
    derived = sandbox_name(host_id, container)
    try:
        sandboxes = {s.name for s in client.list_all(
            "ListSandboxes", pb.ListSandboxesRequest(host_id=host_id), "sandboxes")}
    except grpc.RpcError:
        # The host is down or gone (what disconnect --force is for): the
        # orchestrator's records still know the endpoints of a `cnm run` sandbox.
        recorded = client.ListEndpoints(pb.ListEndpointsRequest(
            container_id=derived, host_id=host_id, page_size=1)).endpoints
        return derived if recorded else container
    if container in sandboxes:
        return container
    return derived if derived in sandboxes else container


def network_connect(client: Client, args) -> int:
    ports = [port for spec in args.publish or () for port in parse_ports(spec)]
    container = resolve_container(client, args.host, args.container)
    # A `cnm run` container is found by its name, as docker network connect's are.
    named = [args.container] if container == sandbox_name(args.host, args.container) else []
    reply = client.ConnectContainer(pb.ConnectContainerRequest(
        network=args.network, container_id=container, host_id=args.host,
        sandbox=args.sandbox or "", address=args.ip or "", port_mappings=ports,
        dns_names=[*named, *args.alias], ipv6_address=args.ip6 or "",
    ))
    if args.format == "json":
        print_json(to_dict(reply.endpoint))
    else:
        endpoint = reply.endpoint
        if endpoint.address:
            print(f"{endpoint.address}/{endpoint.prefix_length}")
        if endpoint.ipv6_address:
            print(f"{endpoint.ipv6_address}/{endpoint.ipv6_prefix_length}")
    return 0


def network_disconnect(client: Client, args) -> int:
    container = resolve_container(client, args.host, args.container)
    client.DisconnectContainer(pb.DisconnectContainerRequest(
        network=args.network, container_id=container, force=args.force))
    return 0


# --- hosts -------------------------------------------------------------------


def host_ls(client: Client, args) -> int:
    hosts = client.list_all("ListHosts", pb.ListHostsRequest(), "hosts")
    if args.format == "json":
        print_json([to_dict(host) for host in hosts])
        return 0
    rows = []
    for host in hosts:
        state = pb.HostState.Name(host.state).removeprefix("HOST_STATE_").lower()
        rows.append([host.host_id, host.address, state, str(host.endpoint_count),
                     "static" if host.static else "registered"])
    print_table(["HOST", "ADDRESS", "STATE", "ENDPOINTS", "SOURCE"], rows)
    return 0


def host_rm(client: Client, args) -> int:
    static = {host.host_id for host in client.list_all("ListHosts", pb.ListHostsRequest(), "hosts")
              if host.static}
    status = 0
    for host_id in args.hosts:
        try:
            client.DeleteHost(pb.DeleteHostRequest(host_id=host_id, force=args.force))
            print(host_id)
        except grpc.RpcError as error:
            status = report(error)
            continue
        if host_id in static:
            print(f"cnm: warning: host {host_id!r} is in the orchestrator's static list "
                  "(CNM_HOSTS): it comes back when the orchestrator restarts unless "
                  "removed there", file=sys.stderr)
    return status


# --- containers (sandboxes) ---------------------------------------------------


def run(client: Client, args) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run needs a command after --")
    name = args.name or f"c-{uuid.uuid4().hex[:8]}"
    if not validation.NETWORK_NAME.fullmatch(name):  # Docker's rule for both
        raise UsageError(f"invalid container name {name!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    ports = [port for spec in args.publish or () for port in parse_ports(spec)]
    sandbox = sandbox_name(args.host, name)
    # Everything that can fail locally is done before the sandbox exists.
    launcher = nsenter()
    if args.hostname is not None:
        check_hostname(args.hostname)
    for server in args.dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise UsageError(f"--dns {server!r}: want an IP address") from None
    for text in [*args.dns_search, *args.dns_option]:
        if not text or any(c.isspace() for c in text):
            raise UsageError(f"invalid --dns-search or --dns-option {text!r}: one word each")
    if args.mac_address:
        try:
            validation.check_mac(args.mac_address)
        except errors.InvalidArgument as error:
            raise UsageError(f"--mac-address: {error.message}") from None
    # CreateSandbox returns an existing sandbox as is: a second container would
    # share the first one's namespace, and remove it when it exits.
    existing = client.list_all("ListSandboxes", pb.ListSandboxesRequest(host_id=args.host),
                               "sandboxes")
    if any(s.name == sandbox for s in existing):
        raise errors.AlreadyExists(
            f"container name {name!r} is already in use on host {args.host!r}: "
            f"remove it with 'cnm rm {name}' or choose another --name")
    with contextlib.ExitStack() as closing:
        log = None
        if args.detach:
            log_dir = Path(config.run_dir())
            log_dir.mkdir(parents=True, exist_ok=True)
            log = closing.enter_context(open(log_dir / f"{sandbox}.log", "ab"))
        created = client.CreateSandbox(pb.CreateSandboxRequest(name=sandbox, host_id=args.host))
        try:
            for index, network in enumerate(args.net):
                first = index == 0  # --ip, --mac-address and -p are the first network's
                client.ConnectContainer(pb.ConnectContainerRequest(
                    network=network, container_id=sandbox, host_id=args.host, sandbox=sandbox,
                    port_mappings=ports if first else [], address=args.ip if first else "",
                    ipv6_address=args.ip6 if first else "",
                    mac_address=args.mac_address if first else "",
                    dns_names=[name, *args.alias],
                ))
            resolv = write_resolv_conf(client, args, sandbox)
            argv = [launcher, f"--net={created.sandbox.path}", "--",
                    *confined(command, args.hostname, resolv)]
            if args.detach:
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
            else:
                process = subprocess.Popen(argv)
        except BaseException:
            remove_sandbox(client, args.host, sandbox, allow_missing=True)
            raise
    if args.detach:
        print(name)
        return 0
    try:
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:
                process.send_signal(signal.SIGINT)
    finally:
        remove_sandbox(client, args.host, sandbox, allow_missing=True)
    return code if code >= 0 else 128 - code


def write_resolv_conf(client: Client, args, sandbox: str) -> Path | None:
    """The command's resolv.conf, in the run directory: the first network's DNS server
    (its gateway, the IPv6 one on an IPv6-only network, unless the network has
    cnm.dns=false) or --dns, --dns-search and --dns-option; None to leave the host's (no
    DNS server and no --dns)."""
    network = client.GetNetwork(pb.GetNetworkRequest(network=args.net[0])).network
    own = validation.check_network_options(network.options).dns
    servers = args.dns or ([network.gateway or network.ipv6_gateway] if own else [])
    if not servers:
        return None
    lines = [f"nameserver {server}" for server in servers]
    search = args.dns_search or ([validation.DNS_DOMAIN] if own else [])
    if search:
        lines.append(f"search {' '.join(search)}")
    if args.dns_option:
        lines.append(f"options {' '.join(args.dns_option)}")
    path = Path(config.run_dir()) / f"{sandbox}.resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def confined(command: list[str], hostname: str | None, resolv: Path | None) -> list[str]:
    """``command`` in namespaces of its own, as docker run's: a UTS namespace named
    ``hostname``, a mount namespace where /etc/resolv.conf is ``resolv``."""
    flags, steps = [], []
    if hostname is not None:
        flags.append("--uts")
        steps.append(f"hostname {shlex.quote(hostname)}")
    if resolv is not None:
        flags += ["--mount", "--propagation", "private"]
        steps.append(f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf")
    if not steps:
        return command
    return [unshare(), *flags, "--", "sh", "-c", " && ".join([*steps, 'exec "$@"']), "sh",
            *command]


HOSTNAME = re.compile(r"(?!-)[a-zA-Z0-9-]{1,63}(?<!-)(\.(?!-)[a-zA-Z0-9-]{1,63}(?<!-))*")


def check_hostname(name: str) -> None:
    """RFC 1123: dot-separated labels of letters, digits and inner hyphens, at most 63
    characters each and 253 in all (what sethostname and resolvers take)."""
    if len(name) > 253 or not HOSTNAME.fullmatch(name):
        raise UsageError(f"invalid hostname {name!r}: want labels of letters, digits and "
                         "inner hyphens, separated by dots (RFC 1123)")


def unshare() -> str:
    found = shutil.which("unshare")
    if found is None:
        raise UsageError("unshare not found (util-linux)")
    return found


def nsenter() -> str:
    found = shutil.which("nsenter")
    if found is None:
        raise UsageError("nsenter not found (util-linux)")
    return found


def processes_in(inode: int) -> list[int]:
    """Every process whose network namespace is the one with ``inode``: found through
    /proc, so also when the namespace's entry under /var/run/netns is gone."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    found.append(int(entry.name))
    return found


def stop_processes(sandbox: pb.Sandbox, grace: float = 5.0) -> None:
    """Stops what ``cnm run -d`` started in the sandbox's namespace."""
    pids = processes_in(sandbox.inode) if sandbox.inode else []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def remove_sandbox(client: Client, host_id: str, sandbox: str, allow_missing: bool) -> None:
    client.DeleteSandbox(pb.DeleteSandboxRequest(name=sandbox, host_id=host_id,
                                                 allow_missing=allow_missing))
    with contextlib.suppress(OSError):
        (Path(config.run_dir()) / f"{sandbox}.resolv.conf").unlink()


def own_sandbox(client: Client, host_id: str, name: str) -> pb.Sandbox:
    """The sandbox of ``cnm run`` container ``name`` (its name or its sandbox's) on the host,
    as the orchestrator knows it; NOT_FOUND for any other namespace, which cnm never made
    and so never touches."""
    sandboxes = {s.name: s for s in client.list_all(
        "ListSandboxes", pb.ListSandboxesRequest(host_id=host_id), "sandboxes")}
    for candidate in (name, sandbox_name(host_id, name)):
        if candidate in sandboxes:
            return sandboxes[candidate]
    raise errors.NotFound(f"container {name!r} not found on host {host_id!r} (cnm rm removes "
                          f"only what cnm run made)", reason="SANDBOX_NOT_FOUND")


def rm(client: Client, args) -> int:
    status = 0
    for name in args.names:
        try:
            sandbox = own_sandbox(client, args.host, name)
            stop_processes(sandbox)
            remove_sandbox(client, args.host, sandbox.name, allow_missing=False)
            # What cnm run -d logged for it goes with it.
            (Path(config.run_dir()) / f"{sandbox.name}.log").unlink(
                missing_ok=True)
            print(name)
        except grpc.RpcError as error:
            status = report(error)
        except errors.NotFound as error:
            print(f"cnm: error: {error.message}", file=sys.stderr)
            status = EXIT_CODES[error.code]
    return status


def ps(client: Client, args) -> int:
    """The sandboxes; a host that did not answer is named on stderr, one line each, and
    the exit status is UNAVAILABLE's (6): the list printed is partial."""
    unreachable: set[str] = set()

    def page(request):
        response = client.ListSandboxes(request)
        unreachable.update(response.unreachable)
        return response

    sandboxes = pagination.fetch_all(
        page, pb.ListSandboxesRequest(host_id=args.host or ""), "sandboxes")
    code = EXIT_CODES[grpc.StatusCode.UNAVAILABLE] if unreachable else 0
    if args.format == "json":
        print_json([to_dict(sandbox) for sandbox in sandboxes])
    else:
        rows = []
        for sandbox in sandboxes:
            networks = ", ".join(
                f"{e.network_name}:{both(e.address, e.ipv6_address)}"
                for e in sandbox.endpoints)
            ports = ", ".join(format_port(m) for e in sandbox.endpoints for m in e.port_mappings)
            rows.append([container_name(sandbox), sandbox.host_id, networks, ports])
        print_table(["NAME", "HOST", "NETWORKS", "PORTS"], rows)
    for host_id in sorted(unreachable):
        print(f"cnm: error: host {host_id!r} did not answer: its containers are not listed",
              file=sys.stderr)
    return code


# --- parser --------------------------------------------------------------------


def pki_init(client: Client, args) -> int:
    print(pki.init_ca(args.dir, days=args.days, force=args.force))
    return 0


def pki_issue(client: Client, args) -> int:
    print(pki.issue(args.dir, args.name, args.role, host_id=args.host_id,
                    sans=tuple(args.san), days=args.days, force=args.force))
    return 0


def config_show(client: Client, args) -> int:
    """Every setting: its value and where it comes from (environment, file, default)."""
    stored = settings.load()
    defaults = {"orchestrator": config.DEFAULT_ORCHESTRATOR_ADDR,
                "host_id": socket.gethostname(), "run_dir": config.DEFAULT_RUN_DIR}
    rows = []
    for key, variable in settings.SETTINGS.items():
        if os.environ.get(variable):
            value, source = os.environ[variable], f"environment {variable}"
        elif stored.get(key):
            value, source = stored[key], str(settings.path())
        else:
            value, source = defaults.get(key, ""), "default"
        rows.append((key, value, source))
    if args.format == "json":
        print_json({key: {"value": value, "source": source} for key, value, source in rows})
    else:
        print_table(["SETTING", "VALUE", "FROM"], [list(row) for row in rows])
    return 0


def config_set(client: Client, args) -> int:
    stored = settings.load()
    for assignment in args.assignments:
        key, value = settings.parse_assignment(assignment)
        stored[key] = value
    print(settings.save({key: value for key, value in stored.items() if value}))
    return 0


def config_unset(client: Client, args) -> int:
    stored = settings.load()
    for key in args.keys:
        if key not in settings.SETTINGS:
            raise UsageError(f"unknown setting {key!r}: one of {', '.join(settings.SETTINGS)}")
        stored.pop(key, None)
    print(settings.save(stored))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnm", description="cnm: container networks")
    version.add_flag(parser)
    config.add_flag(parser, "--orchestrator", "CNM_ORCHESTRATOR",
                    config.DEFAULT_ORCHESTRATOR_ADDR, "gRPC address of the orchestrator")
    config.add_tls_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def host_flag(p, help_text="the host (agent) to act on"):
        config.add_flag(p, "--host", "CNM_HOST_ID", config.default_host_id(), help_text)

    def format_flag(p):
        p.add_argument("--format", choices=["table", "json"], default="table",
                       help="output format (default table)")

    network = commands.add_parser("network", help="manage networks")
    net_commands = network.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    create = net_commands.add_parser("create", help="create a network")
    create.add_argument("--driver", "-d", default="bridge", help="driver (default bridge)")
    create.add_argument("--subnet", action="append",
                        help="subnet in CIDR notation, e.g. 10.10.0.0/24 (default: the first "
                        "free one of the orchestrator's default address pools); with --ipv6, "
                        "again for the IPv6 one, e.g. fd00:10::/64 (one of each family)")
    create.add_argument("--gateway", action="append",
                        help="gateway address (default: first of the subnet); one per family")
    create.add_argument("--ip-range", action="append",
                        help="allocate addresses from this sub-range (CIDR); one per family")
    create.add_argument("--ipv6", action="store_true",
                        help="dual stack: an IPv6 subnet too (give it with --subnet), its "
                        "containers an IPv6 address, NAT66 unless "
                        "-o com.docker.network.bridge.gateway_mode_ipv6=routed")
    create.add_argument("--ipv4", type=parse_bool, default=True, metavar="true|false",
                        help="IPv4 (default true); --ipv4=false with --ipv6: an IPv6-only "
                        "network (its --subnet an IPv6 one, or one from the IPv6 default "
                        "address pools)")
    create.add_argument("--internal", action="store_true", help="no NAT, no way out")
    create.add_argument("--opt", "-o", action="append", metavar="KEY=VALUE",
                        help="driver option (repeatable)")
    create.add_argument("--label", action="append", metavar="KEY=VALUE",
                        help="label (repeatable)")
    create.add_argument("--aux-address", action="append", metavar="NAME=IP",
                        help="an address of the subnet never handed out, e.g. a router "
                        "already on it (repeatable)")
    create.add_argument("name", help="network name")
    create.set_defaults(handler=network_create)

    ls = net_commands.add_parser("ls", aliases=["list"], help="list networks")
    ls.add_argument("--filter", "-f", action="append", metavar="FILTER",
                    help="driver=NAME, id=PREFIX, label=KEY[=VALUE], name=PART, "
                    "scope=local|global|swarm, type=custom|builtin (repeatable: values of one "
                    "key are alternatives, different keys all apply)")
    ls.add_argument("--quiet", "-q", action="store_true", help="only ids")
    ls.add_argument("--no-trunc", action="store_true",
                    help="accepted as docker's: ids are never truncated (12 characters)")
    ls.add_argument("--format", default="table",
                    help="table (default), json, or a template: {{.Name}}, {{json .}}, "
                    "'table {{.ID}}\\t{{.Name}}'; fields " + ", ".join(NETWORK_FIELDS))
    ls.set_defaults(handler=network_ls)

    inspect = net_commands.add_parser("inspect", help="show networks as JSON")
    inspect.add_argument("--format", choices=["json"], default="json",
                         help="output format: JSON, the only one (accepted as elsewhere)")
    inspect.add_argument("networks", nargs="+", metavar="NETWORK")
    inspect.set_defaults(handler=network_inspect)

    remove = net_commands.add_parser("rm", aliases=["remove"], help="delete networks")
    remove.add_argument("--force", "-f", action="store_true",
                        help="a network that does not exist is no error (as docker's -f)")
    remove.add_argument("--disconnect", action="store_true",
                        help="disconnect the networks' endpoints first")
    remove.add_argument("networks", nargs="+", metavar="NETWORK")
    remove.set_defaults(handler=network_rm)

    prune = net_commands.add_parser("prune", help="delete every network without endpoints")
    prune.add_argument("--force", "-f", action="store_true", help="do not ask for confirmation")
    prune.add_argument("--filter", action="append", metavar="FILTER",
                       help="label=KEY[=VALUE], label!=KEY[=VALUE], until=TIMESTAMP|DURATION "
                       "(networks created before; 10m, 24h, Unix seconds, RFC 3339) "
                       "(repeatable, all apply)")
    prune.set_defaults(handler=network_prune)

    connect = net_commands.add_parser("connect", help="connect a container to a network")
    connect.add_argument("--ip", help="static IPv4 address")
    connect.add_argument("--ip6", help="static IPv6 address (a dual-stack network)")
    connect.add_argument("--publish", "-p", action="append",
                         metavar="[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTO]",
                         help="publish a port (repeatable): " + PORT_FORMS)
    connect.add_argument("--sandbox", help="namespace name or path (default: the container's)")
    connect.add_argument("--alias", action="append", default=[], metavar="NAME",
                         help="another name the network's containers find it by (repeatable)")
    host_flag(connect, "the host the container runs on")
    format_flag(connect)
    connect.add_argument("network", metavar="NETWORK")
    connect.add_argument("container", metavar="CONTAINER")
    connect.set_defaults(handler=network_connect)

    disconnect = net_commands.add_parser("disconnect",
                                         help="disconnect a container from a network")
    disconnect.add_argument("--force", "-f", action="store_true",
                            help="forget the endpoint even if its host is unreachable")
    host_flag(disconnect, "the host the container runs on")
    disconnect.add_argument("network", metavar="NETWORK")
    disconnect.add_argument("container", metavar="CONTAINER")
    disconnect.set_defaults(handler=network_disconnect)

    config_parser = commands.add_parser(
        "config", help="this host's settings: orchestrator, host id, TLS files",
        description="Settings every cnm command reads (like docker context), so that they "
                    "need no flags: " + ", ".join(settings.SETTINGS) + ". Kept in "
                    "$CNM_CONFIG, else ~/.config/cnm/config.json, else /etc/cnm/cli.json. "
                    "Flags and CNM_* variables still win.")
    config_commands = config_parser.add_subparsers(dest="subcommand", required=True,
                                                   metavar="COMMAND")
    show = config_commands.add_parser("show", help="each setting, its value and origin")
    format_flag(show)
    show.set_defaults(handler=config_show)
    setter = config_commands.add_parser("set", help="store settings: KEY=VALUE ...")
    setter.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    setter.set_defaults(handler=config_set)
    unsetter = config_commands.add_parser("unset", help="forget settings: KEY ...")
    unsetter.add_argument("keys", nargs="+", metavar="KEY")
    unsetter.set_defaults(handler=config_unset)

    pki_parser = commands.add_parser(
        "pki", help="certificates for mutual TLS between cnm's parts",
        description="A CA per deployment and a certificate per identity (ECDSA P-256), "
                    "each carrying its role as a SPIFFE URI (spiffe://cnm/ROLE, "
                    "spiffe://cnm/agent/HOST_ID for an agent).")
    pki_commands = pki_parser.add_subparsers(dest="subcommand", required=True,
                                             metavar="COMMAND")
    init = pki_commands.add_parser("init", help="make a CA: DIR/ca.crt, DIR/ca.key")
    init.add_argument("--dir", required=True, type=Path, help="where the CA lives")
    init.add_argument("--days", type=int, default=pki.CA_DAYS,
                      help=f"lifetime (default {pki.CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=pki_init)
    issue = pki_commands.add_parser("issue", help="issue DIR/NAME.crt and DIR/NAME.key")
    issue.add_argument("--dir", required=True, type=Path, help="the CA's directory")
    issue.add_argument("--role", required=True, choices=pki.ROLES, help="who the holder is")
    issue.add_argument("--host-id", default="", help="the agent's host id (agents only)")
    issue.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                       help="a DNS name or address the holder is reached by (repeatable)")
    issue.add_argument("--days", type=int, default=pki.LEAF_DAYS,
                       help=f"lifetime (default {pki.LEAF_DAYS})")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.add_argument("name", metavar="NAME", help="file name: NAME.crt, NAME.key")
    issue.set_defaults(handler=pki_issue)

    host = commands.add_parser("host", help="host agents")
    host_commands = host.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    hls = host_commands.add_parser("ls", aliases=["list"], help="list hosts and their health")
    format_flag(hls)
    hls.set_defaults(handler=host_ls)
    hrm = host_commands.add_parser(
        "rm", aliases=["remove"], help="forget hosts that left (their endpoints too)",
        description="Forgets each host and its endpoints (their addresses are released) and "
                    "takes it off every overlay network's peer lists. A host whose agent "
                    "still runs registers again at its next heartbeat; one that still "
                    "heartbeats is refused unless --force.")
    hrm.add_argument("--force", "-f", action="store_true",
                     help="remove even a host whose agent still heartbeats")
    hrm.add_argument("hosts", nargs="+", metavar="HOST")
    hrm.set_defaults(handler=host_rm)

    runner = commands.add_parser(
        "run", help="run a command in a new sandbox connected to networks",
        description="Creates a sandbox on the host, connects it, runs COMMAND inside its "
                    "network namespace, and removes it when COMMAND exits (unless -d).",
    )
    runner.add_argument("--name", help="container name (default: random)")
    host_flag(runner)
    runner.add_argument("--net", "--network", action="append", required=True, metavar="NETWORK",
                        help="network to connect (repeatable; the first gets the default route)")
    runner.add_argument("--publish", "-p", action="append",
                        metavar="[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTO]",
                        help="publish a port on the first network (repeatable): " + PORT_FORMS)
    runner.add_argument("--ip", default="",
                        help="the address on the first network (default: the next free one)")
    runner.add_argument("--ip6", default="",
                        help="the IPv6 address on the first network, if dual stack (default: "
                        "the next free one)")
    runner.add_argument("--mac-address", default="", metavar="MAC",
                        help="the MAC address on the first network")
    runner.add_argument("--hostname", metavar="NAME",
                        help="the command's hostname, in a UTS namespace of its own (default: "
                        "the host's)")
    runner.add_argument("--alias", "--network-alias", action="append", default=[],
                        metavar="NAME",
                        help="another name the networks' containers find it by, beside its "
                        "--name (repeatable)")
    runner.add_argument("--dns", action="append", default=[], metavar="ADDRESS",
                        help="a nameserver for the command (repeatable; default: the first "
                        "network's DNS server, on its gateway)")
    runner.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN",
                        help="a search domain for the command (repeatable; default: "
                        "cnm.internal, the networks' own)")
    runner.add_argument("--dns-option", action="append", default=[], metavar="OPTION",
                        help="a resolv.conf option for the command (repeatable), e.g. ndots:2")
    runner.add_argument("--detach", "-d", action="store_true",
                        help="leave it running in the background and print its name")
    runner.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    runner.set_defaults(handler=run)

    plist = commands.add_parser("ps", help="list sandboxes")
    plist.add_argument("--host", default="", help="only this host's (default: all)")
    format_flag(plist)
    plist.set_defaults(handler=ps)

    remove_containers = commands.add_parser("rm", help="stop and remove containers")
    host_flag(remove_containers)
    remove_containers.add_argument("names", nargs="+", metavar="NAME")
    remove_containers.set_defaults(handler=rm)

    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Prints the completion script of SHELL, made from cnm's own options "
                    "(shtab). bash: 'cnm completion bash > /etc/bash_completion.d/cnm'; zsh: "
                    "'cnm completion zsh > \"${fpath[1]}/_cnm\"'.")
    completion.add_argument("shell", choices=shtab.SUPPORTED_SHELLS, metavar="SHELL",
                            help=", ".join(shtab.SUPPORTED_SHELLS))
    completion.set_defaults(handler=lambda client, args: print_completion(parser, args.shell))
    return parser


def print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    print(shtab.complete(parser, shell=shell), end="")
    return 0


def report(error: grpc.RpcError) -> int:
    failure = errors.from_rpc_error(error)
    message = failure.message
    if grpc_client.transport_failure(error):
        message = f"cannot reach the orchestrator: {message}"
    print(f"cnm: error: {message}", file=sys.stderr)
    return EXIT_CODES.get(error.code(), 1)


def main(argv=None) -> None:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    try:
        config.use_file_settings(settings.as_environment(settings.load()))
    except errors.CnmError as error:
        if (argv if argv is not None else sys.argv[1:])[:1] != ["config"]:
            print(f"cnm: error: {error.message}", file=sys.stderr)
            sys.exit(2)
    parser = build_parser()
    args = parser.parse_args(argv)
    tracing.begin_from_environment()  # one trace id for the command's calls
    # Local commands need no orchestrator, nor readable TLS files.
    local = args.command in ("config", "pki", "completion")
    client = Client(args.orchestrator, None if local else tls.from_parsed(parser, args))
    try:
        code = args.handler(client, args)
    except UsageError as error:
        print(f"cnm: error: {error}", file=sys.stderr)
        code = 2
    except errors.CnmError as error:  # found by the CLI itself
        print(f"cnm: error: {error.message}", file=sys.stderr)
        code = EXIT_CODES.get(error.code, 1)
    except grpc.RpcError as error:
        code = report(error)
    except OSError as error:  # a local failure: no nsenter or ip, a directory not writable
        print(f"cnm: error: {error}", file=sys.stderr)
        code = 1
    finally:
        client.channel.close()
    sys.exit(code)
