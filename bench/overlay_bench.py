"""Overlay networks across three simulated hosts: creation, connect, first packet.

Everything runs on this machine in namespaces it makes and removes: a real
redis-server, ``python -m ipam_service``, ``python -m orchestrator`` and, in
three host namespaces joined by an underlay bridge (10.99.0.1-3), three
``python -m netdriver_service`` agents that register and heartbeat. Sandboxes
are made beforehand (not timed).

- create: ``CreateNetwork`` with the overlay driver until it returns with the
  network on all three hosts (bridge, VXLAN device, peers), then the time
  until two fresh containers on two hosts exchange a first TCP answer;
- connect: ``ConnectContainer`` p50 on an overlay network against a bridge
  network, same host, same orchestrator (target: overlay within 1.3x);
- first packet: after connecting a on host 1 and b on host 2, the FDB and
  neighbour entries for b on host 1 are shown *before* any packet, then a's
  first ping to b, with the frames the uninvolved host 3 received meanwhile
  (IPv4/ARP, not multicast): 0 means nothing was flooded.

    .venv/bin/python bench/overlay_bench.py [--iterations 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from bench.common import Namespaces, summary, verdict
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from netdriver_service.names import vxlan_name
from tests import support
from tests.multihost.cluster import MultiHost
from tests.netdriver import harness


def host_namespaces(namespaces: Namespaces):
    """A factory of host namespaces as tests/support.Underlay wants them (support.Netns),
    made and removed by ``namespaces``."""

    def make(prefix: str = "") -> support.Netns:
        namespace = support.Netns.existing(namespaces.make_one())
        namespace.run("ip", "link", "set", "lo", "up")
        return namespace

    return make


def sandbox(cluster: MultiHost, host, name: str) -> str:
    full = f"cnm-{host.host_id}-{name}"
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=full, host_id=host.host_id))
    return full


def connect_ms(cluster: MultiHost, network: str, host, container: str) -> tuple[float, pb.Endpoint]:
    started = time.perf_counter()
    endpoint = cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network=network, container_id=container, host_id=host.host_id, sandbox=container,
    )).endpoint
    return (time.perf_counter() - started) * 1000, endpoint


def count_frames(host, device: str) -> None:
    host.ns.run("nft", "-f", "-", input=(
        "table bridge cnmbench {\n chain counted {\n"
        " type filter hook prerouting priority 0;\n"
        f' iifname "{device}" ether type {{ ip, arp }} meta pkttype != multicast counter\n'
        " }\n}\n"
    ))


def frames(host) -> int:
    out = host.ns.run("nft", "-j", "list", "chain", "bridge", "cnmbench", "counted").stdout
    rules = [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
    return next(e["counter"]["packets"] for e in rules[0]["expr"] if "counter" in e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    if not support.IS_ROOT:
        sys.exit("needs root: network namespaces, netlink, nftables")
    namespaces = Namespaces("cnmt-b")
    with tempfile.TemporaryDirectory(prefix="cnm-overlay-bench-") as tmp:
        workdir = Path(tmp)
        redis = support.RedisServer(workdir / "redis", appendonly=False).start()
        # The orchestrator's default intervals, as deployed (the tests shorten them).
        cluster = MultiHost(tmp=workdir, redis_url=redis.url,
                            underlay=support.Underlay(host_namespaces(namespaces)),
                            orchestrator_args=())
        try:
            cluster.start()
            h1, h2, h3 = (cluster.add_host() for _ in range(3))
            run(cluster, h1, h2, h3, args.iterations, workdir)
        finally:
            cluster.stop()
            redis.stop()
            namespaces.remove_all()


def run(cluster: MultiHost, h1, h2, h3, iterations: int, workdir: Path) -> None:
    print("# overlay network create, 3 hosts")
    creates = []
    for number in range(5):
        started = time.perf_counter()
        cluster.call("CreateNetwork", pb.CreateNetworkRequest(network=pb.Network(
            name=f"warm{number}", driver=pb.DRIVER_OVERLAY, subnet=f"10.{100 + number}.0.0/16")))
        creates.append((time.perf_counter() - started) * 1000)
    print(f"CreateNetwork (on all 3 hosts, peers pushed)  {summary(creates)}")
    a_ns, b_ns = sandbox(cluster, h1, "first-a"), sandbox(cluster, h2, "first-b")
    started = time.perf_counter()
    made = cluster.call("CreateNetwork", pb.CreateNetworkRequest(network=pb.Network(
        name="appnet", driver=pb.DRIVER_OVERLAY, subnet="10.20.0.0/16"))).network
    created = time.perf_counter()
    ready = [h.host_id for h in cluster.inspect("appnet").hosts if h.ready]
    connect_ms(cluster, "appnet", h1, a_ns)
    _, b = connect_ms(cluster, "appnet", h2, b_ns)
    echo = harness.Server(b_ns, 7000, log_dir=workdir)
    try:
        answered = harness.ask(a_ns, b.address, 7000)
    finally:
        echo.stop()
    usable = time.perf_counter()
    print(f"create returned after {(created - started) * 1000:.1f} ms, ready on "
          f"{len(ready)}/3 hosts; two containers on two hosts connected and answered "
          f"({answered}) {(usable - started) * 1000:.1f} ms after the create began")

    print(f"\n# connect p50, {iterations} sequential, overlay (3 hosts) vs bridge")
    cluster.call("CreateNetwork", pb.CreateNetworkRequest(network=pb.Network(
        name="bridgenet", driver=pb.DRIVER_BRIDGE, subnet="10.30.0.0/16")))
    containers = [sandbox(cluster, h1, f"c{index}") for index in range(2 * iterations + 4)]
    for warm in containers[:2]:
        connect_ms(cluster, "bridgenet", h1, warm)
        connect_ms(cluster, "appnet", h1, warm)
    bridge, overlay = [], []
    for index in range(iterations):
        # Interleaved, so that drift affects both alike.
        bridge.append(connect_ms(cluster, "bridgenet", h1, containers[4 + 2 * index])[0])
        overlay.append(connect_ms(cluster, "appnet", h1, containers[5 + 2 * index])[0])
    print(f"bridge   {summary(bridge)}")
    print(f"overlay  {summary(overlay)}")
    ratio = statistics.median(overlay) / statistics.median(bridge)
    print(f"overlay p50 is {ratio:.2f}x bridge (target <= 1.3) {verdict(ratio <= 1.3)}")

    print("\n# first packet between two hosts: entries present before it, nothing flooded")
    x_ns, y_ns = sandbox(cluster, h1, "x"), sandbox(cluster, h2, "y")
    _, x = connect_ms(cluster, "appnet", h1, x_ns)
    _, y = connect_ms(cluster, "appnet", h2, y_ns)
    device = vxlan_name(made.network_id)
    fdb = [line for line in h1.fdb(device).splitlines() if y.mac_address in line]
    neighbours = [line for line in h1.neighbours(device).splitlines() if y.address in line]
    print(f"on {h1.host_id} before any packet, FDB for y ({y.mac_address}):")
    for line in fdb:
        print(f"    bridge fdb: {line}")
    for line in neighbours:
        print(f"    ip neigh:   {line}")
    back = [line for line in h2.neighbours(device).splitlines() if x.address in line]
    print(f"on {h2.host_id}, the way back:  ip neigh: {back[0] if back else 'MISSING'}")
    count_frames(h3, device)
    before = frames(h3)
    out = support.Netns.existing(x_ns).run("ping", "-c", "1", "-W", "1", y.address,
                                           check=False).stdout
    rtt = out.split("time=")[1].split()[0] if "time=" in out else "lost"
    flooded = frames(h3) - before
    print(f"first ping x -> y: {rtt} ms; frames host 3 received meanwhile: {flooded} "
          f"{verdict(bool(fdb) and bool(neighbours) and flooded == 0 and rtt != 'lost')}")


if __name__ == "__main__":
    main()
