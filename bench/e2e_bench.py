"""End-to-end connect through the orchestrator against the CNI reference plugin chain.

Runs everything on this machine, in namespaces it makes and removes: a real
redis-server, ``python -m ipam_service``, ``python -m netdriver_service`` in
a "host" namespace (unix socket, nftables), ``python -m orchestrator``; and,
in a second host namespace, Debian's containernetworking-plugins chain
``bridge`` (``host-local`` IPAM) + ``portmap``, each plugin exec'd as a
container runtime does. Every container is a fresh namespace made beforehand
(not timed).

- connect latency: ConnectContainer with one port mapping, from a gRPC
  client to the orchestrator (IPAM allocate + agent CreateEndpoint + Redis
  records), against the CNI chain's ADD (bridge ADD + portmap ADD);
- disconnect latency: DisconnectContainer of those, against the chain's DEL;
- throughput: 8 concurrent clients, connects per second, against 8
  concurrent CNI chain ADDs;
- scale: connect p50 with 10 and with 1,000 endpoints on the network;
- memory: each service's RSS idle (after one connect and disconnect) and
  with 1,000 endpoints on the host.

Targets (issue 17): connect p50 <= 1/5 of the CNI ADD; disconnect p50 <= 1/8 of
the CNI DEL; 8-client throughput >= 10x the CNI chain's; connect p50 at 1,000
endpoints within 1.25x of that at 10; at 1,000 endpoints the agent under
150 MiB, the orchestrator and IPAM under 100 MiB each. ``--trace`` adds each
service's own p50 per call (the breakdown, from their DEBUG logs).

    .venv/bin/python bench/e2e_bench.py [--iterations 40] [--clients 8] [--scale 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

import grpc

from bench.common import (
    CniChain,
    Namespaces,
    agent_run_dir,
    inside,
    print_request_times,
    rss_kib,
    summary,
    timed,
    verdict,
)
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from tests import support

# RSS each service must stay under with --scale endpoints on the host (issue 17), MiB.
MEMORY_LIMITS = {"agent": 150, "orchestrator": 100, "ipam": 100}


class System:
    """redis, IPAM, one agent in a host namespace and the orchestrator, as processes."""

    def __init__(self, workdir: Path, tls_dir: Path | None = None,
                 orchestrator_args: tuple[str, ...] = (), heartbeats: bool = False,
                 log_level: str = "WARNING", metrics_ports: dict[str, int] | None = None) -> None:
        """``tls_dir``: a `cnm pki` directory with ca, ipam, orchestrator, agent and admin
        certificates: every link is then mutual TLS (plaintext without it). With
        ``heartbeats`` the agent also registers with the orchestrator and heartbeats.
        The services log at ``log_level`` to ``workdir``/{ipam,agent,orchestrator}.log
        (at DEBUG every request's time: see :func:`print_request_times`). With
        ``metrics_ports`` ({"ipam": PORT, "agent": ..., "orchestrator": ...}) each serves
        its metrics on loopback there (the agent's loopback is its host namespace's)."""
        self.workdir = workdir
        self.tls_dir = tls_dir
        self.run_dir = agent_run_dir()
        self.redis = support.RedisServer(workdir / "redis", appendonly=False).start()
        self.host = support.Netns("cnme-host")
        self.host_id = f"b{uuid.uuid4().hex[:6]}"
        self.processes: list[support.Process] = []
        self.metrics_ports = metrics_ports or {}

        def metrics(name: str) -> list[str]:
            port = self.metrics_ports.get(name)
            return ["--metrics-listen", f"127.0.0.1:{port}"] if port else []

        ipam = f"127.0.0.1:{support.free_port()}"
        self.processes.append(support.Process(
            [support.PYTHON, "-m", "ipam_service", "--listen", ipam,
             "--redis-url", self.redis.url, "--log-level", log_level, *self._tls("ipam"),
             *metrics("ipam")],
            log_path=workdir / "ipam.log"))
        agent = f"unix:/tmp/cnme-{uuid.uuid4().hex[:8]}.sock"
        # The agent, in its host namespace, reaches a unix socket, not our loopback.
        self.address = (f"unix:/tmp/cnme-{uuid.uuid4().hex[:8]}.sock" if heartbeats
                        else f"127.0.0.1:{support.free_port()}")
        self.agent_address = agent
        # With heartbeats the agent also serves the cnm-cni plugin, here.
        self.cni_socket = str(self.run_dir / "cni.sock")
        membership = ("--orchestrator", self.address, "--cni-socket", self.cni_socket) \
            if heartbeats else ()
        self.agent = support.Process(
            ["nsenter", f"--net={self.host.path}", support.PYTHON, "-m", "netdriver_service",
             "--listen", agent, "--host-id", self.host_id, "--state-dir",
             str(self.run_dir / "agent"), "--log-level", log_level, *membership,
             *self._tls("agent"), *metrics("agent")],
            log_path=workdir / "agent.log")
        self.processes.append(self.agent)
        support.wait_serving(ipam, credentials=self._credentials())
        support.wait_serving(agent, timeout=20, credentials=self._credentials())
        self.processes.append(support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", self.address,
             "--redis-url", self.redis.url, "--ipam", ipam,
             "--hosts", f"{self.host_id}={agent}", "--log-level", log_level,
             *orchestrator_args, *self._tls("orchestrator"), *metrics("orchestrator")],
            log_path=workdir / "orchestrator.log"))
        support.wait_serving(self.address, credentials=self._credentials())

    def memory(self) -> dict[str, int]:
        """Each service's RSS, KiB (the agent's ``nsenter`` execs it: the same process)."""
        ipam, agent, orchestrator = (p.popen.pid for p in self.processes)
        return {"ipam": rss_kib(ipam), "agent": rss_kib(agent),
                "orchestrator": rss_kib(orchestrator),
                "redis": rss_kib(self.redis.process.popen.pid)}

    def _tls(self, name: str) -> list[str]:
        if self.tls_dir is None:
            return []
        return ["--tls-ca", str(self.tls_dir / "ca.crt"),
                "--tls-cert", str(self.tls_dir / f"{name}.crt"),
                "--tls-key", str(self.tls_dir / f"{name}.key")]

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_dir is None:
            return None
        return grpc.ssl_channel_credentials(*(
            (self.tls_dir / name).read_bytes() for name in ("ca.crt", "admin.key", "admin.crt")))

    def client(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        credentials = self._credentials()
        channel = (grpc.insecure_channel(self.address) if credentials is None
                   else grpc.secure_channel(self.address, credentials))
        return orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.redis.stop()
        self.host.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class Client:
    """Connects and disconnects containers of one host through the orchestrator."""

    def __init__(self, system: System) -> None:
        self.stub = system.client()
        self.host_id = system.host_id

    def connect(self, network: str, container: str, netns: str, port: int) -> float:
        """The connect's latency in ms."""
        started = time.perf_counter()
        self.stub.ConnectContainer(pb.ConnectContainerRequest(
            network=network, container_id=container, host_id=self.host_id,
            sandbox=f"/var/run/netns/{netns}",
            port_mappings=[pb.PortMapping(host_port=port, container_port=80)]), timeout=30)
        return (time.perf_counter() - started) * 1000

    def disconnect(self, network: str, container: str) -> None:
        self.stub.DisconnectContainer(pb.DisconnectContainerRequest(
            network=network, container_id=container), timeout=30)


def concurrent(clients: int, jobs: list, run) -> float:
    """Runs ``run(client_index, job)`` over ``jobs`` with ``clients`` threads; jobs per second."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda item: run(item[0] % clients, item[1]), enumerate(jobs)))
    return len(jobs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40, help="sequential connects per side")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--throughput-jobs", type=int, default=160,
                        help="connects per side in the throughput run")
    parser.add_argument("--scale", type=int, default=1000,
                        help="endpoints present for the scale measurement (0 skips it)")
    parser.add_argument("--samples", type=int, default=30,
                        help="connects measured at 10 and at --scale endpoints")
    parser.add_argument("--trace", action="store_true",
                        help="also print each service's own time per call (p50, ms)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-e2e-bench-"))
    containers = Namespaces("cnme")
    system = System(workdir, log_level="DEBUG" if args.trace else "WARNING")
    cni_host = support.Netns("cnme-cni")
    try:
        clients = [Client(system) for _ in range(args.clients)]
        first = clients[0]
        stub = first.stub
        stub.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="bench", subnet="10.66.0.0/16")), timeout=30)
        [warm] = containers.make(1)
        first.connect("bench", "warm", warm, 1000)
        first.disconnect("bench", "warm")
        idle = system.memory()

        # --- cnm: sequential, then concurrent ---------------------------------------------
        sandboxes = containers.make(args.iterations)
        cnm_add = [first.connect("bench", f"seq{i}", netns, 20000 + i)
                   for i, netns in enumerate(sandboxes)]
        cnm_del = [timed(first.disconnect, "bench", f"seq{i}") for i in range(args.iterations)]
        if args.trace:
            print_request_times(sorted(workdir.glob("*.log")))
        jobs = list(enumerate(containers.make(args.throughput_jobs)))
        cnm_rate = concurrent(args.clients, jobs, lambda c, job: clients[c].connect(
            "bench", f"par{job[0]}", job[1], 30000 + job[0]))
        stub.DeleteNetwork(pb.DeleteNetworkRequest(network="bench", force=True), timeout=300)

        # --- CNI, from inside its host namespace --------------------------------------------
        cni_sandboxes = containers.make(args.iterations + args.throughput_jobs + 1)
        cni = CniChain(workdir / "host-local", name="e2ebench", bridge="cni-e2e0",
                       subnet="10.78.0.0/16")
        with inside(cni_host.path):
            cni.add("warm", f"/var/run/netns/{cni_sandboxes[-1]}", 1000)
            cni_add = [timed(cni.add, f"seq{i}", f"/var/run/netns/{cni_sandboxes[i]}", 20000 + i)
                       for i in range(args.iterations)]
            cni_del = [timed(cni.delete, f"seq{i}", f"/var/run/netns/{cni_sandboxes[i]}", 20000 + i)
                       for i in range(args.iterations)]
            cni_jobs = list(enumerate(cni_sandboxes[args.iterations:-1]))
            cni_rate = concurrent(args.clients, cni_jobs, lambda c, job: cni.add(
                f"par{job[0]}", f"/var/run/netns/{job[1]}", 30000 + job[0]))

        print(f"# connect with one port mapping, {args.iterations} sequential, "
              "one new namespace per container")
        print(f"cnm connect (orchestrator)  {summary(cnm_add)}")
        print(f"CNI chain ADD               {summary(cni_add)}")
        ratio = statistics.median(cni_add) / statistics.median(cnm_add)
        print(f"cnm p50 is 1/{ratio:.1f} of CNI ADD p50 (target <= 1/5) {verdict(ratio >= 5)}")
        print(f"cnm disconnect              {summary(cnm_del)}")
        print(f"CNI chain DEL               {summary(cni_del)}")
        ratio = statistics.median(cni_del) / statistics.median(cnm_del)
        print(f"cnm p50 is 1/{ratio:.1f} of CNI DEL p50 (target <= 1/8) {verdict(ratio >= 8)}")
        print(f"\n# throughput, {args.clients} concurrent clients, "
              f"{args.throughput_jobs} connects each side")
        print(f"cnm  {cnm_rate:8.1f} connects/s")
        print(f"CNI  {cni_rate:8.1f} ADDs/s")
        print(f"cnm is {cnm_rate / cni_rate:.1f}x CNI (target >= 10x) "
              f"{verdict(cnm_rate >= 10 * cni_rate)}")

        if args.scale:
            stub.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
                name="scale", subnet="10.67.0.0/16")), timeout=30)
            filled = fill(clients, containers, 0, 10)
            small = measure(first, containers, 10, args.samples)
            fill(clients, containers, filled, args.scale)
            loaded = system.memory()
            large = measure(first, containers, args.scale, args.samples)
            ratio = statistics.median(large) / statistics.median(small)
            print(f"\n# connect with 10 vs {args.scale} endpoints on the network")
            print(f"at 10:     {summary(small)}")
            print(f"at {args.scale}:  {summary(large)}")
            print(f"ratio {ratio:.2f} (target <= 1.25) {verdict(ratio <= 1.25)}")
            print(f"\n# memory (RSS, MiB), idle and with {args.scale} endpoints on the host")
            for name, limit in MEMORY_LIMITS.items():
                print(f"{name:13s} {idle[name] / 1024:6.1f}  {loaded[name] / 1024:6.1f}  "
                      f"(target < {limit} MiB) {verdict(loaded[name] / 1024 < limit)}")
            print(f"{'redis':13s} {idle['redis'] / 1024:6.1f}  {loaded['redis'] / 1024:6.1f}")
            stub.DeleteNetwork(pb.DeleteNetworkRequest(network="scale", force=True), timeout=600)
    finally:
        system.stop()
        cni_host.close()
        containers.remove_all()
        shutil.rmtree(workdir, ignore_errors=True)


def fill(clients: list[Client], containers: Namespaces, present: int, wanted: int) -> int:
    """Connects containers until the "scale" network has ``wanted`` endpoints."""
    jobs = list(zip(range(present, wanted), containers.make(wanted - present), strict=True))
    concurrent(len(clients), jobs, lambda c, job: clients[c].connect(
        "scale", f"fill{job[0]}", job[1], 10000 + job[0]))
    return wanted


def measure(client: Client, containers: Namespaces, present: int, samples: int) -> list[float]:
    """Times ``samples`` connects, each undone, so the network stays at ``present``."""
    measured = []
    for i, netns in enumerate(containers.make(samples)):
        measured.append(client.connect("scale", f"m{present}-{i}", netns, 50000 + i))
        client.disconnect("scale", f"m{present}-{i}")
    return measured


if __name__ == "__main__":
    main()
