"""Real agent processes (nftables firewall) on simulated hosts, driven over gRPC:
CreateNetwork with the overlay driver, endpoints, SetNetworkPeers, traffic."""

from __future__ import annotations

import pytest

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from netdriver_service import names
from netdriver_service.names import vxlan_name
from tests import support
from tests.netdriver import harness

pytestmark = pytest.mark.root

NET = pb.Network(network_id="ovn1", driver=pb.DRIVER_OVERLAY, subnet="10.20.0.0/16",
                 gateway="10.20.0.1", vni=5001)


@pytest.fixture
def cluster(netns, tmp_path):
    underlay = support.Underlay(netns)
    internet = underlay.add_internet()
    agents = []
    for number in (1, 2):
        host = underlay.add_host()
        agents.append(harness.AgentProcess(host, tmp_path / f"state{number}",
                                           host_id=f"h{number}"))
    yield underlay, internet, agents
    for agent in agents:
        agent.stop()


def endpoint(endpoint_id: str, container: support.Netns, address: str, **fields):
    return pb.Endpoint(endpoint_id=endpoint_id, network_id=NET.network_id,
                       sandbox=container.path, address=address, default_route=True, **fields)


def peers(agents, me: int, remotes) -> pb.SetNetworkPeersRequest:
    request = pb.SetNetworkPeersRequest(network_id=NET.network_id)
    for number, _ in enumerate(agents, start=1):
        if number != me:
            request.peers.add(host_id=f"h{number}", underlay_ip=f"10.99.0.{number}")
    for number, made in remotes:
        if number != me:
            request.remote_endpoints.add(address=made.address, mac_address=made.mac_address,
                                         underlay_ip=f"10.99.0.{number}")
    return request


async def test_overlay_spans_hosts_with_egress_and_ports_through_each_own_host(
    cluster, netns, tmp_path
):
    _, internet, agents = cluster
    info = agents[0].call("GetHostInfo", pb.GetHostInfoRequest())
    assert info.underlay_ip == "10.99.0.1"  # the default route's interface, found by itself
    assert pb.DRIVER_OVERLAY in info.drivers
    created = agents[0].call("CreateNetwork", pb.CreateNetworkRequest(network=NET)).network
    assert created.mtu == 1450  # VXLAN's 50 bytes taken off
    c1, c2 = netns("cnmt-c"), netns("cnmt-c")
    made = [
        (1, agents[0].call("CreateEndpoint", pb.CreateEndpointRequest(
            endpoint=endpoint("e1", c1, "10.20.0.2", port_mappings=[harness.tcp(8080, 80)])))
         .endpoint),
        # The second host gets the network from the endpoint's request.
        (2, agents[1].call("CreateEndpoint", pb.CreateEndpointRequest(
            endpoint=endpoint("e2", c2, "10.20.1.2"), network=NET)).endpoint),
    ]
    for number, agent in enumerate(agents, start=1):
        reply = agent.call("SetNetworkPeers", peers(agents, number, made))
        assert reply.applied and reply.changes
    servers = [harness.Server(c.name, port, log_dir=tmp_path)
               for c in (c1, c2) for port in (80, 7000)]
    servers.append(harness.Server(internet.name, 9000, log_dir=tmp_path))
    try:
        # Container to container, both ways, with their own addresses.
        assert harness.ask(c1.name, "10.20.1.2", 7000) == "10.20.0.2"
        assert harness.ask(c2.name, "10.20.0.2", 7000) == "10.20.1.2"
        # Egress through each one's own host, masqueraded to that host's address.
        assert harness.ask(c1.name, "10.99.0.254", 9000) == "10.99.0.1"
        assert harness.ask(c2.name, "10.99.0.254", 9000) == "10.99.0.2"
        # A published port answers on its own host.
        assert harness.ask(internet.name, "10.99.0.1", 8080) == "10.99.0.254"
        assert harness.ask(internet.name, "10.99.0.2", 8080) is None
    finally:
        for server in servers:
            server.stop()
    # One gateway, the same MAC on both hosts.
    for container in (c1, c2):
        container.run("ping", "-c1", "-W1", "10.20.0.1")
        assert "02:42:0a:14:00:01" in container.run("ip", "neigh", "show", "10.20.0.1").stdout
    state = agents[1].call("GetState", pb.GetStateRequest())
    assert [n.network_id for n in state.networks] == ["ovn1"]
    assert state.networks[0].vni == 5001


async def test_set_peers_is_ordered_idempotent_and_refused_where_meaningless(cluster):
    _, _, agents = cluster
    agent = agents[0]
    with pytest.raises(errors.NotFound):
        agent.call("SetNetworkPeers", pb.SetNetworkPeersRequest(network_id="ovn1"))
    agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
    request = pb.SetNetworkPeersRequest(network_id="ovn1", generation=5)
    request.peers.add(host_id="h2", underlay_ip="10.99.0.2")
    request.remote_endpoints.add(address="10.20.0.9", mac_address="02:42:0a:14:00:09",
                                 underlay_ip="10.99.0.2")
    first = agent.call("SetNetworkPeers", request)
    assert first.applied and len(first.changes) == 3
    again = agent.call("SetNetworkPeers", request)
    assert again.applied and list(again.changes) == []
    stale = pb.SetNetworkPeersRequest(network_id="ovn1", generation=4)
    assert not agent.call("SetNetworkPeers", stale).applied
    # No generation can wedge the network: the largest is refused, there is always a later
    # one, and after a Resync the next push is applied whatever its generation.
    for wedging in (2**64 - 1, 2**63):
        with pytest.raises(errors.InvalidArgument) as caught:
            agent.call("SetNetworkPeers", pb.SetNetworkPeersRequest(network_id="ovn1",
                                                                    generation=wedging))
        assert caught.value.reason == "INVALID_GENERATION"
    highest = pb.SetNetworkPeersRequest()
    highest.CopyFrom(request)
    highest.generation = 2**63 - 1
    assert agent.call("SetNetworkPeers", highest).applied
    agent.call("Resync", pb.ResyncRequest())
    assert agent.call("SetNetworkPeers", request).applied
    fdb = agent.host.run("bridge", "fdb", "show", "dev", vxlan_name("ovn1")).stdout
    assert "02:42:0a:14:00:09 dst 10.99.0.2" in fdb  # the stale push changed nothing
    bad = pb.SetNetworkPeersRequest(network_id="ovn1")
    bad.remote_endpoints.add(address="10.20.0.1", mac_address="02:42:0a:14:00:01",
                             underlay_ip="10.99.0.2")
    with pytest.raises(errors.InvalidArgument, match="gateway"):
        agent.call("SetNetworkPeers", bad)
    agent.call("CreateNetwork", pb.CreateNetworkRequest(
        network=harness.network("br1", "10.30.0.0/24")))
    with pytest.raises(errors.FailedPrecondition, match="no peers"):
        agent.call("SetNetworkPeers", pb.SetNetworkPeersRequest(network_id="br1"))
    with pytest.raises(errors.InvalidArgument, match="vni"):
        agent.call("CreateNetwork", pb.CreateNetworkRequest(network=pb.Network(
            network_id="ovn2", driver=pb.DRIVER_OVERLAY, subnet="10.21.0.0/16")))
    agent.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="ovn1"))
    assert vxlan_name("ovn1") not in harness.link_names(agent.host.name)


def test_a_failure_after_the_vxlan_step_leaves_nothing(netns, tmp_path):
    underlay = support.Underlay(netns)
    host = underlay.add_host()
    before = harness.link_summary(host.name)
    agent = harness.AgentProcess(host, tmp_path / "state", fault="after:vxlan")
    try:
        with pytest.raises(errors.Internal, match="injected"):
            agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
        assert harness.link_summary(host.name) == before
        assert list(agent.call("GetState", pb.GetStateRequest()).networks) == []
        assert "cnm-ovn1" not in harness.ruleset(host.name)
    finally:
        agent.stop()
    # The same request succeeds without the fault, and then the rules name the bridge.
    agent = harness.AgentProcess(host, tmp_path / "state")
    try:
        agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
        assert "cnm-ovn1" in harness.ruleset(host.name)
        assert names.vxlan_name("ovn1") in harness.link_names(host.name)
    finally:
        agent.stop()


def test_get_state_reports_the_vxlan_device_and_resync_makes_a_missing_one_again(cluster):
    _, _, agents = cluster
    agent = agents[0]
    agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
    request = pb.SetNetworkPeersRequest(network_id="ovn1", generation=1)
    request.peers.add(host_id="h2", underlay_ip="10.99.0.2")
    request.remote_endpoints.add(address="10.20.0.9", mac_address="02:42:0a:14:00:09",
                                 underlay_ip="10.99.0.2")
    agent.call("SetNetworkPeers", request)

    def device() -> pb.VxlanDevice | None:
        state = agent.call("GetState", pb.GetStateRequest())
        (network,) = state.networks
        assert network.driver == pb.DRIVER_OVERLAY
        return state.vxlan_devices.get("ovn1")

    reported = device()
    assert reported == pb.VxlanDevice(
        name=vxlan_name("ovn1"), vni=5001, local_address="10.99.0.1", learning=False,
        proxy=True, up=True, attached=True, flood_peer_count=1, remote_mac_count=1,
        neighbour_count=1,
    )
    # Read from the kernel, not from a record: a change by hand shows.
    agent.host.run("ip", "link", "set", vxlan_name("ovn1"), "type", "vxlan", "learning")
    assert device().learning is True
    agent.host.run("ip", "link", "del", vxlan_name("ovn1"))
    assert device() is None
    repaired = agent.call("Resync", pb.ResyncRequest()).repaired
    assert f"re-created missing VXLAN device {vxlan_name('ovn1')} of network ovn1" in repaired
    # Back with the forwarding it was last given.
    assert device() == reported
    fdb = agent.host.run("bridge", "fdb", "show", "dev", vxlan_name("ovn1")).stdout
    assert "02:42:0a:14:00:09 dst 10.99.0.2" in fdb


def test_a_vxlan_device_left_without_its_bridge_or_record_is_reported_and_deleted(
    cluster, tmp_path,
):
    """What is left of an overlay network after its bridge went and the agent lost its
    records is still cnm's to see and delete: else nothing would ever collect it."""
    _, _, agents = cluster
    agents[0].call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
    host = agents[0].host
    agents[0].stop()
    host.run("ip", "link", "del", names.bridge_name("ovn1"))
    fresh = harness.AgentProcess(host, tmp_path / "lost-records", host_id="h1")
    try:
        state = fresh.call("GetState", pb.GetStateRequest())
        (network,) = state.networks
        assert (network.network_id, network.driver) == ("ovn1", pb.DRIVER_OVERLAY)
        device = state.vxlan_devices["ovn1"]
        assert (device.name, device.vni) == (vxlan_name("ovn1"), 5001)
        assert not device.attached
        fresh.call("DeleteNetwork", pb.DeleteNetworkRequest(network_id="ovn1"))
        assert vxlan_name("ovn1") not in harness.link_names(host.name)
        assert not fresh.call("GetState", pb.GetStateRequest()).networks
    finally:
        fresh.stop()


def test_a_changed_underlay_address_is_taken_up_by_the_next_resync(cluster):
    """No --underlay-ip: the agent reads the default route's address again at every
    resync (periodic, or asked), and remakes its VXLAN devices with a new one."""
    _, _, agents = cluster
    agent = agents[0]
    agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))

    def local() -> str:
        return agent.call("GetState", pb.GetStateRequest()).vxlan_devices["ovn1"].local_address

    assert local() == "10.99.0.1"
    agent.host.run("ip", "addr", "flush", "dev", "eth0")
    agent.host.run("ip", "addr", "add", "10.99.0.51/24", "dev", "eth0")
    agent.host.run("ip", "route", "add", "default", "via", "10.99.0.254")
    repaired = agent.call("Resync", pb.ResyncRequest()).repaired
    assert f"re-made stale VXLAN device {vxlan_name('ovn1')} of network ovn1" in repaired
    assert local() == "10.99.0.51"
    assert agent.call("Resync", pb.ResyncRequest()).repaired == []


def test_an_agent_without_an_underlay_address_refuses_overlay_networks(netns, tmp_path):
    host = netns("cnmt-host")  # no default route to take an address from
    agent = harness.AgentProcess(host, tmp_path / "state")
    try:
        assert agent.call("GetHostInfo", pb.GetHostInfoRequest()).underlay_ip == ""
        before = harness.link_summary(host.name)
        with pytest.raises(errors.FailedPrecondition, match="--underlay-ip"):
            agent.call("CreateNetwork", pb.CreateNetworkRequest(network=NET))
        assert harness.link_summary(host.name) == before
        assert list(agent.call("GetState", pb.GetStateRequest()).networks) == []
    finally:
        agent.stop()
