"""The nftables firewall backend against real nftables, proven with real traffic.

One topology for the module, every part in namespaces made here:

    X "internet" 172.30.0.2 --- up0 172.30.0.1 [ H: the host; the backend runs here ]
    L "client" 192.168.250.2 --- cl0 192.168.250.1
    H bridges:  cnmA 10.88.1.0/24 (a1 .2, a2 .3)      cnmB 10.88.2.0/24 (b1 .2)
                cnmI 10.88.3.0/24 internal (i1, i2)  cnmC 10.88.4.0/24 icc off (c1, c2)

Every container, and X, answers TCP and UDP on port 80 with "NAME PEER".
Each test starts from ``sync`` to the base networks, and checks that a
foreign table in H is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from cnm import errors
from netdriver_service.firewall import NetworkRules, PortRule, ruleset
from tests import support

pytestmark = pytest.mark.root

TOOLS = ["-m", "tests.netdriver.firewall_tools"]
UPLINK, CLIENT_SIDE, INTERNET, CLIENT = "172.30.0.1", "192.168.250.1", "172.30.0.2", "192.168.250.2"
NET_A = NetworkRules("net-a", "cnmA", "10.88.1.0/24", "10.88.1.1")
NET_B = NetworkRules("net-b", "cnmB", "10.88.2.0/24", "10.88.2.1")
NET_I = NetworkRules("net-i", "cnmI", "10.88.3.0/24", "10.88.3.1", internal=True)
NET_C = NetworkRules("net-c", "cnmC", "10.88.4.0/24", "10.88.4.1", enable_icc=False)
NETWORKS = [NET_A, NET_B, NET_I, NET_C]
CONTAINERS = {  # name -> (network, address)
    "a1": (NET_A, "10.88.1.2"), "a2": (NET_A, "10.88.1.3"), "b1": (NET_B, "10.88.2.2"),
    "i1": (NET_I, "10.88.3.2"), "i2": (NET_I, "10.88.3.3"),
    "c1": (NET_C, "10.88.4.2"), "c2": (NET_C, "10.88.4.3"),
}
FOREIGN = """table inet foreign {
  set blocked { type ipv4_addr; elements = { 198.18.0.1 } }
  chain guard { type filter hook forward priority 10; policy accept; ip daddr @blocked drop; }
  chain late_snat { type nat hook postrouting priority 50; policy accept; }
}
"""


def port(endpoint: str, host_port: int, *, protocol: str = "tcp", host_ip: str = "",
         container_port: int = 80) -> PortRule:
    network, address = CONTAINERS[endpoint]
    return PortRule(endpoint, network.network_id, protocol, host_ip, host_port, address,
                    container_port)


class FirewallAgent:
    """A firewall backend running inside ``host``, driven over a pipe."""

    def __init__(self, host: support.Netns, backend: str = "nftables") -> None:
        self.popen = subprocess.Popen(
            host.exec_args(support.PYTHON, *TOOLS, "agent", backend),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=support.REPO,
        )

    def __getattr__(self, op: str):
        def call(**args):
            args = {key: _plain(value) for key, value in args.items()}
            self.popen.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.popen.stdin.flush()
            answer = json.loads(self.popen.stdout.readline())
            if "error" in answer:
                cls = getattr(errors, answer["error"], errors.CnmError)
                raise cls(answer["message"], reason=answer["reason"], **answer["metadata"])
            return answer["result"]

        return call

    def stop(self) -> None:
        self.popen.stdin.close()
        self.popen.wait(10)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class Topology:
    def __init__(self) -> None:
        self.namespaces: dict[str, support.Netns] = {}
        self.servers: list[support.Process] = []

    def ns(self, name: str) -> support.Netns:
        if name not in self.namespaces:
            self.namespaces[name] = support.Netns("cnmt")
        return self.namespaces[name]

    def ip(self, ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns(ns).name, *args], check=True, capture_output=True)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns("host").run("nft", *args, check=check)

    def link(self, host_if: str, ns: str, address: str, gateway: str | None) -> None:
        self.ip("host", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", self.ns(ns).name)
        self.ip(ns, "addr", "add", address, "dev", "eth0")
        self.ip(ns, "link", "set", "eth0", "up")
        if gateway:
            self.ip(ns, "route", "add", "default", "via", gateway)

    def build(self) -> None:
        host = self.ns("host")
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.link("up0", "x", INTERNET + "/24", None)
        self.ip("host", "addr", "add", UPLINK + "/24", "dev", "up0")
        self.link("cl0", "client", CLIENT + "/24", CLIENT_SIDE)
        self.ip("host", "addr", "add", CLIENT_SIDE + "/24", "dev", "cl0")
        for name in ("up0", "cl0"):
            self.ip("host", "link", "set", name, "up")
        for network in NETWORKS:
            prefix = network.subnet.split("/")[1]
            self.ip("host", "link", "add", network.bridge, "type", "bridge")
            self.ip("host", "addr", "add", f"{network.gateway}/{prefix}", "dev", network.bridge)
            self.ip("host", "link", "set", network.bridge, "up")
            # What the bridge driver does for every network (see REQUESTS.md).
            host.run("sysctl", "-qw", f"net.ipv4.conf.{network.bridge}.route_localnet=1")
        for name, (network, address) in CONTAINERS.items():
            prefix = network.subnet.split("/")[1]
            self.link(f"v{name}", name, f"{address}/{prefix}", network.gateway)
            self.ip("host", "link", "set", f"v{name}", "master", network.bridge, "up")
            self.ip("host", "link", "set", f"v{name}", "type", "bridge_slave", "hairpin", "on")
        for name in [*CONTAINERS, "x"]:
            server = support.Process(self.ns(name).exec_args(
                support.PYTHON, *TOOLS, "serve", name, "80"))
            self.servers.append(server)
        subprocess.run(["ip", "netns", "exec", host.name, "nft", "-f", "-"], input=FOREIGN,
                       text=True, check=True)
        for name in [*CONTAINERS, "x"]:
            support.wait_for(lambda name=name: self.ns(name).run(
                "ss", "-Htln", "sport = :80").stdout.strip(), 10, 0.05, f"server in {name}")

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for namespace in self.namespaces.values():
            namespace.close()

    def probe(self, ns: str, *probes: tuple, timeout: float = 1.0) -> list[str | None]:
        """Asks each (host, port[, proto]) from ``ns``; None where nothing answered."""
        wanted = [[p[2] if len(p) > 2 else "tcp", p[0], p[1], timeout] for p in probes]
        done = self.ns(ns).run(support.PYTHON, *TOOLS, "probe", json.dumps(wanted),
                               cwd=support.REPO)
        return json.loads(done.stdout)

    def foreign(self) -> list:
        listing = json.loads(self.nft("-j", "list", "table", "inet", "foreign").stdout)
        return [{kind: {k: v for k, v in body.items() if k != "handle"}}
                for item in listing["nftables"] for kind, body in item.items()
                if kind != "metainfo"]


@pytest.fixture(scope="module")
def topo():
    topology = Topology()
    try:
        topology.build()
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="module")
def agent_process(topo):
    agent = FirewallAgent(topo.ns("host"))
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def foreign_before(topo):
    return topo.foreign()


@pytest.fixture
def fw(topo, agent_process, foreign_before):
    """The backend, synced to the four base networks and no ports."""
    agent_process.sync(networks=NETWORKS, ports=[])
    yield agent_process
    assert topo.foreign() == foreign_before, "the foreign table was changed"


# --- traffic ----------------------------------------------------------------------

def test_masquerade_outbound_and_internal_reaches_nothing(topo, fw):
    a1, b1, i1, c1 = (topo.probe(name, (INTERNET, 80))[0] for name in ("a1", "b1", "i1", "c1"))
    assert a1 == b1 == c1 == f"x {UPLINK}"
    assert i1 is None
    assert topo.probe("i1", (CONTAINERS["a1"][1], 80), (UPLINK, 80)) == [None, None]
    assert topo.probe("a1", (CONTAINERS["i1"][1], 80)) == [None]
    # Within the internal network traffic flows.
    assert topo.probe("i1", (CONTAINERS["i2"][1], 80)) == ["i2 10.88.3.2"]


def test_published_port_from_client_host_and_loopback(topo, fw):
    fw.add_ports(ports=[port("a1", 8080), port("a1", 8053, protocol="udp")])
    assert topo.probe("client", (CLIENT_SIDE, 8080), (CLIENT_SIDE, 8053, "udp"), (UPLINK, 8080)) \
        == [f"a1 {CLIENT}", f"a1 {CLIENT}", f"a1 {CLIENT}"]
    assert topo.probe("host", ("127.0.0.1", 8080), (CLIENT_SIDE, 8080), ("127.0.0.1", 8053, "udp")) \
        == ["a1 10.88.1.1", f"a1 {CLIENT_SIDE}", "a1 10.88.1.1"]
    # Unpublished: routed straight to the container address, dropped.
    assert topo.probe("client", ("10.88.1.2", 80)) == [None]
    topo.ip("client", "route", "add", "10.88.0.0/16", "via", CLIENT_SIDE)
    try:
        assert topo.probe("client", ("10.88.1.2", 80)) == [None]
    finally:
        topo.ip("client", "route", "del", "10.88.0.0/16", "via", CLIENT_SIDE)


def test_published_port_on_one_address(topo, fw):
    fw.add_ports(ports=[port("a2", 9090, host_ip=CLIENT_SIDE),
                        port("b1", 9191, host_ip="127.0.0.1")])
    assert topo.probe("client", (CLIENT_SIDE, 9090), (UPLINK, 9090)) == [f"a2 {CLIENT}", None]
    assert topo.probe("host", ("127.0.0.1", 9090), ("127.0.0.1", 9191), (CLIENT_SIDE, 9191)) \
        == [None, "b1 10.88.2.1", None]


def test_hairpin_own_and_neighbour_port(topo, fw):
    fw.add_ports(ports=[port("a1", 8080)])
    own = topo.probe("a1", (CLIENT_SIDE, 8080), ("10.88.1.1", 8080))
    assert own == ["a1 10.88.1.1", "a1 10.88.1.1"]
    assert topo.probe("a2", (UPLINK, 8080)) == ["a1 10.88.1.1"]
    # From another network the published port is reachable too, masqueraded.
    assert topo.probe("b1", (UPLINK, 8080)) == ["a1 10.88.1.1"]


def udp_from(topo, ns: str, host: str, port: int, source_port: int) -> str | None:
    """One UDP request from a fixed source port: each is the same conntrack flow."""
    script = (
        "import socket, sys\n"
        "sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "sock.bind(('', int(sys.argv[3]))); sock.settimeout(1)\n"
        "sock.sendto(b'?', (sys.argv[1], int(sys.argv[2])))\n"
        "try:\n    print(sock.recvfrom(64)[0].decode())\n"
        "except OSError:\n    print('')\n"
    )
    answer = topo.ns(ns).run(support.PYTHON, "-c", script, host, str(port),
                             str(source_port)).stdout.strip()
    return answer or None


def test_a_udp_port_moved_to_another_container_takes_a_flow_that_goes_on(topo, fw):
    """The CNI portmap bug: a client that keeps sending from one source port is one
    conntrack entry, NATed at its first packet; after the port moves, its packets must
    reach the new container, not the old one (or nothing)."""
    fw.add_ports(ports=[port("a1", 8054, protocol="udp")])
    assert udp_from(topo, "client", CLIENT_SIDE, 8054, 40054) == f"a1 {CLIENT}"
    fw.remove_ports(endpoint_id="a1", ports=[port("a1", 8054, protocol="udp")])
    fw.add_ports(ports=[port("b1", 8054, protocol="udp")])
    assert udp_from(topo, "client", CLIENT_SIDE, 8054, 40054) == f"b1 {CLIENT}"
    # From the host itself (loopback, NATed in output) as well.
    assert udp_from(topo, "host", "127.0.0.1", 8054, 40055) == "b1 10.88.2.1"
    fw.remove_ports(endpoint_id="b1", ports=[port("b1", 8054, protocol="udp")])
    fw.add_ports(ports=[port("a2", 8054, protocol="udp")])
    assert udp_from(topo, "host", "127.0.0.1", 8054, 40055) == "a2 10.88.1.1"


def test_networks_isolated_unless_allowed(topo, fw):
    a1, b1 = CONTAINERS["a1"][1], CONTAINERS["b1"][1]
    assert topo.probe("a1", (b1, 80)) == [None]
    assert topo.probe("b1", (a1, 80)) == [None]
    b_allows_a = dataclasses.replace(NET_B, allowed_networks=("net-a",))
    fw.add_network(network=b_allows_a)
    assert topo.probe("a1", (b1, 80)) == ["b1 10.88.2.1"]  # masqueraded into B, as in Docker
    assert topo.probe("b1", (a1, 80)) == [None]
    fw.add_network(network=NET_B)  # the same network without the allowance: closed again
    assert topo.probe("a1", (b1, 80)) == [None]


def test_allowance_added_before_the_allowed_network_exists(topo, fw):
    fw.remove_network(network_id="net-a")
    fw.remove_network(network_id="net-b")
    assert fw.list_networks() == ["net-c", "net-i"]
    fw.add_network(network=dataclasses.replace(NET_B, allowed_networks=("net-a",)))
    fw.add_network(network=NET_A)  # finds in the kernel that B allows it
    assert topo.probe("a1", (CONTAINERS["b1"][1], 80)) == ["b1 10.88.2.1"]
    fw.remove_network(network_id="net-a")
    fw.add_network(network=NET_A)
    assert topo.probe("a1", (CONTAINERS["b1"][1], 80)) == ["b1 10.88.2.1"]


def test_icc_off_blocks_containers_but_not_published_ports(topo, fw):
    c2 = CONTAINERS["c2"][1]
    assert topo.probe("c1", (c2, 80), (c2, 80, "udp")) == [None, None]
    assert topo.probe("c1", ("10.88.4.1", 80)) == [None]  # nothing listens on the host: sanity
    assert topo.probe("a1", ("10.88.1.3", 80)) == ["a2 10.88.1.2"]  # icc on in A
    fw.add_ports(ports=[port("c2", 8181)])
    assert topo.probe("c1", (UPLINK, 8181)) == ["c2 10.88.4.1"]
    fw.add_network(network=dataclasses.replace(NET_C, enable_icc=True))
    assert topo.probe("c1", (c2, 80)) == ["c2 10.88.4.2"]


# --- bookkeeping -------------------------------------------------------------------

def test_port_conflict_names_the_holder_and_changes_nothing(topo, fw):
    fw.add_ports(ports=[port("a1", 8080), port("a2", 9090, host_ip=CLIENT_SIDE)])
    before, count = fw.list_ports(), fw.element_count()
    attempts = [
        [port("b1", 8080)],                                   # same port, every address
        [port("b1", 8181), port("b1", 8080, host_ip=UPLINK)],  # specific inside a wildcard
        [port("b1", 9090)],                                   # wildcard over a specific
        [port("b1", 9090, host_ip=CLIENT_SIDE)],              # the same specific
        [port("a1", 8080, container_port=81)],                # same endpoint, other target
    ]
    holders = []
    for attempt in attempts:
        with pytest.raises(errors.AlreadyExists) as caught:
            fw.add_ports(ports=attempt)
        holders.append(caught.value.metadata["endpoint_id"])
        assert fw.list_ports() == before and fw.element_count() == count
    assert holders == ["a1", "a1", "a2", "a2", "a1"]
    # Other protocol, other address: no conflict.
    fw.add_ports(ports=[port("b1", 8080, protocol="udp"), port("b1", 9090, host_ip=UPLINK)])


def test_adds_and_removes_are_idempotent_and_leave_nothing(topo, fw):
    empty = fw.element_count()
    ports = [port("a1", 8080), port("a1", 9090, host_ip=CLIENT_SIDE),
             port("a1", 8053, protocol="udp")]
    fw.add_ports(ports=ports)
    count = fw.element_count()
    fw.add_ports(ports=ports)
    fw.add_ports(ports=ports[1:] + [port("a1", 8081)])  # part repeated, part new
    assert fw.element_count() == count + 2  # its address and its port
    listed = [PortRule(**item) for item in fw.list_ports()]
    assert sorted(listed, key=str) == sorted([*ports, port("a1", 8081)], key=str)
    fw.add_network(network=NET_A)
    assert fw.element_count() == count + 2
    fw.add_ports(ports=[port("a2", 9090, host_ip=UPLINK)])  # keeps the 9090 guard in place
    # Removed by key (the ports known), then again (gone: a scan finds nothing).
    fw.remove_ports(endpoint_id="a1", ports=[*ports, port("a1", 8081)])
    assert [item["endpoint_id"] for item in fw.list_ports()] == ["a2"]
    with pytest.raises(errors.AlreadyExists):
        fw.add_ports(ports=[port("b1", 9090)])  # the guard of a2's specific address stayed
    fw.remove_ports(endpoint_id="a1", ports=ports)
    fw.remove_ports(endpoint_id="a2")
    fw.remove_ports(endpoint_id="a2")
    assert fw.list_ports() == []
    assert fw.element_count() == empty
    for network in NETWORKS:
        fw.remove_network(network_id=network.network_id)
        fw.remove_network(network_id=network.network_id)
    assert fw.list_networks() == []
    assert fw.element_count() == sum(len(rules) for _, rules in ruleset.CHAINS.values())


def test_remove_network_takes_its_ports(topo, fw):
    fw.add_ports(ports=[port("a1", 8080), port("b1", 8181), port("a2", 9090, host_ip=UPLINK)])
    fw.remove_network(network_id="net-a")
    assert [item["endpoint_id"] for item in fw.list_ports()] == ["b1"]
    # The guard for the removed specific-address mapping went too: a wildcard fits now.
    fw.add_ports(ports=[port("b1", 9090)])


def test_sync_restores_after_flush_and_removes_stale(topo, fw):
    ports = [port("a1", 8080), port("a2", 9090, host_ip=CLIENT_SIDE)]
    fw.add_ports(ports=ports)
    full = fw.element_count()
    assert fw.sync(networks=NETWORKS, ports=ports) == []

    topo.nft("flush", "ruleset")
    subprocess.run(topo.ns("host").exec_args("nft", "-f", "-"), input=FOREIGN, text=True,
                   check=True)
    assert topo.probe("client", (CLIENT_SIDE, 8080)) == [None]
    drift = fw.drift(networks=NETWORKS, ports=ports)
    repairs = fw.sync(networks=NETWORKS, ports=ports)
    assert repairs == drift
    assert repairs[0] == "created table inet cnm"
    assert any("ports_any_addr element tcp . 8080" in line for line in repairs)
    assert fw.element_count() == full
    assert topo.probe("client", (CLIENT_SIDE, 8080)) == [f"a1 {CLIENT}"]
    assert topo.probe("a1", (INTERNET, 80)) == [f"x {UPLINK}"]

    assert fw.drift(networks=NETWORKS, ports=ports) == []
    topo.nft("delete", "rule", "inet", "cnm", "forward", "handle",
             _handle_of_first_rule(topo, "forward"))
    topo.nft("add", "element", "inet", "cnm", "ports_any_addr", "{ udp . 7000 : 10.88.1.9 }")
    drift = fw.drift(networks=NETWORKS, ports=ports)
    assert fw.drift(networks=NETWORKS, ports=ports) == drift  # it changed nothing
    repairs = fw.sync(networks=NETWORKS, ports=ports)
    assert repairs == drift
    assert "rewrote chain forward: its rules differed" in repairs
    assert any(line.startswith("removed stale ports_any_addr element udp . 7000") for line in repairs)
    assert fw.element_count() == full
    assert fw.sync(networks=NETWORKS, ports=ports) == []


def test_the_table_of_an_agent_from_before_ipv6_is_replaced(topo, fw):
    """An upgraded agent finds ``ip cnm`` (IPv4 only): it goes in the transaction that
    makes ``inet cnm``, and the sync that follows at start refills it."""
    topo.nft("delete", "table", "inet", "cnm")
    topo.nft("add", "table", "ip", "cnm")
    topo.nft("add", "chain", "ip", "cnm", "postrouting",
             "{ type nat hook postrouting priority 100; }")
    topo.nft("add", "rule", "ip", "cnm", "postrouting", "ip saddr 10.88.0.0/16 masquerade")
    topo.nft("add", "chain", "ip", "cnm", "forward",
             "{ type filter hook forward priority 0; }")
    fw.ensure_base()
    tables = topo.nft("list", "tables").stdout.split("\n")
    assert [t for t in tables if t.endswith(" cnm")] == ["table inet cnm"], tables
    fw.sync(networks=NETWORKS, ports=[port("a1", 8080)])
    assert topo.probe("client", (CLIENT_SIDE, 8080)) == [f"a1 {CLIENT}"]
    assert topo.probe("a1", (INTERNET, 80)) == [f"x {UPLINK}"]  # masqueraded once


def _handle_of_first_rule(topo, chain: str) -> str:
    listing = json.loads(topo.nft("-j", "list", "chain", "inet", "cnm", chain).stdout)
    return str(next(item["rule"]["handle"] for item in listing["nftables"] if "rule" in item))


def test_adds_after_a_flush_rebuild_nothing_partial_and_sync_restores_everything(topo, fw):
    """Rebuilding only the base (or one network) would leave every other network's
    isolation gone while reporting success: the adds refuse, the caller syncs."""
    fw.add_ports(ports=[port("a1", 8080)])
    topo.nft("delete", "table", "inet", "cnm")
    with pytest.raises(errors.FailedPrecondition) as caught:
        fw.add_ports(ports=[port("b1", 8081)])
    assert caught.value.reason == "FIREWALL_TABLE_MISSING"
    with pytest.raises(errors.FailedPrecondition) as caught:
        fw.add_network(network=NET_A)
    assert caught.value.reason == "FIREWALL_TABLE_MISSING"
    assert "inet cnm" not in topo.nft("list", "tables").stdout
    fw.sync(networks=NETWORKS, ports=[port("a1", 8080), port("b1", 8081)])
    assert topo.probe("client", (CLIENT_SIDE, 8080), (CLIENT_SIDE, 8081)) == [
        f"a1 {CLIENT}", f"b1 {CLIENT}"]
    assert topo.probe("a1", ("10.88.2.2", 80)) == [None], "networks isolated again"


def test_invalid_input_is_refused_before_the_kernel(topo, fw):
    count = fw.element_count()
    bad = [
        dataclasses.replace(port("a1", 8080), protocol="icmp"),
        dataclasses.replace(port("a1", 8080), host_port=0),
        dataclasses.replace(port("a1", 8080), host_ip="0.0.0.0"),
        dataclasses.replace(port("a1", 8080), container_ip="10.88.1"),
    ]
    for rule in bad:
        with pytest.raises(errors.InvalidArgument):
            fw.add_ports(ports=[rule])
    with pytest.raises(errors.InvalidArgument):
        fw.add_ports(ports=[port("a1", 8080), port("a2", 8080, host_ip=UPLINK)])
    with pytest.raises(errors.InvalidArgument):
        fw.add_network(network=dataclasses.replace(NET_A, gateway="10.99.0.1"))
    with pytest.raises(errors.AlreadyExists):
        fw.add_network(network=dataclasses.replace(NET_A, network_id="net-z"))
    assert fw.element_count() == count


def test_nft_process_fallback(topo, agent_process):
    fallback = FirewallAgent(topo.ns("host"), "nftables/nft")
    try:
        fallback.sync(networks=NETWORKS, ports=[port("a1", 8080)])
        assert topo.probe("client", (CLIENT_SIDE, 8080)) == [f"a1 {CLIENT}"]
        with pytest.raises(errors.AlreadyExists):
            fallback.add_ports(ports=[port("a2", 8080)])
        fallback.remove_ports(endpoint_id="a1")
        assert agent_process.list_ports() == []
    finally:
        fallback.stop()


def test_libnftables_context_stays_in_the_namespace_it_was_made_in(netns):
    """A context made by a thread inside a namespace keeps acting there from any thread."""
    import ctypes
    import os
    import threading

    from netdriver_service.firewall.libnft import LibNftables

    target = netns()
    made: list[LibNftables] = []

    def make_inside() -> None:
        fd = os.open(target.path, os.O_RDONLY)
        try:
            assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
        finally:
            os.close(fd)
        made.append(LibNftables())  # this short-lived thread then exits

    thread = threading.Thread(target=make_inside)
    thread.start()
    thread.join()
    made[0].run([{"add": {"table": {"family": "ip", "name": "cnm_probe"}}}])
    root_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                 check=True).stdout
    if "cnm_probe" in root_tables:  # the failure this test exists for: undo it
        subprocess.run(["nft", "delete", "table", "ip", "cnm_probe"], check=True)
    assert "cnm_probe" in target.run("nft", "list", "tables").stdout
    assert "cnm_probe" not in root_tables


def test_icc_off_is_refused_without_br_netfilter(netns):
    host = netns()
    host.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")  # per namespace
    agent = FirewallAgent(host)
    try:
        with pytest.raises(errors.FailedPrecondition) as caught:
            agent.add_network(network=NET_C)
        assert caught.value.reason == "BR_NETFILTER_INACTIVE"
        agent.ensure_base()
        agent.add_network(network=NET_A)
        assert agent.list_networks() == ["net-a"]
    finally:
        agent.stop()
