"""The agent process (``python -m netdriver_service``) with real nftables, proven with real traffic.

Topology, every part a namespace the tests make:

    internet (10.99.0.2) --- up0 10.99.0.1  HOST (agent)  cl0 10.98.0.1 --- client (10.98.0.2)
                                            |  bridges per network
                                 containers (sandboxes made by the agent, or given by path)
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from netdriver_service.faults import CONNECT_STEPS
from tests import support
from tests.netdriver import harness
from tests.netdriver.harness import ask

pytestmark = pytest.mark.root

HOST_UP, INTERNET, HOST_CLIENT_SIDE, CLIENT = "10.99.0.1", "10.99.0.2", "10.98.0.1", "10.98.0.2"


class Topology:
    def __init__(self, workdir):
        self.namespaces: list[support.Netns] = []
        self.host = self.make("cnmt-h")
        self.internet = self.make("cnmt-i")
        self.client = self.make("cnmt-k")
        support.connect_namespaces(self.host, "up0", f"{HOST_UP}/24",
                                   self.internet, "eth0", f"{INTERNET}/24")
        support.connect_namespaces(self.host, "cl0", f"{HOST_CLIENT_SIDE}/24",
                                   self.client, "eth0", f"{CLIENT}/24")
        self.host.run("ip", "route", "add", "default", "via", INTERNET)
        self.client.run("ip", "route", "add", "default", "via", HOST_CLIENT_SIDE)
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.agent = harness.AgentProcess(self.host, self.state_dir)
        self.sandboxes: list[str] = []
        self.servers: list[harness.Server] = []

    def make(self, prefix: str) -> support.Netns:
        namespace = support.Netns(prefix)
        self.namespaces.append(namespace)
        return namespace

    def sandbox(self) -> str:
        name = f"cnmt-sb-{uuid.uuid4().hex[:8]}"
        self.agent.call("CreateSandbox", pb.CreateSandboxRequest(name=name))
        self.sandboxes.append(name)
        return name

    def serve(self, ns_name: str, port: int, protocol: str = "tcp") -> None:
        self.servers.append(harness.Server(ns_name, port, protocol, self.workdir))

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.agent.stop()
        for name in self.sandboxes:
            harness.delete_namespace(name)
        for namespace in reversed(self.namespaces):
            namespace.close()


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    made = Topology(tmp_path_factory.mktemp("netdriver"))
    yield made
    made.close()


def connect(topo, endpoint_id, network, sandbox, address, **fields):
    return topo.agent.call("CreateEndpoint", pb.CreateEndpointRequest(
        endpoint=pb.Endpoint(endpoint_id=endpoint_id, network_id=network.network_id,
                             sandbox=sandbox, address=address, default_route=True, **fields),
        network=network,
    )).endpoint


def test_health_reflection_and_host_info(topo):
    info = topo.agent.call("GetHostInfo", pb.GetHostInfoRequest())
    assert (info.host_id, info.firewall, list(info.drivers)) == (
        "h1", pb.FIREWALL_NFTABLES, [pb.DRIVER_BRIDGE, pb.DRIVER_OVERLAY])
    assert info.underlay_ip == HOST_UP  # the default-route interface's address
    assert info.version == metadata.version("cnm")
    grpcurl = shutil.which("grpcurl") or str(support.REPO / ".venv/bin/grpcurl")
    listed = subprocess.run(
        [grpcurl, "-plaintext", "-unix", topo.agent.socket_path, "list"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "cnm.netdriver.v1.NetDriverService" in listed and "grpc.health.v1.Health" in listed


def test_traffic(topo):
    baseline = harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)
    net_a = harness.network("ta", "10.88.0.0/24")
    net_b = harness.network("tb", "10.89.0.0/24")
    internal = harness.network("tc", "10.90.0.0/24", internal=True)
    no_icc = harness.network("td", "10.91.0.0/24",
                             options={"com.docker.network.bridge.enable_icc": "false"})
    c1, c2, c4, c5, c6 = (topo.sandbox() for _ in range(5))
    c3 = topo.make("cnmt-c")  # a namespace the agent did not make, given by /proc/PID/ns/net
    holder = support.Process(c3.exec_args("sleep", "600"))
    in_c3 = os.stat(c3.path).st_ino
    support.wait_for(lambda: os.stat(f"/proc/{holder.pid}/ns/net").st_ino == in_c3, 10, 0.01,
                     "the holder process to enter its namespace")
    try:
        connect(topo, "t1", net_a, c1, "10.88.0.10",
                port_mappings=[harness.tcp(8080, 80), harness.udp(5353, 53)])
        connect(topo, "t2", net_a, c2, "10.88.0.11")
        connect(topo, "t3", net_b, f"/proc/{holder.pid}/ns/net", "10.89.0.10")
        connect(topo, "t4", internal, c4, "10.90.0.10")
        connect(topo, "t5", no_icc, c5, "10.91.0.10")
        connect(topo, "t6", no_icc, c6, "10.91.0.11")
        for ns in (c1, c2, c3.name, c4, c5, topo.internet.name):
            topo.serve(ns, 80)
        topo.serve(c1, 53, "udp")

        # An IPv4 network's bridge has no IPv6 (and takes no router advertisement from a
        # container: it could otherwise become the host's IPv6 default router).
        for key, value in (("disable_ipv6", "1"), ("accept_ra", "0")):
            assert topo.host.run("sysctl", "-n", f"net.ipv6.conf.cnm-ta.{key}").stdout.strip() \
                == value, key
        assert ask(c2, "10.88.0.10", 80) == "10.88.0.11", "same network"
        assert ask(c3.name, "10.88.0.10", 80, timeout=1) is None, "other network"
        assert ask(c1, "10.89.0.10", 80, timeout=1) is None, "other network, other way"
        assert ask(c1, INTERNET, 80) == HOST_UP, "masquerade to the internet"
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 8080) is not None, "published, client"
        assert ask(topo.client.name, HOST_UP, 8080) is not None, "published, other address"
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 5353, "udp") is not None, "udp published"
        assert ask(topo.host.name, HOST_UP, 8080) is not None, "published, from the host"
        assert ask(topo.host.name, "127.0.0.1", 8080) is not None, "published, on loopback"
        assert ask(c1, HOST_UP, 8080) is not None, "hairpin to its own port"
        assert ask(c2, HOST_UP, 8080) is not None, "hairpin to a neighbour's port"
        assert ask(c4, INTERNET, 80, timeout=1) is None, "internal reaches no internet"
        assert ask(c4, "10.88.0.10", 80, timeout=1) is None, "internal reaches no network"
        assert ask(c4, HOST_UP, 8080, timeout=1) is None, "internal reaches no published port"
        assert ask(c6, "10.91.0.10", 80, timeout=1) is None, "icc off: no neighbour"
        assert ask(c6, INTERNET, 80) == HOST_UP, "icc off: still reaches out"

        state = topo.agent.call("GetState", pb.GetStateRequest())
        by_id = {e.endpoint_id: e for e in state.endpoints}
        assert {"t1", "t2", "t3", "t4"} <= set(by_id)
        assert sorted(p.host_port for p in by_id["t1"].port_mappings) == [5353, 8080]
        assert {"cnm-ta", "cnm-tb", "cnm-tc"} <= {n.bridge_name for n in state.networks}
    finally:
        for endpoint_id in ("t1", "t2", "t3", "t4", "t5", "t6"):
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=endpoint_id))
        holder.stop()
    after = topo.agent.call("GetState", pb.GetStateRequest())
    assert not [e for e in after.endpoints if e.endpoint_id.startswith("t")]
    assert not [name for name in harness.link_names(topo.host.name) if name.startswith("cv")]
    assert "8080" not in harness.ruleset(topo.host.name)
    assert ask(topo.client.name, HOST_CLIENT_SIDE, 8080, timeout=1) is None
    with_networks = after.firewall_elements
    for network_id in ("ta", "tb", "tc", "td"):
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id=network_id))
    final = topo.agent.call("GetState", pb.GetStateRequest())
    assert not [n for n in final.networks if n.network_id in ("ta", "tb", "tc", "td")]
    assert final.firewall_elements < with_networks
    harness.assert_unchanged(
        baseline, (harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)),
        "after every endpoint and network is deleted",
    )


HOST_UP6, INTERNET6, HOST_CLIENT_SIDE6, CLIENT6 = "fd99::1", "fd99::2", "fd98::1", "fd98::2"


def add_ipv6(topo) -> None:
    """IPv6 on the topology's links: the host's uplink and default route, the client's
    (replaced if there: the topology is shared by the module's tests)."""
    topo.host.run("ip", "addr", "replace", f"{HOST_UP6}/64", "dev", "up0", "nodad")
    topo.internet.run("ip", "addr", "replace", f"{INTERNET6}/64", "dev", "eth0", "nodad")
    topo.host.run("ip", "-6", "route", "replace", "default", "via", INTERNET6)
    topo.host.run("ip", "addr", "replace", f"{HOST_CLIENT_SIDE6}/64", "dev", "cl0", "nodad")
    topo.client.run("ip", "addr", "replace", f"{CLIENT6}/64", "dev", "eth0", "nodad")
    topo.client.run("ip", "-6", "route", "replace", "default", "via", HOST_CLIENT_SIDE6)


def test_dual_stack_traffic(topo):
    """A network with an IPv6 subnet: gateway and addresses of both families (no DAD to
    wait for), default routes of both, IPv6 forwarding, and the same isolation,
    internal networks, icc and masquerade (NAT66) in IPv6 as in IPv4; a network with
    NAT66 off routes its own addresses."""
    add_ipv6(topo)
    baseline = harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)
    net_a = harness.network("va", "10.92.0.0/24", ipv6_subnet="fd00:a::/64")
    net_b = harness.network("vb", "10.93.0.0/24", ipv6_subnet="fd00:b::/64")
    internal = harness.network("vc", "10.94.0.0/24", ipv6_subnet="fd00:c::/64", internal=True)
    routed = harness.network("vd", "10.95.0.0/24", ipv6_subnet="fd00:d::/64",
                             ipv6_gateway="fd00:d::fe", ipv6_masquerade=False,
                             options={"com.docker.network.bridge.enable_icc": "false"})
    c1, c2, c3, c4, c5, c6 = (topo.sandbox() for _ in range(6))
    topo.internet.run("ip", "-6", "route", "add", "fd00:d::/64", "via", HOST_UP6)
    try:
        made = connect(topo, "v1", net_a, c1, "10.92.0.10", ipv6_address="fd00:a::10",
                       port_mappings=[harness.tcp(8086, 80), harness.tcp(8087, 80, "::1"),
                                      harness.udp(8089, 5300)],
                       dns_names=["web1"])
        assert made.ipv6_address == "fd00:a::10"
        connect(topo, "v2", net_a, c2, "10.92.0.11", ipv6_address="fd00:a::11")
        connect(topo, "v3", net_b, c3, "10.93.0.10", ipv6_address="fd00:b::10")
        connect(topo, "v4", internal, c4, "10.94.0.10", ipv6_address="fd00:c::10")
        connect(topo, "v5", routed, c5, "10.95.0.10", ipv6_address="fd00:d::10")
        connect(topo, "v6", routed, c6, "10.95.0.11", ipv6_address="fd00:d::11")
        # In the kernel: the addresses without DAD (not tentative), both default routes.
        shown = json.loads(subprocess.run(["ip", "-n", c1, "-j", "-6", "addr", "show", "eth0"],
                                          capture_output=True, text=True, check=True).stdout)
        (address,) = shown[0]["addr_info"]  # no link-local address either
        assert (address["local"], address["prefixlen"], address.get("tentative")) == (
            "fd00:a::10", 64, None)
        routes = subprocess.run(["ip", "-n", c1, "-6", "route", "show", "default"],
                                capture_output=True, text=True, check=True).stdout
        assert routes.startswith("default via fd00:a::1 dev eth0"), routes
        assert topo.host.run("sysctl", "-n", "net.ipv6.conf.cnm-va.accept_ra").stdout.strip() \
            == "0"
        # The network's DNS server answers on both gateways, A and AAAA, PTR of both.
        c2_ns = support.Netns.existing(c2)
        for server in ("10.92.0.1", "fd00:a::1"):
            assert harness.dns_addresses(harness.dns_ask(c2_ns, server, "web1", "AAAA")) == [
                "fd00:a::10"], server
            assert harness.dns_addresses(harness.dns_ask(c2_ns, server, "web1")) == [
                "10.92.0.10"], server
        pointer = ipaddress.ip_address("fd00:a::10").reverse_pointer
        assert harness.dns_addresses(harness.dns_ask(c2_ns, "fd00:a::1", pointer, "PTR")) == [
            "web1.cnm.internal."]
        unknown = ipaddress.ip_address("fd00:a::99").reverse_pointer
        assert harness.dns_ask(c2_ns, "fd00:a::1", unknown, "PTR").header.rcode == 3
        for ns in (c1, c2, c3, c4, c5, c6, topo.internet.name):
            topo.serve(ns, 80)
        topo.serve(c1, 5300, "udp")

        assert ask(c2, "fd00:a::10", 80) == "fd00:a::11", "same network"
        assert ask(c2, "10.92.0.10", 80) == "10.92.0.11", "same network, IPv4"
        assert ask(c3, "fd00:a::10", 80, timeout=1) is None, "other network"
        assert ask(c1, "fd00:b::10", 80, timeout=1) is None, "other network, other way"
        assert ask(c1, INTERNET6, 80) == HOST_UP6, "NAT66 to the internet"
        assert ask(c1, INTERNET, 80) == HOST_UP, "IPv4 still masqueraded"
        assert ask(c4, INTERNET6, 80, timeout=1) is None, "internal reaches no internet"
        assert ask(c4, "fd00:a::10", 80, timeout=1) is None, "internal reaches no network"
        assert ask(c5, INTERNET6, 80) == "fd00:d::10", "NAT66 off: its own address"
        assert ask(c6, "fd00:d::10", 80, timeout=1) is None, "icc off: no neighbour"
        assert ask(topo.internet.name, "fd00:a::10", 80, timeout=1) is None, \
            "nothing unsolicited from outside"
        # Published: on every address of both families, and on [::1] alone.
        assert ask(topo.client.name, HOST_CLIENT_SIDE6, 8086) == CLIENT6, "published, v6"
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 8086) == CLIENT, "published, v4"
        assert ask(topo.host.name, "::1", 8086) is not None, "published, on [::1]"
        assert ask(topo.host.name, HOST_UP6, 8086) is not None, "published, from the host"
        assert ask(c2, HOST_UP6, 8086) is not None, "hairpin to a neighbour's port, v6"
        assert ask(c1, HOST_UP6, 8086) is not None, "hairpin to its own port, v6"
        assert ask(topo.host.name, "::1", 8087) is not None, "published on [::1] alone"
        assert ask(topo.host.name, "::1", 8089, "udp") == "fd00:a::1", "UDP on [::1]"
        assert ask(topo.client.name, HOST_CLIENT_SIDE6, 8089, "udp") == CLIENT6, "UDP, v6"
        assert ask(topo.client.name, HOST_CLIENT_SIDE6, 8087, timeout=1) is None, \
            "[::1] alone: not from outside"
        with pytest.raises(errors.InvalidArgument, match="IPv6 host address"):
            connect(topo, "v7", net_a, topo.sandbox(), "10.92.0.12",
                    port_mappings=[harness.tcp(8088, 80, "::1")])
        with pytest.raises(errors.AlreadyExists):  # the v6 half of another's mapping
            connect(topo, "v7", net_b, topo.sandbox(), "10.93.0.12", ipv6_address="fd00:b::12",
                    port_mappings=[harness.tcp(8086, 80, HOST_UP6)])
    finally:
        for endpoint_id in ("v1", "v2", "v3", "v4", "v5", "v6"):
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=endpoint_id))
        for network_id in ("va", "vb", "vc", "vd"):
            topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id=network_id))
        topo.internet.run("ip", "-6", "route", "del", "fd00:d::/64")
    harness.assert_unchanged(
        baseline, (harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)),
        "after every dual-stack endpoint and network is deleted",
    )


def test_ipv6_only_traffic(topo):
    """A network with an IPv6 subnet alone: no IPv4 on its bridge or in its containers;
    isolation, NAT66, names (AAAA) and published ports (IPv6 only: the IPv4 port stays
    the host's) as on a dual-stack network; IPv4 asked of it is refused."""
    add_ipv6(topo)
    baseline = harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)
    net_a = harness.network("wa", "", ipv6_subnet="fd00:e::/64")
    net_b = harness.network("wb", "", ipv6_subnet="fd00:f::/64")
    c1, c2, c3 = (topo.sandbox() for _ in range(3))
    try:
        made = connect(topo, "w1", net_a, c1, "", ipv6_address="fd00:e::10",
                       port_mappings=[harness.tcp(8096, 80)], dns_names=["web6"])
        assert (made.address, made.ipv6_address, made.mac_address) == (
            "", "fd00:e::10", "02:42:00:00:00:10")
        connect(topo, "w2", net_a, c2, "", ipv6_address="fd00:e::11")
        connect(topo, "w3", net_b, c3, "", ipv6_address="fd00:f::10")
        for ns, device in ((c1, "eth0"), (topo.host.name, "cnm-wa")):
            shown = json.loads(subprocess.run(
                ["ip", "-n", ns, "-j", "-4", "addr", "show", device],
                capture_output=True, text=True, check=True).stdout)
            assert not [a for link in shown for a in link["addr_info"]], (ns, shown)
        routes = subprocess.run(["ip", "-n", c1, "-6", "route", "show", "default"],
                                capture_output=True, text=True, check=True).stdout
        assert routes.startswith("default via fd00:e::1 dev eth0"), routes
        c2_ns = support.Netns.existing(c2)
        assert harness.dns_addresses(harness.dns_ask(c2_ns, "fd00:e::1", "web6", "AAAA")) \
            == ["fd00:e::10"]
        assert harness.dns_addresses(harness.dns_ask(c2_ns, "fd00:e::1", "web6")) == []
        for ns in (c1, c2, c3, topo.internet.name):
            topo.serve(ns, 80)
        assert ask(c2, "fd00:e::10", 80) == "fd00:e::11", "same network"
        assert ask(c3, "fd00:e::10", 80, timeout=1) is None, "other network"
        assert ask(c1, INTERNET6, 80) == HOST_UP6, "NAT66 to the internet"
        assert ask(c1, INTERNET, 80, timeout=1) is None, "no IPv4"
        assert ask(topo.client.name, HOST_CLIENT_SIDE6, 8096) == CLIENT6, "published, v6"
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 8096, timeout=1) is None, \
            "not published on IPv4"
        assert ask(topo.host.name, "::1", 8096) is not None, "published, on [::1]"
        assert ask(c2, HOST_UP6, 8096) is not None, "hairpin"
        # The IPv4 port is not held: a service of the host may have it.
        topo.host.run(support.PYTHON, "-c", "import socket; socket.socket().bind("
                      "('0.0.0.0', 8096))")
        bad = {
            "an IPv4 address": {"address": "10.0.0.5", "ipv6_address": "fd00:e::12"},
            "no IPv6 address": {"address": ""},
            "an IPv4 host address": {"address": "", "ipv6_address": "fd00:e::12",
                                     "port_mappings": [harness.tcp(8097, 80, HOST_UP)]},
        }
        for what, fields in bad.items():
            with pytest.raises(errors.InvalidArgument):
                topo.agent.call("CreateEndpoint", pb.CreateEndpointRequest(
                    endpoint=pb.Endpoint(endpoint_id="w9", network_id="wa", sandbox=c3,
                                         **fields), network=net_a))
                pytest.fail(what)
        with pytest.raises(errors.InvalidArgument, match="without a subnet"):
            topo.agent.call("CreateNetwork", pb.CreateNetworkRequest(network=harness.network(
                "wc", "", ipv6_subnet="fd00:10::/64", gateway="10.0.0.1")))
    finally:
        for endpoint_id in ("w1", "w2", "w3"):
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=endpoint_id))
        for network_id in ("wa", "wb"):
            topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id=network_id))
    harness.assert_unchanged(
        baseline, (harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)),
        "after every IPv6-only endpoint and network is deleted",
    )


def test_bad_input_gets_the_right_code_and_changes_nothing(topo):
    net = harness.network("bad", "10.87.0.0/24")
    sandbox = topo.sandbox()
    good = connect(topo, "b1", net, sandbox, "10.87.0.10", port_mappings=[harness.tcp(9090, 80)])
    topo.host.run("ip", "link", "add", "foreign0", "type", "bridge")
    regular_file = topo.workdir / "not-a-namespace"
    regular_file.write_text("")
    before = (harness.link_summary(topo.host.name), harness.ruleset(topo.host.name),
              harness.link_summary(sandbox))

    def endpoint(**fields):
        base = {"endpoint_id": "b2", "network_id": "bad", "sandbox": sandbox,
                "address": "10.87.0.11"}
        return pb.CreateEndpointRequest(endpoint=pb.Endpoint(**{**base, **fields}))

    cases = {
        "missing namespace": (endpoint(sandbox="/var/run/netns/cnmt-nope"),
                              errors.NotFound),
        "a file elsewhere": (endpoint(sandbox=str(regular_file)), errors.FailedPrecondition),
        "not a network namespace": (endpoint(sandbox="/proc/self/ns/uts"),
                                    errors.InvalidArgument),
        "the host's own namespace": (endpoint(sandbox=f"/var/run/netns/{topo.host.name}"),
                                     errors.FailedPrecondition),
        "invalid interface name": (endpoint(container_interface="eth0; rm"),
                                   errors.InvalidArgument),
        "taken interface name": (endpoint(container_interface="eth0"), errors.AlreadyExists),
        "address outside": (endpoint(address="10.86.0.5"), errors.InvalidArgument),
        "same id, other params": (endpoint(endpoint_id="b1", address="10.87.0.12"),
                                  errors.AlreadyExists),
        "port 0": (endpoint(port_mappings=[harness.tcp(0, 80)]), errors.InvalidArgument),
        "port > 65535": (endpoint(port_mappings=[harness.tcp(65536, 80)]),
                         errors.InvalidArgument),
        "unknown protocol": (endpoint(port_mappings=[pb.PortMapping(
            protocol=42, host_port=1, container_port=1)]), errors.InvalidArgument),
        "port already published": (endpoint(port_mappings=[harness.tcp(9090, 80)]),
                                   errors.AlreadyExists),
        "network not here, not described": (endpoint(network_id="elsewhere"),
                                            errors.FailedPrecondition),
        "ports on internal network": (pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="b2", network_id="bint", sandbox=sandbox,
                                 address="10.86.0.5", port_mappings=[harness.tcp(1, 1)]),
            network=harness.network("bint", "10.86.0.0/24", internal=True)),
            errors.FailedPrecondition),
        "bridge name over 15": (pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="b2", network_id="blong", sandbox=sandbox,
                                 address="10.86.0.5"),
            network=harness.network("blong", "10.86.0.0/24", bridge_name="x" * 16)),
            errors.InvalidArgument),
        "bridge name taken by a foreign link": (pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="b2", network_id="bforeign", sandbox=sandbox,
                                 address="10.86.0.5"),
            network=harness.network("bforeign", "10.86.0.0/24", bridge_name="foreign0")),
            errors.AlreadyExists),
        # Issue 9's defects: each of these was refused with another code, or not at all.
        "a 10,000-character sandbox": (endpoint(sandbox="s" * 10_000), errors.InvalidArgument),
        "a sandbox path in a 10,000-character directory": (
            endpoint(sandbox="/" + "d" * 10_000 + "/ns"), errors.InvalidArgument),
        "control characters in the container id": (endpoint(container_id="c\x1b[2J"),
                                                   errors.InvalidArgument),
        "an IPv6 host_ip": (endpoint(port_mappings=[pb.PortMapping(
            host_ip="::1", host_port=1, container_port=1)]), errors.InvalidArgument),
        "a subnet overlapping another network's": (pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="b2", network_id="bover", sandbox=sandbox,
                                 address="10.87.0.200"),
            network=harness.network("bover", "10.87.0.128/25")), errors.AlreadyExists),
    }
    try:
        for label, (request, code) in cases.items():
            with pytest.raises(code) as caught:
                topo.agent.call("CreateEndpoint", request)
            assert caught.value.message and caught.value.reason, label
            # Values are echoed capped: the error stays readable whatever was sent.
            assert len(caught.value.message.encode()) <= errors.MAX_MESSAGE_BYTES, label
            assert "s" * 100 not in caught.value.message, label
            after = (harness.link_summary(topo.host.name), harness.ruleset(topo.host.name),
                     harness.link_summary(sandbox))
            assert after == before, label
        with pytest.raises(errors.AlreadyExists) as caught:
            topo.agent.call("CreateEndpoint", cases["port already published"][0])
        # The reason and the values it names reach the client through every re-raise.
        assert caught.value.reason == "PORT_ALLOCATED"
        assert caught.value.metadata == {"endpoint_id": "b1", "protocol": "tcp", "host_ip": "",
                                         "host_port": "9090"}
        assert caught.value.message.startswith("connect endpoint 'b2': publish ports: ")
        with pytest.raises(errors.AlreadyExists) as caught:
            topo.agent.call("CreateEndpoint", cases["a subnet overlapping another network's"][0])
        assert caught.value.reason == "SUBNET_OVERLAP"  # as IPAM and the orchestrator say it
        for name in ("../etc", ".", "..", "a" * 10_000, "tab\there"):
            with pytest.raises(errors.InvalidArgument) as caught:
                topo.agent.call("CreateSandbox", pb.CreateSandboxRequest(name=name))
            assert caught.value.reason == "INVALID_SANDBOX", name
            with pytest.raises(errors.InvalidArgument):
                topo.agent.call("DeleteSandbox", pb.DeleteSandboxRequest(name=name))
        with pytest.raises(errors.InvalidArgument):
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=""))
    finally:
        topo.host.run("ip", "link", "del", "foreign0")
        topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=good.endpoint_id))
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="bad"))


def test_the_agent_plumbs_only_namespaces_it_may(topo, tmp_path):
    """Confinement: never the host's namespace however it is named, nothing outside the
    sandbox directories and /proc/PID/ns/net, real paths judged, and a FIFO never blocks."""
    net = harness.network("conf", "10.86.0.0/24")
    # A process in the agent's host namespace, one in the machine's own (this test's).
    in_host = support.Process(topo.host.exec_args("sleep", "600"))
    in_machine = support.Process(["sleep", "600"])
    # Where init's namespace cannot be read (a confined VM), neither the agent nor anyone
    # can open it: the machine's namespace is then refused only by being unreachable, and
    # this test must not try it (a namespace the agent knows as the host's is the point).
    init_readable = os.access("/proc/1/ns/net", os.R_OK)
    foreign = topo.make("cnmt-f")  # a namespace the agent did not make
    bound = tmp_path / "bound-ns"
    bound.write_text("")
    subprocess.run(["mount", "--bind", foreign.path, str(bound)], check=True)
    link = tmp_path / "link-to-host"
    link.symlink_to(f"/var/run/netns/{topo.host.name}")
    # A link in a sandbox directory leading out of it.
    escape = f"/var/run/netns/cnmt-link-{uuid.uuid4().hex[:6]}"
    os.symlink(bound, escape)
    fifo = f"/var/run/netns/cnmt-fifo-{uuid.uuid4().hex[:6]}"
    os.mkfifo(fifo)
    support.wait_for(lambda: os.stat(f"/proc/{in_host.pid}/ns/net").st_ino
                     == os.stat(topo.host.path).st_ino, 10, 0.01, "the process to enter")
    before = harness.link_summary(topo.host.name), harness.ruleset(topo.host.name)
    try:
        cases = {
            f"/proc/{in_host.pid}/ns/net": "SANDBOX_IS_HOST",
            "/proc/1/ns/net": "SANDBOX_IS_HOST" if init_readable else "INVALID_NAMESPACE",
            f"/proc/{in_host.pid}/task/{in_host.pid}/ns/net": "SANDBOX_IS_HOST",
            f"/var/run/netns/../netns/{topo.host.name}": "SANDBOX_IS_HOST",
            f"/var/run/netns/../../../proc/{in_host.pid}/ns/net": "SANDBOX_IS_HOST",
            str(bound): "SANDBOX_NOT_ALLOWED",
            f"/var/run/netns/../../{bound}": "SANDBOX_NOT_ALLOWED",
            str(link): "SANDBOX_IS_HOST",
            escape: "SANDBOX_NOT_ALLOWED",
            fifo: "INVALID_NAMESPACE",
        }
        if init_readable:
            cases[f"/proc/{in_machine.pid}/ns/net"] = "SANDBOX_IS_HOST"
        for number, (sandbox, reason) in enumerate(cases.items()):
            with pytest.raises(errors.CnmError) as caught:
                connect(topo, f"x{number}", net, sandbox, f"10.86.0.{10 + number}")
            assert caught.value.reason == reason, (sandbox, caught.value.message)
        # Still answering at once, nothing built.
        topo.agent.call("GetHostInfo", pb.GetHostInfoRequest(), timeout=2)
        assert (harness.link_summary(topo.host.name), harness.ruleset(topo.host.name)) == before
        # A foreign namespace given as a process's /proc/PID/ns/net is a runtime's: allowed.
        holder = support.Process(foreign.exec_args("sleep", "600"))
        support.wait_for(lambda: os.stat(f"/proc/{holder.pid}/ns/net").st_ino
                         == os.stat(foreign.path).st_ino, 10, 0.01, "the holder to enter")
        try:
            connect(topo, "x-ok", net, f"/proc/{holder.pid}/ns/net", "10.86.0.50")
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="x-ok"))
        finally:
            holder.stop()
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="conf"))
    finally:
        in_host.stop()
        in_machine.stop()
        os.unlink(fifo)
        os.unlink(escape)
        subprocess.run(["umount", str(bound)], check=False)


def bind_in(namespace: support.Netns, port: int, listen: bool = False) -> support.Process:
    """A process of the host binding 0.0.0.0:``port``/tcp, or failing to (exit 98)."""
    script = ("import socket, sys, time\n"
              "s = socket.socket()\n"
              "try:\n    s.bind(('0.0.0.0', int(sys.argv[1])))\n"
              "except OSError:\n    sys.exit(98)\n"
              "if sys.argv[2] == '1':\n    s.listen()\n"
              "print('bound', flush=True)\ntime.sleep(600)\n")
    return support.Process(namespace.exec_args(support.PYTHON, "-c", script, str(port),
                                               "1" if listen else "0"))


def test_a_published_port_neither_shadows_nor_yields_to_a_host_service(topo, tmp_path):
    net = harness.network("hp", "10.85.0.0/24")
    sandbox = topo.sandbox()
    service = bind_in(topo.host, 28999, listen=True)
    support.wait_for(lambda: "28999" in topo.host.run("ss", "-Hltn").stdout, 10, 0.05,
                     "the host service to listen")
    before = harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)
    try:
        with pytest.raises(errors.AlreadyExists) as caught:
            connect(topo, "h1", net, sandbox, "10.85.0.10",
                    port_mappings=[harness.tcp(28998, 80), harness.tcp(28999, 80)])
        assert caught.value.reason == "PORT_IN_USE"
        assert "*:28999/tcp is in use on the host" in caught.value.message
        assert (harness.ruleset(topo.host.name), harness.link_summary(topo.host.name)) == before
        assert service.alive()
        # Published, the port is the endpoint's: no host process may take it, even after an
        # agent restart; once unpublished, it may.
        connect(topo, "h1", net, sandbox, "10.85.0.10", port_mappings=[harness.tcp(28998, 80)])
        intruder = bind_in(topo.host, 28998)
        assert intruder.popen.wait(10) == 98
        topo.agent.process.kill9()
        topo.agent.stop()
        topo.agent = harness.AgentProcess(topo.host, topo.state_dir)
        intruder = bind_in(topo.host, 28998)
        assert intruder.popen.wait(10) == 98
        topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="h1"))
        later = bind_in(topo.host, 28998, listen=True)
        support.wait_for(lambda: "28998" in topo.host.run("ss", "-Hltn").stdout, 10, 0.05,
                         "the port to be free for the host")
        later.stop()
    finally:
        service.stop()
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="hp"))


def test_idempotent_repeats_change_nothing(topo):
    net = harness.network("idem", "10.85.0.0/24")
    sandbox = topo.sandbox()
    request = pb.CreateEndpointRequest(
        endpoint=pb.Endpoint(endpoint_id="i1", network_id="idem", sandbox=sandbox,
                             address="10.85.0.10", port_mappings=[harness.tcp(9191, 80)]),
        network=net,
    )
    first = topo.agent.call("CreateEndpoint", request)
    snapshot = (harness.link_summary(topo.host.name), harness.ruleset(topo.host.name),
                harness.link_summary(sandbox))
    assert topo.agent.call("CreateEndpoint", request) == first
    topo.agent.call("CreateNetwork", pb.CreateNetworkRequest(network=net))
    assert topo.agent.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox))
    assert snapshot == (harness.link_summary(topo.host.name), harness.ruleset(topo.host.name),
                        harness.link_summary(sandbox))
    for _ in range(2):
        topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="i1"))
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="idem"))
        topo.agent.call("DeleteSandbox", pb.DeleteSandboxRequest(name=sandbox))
    assert "cnm-idem" not in harness.link_names(topo.host.name)
    assert sandbox not in [s.name for s in topo.agent.call(
        "ListSandboxes", pb.ListSandboxesRequest()).sandboxes]
    assert "9191" not in harness.ruleset(topo.host.name)


def test_sandboxes_list_only_the_agents_own(topo):
    mine = topo.sandbox()
    listed = [s.name for s in topo.agent.call("ListSandboxes", pb.ListSandboxesRequest()).sandboxes]
    assert mine in listed
    assert topo.client.name not in listed
    with pytest.raises(errors.FailedPrecondition):
        topo.agent.call("DeleteSandbox", pb.DeleteSandboxRequest(name=topo.client.name))
    with pytest.raises(errors.AlreadyExists):
        topo.agent.call("CreateSandbox", pb.CreateSandboxRequest(name=topo.client.name))
    topo.agent.call("DeleteSandbox", pb.DeleteSandboxRequest(name=mine))
    assert not (support.Path("/var/run/netns") / mine).exists()


def test_restart_rebuilds_from_the_kernel_and_resync_restores_a_flushed_ruleset(topo):
    net = harness.network("rs", "10.84.0.0/24")
    sandbox = topo.sandbox()
    connect(topo, "r1", net, sandbox, "10.84.0.10", port_mappings=[harness.tcp(9292, 80)])
    topo.serve(sandbox, 80)
    try:
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9292) is not None
        state = topo.agent.call("GetState", pb.GetStateRequest())
        topo.agent.process.kill9()
        topo.agent.stop()
        topo.agent = harness.AgentProcess(topo.host, topo.state_dir)
        assert topo.agent.call("GetState", pb.GetStateRequest()) == state
        topo.host.run("nft", "flush", "ruleset")
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9292, timeout=1) is None
        repaired = topo.agent.call("Resync", pb.ResyncRequest()).repaired
        assert repaired
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9292) is not None
        assert topo.agent.call("GetState", pb.GetStateRequest()) == state
        assert topo.agent.call("Resync", pb.ResyncRequest()).repaired == []
    finally:
        topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="r1"))
        topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="rs"))


def test_a_flushed_ruleset_is_restored_without_a_resync_call(topo):
    net_a, net_b = harness.network("fa", "10.82.0.0/24"), harness.network("fb", "10.81.0.0/24")
    in_a, in_b, in_c = topo.sandbox(), topo.sandbox(), topo.sandbox()
    connect(topo, "fa1", net_a, in_a, "10.82.0.10", port_mappings=[harness.tcp(9494, 80)])
    connect(topo, "fb1", net_b, in_b, "10.81.0.10")
    topo.serve(in_a, 80)
    try:
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9494) is not None
        assert ask(in_b, "10.82.0.10", 80, timeout=1) is None, "isolated"
        # A connect that finds the table gone restores every network's rules, not just its own.
        topo.host.run("nft", "flush", "ruleset")
        net_c = harness.network("fc", "10.80.0.0/24")
        connect(topo, "fc1", net_c, in_c, "10.80.0.10", port_mappings=[harness.tcp(9595, 80)])
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9494) is not None
        assert ask(in_b, "10.82.0.10", 80, timeout=1) is None, "isolated again"
        # A repeated CreateNetwork does not report success over missing rules.
        topo.host.run("nft", "flush", "ruleset")
        topo.agent.call("CreateNetwork", pb.CreateNetworkRequest(network=net_a))
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9494) is not None
        assert ask(in_b, "10.82.0.10", 80, timeout=1) is None, "isolated again"
        # With nothing asked of it, the agent's periodic resync repairs a flush.
        topo.agent.stop()
        topo.agent = harness.AgentProcess(topo.host, topo.state_dir, resync_interval=0.3)
        topo.host.run("nft", "flush", "ruleset")
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9494, timeout=0.5) is None
        support.wait_for(lambda: "9494" in harness.ruleset(topo.host.name), 10, 0.1,
                         "the periodic resync")
        assert ask(topo.client.name, HOST_CLIENT_SIDE, 9494) is not None
        assert ask(in_b, "10.82.0.10", 80, timeout=1) is None, "isolated after the repair"
    finally:
        for endpoint_id in ("fa1", "fb1", "fc1"):
            topo.agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id=endpoint_id))
        for network_id in ("fa", "fb", "fc"):
            topo.agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id=network_id))


def test_published_ports_read_back_where_nft_prints_protocols_as_numbers(netns, tmp_path):
    """Without /etc/protocols (an image without netbase) nft lists a port element as
    ``6 . 8081``, not ``tcp . 8081``: GetState and resync must read it all the same."""
    host = netns("cnmt-h")
    container = netns("cnmt-c")
    agent = harness.AgentProcess(host, tmp_path / "state", resync_interval=3600,
                                 wrap=harness.without_netbase(tmp_path / "empty"))
    try:
        agent.call("CreateEndpoint", pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="nb1", network_id="nb", sandbox=container.path,
                                 address="10.79.0.10", default_route=True,
                                 port_mappings=[harness.tcp(8081, 80), harness.udp(5353, 53)]),
            network=harness.network("nb", "10.79.0.0/24"),
        ))
        # What the agent's nft sees: numbers (this proves the test's premise).
        listing = subprocess.run(
            ["nsenter", f"--mount=/proc/{agent.process.pid}/ns/mnt", f"--net={host.path}",
             "nft", "list", "map", "inet", "cnm", "ports_any_port"],
            capture_output=True, text=True, check=True).stdout
        assert "6 . 8081" in listing and "17 . 5353" in listing, listing
        state = agent.call("GetState", pb.GetStateRequest())
        (endpoint,) = state.endpoints
        assert sorted((p.protocol, p.host_port, p.container_port)
                      for p in endpoint.port_mappings) == [
            (pb.PROTOCOL_TCP, 8081, 80), (pb.PROTOCOL_UDP, 5353, 53)]
        assert list(agent.call("Resync", pb.ResyncRequest()).repaired) == []
        assert list(agent.call("Resync", pb.ResyncRequest()).repaired) == []
        agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="nb1"))
        assert not agent.call("GetState", pb.GetStateRequest()).endpoints
    finally:
        agent.stop()


def test_a_failed_connect_leaves_nothing_at_any_step(netns, tmp_path):
    host = netns("cnmt-h")
    container = netns("cnmt-c")
    state_dir = tmp_path / "state"

    def snapshot():
        files = sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob("*"))
        return (harness.link_summary(host.name), harness.link_summary(container.name),
                harness.addresses(container.name), harness.routes(container.name),
                harness.ruleset(host.name), files)

    clean = harness.AgentProcess(host, state_dir)
    clean.stop()  # makes the base table, so that every snapshot starts from it
    before = snapshot()
    request = pb.CreateEndpointRequest(
        endpoint=pb.Endpoint(endpoint_id="f1", network_id="fn", sandbox=container.path,
                             address="10.83.0.10", default_route=True,
                             port_mappings=[harness.tcp(9393, 80)]),
        network=harness.network("fn", "10.83.0.0/24"),
    )
    for step in CONNECT_STEPS:
        agent = harness.AgentProcess(host, state_dir, fault=f"after:{step}")
        try:
            with pytest.raises(errors.Internal, match=f"after step '{step}'"):
                agent.call("CreateEndpoint", request)
            harness.assert_unchanged(before, snapshot(), f"fault after {step}")
        finally:
            agent.stop()


def unit_capabilities() -> list[str]:
    """The agent's systemd unit's CapabilityBoundingSet, as setpriv names them."""
    unit = support.REPO / "deploy" / "systemd" / "cnm-agent.service"
    line = next(line for line in unit.read_text().splitlines()
                if line.startswith("CapabilityBoundingSet="))
    return [name.removeprefix("CAP_").lower() for name in line.partition("=")[2].split()]


def test_the_agent_works_with_exactly_its_units_capabilities(netns, tmp_path):
    """Root, but with only deploy/systemd/cnm-agent.service's capability set: a named
    sandbox, a network, an endpoint publishing a privileged TCP port and a UDP port,
    reached from a client; state, resync and teardown."""
    capabilities = unit_capabilities()
    host, client = netns("cnmt-h"), netns("cnmt-cl")
    support.connect_namespaces(host, "cl0", "192.168.251.1/24", client, "eth0",
                               "192.168.251.2/24")
    client.run("ip", "route", "add", "default", "via", "192.168.251.1")
    wrap = ["setpriv", "--inh-caps=-all",
            "--bounding-set=-all," + ",".join(f"+{name}" for name in capabilities), "--"]
    agent = harness.AgentProcess(host, tmp_path / "state", wrap=wrap)
    server = None
    sandbox_name = f"cnmt-caps-{uuid.uuid4().hex[:6]}"
    try:
        status = Path(f"/proc/{agent.process.pid}/status").read_text()
        bounding = int(next(line.split()[1] for line in status.splitlines()
                            if line.startswith("CapBnd:")), 16)
        assert bounding.bit_count() == len(capabilities), status
        sandbox = agent.call("CreateSandbox", pb.CreateSandboxRequest(
            name=sandbox_name)).sandbox
        agent.call("CreateEndpoint", pb.CreateEndpointRequest(
            endpoint=pb.Endpoint(endpoint_id="cap1", network_id="capn", sandbox=sandbox.path,
                                 address="10.84.0.10", default_route=True,
                                 port_mappings=[harness.tcp(80, 8080), harness.udp(54, 5353)]),
            network=harness.network("capn", "10.84.0.0/24"),
        ))
        server = harness.Server(sandbox.name, 8080, log_dir=tmp_path)
        assert harness.ask(client.name, "192.168.251.1", 80) is not None
        (endpoint,) = agent.call("GetState", pb.GetStateRequest()).endpoints
        assert len(endpoint.port_mappings) == 2
        assert list(agent.call("Resync", pb.ResyncRequest()).repaired) == []
        agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="cap1"))
        agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="capn"))
        agent.call("DeleteSandbox", pb.DeleteSandboxRequest(name=sandbox.name))
        assert not agent.call("GetState", pb.GetStateRequest()).endpoints
    finally:
        if server is not None:
            server.stop()
        agent.stop()
        if sandbox_name in harness.namespace_names():  # a failure midway
            harness.delete_namespace(sandbox_name)


def test_sctp_is_published_where_the_kernel_has_it_and_refused_clearly_where_not(
        netns, tmp_path):
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        has_sctp = True
    except OSError:
        has_sctp = False
    host, container = netns("cnmt-h"), netns("cnmt-c")
    agent = harness.AgentProcess(host, tmp_path / "state")
    request = pb.CreateEndpointRequest(
        endpoint=pb.Endpoint(endpoint_id="sc1", network_id="scn", sandbox=container.path,
                             address="10.85.0.10", default_route=True,
                             port_mappings=[pb.PortMapping(protocol=pb.PROTOCOL_SCTP,
                                                           host_port=9899,
                                                           container_port=9899)]),
        network=harness.network("scn", "10.85.0.0/24"))
    try:
        if has_sctp:
            agent.call("CreateEndpoint", request)
            assert "sctp . 9899" in harness.ruleset(host.name)
            agent.call("DeleteEndpoint", pb.DeleteEndpointRequest(endpoint_id="sc1"))
        else:
            with pytest.raises(errors.FailedPrecondition) as caught:
                agent.call("CreateEndpoint", request)
            assert caught.value.reason == "PROTOCOL_NOT_SUPPORTED"
            assert "this host's kernel has no SCTP" in caught.value.message
        assert not agent.call("GetState", pb.GetStateRequest()).endpoints
        assert "9899" not in harness.ruleset(host.name)
    finally:
        agent.stop()
