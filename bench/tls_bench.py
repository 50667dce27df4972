"""Connect through the orchestrator with mutual TLS on every link, against plaintext.

Two whole systems side by side in one run (bench/e2e_bench.py's System: a
redis-server, IPAM, an agent in a host namespace of its own, the
orchestrator), one with certificates from `cnm pki` on every link
(client -> orchestrator -> IPAM and -> agent), one in plaintext. Connects
with one port mapping alternate between the two, each into a fresh
container namespace, so that the machine's noise falls on both alike.

Target (issue 10): TLS connect p50 within 1.10x of plaintext. Channels are
long-lived, so no handshake is in a connect's path.

    .venv/bin/python bench/tls_bench.py [--iterations 40]
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

from bench.common import Namespaces, summary
from bench.e2e_bench import Client, System
from cnm import pki
from cnm.orchestrator.v1 import orchestrator_pb2 as pb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40, help="connects per side")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-tls-bench-"))
    certificates = workdir / "pki"
    pki.init_ca(certificates)
    pki.issue(certificates, "ipam", "ipam", sans=("127.0.0.1",))
    pki.issue(certificates, "orchestrator", "orchestrator", sans=("127.0.0.1",))
    pki.issue(certificates, "agent", "agent", host_id="bench", sans=("localhost",))
    pki.issue(certificates, "admin", "admin")
    systems = {"plaintext": System(workdir / "plain"),
               "mutual TLS": System(workdir / "tls", tls_dir=certificates)}
    containers = Namespaces("cnmt")
    try:
        clients = {name: Client(system) for name, system in systems.items()}
        for name, client in clients.items():
            client.stub.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
                name="benchnet", subnet="10.88.0.0/16")), timeout=30)
        timings: dict[str, list[float]] = {name: [] for name in systems}
        for i in range(args.iterations + 2):  # the first two warm up
            for name, client in clients.items():
                netns = containers.make_one()
                took = client.connect("benchnet", f"c{i}", netns, 20000 + i)
                if i >= 2:
                    timings[name].append(took)
        print(f"# connect with one port mapping through the orchestrator, "
              f"{args.iterations} each, alternating")
        for name, values in timings.items():
            print(f"{name:11} {summary(values)}")
        ratio = statistics.median(timings["mutual TLS"]) / statistics.median(timings["plaintext"])
        print(f"mutual TLS / plaintext p50: {ratio:.2f}x (target <= 1.10x) "
              f"{'OK' if ratio <= 1.10 else 'MISSED'}")
    finally:
        containers.remove_all()
        for system in systems.values():
            system.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
