"""Repeats, retries after failures cut short, and names that look like ids.

Real gRPC and real Redis, with fake IPAM and agents (tests/orchestrator/fakes.py).
"""

from __future__ import annotations

import pytest

from cnm import errors
from cnm.ipam.v1 import ipam_pb2
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator.flows import encode
from tests.orchestrator.conftest import connect_request, network_request


async def create(world, name="net1", subnet="10.20.0.0/24", **fields) -> pb.Network:
    return (await world.call("CreateNetwork", network_request(name, subnet, **fields))).network


async def test_connect_after_a_disconnect_cut_short_makes_the_endpoint_again(world):
    await create(world)
    endpoint = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    # A disconnect that died once the agent had removed the endpoint: the
    # record and the disconnect intent are left.
    intent = world.store.new_intent(f"ep:{endpoint.endpoint_id}", "disconnect",
                                    lock=f"ep:{endpoint.endpoint_id}", endpoint=encode(endpoint))
    await world.store.put_intent(intent)
    del world.agents["h1"].endpoints[endpoint.endpoint_id]
    again = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    assert again.endpoint_id in world.agents["h1"].endpoints
    assert again.address == world.agents["h1"].endpoints[again.endpoint_id].address
    assert await world.store.intents() == []
    recorded = await world.store.get_endpoint(again.endpoint_id)
    again.ClearField("state")  # said in answers, not recorded
    assert recorded == again


async def test_repeated_connect_succeeds_on_a_host_that_since_went_quiet(world):
    address = f"127.0.0.1:{world.servers['h2'].port}"
    await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h3", address=address)))
    await create(world)
    first = (await world.call("ConnectContainer", connect_request("c1", host="h3"))).endpoint
    host = await world.store.get_host("h3")
    host.last_heartbeat_time.FromSeconds(host.last_heartbeat_time.seconds - 3600)
    await world.store.put_host(host)
    again = (await world.call("ConnectContainer", connect_request("c1", host="h3"))).endpoint
    assert again.state == pb.ENDPOINT_STATE_STALE  # silent for an hour
    again.state = first.state
    assert again == first
    with pytest.raises(errors.Unavailable, match="missed its heartbeats"):
        await world.call("ConnectContainer", connect_request("c2", host="h3"))


async def test_pool_made_by_a_create_pool_that_then_failed_is_deleted(world):
    world.ipam.faults.fail_after["CreatePool"] = errors.Unavailable(
        "ipam went away before answering")
    with pytest.raises(errors.Unavailable, match="went away"):
        await create(world)
    assert world.ipam.pools == {}
    assert await world.store.intents() == []


async def test_address_allocated_by_a_failed_allocate_is_released(world):
    network = await create(world)
    world.ipam.faults.fail_after["AllocateAddress"] = errors.Unavailable(
        "ipam went away before answering")
    with pytest.raises(errors.Unavailable, match="went away"):
        await world.call("ConnectContainer", connect_request("c1"))
    assert world.ipam.owners(network.network_id) == {}
    assert await world.store.intents() == []


async def test_create_after_a_create_cut_short_undoes_the_first(world):
    # A create of net1 died after IPAM made its pool: its intent is left.
    intent = world.store.new_intent("name:net1", "create-network", lock="name:net1",
                                    network_id="0123456789ab", name="net1")
    await world.store.put_intent(intent)
    world.ipam.pools["0123456789ab"] = ipam_pb2.Pool(pool_id="0123456789ab",
                                                     subnet="10.22.0.0/24")
    world.ipam.allocations["0123456789ab"] = {}
    network = await create(world)
    assert set(world.ipam.pools) == {network.network_id}
    assert await world.store.intents() == []


async def test_delete_network_and_host_allow_missing(world):
    await create(world)
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1"))
    with pytest.raises(errors.NotFound, match="network 'net1' not found"):
        await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1"))
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1", allow_missing=True))
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2"))
    with pytest.raises(errors.NotFound, match="host 'h2' not found"):
        await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2"))
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2", allow_missing=True))


async def test_deleted_host_channel_is_closed(world):
    world.orch.agents.get("h2", f"127.0.0.1:{world.servers['h2'].port}")
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2"))
    assert "h2" not in world.orch.agents._agents


async def test_unreachable_host_neither_aborts_prune_nor_leaves_a_network_deleting(world):
    await create(world, "a", "10.1.0.0/24")
    await create(world, "b", "10.2.0.0/24")
    await world.call("ConnectContainer", connect_request("c1", network="a", host="h2"))
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="a", container_id="c1"))
    await world.servers["h2"].stop(0)
    reply = await world.call("PruneNetworks", pb.PruneNetworksRequest())
    assert list(reply.deleted_networks) == ["b"] and list(reply.skipped_networks) == ["a"]
    with pytest.raises(errors.Unavailable, match="agent h2"):
        await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="a"))
    assert await world.store.intents() == []
    # not stuck "deleting": it still takes connects
    await world.call("ConnectContainer", connect_request("c2", network="a"))
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="a", force=True))
    assert (await world.call("ListNetworks", pb.ListNetworksRequest())).networks == []


async def test_an_id_wins_over_a_name_and_prune_deletes_the_right_network(world):
    first = await create(world, "n1", "10.1.0.0/24")
    impostor = await create(world, first.network_id, "10.2.0.0/24")
    got = (await world.call("GetNetwork", pb.GetNetworkRequest(network=first.network_id)))
    assert got.network.name == "n1"
    # the impostor (named like n1's id) is in use; n1 is not
    await world.call("ConnectContainer", connect_request("c2", network=impostor.network_id))
    reply = await world.call("PruneNetworks", pb.PruneNetworksRequest())
    assert list(reply.deleted_networks) == ["n1"]
    listed = (await world.call("ListNetworks", pb.ListNetworksRequest())).networks
    assert [n.network_id for n in listed] == [impostor.network_id]
