"""What dual stack costs a connect: a dual-stack network against an IPv4 one, side by
side in one system, and cnm's dual-stack connect against the CNI chain's dual-stack ADD.

One system (bench/e2e_bench.py's System: redis, IPAM, one agent in a host namespace,
the orchestrator) has two networks, "v4" (10.68.0.0/16) and "dual" (10.69.0.0/16 and
fd00:69::/64). Connects alternate between them in blocks (v4, dual, dual, v4, ...) so
that the noise of this shared machine falls on both alike; each has one port mapping
(published on both families for "dual") and a fresh container namespace, and is
disconnected after. Target (issue 14): dual-stack connect p50 <= 1.2x IPv4 p50.

Then the CNI reference chain (bridge + host-local + portmap) with the same two ranges,
ADDs exec'd one after another from a host namespace of its own, against the dual-stack
connects above. Target: cnm >= 5x faster (its p50 <= 1/5 of the chain's).

    .venv/bin/python bench/dualstack_bench.py [--rounds 8] [--block 10] [--cni 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from bench.common import CniChain, Namespaces, inside, summary, timed, verdict
from bench.e2e_bench import Client, System
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support

NETWORKS = {
    "v4": pb.Network(name="v4", subnet="10.68.0.0/16"),
    "dual": pb.Network(name="dual", subnet="10.69.0.0/16", enable_ipv6=True,
                       ipv6_subnet="fd00:69::/64"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="blocks per side")
    parser.add_argument("--block", type=int, default=10, help="connects per block")
    parser.add_argument("--cni", type=int, default=20, help="CNI chain ADDs (0 skips them)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-dualstack-bench-"))
    containers = Namespaces("cnmd")
    system = System(workdir)
    cni_host = support.Netns("cnmd-cni")
    try:
        client = Client(system)
        for network in NETWORKS.values():
            client.stub.CreateNetwork(pb.CreateNetworkRequest(network=network), timeout=30)
            [warm] = containers.make(1)
            client.connect(network.name, "warm", warm, 1000)
            client.disconnect(network.name, "warm")
        times: dict[str, list[float]] = {"v4": [], "dual": []}
        for round_ in range(args.rounds):
            for side in ("v4", "dual") if round_ % 2 == 0 else ("dual", "v4"):
                for i, netns in enumerate(containers.make(args.block)):
                    name = f"r{round_}-{i}"
                    times[side].append(client.connect(side, name, netns, 20000 + i))
                    client.disconnect(side, name)
                containers.remove_all()
        print(f"# connect with one port mapping, {args.rounds} alternating blocks of "
              f"{args.block} per side")
        print(f"IPv4 network        {summary(times['v4'])}")
        print(f"dual-stack network  {summary(times['dual'])}")
        ratio = statistics.median(times["dual"]) / statistics.median(times["v4"])
        print(f"dual/v4 p50 {ratio:.3f} (target <= 1.2) {verdict(ratio <= 1.2)}")

        if args.cni:
            sandboxes = containers.make(args.cni + 1)
            cni = CniChain(workdir / "host-local", name="dualbench", bridge="cni-dual0",
                           subnet="10.79.0.0/16", subnet6="fd00:79::/64")
            with inside(cni_host.path):
                cni.add("warm", f"/var/run/netns/{sandboxes[-1]}", 1000)
                cni_add = [timed(cni.add, f"seq{i}", f"/var/run/netns/{sandboxes[i]}", 20000 + i)
                           for i in range(args.cni)]
            print(f"\n# dual stack: cnm connect (above) against the CNI chain's ADD, "
                  f"{args.cni} sequential")
            print(f"CNI chain ADD, dual stack  {summary(cni_add)}")
            speedup = statistics.median(cni_add) / statistics.median(times["dual"])
            print(f"cnm dual-stack p50 is 1/{speedup:.1f} of the chain's (target <= 1/5) "
                  f"{verdict(speedup >= 5)}")
    finally:
        system.stop()
        containers.remove_all()
        cni_host.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
