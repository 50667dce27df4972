"""The agent in-process against the real kernel, inside namespaces the tests make.

The netlink layer acts on a test namespace as "the host" (``Netlink(host_ns=...)``);
the firewall is an in-memory fake here (tests/netdriver/test_agent_grpc.py
runs the agent process with real nftables).
"""

from __future__ import annotations

import pytest

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from netdriver_service import names
from netdriver_service.agent import Agent
from netdriver_service.faults import CONNECT_STEPS, Faults
from netdriver_service.netlink import Netlink
from netdriver_service.state import Store
from tests.netdriver import harness
from tests.netdriver.fakes import FakeFirewall

pytestmark = pytest.mark.root


class World:
    def __init__(self, host, state_dir):
        self.host = host
        self.state_dir = state_dir
        self.firewall = FakeFirewall()
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
            await agent.netlink.close()

    def snapshot(self, *namespaces) -> tuple:
        files = sorted(str(p.relative_to(self.state_dir)) for p in self.state_dir.rglob("*"))
        return (
            [harness.link_summary(ns.name) for ns in (self.host, *namespaces)],
            [harness.addresses(ns.name) for ns in namespaces],
            [harness.routes(ns.name) for ns in namespaces],
            files,
            dict(self.firewall.networks), dict(self.firewall.ports),
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
    inside = {link["ifname"]: link for link in harness.links(container.name)}
    assert inside["eth0"]["address"] == "02:42:0a:58:00:0a"
    assert "UP" in inside["lo"]["flags"]
    (eth0,) = [a for a in harness.addresses(container.name) if a["ifname"] == "eth0"]
    assert [(i["local"], i["prefixlen"]) for i in eth0["addr_info"] if i["family"] == "inet"] == [
        ("10.88.0.10", 24)
    ]
    assert {"dst": "default", "gateway": "10.88.0.1"}.items() <= harness.routes(
        container.name)[0].items()
    # IPv4 networks: no IPv6 link-local chatter flooded to every port of the bridge.
    assert veth["inet6_addr_gen_mode"] == "none"
    assert inside["eth0"]["inet6_addr_gen_mode"] == "none"
    assert not [a for a in harness.addresses(container.name) + harness.addresses(world.host.name)
                if a["ifname"] in ("eth0", made.host_interface)
                for i in a["addr_info"] if i["family"] == "inet6"]
    assert [p.host_port for p in world.firewall.ports.values()] == [8080]
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
    assert host_links[second.host_interface]["master"] == "br-second"
    assert len([r for r in harness.routes(container.name) if r["dst"] == "default"]) == 1


@pytest.mark.parametrize("step", CONNECT_STEPS)
async def test_a_connect_failing_after_any_step_leaves_nothing(world, netns, step):
    container = netns("cnmt-c")
    agent = await world.agent(faults=f"after:{step}")
    before = world.snapshot(container)
    with pytest.raises(errors.Internal, match=f"injected fault after step '{step}'"):
        await agent.create_endpoint(
            endpoint("e1", container.path, "10.88.0.10", default_route=True,
                     port_mappings=[harness.tcp(8080, 80)]), NET,
        )
    assert world.snapshot(container) == before
    assert agent.store.endpoints == {} and agent.store.networks == {}


async def test_a_network_failing_after_any_step_leaves_nothing(world):
    for step in ("bridge", "gateway", "network_rules"):
        agent = await world.agent(faults=f"after:{step}")
        before = world.snapshot()
        with pytest.raises(errors.Internal, match="injected"):
            await agent.create_network(NET)
        assert world.snapshot() == before, step


async def test_repeats_are_idempotent_and_conflicts_are_already_exists(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    request = endpoint("e1", container.path, "10.88.0.10", port_mappings=[harness.tcp(8080, 80)])
    first = await agent.create_endpoint(request, NET)
    before = world.snapshot(container)
    assert await agent.create_endpoint(request, None) == first
    assert (await agent.create_network(NET)).network_id == "n1"
    assert world.snapshot(container) == before
    changed = endpoint("e1", container.path, "10.88.0.11", port_mappings=[harness.tcp(8080, 80)])
    with pytest.raises(errors.AlreadyExists, match="other parameters"):
        await agent.create_endpoint(changed, None)
    with pytest.raises(errors.AlreadyExists):
        await agent.create_network(harness.network("n1", "10.88.0.0/24", internal=True))
    taken = endpoint("e2", netns("cnmt-c").path, "10.88.0.12", port_mappings=[harness.tcp(8080, 80)])
    with pytest.raises(errors.AlreadyExists, match="published by endpoint 'e1'"):
        await agent.create_endpoint(taken, None)
    assert world.snapshot(container) == before
    await agent.delete_endpoint("e1")
    await agent.delete_endpoint("e1")
    assert first.host_interface not in harness.link_names(world.host.name)
    assert world.firewall.ports == {}
    await agent.delete_network("n1")
    await agent.delete_network("n1")
    assert harness.link_names(world.host.name) == {"lo"}
    assert world.firewall.networks == {}


async def test_bad_input_changes_nothing(world, netns):
    agent = await world.agent()
    container = netns("cnmt-c")
    await agent.create_network(NET)
    before = world.snapshot(container)
    world.host.run("ip", "link", "add", "foreign0", "type", "bridge")
    foreign_before = world.snapshot(container)
    cases = [
        (endpoint("e1", "/var/run/netns/does-not-exist", "10.88.0.10"), None,
         errors.InvalidArgument),
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
         harness.network("n6", "10.88.0.0/16"), errors.FailedPrecondition),
    ]
    for request, network, code in cases:
        with pytest.raises(code) as caught:
            await agent.create_endpoint(request, network)
        assert caught.value.message, request
        assert world.snapshot(container) == foreign_before, (request, caught.value.message)
    with pytest.raises(errors.AlreadyExists, match="does not own"):
        await agent.create_network(harness.network("n4", "10.91.0.0/24", bridge_name="foreign0"))
    world.host.run("ip", "link", "del", "foreign0")
    assert world.snapshot(container) == before


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
        assert agent.list_sandboxes() == [(name, path)]
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
    assert [p.endpoint_id for p in world.firewall.ports.values()] == ["e1"]
    assert "e0" not in restarted.store.endpoints


class BrokenFirewall(FakeFirewall):
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
