"""The agent in-process against the real kernel, inside namespaces the tests make.

The netlink layer acts on a test namespace as "the host" (``Netlink(host_ns=...)``);
the firewall is the ``none`` backend here, which keeps the same bookkeeping of
ports (tests/netdriver/test_agent_grpc.py runs the agent process with real nftables).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client import REGISTRY

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from netdriver_service import names
from netdriver_service import netns as netns_module
from netdriver_service.agent import Agent
from netdriver_service.faults import CONNECT_STEPS, Faults
from netdriver_service.firewall.backends import make_firewall
from netdriver_service.firewall.noop import NoFirewall
from netdriver_service.linkwatch import LinkWatch
from netdriver_service.netlink import Netlink, netlink_socket
from netdriver_service.rtnl import RTM_GETLINK, Rtnl, get_link_request, message
from netdriver_service.service import NetDriverServicer
from netdriver_service.state import Store
from tests import support
from tests.netdriver import harness

pytestmark = pytest.mark.root


class World:
    def __init__(self, host, state_dir):
        self.host = host
        self.state_dir = state_dir
        self.firewall = make_firewall("none")
        self.agents: list[Agent] = []

    async def agent(self, faults: str = "") -> Agent:
        netlink = await Netlink(host_ns=self.host.path).open()
        agent = Agent(
            host_id="h1", underlay_ip="", netlink=netlink, firewall=self.firewall,
            store=Store(self.state_dir).load(), faults=Faults(faults),
        )
        await agent.start()
        self.agents.append(agent)
        return agent

    async def close(self):
        for agent in self.agents:
            await agent.resolvers.close()
            await agent.netlink.close()

    async def snapshot(self, *namespaces) -> tuple:
        files = sorted(str(p.relative_to(self.state_dir)) for p in self.state_dir.rglob("*"))
        return (
            [harness.link_summary(ns.name) for ns in (self.host, *namespaces)],
            [harness.addresses(ns.name) for ns in namespaces],
            [harness.routes(ns.name) for ns in namespaces],
            files,
            await self.firewall.list_networks(), await self.firewall.list_ports(),
        )


@pytest.fixture
async def world(netns, tmp_path):
    made = World(netns("cnmt-h"), tmp_path / "state")
    yield made
    await made.close()


NET = harness.network("n1", "10.88.0.0/24")


def endpoint(endpoint_id, sandbox, address, **fields):
    return pb.Endpoint(endpoint_id=endpoint_id, network_id="n1", sandbox=sandbox,
                       address=address, **fields)


async def test_connect_builds_the_veth_in_place_and_marks_everything(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    made = await agent.create_endpoint(
        endpoint("e1", container.path, "10.88.0.10", default_route=True,
                 port_mappings=[harness.tcp(8080, 80)]), NET,
    )
    assert (made.container_interface, made.mac) == ("eth0", "02:42:0a:58:00:0a")
    host_links = {link["ifname"]: link for link in harness.links(world.host.name)}
    bridge = host_links["cnm-n1"]
    assert bridge["ifalias"] == "cnm:net:n1" and "UP" in bridge["flags"]
    assert bridge["address"] == "02:42:0a:58:00:01"  # fixed: does not follow its ports
    veth = host_links[made.host_interface]
    assert veth["ifalias"] == "cnm:ep:e1:n1"
    assert veth["master"] == "cnm-n1" and "UP" in veth["flags"]
    assert veth["linkinfo"]["info_slave_data"]["hairpin"] is True
    # Set up last, with carrier: the port forwards as soon as the connect returns.
    assert veth["linkinfo"]["info_slave_data"]["state"] == "forwarding"
    assert "LOWER_UP" in veth["flags"]
    inside = {link["ifname"]: link for link in harness.links(container.name)}
    assert inside["eth0"]["address"] == "02:42:0a:58:00:0a"
    assert "UP" in inside["lo"]["flags"]
    (eth0,) = [a for a in harness.addresses(container.name) if a["ifname"] == "eth0"]
    assert [(i["local"], i["prefixlen"]) for i in eth0["addr_info"] if i["family"] == "inet"] == [
        ("10.88.0.10", 24)
    ]
    assert {"dst": "default", "gateway": "10.88.0.1"}.items() <= harness.routes(
        container.name)[0].items()
    # IPv4 networks: no IPv6 link-local chatter flooded to every port of the bridge; a
    # bridge port has no IPv6 of its own at all.
    assert world.host.run(
        "sysctl", "-n", f"net.ipv6.conf.{made.host_interface}.disable_ipv6"
    ).stdout.strip() == "1"
    assert inside["eth0"]["inet6_addr_gen_mode"] == "none"
    assert not [a for a in harness.addresses(container.name) + harness.addresses(world.host.name)
                if a["ifname"] in ("eth0", made.host_interface)
                for i in a["addr_info"] if i["family"] == "inet6"]
    assert [p.host_port for p in await world.firewall.list_ports()] == [8080]
    assert world.host.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    docker_options = {"com.docker.network.bridge.name": "br-second",
                      "com.docker.network.driver.mtu": "1400"}
    second = await agent.create_endpoint(
        pb.Endpoint(endpoint_id="e2", network_id="n2", sandbox=container.path,
                    address="10.89.0.10", mac_address="02:00:00:00:00:aa"),
        harness.network("n2", "10.89.0.0/24", options=docker_options),
    )
    assert second.container_interface == "eth1"
    inside = {link["ifname"]: link for link in harness.links(container.name)}
    assert (inside["eth1"]["mtu"], inside["eth1"]["address"]) == (1400, "02:00:00:00:00:aa")
    host_links = {link["ifname"]: link for link in harness.links(world.host.name)}
    assert host_links["br-second"]["mtu"] == 1400
    # No IGMP/MLD snooping unless asked for (netlink.create_bridge says why).
    assert bridge["linkinfo"]["info_data"]["mcast_snooping"] == 0
    assert host_links["br-second"]["linkinfo"]["info_data"]["mcast_snooping"] == 0
    assert host_links[second.host_interface]["master"] == "br-second"
    assert len([r for r in harness.routes(container.name) if r["dst"] == "default"]) == 1


async def test_a_disconnect_takes_the_veth_out_of_use_at_once_and_deletes_it_soon(world,
                                                                                  netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    made = await agent.create_endpoint(
        endpoint("e1", container.path, "10.88.0.10", port_mappings=[harness.tcp(8080, 80)]),
        NET)
    host = made.host_interface
    await agent.delete_endpoint("e1")
    # Returned: no port, no record; the veth, if not gone yet, is down and off duty.
    assert await world.firewall.list_ports() == [] and "e1" not in agent.store.endpoints
    left = {link["ifname"]: link for link in harness.links(world.host.name)}.get(host)
    assert left is None or "UP" not in left["flags"]
    # Connected again at once, under the same names (same endpoint, same sandbox's eth0).
    again = await agent.create_endpoint(endpoint("e1", container.path, "10.88.0.10"), NET)
    assert (again.host_interface, again.container_interface) == (host, "eth0")
    await agent.delete_endpoint("e1")
    # Another network at once: the sandbox's eth0 is free again (its deletion waited for).
    other = await agent.create_endpoint(
        pb.Endpoint(endpoint_id="e3", network_id="n2", sandbox=container.path,
                    address="10.89.0.10"), harness.network("n2", "10.89.0.0/24"))
    assert other.container_interface == "eth0"
    await agent.delete_endpoint("e3")
    await agent.netlink.settle()
    assert host not in {link["ifname"] for link in harness.links(world.host.name)}
    assert [link["ifname"] for link in harness.links(container.name)] == ["lo"]
    # What GetState reports never includes a veth still being deleted.
    await agent.create_endpoint(endpoint("e2", container.path, "10.88.0.11"), NET)
    await agent.delete_endpoint("e2")
    assert not (await agent.get_state()).endpoints


@pytest.mark.parametrize("step", CONNECT_STEPS)
async def test_a_connect_failing_after_any_step_leaves_nothing(world, netns, step):
    container = netns("cnmt-c")
    agent = await world.agent(faults=f"after:{step}")
    before = await world.snapshot(container)
    with pytest.raises(errors.Internal, match=f"injected fault after step '{step}'"):
        await agent.create_endpoint(
            endpoint("e1", container.path, "10.88.0.10", default_route=True,
                     port_mappings=[harness.tcp(8080, 80)]), NET,
        )
    assert await world.snapshot(container) == before
    assert agent.store.endpoints == {} and agent.store.networks == {}


async def test_a_network_failing_after_any_step_leaves_nothing(world):
    for step in ("bridge", "gateway", "network_rules"):
        agent = await world.agent(faults=f"after:{step}")
        before = await world.snapshot()
        with pytest.raises(errors.Internal, match="injected"):
            await agent.create_network(NET)
        assert await world.snapshot() == before, step


async def test_repeats_are_idempotent_and_conflicts_are_already_exists(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    request = endpoint("e1", container.path, "10.88.0.10", port_mappings=[harness.tcp(8080, 80)])
    first = await agent.create_endpoint(request, NET)
    before = await world.snapshot(container)
    assert await agent.create_endpoint(request, None) == first
    assert (await agent.create_network(NET)).network_id == "n1"
    assert await world.snapshot(container) == before
    changed = endpoint("e1", container.path, "10.88.0.11", port_mappings=[harness.tcp(8080, 80)])
    with pytest.raises(errors.AlreadyExists, match="other parameters"):
        await agent.create_endpoint(changed, None)
    with pytest.raises(errors.AlreadyExists):
        await agent.create_network(harness.network("n1", "10.88.0.0/24", internal=True))
    taken = endpoint("e2", netns("cnmt-c").path, "10.88.0.12", port_mappings=[harness.tcp(8080, 80)])
    with pytest.raises(errors.AlreadyExists, match="taken by endpoint 'e1'"):
        await agent.create_endpoint(taken, None)
    assert await world.snapshot(container) == before
    await agent.delete_endpoint("e1")
    await agent.delete_endpoint("e1")
    assert first.host_interface not in harness.link_names(world.host.name)
    assert await world.firewall.list_ports() == []
    await agent.delete_network("n1")
    await agent.delete_network("n1")
    assert harness.link_names(world.host.name) == {"lo"}
    assert await world.firewall.list_networks() == []


async def test_multicast_snooping_is_on_only_when_the_network_asks(world, netns):
    agent = await world.agent()
    await agent.create_network(
        harness.network("n1", "10.88.0.0/24", options={"cnm.bridge.mcast_snooping": "true"})
    )
    await agent.create_network(harness.network("n2", "10.89.0.0/24"))
    bridges = {link["ifname"]: link["linkinfo"]["info_data"]["mcast_snooping"]
               for link in harness.links(world.host.name) if link["ifname"] != "lo"}
    assert bridges == {"cnm-n1": 1, "cnm-n2": 0}


async def test_bad_input_changes_nothing(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    await agent.create_network(NET)
    before = await world.snapshot(container)
    world.host.run("ip", "link", "add", "foreign0", "type", "bridge")
    foreign_before = await world.snapshot(container)
    cases = [
        (endpoint("e1", "/var/run/netns/does-not-exist", "10.88.0.10"), None,
         errors.NotFound),
        (endpoint("e1", "/proc/self/ns/uts", "10.88.0.10"), None, errors.InvalidArgument),
        (endpoint("e1", container.path, "10.99.0.10"), None, errors.InvalidArgument),
        (endpoint("e1", container.path, "10.88.0.10", container_interface="bad name!"), None,
         errors.InvalidArgument),
        (endpoint("e1", container.path, "10.88.0.10", container_interface="lo"), None,
         errors.AlreadyExists),
        (endpoint("e1", container.path, "10.88.0.10",
                  port_mappings=[pb.PortMapping(host_port=0, container_port=80)]), None,
         errors.InvalidArgument),
        (endpoint("e1", container.path, "10.88.0.10",
                  port_mappings=[pb.PortMapping(host_port=65536, container_port=80)]), None,
         errors.InvalidArgument),
        (endpoint("e1", container.path, "10.88.0.10",
                  port_mappings=[pb.PortMapping(protocol=7, host_port=80, container_port=80)]),
         None, errors.InvalidArgument),
        (pb.Endpoint(endpoint_id="e1", network_id="elsewhere", sandbox=container.path,
                     address="10.88.0.10"), None, errors.FailedPrecondition),
        (pb.Endpoint(endpoint_id="e1", network_id="n3", sandbox=container.path,
                     address="10.90.0.10", port_mappings=[harness.tcp(1, 1)]),
         harness.network("n3", "10.90.0.0/24", internal=True), errors.FailedPrecondition),
        (pb.Endpoint(endpoint_id="e1", network_id="n4", sandbox=container.path,
                     address="10.91.0.10"),
         harness.network("n4", "10.91.0.0/24", bridge_name="foreign0"), errors.AlreadyExists),
        (pb.Endpoint(endpoint_id="e1", network_id="n5", sandbox=container.path,
                     address="10.91.0.10"),
         harness.network("n5", "10.91.0.0/24", bridge_name="sixteen-chars-xx"),
         errors.InvalidArgument),
        (pb.Endpoint(endpoint_id="e1", network_id="n6", sandbox=container.path,
                     address="10.88.1.10"),
         harness.network("n6", "10.88.0.0/16"), errors.AlreadyExists),  # SUBNET_OVERLAP
        # A network here already, but the request describes another one.
        (endpoint("e1", container.path, "10.88.0.10"), harness.network("n7", "10.92.0.0/24"),
         errors.InvalidArgument),
        (pb.Endpoint(endpoint_id="e1", network_id="n8", sandbox=container.path,
                     address="10.93.0.10"),
         harness.network("n8", "10.93.0.0/24", options={"cnm.bridge.mcast_snooping": "maybe"}),
         errors.InvalidArgument),
        # IPv6: an IPv4 "ipv6 subnet", a /40, an address of no or another IPv6 subnet,
        # the gateway's, a gateway without a subnet or outside it, a subnet overlapping
        # another network's.
        (endpoint("e1", container.path, "10.88.0.10", ipv6_address="fd00::5"), None,
         errors.InvalidArgument),
        *[(pb.Endpoint(endpoint_id="e1", network_id="n9", sandbox=container.path,
                       address="10.94.0.10", ipv6_address=v6),
           harness.network("n9", "10.94.0.0/24", **network), errors.InvalidArgument)
          for v6, network in (
              ("", {"ipv6_subnet": "10.95.0.0/24"}),
              ("", {"ipv6_subnet": "fd00::/40"}),
              ("fd01::5", {"ipv6_subnet": "fd00::/64"}),
              ("10.94.0.11", {"ipv6_subnet": "fd00::/64"}),
              ("fd00::1", {"ipv6_subnet": "fd00::/64"}),
              ("", {"ipv6_gateway": "fd00::1"}),
              ("", {"ipv6_subnet": "fd00::/64", "ipv6_gateway": "fd01::1"}),
          )],
        (pb.Endpoint(endpoint_id="e1", network_id="n10", sandbox=container.path,
                     address="10.96.0.10"),
         harness.network("n10", "10.96.0.0/24", ipv6_subnet="fd00:1::/64"), None),
        (pb.Endpoint(endpoint_id="e2", network_id="n11", sandbox=container.path,
                     address="10.97.0.10"),
         harness.network("n11", "10.97.0.0/24", ipv6_subnet="fd00:1:0:0:8000::/65"),
         errors.AlreadyExists),
    ]
    for request, network, code in cases:
        if code is None:  # made for the next case to clash with
            await agent.create_network(network)
            foreign_before = await world.snapshot(container)
            continue
        with pytest.raises(code) as caught:
            await agent.create_endpoint(request, network)
        assert caught.value.message, request
        assert await world.snapshot(container) == foreign_before, (request, caught.value.message)
    with pytest.raises(errors.AlreadyExists, match="does not own"):
        await agent.create_network(harness.network("n4", "10.91.0.0/24", bridge_name="foreign0"))
    world.host.run("ip", "link", "del", "foreign0")
    await agent.delete_network("n10")
    assert await world.snapshot(container) == before


async def test_kernel_refusals_are_counted_by_errno(world):
    agent = await world.agent()
    await agent.create_network(NET)

    def refused(code: str) -> float:
        return REGISTRY.get_sample_value("cnm_agent_netlink_errors_total", {"errno": code}) or 0

    before = refused("EADDRNOTAVAIL")
    with pytest.raises(errors.CnmError, match="set MAC"):  # a multicast MAC: refused
        await agent.netlink.set_mac("cnm-n1", "01:00:5e:00:00:01")
    assert refused("EADDRNOTAVAIL") == before + 1
    # A delete of what is not there is not a refusal: nothing counted.
    every = {code: refused(code) for code in ("ENODEV", "ENOENT", "EEXIST")}
    await agent.delete_endpoint("e1")
    await agent.delete_endpoint("e1")
    assert {code: refused(code) for code in every} == every


async def test_it_refuses_to_delete_a_link_without_its_mark(world, netns):
    agent = await world.agent()
    impostor = names.host_veth_name("e9")
    world.host.run("ip", "link", "add", impostor, "type", "bridge")
    with pytest.raises(errors.FailedPrecondition, match="not marked"):
        await agent.delete_endpoint("e9")
    assert impostor in harness.link_names(world.host.name)
    world.host.run("ip", "link", "add", "cnm-n1", "type", "bridge")
    with pytest.raises(errors.AlreadyExists, match="does not own"):
        await agent.create_network(NET)
    assert "cnm-n1" in harness.link_names(world.host.name)


async def test_each_network_answers_its_endpoints_names_on_its_gateway(world, netns):
    """The network's DNS server (netdriver_service/dns.py) holds the names of its
    endpoints before the connect returns, drops them with the endpoint, goes with the
    network, and is back after an agent restart; cnm.dns=false has none."""
    from dnslib import RCODE

    async def ask(name: str, tcp: bool = False):  # the server runs on this event loop
        return await asyncio.to_thread(harness.dns_ask, other, "10.88.0.1", name, tcp=tcp)

    agent = await world.agent()
    web, other = netns("cnmt-c"), netns("cnmt-c")
    await agent.create_endpoint(endpoint("e1", web.path, "10.88.0.10",
                                         dns_names=["web", "WWW"]), NET)
    await agent.create_endpoint(endpoint("e2", other.path, "10.88.0.11"), None)
    for tcp in (False, True):
        answer = await ask("www", tcp=tcp)
        assert harness.dns_addresses(answer) == ["10.88.0.10"]
    with pytest.raises(errors.InvalidArgument, match="invalid dns_names"):
        await agent.create_endpoint(endpoint("e3", other.path, "10.88.0.12",
                                             dns_names=["bad name"]), None)
    await agent.delete_endpoint("e1")
    assert (await ask("web")).header.rcode == RCODE.NXDOMAIN
    # Port 53 of the gateway is the DNS server's: publishing it on every address is refused.
    with pytest.raises(errors.AlreadyExists, match="DNS server of network 'n1' on 10.88.0.1"):
        await agent.create_endpoint(endpoint("e3", other.path, "10.88.0.12",
                                             port_mappings=[harness.udp(53, 53)]), None)
    await agent.create_endpoint(endpoint("e1", web.path, "10.88.0.10",
                                         dns_names=["web"]), None)
    await agent.resolvers.close()  # the agent's process is gone; a new one starts
    restarted = await world.agent()
    assert harness.dns_addresses(await ask("web")) == ["10.88.0.10"]
    await restarted.delete_network("n1")
    assert await ask("web") is None
    await restarted.create_network(harness.network("n2", "10.89.0.0/24",
                                                   options={"cnm.dns": "false"}))
    assert "n2" not in restarted.resolvers.running


async def test_host_routes_leave_out_cnms_networks_and_default_routes(world):
    agent = await world.agent()
    await agent.create_network(NET)  # its bridge has the connected route 10.88.0.0/24
    world.host.run("ip", "link", "add", "own0", "type", "bridge")
    world.host.run("ip", "addr", "add", "10.77.0.1/24", "dev", "own0")
    world.host.run("ip", "link", "set", "own0", "up")
    world.host.run("ip", "route", "add", "172.30.0.0/16", "via", "10.77.0.254")
    world.host.run("ip", "route", "add", "default", "via", "10.77.0.254")
    await agent.refresh_routes()
    assert agent.host_routes == ["10.77.0.0/24", "172.30.0.0/16"]
    world.host.run("ip", "link", "del", "own0")


async def test_sandboxes_are_created_listed_and_deleted_only_when_ours(world, netns):
    agent = await world.agent()
    foreign = netns("cnmt-f")
    name = f"cnmt-sb-{foreign.name[-8:]}"
    try:
        path = await agent.create_sandbox(name)
        assert path == f"/var/run/netns/{name}"
        assert await agent.create_sandbox(name) == path
        assert name in harness.namespace_names()
        assert "UP" in {l["ifname"]: l for l in harness.links(name)}["lo"]["flags"]
        assert agent.list_sandboxes() == [(name, path, os.stat(path).st_ino)]
        await agent.create_endpoint(endpoint("e1", name, "10.88.0.10"), NET)
        with pytest.raises(errors.AlreadyExists, match="not created by cnm"):
            await agent.create_sandbox(foreign.name)
        with pytest.raises(errors.FailedPrecondition, match="not created by cnm"):
            await agent.delete_sandbox(foreign.name)
        await agent.delete_sandbox(name)
        await agent.delete_sandbox(name)
        assert agent.list_sandboxes() == []
        assert agent.store.endpoints == {}
        assert harness.link_names(world.host.name) == {"lo", "cnm-n1"}
    finally:
        harness.delete_namespace(name)


async def test_state_is_read_from_the_kernel_and_rebuilt_after_a_restart(world, netns):
    agent = await world.agent()
    containers = [netns("cnmt-c") for _ in range(2)]
    for number, container in enumerate(containers):
        await agent.create_endpoint(
            endpoint(f"e{number}", container.path, f"10.88.0.{10 + number}",
                     port_mappings=[harness.tcp(8000 + number, 80)]), NET,
        )
    state = await agent.get_state()
    assert [n.bridge_name for n in state.networks] == ["cnm-n1"]
    assert sorted(e.endpoint_id for e in state.endpoints) == ["e0", "e1"]
    restarted = await world.agent()
    assert await restarted.get_state() == state
    world.host.run("ip", "link", "del", names.host_veth_name("e0"))
    assert [e.endpoint_id for e in (await restarted.get_state()).endpoints] == ["e1"]
    repaired = await restarted.resync()
    assert any("e0" in line for line in repaired)
    assert [p.endpoint_id for p in await world.firewall.list_ports()] == ["e1"]
    assert "e0" not in restarted.store.endpoints


class BrokenFirewall(NoFirewall):
    def __init__(self):
        super().__init__()
        self.broken = True

    async def ensure_base(self):
        if self.broken:
            raise errors.Unavailable("nftables does not answer")
        await super().ensure_base()


async def test_not_ready_until_the_firewall_answers(world, netns):
    world.firewall = BrokenFirewall()
    netlink = await Netlink(host_ns=world.host.path).open()
    agent = Agent(host_id="h1", underlay_ip="", netlink=netlink, firewall=world.firewall,
                  store=Store(world.state_dir).load())
    try:
        assert await agent.ready() is False
        with pytest.raises(errors.Unavailable, match="not ready: nftables does not answer"):
            await agent.create_network(NET)
        assert harness.link_names(world.host.name) == {"lo"}
        world.firewall.broken = False
        assert await agent.ready() is True
        await agent.create_network(NET)
    finally:
        await netlink.close()


async def test_a_cancelled_create_endpoint_call_finishes_or_leaves_nothing(world, netns):
    """grpc.aio cancels a handler when the client's deadline passes: here, right after
    the kernel made the veth and before the connect could push its undo."""
    agent = await world.agent()
    servicer = NetDriverServicer(agent)
    container = netns("cnmt-c")
    await agent.create_network(NET)
    before = await world.snapshot(container)
    veth_made = asyncio.Event()
    create_veth = agent.netlink.create_veth

    async def slow_create_veth(*args, **kwargs):
        await create_veth(*args, **kwargs)
        veth_made.set()
        await asyncio.sleep(0.2)

    agent.netlink.create_veth = slow_create_veth
    request = pb.CreateEndpointRequest(
        endpoint=endpoint("e1", container.path, "10.88.0.10",
                          port_mappings=[harness.tcp(8080, 80)]),
    )
    call = asyncio.ensure_future(servicer.CreateEndpoint(request, None))
    await veth_made.wait()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    async with agent.lock:  # the operation itself went on to its end
        pass
    made = agent.store.endpoints["e1"]
    veth = {link["ifname"]: link for link in harness.links(world.host.name)}[made.host_interface]
    assert veth["ifalias"] == "cnm:ep:e1:n1"
    assert [p.endpoint_id for p in await world.firewall.list_ports()] == ["e1"]
    await servicer.DeleteEndpoint(pb.DeleteEndpointRequest(endpoint_id="e1"), None)
    assert await world.snapshot(container) == before


async def test_a_failed_connect_to_a_broken_network_keeps_the_network_and_its_ports(
    world, netns,
):
    agent = await world.agent()
    first, second = netns("cnmt-c"), netns("cnmt-c")
    made = await agent.create_endpoint(
        endpoint("e1", first.path, "10.88.0.10", port_mappings=[harness.tcp(8080, 80)]), NET,
    )
    for breakage in (("down",), ("del",)):
        if breakage == ("down",):
            world.host.run("ip", "link", "set", "cnm-n1", "down")
        else:
            world.host.run("ip", "link", "del", "cnm-n1")
        with pytest.raises(errors.AlreadyExists, match="taken by endpoint 'e1'"):
            await agent.create_endpoint(
                endpoint("e2", second.path, "10.88.0.11", port_mappings=[harness.tcp(8080, 80)]),
                None,
            )
        # The failed connect repaired the network and did not undo it, nor its rules.
        assert await world.firewall.list_networks() == ["n1"], breakage
        assert [p.endpoint_id for p in await world.firewall.list_ports()] == ["e1"], breakage
        host_links = {link["ifname"]: link for link in harness.links(world.host.name)}
        assert "UP" in host_links["cnm-n1"]["flags"], breakage
        # e1's veth is a port of the (re-made) bridge again, hairpin on.
        veth = host_links[made.host_interface]
        assert veth["master"] == "cnm-n1", breakage
        assert veth["linkinfo"]["info_slave_data"]["hairpin"] is True, breakage
    assert "e2" not in agent.store.endpoints
    for step in CONNECT_STEPS:
        faulty = await world.agent(faults=f"after:{step}")
        world.host.run("ip", "link", "set", "cnm-n1", "down")
        with pytest.raises(errors.Internal, match="injected"):
            await faulty.create_endpoint(endpoint("e2", second.path, "10.88.0.11"), None)
        assert await world.firewall.list_networks() == ["n1"], step
        assert [p.endpoint_id for p in await world.firewall.list_ports()] == ["e1"], step
        assert names.host_veth_name("e2") not in harness.link_names(world.host.name), step


async def test_a_link_whose_marking_fails_is_deleted_at_once(world, netns):
    """The kernel marks a link only in a change after the add: if that change fails
    (here an alias longer than IFALIASZ), the new link must not stay unmarked."""
    agent = await world.agent()
    container = netns("cnmt-c")
    before = await world.snapshot(container)
    with pytest.raises(errors.InvalidArgument):
        await agent.netlink.create_bridge("cnmt-br0", mtu=1500, alias="x" * 300)
    await agent.create_network(NET)
    bridge = next(link for link in harness.links(world.host.name) if link["ifname"] == "cnm-n1")
    with pytest.raises(errors.InvalidArgument):
        await agent.netlink.create_veth(
            "cnmt-v0", mtu=1500, master=bridge["ifindex"], peer_name="eth0",
            peer_ns=container.path, peer_mac="02:00:00:00:00:01", alias="x" * 300,
            hairpin=True,
        )
    await agent.delete_network("n1")
    assert await world.snapshot(container) == before


async def test_a_crash_between_making_a_veth_and_marking_it_is_cleaned_up(world, netns):
    crashed = await world.agent()
    container = netns("cnmt-c")
    await crashed.create_network(NET)
    frozen = asyncio.Event()

    async def die_here(*args, **kwargs):
        frozen.set()
        await asyncio.Event().wait()  # the process is killed at this point

    crashed.netlink._mark_new_link = die_here
    request = endpoint("e1", container.path, "10.88.0.10")
    stuck = asyncio.ensure_future(crashed.create_endpoint(request, None))
    try:
        await frozen.wait()
        host = names.host_veth_name("e1")
        left = {link["ifname"]: link for link in harness.links(world.host.name)}[host]
        assert not left.get("ifalias")
        restarted = await world.agent()  # start-up reconciles: the intent names the link
        assert host not in harness.link_names(world.host.name)
        assert restarted.store.intents == {}
        made = await restarted.create_endpoint(request, None)
        assert made.host_interface == host
        assert {link["ifname"]: link for link in harness.links(world.host.name)}[host][
            "ifalias"] == "cnm:ep:e1:n1"
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)


async def test_a_runtime_namespace_dies_with_its_process(world):
    """A namespace given as /proc/PID/ns/net must not be kept alive by the agent:
    when the container's process ends, the namespace, its veth peer and so the
    host veth go, and a resync forgets the endpoint."""
    agent = await world.agent()
    holder = support.Process(["unshare", "--net", "sleep", "600"])
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        support.wait_for(lambda: os.stat(f"/proc/{holder.pid}/ns/net").st_ino != own, 10, 0.01,
                         "the holder to enter its own namespace")
        made = await agent.create_endpoint(
            endpoint("e1", f"/proc/{holder.pid}/ns/net", "10.88.0.10"), NET,
        )
        assert made.host_interface in harness.link_names(world.host.name)
    finally:
        holder.kill9()
    support.wait_for(lambda: made.host_interface not in harness.link_names(world.host.name),
                     10, 0.05, "the namespace and its veth to go")
    assert any("e1" in line for line in await agent.resync())
    assert agent.store.endpoints == {}


async def test_deleting_a_sandbox_goes_on_past_a_failing_endpoint(world, netns):
    agent = await world.agent()
    name = f"cnmt-sb-{netns('cnmt-x').name[-8:]}"
    try:
        path = await agent.create_sandbox(name)
        first = await agent.create_endpoint(endpoint("e1", path, "10.88.0.10"), NET)
        second = await agent.create_endpoint(endpoint("e2", path, "10.88.0.11"), None)
        # e1's veth replaced by a link cnm does not own: its disconnect must fail ...
        world.host.run("ip", "link", "del", first.host_interface)
        world.host.run("ip", "link", "add", first.host_interface, "type", "bridge")
        with pytest.raises(errors.FailedPrecondition, match="delete sandbox .* not marked"):
            await agent.delete_sandbox(name)
        # ... and every other step still ran.
        assert second.host_interface not in harness.link_names(world.host.name)
        assert "e2" not in agent.store.endpoints
        assert name not in harness.namespace_names()
        assert agent.list_sandboxes() == [] and name not in agent.store.sandboxes
        assert first.host_interface in harness.link_names(world.host.name)
    finally:
        harness.delete_namespace(name)


async def test_a_crash_while_creating_a_sandbox_does_not_block_its_name(world, netns, monkeypatch):
    crashed = await world.agent()
    name = f"cnmt-sb-{netns('cnmt-x').name[-8:]}"
    made = asyncio.Event()
    create = netns_module.create

    async def die_after_making(sandbox):
        await create(sandbox)
        made.set()
        await asyncio.Event().wait()  # the process is killed here

    monkeypatch.setattr(netns_module, "create", die_after_making)
    stuck = asyncio.ensure_future(crashed.create_sandbox(name))
    try:
        await made.wait()
        monkeypatch.undo()
        restarted = await world.agent()
        path = await restarted.create_sandbox(name)
        assert "UP" in {link["ifname"]: link for link in harness.links(name)}["lo"]["flags"]
        assert restarted.list_sandboxes() == [(name, path, os.stat(path).st_ino)]
        await restarted.delete_sandbox(name)
        assert name not in harness.namespace_names()
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        harness.delete_namespace(name)


async def test_a_sandbox_whose_namespace_was_never_mounted_is_made_again(world, netns):
    """Killed between making the namespace's file and mounting the namespace on it, the
    agent left an empty file under its record: creating the sandbox again makes it."""
    agent = await world.agent()
    name = f"cnmt-sb-{netns('cnmt-x').name[-8:]}"
    path = netns_module.path_of(name)
    await agent.store.add_sandbox(name)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o444))
    try:
        restarted = await world.agent()
        assert await restarted.create_sandbox(name) == path
        assert "UP" in {link["ifname"]: link for link in harness.links(name)}["lo"]["flags"]
        await restarted.delete_sandbox(name)
        assert not os.path.exists(path)
    finally:
        harness.delete_namespace(name)
        if os.path.exists(path):
            os.unlink(path)


async def test_a_sandbox_gone_before_the_veth_is_made_is_a_named_error(world, netns):
    agent = await world.agent()
    await agent.create_network(NET)
    bridge = next(link for link in harness.links(world.host.name) if link["ifname"] == "cnm-n1")
    with pytest.raises(errors.NotFound, match="create veth 'cnmt-v0'"):
        await agent.netlink.create_veth(
            "cnmt-v0", mtu=1500, master=bridge["ifindex"], peer_name="eth0",
            peer_ns="/var/run/netns/cnmt-vanished", peer_mac="02:00:00:00:00:01", alias="x",
            hairpin=True,
        )
    assert "cnmt-v0" not in harness.link_names(world.host.name)


async def test_the_netlink_layer_deletes_only_links_carrying_the_mark(world):
    agent = await world.agent()
    netlink = agent.netlink
    world.host.run("ip", "link", "add", "cnmt-f0", "type", "bridge")
    with pytest.raises(errors.FailedPrecondition, match="not marked") as caught:
        await netlink.delete_owned_link("cnmt-f0", names.network_alias("x"))
    assert caught.value.reason == "LINK_NOT_OWNED"
    assert "cnmt-f0" in harness.link_names(world.host.name)
    await netlink.create_bridge("cnmt-b0", mtu=1500, alias=names.endpoint_alias("e1", "n1"))
    with pytest.raises(errors.FailedPrecondition):
        await netlink.delete_owned_link("cnmt-b0", names.endpoint_owner("e2"))
    assert (await netlink.get_owned_link("cnmt-b0", names.endpoint_owner("e1"))).name == "cnmt-b0"
    assert await netlink.delete_owned_link("cnmt-b0", names.endpoint_owner("e1")) is True
    assert await netlink.delete_owned_link("cnmt-b0", names.endpoint_owner("e1")) is False
    assert harness.link_names(world.host.name) == {"lo", "cnmt-f0"}


async def test_the_link_dump_decodes_what_iproute2_reads_of_the_host_namespace(world):
    """The links are read by cnm's own decoder, in a worker thread, yet of the host
    namespace the agent acts on; checked field by field against ``ip -j -d link``,
    over a dump long enough to take many reads (600 links)."""
    agent = await world.agent()
    world.host.run("ip", "link", "add", "cnmt-s0", "mtu", "1400", "address", "02:42:0a:00:00:07",
                   "type", "bridge")
    world.host.run("ip", "link", "set", "cnmt-s0", "alias", "cnm:net:n7")
    batch = "".join(
        f"link add cnmt-v{n} type veth peer name cnmt-p{n}\n"
        f"link set cnmt-v{n} master cnmt-s0 alias cnm:ep:e{n}:n7 up\n"
        for n in range(300)
    )
    world.host.run("ip", "-batch", "-", input=batch)
    shown = json.loads(world.host.run("ip", "-j", "-d", "link", "show").stdout)
    index_of = {link["ifname"]: link["ifindex"] for link in shown}
    expected = [
        {
            "index": link["ifindex"], "name": link["ifname"],
            "kind": link.get("linkinfo", {}).get("info_kind", ""),
            "alias": link.get("ifalias", ""), "master": index_of.get(link.get("master"), 0),
            "up": "UP" in link["flags"], "mtu": link["mtu"], "mac": link.get("address", ""),
            "addresses": (),
        }
        for link in shown
    ]
    assert len(expected) == 602
    assert [link.__dict__ for link in await agent.netlink.snapshot_links()] == expected
    assert [link.__dict__ for link in await agent.netlink.list_links()] == expected


async def test_state_reports_the_bridge_address_and_detached_veths_and_resync_fixes_them(
    world, netns,
):
    agent = await world.agent()
    made = await agent.create_endpoint(endpoint("e1", netns("cnmt-c").path, "10.88.0.10"), NET)
    state = await agent.get_state()
    assert [(n.gateway, n.subnet) for n in state.networks] == [("10.88.0.1", "10.88.0.0/24")]
    assert [e.endpoint_id for e in state.endpoints] == ["e1"] and not state.detached_endpoints
    world.host.run("ip", "link", "set", made.host_interface, "nomaster")
    world.host.run("ip", "addr", "flush", "dev", "cnm-n1")
    state = await agent.get_state()
    assert [(n.gateway, n.subnet) for n in state.networks] == [("", "")]
    assert list(state.detached_endpoints) == ["e1"]
    repaired = await agent.resync()
    assert f"re-attached {made.host_interface} to bridge cnm-n1" in repaired
    veth = {link["ifname"]: link for link in harness.links(world.host.name)}[made.host_interface]
    assert veth["master"] == "cnm-n1"
    assert veth["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert not (await agent.get_state()).detached_endpoints


async def test_concurrent_connects_into_one_sandbox_and_a_connect_racing_a_delete(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    net2 = harness.network("n2", "10.89.0.0/24")
    first, second = await asyncio.gather(
        agent.create_endpoint(endpoint("e1", container.path, "10.88.0.10"), NET),
        agent.create_endpoint(
            pb.Endpoint(endpoint_id="e2", network_id="n2", sandbox=container.path,
                        address="10.89.0.10"), net2),
    )
    assert {first.container_interface, second.container_interface} == {"eth0", "eth1"}
    assert {"eth0", "eth1"} <= harness.link_names(container.name)
    other = netns("cnmt-c")
    outcomes = await asyncio.gather(
        agent.create_endpoint(endpoint("e3", other.path, "10.88.0.11"), None),
        agent.delete_network("n1"),
        return_exceptions=True,
    )
    # Whichever ran first, the kernel, the records and the firewall agree.
    state = await agent.get_state()
    in_kernel = sorted(e.endpoint_id for e in state.endpoints)
    assert in_kernel == sorted(agent.store.endpoints)
    assert sorted(n.network_id for n in state.networks) == sorted(agent.store.networks)
    assert sorted(await world.firewall.list_networks()) == sorted(agent.store.networks)
    if isinstance(outcomes[0], Exception):  # the delete came first: connect found no network
        assert isinstance(outcomes[0], errors.FailedPrecondition)
    assert in_kernel == ["e2"]


async def test_a_resync_finding_nothing_to_repair_does_not_hold_up_a_connect(
    world, netns, monkeypatch,
):
    agent = await world.agent()
    await agent.create_endpoint(endpoint("e1", netns("cnmt-c").path, "10.88.0.10"), NET)
    reading, release = asyncio.Event(), asyncio.Event()
    compare = world.firewall.drift

    async def slow_drift(networks, ports):
        reading.set()
        await release.wait()  # the firewall read of a big host, held open
        return await compare(networks, ports)

    monkeypatch.setattr(world.firewall, "drift", slow_drift)
    resync = asyncio.create_task(agent.resync())
    await reading.wait()
    # Held by the resync's read, the lock would keep this connect waiting forever.
    made = await asyncio.wait_for(
        agent.create_endpoint(endpoint("e2", netns("cnmt-c").path, "10.88.0.11",
                                       port_mappings=[harness.tcp(8080, 80)]), NET),
        timeout=10,
    )
    release.set()
    # The snapshot, older than the connect, differs from the kernel: it is read again
    # under the lock, which finds nothing to repair.
    assert await resync == []
    assert sorted(agent.store.endpoints) == ["e1", "e2"]
    assert made.host_interface in harness.link_names(world.host.name)
    assert [(p.endpoint_id, p.host_port) for p in await world.firewall.list_ports()] == [
        ("e2", 8080)
    ]


async def test_a_resync_repairs_drift_found_without_the_lock(world, netns):
    agent = await world.agent()
    made = await agent.create_endpoint(endpoint("e1", netns("cnmt-c").path, "10.88.0.10",
                                                port_mappings=[harness.tcp(8080, 80)]), NET)
    assert await agent.resync() == []
    world.host.run("ip", "link", "delete", made.host_interface)
    assert await agent.resync() == ["dropped endpoint e1: its veth is gone"]
    assert agent.store.endpoints == {} and await world.firewall.list_ports() == []


async def test_concurrent_dumps_on_one_socket_neither_fail_nor_mix(netns):
    """Agent start-up, resync and connects read routes, links and addresses at once on one
    cached socket: the kernel refuses a second dump while one runs (EBUSY), and a dump
    left half read keeps the socket busy."""
    container = netns("cnmt-d")
    for number in range(20):
        container.run("ip", "link", "add", f"br{number}", "type", "bridge")
    container.run("ip", "link", "set", "lo", "up")
    container.run("ip", "addr", "add", "10.0.9.1/24", "dev", "br0")
    container.run("ip", "link", "set", "br0", "up")
    container.run("ip", "route", "add", "default", "via", "10.0.9.254", "dev", "br0")
    for number in range(200):  # the default route comes first: a long dump after it
        container.run("ip", "route", "add", f"10.1.{number}.0/24", "via", "10.0.9.254")
    netlink = await Netlink().open()
    try:
        for _ in range(3):  # one after the other
            assert (await netlink.default_route(container.path))[0] == "10.0.9.254"
            assert len(await netlink.list_links(container.path)) == 21
        results = await asyncio.gather(*(
            call for _ in range(30) for call in (
                netlink.default_route(container.path), netlink.list_links(container.path),
                netlink.addresses(1, container.path))))
    finally:
        await netlink.close()
    routes, links = results[0::3], results[1::3]
    assert all(route is not None and route[0] == "10.0.9.254" for route in routes)
    assert all(len(found) == 21 for found in links)


async def test_a_dead_containers_endpoint_is_torn_down_and_reported_at_once(world, netns):
    """The veth goes with its namespace; the agent hears of it from the kernel (no
    polling), removes the rest (port rules, the record) and reports the endpoint lost.
    A veth deleted by hand from a namespace that lives on is not a dead container."""
    agent = await world.agent()
    told = asyncio.Event()
    agent.on_lost = told.set
    watch = await LinkWatch(agent.link_deleted, world.host.path).start()
    try:
        dying, living = netns("cnmt-c"), netns("cnmt-c")
        made = await agent.create_endpoint(
            endpoint("e1", dying.path, "10.88.0.10", port_mappings=[harness.tcp(8080, 80)]),
            NET)
        kept = await agent.create_endpoint(endpoint("e2", living.path, "10.88.0.11"), NET)
        world.host.run("ip", "link", "del", kept.host_interface)
        dying.close()
        await asyncio.wait_for(told.wait(), 10)
        assert agent.lost_endpoint_ids() == ["e1"]
        assert made.host_interface not in harness.link_names(world.host.name)
        assert await world.firewall.list_ports() == []
        assert set(agent.store.endpoints) == {"e2"}  # its namespace lives: not lost
        # Reported until the orchestrator disconnects it (or does not know it).
        await agent.delete_endpoint("e1")
        assert agent.lost_endpoint_ids() == []
    finally:
        watch.close()


async def test_the_link_watch_is_woken_by_deletions_only(netns):
    """Its socket filter keeps RTM_NEWLINK in the kernel: links made, joined or set up
    (four or five per connect) do not wake the agent; a link deleted does."""
    host = netns("cnmt-w")
    heard: list[str | None] = []
    watch = await LinkWatch(heard.append, host.path).start()
    try:
        host.run("ip", "link", "add", "wa0", "type", "veth", "peer", "name", "wb0")
        host.run("ip", "link", "set", "wa0", "up")
        with pytest.raises(BlockingIOError):
            watch.sock.recv(1 << 16)
        host.run("ip", "link", "del", "wa0")
        for _ in range(200):
            if len(heard) >= 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(heard) == ["wa0", "wb0"]
    finally:
        watch.close()


async def test_containers_that_died_while_the_agent_was_down_are_reported_at_start(
        world, netns):
    agent = await world.agent()
    dying = netns("cnmt-c")
    made = await agent.create_endpoint(endpoint("e1", dying.path, "10.88.0.10"), NET)
    await agent.netlink.close()
    dying.close()
    support.wait_for(lambda: made.host_interface not in harness.link_names(world.host.name),
                     10, 0.05, "the namespace and its veth to go")
    restarted = await world.agent()
    assert restarted.lost_endpoint_ids() == ["e1"]
    assert restarted.store.endpoints == {}
    restarted.forget_lost(["e1"])  # the orchestrator does not know it
    assert restarted.lost_endpoint_ids() == []


async def test_links_asked_by_name_read_as_the_kernel_has_them(netns):
    """Netlink.get_link asks the kernel without pyroute2 (netdriver_service/linkdump.py):
    what it reads agrees with ``ip``, an absent name is None."""
    host = netns("cnmt-q")
    host.run("ip", "link", "add", "cnmq-br", "type", "bridge")
    host.run("ip", "link", "set", "cnmq-br", "mtu", "1400", "alias", "cnm:net:x", "up")
    host.run("ip", "link", "add", "cnmq-a", "master", "cnmq-br", "type", "veth",
             "peer", "name", "cnmq-b")
    netlink = await Netlink(host_ns=host.path).open()
    try:
        shown = json.loads(host.run("ip", "-j", "-d", "link", "show", "cnmq-br").stdout)[0]
        bridge = await netlink.get_link("cnmq-br")
        assert (bridge.index, bridge.name, bridge.kind, bridge.alias, bridge.mtu, bridge.mac,
                bridge.master) == (shown["ifindex"], "cnmq-br", "bridge", "cnm:net:x", 1400,
                                   shown["address"], 0)
        port = await netlink.get_link("cnmq-a", host.path)
        assert (port.kind, port.master, port.up) == ("veth", bridge.index, False)
        assert await netlink.get_link("cnmq-none") is None
        # An answer left unread (its asker cancelled) is not taken for the next question's.
        query = Rtnl(await netns_module.in_namespace(host.path, netlink_socket))
        try:
            query.sock.send(message(RTM_GETLINK, 0, get_link_request("cnmq-b"), 4242))
            assert (await query.get_link("cnmq-a")).name == "cnmq-a"
        finally:
            query.close()
        assert (await netlink.get_link("cnmq-b")).name == "cnmq-b"
        with pytest.raises(errors.InvalidArgument):
            await netlink.get_link("x" * 20)  # longer than IFNAMSIZ: the kernel says EINVAL
    finally:
        await netlink.close()


async def test_a_peer_left_on_the_host_is_moved_by_the_runtime(world, netns):
    """peer_on_host (Docker's remote drivers): the container's end waits on the host,
    down and bare, for the runtime to move and configure; the endpoint is torn down
    as lost once the container (and with it the host's end) is gone."""
    agent = await world.agent()
    made = await agent.create_endpoint(
        endpoint("e1", "", "10.88.0.10", peer_on_host=True, mac_address="02:42:0a:58:00:0a",
                 port_mappings=[harness.tcp(8080, 80)]), NET)
    peer = names.host_peer_name("e1")
    assert (made.container_interface, made.sandbox) == (peer, "")
    links = {link["ifname"]: link for link in harness.links(world.host.name)}
    assert links[peer]["address"] == "02:42:0a:58:00:0a" and "UP" not in links[peer]["flags"]
    assert links[made.host_interface]["master"] == "cnm-n1"
    assert [a["addr_info"] for a in harness.addresses(world.host.name)
            if a["ifname"] == peer] == [[]]
    again = await agent.create_endpoint(
        endpoint("e1", "", "10.88.0.10", peer_on_host=True, mac_address="02:42:0a:58:00:0a",
                 port_mappings=[harness.tcp(8080, 80)]), NET)
    assert again.host_interface == made.host_interface
    with pytest.raises(errors.InvalidArgument, match="no sandbox"):
        await agent.create_endpoint(endpoint("e2", "x", "10.88.0.11", peer_on_host=True), NET)
    # The runtime moves it into the container, as Docker's Join does.
    container = netns("cnmt-moved")
    world.host.run("ip", "link", "set", peer, "netns", container.name, "name", "eth0")
    container.run("ip", "addr", "add", "10.88.0.10/24", "dev", "eth0")
    container.run("ip", "link", "set", "eth0", "up")
    assert [line for line in await agent.resync() if "e1" in line] == []
    container.close()  # the container ends
    support.wait_for(lambda: made.host_interface not in harness.link_names(world.host.name),
                     10, 0.05, "the host's end to go with the container")
    assert any("e1" in line for line in await agent.resync())
    assert agent.store.endpoints == {}
