"""cnm as Docker's network driver against Docker's own bridge driver, on one dockerd.

One dockerd (Debian's docker.io) in a host namespace with cnm's agent, IPAM and
orchestrator (bench/e2e_bench.System) and cnm-docker-plugin; the same busybox image
on both sides, built offline. Docker's side is a user-defined bridge network of the
same daemon (started --iptables=false, as the tests run it: ports through docker-proxy).

- `docker network connect` + `disconnect` of a running container, p50 of the pair;
- `docker run -d -p H:80 ... sleep` until it returns (the container running).

Targets (issue 13): connect+disconnect p50 <= the bridge driver's; run <= 1.1x.

    .venv/bin/python bench/docker_bench.py [--iterations 20]
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

from bench.common import print_request_times, summary, timed, verdict
from bench.e2e_bench import System
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.compose.daemon import DockerDaemon
from tests.docker.image import busybox_tar

PLUGIN = str(Path(support.PYTHON).with_name("cnm-docker-plugin"))
IMAGE = "cnm-busybox:bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--trace", action="store_true",
                        help="also print each service's own time per call (p50, ms)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-docker-bench-"))
    system = System(workdir, heartbeats=True, log_level="DEBUG" if args.trace else "WARNING")
    plugins = workdir / "plugins"
    plugins.mkdir()
    plugin = support.Process(
        [PLUGIN, "--socket", str(plugins / "cnm.sock"), "--orchestrator", system.address,
         "--host-id", system.host_id, "--log-level", "DEBUG" if args.trace else "WARNING"],
        log_path=workdir / "plugin.log")
    daemon = None
    try:
        support.wait_for(lambda: (plugins / "cnm.sock").exists(), 20, 0.05, "the plugin")
        support.wait_for(lambda: any(h.host_id == system.host_id for h in system.client()
                                     .ListHosts(pb.ListHostsRequest(), timeout=10).hosts),
                         20, 0.1, "the agent to register")
        daemon = DockerDaemon(system.host, workdir, plugins_dir=plugins).start()
        daemon.docker("import", str(busybox_tar(workdir)), IMAGE)
        daemon.docker("network", "create", "-d", "cnm", "--ipam-driver", "cnm", "--subnet",
                      "10.90.0.0/16", "cnmnet")
        daemon.docker("network", "create", "-d", "bridge", "--subnet", "10.91.0.0/16",
                      "brnet")
        daemon.docker("network", "create", "-d", "bridge", "--subnet", "10.92.0.0/16",
                      "base")
        daemon.docker("run", "-d", "--name", "target", "--network", "base", IMAGE,
                      "sleep", "3600")
        pairs: dict[str, list[float]] = {"cnmnet": [], "brnet": []}
        runs: dict[str, list[float]] = {"cnmnet": [], "brnet": []}
        for network in ("cnmnet", "brnet"):  # warm both paths
            daemon.docker("network", "connect", network, "target")
            daemon.docker("network", "disconnect", network, "target")
        for i in range(args.iterations):
            for network in ("cnmnet", "brnet") if i % 2 else ("brnet", "cnmnet"):
                pairs[network].append(timed(daemon.docker, "network", "connect", network, "target")
                                      + timed(daemon.docker, "network", "disconnect", network,
                                              "target"))
        for i in range(args.iterations):
            for n, network in enumerate(("cnmnet", "brnet") if i % 2 else ("brnet", "cnmnet")):
                port = 20000 + 2 * i + n
                runs[network].append(timed(daemon.docker, "run", "-d", "--name", f"r{network}{i}",
                                           "--network", network, "-p", f"{port}:80", IMAGE,
                                           "sleep", "600"))
        print(f"# one dockerd, {args.iterations} samples each, docker CLI exec included")
        print(f"cnm    connect+disconnect  {summary(pairs['cnmnet'])}")
        print(f"bridge connect+disconnect  {summary(pairs['brnet'])}")
        ratio = statistics.median(pairs["cnmnet"]) / statistics.median(pairs["brnet"])
        print(f"cnm is {ratio:.2f}x the bridge driver (target <= 1) {verdict(ratio <= 1)}")
        print(f"cnm    docker run -d -p        {summary(runs['cnmnet'])}")
        print(f"bridge docker run -d -p        {summary(runs['brnet'])}")
        ratio = statistics.median(runs["cnmnet"]) / statistics.median(runs["brnet"])
        print(f"cnm is {ratio:.2f}x the bridge driver (target <= 1.1) {verdict(ratio <= 1.1)}")
        if args.trace:
            print_request_times(sorted(workdir.glob("*.log")))
    finally:
        if daemon is not None:
            daemon.stop()
        plugin.stop()
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
