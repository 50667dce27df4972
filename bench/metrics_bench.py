"""What observability costs a connect: metrics and request ids on against off, side by
side in one run, and the size of one scrape of each service at 1,000 endpoints.

Two whole systems run at once (bench/e2e_bench.py's System: redis, IPAM, one agent in
a host namespace, the orchestrator, each in its own namespaces and ports):

- "off": no ``--metrics-listen``; the client sends no ``traceparent`` (each service
  still starts a trace id of its own: ids cannot be turned off, they cost a random
  token and a context variable per call, measured apart below);
- "on": every service serves metrics and a scraper reads all three every second
  (15 times Prometheus' default rate), and every connect carries a ``traceparent``.

Connects alternate between the two in blocks (off, on, off, on...) so that the noise
of this shared machine falls on both alike; each connect has one port mapping and a
fresh container namespace, and is disconnected after. Target (issue 16): connect p50
on <= 1.05x off.

Then the "on" system is filled to ``--scale`` endpoints and each service scraped
once: bytes, samples and time of the scrape.

    .venv/bin/python bench/metrics_bench.py [--rounds 8] [--block 10] [--scale 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from bench.common import Namespaces, enter_namespace, summary, verdict
from bench.e2e_bench import Client, System, concurrent
from cnm import tracing
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support

SERVICES = ("ipam", "orchestrator", "agent")


class TracedClient(Client):
    """A client that sends a ``traceparent`` with every call, as the CLI does."""

    def connect(self, network: str, container: str, netns: str, port: int) -> float:
        started = time.perf_counter()
        self.stub.ConnectContainer(pb.ConnectContainerRequest(
            network=network, container_id=container, host_id=self.host_id,
            sandbox=f"/var/run/netns/{netns}",
            port_mappings=[pb.PortMapping(host_port=port, container_port=80)]),
            timeout=30, metadata=tracing.outgoing())
        return (time.perf_counter() - started) * 1000

    def disconnect(self, network: str, container: str) -> None:
        self.stub.DisconnectContainer(pb.DisconnectContainerRequest(
            network=network, container_id=container), timeout=30, metadata=tracing.outgoing())


def scrape(system: System, service: str) -> tuple[bytes, float]:
    """One scrape of ``service`` (its body and time in ms), from the namespace it
    listens in: the agent's host namespace, else this one."""
    url = f"http://127.0.0.1:{system.metrics_ports[service]}/metrics"
    result: list = []

    def get() -> None:
        if service == "agent":
            with open(system.host.path, "rb") as namespace:
                enter_namespace(namespace.fileno())  # this thread only
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as answer:
            result.append(answer.read())
        result.append((time.perf_counter() - started) * 1000)

    thread = threading.Thread(target=get)  # a thread of its own: setns stays with it
    thread.start()
    thread.join()
    if len(result) != 2:
        raise RuntimeError(f"scrape of {service} failed")
    return result[0], result[1]


class Scraper:
    """Scrapes every service of a system every ``interval`` seconds until stopped."""

    def __init__(self, system: System, interval: float) -> None:
        self.system, self.interval = system, interval
        self.stopped = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            for service in SERVICES:
                scrape(self.system, service)
                self.scrapes += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def trace_cost_us() -> float:
    """Microseconds the request-id code adds per connect: a service's ``begin`` for each
    of the three RPCs a connect makes (orchestrator, IPAM, agent) and an ``outgoing``
    for each of the orchestrator's two calls."""
    metadata = tracing.outgoing()
    loops = 20000
    begin = timeit.timeit(lambda: tracing.begin(metadata), number=loops) / loops
    outgoing = timeit.timeit(tracing.outgoing, number=loops) / loops
    return (3 * begin + 2 * outgoing) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="blocks per side")
    parser.add_argument("--block", type=int, default=10, help="connects per block")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between two scrapes of the 'on' system")
    parser.add_argument("--scale", type=int, default=1000,
                        help="endpoints present for the scrape sizes (0 skips them)")
    parser.add_argument("--clients", type=int, default=8, help="clients filling to --scale")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-metrics-bench-"))
    containers = Namespaces("cnmm")
    systems: dict[str, System] = {}
    scraper = None
    try:
        (workdir / "off").mkdir()
        (workdir / "on").mkdir()
        systems["off"] = System(workdir / "off")
        systems["on"] = System(workdir / "on", metrics_ports={
            name: support.free_port() for name in SERVICES})
        clients = {"off": Client(systems["off"]), "on": TracedClient(systems["on"])}
        for side, client in clients.items():
            client.stub.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
                name="bench", subnet="10.68.0.0/16")), timeout=30)
            [warm] = containers.make(1)
            client.connect("bench", "warm", warm, 1000)
            client.disconnect("bench", "warm")
        scraper = Scraper(systems["on"], args.scrape_interval)
        times: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                client = clients[side]
                for i, netns in enumerate(containers.make(args.block)):
                    name = f"r{round_}-{i}"
                    times[side].append(client.connect("bench", name, netns, 20000 + i))
                    client.disconnect("bench", name)
        scraper.stop()
        print(f"# connect with one port mapping, {args.rounds} alternating blocks of "
              f"{args.block} per side; 'on' scraped every {args.scrape_interval:g} s "
              f"({scraper.scrapes} scrapes)")
        print(f"metrics and ids off  {summary(times['off'])}")
        print(f"metrics and ids on   {summary(times['on'])}")
        ratio = statistics.median(times["on"]) / statistics.median(times["off"])
        print(f"on/off p50 {ratio:.3f} (target <= 1.05) {verdict(ratio <= 1.05)}")
        cost = trace_cost_us()
        print(f"request ids: {cost:.1f} us of code per connect "
              f"({cost / 10 / statistics.median(times['off']):.3f}% of the 'off' p50)")

        if args.scale:
            on = clients["on"]
            fillers = [TracedClient(systems["on"]) for _ in range(args.clients)]
            jobs = list(enumerate(containers.make(args.scale)))
            started = time.perf_counter()
            concurrent(args.clients, jobs, lambda c, job: fillers[c].connect(
                "bench", f"fill{job[0]}", job[1], 30000 + job[0]))
            print(f"\n# one scrape of each service at {args.scale} endpoints "
                  f"(filled in {time.perf_counter() - started:.0f} s)")
            for service in SERVICES:
                body, took = scrape(systems["on"], service)
                samples = sum(1 for line in body.decode().splitlines()
                              if line and not line.startswith("#"))
                print(f"{service:13s} {len(body):7d} bytes  {samples:4d} samples  "
                      f"{took:6.1f} ms")
            on.stub.DeleteNetwork(pb.DeleteNetworkRequest(network="bench", force=True),
                                  timeout=600)
    finally:
        if scraper is not None:
            scraper.stop()
        for system in systems.values():
            with contextlib.suppress(Exception):
                system.stop()
        containers.remove_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
