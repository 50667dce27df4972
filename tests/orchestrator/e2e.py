"""End-to-end harness: redis (session fixture), IPAM, one agent per host namespace and
the orchestrator as real processes, driven through the ``cnm`` CLI and gRPC."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cnm import errors, pagination
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from tests import support

CNM = str(Path(support.PYTHON).with_name("cnm"))
TRAFFIC = support.TRAFFIC


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclass
class Host:
    host_id: str
    ns: support.Netns
    state_dir: Path
    socket_path: str
    log_path: Path
    underlay_ip: str = ""
    process: support.Process | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self) -> None:
        self.process = support.start_agent(
            self.ns.path, self.address, host_id=self.host_id, state_dir=self.state_dir,
            log_path=self.log_path, args=("--underlay-ip", self.underlay_ip),
        )

    def stop(self, kill: bool = False) -> None:
        if self.process:
            if kill:
                self.process.kill9()
            self.process.stop()
            self.process = None

    def state(self) -> netdriver_pb2.GetStateResponse:
        with grpc.insecure_channel(self.address) as channel:
            return netdriver_pb2_grpc.NetDriverServiceStub(channel).GetState(
                netdriver_pb2.GetStateRequest(), timeout=10)

    def info(self) -> netdriver_pb2.GetHostInfoResponse:
        with grpc.insecure_channel(self.address) as channel:
            return netdriver_pb2_grpc.NetDriverServiceStub(channel).GetHostInfo(
                netdriver_pb2.GetHostInfoRequest(), timeout=10)

    def link_names(self) -> set[str]:
        out = subprocess.run(["ip", "-n", self.ns.name, "-j", "link", "show"], check=True,
                             capture_output=True, text=True).stdout
        return {link["ifname"] for link in json.loads(out)}


@dataclass
class Cluster:
    tmp: Path
    redis_url: str
    hosts: dict[str, Host]
    ipam_address: str = ""
    address: str = ""
    ipam: support.Process | None = None
    orchestrator: support.Process | None = None
    extra: list = field(default_factory=list)

    # --- processes -------------------------------------------------------

    def start_ipam(self) -> None:
        port = support.free_port()
        self.ipam_address = f"127.0.0.1:{port}"
        self.ipam = support.start_ipam(self.ipam_address, self.redis_url,
                                       self.tmp / f"ipam-{port}.log")

    def restart_ipam(self) -> None:
        self.ipam = support.start_ipam(self.ipam_address, self.redis_url,
                                       self.tmp / "ipam-restarted.log")

    def start_orchestrator(self, fault: str = "") -> support.Process:
        if not self.address:
            self.address = f"127.0.0.1:{support.free_port()}"
        hosts = ",".join(f"{h.host_id}={h.address}" for h in self.hosts.values())
        self.orchestrator = support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", self.address,
             "--redis-url", self.redis_url, "--ipam", self.ipam_address, "--hosts", hosts,
             "--reconcile-interval", "0.5", "--replica-lease", "1.5"],
            env={"CNM_ORCHESTRATOR_FAULT": fault},
            log_path=self.tmp / f"orchestrator-{uuid.uuid4().hex[:6]}.log",
        )
        support.wait_serving(self.address)
        return self.orchestrator

    def stop(self) -> None:
        for process in (self.orchestrator, self.ipam):
            if process:
                process.stop()
        for host in self.hosts.values():
            host.stop()
            remove_sandboxes(host.host_id)

    # --- clients ------------------------------------------------------------

    def cnm(self, *args: str, host: str = "h1", timeout: float = 60) -> CliResult:
        env = {**os.environ, "CNM_ORCHESTRATOR": self.address,
               "CNM_HOST_ID": self.hosts[host].host_id, "CNM_RUN_DIR": str(self.tmp / "run"),
               "GRPC_ENABLE_FORK_SUPPORT": "0"}
        try:
            done = subprocess.run([CNM, *args], env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cnm {' '.join(args)}: no answer within {timeout:g}s; "
                                 f"the services' last lines:\n{self.log_tails()}") from None
        return CliResult(done.returncode, done.stdout, done.stderr)

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of every service's log, to tell why a call hung."""
        tails = []
        for path in sorted(self.tmp.glob("*.log"), key=lambda p: p.stat().st_mtime):
            last = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append("\n".join([f"--- {path.name}", *(line[:400] for line in last)]))
        return "\n".join(tails)

    def call(self, method: str, request):
        with grpc.insecure_channel(self.address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=30)
            except grpc.RpcError as error:
                raise errors.from_rpc_error(error) from None

    def allocations(self) -> dict[str, list[tuple[str, str]]]:
        """Every pool's allocations, read from the IPAM service: pool -> [(address, owner)]."""
        with grpc.insecure_channel(self.ipam_address) as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            pools = pagination.fetch_all(functools.partial(stub.ListPools, timeout=10),
                                         ipam_pb2.ListPoolsRequest(), "pools")
            return {
                pool.pool_id: [(a.address, a.owner) for a in pagination.fetch_all(
                    functools.partial(stub.ListAllocations, timeout=10),
                    ipam_pb2.ListAllocationsRequest(pool_id=pool.pool_id), "allocations")]
                for pool in pools
            }

    def endpoint_owners(self) -> list[str]:
        return sorted(owner for allocs in self.allocations().values() for _, owner in allocs
                      if not owner.startswith("cnm:"))

    def connect(self, network: str, container: str, host: str = "h1", **fields):
        return self.call("ConnectContainer", pb.ConnectContainerRequest(
            network=network, container_id=container, host_id=self.hosts[host].host_id,
            **fields)).endpoint


def remove_sandboxes(host_id: str) -> None:
    """Removes namespaces left by sandboxes of ``host_id`` (a test-unique id), and what runs there."""
    listed = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True,
                            check=False)
    for entry in json.loads(listed.stdout or "[]"):
        name = entry["name"]
        if name.startswith(f"cnm-{host_id}-"):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "delete", name], check=False)


def ask(ns_path: str, host: str, port: int, timeout: float = 3.0) -> str | None:
    """What the echo server at host:port answered, asked from the namespace; None if nothing."""
    done = subprocess.run(
        ["nsenter", f"--net={ns_path}", support.PYTHON, TRAFFIC, "ask", "tcp", host, str(port),
         str(timeout)],
        capture_output=True, text=True, timeout=timeout + 15, check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None
