"""Bad input to every RPC of every service, found through server reflection.

IPAM, a host agent (in a namespace of its own, nftables firewall) and the
orchestrator run as real processes over a real redis-server. The test asks
each server's reflection service for its services, builds every request
type from the descriptors it gets, and sends:

- the empty message;
- from a *template* (a valid request that repeats what exists, or names
  what is absent with allow_missing, so that it changes nothing; the empty
  message for an RPC the table does not know), each field set alone to a
  bad value: strings empty, 10,000 characters, control characters,
  ``../..`` (and, where a subnet or an address goes, ``10.0.0.0/33``,
  ``300.1.1.0/24``, ``::/0`` and a subnet with host bits set); integers
  0, -1 and their type's maximum; enums an undefined number; map entries
  with bad keys and values; inside nested and repeated messages too.

It asserts that no answer is UNKNOWN or INTERNAL, that every error is one
the client can read (a cnm ErrorInfo with a reason and a bounded message:
never the RESOURCE_EXHAUSTED of an oversized status), that a value no field
takes (control characters, 10,000 characters, an undefined enum, a malformed
subnet), or an empty message or empty field where the proto says REQUIRED
(google.api.field_behavior), is INVALID_ARGUMENT unless the field is output
only (read from the same annotations), and that the
state (Redis keys and values, the agent namespace's links and nftables
ruleset, its sandboxes) is unchanged. An RPC added later is covered without
editing this file.

The exhaustive variant (``CNM_EXHAUSTIVE=1``) also mutates the empty message
field by field and snapshots the state after every single call.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cnm import errors
from cnm.ipam.v1 import ipam_pb2
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.orchestrator import e2e

pytestmark = pytest.mark.root

EXHAUSTIVE = os.environ.get("CNM_EXHAUSTIVE") == "1"
INFRASTRUCTURE = ("grpc.health.", "grpc.reflection.")

LONG = "x" * 10_000
CONTROL = "bad\x00\x1b[2J\r\nline"
TRAVERSAL = "../.."
SUBNETS = ("10.0.0.0/33", "300.1.1.0/24", "::/0", "10.0.0.1/24")
# Where a subnet or an address goes, by the field's name.
SUBNET_FIELDS = ("subnet", "ip_range", "address", "gateway", "underlay_ip", "host_ip")

# No field takes these: refused with INVALID_ARGUMENT wherever they are read.
MALFORMED = "malformed"
# Some fields take these (an empty optional field, a label value "../.."): any clean answer.
MAYBE = "maybe"

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 3


# --- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    cluster: e2e.Cluster
    host: e2e.Host
    redis_url: str
    templates: dict[str, bytes]  # "/pkg.Service/Method" -> a serialized no-op request
    addresses: dict[str, str]  # service full name -> address

    def snapshot(self) -> dict:
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = {}
            for key in sorted(client.scan_iter(count=1000)):
                name = key.decode()
                if any(part in name for part in VOLATILE_KEYS):
                    continue
                dumped = client.dump(key)
                keys[name] = hashlib.sha256(dumped).hexdigest()[:16] if dumped else None
        finally:
            client.close()
        ns = self.host.ns.name
        links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "address", "show"], check=True,
                                          capture_output=True, text=True).stdout)
        ruleset = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                                 check=True, capture_output=True, text=True).stdout
        netns = sorted(entry["name"] for entry in json.loads(subprocess.run(
            ["ip", "-j", "netns", "list"], capture_output=True, text=True, check=False,
        ).stdout or "[]") if entry["name"].startswith(f"cnm-{self.host.host_id}"))
        return {
            "redis": keys,
            "links": sorted((link["ifname"], link.get("ifalias", ""), link["mtu"],
                             link.get("address", ""),
                             sorted(a["local"] for a in link.get("addr_info", ())))
                            for link in links),
            "ruleset": ruleset,
            "sandboxes": netns,
        }


# Keys whose values change by themselves: heartbeats, replica leases, the reconciler's lock.
VOLATILE_KEYS = (":hosts", ":replica", ":lease", ":leader", ":lock:reconciler")


def _changed(before: dict, after: dict) -> str:
    lines = []
    for part, old in before.items():
        new = after[part]
        if old == new:
            continue
        if isinstance(old, dict):
            lines += [f"redis {key}: {old.get(key)} -> {new.get(key)}"
                      for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        else:
            lines.append(f"{part} changed:\n  before: {old}\n  after:  {new}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory) -> Iterator[World]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    tmp = tmp_path_factory.mktemp("contract")
    host_id = f"bi{uuid.uuid4().hex[:6]}"
    ns = support.Netns("cnmbi")
    host = e2e.Host(host_id, ns, tmp / "state", f"/tmp/cnmt-{uuid.uuid4().hex[:8]}.sock",
                    tmp / "agent.log")
    cluster = e2e.Cluster(tmp, redis_server.url, {"h1": host})
    try:
        host.start()
        cluster.start_ipam()
        cluster.start_orchestrator()
        yield _populate(cluster, host, redis_server.url)
    finally:
        cluster.stop()
        Path(host.socket_path).unlink(missing_ok=True)
        ns.close()


def _populate(cluster: e2e.Cluster, host: e2e.Host, redis_url: str) -> World:
    """Makes a network with a connected container, a sandbox and a full IPAM pool, and a
    no-op template request for every RPC this test knows."""
    host_id = host.host_id
    sandbox = f"cnm-{host_id}-c1"
    network = pb.Network(name="bi-net", subnet="10.231.0.0/24", labels={"team": "bi"})
    cluster.call("CreateNetwork", pb.CreateNetworkRequest(network=network))
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox, host_id=host_id))
    connect = pb.ConnectContainerRequest(
        network="bi-net", container_id="c1", host_id=host_id, sandbox=sandbox,
        port_mappings=[pb.PortMapping(protocol=pb.PROTOCOL_TCP, host_port=18080,
                                      container_port=80)],
    )
    endpoint = cluster.call("ConnectContainer", connect).endpoint
    pool = ipam_pb2.Pool(pool_id="bi-full", subnet="10.232.0.0/30", labels={"k": "v"})
    ipam_call(cluster, "CreatePool", ipam_pb2.CreatePoolRequest(pool=pool))
    ipam_call(cluster, "AllocateAddress",
              ipam_pb2.AllocateAddressRequest(pool_id="bi-full", owner="bi-owner"))
    state = host.state()
    agent_network = next(n for n in state.networks if n.network_id == endpoint.network_id)
    agent_endpoint = nd.Endpoint()
    agent_endpoint.CopyFrom(state.endpoints[0])
    agent_endpoint.ClearField("host_interface")
    own = f"cnm-{host_id}-absent"
    orchestrator = "/cnm.orchestrator.v1.OrchestratorService/"
    agent = "/cnm.netdriver.v1.NetDriverService/"
    ipam = "/cnm.ipam.v1.IpamService/"
    templates = {
        orchestrator + "CreateNetwork": pb.CreateNetworkRequest(network=network),
        orchestrator + "GetNetwork": pb.GetNetworkRequest(network="bi-net"),
        orchestrator + "DeleteNetwork": pb.DeleteNetworkRequest(network="bi-absent",
                                                                allow_missing=True),
        orchestrator + "ConnectContainer": connect,
        orchestrator + "DisconnectContainer": pb.DisconnectContainerRequest(
            network="bi-net", container_id="absent", allow_missing=True),
        orchestrator + "GetEndpoint": pb.GetEndpointRequest(endpoint_id=endpoint.endpoint_id),
        orchestrator + "ListEndpoints": pb.ListEndpointsRequest(network="bi-net",
                                                                host_id=host_id),
        orchestrator + "CreateSandbox": pb.CreateSandboxRequest(name=sandbox, host_id=host_id),
        orchestrator + "DeleteSandbox": pb.DeleteSandboxRequest(name=own, host_id=host_id,
                                                                allow_missing=True),
        orchestrator + "ListSandboxes": pb.ListSandboxesRequest(host_id=host_id),
        orchestrator + "RegisterHost": pb.RegisterHostRequest(
            host=pb.Host(host_id=host_id, address=host.address)),
        orchestrator + "HeartbeatHost": pb.HeartbeatHostRequest(host_id=host_id),
        orchestrator + "DeleteHost": pb.DeleteHostRequest(host_id="absent", allow_missing=True),
        agent + "CreateNetwork": nd.CreateNetworkRequest(network=agent_network),
        agent + "DeleteNetwork": nd.DeleteNetworkRequest(network_id="absent"),
        agent + "CreateEndpoint": nd.CreateEndpointRequest(endpoint=agent_endpoint),
        agent + "DeleteEndpoint": nd.DeleteEndpointRequest(endpoint_id="absent"),
        agent + "SetNetworkPeers": nd.SetNetworkPeersRequest(
            network_id=endpoint.network_id, generation=1,
            peers=[nd.Peer(host_id="h2", underlay_ip="10.99.0.2")],
            remote_endpoints=[nd.RemoteEndpoint(address="10.231.0.77",
                                                mac_address="02:42:0a:e7:00:4d",
                                                underlay_ip="10.99.0.2")]),
        agent + "CreateSandbox": nd.CreateSandboxRequest(name=sandbox),
        agent + "DeleteSandbox": nd.DeleteSandboxRequest(name=own),
        agent + "GetSandbox": nd.GetSandboxRequest(sandbox=sandbox),
        ipam + "CreatePool": ipam_pb2.CreatePoolRequest(pool=pool),
        ipam + "GetPool": ipam_pb2.GetPoolRequest(pool_id="bi-full"),
        ipam + "DeletePool": ipam_pb2.DeletePoolRequest(pool_id="bi-absent"),
        ipam + "AllocateAddress": ipam_pb2.AllocateAddressRequest(pool_id="bi-full",
                                                                  owner="bi-owner"),
        ipam + "BatchAllocateAddresses": ipam_pb2.BatchAllocateAddressesRequest(
            pool_id="bi-full", owners=["bi-owner"]),
        ipam + "ReleaseAddress": ipam_pb2.ReleaseAddressRequest(pool_id="bi-full",
                                                                owner="bi-nobody"),
        ipam + "ListAllocations": ipam_pb2.ListAllocationsRequest(pool_id="bi-full"),
    }
    return World(
        cluster=cluster, host=host, redis_url=redis_url,
        templates={method: request.SerializeToString() for method, request in templates.items()},
        addresses={"cnm.orchestrator.v1.OrchestratorService": cluster.address,
                   "cnm.netdriver.v1.NetDriverService": host.address,
                   "cnm.ipam.v1.IpamService": cluster.ipam_address},
    )


def ipam_call(cluster: e2e.Cluster, method: str, request):
    from cnm.ipam.v1 import ipam_pb2_grpc

    with grpc.insecure_channel(cluster.ipam_address) as channel:
        return getattr(ipam_pb2_grpc.IpamServiceStub(channel), method)(request, timeout=10)


# --- the requests, from reflection ------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str  # /pkg.Service/Method
    address: str
    request: type  # message class built from the reflected descriptor
    read_only: bool


def reflected_rpcs(addresses: dict[str, str]) -> list[Rpc]:
    """Every RPC of every cnm service, as the servers describe themselves."""
    rpcs = []
    for expected, address in addresses.items():
        with grpc.insecure_channel(address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = [name for name in database.get_services()
                        if not name.startswith(INFRASTRUCTURE)]
            assert expected in services, (address, services)
            pool = descriptor_pool.DescriptorPool(database)
            for name in services:
                service = pool.FindServiceByName(name)
                for method in service.methods:
                    rpcs.append(Rpc(
                        path=f"/{service.full_name}/{method.name}", address=address,
                        request=message_factory.GetMessageClass(method.input_type),
                        read_only=method.name.startswith(("Get", "List", "Heartbeat")),
                    ))
    return rpcs


def _behaviors(field: FieldDescriptor) -> set[int]:
    """The field's google.api.field_behavior annotations."""
    # Read again as the default pool's FieldOptions, which knows the extension.
    options = descriptor_pb2.FieldOptions.FromString(field.GetOptions().SerializeToString())
    return set(options.Extensions[field_behavior_pb2.field_behavior])


def _required(descriptor: Descriptor) -> bool:
    return any(field_behavior_pb2.REQUIRED in _behaviors(field) for field in descriptor.fields)


@dataclass(frozen=True)
class Case:
    label: str
    request: bytes
    kind: str  # MALFORMED or MAYBE
    output_only: bool


def _string_values(field: FieldDescriptor, required: bool) -> list[tuple[str, str, str]]:
    values = [("empty", "", MALFORMED if required else MAYBE), ("10,000 characters", LONG, MALFORMED),
              ("control characters", CONTROL, MALFORMED), ("../..", TRAVERSAL, MAYBE)]
    if any(part in field.name for part in SUBNET_FIELDS):
        values += [(repr(subnet), subnet, MALFORMED) for subnet in SUBNETS]
    return values


def _mutations(descriptor: Descriptor, depth: int, path: str, output_only: bool,
               enforced: bool) -> Iterator[tuple[str, object, str, bool]]:
    """(label, a function that applies the mutation to a copy, kind, output only).

    A REQUIRED field left empty is malformed where the message itself must be given
    (the request, or a REQUIRED message field of it): a field of an optional message
    may be ignored, as CreateEndpointRequest.network is when the host has the network.
    """
    for field in descriptor.fields:
        where = f"{path}{field.name}"
        behaviors = _behaviors(field)
        hidden = output_only or field_behavior_pb2.OUTPUT_ONLY in behaviors
        required = enforced and not hidden and field_behavior_pb2.REQUIRED in behaviors
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type != FieldDescriptor.TYPE_STRING:
                continue
            for label, value, kind in _string_values(field, required=False):
                yield (f"{where}[key={label}]", _set_map(field.name, value or "", "v"),
                       kind if value else MAYBE, hidden)
                yield (f"{where}[value={label}]", _set_map(field.name, "k", value), kind,
                       hidden)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            for label, apply, kind, inner_hidden in _mutations(
                field.message_type, depth + 1, where + ("[0]." if repeated else "."),
                hidden, required,
            ):
                yield label, _nested(field.name, repeated, apply), kind, inner_hidden
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            for label, value, kind in _string_values(field, required):
                yield f"{where}={label}", _set(field.name, repeated, value), kind, hidden
        elif field.type in _INT_RANGES:
            low, high = _INT_RANGES[field.type]
            for value in sorted({0, max(low, -1), high}):
                yield f"{where}={value}", _set(field.name, repeated, value), MAYBE, hidden
        elif field.type == FieldDescriptor.TYPE_ENUM:
            undefined = max(value.number for value in field.enum_type.values) + 17
            for value in (undefined, -7):
                yield f"{where}={value} (undefined)", _set(field.name, repeated, value), \
                    MALFORMED, hidden


def _set(name: str, repeated: bool, value):
    def apply(message) -> None:
        if repeated:
            message.ClearField(name)
            getattr(message, name).append(value)
        else:
            setattr(message, name, value)
    return apply


def _set_map(name: str, key: str, value: str):
    def apply(message) -> None:
        getattr(message, name)[key] = value
    return apply


def _nested(name: str, repeated: bool, inner):
    def apply(message) -> None:
        if repeated:
            items = getattr(message, name)
            inner(items[0] if len(items) else items.add())
        else:
            inner(getattr(message, name))
    return apply


def cases(rpc: Rpc, template: bytes | None) -> list[Case]:
    """The empty message, then every mutation of the template (and, exhaustively, of the
    empty message)."""
    descriptor = rpc.request.DESCRIPTOR
    made = [Case("empty message", b"", MALFORMED if _required(descriptor) else MAYBE, False)]
    bases = [("template", template)] if template is not None else [("empty", b"")]
    if EXHAUSTIVE and template is not None:
        bases.append(("empty", b""))
    for base_label, base in bases:
        for label, apply, kind, hidden in _mutations(descriptor, 0, "", False, True):
            message = rpc.request.FromString(base)
            apply(message)
            made.append(Case(f"{base_label}: {label}", message.SerializeToString(), kind, hidden))
    return made


# --- the calls ---------------------------------------------------------------------------------


def call(rpc: Rpc, request: bytes) -> tuple[grpc.StatusCode, str, error_details_pb2.ErrorInfo | None]:
    with grpc.insecure_channel(rpc.address) as channel:
        method = channel.unary_unary(rpc.path, request_serializer=None,
                                     response_deserializer=None)
        try:
            method(request, timeout=20)
        except grpc.RpcError as error:
            info = None
            for key, value in error.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    for detail in status_pb2.Status.FromString(value).details:
                        unpacked = error_details_pb2.ErrorInfo()
                        if detail.Unpack(unpacked):
                            info = unpacked
            return error.code(), error.details() or "", info
    return grpc.StatusCode.OK, "", None


def check_answer(rpc: Rpc, case: Case, code: grpc.StatusCode, message: str,
                 info: error_details_pb2.ErrorInfo | None) -> str | None:
    """What is wrong with the answer to ``case``, or None."""
    where = f"{rpc.path} [{case.label}]"
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return f"{where}: {code.name}: {message[:300]}"
    if code != grpc.StatusCode.OK:
        if info is None or info.domain != errors.DOMAIN or not info.reason:
            return f"{where}: {code.name} the client cannot read (no cnm ErrorInfo): " \
                   f"{message[:300]}"
        if len(message.encode()) > errors.MAX_MESSAGE_BYTES:
            return f"{where}: a {len(message)}-character message"
    if case.kind == MALFORMED and code != grpc.StatusCode.INVALID_ARGUMENT and not (
        case.output_only and code == grpc.StatusCode.OK
    ):
        return f"{where}: {code.name} ({info.reason if info else ''}: {message[:200]}), " \
               "want INVALID_ARGUMENT"
    return None


def _run(world: World, rpcs: list[Rpc], per_case_snapshots: bool) -> None:
    problems: list[str] = []
    total = 0
    for rpc in rpcs:
        before = world.snapshot()
        for case in cases(rpc, world.templates.get(rpc.path)):
            total += 1
            code, message, info = call(rpc, case.request)
            problem = check_answer(rpc, case, code, message, info)
            if problem:
                problems.append(problem)
            if per_case_snapshots and not rpc.read_only:
                after = world.snapshot()
                if after != before:
                    problems.append(f"{rpc.path} [{case.label}] changed the state:\n"
                                    + _changed(before, after))
                    before = after
        after = world.snapshot()
        if after != before:
            problems.append(f"{rpc.path} changed the state (CNM_EXHAUSTIVE=1 names the case):\n"
                            + _changed(before, after))
    assert total > 500, total
    assert not problems, f"{len(problems)} of {total} answers wrong:\n" + "\n".join(problems)


def test_every_rpc_is_reflected_and_has_a_template_or_an_empty_base(world):
    rpcs = reflected_rpcs(world.addresses)
    paths = {rpc.path for rpc in rpcs}
    assert set(world.templates) <= paths, set(world.templates) - paths
    assert len(paths) >= 30


def test_bad_input_to_every_rpc_is_refused_cleanly_and_changes_nothing(world):
    _run(world, reflected_rpcs(world.addresses), per_case_snapshots=False)


@pytest.mark.exhaustive
def test_exhaustive_bad_input_with_a_snapshot_after_every_call(world):
    _run(world, reflected_rpcs(world.addresses), per_case_snapshots=True)
