"""cnm as a CNI plugin against Debian's CNI reference chain, process exec included.

Both sides are exec'd as a runtime execs them, one process per plugin and
verb, with one port mapping per container and a fresh namespace each (made
beforehand, not timed): ``cnm-cni`` (which asks the agent of its host over
its unix socket; bench/e2e_bench.System with heartbeats, so the agent
serves it) against bridge + host-local + portmap in a second host
namespace.

- ADD and DEL latency, sequential;
- 8 concurrent ADDs: throughput, and no address given twice.

Targets (issue 12): ADD p50 <= 1/2 of the chain's, DEL p50 <= 1/3, 8-way ADD
throughput >= 4x.

    .venv/bin/python bench/cni_bench.py [--iterations 40] [--clients 8] [--jobs 80]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from bench.common import CniChain, Namespaces, inside, summary, timed, verdict
from bench.e2e_bench import System, concurrent
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support

PLUGIN = str(Path(support.PYTHON).with_name("cnm-cni"))


class CnmPlugin:
    def __init__(self, socket: str, bin_dir: Path) -> None:
        self.socket = socket
        # Installed as runtimes use it (cnm-cni --install): one file, python -IS.
        self.plugin = subprocess.run([PLUGIN, "--install", str(bin_dir)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        self.addresses: dict[str, str] = {}

    def _exec(self, command: str, container_id: str, netns: str, port: int) -> dict | None:
        config = {"cniVersion": "1.0.0", "name": "benchnet", "type": "cnm",
                  "network": "bench", "socket": self.socket,
                  "runtimeConfig": {"portMappings": [
                      {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}}
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
        done = subprocess.run([self.plugin], input=json.dumps(config), env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cnm-cni {command}: {done.stdout} {done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def add(self, container_id: str, netns: str, port: int) -> None:
        result = self._exec("ADD", container_id, netns, port)
        self.addresses[container_id] = result["ips"][0]["address"]

    def delete(self, container_id: str, netns: str, port: int) -> None:
        self._exec("DEL", container_id, netns, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=80, help="ADDs in the concurrent run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-cni-bench-"))
    containers = Namespaces("cnmc")
    system = System(workdir, heartbeats=True)
    cni_host = support.Netns("cnmc-cni")
    try:
        system.client().CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="bench", subnet="10.68.0.0/16")), timeout=30)
        support.wait_for(lambda: os.path.exists(system.cni_socket), 30, 0.1, "the CNI socket")
        cnm = CnmPlugin(system.cni_socket, workdir / "cni-bin")
        [warm] = containers.make(1)
        cnm.add("warm", warm, 1000)
        cnm.delete("warm", warm, 1000)
        sandboxes = containers.make(args.iterations)
        cnm_add = [timed(cnm.add, f"seq{i}", n, 20000 + i) for i, n in enumerate(sandboxes)]
        cnm_del = [timed(cnm.delete, f"seq{i}", n, 20000 + i) for i, n in enumerate(sandboxes)]
        jobs = list(enumerate(containers.make(args.jobs)))
        cnm_rate = concurrent(args.clients, jobs, lambda _, job: cnm.add(
            f"par{job[0]}", job[1], 30000 + job[0]))
        cnm_parallel = [cnm.addresses[f"par{i}"] for i, _ in jobs]

        chain_sandboxes = containers.make(args.iterations + args.jobs + 1)
        chain = CniChain(workdir / "host-local", name="cnibench", bridge="cni-bench0",
                         subnet="10.79.0.0/16")
        with inside(cni_host.path):
            warm_path = f"/var/run/netns/{chain_sandboxes[-1]}"
            chain.add("warm", warm_path, 1000)
            paths = [f"/var/run/netns/{n}" for n in chain_sandboxes[:args.iterations]]
            chain_add = [timed(chain.add, f"seq{i}", p, 20000 + i) for i, p in enumerate(paths)]
            chain_del = [timed(chain.delete, f"seq{i}", p, 20000 + i)
                         for i, p in enumerate(paths)]
            chain_jobs = [(i, f"/var/run/netns/{n}") for i, n in
                          enumerate(chain_sandboxes[args.iterations:-1])]
            chain_rate = concurrent(args.clients, chain_jobs, lambda _, job: chain.add(
                f"par{job[0]}", job[1], 30000 + job[0]))
            chain_parallel = [chain.results[f"par{i}"]["ips"][0]["address"]
                              for i, _ in chain_jobs]

        add_ratio = statistics.median(chain_add) / statistics.median(cnm_add)
        del_ratio = statistics.median(chain_del) / statistics.median(cnm_del)
        print(f"# one port mapping per container, {args.iterations} sequential, exec included")
        print(f"cnm-cni ADD       {summary(cnm_add)}")
        print(f"CNI chain ADD     {summary(chain_add)}")
        print(f"cnm-cni ADD p50 is 1/{add_ratio:.1f} of the chain's (target <= 1/2) "
              f"{verdict(add_ratio >= 2)}")
        print(f"cnm-cni DEL       {summary(cnm_del)}")
        print(f"CNI chain DEL     {summary(chain_del)}")
        print(f"cnm-cni DEL p50 is 1/{del_ratio:.1f} of the chain's (target <= 1/3) "
              f"{verdict(del_ratio >= 3)}")
        print(f"# {args.clients} concurrent ADDs, {args.jobs} each side")
        print(f"cnm-cni    {cnm_rate:6.1f} ADDs/s, {len(set(cnm_parallel))} distinct addresses "
              f"of {len(cnm_parallel)}")
        print(f"CNI chain  {chain_rate:6.1f} ADDs/s, {len(set(chain_parallel))} distinct "
              f"addresses of {len(chain_parallel)}")
        print(f"cnm-cni is {cnm_rate / chain_rate:.1f}x the chain (target >= 4x) "
              f"{verdict(cnm_rate >= 4 * chain_rate)}")
    finally:
        system.stop()
        cni_host.close()
        containers.remove_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
