"""The overlay driver against the real kernel: hosts simulated by namespaces on one underlay.

Each host gets its own netlink layer (``Netlink(host_ns=...)``) and overlay
driver; the firewall is the in-memory fake (the multi-host tests run real
agents with nftables).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from cnm.undo import Undo
from netdriver_service import model, netns
from netdriver_service.drivers.overlay import OverlayDriver, check_peers, gateway_mac
from netdriver_service.faults import Faults
from netdriver_service.model import Peer, RemoteEndpoint
from netdriver_service.names import vxlan_name
from netdriver_service.netlink import Netlink
from tests import support
from tests.netdriver import harness
from tests.netdriver.fakes import FakeFirewall

pytestmark = pytest.mark.root

DRIVERS = ("bridge", "overlay")
NET = model.network_from_proto(
    pb.Network(network_id="ov1", driver=pb.DRIVER_OVERLAY, subnet="10.20.0.0/16", gateway="10.20.0.1",
               vni=4242, mtu=1450),
    DRIVERS,
)


class Host:
    def __init__(self, ns: support.Netns, underlay_ip: str) -> None:
        self.ns = ns
        self.underlay_ip = underlay_ip
        self.netlink: Netlink | None = None
        self.driver: OverlayDriver | None = None

    async def open(self) -> Host:
        self.netlink = await Netlink(host_ns=self.ns.path).open()
        self.driver = OverlayDriver(
            netlink=self.netlink, firewall=FakeFirewall(), faults=Faults(),
            underlay_ip=lambda: self.underlay_ip,
        )
        return self

    async def create(self, network=NET) -> None:
        async with Undo("create network") as undo:
            await self.driver.create_network(network, undo)
            undo.commit()

    async def connect(self, container: support.Netns, endpoint_id: str, address: str,
                      network=NET) -> model.EndpointSpec:
        spec = model.endpoint_from_proto(
            pb.Endpoint(endpoint_id=endpoint_id, network_id=network.network_id,
                        sandbox=container.path, address=address, default_route=True),
            network, "/var/run/netns", netns.Confinement.at_start(),
        )
        async with Undo("create endpoint") as undo:
            made = await self.driver.create_endpoint(network, spec, undo)
            undo.commit()
        return made

    def count_ipv4_from_underlay(self, network=NET) -> None:
        """Counts IPv4 and ARP frames the VXLAN device delivers, but for multicast: the
        hosts' own IGMP and IPv6 chatter is legitimately replicated to every peer."""
        self.ns.run("nft", "-f", "-", input=(
            "table bridge cnmtest {\n chain counted {\n"
            " type filter hook prerouting priority 0;\n"
            f' iifname "{vxlan_name(network.network_id)}" ether type {{ ip, arp }}'
            " meta pkttype != multicast counter\n"
            " }\n}\n"
        ))

    def vxlan_rx(self) -> int:
        out = self.ns.run("nft", "-j", "list", "chain", "bridge", "cnmtest", "counted").stdout
        rules = [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
        return next(e["counter"]["packets"] for e in rules[0]["expr"] if "counter" in e)

    def bridge_fdb(self, network=NET) -> str:
        return self.ns.run("bridge", "fdb", "show", "dev", vxlan_name(network.network_id)).stdout

    def neighbours(self, network=NET) -> str:
        return self.ns.run("ip", "neigh", "show", "dev", vxlan_name(network.network_id)).stdout


@pytest.fixture
async def hosts(netns):
    underlay = support.Underlay(netns)
    made = []
    for number in (1, 2, 3):
        made.append(await Host(underlay.add_host(), underlay.address(number)).open())
    yield made
    for host in made:
        await host.netlink.close()


def peers_of(hosts, *others):
    return [Peer(f"h{hosts.index(h) + 1}", h.underlay_ip) for h in others]


async def test_network_is_a_bridge_with_the_shared_gateway_mac_and_a_vxlan_port(hosts):
    h1 = hosts[0]
    await h1.create()
    links = {link["ifname"]: link for link in harness.links(h1.ns.name)}
    bridge, device = links[NET.bridge], links[vxlan_name("ov1")]
    assert bridge["address"] == gateway_mac(NET)
    assert bridge["mtu"] == 1450
    data = device["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"]) == (4242, "10.99.0.1", 4789)
    assert data["learning"] is False and data["proxy"] is True
    assert device["master"] == NET.bridge and device["mtu"] == 1450
    assert device["linkinfo"]["info_slave_data"]["learning"] is False
    assert device["ifalias"] == "cnm:vx:ov1"
    # Idempotent: a repeat changes nothing.
    before = harness.link_summary(h1.ns.name)
    assert await h1.driver.network_present(NET)
    await h1.create()
    assert harness.link_summary(h1.ns.name) == before


async def test_a_changed_underlay_address_remakes_the_vxlan_device(hosts):
    h1 = hosts[0]
    await h1.create()
    h1.underlay_ip = "10.99.0.77"
    assert not await h1.driver.network_present(NET)
    await h1.create()
    links = {link["ifname"]: link for link in harness.links(h1.ns.name)}
    assert links[vxlan_name("ov1")]["linkinfo"]["info_data"]["local"] == "10.99.0.77"


async def test_containers_on_two_hosts_talk_with_no_flooding_and_gateway_stays_local(
    hosts, netns, tmp_path
):
    h1, h2, h3 = hosts
    for host in hosts:
        await host.create()
    c1, c2 = netns("cnmt-c"), netns("cnmt-c")
    e1 = await h1.connect(c1, "e1", "10.20.0.2")
    e2 = await h2.connect(c2, "e2", "10.20.0.3")
    everyone = [h1, h2, h3]
    remotes = {"h1": RemoteEndpoint(e1.address, e1.mac, h1.underlay_ip),
               "h2": RemoteEndpoint(e2.address, e2.mac, h2.underlay_ip)}
    for number, host in enumerate(everyone, start=1):
        changes = await host.driver.set_peers(
            NET, peers_of(everyone, *[h for h in everyone if h is not host]),
            [remote for name, remote in remotes.items() if name != f"h{number}"],
        )
        assert changes
    assert "02:42:0a:14:00:03 dst 10.99.0.2 self permanent" in h1.bridge_fdb()
    assert "02:42:0a:14:00:03 master" in h1.bridge_fdb() and "static" in h1.bridge_fdb()
    assert "00:00:00:00:00:00 dst 10.99.0.2 self permanent" in h1.bridge_fdb()
    assert "00:00:00:00:00:00 dst 10.99.0.3 self permanent" in h1.bridge_fdb()
    assert "10.20.0.3 lladdr 02:42:0a:14:00:03 PERMANENT" in h1.neighbours()
    # A repeat is a no-op.
    assert await h1.driver.set_peers(NET, peers_of(everyone, h2, h3), [remotes["h2"]]) == []
    for host in everyone:
        host.count_ipv4_from_underlay()

    quiet = h3.vxlan_rx()
    before_h2 = h2.vxlan_rx()
    server = harness.Server(c2.name, 7000, log_dir=tmp_path)
    try:
        assert harness.ask(c1.name, "10.20.0.3", 7000) == "10.20.0.2"
    finally:
        server.stop()
    # Unicast all the way: the third host saw none of it, and the second got frames.
    assert h3.vxlan_rx() == quiet
    assert h2.vxlan_rx() > before_h2

    # The gateway answers locally on each host, with the shared MAC; the ARP
    # request for it reaches no other host.
    before = [h.vxlan_rx() for h in (h2, h3)]
    c1.run("ip", "neigh", "flush", "all")
    c1.run("ping", "-c1", "-W1", "10.20.0.1")
    assert gateway_mac(NET) in c1.run("ip", "neigh", "show", "10.20.0.1").stdout
    c2.run("ping", "-c1", "-W1", "10.20.0.1")
    assert [h.vxlan_rx() for h in (h2, h3)] == before


async def test_set_peers_replaces_and_removes_entries(hosts):
    h1, h2, h3 = hosts
    await h1.create()
    first = RemoteEndpoint("10.20.0.3", "02:42:0a:14:00:03", h2.underlay_ip)
    await h1.driver.set_peers(NET, peers_of(hosts, h2, h3), [first])
    moved = RemoteEndpoint("10.20.0.3", "02:42:0a:14:00:03", h3.underlay_ip)
    changes = await h1.driver.set_peers(NET, peers_of(hosts, h3), [moved])
    assert changes == ["mac +02:42:0a:14:00:03 via 10.99.0.3", "flood -10.99.0.2"]
    fdb = h1.bridge_fdb()
    assert "dst 10.99.0.2" not in fdb and "02:42:0a:14:00:03 dst 10.99.0.3" in fdb
    await h1.driver.set_peers(NET, [], [])
    fdb = h1.bridge_fdb()
    assert "02:42:0a:14:00:03" not in fdb and "00:00:00:00:00:00" not in fdb
    assert h1.neighbours().strip() == ""


def test_peer_checks_refuse_bad_input():
    good = RemoteEndpoint("10.20.0.3", "02:42:0a:14:00:03", "10.99.0.2")
    with pytest.raises(errors.InvalidArgument, match="underlay"):
        check_peers(NET, [Peer("h2", "nope")], [])
    with pytest.raises(errors.InvalidArgument, match="outside"):
        check_peers(NET, [], [RemoteEndpoint("10.30.0.3", good.mac, good.underlay_ip)])
    with pytest.raises(errors.InvalidArgument, match="gateway"):
        check_peers(NET, [], [RemoteEndpoint("10.20.0.1", good.mac, good.underlay_ip)])
    with pytest.raises(errors.InvalidArgument, match="twice"):
        check_peers(NET, [], [good, RemoteEndpoint("10.20.0.4", good.mac, "10.99.0.3")])
    with pytest.raises(errors.InvalidArgument, match="MAC"):
        check_peers(NET, [], [RemoteEndpoint("10.20.0.4", "01:00:00:00:00:01", "10.99.0.3")])


async def test_delete_removes_vxlan_bridge_and_endpoints(hosts, netns):
    h1 = hosts[0]
    await h1.create()
    await h1.connect(netns("cnmt-c"), "e1", "10.20.0.2")
    removed = await h1.driver.delete_network(NET)
    assert removed == ["e1"]
    names = harness.link_names(h1.ns.name)
    assert NET.bridge not in names and vxlan_name("ov1") not in names
    assert await h1.driver.delete_network(NET) == []


async def test_vni_must_be_valid_and_unique_on_the_host(hosts):
    h1 = hosts[0]
    with pytest.raises(errors.InvalidArgument, match="vni"):
        await h1.create(model.network_from_proto(
            pb.Network(network_id="ov0", driver=pb.DRIVER_OVERLAY, subnet="10.21.0.0/16"), DRIVERS))
    await h1.create()
    other = model.network_from_proto(
        pb.Network(network_id="ov2", driver=pb.DRIVER_OVERLAY, subnet="10.22.0.0/16", vni=4242,
                   mtu=1450), DRIVERS)
    with pytest.raises(errors.AlreadyExists, match="vni 4242"):
        await h1.create(other)
    # The failed create left nothing of itself behind.
    assert other.bridge not in harness.link_names(h1.ns.name)


def forwarding_lines(host: Host) -> tuple[list[str], str]:
    """The device's own FDB entries (flood and remote MACs) and its neighbour entries."""
    fdb = sorted(line for line in host.bridge_fdb().splitlines() if " dst " in line)
    return fdb, host.neighbours()


async def program(h1: Host, hosts) -> RemoteEndpoint:
    remote = RemoteEndpoint("10.20.0.3", "02:42:0a:14:00:03", hosts[1].underlay_ip)
    await h1.driver.set_peers(NET, peers_of(hosts, hosts[1], hosts[2]), [remote])
    return remote


def vxlan_data(host: Host, network=NET) -> dict:
    links = {link["ifname"]: link for link in harness.links(host.ns.name)}
    return links[vxlan_name(network.network_id)]["linkinfo"]["info_data"]


async def test_no_underlay_address_is_refused_before_anything_is_made(hosts):
    h1 = hosts[0]
    h1.underlay_ip = ""
    before = harness.link_summary(h1.ns.name)
    with pytest.raises(errors.FailedPrecondition, match="--underlay-ip") as caught:
        await h1.create()
    assert caught.value.reason == "NO_UNDERLAY_ADDRESS"
    assert harness.link_summary(h1.ns.name) == before
    # A device made with an address is not swapped for one without.
    h1.underlay_ip = "10.99.0.1"
    await h1.create()
    await program(h1, hosts)
    kept = forwarding_lines(h1)
    h1.underlay_ip = ""
    with pytest.raises(errors.FailedPrecondition, match="--underlay-ip"):
        await h1.create()
    assert vxlan_data(h1)["local"] == "10.99.0.1" and forwarding_lines(h1) == kept


async def test_a_stale_device_stays_with_its_forwarding_when_its_new_vni_is_taken(hosts):
    h1 = hosts[0]
    await h1.create()
    await program(h1, hosts)
    kept = forwarding_lines(h1)
    assert len(kept[0]) == 3 and "10.20.0.3" in kept[1]
    h1.ns.run("ip", "link", "add", "vxforeign", "type", "vxlan", "id", "4343", "dstport", "4789")
    renumbered = replace(NET, vni=4343)
    with pytest.raises(errors.AlreadyExists, match="vxforeign") as caught:
        await h1.create(renumbered)
    assert caught.value.reason == "VNI_IN_USE"
    assert vxlan_data(h1)["id"] == 4242 and forwarding_lines(h1) == kept
    assert await h1.driver.network_present(NET)


async def test_a_failed_remake_restores_the_old_device_and_a_good_one_keeps_forwarding(hosts):
    h1 = hosts[0]
    await h1.create()
    await program(h1, hosts)
    kept = forwarding_lines(h1)
    h1.underlay_ip = "10.99.0.77"
    h1.driver.faults = Faults("after:vxlan")
    with pytest.raises(errors.Internal, match="injected"):
        await h1.create()
    assert vxlan_data(h1)["local"] == "10.99.0.1" and forwarding_lines(h1) == kept
    h1.driver.faults = Faults()
    await h1.create()
    assert vxlan_data(h1)["local"] == "10.99.0.77"
    assert forwarding_lines(h1) == kept  # no wait for the orchestrator's next push
    assert await h1.driver.set_peers(NET, peers_of(hosts, hosts[1], hosts[2]),
                                     [RemoteEndpoint("10.20.0.3", "02:42:0a:14:00:03",
                                                     hosts[1].underlay_ip)]) == []


async def test_vxlan_state_and_repair_read_and_remake_the_kernel_device(hosts):
    h1 = hosts[0]
    await h1.create()
    await program(h1, hosts)
    bridge = await h1.netlink.get_link(NET.bridge)
    state = await h1.driver.vxlan_state(NET.network_id, bridge.index)
    assert (state.vni, state.local, state.learning, state.proxy, state.up, state.attached) == (
        4242, "10.99.0.1", False, True, True, True)
    assert (state.flood_peers, state.remote_macs, state.neighbours) == (2, 1, 1)
    kept = forwarding_lines(h1)
    assert await h1.driver.repair_network(NET) == []
    h1.ns.run("ip", "link", "del", vxlan_name(NET.network_id))
    assert await h1.driver.vxlan_state(NET.network_id, bridge.index) is None
    assert await h1.driver.repair_network(NET) == [
        f"re-created missing VXLAN device {vxlan_name(NET.network_id)} of network ov1"]
    assert forwarding_lines(h1) == kept and await h1.driver.network_present(NET)
    # Its bridge deleted by hand: the network is on every host, so it is made whole.
    h1.ns.run("ip", "link", "del", NET.bridge)
    assert await h1.driver.repair_network(NET) == [
        f"re-made stale VXLAN device {vxlan_name(NET.network_id)} of network ov1",
        f"re-created missing bridge {NET.bridge} of network ov1",
    ]
    assert forwarding_lines(h1) == kept and await h1.driver.network_present(NET)
