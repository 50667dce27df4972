"""Dead containers: how fast what they held is given back, and what noticing costs.

A real stack (bench/e2e_bench.System: redis, IPAM, an agent in a host
namespace that registers and heartbeats, the orchestrator with
``--gone-grace 0``), ``--endpoints`` containers connected, each a namespace
made here. Then, one at a time, a container's namespace is deleted with
``ip netns delete`` (its runtime removing it; nobody disconnects it) and
the bench polls the orchestrator every 2 ms for the endpoint:

- *shown gone*: GetEndpoint says ENDPOINT_STATE_GONE (the kernel told the
  agent, the agent tore down and heartbeated at once);
- *released*: GetEndpoint says NOT_FOUND (disconnected, address released).

The peer is polling: the agent's CPU while idle with every endpoint
connected (the link watch costs nothing until a link goes) against the cost
of one look at every endpoint (GetState, what a poll would do each time);
and the reconciler's pass over the agents' state, the way such endpoints
were found before, runs every --host-gc-interval (60 s by default).

    .venv/bin/python bench/dead_container_bench.py [--endpoints 200] [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

import grpc

from bench.common import Namespaces, summary
from bench.e2e_bench import Client, System
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU milliseconds per second process ``pid`` uses over ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) * 1000 / seconds


def wait_state(stub, endpoint_id: str, started: float, gone: list, released: list) -> None:
    """Polls until the endpoint is gone, then released; appends each latency in ms."""
    seen_gone = False
    deadline = started + 30
    while time.perf_counter() < deadline:
        try:
            endpoint = stub.GetEndpoint(pb.GetEndpointRequest(endpoint_id=endpoint_id),
                                        timeout=5).endpoint
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            released.append((time.perf_counter() - started) * 1000)
            if not seen_gone:  # released between two polls: gone no later than that
                gone.append(released[-1])
            return
        if endpoint.state == pb.ENDPOINT_STATE_GONE and not seen_gone:
            seen_gone = True
            gone.append((time.perf_counter() - started) * 1000)
        time.sleep(0.002)
    raise TimeoutError(f"endpoint {endpoint_id} not released within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200, help="containers connected")
    parser.add_argument("--samples", type=int, default=20, help="containers killed, measured")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-dead-bench-"))
    containers = Namespaces("cnmd")
    system = System(workdir, orchestrator_args=("--gone-grace", "0"), heartbeats=True)
    try:
        client = Client(system)
        stub = client.stub
        stub.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="bench", subnet="10.67.0.0/16")), timeout=30)
        time.sleep(2)  # registered, heartbeating
        idle_empty = idle_cpu(system.agent.pid, args.idle)
        names = containers.make(args.endpoints)
        for i, name in enumerate(names):
            client.connect("bench", name, name, 20000 + i)
        endpoint_ids = {e.container_id: e.endpoint_id for e in stub.ListEndpoints(
            pb.ListEndpointsRequest(network="bench", page_size=1000), timeout=30).endpoints}

        # --- what noticing costs -----------------------------------------------------------
        time.sleep(2)  # the connects' aftermath settles
        idle_full = idle_cpu(system.agent.pid, args.idle)
        channel = grpc.insecure_channel(system.agent_address)
        agent = netdriver_pb2_grpc.NetDriverServiceStub(channel)
        polls = []
        for _ in range(10):
            started = time.perf_counter()
            agent.GetState(netdriver_pb2.GetStateRequest(), timeout=30)
            polls.append((time.perf_counter() - started) * 1000)
        channel.close()

        # --- how fast it is given back -------------------------------------------------------
        gone, released = [], []
        for name in names[:args.samples]:
            started = time.perf_counter()
            subprocess.run(["ip", "netns", "delete", name], check=True)
            wait_state(stub, endpoint_ids[name], started, gone, released)
        left = len(stub.GetNetwork(pb.GetNetworkRequest(network="bench"), timeout=30).endpoints)

        print(f"# {args.endpoints} containers connected; {args.samples} killed one at a time "
              "(ip netns delete), orchestrator --gone-grace 0")
        print(f"dead -> shown gone        {summary(gone)}")
        print(f"dead -> address released  {summary(released)}")
        print(f"endpoints left            {left} (want {args.endpoints - args.samples})")
        poll = statistics.median(polls)
        print(f"# noticing: agent CPU while idle, {args.idle:.0f} s each (heartbeats included)")
        print(f"idle, no endpoint         {idle_empty:6.2f} ms/s")
        print(f"idle, {args.endpoints:4d} endpoints     {idle_full:6.2f} ms/s  "
              f"(x{idle_full / max(idle_empty, 0.01):.2f}: the watch costs nothing while "
              "nothing dies)")
        print(f"one look at every endpoint (GetState) p50 {poll:.1f} ms: a 1 s poll would add "
              f"{poll:.1f} ms/s, {poll / max(idle_empty, 0.01):.1f}x the idle agent's whole CPU")
    finally:
        system.stop()
        containers.remove_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
