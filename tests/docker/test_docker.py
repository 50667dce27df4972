"""Debian's dockerd driving cnm through cnm-docker-plugin, on simulated hosts.

Each host is a namespace of the multi-host cluster (tests/multihost/cluster.py: real
orchestrator, IPAM and agents, mutual TLS) with a dockerd of its own started in it
(tests/compose/daemon.py; its own data, exec root, socket, and a plugin directory of
its own seen at /run/docker/plugins) and a cnm-docker-plugin serving that directory.
The image is a busybox root filesystem imported offline (`docker import`)."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.compose.daemon import DockerDaemon
from tests.docker.image import busybox_tar
from tests.multihost.cluster import MultiHost, tls_args

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]
PLUGIN = str(Path(support.PYTHON).with_name("cnm-docker-plugin"))
IMAGE = "cnm-busybox:test"
CNM_NET = "docker-10.47.0.0-24"  # the cnm network of the Docker networks "dnet"
NET = ["network", "create", "-d", "cnm", "--ipam-driver", "cnm"]


class DockerHost:
    """A dockerd and its cnm-docker-plugin on one host of the cluster."""

    def __init__(self, cluster: MultiHost, index: int, workdir: Path, image: Path,
                 daemon_args: tuple[str, ...] = ()) -> None:
        self.host = cluster.hosts[index]
        self.workdir = workdir / self.host.host_id
        plugins = self.workdir / "plugins"
        plugins.mkdir(parents=True)
        self.plugin = support.Process(
            [PLUGIN, "--socket", str(plugins / "cnm.sock"), "--orchestrator",
             cluster.address, "--host-id", self.host.host_id, *tls_args(cluster.pki, "admin")],
            log_path=self.workdir / "plugin.log")
        support.wait_for(lambda: (plugins / "cnm.sock").exists(), 20, 0.05, "the plugin")
        self.daemon = DockerDaemon(self.host.ns, self.workdir, plugins_dir=plugins,
                                   extra_args=daemon_args).start()
        self.docker("import", str(image), IMAGE)

    def docker(self, *args: str, check: bool = True):
        done = self.daemon.docker(*args, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done

    def fails(self, *args: str) -> str:
        done = self.docker(*args, check=False)
        assert done.returncode != 0, f"docker {' '.join(args)} succeeded: {done.stdout}"
        return done.stderr.strip()

    def address(self, container: str, network: str) -> str:
        state = self.daemon.inspect(container)
        return state["NetworkSettings"]["Networks"][network]["IPAddress"]

    def stop(self) -> None:
        self.daemon.stop()
        self.plugin.stop()


@pytest.fixture
def docker_hosts(redis_url, netns, tmp_path):
    cluster = MultiHost(tmp=tmp_path, redis_url=redis_url,
                        underlay=support.Underlay(netns)).start()
    hosts = []
    try:
        for _ in range(2):
            cluster.add_host()
        image = busybox_tar(tmp_path)
        for index in range(2):
            # The second daemon keeps its containers running while it restarts.
            hosts.append(DockerHost(cluster, index, tmp_path, image,
                                    ("--live-restore",) if index else ()))
        yield cluster, hosts
    finally:
        for host in hosts:
            host.stop()
        cluster.stop()


def endpoints(cluster) -> list[pb.Endpoint]:
    return list(cluster.call("ListEndpoints", pb.ListEndpointsRequest()).endpoints)


def http_get(ns: support.Netns, url: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        done = ns.run("python3", "-c", "import urllib.request, sys; sys.stdout.write("
                      f"urllib.request.urlopen({url!r}, timeout=2).read().decode())",
                      check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done.stdout
        time.sleep(0.2)


WEB = ["sh", "-c", "echo hello from cnm > /www/index.html && exec httpd -f -p 80 -h /www"]


def test_two_docker_daemons_share_one_cnm_overlay_network(docker_hosts):
    cluster, (one, two) = docker_hosts
    for host in (one, two):
        host.docker(*NET, "--subnet", "10.47.0.0/24", "--ip-range", "10.47.0.128/25",
                    "-o", "cnm.driver=overlay", "dnet")
    (network,) = cluster.call("ListNetworks", pb.ListNetworksRequest()).networks
    assert (network.name, network.driver, network.ip_range) == (
        "docker-10.47.0.0-24", pb.DRIVER_OVERLAY, "10.47.0.128/25")
    one.docker("run", "-d", "--name", "web", "--network", "dnet", "-p", "8080:80", IMAGE,
               *WEB)
    two.docker("run", "-d", "--name", "box", "--network", "dnet", IMAGE, "sleep", "600")
    two.docker("run", "-d", "--name", "fixed", "--network", "dnet", "--ip", "10.47.0.9",
               IMAGE, "sleep", "600")
    web, box = one.address("web", "dnet"), two.address("box", "dnet")
    assert web != box and all(a.startswith("10.47.0.") and int(a.split(".")[3]) >= 128
                              for a in (web, box))
    assert two.address("fixed", "dnet") == "10.47.0.9"
    # Across hosts by address, both ways; the default route is the network's gateway.
    two.docker("exec", "box", "ping", "-c", "1", "-W", "3", web)
    one.docker("exec", "web", "ping", "-c", "1", "-W", "3", box)
    assert "default via 10.47.0.1" in two.docker("exec", "box", "ip", "route").stdout
    # The published port, from the other host (no docker-proxy: cnm's nftables).
    assert http_get(two.host.ns, f"http://{one.host.underlay_ip}:8080/") == \
        "hello from cnm\n"
    recorded = {e.container_id: e for e in endpoints(cluster)}
    assert len(recorded) == 3 and all(e.peer_on_host and e.address_reserved
                                      for e in recorded.values())
    held = cluster.allocations(CNM_NET)
    assert sorted(held) == sorted(["10.47.0.1", web, box, "10.47.0.9"])

    # Bad input: a clear error, nothing allocated.
    before = (len(endpoints(cluster)), cluster.allocations(CNM_NET))
    assert "overlaps" in one.fails(*NET, "--subnet", "10.47.0.0/16", "wide")
    assert "unknown option" in one.fails(*NET, "--subnet", "10.48.0.0/24", "-o", "color=red",
                                         "odd")
    assert "in use" in one.fails("run", "-d", "--network", "dnet", "--ip", "10.47.0.9",
                                 IMAGE, "sleep", "1")
    assert "published" in one.fails("run", "-d", "--network", "dnet", "-p", "8080:80",
                                    IMAGE, "sleep", "1")
    # A port Docker's own bridge driver published (its docker-proxy holds it).
    one.docker("network", "create", "-d", "bridge", "--subnet", "10.99.0.0/24", "plain")
    one.docker("run", "-d", "--name", "proxied", "--network", "plain", "-p", "8090:80",
               IMAGE, "sleep", "600")
    assert "8090/tcp is in use on the host" in one.fails(
        "run", "-d", "--network", "dnet", "-p", "8090:80", IMAGE, "sleep", "1")
    one.docker("rm", "-f", "proxied")
    one.docker("network", "rm", "plain")
    # A host port Docker would pick, or one of a range: cnm publishes given ports only.
    for ports in ("80", "9000-9001:80"):
        assert "one given host port" in one.fails(
            "run", "-d", "--network", "dnet", "-p", ports, IMAGE, "sleep", "1")
    one.docker("container", "prune", "-f")
    assert (len(endpoints(cluster)), cluster.allocations(CNM_NET)) == before
    # Ranges of the same length are port by port: each a given host port.
    one.docker("run", "-d", "--name", "ranged", "--network", "dnet", "-p", "9000-9001:80-81",
               IMAGE, "sleep", "600")
    [ranged] = [e for e in endpoints(cluster) if e.container_id not in recorded]
    assert sorted((m.host_port, m.container_port) for m in ranged.port_mappings) == \
        [(9000, 80), (9001, 81)]
    one.docker("rm", "-f", "ranged")
    assert (len(endpoints(cluster)), cluster.allocations(CNM_NET)) == before
    assert [n.name for n in cluster.call("ListNetworks", pb.ListNetworksRequest()).networks] \
        == ["docker-10.47.0.0-24"]

    # Gone: every container, then the networks; nothing left in cnm.
    one.docker("rm", "-f", "web")
    two.docker("rm", "-f", "box", "fixed")
    assert endpoints(cluster) == []
    assert cluster.allocations(CNM_NET) == {"10.47.0.1": "cnm:gateway"}
    one.docker("network", "rm", "dnet")
    two.docker("network", "rm", "dnet")
    assert cluster.call("ListNetworks", pb.ListNetworksRequest()).networks == []
    for host in (one, two):
        leftover = json.loads(host.host.ns.run("ip", "-j", "link", "show").stdout)
        assert not [link["ifname"] for link in leftover
                    if link["ifname"].startswith(("cv", "cp"))]


def test_a_dual_stack_overlay_network_of_two_daemons(docker_hosts):
    cluster, (one, two) = docker_hosts
    dual = [*NET, "--ipv6", "--subnet", "10.52.0.0/24", "--subnet", "fd00:52::/64",
            "-o", "cnm.driver=overlay", "-o", "cnm.name=dual"]
    for host in (one, two):
        host.docker(*dual, "d6")
    network = cluster.inspect("dual")
    assert (network.subnet, network.ipv6_subnet, network.ipv6_gateway) == (
        "10.52.0.0/24", "fd00:52::/64", "fd00:52::1")
    one.docker("run", "-d", "--name", "web6", "--network", "d6", IMAGE, *WEB)
    two.docker("run", "-d", "--name", "box6", "--network", "d6", "--ip6", "fd00:52::9",
               IMAGE, "sleep", "600")
    web = one.daemon.inspect("web6")["NetworkSettings"]["Networks"]["d6"]
    assert web["GlobalIPv6Address"].startswith("fd00:52::") and web["GlobalIPv6PrefixLen"] == 64
    assert two.daemon.inspect("box6")["NetworkSettings"]["Networks"]["d6"][
        "GlobalIPv6Address"] == "fd00:52::9"
    # IPv6 across hosts, to the web server; the IPv6 default route is the gateway.
    # (busybox's wget fails on an IPv6 URL: nc makes the request)
    fetch = (f"until printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 "
             f"{web['GlobalIPv6Address']} 80; do sleep 0.2; done")
    assert "hello from cnm" in two.docker("exec", "box6", "timeout", "20", "sh", "-c",
                                          fetch).stdout
    assert "default via fd00:52::1" in two.docker("exec", "box6", "ip", "-6", "route").stdout
    recorded = endpoints(cluster)
    assert sorted(e.ipv6_address for e in recorded) == sorted(
        [web["GlobalIPv6Address"], "fd00:52::9"])
    held6 = cluster.allocations("dual", ipv6=True)
    assert sorted(held6) == sorted(["fd00:52::1", web["GlobalIPv6Address"], "fd00:52::9"])

    # Bad input: a clear error, nothing allocated.
    assert "in use" in one.fails("run", "-d", "--network", "d6", "--ip6", "fd00:52::9",
                                 IMAGE, "sleep", "1")
    assert "other options" in one.fails(*NET, "--subnet", "10.52.0.0/24", "-o",
                                        "cnm.driver=overlay", "-o", "cnm.name=dual", "v4only")
    assert "subnet" in one.fails(*NET, "--ipv6", "--subnet", "10.53.0.0/24", "nov6")
    assert "overlaps" in one.fails(*NET, "--ipv6", "--subnet", "10.54.0.0/24", "--subnet",
                                   "fd00:52::/48", "wide6")
    one.docker("container", "prune", "-f")
    assert cluster.allocations("dual", ipv6=True) == held6
    assert len(endpoints(cluster)) == 2

    one.docker("rm", "-f", "web6")
    two.docker("rm", "-f", "box6")
    assert endpoints(cluster) == []
    assert cluster.allocations("dual", ipv6=True) == {"fd00:52::1": "cnm:gateway"}
    for host in (one, two):
        host.docker("network", "rm", "d6")
    assert cluster.call("ListNetworks", pb.ListNetworksRequest()).networks == []


def plugin_post(socket: Path, path: str, body: bytes) -> tuple[int, dict]:
    """A raw call to the plugin, as dockerd makes it."""
    import http.client
    import socket as socket_module

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket_module.socket(socket_module.AF_UNIX)
            self.sock.connect(str(socket))

    connection = UnixConnection("localhost", timeout=10)
    try:
        connection.request("POST", path, body=body,
                           headers={"Content-Type": "application/vnd.docker.plugins.v1+json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_bridge_networks_connect_disconnect_internal_and_restarts(docker_hosts):
    cluster, (one, _) = docker_hosts
    one.docker(*NET, "--subnet", "10.49.0.0/24", "front")
    one.docker(*NET, "--subnet", "10.50.0.0/24", "--internal", "back")
    front, back = (cluster.call("GetNetwork", pb.GetNetworkRequest(network=name)).network
                   for name in ("docker-10.49.0.0-24", "docker-10.50.0.0-24"))
    assert (front.driver, front.internal, back.internal) == (pb.DRIVER_BRIDGE, False, True)
    one.docker("run", "-d", "--name", "app", "--network", "front", "-p", "8081:80", IMAGE, *WEB)
    one.docker("run", "-d", "--name", "db", "--network", "back", IMAGE, "sleep", "600")
    # docker network connect / disconnect of a running container.
    one.docker("network", "connect", "back", "app")
    app_back, db_back = one.address("app", "back"), one.address("db", "back")
    one.docker("exec", "db", "ping", "-c", "1", "-W", "3", app_back)
    assert "default via" not in one.docker("exec", "db", "ip", "route").stdout  # internal
    assert len(endpoints(cluster)) == 3
    one.docker("network", "disconnect", "back", "app")
    assert len(endpoints(cluster)) == 2
    assert db_back != app_back and app_back not in cluster.allocations("docker-10.50.0.0-24")
    assert "active endpoints" in one.fails("network", "rm", "back")

    # The plugin restarted while dockerd runs: nothing of it is lost.
    one.plugin.stop()
    socket = Path(one.plugin.args[2])
    one.plugin = support.Process(one.plugin.args, log_path=one.workdir / "plugin-2.log")
    support.wait_for(socket.exists, 20, 0.05, "the plugin again")
    assert http_get(one.host.ns, "http://127.0.0.1:8081/") == "hello from cnm\n"
    # The agent restarted while dockerd runs: the containers keep their interfaces.
    one.host.stop()
    one.host.start()
    cluster.wait_registered(one.host)
    assert http_get(one.host.ns, "http://127.0.0.1:8081/") == "hello from cnm\n"
    assert f"inet {db_back}/24" in one.docker("exec", "db", "ip", "addr", "show", "eth0").stdout
    assert len(endpoints(cluster)) == 2
    one.docker("rm", "-f", "db")
    assert {e.container_id for e in endpoints(cluster)} == \
        {one.daemon.inspect("app")["NetworkSettings"]["Networks"]["front"]["EndpointID"]}

    # No --subnet: cnm chooses one from its default address pools, and gives it back
    # with the network.
    one.docker(*NET, "auto")
    subnet = one.daemon.inspect("auto")["IPAM"]["Config"][0]["Subnet"]
    assert cluster.inspect(f"docker-{subnet.replace('/', '-')}").subnet == subnet
    one.docker("run", "-d", "--name", "onauto", "--network", "auto", IMAGE, "sleep", "600")
    assert ipaddress.ip_address(one.address("onauto", "auto")) in ipaddress.ip_network(subnet)
    one.docker("rm", "-f", "onauto")
    one.docker("network", "rm", "auto")
    # A create that fails gives its pool back: that deletes nothing, not the cnm network
    # of another Docker network on the same subnet, even with no endpoint on it.
    one.docker(*NET, "--subnet", "10.55.0.0/24", "lonely")
    assert "other options" in one.fails(*NET, "--subnet", "10.55.0.0/24", "--internal",
                                        "lonely2")
    assert cluster.inspect("docker-10.55.0.0-24").subnet == "10.55.0.0/24"
    one.docker("network", "rm", "lonely")
    assert [n.name for n in cluster.call("ListNetworks", pb.ListNetworksRequest()).networks] \
        == ["docker-10.49.0.0-24", "docker-10.50.0.0-24"]

    # Malformed calls: Docker's {"Err": ...}, an HTTP error, never a traceback.
    status, answer = plugin_post(socket, "/NetworkDriver.CreateEndpoint", b"{not json")
    assert status == 400 and "not JSON" in answer["Err"]
    status, answer = plugin_post(socket, "/IpamDriver.RequestAddress", b"[]")
    assert status == 400 and "JSON object" in answer["Err"]
    status, answer = plugin_post(socket, "/IpamDriver.RequestPool", b'{"Pool": "10.1.2.3/8"}')
    assert status == 400 and "host bits" in answer["Err"]

    # dockerd restarted: its containers stop and give everything back.
    one.daemon.stop_daemon()
    assert endpoints(cluster) == []
    one.daemon.start()
    one.docker("rm", "-f", "app")
    for name in ("front", "back"):
        one.docker("network", "rm", name)
    assert cluster.call("ListNetworks", pb.ListNetworksRequest()).networks == []


def test_a_live_restore_daemon_restarts_under_running_containers(docker_hosts):
    cluster, (_, two) = docker_hosts
    two.docker(*NET, "--subnet", "10.51.0.0/24", "live")
    two.docker("run", "-d", "--name", "kept", "--network", "live", "-p", "8082:80", IMAGE,
               *WEB)
    before = endpoints(cluster)
    two.daemon.stop_daemon()
    assert http_get(two.host.ns, "http://127.0.0.1:8082/") == "hello from cnm\n"
    assert endpoints(cluster) == before
    two.daemon.start()
    assert http_get(two.host.ns, "http://127.0.0.1:8082/") == "hello from cnm\n"
    two.docker("rm", "-f", "kept")
    two.docker("network", "rm", "live")
    assert endpoints(cluster) == []
    assert cluster.call("ListNetworks", pb.ListNetworksRequest()).networks == []
