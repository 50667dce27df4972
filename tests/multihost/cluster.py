"""Many hosts on one machine, no Docker: each host a network namespace on a shared
underlay (tests/support.Underlay), running a real agent process that registers with a
real orchestrator and heartbeats; IPAM and the orchestrator as processes over the test
session's Redis.

Simulated hosts share /var/run/netns, so host ids are unique per test and sandbox
names carry them. Every link is mutual TLS, as a real deployment's: a CA per
cluster, a certificate per service and per host's agent, and the tests drive
it with an admin certificate.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cnm import errors, pki
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from tests import support
from tests.orchestrator.e2e import CNM, CliResult, remove_sandboxes

HEARTBEAT = 1  # seconds: an unhealthy host shows within 3


@dataclass
class Host:
    number: int
    host_id: str
    ns: support.Netns
    underlay_ip: str
    tmp: Path
    orchestrator: str
    pki: Path
    socket_path: str = field(default_factory=lambda: f"/tmp/cnmt-{uuid.uuid4().hex[:8]}.sock")
    # Where its agent serves the cnm-cni plugin.
    cni_socket: str = field(default_factory=lambda: f"/tmp/cnmt-cni-{uuid.uuid4().hex[:8]}.sock")
    process: support.Process | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self) -> None:
        self.process = support.start_agent(
            self.ns.path, self.address, host_id=self.host_id,
            state_dir=self.tmp / f"state-{self.host_id}",
            log_path=self.tmp / f"agent-{self.host_id}.log",
            args=("--orchestrator", self.orchestrator, "--cni-socket", self.cni_socket,
                  *tls_args(self.pki, f"agent-{self.host_id}")),
            credentials=admin_credentials(self.pki),
        )

    def stop(self, kill: bool = False) -> None:
        if self.process:
            if kill:
                self.process.kill9()
            self.process.stop()
            self.process = None
        Path(self.socket_path).unlink(missing_ok=True)
        Path(self.cni_socket).unlink(missing_ok=True)  # a killed agent leaves it

    def agent(self, method: str, request):
        with admin_channel(self.pki, self.address) as channel:
            stub = netdriver_pb2_grpc.NetDriverServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=10)
            except grpc.RpcError as error:
                raise errors.from_rpc_error(error) from None

    def state(self) -> netdriver_pb2.GetStateResponse:
        return self.agent("GetState", netdriver_pb2.GetStateRequest())

    def fdb(self, device: str) -> str:
        return self.ns.run("bridge", "fdb", "show", "dev", device).stdout

    def neighbours(self, device: str) -> str:
        return self.ns.run("ip", "neigh", "show", "dev", device).stdout


tls_args = support.tls_args
admin_credentials = support.tls_credentials
admin_channel = support.tls_channel


@dataclass
class MultiHost:
    tmp: Path
    redis_url: str
    underlay: support.Underlay
    vni_range: str = "4096-16777215"
    # Short intervals, so that tests see health and repairs quickly.
    orchestrator_args: tuple[str, ...] = (
        "--heartbeat-interval", str(HEARTBEAT), "--reconcile-interval", "1",
        "--host-gc-interval", "2", "--gone-grace", "1",
    )
    hosts: list[Host] = field(default_factory=list)
    address: str = ""
    ipam_address: str = ""
    processes: list[support.Process] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])

    @property
    def pki(self) -> Path:
        return self.tmp / f"pki-{self.tag}"

    def start(self) -> MultiHost:
        pki.init_ca(self.pki)
        pki.issue(self.pki, "ipam", "ipam", sans=("127.0.0.1",))
        pki.issue(self.pki, "orchestrator", "orchestrator", sans=("localhost",))
        pki.issue(self.pki, "admin", "admin")
        self.ipam_address = f"127.0.0.1:{support.free_port()}"
        self.processes.append(support.Process(
            [support.PYTHON, "-m", "ipam_service", "--listen", self.ipam_address,
             "--redis-url", self.redis_url, *tls_args(self.pki, "ipam")],
            log_path=self.tmp / "ipam.log"))
        support.wait_serving(self.ipam_address, credentials=admin_credentials(self.pki))
        # A unix socket: the agents, inside their host namespaces, reach it there.
        self.address = f"unix:/tmp/cnmt-orch-{uuid.uuid4().hex[:8]}.sock"
        self.processes.append(support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", self.address,
             "--redis-url", self.redis_url, "--ipam", self.ipam_address,
             "--vni-range", self.vni_range, *self.orchestrator_args,
             *tls_args(self.pki, "orchestrator")],
            log_path=self.tmp / "orchestrator.log",
        ))
        support.wait_serving(self.address, credentials=admin_credentials(self.pki))
        return self

    def add_host(self, start: bool = True) -> Host:
        ns = self.underlay.add_host()
        number = len(self.underlay.hosts)
        host_id = f"mh{self.tag}-{number}"
        pki.issue(self.pki, f"agent-{host_id}", "agent", host_id=host_id, sans=("localhost",))
        host = Host(number=number, host_id=host_id, ns=ns,
                    underlay_ip=self.underlay.address(number), tmp=self.tmp,
                    orchestrator=self.address, pki=self.pki)
        self.hosts.append(host)
        if start:
            host.start()
            self.wait_registered(host)
        return host

    def wait_registered(self, host: Host, timeout: float = 20) -> None:
        """Until the host is healthy and its registration brought it in line: the host
        record (healthy) is written before every overlay network is put on it."""
        def in_line() -> bool:
            if self.host_state(host.host_id) != pb.HOST_STATE_HEALTHY:
                return False
            overlays = self.call("ListNetworks", pb.ListNetworksRequest(driver=pb.DRIVER_OVERLAY))
            return all(
                any(state.host_id == host.host_id for state in self.inspect(n.name).hosts)
                for n in overlays.networks
            )

        support.wait_for(in_line, timeout, 0.1, f"host {host.host_id} to register")

    def host_state(self, host_id: str) -> int | None:
        for host in self.call("ListHosts", pb.ListHostsRequest()).hosts:
            if host.host_id == host_id:
                return host.state
        return None

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
            remove_sandboxes(host.host_id)
        for process in reversed(self.processes):
            process.stop()
        Path(self.address.removeprefix("unix:")).unlink(missing_ok=True)

    # --- clients -----------------------------------------------------------

    def call(self, method: str, request, timeout: float = 30, identity: str = "admin"):
        with admin_channel(self.pki, self.address, identity) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=timeout)
            except grpc.RpcError as error:
                raise errors.from_rpc_error(error) from None

    def cnm(self, *args: str, timeout: float = 60) -> CliResult:
        env = {"CNM_ORCHESTRATOR": self.address, "GRPC_ENABLE_FORK_SUPPORT": "0",
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNM_TLS_CA": str(self.pki / "ca.crt"),
               "CNM_TLS_CERT": str(self.pki / "admin.crt"),
               "CNM_TLS_KEY": str(self.pki / "admin.key")}
        done = subprocess.run([CNM, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return CliResult(done.returncode, done.stdout, done.stderr)

    def create_overlay(self, name: str, subnet: str, *more: str) -> dict:
        """``more``: further flags of the create (an IPv6 subnet: --ipv6 --subnet ...)."""
        made = self.cnm("network", "create", "--driver", "overlay", "--subnet", subnet, *more,
                        name)
        assert made.code == 0, made.err
        inspected = self.cnm("network", "inspect", name)
        assert inspected.code == 0, inspected.err
        return json.loads(inspected.out)[0]

    def container(self, host: Host, name: str, network: str) -> Container:
        """A sandbox on ``host`` connected to ``network`` (as ``cnm run`` makes them)."""
        sandbox = f"cnm-{host.host_id}-{name}"
        self.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox, host_id=host.host_id))
        endpoint = self.call("ConnectContainer", pb.ConnectContainerRequest(
            network=network, container_id=sandbox, host_id=host.host_id, sandbox=sandbox,
            dns_names=[name],
        )).endpoint
        return Container(sandbox, endpoint.address, endpoint.mac_address, host,
                         endpoint.ipv6_address)

    def inspect(self, network: str) -> pb.Network:
        return self.call("GetNetwork", pb.GetNetworkRequest(network=network)).network

    def allocations(self, network: str, ipv6: bool = False) -> dict[str, str]:
        """Address -> owner of the network's IPAM pool (``ipv6``: its IPv6 one), as IPAM
        has them."""
        pool_id = self.inspect(network).network_id + (".v6" if ipv6 else "")
        with admin_channel(self.pki, self.ipam_address) as channel:
            listed = ipam_pb2_grpc.IpamServiceStub(channel).ListAllocations(
                ipam_pb2.ListAllocationsRequest(pool_id=pool_id), timeout=10)
        return {a.address: a.owner for a in listed.allocations}


@dataclass
class Container:
    sandbox: str  # also the namespace name under /var/run/netns
    address: str
    mac: str
    host: Host
    ipv6_address: str = ""


def wait_until(predicate, timeout: float = 15, what: str = "condition"):
    return support.wait_for(predicate, timeout, 0.1, what)


def now() -> float:
    return time.monotonic()
