"""Overlay networks across simulated hosts, with host membership (registration and
heartbeats): real agents, IPAM, orchestrator and Redis; real VXLAN, bridges and
nftables inside namespaces; traffic with the echo tools."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from dnslib import RCODE

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from netdriver_service.names import vxlan_name
from orchestrator import address_pools
from orchestrator.store import Store
from tests import support
from tests.multihost.cluster import HEARTBEAT, MultiHost, admin_channel, wait_until
from tests.netdriver import harness

pytestmark = pytest.mark.root


@pytest.fixture
def make_cluster(redis_url, netns, tmp_path):
    made: list[MultiHost] = []

    def make(hosts: int = 3, ipv6_underlay: bool = False, **options) -> MultiHost:
        cluster = MultiHost(tmp=tmp_path, redis_url=redis_url,
                            underlay=support.Underlay(netns, ipv6=ipv6_underlay),
                            **options).start()
        made.append(cluster)
        for _ in range(hosts):
            cluster.add_host()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


# Counts the VXLAN packets (UDP 4789) arriving on an interface until stdin closes whose
# inner frame comes from or goes to one of the MACs given (the host's own multicast,
# MLD reports of its bridge and VXLAN device, is not the containers' traffic).
COUNT_VXLAN = """
import socket, sys, threading
macs = {bytes.fromhex(mac.replace(":", "")) for mac in sys.argv[2:]}
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
sock.bind((sys.argv[1], 0))
sock.settimeout(0.2)
count, done = 0, threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
print("listening", flush=True)
while not done.is_set():
    try:
        packet = sock.recv(65535)
    except TimeoutError:
        continue
    if packet[0] >> 4 == 6:  # an IPv6 underlay (no extension header)
        header, protocol = 40, packet[6]
    elif packet[0] >> 4 == 4:
        header, protocol = (packet[0] & 0x0F) * 4, packet[9]
    else:
        continue
    if protocol == 17 and int.from_bytes(packet[header + 2:header + 4], "big") == 4789:
        inner = packet[header + 16:]  # past the UDP and VXLAN headers
        count += inner[:6] in macs or inner[6:12] in macs
print(count)
"""

# A UDP broadcast on the network (10.22.0.0/16), flooded to every host.
BROADCAST = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.sendto(b"x", ("10.22.255.255", 9))
"""


def vxlan_packets_seen(host, containers, during) -> int:
    """The VXLAN packets to or from ``containers`` (their MACs) that ``host``'s underlay
    interface sees while ``during()`` runs."""
    capture = subprocess.Popen(
        ["ip", "netns", "exec", host.ns.name, support.PYTHON, "-c", COUNT_VXLAN, "eth0",
         *(container.mac for container in containers)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert capture.stdout.readline().strip() == "listening"
        during()
        time.sleep(0.5)
    finally:
        seen, _ = capture.communicate("stop\n", timeout=10)
    return int(seen)


def talks(tmp_path, client, server, port: int = 7000) -> bool:
    """Whether ``client`` reaches ``server`` over TCP and is seen with its own address."""
    echo = harness.Server(server.sandbox, port, log_dir=tmp_path)
    try:
        return harness.ask(client.sandbox, server.address, port) == client.address
    finally:
        echo.stop()


def test_containers_on_different_hosts_talk_and_networks_are_isolated(
    make_cluster, tmp_path
):
    cluster = make_cluster(3)
    h1, h2, h3 = cluster.hosts
    listed = cluster.cnm("host", "ls", "--format", "json")
    assert listed.code == 0, listed.err
    assert sorted((h["host_id"], h["state"]) for h in listed.json()) == [
        (h.host_id, "HOST_STATE_HEALTHY") for h in (h1, h2, h3)
    ]
    app = cluster.create_overlay("appnet", "10.20.0.0/16")
    other = cluster.create_overlay("othernet", "10.21.0.0/16")
    assert app["vni"] != other["vni"] and app["vni"] >= 4096
    assert sorted((h["host_id"], h["ready"]) for h in app["hosts"]) == [
        (h.host_id, True) for h in (h1, h2, h3)
    ]
    a = cluster.container(h1, "a", "appnet")
    b = cluster.container(h2, "b", "appnet")
    c = cluster.container(h3, "c", "othernet")
    # Remote entries are in place before any packet: nothing needs flooding.
    device = vxlan_name(app["network_id"])
    assert f"{b.mac} dst {h2.underlay_ip} self permanent" in h1.fdb(device)
    assert f"{b.address} lladdr {b.mac} PERMANENT" in h1.neighbours(device)
    assert f"00:00:00:00:00:00 dst {h3.underlay_ip}" in h1.fdb(device)
    assert talks(tmp_path, a, b) and talks(tmp_path, b, a)
    # Another overlay network, even routed through the same hosts, is out of reach.
    assert not talks(tmp_path, a, c) and not talks(tmp_path, c, a)
    # Names resolve alike on every host (each host's DNS server of the network has the
    # others' endpoints' names), and only on their network.
    a_ns, c_ns = (support.Netns.existing(x.sandbox) for x in (a, c))
    assert harness.dns_addresses(harness.dns_ask(a_ns, "10.20.0.1", "b")) == [b.address]
    assert harness.dns_addresses(harness.dns_ask(a_ns, "10.20.0.1", "a")) == [a.address]
    assert harness.dns_ask(c_ns, "10.21.0.1", "b").header.rcode == RCODE.NXDOMAIN
    cluster.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network="appnet", container_id=b.sandbox))
    assert harness.dns_ask(a_ns, "10.20.0.1", "b").header.rcode == RCODE.NXDOMAIN


def test_a_dual_stack_overlay_answers_neighbour_solicitations_without_flooding(
    make_cluster, tmp_path
):
    """IPv6 across hosts as IPv4: each host's VXLAN device has the other hosts'
    containers' IPv6 addresses as permanent neighbours, so a neighbour solicitation is
    answered on the host (proxy) and never flooded: during a TCP exchange over IPv6
    between h1 and h2, h3's underlay sees no VXLAN packet. Names answer AAAA on every
    host."""
    cluster = make_cluster(3)
    h1, h2, h3 = cluster.hosts
    app = cluster.create_overlay("dualnet", "10.22.0.0/16", "--ipv6", "--subnet",
                                 "fd00:22::/64")
    assert (app["enable_ipv6"], app["ipv6_subnet"]) == (True, "fd00:22::/64")
    a = cluster.container(h1, "a", "dualnet")
    b = cluster.container(h2, "b", "dualnet")
    assert a.ipv6_address.startswith("fd00:22::") and b.ipv6_address.startswith("fd00:22::")
    device = vxlan_name(app["network_id"])
    assert f"{b.ipv6_address} lladdr {b.mac} PERMANENT" in h1.neighbours(device)
    assert f"{a.ipv6_address} lladdr {a.mac} PERMANENT" in h2.neighbours(device)
    def vxlan_packets_seen_by_h3(during) -> int:
        return vxlan_packets_seen(h3, (a, b), during)

    def talk() -> None:
        assert harness.ask(a.sandbox, b.ipv6_address, 7000) == a.ipv6_address

    echo = harness.Server(b.sandbox, 7000, log_dir=tmp_path)
    try:
        # A new interface announces its multicast groups (MLD reports, multicast: flooded
        # like any) for a second or two after its address is added: past them.
        time.sleep(3)
        assert vxlan_packets_seen_by_h3(talk) == 0
    finally:
        echo.stop()
    # The capture sees what is flooded: a broadcast from a reaches every host.
    assert vxlan_packets_seen_by_h3(lambda: support.Netns.existing(a.sandbox).run(
        support.PYTHON, "-c", BROADCAST)) > 0
    a_ns = support.Netns.existing(a.sandbox)
    answer = harness.dns_ask(a_ns, "10.22.0.1", "b", "AAAA")
    assert harness.dns_addresses(answer) == [b.ipv6_address]
    cluster.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network="dualnet", container_id=b.sandbox))
    assert b.ipv6_address not in h1.neighbours(device)


def test_an_ipv6_underlay_carries_a_dual_stack_overlay_without_flooding(make_cluster,
                                                                       tmp_path):
    """Hosts with IPv6 addresses only: each agent finds its underlay address on its IPv6
    default route's interface, VXLAN runs over IPv6 (its MTU 20 bytes lower than over
    IPv4), and both families of the overlay cross it with no flooded frame."""
    cluster = make_cluster(3, ipv6_underlay=True)
    h1, h2, h3 = cluster.hosts
    hosts = {h.host_id: h.underlay_ip
             for h in cluster.call("ListHosts", pb.ListHostsRequest()).hosts}
    assert hosts == {h.host_id: f"fd99::{h.number}" for h in (h1, h2, h3)}
    app = cluster.create_overlay("under6", "10.23.0.0/16", "--ipv6", "--subnet",
                                 "fd00:23::/64")
    a = cluster.container(h1, "a", "under6")
    b = cluster.container(h2, "b", "under6")
    device = vxlan_name(app["network_id"])
    (link,) = json.loads(h1.ns.run("ip", "-d", "-j", "link", "show", device).stdout)
    vxlan = link["linkinfo"]["info_data"]
    assert (link["mtu"], vxlan.get("local6", vxlan.get("local"))) == (1430, "fd99::1")
    assert f"{b.mac} dst fd99::2 self permanent" in h1.fdb(device)
    assert "00:00:00:00:00:00 dst fd99::3" in h1.fdb(device)
    assert f"{b.ipv6_address} lladdr {b.mac} PERMANENT" in h1.neighbours(device)

    def talk() -> None:
        assert harness.ask(a.sandbox, b.ipv6_address, 7000) == a.ipv6_address
        assert harness.ask(a.sandbox, b.address, 7000) == a.address

    echo = harness.Server(b.sandbox, 7000, log_dir=tmp_path)
    try:
        time.sleep(3)  # past the new interfaces' MLD reports (see the test above)
        assert vxlan_packets_seen(h3, (a, b), talk) == 0
        # ... which h2's underlay does see: the capture counts VXLAN over IPv6.
        assert vxlan_packets_seen(h2, (a, b), talk) > 0
    finally:
        echo.stop()
    # An IPv6-only overlay network on it: IPv6 everywhere.
    only6 = cluster.create_overlay("only6", "fd00:24::/64", "--ipv6", "--ipv4=false")
    assert (only6["subnet"], only6["ipv6_subnet"]) == ("", "fd00:24::/64")
    c = cluster.container(h1, "c", "only6")
    d = cluster.container(h3, "d", "only6")
    assert (c.address, d.address) == ("", "") and c.ipv6_address.startswith("fd00:24::")
    device = vxlan_name(only6["network_id"])
    assert f"{d.mac} dst fd99::3 self permanent" in h1.fdb(device)
    assert f"{d.ipv6_address} lladdr {d.mac} PERMANENT" in h1.neighbours(device)
    echo = harness.Server(d.sandbox, 7001, log_dir=tmp_path)
    try:
        assert harness.ask(c.sandbox, d.ipv6_address, 7001) == c.ipv6_address
    finally:
        echo.stop()


def test_a_host_joining_later_gets_the_network_and_its_containers_reach_the_others(
    make_cluster, tmp_path
):
    cluster = make_cluster(2)
    h1, _ = cluster.hosts
    cluster.create_overlay("appnet", "10.20.0.0/16")
    a = cluster.container(h1, "a", "appnet")
    h3 = cluster.add_host()
    network = cluster.inspect("appnet")
    assert {(h.host_id, h.ready) for h in network.hosts} >= {(h3.host_id, True)}
    c = cluster.container(h3, "c", "appnet")
    assert talks(tmp_path, c, a) and talks(tmp_path, a, c)


def test_overlay_network_created_with_no_host_reaches_hosts_as_they_join(
    make_cluster, tmp_path
):
    cluster = make_cluster(0)
    made = cluster.create_overlay("appnet", "10.20.0.0/16")
    assert made["hosts"] == []
    h1, h2 = cluster.add_host(), cluster.add_host()
    a, b = cluster.container(h1, "a", "appnet"), cluster.container(h2, "b", "appnet")
    assert talks(tmp_path, a, b)


def test_a_removed_host_leaves_every_peer_list(make_cluster):
    cluster = make_cluster(3)
    h1, h2, h3 = cluster.hosts
    network = cluster.create_overlay("appnet", "10.20.0.0/16")
    device = vxlan_name(network["network_id"])
    cluster.container(h1, "a", "appnet")
    c = cluster.container(h3, "c", "appnet")
    assert c.mac in h1.fdb(device) and h3.underlay_ip in h1.fdb(device)
    h3.stop()
    # Still heartbeating as far as the orchestrator knows: refused, unless forced.
    refused = cluster.cnm("host", "rm", h3.host_id)
    assert refused.code == 5 and "is alive" in refused.err, refused.err
    assert h3.host_id in cluster.cnm("host", "ls").out
    removed = cluster.cnm("host", "rm", "--force", h3.host_id)
    assert removed.code == 0, removed.err
    for host in (h1, h2):
        fdb = host.fdb(device)
        assert c.mac not in fdb and h3.underlay_ip not in fdb
        assert c.address not in host.neighbours(device)
    endpoints = cluster.call("GetNetwork", pb.GetNetworkRequest(network="appnet")).endpoints
    assert [e.host_id for e in endpoints] == [h1.host_id]


def test_agent_restart_does_not_disturb_traffic_and_brings_the_host_back_in_line(
    make_cluster, tmp_path
):
    cluster = make_cluster(2)
    h1, h2 = cluster.hosts
    cluster.create_overlay("appnet", "10.20.0.0/16")
    a, b = cluster.container(h1, "a", "appnet"), cluster.container(h2, "b", "appnet")
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", a.sandbox, "ping", "-c", "60", "-i", "0.1", "-W", "1",
         b.address], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    h2.stop()  # SIGTERM: the agent goes, the kernel state it made stays
    # b asks h2's DNS server for its own name, then for a's (another host's).
    watch = harness.dns_watch(b.sandbox, "10.20.0.1", ["b", "a"])
    assert harness.dns_ask(support.Netns.existing(b.sandbox), "10.20.0.1", "b") is None
    started = time.time()
    h2.start()
    serving = time.time()
    cluster.wait_registered(h2)
    answered = harness.dns_answered(watch)
    print(f"agent serving after {serving - started:.2f} s; b answered after "
          f"{answered['b'] - started:.2f} s, a after {answered['a'] - started:.2f} s")
    # The names are back as soon as the agent is: its own from its records, the other
    # host's from the peers the orchestrator pushes when it registers again.
    assert answered["b"] - serving < 1.0 and answered["a"] - serving < 1.0, answered
    out, _ = pinger.communicate(timeout=30)
    received = int(out.split(" received")[0].rsplit(" ", 1)[1])
    assert received >= 59, out
    assert talks(tmp_path, b, a)
    assert all(h.ready for h in cluster.inspect("appnet").hosts)


def test_a_host_without_an_underlay_address_is_shown_and_left_out_until_it_has_one(
    make_cluster,
):
    cluster = make_cluster(2)
    h1, h2 = cluster.hosts
    network = cluster.create_overlay("appnet", "10.20.0.0/16")
    device = vxlan_name(network["network_id"])
    assert h2.underlay_ip in h1.fdb(device)
    h2.stop()
    h2.ns.run("ip", "route", "del", "default")  # nothing to take a VTEP address from
    h2.start()

    def h2_state():
        return {h.host_id: h for h in cluster.inspect("appnet").hosts}[h2.host_id]

    wait_until(lambda: not h2_state().ready, what="h2's re-registration")
    assert "--underlay-ip" in h2_state().message
    wait_until(lambda: h2.underlay_ip not in h1.fdb(device), what="h2 to leave h1's peers")
    # Its agent kept the device it had rather than make one with no source address.
    state = h2.state()
    (kept,) = state.networks
    assert state.vxlan_devices[kept.network_id].local_address == h2.underlay_ip
    h2.stop()
    h2.ns.run("ip", "route", "add", "default", "via", "10.99.0.254")
    h2.start()
    wait_until(lambda: h2_state().ready, what="h2 to register with an address")
    wait_until(lambda: h2.underlay_ip in h1.fdb(device), what="h2 back in h1's peers")


def test_a_silent_host_is_unhealthy_and_connects_to_it_fail_fast(make_cluster):
    cluster = make_cluster(2)
    _, h2 = cluster.hosts
    cluster.create_overlay("appnet", "10.20.0.0/16")
    h2.stop(kill=True)
    wait_until(lambda: cluster.host_state(h2.host_id) == pb.HOST_STATE_UNHEALTHY,
               6 * HEARTBEAT, "the host to turn unhealthy")
    listed = cluster.cnm("host", "ls")
    assert h2.host_id in listed.out and "unhealthy" in listed.out
    # A list that fans out to the agents says which did not answer, and is not a success.
    h1 = cluster.hosts[0]
    cluster.container(h1, "seen", "appnet")
    ps = cluster.cnm("ps")
    assert ps.code == 6 and "seen" in ps.out and h1.host_id in ps.out
    assert ps.err == (f"cnm: error: host {h2.host_id!r} did not answer: its containers are "
                      f"not listed\n")
    started = time.monotonic()
    with pytest.raises(errors.Unavailable, match="heartbeat"):
        cluster.call("ConnectContainer", pb.ConnectContainerRequest(
            network="appnet", container_id="x", host_id=h2.host_id))
    assert time.monotonic() - started < 1


def test_unreachable_host_during_create_and_delete_is_brought_in_line_later(
    make_cluster
):
    cluster = make_cluster(2)
    h1, h2 = cluster.hosts
    h2.stop(kill=True)  # still "healthy" for a few seconds: the create tries it
    made = cluster.create_overlay("appnet", "10.20.0.0/16")
    states = {h["host_id"]: h for h in made["hosts"]}
    assert states[h1.host_id]["ready"] is True
    assert states[h2.host_id]["ready"] is False and states[h2.host_id]["message"]
    device = vxlan_name(made["network_id"])
    h2.start()
    cluster.wait_registered(h2)
    wait_until(lambda: all(h.ready for h in cluster.inspect("appnet").hosts), 10,
               "the host to be brought in line")
    assert device in harness.link_names(h2.ns.name)
    # Delete with a host down: done for the others, the missing one cleaned on return.
    h2.stop(kill=True)
    assert cluster.cnm("network", "rm", "appnet").code == 0
    assert device not in harness.link_names(h1.ns.name)
    assert device in harness.link_names(h2.ns.name)
    h2.start()
    wait_until(lambda: device not in harness.link_names(h2.ns.name), 90,
               "the reconciler to delete the network left on the returning host")


def test_vni_exhaustion_and_duplicate_host_registration(make_cluster):
    cluster = make_cluster(1, vni_range="5000-5001")
    (h1,) = cluster.hosts
    cluster.create_overlay("one", "10.20.0.0/16")
    cluster.create_overlay("two", "10.21.0.0/16")
    third = cluster.cnm("network", "create", "--driver", "overlay", "--subnet",
                        "10.22.0.0/16", "three")
    assert third.code == 7 and "VXLAN id" in third.err
    listed = cluster.call("ListNetworks", pb.ListNetworksRequest()).networks
    assert sorted(n.name for n in listed) == ["one", "two"]
    assert cluster.cnm("network", "rm", "one").code == 0
    reused = cluster.create_overlay("three", "10.22.0.0/16")
    assert reused["vni"] in (5000, 5001)
    # Even with h1's own certificate, a second agent cannot take over h1's registration.
    with pytest.raises(errors.AlreadyExists, match="already registered"):
        cluster.call("RegisterHost", pb.RegisterHostRequest(host=pb.Host(
            host_id=h1.host_id, address="unix:/tmp/cnmt-elsewhere.sock",
            underlay_ip="10.99.0.50")), identity=f"agent-{h1.host_id}")


def test_records_whose_kernel_objects_are_gone_are_repaired(make_cluster):
    """Behind cnm's back, one container's veth is deleted, and another's veth and
    namespace: the reconciler makes the first endpoint again, and releases the second's
    address."""
    cluster = make_cluster(1)
    (h1,) = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.41.0.0/24", "plain").code == 0
    a = cluster.container(h1, "a", "plain")
    b = cluster.container(h1, "b", "plain")
    endpoints = {e.container_id: e for e in
                 cluster.call("GetNetwork", pb.GetNetworkRequest(network="plain")).endpoints}
    h1.ns.run("ip", "link", "del", endpoints[a.sandbox].host_interface)
    h1.ns.run("ip", "link", "del", endpoints[b.sandbox].host_interface)
    subprocess.run(["ip", "netns", "delete", b.sandbox], check=True)

    def addresses(sandbox: str) -> str:
        return subprocess.run(["ip", "-n", sandbox, "-4", "addr", "show"], capture_output=True,
                              text=True, check=False).stdout

    wait_until(lambda: a.address in addresses(a.sandbox), 20, "a's endpoint made again")
    wait_until(lambda: [e.container_id for e in cluster.call(
        "GetNetwork", pb.GetNetworkRequest(network="plain")).endpoints] == [a.sandbox], 20,
               "b's endpoint released")
    # b's address is free again: another container may have it.
    sandbox = f"cnm-{h1.host_id}-c"
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox, host_id=h1.host_id))
    c = cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network="plain", container_id=sandbox, host_id=h1.host_id, sandbox=sandbox,
        address=b.address)).endpoint
    assert c.address == b.address
    log = (cluster.tmp / "orchestrator.log").read_text()
    assert "recreated_endpoints" in log and "released_lost_endpoints" in log


def test_an_address_forced_off_an_unreachable_host_is_held_until_it_comes_back(make_cluster):
    """disconnect -f while the host's agent is down: the veth may still hold the address,
    so it is quarantined (inspect says so) and handed out again only once the agent, back,
    has removed the endpoint: at its registration, not a clean-up interval later."""
    cluster = make_cluster(2)
    _, h2 = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.42.0.0/24", "held").code == 0
    c = cluster.container(h2, "c", "held")
    endpoint = cluster.call("GetNetwork", pb.GetNetworkRequest(network="held")).endpoints[0]
    h2.stop(kill=True)
    forced = cluster.cnm("network", "disconnect", "--force", "held", c.sandbox)
    assert forced.code == 0, forced.err
    shown = cluster.call("GetNetwork", pb.GetNetworkRequest(network="held"))
    assert list(shown.endpoints) == [] and \
        [e.address for e in shown.quarantined_endpoints] == [c.address]
    inspected = json.loads(cluster.cnm("network", "inspect", "held").out)[0]
    assert [e["address"] for e in inspected["quarantined_endpoints"]] == [c.address]
    # The address cannot be had meanwhile.
    sandbox = f"cnm-{cluster.hosts[0].host_id}-d"
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox,
                                                          host_id=cluster.hosts[0].host_id))
    with pytest.raises(errors.AlreadyExists):
        cluster.call("ConnectContainer", pb.ConnectContainerRequest(
            network="held", container_id=sandbox, host_id=cluster.hosts[0].host_id,
            sandbox=sandbox, address=c.address))
    assert endpoint.host_interface in h2.ns.run("ip", "-br", "link").stdout
    h2.start()
    wait_until(lambda: not cluster.call("GetNetwork", pb.GetNetworkRequest(
        network="held")).quarantined_endpoints, 10, "the quarantine to be lifted")
    assert endpoint.host_interface not in h2.ns.run("ip", "-br", "link").stdout
    got = cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network="held", container_id=sandbox, host_id=cluster.hosts[0].host_id,
        sandbox=sandbox, address=c.address)).endpoint
    assert got.address == c.address


def test_an_endpoint_whose_record_was_lost_is_adopted_not_cut_off(make_cluster):
    """Redis lost an endpoint's record (a crash before its write reached disk): the
    reconciler finds the endpoint on its host and records it again, its address
    reserved, instead of deleting a live container's interface."""
    cluster = make_cluster(1)
    (h1,) = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.43.0.0/24", "kept").code == 0
    a = cluster.container(h1, "a", "kept")
    [before] = cluster.call("GetNetwork", pb.GetNetworkRequest(network="kept")).endpoints

    async def lose_the_record() -> None:
        store = Store.connect(cluster.redis_url)
        try:
            await store.forget_endpoint(before, f"ep:{before.endpoint_id}")
        finally:
            await store.close()

    asyncio.run(lose_the_record())
    assert not cluster.call("GetNetwork", pb.GetNetworkRequest(network="kept")).endpoints
    wait_until(lambda: [e.endpoint_id for e in cluster.call(
        "GetNetwork", pb.GetNetworkRequest(network="kept")).endpoints] == [before.endpoint_id],
               20, "the endpoint to be recorded again")
    [after] = cluster.call("GetNetwork", pb.GetNetworkRequest(network="kept")).endpoints
    assert (after.address, after.container_id, after.host_interface) == (
        a.address, before.container_id, before.host_interface)
    addresses = subprocess.run(["ip", "-n", a.sandbox, "-4", "addr", "show"],
                               capture_output=True, text=True, check=True).stdout
    assert a.address in addresses  # never cut off
    # Its address is reserved again: nobody else may have it.
    sandbox = f"cnm-{h1.host_id}-b"
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox, host_id=h1.host_id))
    with pytest.raises(errors.AlreadyExists):
        cluster.call("ConnectContainer", pb.ConnectContainerRequest(
            network="kept", container_id=sandbox, host_id=h1.host_id, sandbox=sandbox,
            address=a.address))
    assert "adopted_endpoints" in (cluster.tmp / "orchestrator.log").read_text()


def test_a_dead_containers_address_and_port_are_given_back(make_cluster, netns):
    """A runtime's container dies (its namespace is deleted, nobody disconnects it): its
    host reports it, it is shown gone, and after the grace period its address and host
    port are free, and nothing of it is left in the kernel or the records."""
    cluster = make_cluster(1)
    (h1,) = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.43.0.0/24", "rt").code == 0
    dying, living = netns("cnmt-ctr"), netns("cnmt-ctr")
    port = pb.PortMapping(protocol=pb.PROTOCOL_TCP, host_port=8088, container_port=80)

    def connect(container: str, ns, **fields) -> pb.Endpoint:
        return cluster.call("ConnectContainer", pb.ConnectContainerRequest(
            network="rt", container_id=container, host_id=h1.host_id, sandbox=ns.path,
            **fields)).endpoint

    dead = connect("dead", dying, port_mappings=[port])
    alive = connect("alive", living)

    def states() -> dict[str, int]:
        return {e.container_id: e.state for e in cluster.call(
            "GetNetwork", pb.GetNetworkRequest(network="rt")).endpoints}

    assert states() == {"dead": pb.ENDPOINT_STATE_ACTIVE, "alive": pb.ENDPOINT_STATE_ACTIVE}
    dying.close()
    wait_until(lambda: states().get("dead") == pb.ENDPOINT_STATE_GONE, 5, "shown gone")
    assert dead.host_interface not in h1.ns.run("ip", "-br", "link").stdout
    wait_until(lambda: states() == {"alive": pb.ENDPOINT_STATE_ACTIVE}, 10, "released")
    assert [e.endpoint_id for e in h1.state().endpoints] == [alive.endpoint_id]
    assert "8088" not in h1.ns.run("nft", "list", "ruleset").stdout
    again = connect("next", netns("cnmt-ctr"), address=dead.address, port_mappings=[port])
    assert again.address == dead.address
    log = (cluster.tmp / "orchestrator.log").read_text()
    assert "released the endpoint of a gone container" in log


def test_a_rebooted_host_gives_back_its_dead_containers_when_it_registers(make_cluster, netns):
    """A reboot: the containers' namespaces and the agent's state (on tmpfs) are gone. When
    the agent registers again, its endpoints are released at once, not at the next pass
    over the hosts (an hour away here)."""
    cluster = make_cluster(1, orchestrator_args=(
        "--heartbeat-interval", "1", "--reconcile-interval", "1",
        "--host-gc-interval", "3600"))
    (h1,) = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.44.0.0/24", "boot").code == 0
    container = netns("cnmt-ctr")
    cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network="boot", container_id="old", host_id=h1.host_id, sandbox=container.path))
    h1.stop(kill=True)
    container.close()
    shutil.rmtree(cluster.tmp / f"state-{h1.host_id}")
    time.sleep(2.5)  # a reboot takes longer: an endpoint this young is not judged yet
    h1.start()
    wait_until(lambda: not cluster.call("GetNetwork", pb.GetNetworkRequest(
        network="boot")).endpoints, 15, "the dead container's endpoint to be released")
    assert "endpoints repaired after a registration" in \
        (cluster.tmp / "orchestrator.log").read_text()


def test_reserved_addresses_against_real_ipam_and_agents(make_cluster, netns):
    """A runtime's IPAM reserves (an agent identity, for its own host only), a connect
    takes the reservation, a disconnect gives it back, a release frees it."""
    cluster = make_cluster(hosts=2)
    one, two = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.46.0.0/24", "resnet").code == 0
    mine = f"agent-{one.host_id}"

    def reserve(host_id, address="", identity=mine):
        return cluster.call("ReserveAddress", pb.ReserveAddressRequest(
            network="resnet", host_id=host_id, address=address), identity=identity)

    held = reserve(one.host_id)
    with pytest.raises(errors.PermissionDenied):
        reserve(two.host_id)
    container = netns("cnmt-res")
    endpoint = cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network="resnet", container_id="res1", host_id=one.host_id, sandbox=container.path,
        address=held.address, address_reserved=True), identity=mine).endpoint
    assert endpoint.address == held.address and endpoint.address_reserved
    inside = container.run("ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{held.address}/24" in inside
    with pytest.raises(errors.AlreadyExists, match="in use"):
        reserve(one.host_id, held.address)  # an endpoint holds it now

    def owner_of(address):
        return cluster.allocations("resnet").get(address)

    assert owner_of(held.address) == endpoint.endpoint_id
    cluster.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network="resnet", container_id="res1"), identity=mine)
    assert owner_of(held.address) == f"held:{one.host_id}:{held.address}"
    cluster.call("ReleaseAddress", pb.ReleaseAddressRequest(
        network="resnet", host_id=one.host_id, address=held.address), identity=mine)
    assert owner_of(held.address) is None


def test_networks_without_subnet_avoid_each_other_and_the_hosts_routes(make_cluster):
    """Automatic subnets against the real IPAM: 16 concurrent creates get 16 different
    subnets, and none is a prefix a host has a route for (its agent reports them)."""
    cluster = make_cluster(hosts=2)
    host = cluster.hosts[0]

    def routes() -> list[str]:
        return next(h.routes for h in cluster.call("ListHosts", pb.ListHostsRequest()).hosts
                    if h.host_id == host.host_id)

    # Its underlay's subnet, at registration.
    assert f"{host.underlay_ip.rsplit('.', 1)[0]}.0/24" in routes()
    host.ns.run("ip", "route", "add", "blackhole", "172.17.0.0/16")
    with admin_channel(cluster.pki, host.address, "orchestrator") as channel:
        netdriver_pb2_grpc.NetDriverServiceStub(channel).Resync(netdriver_pb2.ResyncRequest(),
                                                               timeout=10)
    wait_until(lambda: "172.17.0.0/16" in routes(), 10, "the new route reported")

    def create(number: int) -> str:
        return cluster.call("CreateNetwork", pb.CreateNetworkRequest(
            network=pb.Network(name=f"auto{number}"))).network.subnet

    with ThreadPoolExecutor(max_workers=16) as pool:
        subnets = list(pool.map(create, range(16)))
    # The first 16 free ones (none skipped for a clash with a concurrent create).
    every_route = [ipaddress.ip_network(route) for h in cluster.call(
        "ListHosts", pb.ListHostsRequest()).hosts for route in h.routes]
    free = address_pools.free_subnets(address_pools.DEFAULT, every_route)
    assert sorted(subnets) == sorted(str(next(free)) for _ in range(16))
    assert "172.17.0.0/16" not in subnets
    for number in range(16):
        cluster.call("DeleteNetwork", pb.DeleteNetworkRequest(network=f"auto{number}"))
    assert cluster.call("ListNetworks", pb.ListNetworksRequest()).networks == []
