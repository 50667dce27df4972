"""A chaos storm: the whole system as processes, workers driving the CLI, a killer.

One simulated host (a namespace with its agent, registered and heartbeating),
Redis with ``appendfsync always``, two IPAM replicas (the orchestrator dials
both, ``ipv4:A,B``: the second takes over when the first dies) and the
orchestrator, all restartable. Workers loop the verbs a user types, each on its
own containers and networks, and keep a model of what was acknowledged; the
killer sends kill -9 to a random component and restarts it; a checker looks
at every container's addresses while the storm blows.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from cnm import pagination
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from orchestrator.store import PREFIX
from tests import support
from tests.orchestrator.e2e import CNM, remove_sandboxes

COMPONENTS = ("orchestrator", "agent", "ipam-1", "ipam-2", "redis")
CONTAINERS_PER_WORKER = 5
NETWORKS_PER_WORKER = 2
# What a CLI failure may say while components die; anything else is a defect.
BAD_OUTPUT = re.compile(r"Traceback|UNKNOWN|INTERNAL|Exception")


@dataclass
class Outcome:
    code: int
    out: str
    err: str


class System:
    """Every component as a process we started (and restart) ourselves."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host = support.Netns("cnmt-chaos")
        self.host_id = f"x{uuid.uuid4().hex[:5]}"
        self.redis = support.RedisServer(workdir / "redis", appendfsync="always")
        self.ipam_ports = (support.free_port(), support.free_port())
        tag = uuid.uuid4().hex[:8]
        self.address = f"unix:/tmp/cnm-chaos-orch-{tag}.sock"
        self.agent_address = f"unix:/tmp/cnm-chaos-agent-{tag}.sock"
        self.processes: dict[str, support.Process | None] = dict.fromkeys(COMPONENTS)
        self.lock = threading.Lock()

    def _args(self, name: str) -> list[str]:
        python = support.PYTHON
        if name.startswith("ipam-"):
            port = self.ipam_ports[int(name[-1]) - 1]
            return [python, "-m", "ipam_service", "--listen", f"127.0.0.1:{port}",
                    "--redis-url", self.redis.url]
        if name == "agent":
            return ["nsenter", f"--net={self.host.path}", python, "-m", "netdriver_service",
                    "--listen", self.agent_address, "--host-id", self.host_id,
                    "--state-dir", str(self.workdir / "agent"), "--orchestrator", self.address,
                    "--resync-interval", "5"]
        ipam = ",".join(f"127.0.0.1:{port}" for port in self.ipam_ports)
        return [python, "-m", "orchestrator", "--listen", self.address,
                "--redis-url", self.redis.url, "--ipam", f"ipv4:{ipam}",
                "--reconcile-interval", "1", "--host-gc-interval", "3",
                "--replica-lease", "3", "--heartbeat-interval", "1", "--gone-grace", "1"]

    def start(self, name: str) -> None:
        with self.lock:
            if name == "redis":
                self.redis.start()
                return
            self.processes[name] = support.Process(
                self._args(name), log_path=self.workdir / f"{name}.log",
                env={"CNM_RUN_DIR": str(self.workdir / "run")})

    def kill(self, name: str) -> None:
        with self.lock:
            if name == "redis":
                self.redis.process.kill9()
                self.redis.process = None
                return
            process = self.processes[name]
            if process is not None:
                process.kill9()

    def start_all(self) -> None:
        self.start("redis")
        for name in ("ipam-1", "ipam-2", "agent", "orchestrator"):
            self.start(name)
        self.wait_serving()

    def wait_serving(self) -> None:
        for port in self.ipam_ports:
            support.wait_serving(f"127.0.0.1:{port}", timeout=30)
        support.wait_serving(self.agent_address, timeout=30)
        support.wait_serving(self.address, timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process is not None:
                process.stop()
        self.redis.stop()
        subprocess.run(["ip", "-n", self.host.name, "link", "show"], check=False,
                       capture_output=True)
        remove_sandboxes(self.host_id)
        self.host.close()

    # --- clients ------------------------------------------------------------

    def cnm(self, *args: str, timeout: float = 90) -> Outcome:
        env = {**os.environ, "CNM_ORCHESTRATOR": self.address, "CNM_HOST_ID": self.host_id,
               "CNM_RUN_DIR": str(self.workdir / "run"), "GRPC_ENABLE_FORK_SUPPORT": "0"}
        done = subprocess.run([CNM, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return Outcome(done.returncode, done.stdout, done.stderr)

    def call(self, method: str, request):
        with grpc.insecure_channel(self.address) as channel:
            return getattr(orchestrator_pb2_grpc.OrchestratorServiceStub(channel), method)(
                request, timeout=30)

    def endpoints(self) -> list[pb.Endpoint]:
        with grpc.insecure_channel(self.address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            return pagination.fetch_all(functools.partial(stub.ListEndpoints, timeout=30),
                                        pb.ListEndpointsRequest(), "endpoints")

    def allocations(self) -> list[tuple[str, str, str]]:
        """(pool, address, owner) of every allocation in IPAM."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ipam_ports[0]}") as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            pools = pagination.fetch_all(functools.partial(stub.ListPools, timeout=10),
                                         ipam_pb2.ListPoolsRequest(), "pools")
            return [(pool.pool_id, a.address, a.owner) for pool in pools
                    for a in pagination.fetch_all(
                        functools.partial(stub.ListAllocations, timeout=10),
                        ipam_pb2.ListAllocationsRequest(pool_id=pool.pool_id), "allocations")]

    def records(self) -> list[str]:
        """The orchestrator's Redis keys but the hosts, the replicas' leases and locks and
        the VXLAN id allocator's bitmap and cursor: what networks and endpoints left."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            keys = sorted(key.decode()[len(PREFIX):]
                          for key in client.scan_iter(match=f"{PREFIX}*"))
        finally:
            client.close()
        return [key for key in keys if key not in ("hosts", "vni:bits", "vni:cursor")
                and not key.startswith(("replica:", "lock:"))]

    def sandbox_names(self) -> list[str]:
        listed = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True,
                                check=False)
        return [entry["name"] for entry in json.loads(listed.stdout or "[]")
                if entry["name"].startswith(f"cnm-{self.host_id}-")]

    def host_links(self) -> list[str]:
        shown = self.host.run("ip", "-j", "link", "show").stdout
        return sorted(link["ifname"] for link in json.loads(shown) if link["ifname"] != "lo")

    def nft_elements(self) -> list[str]:
        """Elements of every set and map in the host's ruleset."""
        ruleset = json.loads(self.host.run("nft", "-j", "list", "ruleset").stdout)
        found = []
        for entry in ruleset.get("nftables", []):
            for kind in ("set", "map"):
                if kind in entry and entry[kind].get("elem"):
                    found.append(f"{entry[kind]['name']}: {entry[kind]['elem']}")
        return found


@dataclass
class Worker:
    """Loops the CLI's verbs over its own containers and networks, and keeps what was
    acknowledged: for each (network, container) True (connected), False (not) or None
    (unknown: a call failed, it may or may not have happened)."""

    index: int
    system: System
    seed: int
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    last_code: int = 0
    bad: list[str] = field(default_factory=list)
    connected: dict[tuple[str, str], bool | None] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def network(self, i: int) -> str:
        return f"chaos{self.index}n{i}"

    def container(self, k: int) -> str:
        return f"w{self.index}c{k}"

    def sandbox(self, container: str) -> str:
        return f"cnm-{self.system.host_id}-{container}"

    def subnet(self, i: int) -> str:
        return f"10.{180 + self.index}.{i}.0/24"

    def run(self) -> None:
        rng = random.Random(self.seed)
        verbs = [self.create, self.run_container, self.connect, self.disconnect, self.rm,
                 self.network_rm, self.prune]
        weights = [1, 4, 4, 2, 2, 0.5, 0.3]
        while not self.stop.is_set():
            verb = rng.choices(verbs, weights)[0]
            verb(rng)

    def _cnm(self, verb: str, *args: str) -> bool:
        try:
            outcome = self.system.cnm(*args)
        except subprocess.TimeoutExpired:
            self.outcomes[f"{verb}: hung"] += 1
            self.bad.append(f"{' '.join(args)}: no answer in 90 s")
            return False
        label = "ok" if outcome.code == 0 else f"exit {outcome.code}"
        self.outcomes[f"{verb}: {label}"] += 1
        # Every call is well formed: INVALID_ARGUMENT (2) would be cnm's own fault.
        if BAD_OUTPUT.search(outcome.err + outcome.out) or outcome.code == 2:
            self.bad.append(f"{' '.join(args)} -> {outcome.code}: {outcome.err.strip()}")
        self.last_code = outcome.code
        return outcome.code == 0

    def _set_all(self, container: str, value: bool | None) -> None:
        for key in self.connected:
            if key[1] == container:
                self.connected[key] = value

    def _existing(self, rng) -> str:
        """Mostly a container this worker ran (so that most verbs do something)."""
        running = sorted({c for (_, c), state in self.connected.items() if state})
        if running and rng.random() < 0.8:
            return rng.choice(running)
        return self.container(rng.randrange(CONTAINERS_PER_WORKER))

    def create(self, rng, i: int | None = None) -> None:
        i = rng.randrange(NETWORKS_PER_WORKER) if i is None else i
        self._cnm("network create", "network", "create", "--subnet", self.subnet(i),
                  self.network(i))

    def run_container(self, rng) -> None:
        k = rng.randrange(CONTAINERS_PER_WORKER)
        i = rng.randrange(NETWORKS_PER_WORKER)
        network = self.network(i)
        container = self.container(k)
        port = 21000 + self.index * 100 + k
        done = self._cnm("run", "run", "-d", "--name", container, "--net", network,
                         "-p", f"{port}:80", "--", "sleep", "3600")
        if done:  # a new container (run refuses a name in use)
            self._set_all(container, False)
            self.connected[(network, container)] = True
            return
        code = self.last_code
        if self.connected.get((network, container)) is not True:
            self.connected[(network, container)] = None  # it may have been made
        if code == 3:  # no such network (pruned): a user makes it
            self.create(rng, i)

    def connect(self, rng) -> None:
        container = self._existing(rng)
        i = rng.randrange(NETWORKS_PER_WORKER)
        network = self.network(i)
        done = self._cnm("connect", "network", "connect", network, container)
        if done:
            self.connected[(network, container)] = True
            return
        code = self.last_code
        if self.connected.get((network, container)) is not True:
            self.connected[(network, container)] = None
        if code == 3:
            self.create(rng, i)

    def disconnect(self, rng) -> None:
        container = self._existing(rng)
        network = self.network(rng.randrange(NETWORKS_PER_WORKER))
        done = self._cnm("disconnect", "network", "disconnect", network, container)
        if done:
            self.connected[(network, container)] = False
        elif self.connected.get((network, container)) is not False:
            self.connected[(network, container)] = None

    def rm(self, rng) -> None:
        container = self._existing(rng)
        done = self._cnm("rm", "rm", container)
        self._set_all(container, False if done else None)

    def network_rm(self, rng) -> None:
        self._cnm("network rm", "network", "rm", self.network(rng.randrange(NETWORKS_PER_WORKER)))

    def prune(self, rng) -> None:
        self._cnm("network prune", "network", "prune", "-f")


@dataclass
class Killer:
    system: System
    seed: int
    every: tuple[float, float] = (5.0, 20.0)
    down_for: tuple[float, float] = (0.5, 3.0)
    kills: collections.Counter = field(default_factory=collections.Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(self.seed)
        while not self.stop.wait(rng.uniform(*self.every)):
            name = rng.choice(COMPONENTS)
            self.system.kill(name)
            self.kills[name] += 1
            time.sleep(rng.uniform(*self.down_for))
            self.system.start(name)


@dataclass
class Checker:
    """Every few seconds, every container's addresses: none may be in two at once."""

    system: System
    every: float = 3.0
    checks: int = 0
    doubles: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.check()

    def check(self) -> None:
        holders: dict[str, list[str]] = collections.defaultdict(list)
        for name in self.system.sandbox_names():
            shown = subprocess.run(["ip", "-n", name, "-j", "-4", "addr", "show"],
                                   capture_output=True, text=True, check=False).stdout
            for link in json.loads(shown or "[]"):
                for info in link.get("addr_info", []):
                    if not ipaddress.ip_address(info["local"]).is_loopback:
                        holders[info["local"]].append(name)
        self.checks += 1
        for address, names in holders.items():
            if len(names) > 1:
                self.doubles.append(f"{address} in {', '.join(sorted(names))}")
