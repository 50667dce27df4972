"""The orchestrator's flows over real gRPC and real Redis, with fake IPAM and agents."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from cnm import errors
from cnm.ipam.v1 import ipam_pb2
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.validation import mac_from_address
from orchestrator import address_pools, flows, validation
from orchestrator.reconciler import Reconciler
from orchestrator.store import k as store_key
from tests.orchestrator.conftest import connect_request, network_request


async def create(world, name="net1", subnet="10.20.0.0/24", **fields) -> pb.Network:
    return (await world.call("CreateNetwork", network_request(name, subnet, **fields))).network


async def intents(world) -> list:
    return await world.store.intents()


# --- networks ----------------------------------------------------------------


async def test_create_network_allocates_pool_and_gateway(world):
    network = await create(world, labels={"team": "a"})
    assert len(network.network_id) == 12
    assert network.gateway == "10.20.0.1"
    pool = world.ipam.pools[network.network_id]
    assert pool.subnet == "10.20.0.0/24"
    assert world.ipam.allocations[network.network_id] == {"10.20.0.1": "cnm:gateway"}
    got = (await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))).network
    assert got.network_id == network.network_id and dict(got.labels) == {"team": "a"}
    by_id = (await world.call("GetNetwork", pb.GetNetworkRequest(network=network.network_id)))
    assert by_id.network.name == "net1"
    assert await intents(world) == []


async def test_create_network_is_idempotent_and_rejects_different_parameters(world):
    first = await create(world, gateway="10.20.0.254")
    again = await create(world, gateway="10.20.0.254")
    assert again.network_id == first.network_id
    assert len(world.ipam.pools) == 1
    with pytest.raises(errors.AlreadyExists, match="different parameters"):
        await create(world, subnet="10.21.0.0/24")
    with pytest.raises(errors.AlreadyExists):
        await create(world, gateway="10.20.0.254", internal=True)
    assert len(world.ipam.pools) == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "-bad"}, "invalid network name"),
    ({"name": "has space"}, "invalid network name"),
    ({"name": ""}, "invalid network name"),
    ({"subnet": "10.0.0.0/33"}, "not a valid CIDR"),
    ({"subnet": "", "gateway": "10.20.0.1"}, "gateway '10.20.0.1' needs a subnet"),
    ({"subnet": "", "ip_range": "10.20.0.0/25"}, "ip_range '10.20.0.0/25' needs a subnet"),
    ({"subnet": "10.20.0.5/24"}, r"host bits set \(did you mean 10.20.0.0/24\?\)"),
    ({"subnet": "10.20.0.0/31"}, "too small.*use /30"),
    ({"subnet": "fd00::/127"}, "too small.*use /126"),
    ({"subnet": "fd00::/64"}, "IPv6-only networks come in a later version"),
    ({"subnet": "fd00::/64", "ip_range": "fd00::/104", "driver": pb.DRIVER_OVERLAY},
     "IPv6-only networks come in a later version"),
    ({"subnet": "fd00::/64", "ip_range": "fd00::/104"}, "IPv6-only networks come in a later version"),
    ({"options": {"com.docker.network.internal": "maybe"}}, "com.docker.network.internal"),
    ({"labels": {"key": "line\nbreak"}}, "label 'key' is invalid"),
    ({"options": {"a\x1b[31m": "v"}}, "option .* is invalid"),
    ({"gateway": "10.99.0.1"}, "gateway 10.99.0.1 is outside subnet"),
    ({"gateway": "10.20.0.255"}, "broadcast address"),
    ({"ip_range": "10.30.0.0/25"}, "is outside subnet"),
    ({"driver": 9}, "unsupported driver 9"),
    ({"options": {"com.docker.network.bridge.enable_icc": "maybe"}}, "enable_icc"),
    ({"options": {"cnm.bridge.mcast_snooping": "on"}}, "mcast_snooping"),
    ({"options": {"com.docker.network.driver.mtu": "big"}}, "mtu"),
])
async def test_create_network_rejects_bad_input_and_changes_nothing(world, fields, message):
    spec = {"name": "net1", "subnet": "10.20.0.0/24", **fields}
    with pytest.raises(errors.InvalidArgument, match=message):
        await world.call("CreateNetwork", pb.CreateNetworkRequest(network=pb.Network(**spec)))
    assert world.ipam.pools == {}
    assert (await world.call("ListNetworks", pb.ListNetworksRequest())).networks == []


async def test_ipam_refusal_leaves_no_network(world):
    await create(world, "a", "10.20.0.0/16")
    with pytest.raises(errors.AlreadyExists) as caught:
        await create(world, "b", "10.20.5.0/24")
    # The clashing network by name, not IPAM's pool id.
    assert caught.value.reason == "SUBNET_OVERLAP"
    assert "overlaps subnet 10.20.0.0/16 of network 'a'" in caught.value.message
    assert caught.value.metadata["clashing_network"] == "a"
    assert [n.name for n in (await world.call("ListNetworks", pb.ListNetworksRequest())).networks] \
        == ["a"]
    assert await intents(world) == []


async def test_a_network_without_subnet_takes_the_first_free_one_of_the_default_pools(world):
    first = await create(world, "auto1", "")
    assert (first.subnet, first.gateway) == ("172.17.0.0/16", "172.17.0.1")
    # A network's subnet, and a host's route, are skipped.
    await create(world, "manual", "172.18.4.0/24")
    await world.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(
        host_id="h3", address="unix:/nonexistent.sock",
        routes=["172.19.0.0/16", "10.0.0.0/8", "fd00::/64"])))
    assert [h.routes for h in (await world.call("ListHosts", pb.ListHostsRequest())).hosts
            if h.host_id == "h3"] == [["10.0.0.0/8", "172.19.0.0/16", "fd00::/64"]]
    assert (await create(world, "auto2", "")).subnet == "172.20.0.0/16"
    # An IPAM pool that is no network's is found by IPAM and skipped too.
    world.ipam.pools["foreign"] = ipam_pb2.Pool(pool_id="foreign", subnet="172.16.0.0/12")
    world.ipam.allocations["foreign"] = {}
    assert (await create(world, "auto3", "")).subnet == "192.168.0.0/20"
    # A create repeated without a subnet is the same network.
    assert (await create(world, "auto1", "")).network_id == first.network_id
    assert await intents(world) == []


async def test_concurrent_creates_without_subnet_never_share_one(world):
    created = await asyncio.gather(*(create(world, f"auto{n}", "") for n in range(16)))
    subnets = [network.subnet for network in created]
    assert len(set(subnets)) == 16
    assert sorted(subnets) == sorted([f"172.{n}.0.0/16" for n in range(17, 32)]
                                     + ["192.168.0.0/20"])


async def test_validate_only_shows_the_network_a_create_would_make_and_makes_nothing(world):
    await create(world, "first", "172.17.0.0/16")
    def preview(name, subnet="", **fields):
        return world.call("CreateNetwork", pb.CreateNetworkRequest(
            network=pb.Network(name=name, subnet=subnet, **fields), validate_only=True))
    shown = (await preview("auto")).network
    assert (shown.network_id, shown.subnet, shown.gateway) == ("", "172.18.0.0/16",
                                                             "172.18.0.1")
    assert (await preview("auto")).network.subnet == "172.18.0.0/16"  # nothing was taken
    assert (await preview("first", "172.17.0.0/16")).network.network_id  # a repeat: it
    with pytest.raises(errors.AlreadyExists) as caught:
        await preview("wide", "172.16.0.0/12")
    assert caught.value.reason == "SUBNET_OVERLAP" and "'first'" in caught.value.message
    with pytest.raises(errors.AlreadyExists, match="different parameters"):
        await preview("first", "10.9.0.0/24")
    with pytest.raises(errors.FailedPrecondition) as caught:  # no IPv6 default pool
        await preview("six", enable_ipv6=True)
    assert caught.value.reason == "NO_IPV6_POOL"
    listed = (await world.call("ListNetworks", pb.ListNetworksRequest())).networks
    assert [n.name for n in listed] == ["first"] and len(world.ipam.allocations) == 1


async def test_an_ipv6_only_network_has_no_ipv4_anywhere(world):
    network = await create(world, "six", "", enable_ipv4=False, enable_ipv6=True,
                           ipv6_subnet="fd00:60::/64", driver=pb.DRIVER_OVERLAY)
    assert (network.subnet, network.gateway, network.enable_ipv4, network.ipv6_gateway) == (
        "", "", False, "fd00:60::1")
    assert network.network_id not in world.ipam.allocations  # no IPv4 pool
    pool6 = world.ipam.allocations[validation.ipv6_pool_id(network.network_id)]
    again = await create(world, "six", "", enable_ipv4=False, enable_ipv6=True,
                         ipv6_subnet="fd00:60::/64", driver=pb.DRIVER_OVERLAY)
    assert again.network_id == network.network_id  # a repeat
    with pytest.raises(errors.AlreadyExists):  # the same name with IPv4 is another network
        await create(world, "six", "", enable_ipv6=True, ipv6_subnet="fd00:60::/64",
                     driver=pb.DRIVER_OVERLAY)
    a = (await world.call("ConnectContainer", connect_request("a", network="six"))).endpoint
    assert (a.address, a.prefix_length, a.ipv6_prefix_length) == ("", 0, 64)
    assert a.ipv6_address.startswith("fd00:60::") and pool6[a.ipv6_address] == a.endpoint_id
    assert a.mac_address == mac_from_address(a.ipv6_address)
    h1, h2 = world.agents["h1"], world.agents["h2"]
    assert (h1.networks[network.network_id].subnet,
            h1.networks[network.network_id].ipv6_subnet) == ("", "fd00:60::/64")
    (remote,) = h2.peers[network.network_id].remote_endpoints
    assert (remote.address, remote.ipv6_address, remote.mac_address) == (
        "", a.ipv6_address, a.mac_address)
    with pytest.raises(errors.InvalidArgument, match="IPv6 only"):
        await world.call("ConnectContainer", connect_request(
            "b", network="six", address="10.0.0.5"))
    with pytest.raises(errors.InvalidArgument, match="IPv4 host address"):
        await world.call("ConnectContainer", connect_request(
            "b", network="six", port_mappings=[pb.PortMapping(
                protocol=pb.PROTOCOL_TCP, host_ip="127.0.0.1", host_port=80,
                container_port=80)]))
    with pytest.raises(errors.InvalidArgument, match="IPv6 only"):
        await world.call("ReserveAddress", reserve(network="six"))
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="six", container_id="a"))
    assert list(pool6) == ["fd00:60::1"]
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="six"))
    assert validation.ipv6_pool_id(network.network_id) not in world.ipam.allocations
    assert await intents(world) == []


@pytest.mark.parametrize(("fields", "match"), [
    ({"enable_ipv4": False}, "needs IPv6"),
    ({"enable_ipv4": False, "enable_ipv6": True, "subnet": "10.0.0.0/24"}, "IPv6-only"),
    ({"enable_ipv4": False, "enable_ipv6": True, "gateway": "10.0.0.1"}, "IPv6-only"),
])
async def test_an_ipv6_only_network_refuses_ipv4(world, fields, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        await world.call("CreateNetwork", pb.CreateNetworkRequest(
            network=pb.Network(name="bad6", **fields)))
    assert (await world.call("ListNetworks", pb.ListNetworksRequest())).networks == []


async def test_ipv6_subnets_come_from_the_ipv6_default_pools_or_are_refused(world):
    """--ipv6 without an IPv6 subnet: none configured is FAILED_PRECONDITION with nothing
    made; configured, 16 concurrent creates get 16 different subnets, skipping a host's
    IPv6 route; a repeat is the same network; exhausted, both pools are undone."""
    def dual(name: str) -> pb.CreateNetworkRequest:
        return pb.CreateNetworkRequest(network=pb.Network(name=name, enable_ipv6=True))

    with pytest.raises(errors.FailedPrecondition) as caught:
        await world.call("CreateNetwork", dual("none"))
    assert caught.value.reason == "NO_IPV6_POOL" and "--default-address-pool" in \
        caught.value.message
    assert world.ipam.pools == {} and await intents(world) == []
    world.orch.default_pools = address_pools.parse_all(
        "base=10.8.0.0/16,size=24 base=fd00:c0::/60,size=64")
    await world.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(
        host_id="h3", address="unix:/nonexistent.sock", routes=["fd00:c0::/64"])))
    created = await asyncio.gather(*(world.call("CreateNetwork", dual(f"d{n}"))
                                     for n in range(15)))
    subnets = sorted(n.network.ipv6_subnet for n in created)
    assert subnets == sorted(f"fd00:c0:0:{n:x}::/64" for n in range(1, 16))
    assert all(n.network.ipv6_gateway == n.network.ipv6_subnet.replace("::/64", "::1")
               for n in created)
    again = await world.call("CreateNetwork", dual("d0"))
    assert again.network.network_id == created[0].network.network_id
    with pytest.raises(errors.ResourceExhausted) as caught:
        await world.call("CreateNetwork", dual("full"))
    assert caught.value.reason == "ADDRESS_POOLS_EXHAUSTED"
    assert len(world.ipam.pools) == 30 and await intents(world) == []


async def test_exhausted_default_pools_say_which_and_how_to_add_one(world):
    world.orch.default_pools = address_pools.parse_all("base=10.9.0.0/29,size=30")
    assert (await create(world, "a", "")).subnet == "10.9.0.0/30"
    assert (await create(world, "b", "")).subnet == "10.9.0.4/30"
    with pytest.raises(errors.ResourceExhausted) as caught:
        await create(world, "c", "")
    assert caught.value.reason == "ADDRESS_POOLS_EXHAUSTED"
    assert caught.value.message == (
        "no free subnet left in the default address pools (base=10.9.0.0/29,size=30): each "
        "overlaps a network or a route of a host; give a --subnet, or add a pool with the "
        "orchestrator's --default-address-pool base=CIDR,size=N (env "
        "CNM_DEFAULT_ADDRESS_POOLS)")
    assert len(world.ipam.pools) == 2 and await intents(world) == []
    assert [n.name for n in (await world.call("ListNetworks", pb.ListNetworksRequest())).networks
            ] == ["a", "b"]


@pytest.mark.parametrize("routes", [["10.0.0.0/33"], ["nonsense"], ["10.0.0.1/8"]])
async def test_register_host_refuses_routes_that_are_not_networks(world, routes):
    with pytest.raises(errors.InvalidArgument, match="routes: .* is not a network in CIDR"):
        await world.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(
            host_id="h3", address="unix:/nonexistent.sock", routes=routes)))
    assert "h3" not in {h.host_id for h in (await world.call(
        "ListHosts", pb.ListHostsRequest())).hosts}


async def test_a_mapping_without_host_port_gets_a_free_one_of_the_ephemeral_range(
        world, monkeypatch):
    await create(world)
    world.orch.ephemeral_ports = (40000, 40003)
    # Each choice starts at the range's first port (not at random): the second mapping of
    # c1 is given 40002 first, which the host refuses, and then 40003.
    monkeypatch.setattr(flows.random, "randrange", lambda size: 0)

    async def connect(container: str, *ports: tuple, **fields) -> pb.Endpoint:
        mappings = [pb.PortMapping(host_port=port[0], container_port=port[1],
                                   protocol=port[2] if len(port) > 2 else pb.PROTOCOL_TCP)
                    for port in ports]
        return (await world.call("ConnectContainer", connect_request(
            container, port_mappings=mappings, **fields))).endpoint

    # A port another endpoint holds on the host, and one a host process holds, are skipped.
    await connect("fixed", (40001, 80))
    world.agents["h1"].ports_in_use = {40002}
    first = await connect("c1", (0, 80), (0, 81))
    assert sorted(m.host_port for m in first.port_mappings) == [40000, 40003]
    assert world.agents["h1"].faults.calls.count("CreateEndpoint") == 3  # fixed, refused, c1
    assert [m.container_port for m in sorted(first.port_mappings, key=lambda m: m.host_port)
            ] in ([80, 81], [81, 80])
    # A repeat asking for any port is the same endpoint; asking for another one is not.
    again = await connect("c1", (0, 80), (0, 81))
    assert again.endpoint_id == first.endpoint_id
    assert sorted(m.host_port for m in again.port_mappings) == [40000, 40003]
    with pytest.raises(errors.AlreadyExists, match="different parameters"):
        await connect("c1", (0, 80), (0, 82))
    # The same host port on another host is another port.
    assert (await connect("c2", (0, 80), host="h2")).port_mappings[0].host_port in range(
        40000, 40004)
    with pytest.raises(errors.ResourceExhausted) as caught:
        await connect("c3", (0, 80))
    assert caught.value.reason == "EPHEMERAL_PORTS_EXHAUSTED"
    assert "no free tcp host port left on host h1 in the ephemeral range 40000-40003" in \
        caught.value.message
    # UDP ports are other ports.
    udp = await connect("c4", (0, 53, pb.PROTOCOL_UDP))
    assert udp.port_mappings[0].host_port in (40000, 40001, 40003)
    await world.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network="net1", container_id="c1"))
    assert sorted(m.host_port for m in (await connect("c5", (0, 80))).port_mappings) in (
        [40000], [40003])
    assert await intents(world) == []


async def test_ipam_down_on_create_is_unavailable(world):
    await world.servers["ipam"].stop(0)
    with pytest.raises(errors.Unavailable, match="ipam: create pool"):
        await create(world)
    assert (await world.call("ListNetworks", pb.ListNetworksRequest())).networks == []
    # IPAM may have made the pool before going away: the intent stays, and the
    # reconciler deletes the pool once IPAM answers again.
    assert [intent.op for intent in await intents(world)] == ["create-network"]


async def test_list_networks_filters_by_driver_and_label(world):
    await create(world, "a", "10.1.0.0/24", labels={"env": "prod", "team": "x"})
    await create(world, "b", "10.2.0.0/24", labels={"env": "dev"})
    await create(world, "c", "10.3.0.0/24")

    async def names(**filters):
        reply = await world.call("ListNetworks", pb.ListNetworksRequest(**filters))
        return [n.name for n in reply.networks]

    assert await names() == ["a", "b", "c"]
    assert await names(label_filters=["env"]) == ["a", "b"]
    assert await names(label_filters=["env=prod"]) == ["a"]
    assert await names(label_filters=["env=prod", "team=y"]) == []
    assert await names(driver=pb.DRIVER_BRIDGE) == ["a", "b", "c"]
    assert await names(driver=pb.DRIVER_OVERLAY) == []
    await create(world, "o", "10.4.0.0/24", driver=pb.DRIVER_OVERLAY)
    assert await names(driver=pb.DRIVER_OVERLAY) == ["o"]


async def test_unknown_network_is_not_found(world):
    for method, request in [
        ("GetNetwork", pb.GetNetworkRequest(network="nope")),
        ("DeleteNetwork", pb.DeleteNetworkRequest(network="nope")),
        ("ConnectContainer", connect_request("c1", network="nope")),
        ("DisconnectContainer", pb.DisconnectContainerRequest(network="nope", container_id="c")),
    ]:
        with pytest.raises(errors.NotFound, match="network 'nope' not found"):
            await world.call(method, request)


# --- connect -------------------------------------------------------------------


async def test_connect_allocates_creates_and_records(world):
    network = await create(world)
    endpoint = (await world.call("ConnectContainer", connect_request(
        "c1", port_mappings=[pb.PortMapping(host_port=8080, container_port=80)]))).endpoint
    assert endpoint.endpoint_id == validation.endpoint_id(network.network_id, "c1")
    assert endpoint.address == "10.20.0.2" and endpoint.prefix_length == 24
    assert endpoint.sandbox == "c1" and endpoint.host_id == "h1"
    assert endpoint.mac_address and endpoint.host_interface and endpoint.container_interface
    assert world.ipam.owners(network.network_id) == {endpoint.endpoint_id: "10.20.0.2"}
    agent = world.agents["h1"]
    on_host = agent.endpoints[endpoint.endpoint_id]
    assert on_host.default_route and on_host.address == "10.20.0.2"
    assert on_host.port_mappings[0].host_port == 8080
    assert on_host.port_mappings[0].protocol == pb.PROTOCOL_TCP
    assert agent.networks[network.network_id].gateway == "10.20.0.1"
    assert world.agents["h2"].endpoints == {}
    reply = await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))
    assert [e.container_id for e in reply.endpoints] == ["c1"]
    assert [h.host_id for h in reply.network.hosts] == ["h1"]
    assert await intents(world) == []


async def test_connect_is_idempotent_and_rejects_different_parameters(world):
    await create(world)
    first = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    again = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    assert again == first
    assert world.ipam.faults.calls.count("AllocateAddress") == 1
    with pytest.raises(errors.AlreadyExists, match="already connected"):
        await world.call("ConnectContainer", connect_request("c1", host="h2"))
    with pytest.raises(errors.AlreadyExists, match="already connected"):
        await world.call("ConnectContainer", connect_request("c1", address="10.20.0.50"))
    assert len(world.agents["h1"].endpoints) == 1 and world.agents["h2"].endpoints == {}


async def test_first_network_of_a_container_gets_the_default_route(world):
    await create(world, "a", "10.1.0.0/24")
    await create(world, "b", "10.2.0.0/24")
    first = (await world.call("ConnectContainer", connect_request("c1", network="a"))).endpoint
    second = (await world.call("ConnectContainer", connect_request("c1", network="b"))).endpoint
    other = (await world.call("ConnectContainer", connect_request("c2", network="b"))).endpoint
    on_host = world.agents["h1"].endpoints
    assert on_host[first.endpoint_id].default_route
    assert not on_host[second.endpoint_id].default_route
    assert on_host[other.endpoint_id].default_route
    listed = await world.call("ListEndpoints", pb.ListEndpointsRequest(container_id="c1"))
    assert [e.network_name for e in listed.endpoints] == ["a", "b"]
    by_network = await world.call("ListEndpoints", pb.ListEndpointsRequest(network="b"))
    assert [e.container_id for e in by_network.endpoints] == ["c1", "c2"]
    by_host = await world.call("ListEndpoints", pb.ListEndpointsRequest(host_id="h1"))
    assert len(by_host.endpoints) == 3
    everything = await world.call("ListEndpoints", pb.ListEndpointsRequest())
    assert len(everything.endpoints) == 3


async def test_static_address(world):
    network = await create(world)
    endpoint = (await world.call("ConnectContainer",
                                 connect_request("c1", address="10.20.0.77"))).endpoint
    assert endpoint.address == "10.20.0.77"
    with pytest.raises(errors.AlreadyExists, match="10.20.0.77 is already in use on network"):
        await world.call("ConnectContainer", connect_request("c2", address="10.20.0.77"))
    for bad in ("10.99.0.5", "10.20.0.0", "10.20.0.255", "not-an-ip"):
        with pytest.raises(errors.InvalidArgument):
            await world.call("ConnectContainer", connect_request("c3", address=bad))
    with pytest.raises(errors.InvalidArgument, match="gateway"):
        await world.call("ConnectContainer", connect_request("c3", address="10.20.0.1"))
    assert world.ipam.owners(network.network_id) == {endpoint.endpoint_id: "10.20.0.77"}
    assert list(world.agents["h1"].endpoints) == [endpoint.endpoint_id]
    assert await intents(world) == []


async def test_port_already_published_on_the_host(world):
    network = await create(world)
    web = [pb.PortMapping(host_port=8080, container_port=80)]
    await world.call("ConnectContainer", connect_request("c1", port_mappings=web))
    with pytest.raises(errors.AlreadyExists, match="8080"):
        await world.call("ConnectContainer", connect_request("c2", port_mappings=web))
    specific = [pb.PortMapping(host_ip="127.0.0.1", host_port=8080, container_port=80)]
    with pytest.raises(errors.AlreadyExists, match="8080"):
        await world.call("ConnectContainer", connect_request("c2", port_mappings=specific))
    udp = [pb.PortMapping(protocol=pb.PROTOCOL_UDP, host_port=8080, container_port=80)]
    await world.call("ConnectContainer", connect_request("c3", port_mappings=udp))
    await world.call("ConnectContainer", connect_request("c4", host="h2", port_mappings=web))
    assert len(world.ipam.owners(network.network_id)) == 3
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    await world.call("ConnectContainer", connect_request("c2", port_mappings=specific))
    with pytest.raises(errors.AlreadyExists, match="8080"):
        await world.call("ConnectContainer", connect_request("c5", port_mappings=web))


async def test_bad_port_mappings(world):
    await create(world)
    await create(world, "inner", "10.21.0.0/24", internal=True)
    for mappings in (
        [pb.PortMapping(host_port=0, container_port=0)],  # host port 0 is any; not this
        [pb.PortMapping(host_port=70000, container_port=80)],
        [pb.PortMapping(host_port=80, container_port=80, host_ip="x")],
        [pb.PortMapping(host_port=80, container_port=80)] * 2,
    ):
        with pytest.raises(errors.InvalidArgument):
            await world.call("ConnectContainer", connect_request("c1", port_mappings=mappings))
    with pytest.raises(errors.FailedPrecondition, match="internal"):
        await world.call("ConnectContainer", connect_request(
            "c1", network="inner", port_mappings=[pb.PortMapping(host_port=80,
                                                                 container_port=80)]))
    with pytest.raises(errors.InvalidArgument, match="container_id"):
        await world.call("ConnectContainer", connect_request("bad/id"))
    assert world.ipam.faults.calls.count("AllocateAddress") == 0


async def test_unknown_or_unreachable_host_allocates_nothing(world):
    network = await create(world)
    with pytest.raises(errors.NotFound, match="host 'h9' not found"):
        await world.call("ConnectContainer", connect_request("c1", host="h9"))
    await world.servers["h2"].stop(0)
    with pytest.raises(errors.Unavailable, match="agent h2"):
        await world.call("ConnectContainer", connect_request("c1", host="h2"))
    assert "AllocateAddress" not in world.ipam.faults.calls
    assert world.ipam.owners(network.network_id) == {}
    assert await intents(world) == []
    assert await world.store.endpoint_ids(network_id=network.network_id) == set()


async def test_agent_error_releases_the_address(world):
    network = await create(world)
    world.agents["h1"].faults.fail["CreateEndpoint"] = errors.InvalidArgument(
        "sandbox 'c1' does not exist")
    web = [pb.PortMapping(host_port=8080, container_port=80)]
    with pytest.raises(errors.InvalidArgument, match="agent h1.*sandbox 'c1' does not exist"):
        await world.call("ConnectContainer", connect_request("c1", port_mappings=web))
    assert world.ipam.owners(network.network_id) == {}
    assert await intents(world) == []
    del world.agents["h1"].faults.fail["CreateEndpoint"]
    # the port reservation and the default route were undone too
    endpoint = (await world.call("ConnectContainer", connect_request("c2", port_mappings=web)))
    assert world.agents["h1"].endpoints[endpoint.endpoint.endpoint_id].default_route


async def test_agent_dying_mid_connect_is_unavailable_and_leaks_nothing(world):
    network = await create(world)
    await world.call("ConnectContainer", connect_request("c0"))  # channel is READY now
    world.agents["h1"].faults.fail["CreateEndpoint"] = errors.Unavailable("agent going away")
    with pytest.raises(errors.Unavailable):
        await world.call("ConnectContainer", connect_request("c1"))
    assert set(world.ipam.owners(network.network_id)) == {
        validation.endpoint_id(network.network_id, "c0")}
    assert await intents(world) == []


async def test_a_dns_name_is_one_containers_on_a_network(world):
    await create(world)
    await create(world, "net2", "10.21.0.0/24")
    await world.call("ConnectContainer", connect_request("c1", dns_names=["web", "WWW"]))
    with pytest.raises(errors.AlreadyExists, match="name 'www' is already used on network "
                       "'net1' by container 'c1'") as taken:
        await world.call("ConnectContainer", connect_request("c2", dns_names=["www"]))
    assert taken.value.reason == "NAME_IN_USE"
    assert await intents(world) == []
    # Another network's names are its own; a repeat of the holder's connect is fine.
    await world.call("ConnectContainer", connect_request("c2", "net2", dns_names=["www"]))
    await world.call("ConnectContainer", connect_request("c1", dns_names=["web", "www"]))
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    await world.call("ConnectContainer", connect_request("c3", dns_names=["www"]))
    # A holder whose records are gone (a leftover) does not hold the name.
    network = (await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))).network
    names = store_key("net", network.network_id, "dnsnames")
    await world.store.r.hset(names, "db", "gone0000")
    await world.call("ConnectContainer", connect_request("c4", dns_names=["db"]))
    assert (await world.store.r.hget(names, "db")).decode() == validation.endpoint_id(
        network.network_id, "c4")


async def test_ipam_error_leaves_no_endpoint(world):
    network = await create(world)
    world.ipam.faults.fail["AllocateAddress"] = errors.ResourceExhausted("pool is full")
    with pytest.raises(errors.ResourceExhausted, match="pool is full"):
        await world.call("ConnectContainer", connect_request("c1"))
    await world.servers["ipam"].stop(0)
    with pytest.raises(errors.Unavailable, match="ipam"):
        await world.call("ConnectContainer", connect_request("c2"))
    assert "CreateEndpoint" not in world.agents["h1"].faults.calls
    assert world.agents["h1"].endpoints == {}
    # IPAM may have allocated before going away: the intent stays for the reconciler.
    assert [intent.op for intent in await intents(world)] == ["connect"]
    assert await world.store.endpoint_ids(network_id=network.network_id) == set()


async def test_failed_undo_leaves_an_intent_that_the_reconciler_finishes(world):
    network = await create(world)
    world.agents["h1"].faults.fail["CreateEndpoint"] = errors.Internal("boom")
    world.ipam.faults.fail["ReleaseAddress"] = errors.Unavailable("redis down")
    with pytest.raises(errors.Internal, match="boom"):
        await world.call("ConnectContainer", connect_request("c1"))
    left = await intents(world)
    assert [intent.op for intent in left] == ["connect"]
    assert len(world.ipam.owners(network.network_id)) == 1
    world.ipam.faults.fail.clear()
    metric = "cnm_orchestrator_reconciler_actions_total"
    actions = REGISTRY.get_sample_value(metric, {"kind": "settled_intents"})
    settled = REGISTRY.get_sample_value("cnm_orchestrator_intents_settled_total",
                                        {"op": "connect"})
    report = await world.reconciler.run_once()
    assert report.settled_intents == [f"connect {left[0].key}"]
    # Counted for Prometheus (cnm/metrics.py), as the reconciler's action and as an intent.
    assert REGISTRY.get_sample_value(metric, {"kind": "settled_intents"}) == actions + 1
    assert REGISTRY.get_sample_value("cnm_orchestrator_intents_settled_total",
                                     {"op": "connect"}) == settled + 1
    assert world.ipam.owners(network.network_id) == {}
    assert await intents(world) == []
    await world.call("ConnectContainer", connect_request("c1", host="h2"))


# --- disconnect and delete ----------------------------------------------------------


async def test_disconnect(world):
    network = await create(world)
    endpoint = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    assert world.agents["h1"].endpoints == {}
    assert world.ipam.owners(network.network_id) == {}
    with pytest.raises(errors.NotFound, match="not connected"):
        await world.call("DisconnectContainer",
                         pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    await world.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network="net1", container_id="c1", allow_missing=True))
    with pytest.raises(errors.NotFound):
        await world.call("GetEndpoint", pb.GetEndpointRequest(endpoint_id=endpoint.endpoint_id))
    again = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    assert again.address == endpoint.address


async def test_disconnect_from_unreachable_host_needs_force(world):
    network = await create(world)
    await world.call("ConnectContainer", connect_request("c1", host="h2"))
    await world.servers["h2"].stop(0)
    request = pb.DisconnectContainerRequest(network="net1", container_id="c1")
    with pytest.raises(errors.Unavailable):
        await world.call("DisconnectContainer", request)
    assert len(world.ipam.owners(network.network_id)) == 1
    assert await intents(world) == []
    request.force = True
    await world.call("DisconnectContainer", request)
    # The host never confirmed: its kernel may still use the address and ports, so they
    # stay held (quarantined, shown by inspect), until the host is declared gone.
    assert len(world.ipam.owners(network.network_id)) == 1
    shown = await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))
    assert list(shown.endpoints) == []
    assert [e.container_id for e in shown.quarantined_endpoints] == ["c1"]
    assert await world.orch.release_quarantined() == []  # h2 still unreachable
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2", force=True))
    assert world.ipam.owners(network.network_id) == {}
    shown = await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))
    assert list(shown.quarantined_endpoints) == []


async def test_a_network_forced_off_an_unreachable_host_keeps_its_pool_until_released(world):
    network = await create(world)
    await world.call("ConnectContainer", connect_request("c1", host="h2"))
    await world.servers["h2"].stop(0)
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1", force=True))
    with pytest.raises(errors.NotFound):
        await world.call("GetNetwork", pb.GetNetworkRequest(network="net1"))
    # The subnet's addresses may still be in h2's kernel: the pool is not given back.
    assert network.network_id in world.ipam.pools
    assert len(world.ipam.owners(network.network_id)) == 1
    reconciler = Reconciler(world.orch)
    await reconciler.run_once(collect_hosts=False)
    assert network.network_id in world.ipam.pools
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2", force=True))
    await reconciler.run_once(collect_hosts=False)
    assert network.network_id not in world.ipam.pools
    assert await world.store.quarantined() == []


async def test_delete_network_with_endpoints_needs_force(world):
    network = await create(world)
    for container, host in (("c1", "h1"), ("c2", "h2"), ("c3", "h1")):
        await world.call("ConnectContainer", connect_request(container, host=host))
    with pytest.raises(errors.FailedPrecondition, match="has 3 endpoint"):
        await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1"))
    assert len(world.agents["h1"].endpoints) == 2
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1", force=True))
    for agent in world.agents.values():
        assert agent.endpoints == {} and agent.networks == {}
    assert world.ipam.pools == {}
    assert await intents(world) == []
    with pytest.raises(errors.NotFound):
        await world.call("GetNetwork", pb.GetNetworkRequest(network=network.network_id))
    again = await create(world)
    assert again.network_id != network.network_id


async def test_delete_network_without_endpoints(world):
    await create(world)
    await world.call("ConnectContainer", connect_request("c1"))
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="net1"))
    assert world.agents["h1"].networks == {} and world.ipam.pools == {}


async def test_prune_deletes_only_unused_networks(world):
    await create(world, "used", "10.1.0.0/24")
    await create(world, "idle1", "10.2.0.0/24")
    await create(world, "idle2", "10.3.0.0/24")
    await world.call("ConnectContainer", connect_request("c1", network="used"))
    reply = await world.call("PruneNetworks", pb.PruneNetworksRequest())
    assert list(reply.deleted_networks) == ["idle1", "idle2"]
    listed = await world.call("ListNetworks", pb.ListNetworksRequest())
    assert [n.name for n in listed.networks] == ["used"]


# --- hosts and sandboxes -------------------------------------------------------------


async def test_hosts_register_heartbeat_and_health(world):
    listed = (await world.call("ListHosts", pb.ListHostsRequest())).hosts
    assert [(h.host_id, h.state, h.static) for h in listed] == [
        ("h1", pb.HOST_STATE_HEALTHY, True), ("h2", pb.HOST_STATE_HEALTHY, True)]
    await world.servers["h2"].stop(0)
    reply = await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h3", address="unix:/nonexistent.sock")))
    assert reply.heartbeat_interval.ToTimedelta().total_seconds() == 5
    beat = await world.call("HeartbeatHost", pb.HeartbeatHostRequest(host_id="h3"))
    assert not beat.reregister
    assert (await world.call("HeartbeatHost",
                             pb.HeartbeatHostRequest(host_id="h7"))).reregister
    states = {h.host_id: h.state for h in (await world.call("ListHosts",
                                                            pb.ListHostsRequest())).hosts}
    assert states == {"h1": pb.HOST_STATE_HEALTHY, "h2": pb.HOST_STATE_UNHEALTHY,
                      "h3": pb.HOST_STATE_HEALTHY}
    with pytest.raises(errors.AlreadyExists, match="already registered"):
        await world.call("RegisterHost", pb.RegisterHostRequest(
            host=pb.Host(host_id="h3", address="unix:/other.sock")))
    with pytest.raises(errors.AlreadyExists):
        await world.call("RegisterHost", pb.RegisterHostRequest(
            host=pb.Host(host_id="h1", address="127.0.0.1:1")))
    with pytest.raises(errors.InvalidArgument):
        await world.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(host_id="h4")))


async def test_registered_host_is_usable(world):
    await create(world)
    address = f"127.0.0.1:{world.servers['h2'].port}"
    await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h2b", address=address)))
    endpoint = (await world.call("ConnectContainer", connect_request("c1", host="h2b"))).endpoint
    assert endpoint.endpoint_id in world.agents["h2"].endpoints
    hosts = {h.host_id: h for h in (await world.call("ListHosts", pb.ListHostsRequest())).hosts}
    assert hosts["h2b"].endpoint_count == 1 and not hosts["h2b"].static
    # Registered a moment ago, so alive: its endpoints stay unless forced.
    with pytest.raises(errors.FailedPrecondition) as alive:
        await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2b"))
    assert alive.value.reason == "HOST_ALIVE"
    assert len((await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints) == 1
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2b", force=True))
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []


async def test_sandboxes(world):
    await create(world, "a", "10.1.0.0/24")
    await create(world, "b", "10.2.0.0/24")
    sandbox = (await world.call("CreateSandbox", pb.CreateSandboxRequest(
        name="cnm-h1-web", host_id="h1"))).sandbox
    assert sandbox.path == "/var/run/netns/cnm-h1-web" and sandbox.host_id == "h1"
    for network in ("a", "b"):
        await world.call("ConnectContainer", connect_request("cnm-h1-web", network=network))
    listed = (await world.call("ListSandboxes", pb.ListSandboxesRequest())).sandboxes
    assert [(s.name, s.host_id, len(s.endpoints)) for s in listed] == [("cnm-h1-web", "h1", 2)]
    await world.call("DeleteSandbox", pb.DeleteSandboxRequest(name="cnm-h1-web", host_id="h1"))
    assert world.agents["h1"].endpoints == {} and world.agents["h1"].sandboxes == {}
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []
    with pytest.raises(errors.NotFound, match="sandbox"):
        await world.call("DeleteSandbox", pb.DeleteSandboxRequest(name="cnm-h1-web",
                                                                  host_id="h1"))
    await world.call("DeleteSandbox", pb.DeleteSandboxRequest(
        name="cnm-h1-web", host_id="h1", allow_missing=True))
    with pytest.raises(errors.InvalidArgument):
        await world.call("CreateSandbox", pb.CreateSandboxRequest(name="a/b", host_id="h1"))
    with pytest.raises(errors.NotFound):
        await world.call("CreateSandbox", pb.CreateSandboxRequest(name="x", host_id="h9"))


async def test_a_connect_racing_the_removal_of_its_sandbox_leaves_no_ghost(world):
    """cnm rm while a network connect of the same container is half done (issue 11): the
    connect's endpoint dies with the namespace, so its record must not outlive it."""
    await create(world, "a", "10.1.0.0/24")
    await world.call("CreateSandbox", pb.CreateSandboxRequest(name="cnm-h1-race", host_id="h1"))
    agent = world.agents["h1"]
    agent.hold = asyncio.Event()
    connecting = asyncio.create_task(world.call("ConnectContainer",
                                                connect_request("cnm-h1-race", network="a")))
    while agent.held == 0:  # the connect is at the agent: intent written, not committed
        await asyncio.sleep(0.01)
    removing = asyncio.create_task(world.call(
        "DeleteSandbox", pb.DeleteSandboxRequest(name="cnm-h1-race", host_id="h1")))
    while "cnm-h1-race" in agent.sandboxes:
        await asyncio.sleep(0.01)
    agent.hold.set()
    agent.hold = None
    await asyncio.gather(connecting, removing, return_exceptions=True)
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []
    assert agent.endpoints == {}
    assert world.ipam.owners(next(iter(world.ipam.pools))) == {}


# --- concurrency ----------------------------------------------------------------------


async def test_two_replicas_connect_concurrently(world):
    network = await create(world, subnet="10.20.0.0/24")
    other = await world.new_replica()
    ours = world.orch

    async def connect(orch, container):
        return await orch.connect(connect_request(container))

    results = await asyncio.gather(*(
        connect(ours if i % 2 else other, f"c{i // 2}") for i in range(60)
    ))
    by_container = {}
    for endpoint in results:
        by_container.setdefault(endpoint.container_id, set()).add(endpoint.address)
    assert all(len(addresses) == 1 for addresses in by_container.values())
    addresses = [next(iter(a)) for a in by_container.values()]
    assert len(set(addresses)) == 30
    assert len(world.ipam.owners(network.network_id)) == 30
    assert len(world.agents["h1"].endpoints) == 30
    assert len(await world.store.endpoint_ids(network_id=network.network_id)) == 30
    assert await intents(world) == []


async def test_force_delete_racing_connects_leaves_nothing(world):
    network = await create(world)
    other = await world.new_replica()
    agent = world.agents["h1"]
    agent.hold = asyncio.Event()
    connects = [asyncio.create_task(other.connect(connect_request(f"c{i}"))) for i in range(5)]
    await eventually(lambda: agent.held == 5)  # all five are inside CreateEndpoint
    delete = asyncio.create_task(world.orch.delete_network("net1", force=True))
    for _ in range(500):
        if (await world.store.get_network(network.network_id))[1] == "deleting":
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert not delete.done()  # marked deleting, waiting for the connects in flight
    agent.hold.set()
    results = await asyncio.gather(*connects, return_exceptions=True)
    await delete
    assert all(isinstance(result, errors.FailedPrecondition) for result in results), results
    assert agent.endpoints == {}
    assert network.network_id not in agent.networks
    assert world.ipam.pools == {}
    assert await intents(world) == []
    assert await world.store.endpoint_ids(network_id=network.network_id) == set()


async def eventually(check, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_grpc_reflection_and_health(world):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(world.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="cnm.orchestrator.v1.OrchestratorService")
        deadline = asyncio.get_running_loop().time() + 10
        while (await health.Check(request, timeout=5)).status != \
                health_pb2.HealthCheckResponse.SERVING:
            assert asyncio.get_running_loop().time() < deadline, "never SERVING"
            await asyncio.sleep(0.05)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [service.name async for reply in replies
                    for service in reply.list_services_response.service]
    assert "cnm.orchestrator.v1.OrchestratorService" in services
    assert "grpc.health.v1.Health" in services


async def test_redis_down_is_unavailable(world):
    from orchestrator.flows import Orchestrator
    from orchestrator.service import OrchestratorServicer
    from orchestrator.store import Store
    from tests import support

    store = Store.connect(f"redis://127.0.0.1:{support.free_port()}/0")
    servicer = OrchestratorServicer(Orchestrator(store, world.orch.ipam, world.orch.agents))
    try:
        with pytest.raises(errors.Unavailable, match="ListNetworks: redis is unavailable") as got:
            await servicer.ListNetworks(pb.ListNetworksRequest(), None)
        assert got.value.reason == "REDIS_UNAVAILABLE"  # the reason IPAM gives too
        with pytest.raises(errors.Unavailable, match="redis"):
            await servicer.ConnectContainer(connect_request("c1"), None)
    finally:
        await store.close()


# --- overlay -------------------------------------------------------------------------


def peers_of(agent, network_id):
    pushed = agent.peers[network_id]
    return ([(p.host_id, p.underlay_ip) for p in pushed.peers],
            sorted((r.address, r.underlay_ip) for r in pushed.remote_endpoints))


async def test_overlay_network_spans_hosts_with_peers_pushed(world):
    network = await create(world, "ov", "10.30.0.0/24", driver=pb.DRIVER_OVERLAY)
    second = await create(world, "ov2", "10.31.0.0/24", driver=pb.DRIVER_OVERLAY)
    assert (network.vni, second.vni) == (4096, 4097)
    h1, h2 = world.agents["h1"], world.agents["h2"]
    # On every host at once, with its peers, before any endpoint.
    assert h1.networks[network.network_id].vni == 4096
    assert h2.networks[network.network_id].driver == nd.DRIVER_OVERLAY
    assert peers_of(h1, network.network_id) == ([("h2", h2.underlay_ip)], [])
    inspected = (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network
    assert [(h.host_id, h.ready) for h in inspected.hosts] == [("h1", True), ("h2", True)]
    a = (await world.call("ConnectContainer", connect_request("a", network="ov"))).endpoint
    assert peers_of(h2, network.network_id) == ([("h1", h1.underlay_ip)],
                                                [(a.address, h1.underlay_ip)])
    b = (await world.call("ConnectContainer", connect_request("b", network="ov",
                                                              host="h2"))).endpoint
    assert peers_of(h1, network.network_id) == ([("h2", h2.underlay_ip)],
                                                [(b.address, h2.underlay_ip)])
    assert h2.peers[network.network_id].remote_endpoints[0].mac_address == a.mac_address
    assert h1.peers[network.network_id].generation > 1
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="ov", container_id="b"))
    assert peers_of(h1, network.network_id) == ([("h2", h2.underlay_ip)], [])
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="ov", force=True))
    assert network.network_id not in h1.networks and network.network_id not in h2.networks


async def test_overlay_peers_missed_by_a_host_are_pushed_by_the_reconciler(world):
    network = await create(world, "ov", "10.30.0.0/24", driver=pb.DRIVER_OVERLAY)
    await world.call("ConnectContainer", connect_request("b", network="ov", host="h2"))
    world.agents["h2"].faults.fail["SetNetworkPeers"] = errors.Unavailable("agent restarting")
    a = (await world.call("ConnectContainer", connect_request("a", network="ov"))).endpoint
    assert peers_of(world.agents["h2"], network.network_id)[1] == []
    assert await world.store.peers_dirty() == [network.network_id]
    inspected = (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network
    assert [(h.host_id, h.ready) for h in inspected.hosts] == [("h1", True), ("h2", False)]
    assert "agent restarting" in inspected.hosts[1].message
    del world.agents["h2"].faults.fail["SetNetworkPeers"]
    report = await world.reconciler.run_once()
    assert f"{network.network_id} on h2" in report.synced_peers
    assert peers_of(world.agents["h2"], network.network_id)[1] == [
        (a.address, world.agents["h1"].underlay_ip)]
    assert await world.store.peers_dirty() == []
    inspected = (await world.call("GetNetwork", pb.GetNetworkRequest(network="ov"))).network
    assert all(h.ready for h in inspected.hosts)


async def test_overlay_hosts_meet_over_one_underlay_family(world):
    """An IPv6 underlay carries an overlay as IPv4 does; a host of the other family is
    out of reach (VXLAN sends over one family), so it is pushed no peer of it."""
    h1, h2 = world.agents["h1"], world.agents["h2"]
    h1.underlay_ip, h2.underlay_ip = "fd00:99::1", "fd00:99::2"
    network = await create(world, "ov", "10.30.0.0/24", driver=pb.DRIVER_OVERLAY)
    a = (await world.call("ConnectContainer", connect_request("a", network="ov"))).endpoint
    assert peers_of(h2, network.network_id) == ([("h1", "fd00:99::1")],
                                                [(a.address, "fd00:99::1")])
    await world.call("DeleteNetwork", pb.DeleteNetworkRequest(network="ov", force=True))
    h2.underlay_ip = "192.0.2.77"
    await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h2", address=f"127.0.0.1:{world.servers['h2'].port}",
                     underlay_ip="192.0.2.77")))
    network = await create(world, "ov", "10.30.0.0/24", driver=pb.DRIVER_OVERLAY)
    a = (await world.call("ConnectContainer", connect_request("a", network="ov"))).endpoint
    assert peers_of(h1, network.network_id) == peers_of(h2, network.network_id) == ([], [])


# --- issue 9's defects: what the agent would refuse is refused here first ---------------------


@pytest.mark.parametrize(("address", "underlay"), [
    ("; drop table pools; --", ""),
    ("unix:/etc/../etc/passwd", ""),
    ("unix:relative.sock", ""),
    ("127.0.0.1:0", ""),
    ("127.0.0.1:65536", ""),
    ("300.1.1.1:50053", ""),
    ("host name:50053", ""),
    ("[::1:50053", ""),
    ("a" * 10_000 + ":1", ""),
    ("127.0.0.1:50053", "300.1.1.0/24"),
    ("127.0.0.1:50053", "10.0.0.1/24"),
    ("127.0.0.1:50053", "fe80::1"),
    ("127.0.0.1:50053", "ff02::1"),
    ("127.0.0.1:50053", "0.0.0.0"),
])
async def test_register_host_refuses_bad_addresses_and_lists_nothing(world, address, underlay):
    with pytest.raises(errors.InvalidArgument) as caught:
        await world.call("RegisterHost", pb.RegisterHostRequest(
            host=pb.Host(host_id="h9", address=address, underlay_ip=underlay)))
    assert caught.value.reason in ("INVALID_HOST_ADDRESS", "INVALID_UNDERLAY_IP",
                                   "IPV6_NOT_SUPPORTED")
    hosts = (await world.call("ListHosts", pb.ListHostsRequest())).hosts
    assert "h9" not in {host.host_id for host in hosts}


@pytest.mark.parametrize("address", ["127.0.0.1:50053", "[::1]:50053", "agent-3.example:443",
                                     "unix:/run/cnm/agent.sock", "unix:///run/cnm/agent.sock"])
async def test_register_host_takes_every_form_of_address(world, address):
    await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h9", address=address, underlay_ip="10.99.0.9")))


@pytest.mark.parametrize(("fields", "code", "reason"), [
    ({"port_mappings": [pb.PortMapping(protocol=99, host_port=80, container_port=80)]},
     errors.InvalidArgument, "INVALID_PROTOCOL"),
    ({"port_mappings": [pb.PortMapping(protocol=-7, host_port=80, container_port=80)]},
     errors.InvalidArgument, "INVALID_PROTOCOL"),
    # An IPv6 host address on a network that is not dual stack.
    ({"port_mappings": [pb.PortMapping(host_ip="::1", host_port=80, container_port=80)]},
     errors.InvalidArgument, "INVALID_ADDRESS"),
    ({"ipv6_address": "fd00::5"}, errors.InvalidArgument, "ADDRESS_OUTSIDE_SUBNET"),
    ({"port_mappings": [pb.PortMapping(host_port=80, container_port=80),
                        pb.PortMapping(host_ip="10.0.0.1", host_port=80, container_port=80)]},
     errors.InvalidArgument, "PORT_MAPPINGS_OVERLAP"),
    ({"sandbox": "s" * 10_000}, errors.InvalidArgument, "INVALID_SANDBOX"),
    ({"sandbox": "."}, errors.InvalidArgument, "INVALID_SANDBOX"),
    ({"sandbox": "relative/path"}, errors.InvalidArgument, "INVALID_SANDBOX"),
    ({"sandbox": "/var/run/netns/x\n"}, errors.InvalidArgument, "INVALID_SANDBOX"),
    ({"container_id": ".."}, errors.InvalidArgument, "INVALID_ID"),
])
async def test_connect_refuses_what_the_agent_would_before_allocating(world, fields, code,
                                                                      reason):
    await create(world)
    request = connect_request("c1")
    for name, value in fields.items():
        if name == "port_mappings":
            request.port_mappings.extend(value)
        else:
            setattr(request, name, value)
    with pytest.raises(code) as caught:
        await world.call("ConnectContainer", request)
    assert caught.value.reason == reason
    assert len(caught.value.message.encode()) <= errors.MAX_MESSAGE_BYTES
    assert world.ipam.faults.calls.count("AllocateAddress") == 0
    assert world.agents["h1"].endpoints == {}


@pytest.mark.parametrize("name", [".", "..", "../etc", "s" * 10_000, "bell\a"])
async def test_sandbox_names_are_checked_before_the_agent_is_asked(world, name):
    for method, request in (
        ("CreateSandbox", pb.CreateSandboxRequest(name=name, host_id="h1")),
        ("DeleteSandbox", pb.DeleteSandboxRequest(name=name, host_id="h1")),
    ):
        with pytest.raises(errors.InvalidArgument) as caught:
            await world.call(method, request)
        assert caught.value.reason == "INVALID_SANDBOX"


# --- dead containers -----------------------------------------------------------------


async def endpoints_of(world, network="net1") -> dict[str, pb.Endpoint]:
    reply = await world.call("GetNetwork", pb.GetNetworkRequest(network=network))
    return {endpoint.container_id: endpoint for endpoint in reply.endpoints}


async def test_a_gone_container_is_shown_gone_then_released_after_the_grace(world):
    world.orch.gone_grace = 0.5
    network = await create(world)
    dead = (await world.call("ConnectContainer", connect_request(
        "c1", port_mappings=[pb.PortMapping(protocol=pb.PROTOCOL_TCP, host_port=8080,
                                            container_port=80)]))).endpoint
    await world.call("ConnectContainer", connect_request("c2"))
    assert dead.state == pb.ENDPOINT_STATE_ACTIVE
    beat = await world.call("HeartbeatHost", pb.HeartbeatHostRequest(
        host_id="h1", lost_endpoint_ids=[dead.endpoint_id, "0123456789abcdef"]))
    assert list(beat.unknown_endpoint_ids) == ["0123456789abcdef"]
    shown = await endpoints_of(world)
    assert shown["c1"].state == pb.ENDPOINT_STATE_GONE and shown["c1"].HasField("gone_time")
    assert shown["c2"].state == pb.ENDPOINT_STATE_ACTIVE
    # Reported again (every heartbeat until released): the first report's time stays.
    await world.call("HeartbeatHost", pb.HeartbeatHostRequest(
        host_id="h1", lost_endpoint_ids=[dead.endpoint_id]))
    assert (await endpoints_of(world))["c1"].gone_time == shown["c1"].gone_time
    assert dead.address in world.ipam.allocations[network.network_id]
    for _ in range(50):
        if "c1" not in await endpoints_of(world):
            break
        await asyncio.sleep(0.1)
    assert set(await endpoints_of(world)) == {"c2"}
    assert dead.address not in world.ipam.allocations[network.network_id]
    assert dead.endpoint_id not in world.agents["h1"].endpoints  # the host confirmed
    assert await world.store.gone_times() == {}
    # Its host port is free again.
    await world.call("ConnectContainer", connect_request(
        "c3", port_mappings=[pb.PortMapping(protocol=pb.PROTOCOL_TCP, host_port=8080,
                                            container_port=80)]))


async def test_a_host_reports_only_its_own_endpoints_and_valid_ids(world):
    await create(world)
    other = (await world.call("ConnectContainer", connect_request("c1", host="h2"))).endpoint
    beat = await world.call("HeartbeatHost", pb.HeartbeatHostRequest(
        host_id="h1", lost_endpoint_ids=[other.endpoint_id]))
    assert list(beat.unknown_endpoint_ids) == [other.endpoint_id]
    assert (await endpoints_of(world))["c1"].state == pb.ENDPOINT_STATE_ACTIVE
    with pytest.raises(errors.InvalidArgument, match="lost_endpoint_ids"):
        await world.call("HeartbeatHost", pb.HeartbeatHostRequest(
            host_id="h2", lost_endpoint_ids=["../x"]))
    assert await world.store.gone_times() == {}


async def test_a_name_used_again_after_its_container_died_gets_a_new_endpoint(world):
    world.orch.gone_grace = 60
    await create(world)
    dead = (await world.call("ConnectContainer",
                             connect_request("c1", sandbox="/proc/10/ns/net"))).endpoint
    await world.call("HeartbeatHost", pb.HeartbeatHostRequest(
        host_id="h1", lost_endpoint_ids=[dead.endpoint_id]))
    world.agents["h1"].endpoints.pop(dead.endpoint_id)  # what the host tore down
    again = (await world.call("ConnectContainer",
                              connect_request("c1", sandbox="/proc/20/ns/net"))).endpoint
    assert again.endpoint_id == dead.endpoint_id and again.sandbox == "/proc/20/ns/net"
    assert again.state == pb.ENDPOINT_STATE_ACTIVE
    assert world.agents["h1"].endpoints[again.endpoint_id].sandbox == "/proc/20/ns/net"
    assert (await endpoints_of(world))["c1"].state == pb.ENDPOINT_STATE_ACTIVE
    assert await world.store.gone_times() == {}


async def test_the_reconciler_releases_gone_endpoints_no_replica_released(world):
    world.orch.gone_grace = 0
    network = await create(world)
    dead = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    # Reported to a replica that died before its grace ran out.
    await world.store.mark_gone("h1", [dead.endpoint_id], 1.0)
    report = await world.reconciler.run_once(collect_hosts=False)
    assert report.released_gone == [dead.endpoint_id]
    assert await endpoints_of(world) == {}
    assert dead.address not in world.ipam.allocations[network.network_id]


async def test_a_gone_endpoint_whose_host_is_unreachable_stays_held(world):
    world.orch.gone_grace = 0
    network = await create(world)
    dead = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    await world.store.mark_gone("h1", [dead.endpoint_id], 1.0)
    await world.servers["h1"].stop(0)
    report = await world.reconciler.run_once(collect_hosts=False)
    assert report.released_gone == []
    assert dead.address in world.ipam.allocations[network.network_id]
    assert (await endpoints_of(world))["c1"].state == pb.ENDPOINT_STATE_GONE


async def test_endpoints_of_a_host_silent_past_stale_after_are_shown_stale(world):
    await create(world)
    await world.call("RegisterHost", pb.RegisterHostRequest(
        host=pb.Host(host_id="h3", address=(await world.store.get_host("h1")).address)))
    await world.call("ConnectContainer", connect_request("c1", host="h3"))
    await world.call("ConnectContainer", connect_request("c2", host="h1"))
    assert (await endpoints_of(world))["c1"].state == pb.ENDPOINT_STATE_ACTIVE
    world.orch.hosts.stale_after = 0
    await asyncio.sleep(1.1)
    shown = await endpoints_of(world)
    # A static host need not heartbeat: never stale.
    assert (shown["c1"].state, shown["c2"].state) == (pb.ENDPOINT_STATE_STALE,
                                                        pb.ENDPOINT_STATE_ACTIVE)
    listed = (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints
    assert {e.container_id: e.state for e in listed}["c1"] == pb.ENDPOINT_STATE_STALE


async def test_connecting_a_container_that_is_not_there_allocates_nothing(world):
    await create(world)
    world.agents["h1"].missing_sandboxes.add("ghost")
    with pytest.raises(errors.NotFound, match="does not exist"):
        await world.call("ConnectContainer", connect_request("ghost"))
    assert "AllocateAddress" not in world.ipam.faults.calls
    assert await intents(world) == [] and world.agents["h1"].endpoints == {}
    # A repeat of a completed connect does not ask the host (its container may be gone
    # and the endpoint reported so later): it answers from the record.
    made = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    world.agents["h1"].missing_sandboxes.add("c1")
    assert (await world.call("ConnectContainer", connect_request("c1"))).endpoint == made


async def test_a_connect_may_name_the_interface_and_its_mac(world):
    await create(world)
    made = (await world.call("ConnectContainer", connect_request(
        "c1", interface_name="net0", mac_address="02:AA:00:00:00:01"))).endpoint
    assert (made.container_interface, made.mac_address) == ("net0", "02:aa:00:00:00:01")
    on_host = world.agents["h1"].endpoints[made.endpoint_id]
    assert (on_host.container_interface, on_host.mac_address) == ("net0", "02:aa:00:00:00:01")
    # A repeat asking for the same (or leaving them empty) is the same endpoint.
    for repeat in (connect_request("c1", interface_name="net0"), connect_request("c1")):
        assert (await world.call("ConnectContainer", repeat)).endpoint == made
    with pytest.raises(errors.AlreadyExists, match="different parameters"):
        await world.call("ConnectContainer", connect_request("c1", interface_name="eth1"))
    for bad, match in (({"interface_name": "a/b"}, "interface_name"),
                       ({"interface_name": "x" * 16}, "interface_name"),
                       ({"mac_address": "01:00:00:00:00:01"}, "multicast"),
                       ({"mac_address": "nope"}, "MAC")):
        with pytest.raises(errors.InvalidArgument, match=match):
            await world.call("ConnectContainer", connect_request("c2", **bad))
    assert "c2" not in {e.container_id for e in (await world.call(
        "ListEndpoints", pb.ListEndpointsRequest())).endpoints}


# --- addresses reserved by a runtime's IPAM ---------------------------------------


def reserve(address: str = "", host: str = "h1", network: str = "net1"):
    return pb.ReserveAddressRequest(network=network, host_id=host, address=address)


def release(address: str, host: str = "h1", network: str = "net1"):
    return pb.ReleaseAddressRequest(network=network, host_id=host, address=address)


async def test_a_reserved_address_is_taken_by_a_connect_and_given_back_at_disconnect(world):
    network = await create(world)
    held = await world.call("ReserveAddress", reserve())
    assert (held.prefix_length, held.gateway) == (24, "10.20.0.1")
    static = (await world.call("ReserveAddress", reserve("10.20.0.50"))).address
    assert (await world.call("ReserveAddress", reserve("10.20.0.50"))).address == static
    allocations = world.ipam.allocations[network.network_id]
    assert allocations[held.address] == validation.reservation_owner("h1", held.address)
    with pytest.raises(errors.AlreadyExists, match="already in use"):
        await world.call("ReserveAddress", reserve("10.20.0.50", host="h2"))
    # Another connect cannot take it, nor one from another host that names it reserved.
    with pytest.raises(errors.AlreadyExists):
        await world.call("ConnectContainer", connect_request("c0", address=held.address))
    with pytest.raises(errors.FailedPrecondition) as caught:
        await world.call("ConnectContainer", connect_request(
            "c0", host="h2", address=held.address, address_reserved=True))
    assert caught.value.reason == "ADDRESS_NOT_RESERVED"
    with pytest.raises(errors.InvalidArgument, match="address_reserved needs"):
        await world.call("ConnectContainer", connect_request("c0", address_reserved=True))
    endpoint = (await world.call("ConnectContainer", connect_request(
        "c1", address=held.address, address_reserved=True))).endpoint
    assert endpoint.address == held.address and endpoint.address_reserved
    assert allocations[held.address] == endpoint.endpoint_id
    again = (await world.call("ConnectContainer", connect_request(
        "c1", address=held.address, address_reserved=True))).endpoint
    assert again.endpoint_id == endpoint.endpoint_id
    # Released while an endpoint holds it: nothing happens.
    await world.call("ReleaseAddress", release(held.address))
    assert allocations[held.address] == endpoint.endpoint_id
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    assert allocations[held.address] == validation.reservation_owner("h1", held.address)
    await world.call("ReleaseAddress", release(held.address))
    await world.call("ReleaseAddress", release(held.address))  # again: nothing to do
    assert held.address not in allocations
    assert allocations[static] == validation.reservation_owner("h1", static)
    assert await intents(world) == []


async def test_a_dual_stack_endpoint_takes_both_reserved_addresses_and_gives_both_back(world):
    network = await create(world, enable_ipv6=True, ipv6_subnet="fd00:20::/64")
    v4 = world.ipam.allocations[network.network_id]
    v6 = world.ipam.allocations[validation.ipv6_pool_id(network.network_id)]
    held = await world.call("ReserveAddress", reserve())
    held6 = await world.call("ReserveAddress", pb.ReserveAddressRequest(
        network="net1", host_id="h1", ipv6=True))
    assert (held6.prefix_length, held6.gateway) == (64, "fd00:20::1")
    static6 = (await world.call("ReserveAddress", reserve("fd00:20::50"))).address
    assert static6 == "fd00:20::50" and v6[static6] == \
        validation.reservation_owner("h1", static6)
    with pytest.raises(errors.InvalidArgument, match="IPv6 address reserved too"):
        await world.call("ConnectContainer", connect_request(
            "c1", address=held.address, address_reserved=True))
    with pytest.raises(errors.FailedPrecondition) as caught:  # not reserved: nothing taken
        await world.call("ConnectContainer", connect_request(
            "c1", address=held.address, ipv6_address="fd00:20::99", address_reserved=True))
    assert caught.value.reason == "ADDRESS_NOT_RESERVED"
    assert v4[held.address] == validation.reservation_owner("h1", held.address)
    endpoint = (await world.call("ConnectContainer", connect_request(
        "c1", address=held.address, ipv6_address=held6.address,
        address_reserved=True))).endpoint
    assert (endpoint.ipv6_address, endpoint.ipv6_prefix_length) == (held6.address, 64)
    assert v4[held.address] == v6[held6.address] == endpoint.endpoint_id
    await world.call("DisconnectContainer",
                     pb.DisconnectContainerRequest(network="net1", container_id="c1"))
    assert v6[held6.address] == validation.reservation_owner("h1", held6.address)
    for address in (held.address, held6.address, static6):
        await world.call("ReleaseAddress", release(address))
    assert held6.address not in v6 and static6 not in v6 and held.address not in v4
    assert await intents(world) == []


async def test_ipv6_reservations_need_a_dual_stack_network(world):
    await create(world)
    for request in (reserve("fd00:20::5"), pb.ReserveAddressRequest(
            network="net1", host_id="h1", ipv6=True)):
        with pytest.raises(errors.InvalidArgument, match="no IPv6 subnet"):
            await world.call("ReserveAddress", request)


async def test_a_disconnect_can_release_a_reserved_address_even_when_cut_short(world):
    network = await create(world)
    allocations = world.ipam.allocations[network.network_id]
    for container in ("c1", "c2"):
        held = (await world.call("ReserveAddress", reserve())).address
        await world.call("ConnectContainer", connect_request(
            container, address=held, address_reserved=True))
        if container == "c2":  # IPAM fails after the host deleted it: the intent is left
            world.ipam.faults.fail["ReleaseAddress"] = errors.Unavailable("redis down")
        disconnect = world.call("DisconnectContainer", pb.DisconnectContainerRequest(
            network="net1", container_id=container, release_address=True))
        if container == "c2":
            with pytest.raises(errors.Unavailable):
                await disconnect
            assert held in allocations and await intents(world) != []
            world.ipam.faults.fail.clear()
            await world.reconciler.run_once()
        else:
            await disconnect
        assert held not in allocations  # released, not given back to the reservation
        await world.call("ReleaseAddress", release(held))  # Docker's, after: nothing to do
    assert await intents(world) == []


async def test_a_failed_connect_gives_a_reserved_address_back(world):
    network = await create(world)
    held = (await world.call("ReserveAddress", reserve())).address
    world.agents["h1"].faults.fail["CreateEndpoint"] = errors.Internal("veth went wrong")
    with pytest.raises(errors.Internal):
        await world.call("ConnectContainer", connect_request(
            "c1", address=held, address_reserved=True))
    assert world.ipam.allocations[network.network_id][held] == \
        validation.reservation_owner("h1", held)
    assert await intents(world) == []


async def test_reservations_need_a_registered_host_and_go_with_it(world):
    network = await create(world)
    with pytest.raises(errors.NotFound, match="not registered"):
        await world.call("ReserveAddress", reserve(host="nohost"))
    with pytest.raises(errors.InvalidArgument):
        await world.call("ReserveAddress", reserve("10.99.0.1"))
    with pytest.raises(errors.NotFound):
        await world.call("ReserveAddress", reserve(network="nonet"))
    kept = (await world.call("ReserveAddress", reserve(host="h1"))).address
    gone = (await world.call("ReserveAddress", reserve(host="h2"))).address
    report = await world.reconciler.run_once()
    assert report.released_addresses == []
    await world.store.delete_host("h2")
    report = await world.reconciler.run_once()
    assert report.released_addresses == [f"{network.network_id}/{gone}"]
    assert list(world.ipam.allocations[network.network_id]) == ["10.20.0.1", kept]


async def test_a_peer_on_the_host_needs_no_sandbox(world):
    await create(world)
    world.agents["h1"].missing_sandboxes.add("c1")  # asked, it would be NOT_FOUND
    endpoint = (await world.call("ConnectContainer", connect_request(
        "c1", peer_on_host=True))).endpoint
    assert (endpoint.sandbox, endpoint.peer_on_host) == ("", True)
    assert endpoint.container_interface.startswith("cp")
    made = world.agents["h1"].endpoints[endpoint.endpoint_id]
    assert made.peer_on_host and made.sandbox == ""
    with pytest.raises(errors.InvalidArgument, match="no sandbox"):
        await world.call("ConnectContainer", connect_request(
            "c2", peer_on_host=True, sandbox="c2"))
    with pytest.raises(errors.AlreadyExists):  # the same container, now with a sandbox
        await world.call("ConnectContainer", connect_request("c1"))
