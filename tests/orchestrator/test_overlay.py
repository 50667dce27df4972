"""Overlay networks and host membership in the orchestrator, over fake agents and a fake
IPAM with a real Redis (tests/multihost/ proves the same against real agents and VXLAN)."""

from __future__ import annotations

import time

import pytest

from cnm import errors
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.validation import mac_from_address
from orchestrator.overlay import parse_vni_range
from orchestrator.store import Vnis
from tests.orchestrator.conftest import connect_request, network_request
from tests.orchestrator.fakes import FakeAgent, serve_agent


async def create(world, name: str, subnet: str) -> pb.Network:
    return (await world.call("CreateNetwork",
                             network_request(name, subnet, driver=pb.DRIVER_OVERLAY))).network


def peers_of(agent, network_id):
    pushed = agent.peers[network_id]
    return (sorted(p.host_id for p in pushed.peers),
            sorted(r.address for r in pushed.remote_endpoints))


@pytest.fixture
async def joiner(world):
    """A third agent, h3, served but not yet known to the orchestrator."""
    agent = FakeAgent("h3")
    running = await serve_agent(agent)
    world.agents["h3"] = agent
    yield agent, f"127.0.0.1:{running.port}"
    await running.stop(0)


async def register(world, host_id: str, address: str, underlay: str = "") -> pb.Host:
    reply = await world.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(
        host_id=host_id, address=address, underlay_ip=underlay)))
    return reply.host


def test_vni_range_parsing():
    assert parse_vni_range("4096-16777215") == (4096, 16777215)
    assert parse_vni_range("7") == (7, 7)
    for bad in ("0-5", "5-4", "x", "1-16777216"):
        with pytest.raises(ValueError):
            parse_vni_range(bad)
    assert mac_from_address("10.20.0.3") == "02:42:0a:14:00:03"


async def test_vnis_are_unique_reused_after_release_and_run_out(world):
    vnis = Vnis(world.store, (10, 12))
    got = [await vnis.allocate(f"n{i}") for i in range(3)]
    assert sorted(got) == [10, 11, 12]
    assert await vnis.allocate("n1") == got[1]  # a retry gets the same one
    with pytest.raises(errors.ResourceExhausted):
        await vnis.allocate("n3")
    await vnis.release("n1")
    await vnis.release("n1")
    assert await vnis.allocate("n3") == got[1]
    assert await vnis.holders() == {"n0": got[0], "n2": got[2], "n3": got[1]}


async def test_vni_exhaustion_fails_the_create_and_leaves_nothing(world):
    world.orch.vnis.first = world.orch.vnis.last = 4200
    await create(world, "ov1", "10.30.0.0/24")
    with pytest.raises(errors.ResourceExhausted, match="VXLAN id"):
        await create(world, "ov2", "10.31.0.0/24")
    assert len(world.ipam.pools) == 1 and await world.store.intents() == []
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="ov1"))
    assert (await create(world, "ov2", "10.31.0.0/24")).vni == 4200


async def test_a_registering_host_gets_every_overlay_network_and_the_others_learn_it(
    world, joiner
):
    agent, address = joiner
    network = await create(world, "ov", "10.30.0.0/24")
    a = (await world.call("ConnectContainer", connect_request("a", network="ov"))).endpoint
    await register(world, "h3", address, agent.underlay_ip)
    assert agent.networks[network.network_id].vni == network.vni
    assert peers_of(agent, network.network_id) == (["h1", "h2"], [a.address])
    assert peers_of(world.agents["h1"], network.network_id)[0] == ["h2", "h3"]
    # Re-registering (an agent restart) is harmless and repeats the sync.
    await register(world, "h3", address, agent.underlay_ip)
    # From another address while the host is alive: refused.
    with pytest.raises(errors.AlreadyExists):
        await register(world, "h3", "127.0.0.1:1", agent.underlay_ip)


async def test_a_deleted_host_leaves_every_peer_list(world, joiner):
    agent, address = joiner
    network = await create(world, "ov", "10.30.0.0/24")
    await register(world, "h3", address, agent.underlay_ip)
    await world.call("ConnectContainer", connect_request("c", network="ov", host="h3"))
    assert peers_of(world.agents["h1"], network.network_id)[1] != []
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h3", force=True))
    assert peers_of(world.agents["h1"], network.network_id) == (["h2"], [])
    hosts = (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network.hosts
    assert [h.host_id for h in hosts] == ["h1", "h2"]


async def test_a_host_missing_heartbeats_is_unhealthy_and_connects_fail_fast(world, joiner):
    agent, address = joiner
    await create(world, "ov", "10.30.0.0/24")
    await register(world, "h3", address, agent.underlay_ip)
    host = await world.store.get_host("h3")
    host.last_heartbeat_time.FromSeconds(int(time.time()) - 10 * world.orch.hosts.heartbeat_interval)
    await world.store.put_host(host)
    listed = {h.host_id: h.state for h in
              (await world.call("ListHosts", pb.ListHostsRequest())).hosts}
    assert listed["h3"] == pb.HOST_STATE_UNHEALTHY
    calls = len(agent.faults.calls)
    with pytest.raises(errors.Unavailable, match="heartbeats"):
        await world.call("ConnectContainer", connect_request("x", network="ov", host="h3"))
    assert len(agent.faults.calls) == calls  # not even tried
    assert (await world.call("HeartbeatHost", pb.HeartbeatHostRequest(host_id="h3"))
            ).reregister is False
    await world.call("ConnectContainer", connect_request("x", network="ov", host="h3"))


async def test_an_unreachable_host_does_not_stop_create_or_delete(world):
    world.agents["h2"].faults.fail["CreateNetwork"] = errors.Unavailable("h2 is down")
    network = await create(world, "ov", "10.30.0.0/24")
    hosts = (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network.hosts
    assert [(h.host_id, h.ready) for h in hosts] == [("h1", True), ("h2", False)]
    assert "h2 is down" in hosts[1].message
    del world.agents["h2"].faults.fail["CreateNetwork"]
    await world.reconciler.run_once()
    assert network.network_id in world.agents["h2"].networks
    assert peers_of(world.agents["h1"], network.network_id)[0] == ["h2"]
    world.agents["h2"].faults.fail["DeleteNetwork"] = errors.Unavailable("h2 is down")
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="ov"))
    assert network.network_id not in world.agents["h1"].networks
    with pytest.raises(errors.NotFound):
        await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))


async def test_a_host_without_an_underlay_address_is_reported_not_left_out_quietly(
    world, joiner
):
    agent, address = joiner
    agent.underlay_ip = ""  # its agent found none and was given none
    network = await create(world, "ov", "10.30.0.0/24")
    await register(world, "h3", address)
    assert network.network_id not in agent.networks  # never asked to make a VTEP-less device
    hosts = {h.host_id: h for h in
             (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network.hosts}
    assert hosts["h3"].ready is False
    assert "no underlay" in hosts["h3"].message and "--underlay-ip" in hosts["h3"].message
    assert peers_of(world.agents["h1"], network.network_id)[0] == ["h2"]
    # Given an address (the agent restarted with --underlay-ip), it joins.
    agent.underlay_ip = "192.0.2.99"
    await register(world, "h3", address, agent.underlay_ip)
    hosts = {h.host_id: h for h in
             (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network.hosts}
    assert hosts["h3"].ready is True and hosts["h3"].message == ""
    assert peers_of(world.agents["h1"], network.network_id)[0] == ["h2", "h3"]
    # It restarts without one while on the network: its state says so.
    agent.underlay_ip = ""
    await register(world, "h3", address)
    hosts = {h.host_id: h for h in
             (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network.hosts}
    assert hosts["h3"].ready is False and "--underlay-ip" in hosts["h3"].message
    assert peers_of(world.agents["h1"], network.network_id)[0] == ["h2"]
