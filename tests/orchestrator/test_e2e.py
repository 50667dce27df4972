"""End to end: IPAM, two host agents (each in its own namespace) and the orchestrator as
real processes over a real Redis, driven through the ``cnm`` CLI.

Leaks are judged by what the services themselves report: IPAM's
ListAllocations and each agent's GetState (read from the kernel), plus the
links left in the host namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnm import errors
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.orchestrator.e2e import TRAFFIC, Cluster, Host, ask
from tests.support import connect_namespaces

pytestmark = pytest.mark.root

HOST_LINK = "cl0"  # the host side of the test's client veth
HOST_ADDRESS = "192.168.200.1"
UNDERLAY_LINK = "ul0"


@pytest.fixture
def cluster(redis_url, netns, tmp_path):
    hosts = {}
    for key in ("h1", "h2"):
        host_id = f"{key}{uuid.uuid4().hex[:4]}"
        state_dir = tmp_path / f"state-{host_id}"
        hosts[key] = Host(host_id=host_id, ns=netns("cnmt-host"), state_dir=state_dir,
                          socket_path=f"/tmp/cnmt-{uuid.uuid4().hex[:8]}.sock",
                          log_path=tmp_path / f"agent-{host_id}.log")
    # the underlay: h1 and h2 reach each other on 10.254.0.0/24, for VXLAN
    connect_namespaces(hosts["h1"].ns, UNDERLAY_LINK, "10.254.0.1/24",
                       hosts["h2"].ns, UNDERLAY_LINK, "10.254.0.2/24")
    hosts["h1"].underlay_ip, hosts["h2"].underlay_ip = "10.254.0.1", "10.254.0.2"
    built = Cluster(tmp=tmp_path, redis_url=redis_url, hosts=hosts)
    try:
        for host in hosts.values():
            host.start()
        built.start_ipam()
        built.start_orchestrator()
        yield built
    finally:
        built.stop()


@pytest.fixture
def client(cluster, netns):
    """A namespace playing an outside client, wired to host h1 on 192.168.200.0/24."""
    namespace = netns("cnmt-client")
    connect_namespaces(cluster.hosts["h1"].ns, HOST_LINK, f"{HOST_ADDRESS}/24",
                       namespace, "eth0", "192.168.200.2/24")
    return namespace


def assert_clean(cluster: Cluster, *, pools: int = 0) -> None:
    """Nothing of any endpoint is left: IPAM, agents' kernels, host links."""
    assert cluster.endpoint_owners() == []
    assert len(cluster.allocations()) == pools
    for host in cluster.hosts.values():
        state = host.state()
        assert list(state.endpoints) == []
        if not pools:
            assert list(state.networks) == []
        bridges = {network.bridge_name for network in state.networks}
        assert host.link_names() <= {"lo", HOST_LINK, UNDERLAY_LINK, *bridges}, \
            host.link_names()


def wait_clean(cluster: Cluster, pools: int = 0, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_clean(cluster, pools=pools)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sandbox_path(cluster: Cluster, name: str, host: str = "h1") -> str:
    return f"/var/run/netns/cnm-{cluster.hosts[host].host_id}-{name}"


def container_addresses(path: str) -> dict[str, str]:
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "-4", "addr", "show"],
                         check=True, capture_output=True, text=True).stdout
    return {link["ifname"]: info["local"] for link in json.loads(out)
            for info in link.get("addr_info", []) if link["ifname"] != "lo"}



def until_it_answers(cluster, *args: str, **options):
    """``cnm ARGS`` run until it succeeds, for up to 10 s (a server started by a run that
    returned may not listen yet)."""
    deadline = time.monotonic() + 10
    while True:
        done = cluster.cnm(*args, **options)
        if done.code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done.code == 0, done.err
    return done

def test_create_connect_list_remove_story_through_the_cli(cluster, client, netns):
    created = cluster.cnm("network", "create", "--subnet", "10.50.0.0/24", "--label", "team=a",
                          "net1")
    assert created.code == 0, created.err
    network_id = created.out.strip()
    again = cluster.cnm("network", "create", "--subnet", "10.50.0.0/24", "--label", "team=a",
                        "net1")
    assert (again.code, again.out.strip()) == (0, network_id)
    clash = cluster.cnm("network", "create", "--subnet", "10.51.0.0/24", "net1")
    assert clash.code == 4 and clash.err.startswith("cnm: error: ") and "already exists" in clash.err
    bad = cluster.cnm("network", "create", "--subnet", "10.52.0.0/24", "bad name")
    assert bad.code == 2 and "invalid network name" in bad.err
    overlap = cluster.cnm("network", "create", "--subnet", "10.50.0.128/25", "net2")
    assert overlap.code == 4, overlap.err
    listed = cluster.cnm("network", "ls")
    assert listed.code == 0 and "net1" in listed.out and "10.50.0.0/24" in listed.out
    assert [n["name"] for n in cluster.cnm("network", "ls", "--filter", "label=team=a",
                                           "--format", "json").json()] == ["net1"]
    assert cluster.cnm("network", "ls", "--filter", "label=team=b", "--format",
                       "json").json() == []

    web = cluster.cnm("run", "-d", "--name", "web", "--net", "net1", "-p", "8080:80", "--",
                      support.PYTHON, TRAFFIC, "serve", "tcp", "80")
    assert (web.code, web.out.strip()) == (0, "web"), web.err
    inspected = cluster.cnm("network", "inspect", "--format", "json", "net1").json()[0]
    assert inspected["network_id"] == network_id and inspected["gateway"] == "10.50.0.1"
    [endpoint] = inspected["endpoints"]
    web_ip = endpoint["address"]
    assert web_ip == "10.50.0.2"
    assert container_addresses(sandbox_path(cluster, "web")) == {"eth0": web_ip}

    # two containers talk: a foreground run asks the web container, then goes away
    probe = until_it_answers(cluster, "run", "--name", "probe", "--net", "net1", "--",
                             support.PYTHON, TRAFFIC, "ask", "tcp", web_ip, "80")
    assert probe.out.strip() == "10.50.0.3"
    # the published port answers from outside the host
    assert ask(client.path, HOST_ADDRESS, 8080) == "192.168.200.2"

    ps = cluster.cnm("ps", "--format", "json").json()
    assert [s["name"] for s in ps] == [f"cnm-{cluster.hosts['h1'].host_id}-web"]
    assert "8080->80/tcp" in cluster.cnm("ps").out
    hosts = cluster.cnm("host", "ls")
    assert hosts.code == 0 and "healthy" in hosts.out
    in_use = cluster.cnm("network", "rm", "net1")
    assert in_use.code == 5 and "endpoint" in in_use.err
    assert list((cluster.tmp / "run").glob("*web.log"))  # what cnm run -d logged
    assert cluster.cnm("rm", "web").code == 0
    assert not list((cluster.tmp / "run").glob("*web.log"))  # gone with the container
    gone = cluster.cnm("rm", "web")
    assert gone.code == 3 and "not found" in gone.err
    # A namespace cnm never made, whatever its name, is not cnm's to stop.
    bystander = netns("cnmt-by")
    sleeper = support.Process(bystander.exec_args("sleep", "600"))
    try:
        refused = cluster.cnm("rm", bystander.name)
        assert refused.code == 3 and refused.err.count("\n") == 1, refused.err
        time.sleep(0.2)
        assert sleeper.alive()
    finally:
        sleeper.stop()
    assert ask(client.path, HOST_ADDRESS, 8080, timeout=1) is None
    assert_clean(cluster, pools=1)
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert cluster.cnm("network", "ls", "--format", "json").json() == []
    assert_clean(cluster)


def test_several_networks_per_container_and_forced_delete(cluster):
    for name, subnet in (("front", "10.60.0.0/24"), ("back", "10.61.0.0/24")):
        assert cluster.cnm("network", "create", "--subnet", subnet, name).code == 0
    multi = cluster.cnm("run", "-d", "--name", "multi", "--net", "front", "--net", "back", "--",
                        "sleep", "300")
    assert multi.code == 0, multi.err
    other = cluster.cnm("run", "-d", "--name", "other", "--host", cluster.hosts["h2"].host_id,
                        "--net", "back", "--", "sleep", "300", host="h2")
    assert other.code == 0, other.err
    path = sandbox_path(cluster, "multi")
    assert sorted(container_addresses(path).values()) == ["10.60.0.2", "10.61.0.2"]
    routes = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "route", "show", "default"],
                            check=True, capture_output=True, text=True).stdout
    assert [r["gateway"] for r in json.loads(routes)] == ["10.60.0.1"]
    assert len(cluster.endpoint_owners()) == 3

    # a second connect of the same container elsewhere is refused, the same one is a no-op
    host1 = cluster.hosts["h1"].host_id
    again = cluster.cnm("network", "connect", "back", "multi")
    assert again.code == 0, again.err
    assert len(cluster.endpoint_owners()) == 3

    removed = cluster.cnm("network", "rm", "--disconnect", "front", "back")
    assert removed.code == 0, removed.err
    assert_clean(cluster)
    assert container_addresses(path) == {}
    assert cluster.cnm("network", "ls", "--format", "json").json() == []
    sandboxes = cluster.call("ListSandboxes", pb.ListSandboxesRequest(host_id=host1)).sandboxes
    assert [(s.name, len(s.endpoints)) for s in sandboxes] == [(f"cnm-{host1}-multi", 0)]
    assert cluster.cnm("rm", "multi").code == 0
    assert cluster.cnm("rm", "other", host="h2").code == 0


def test_bad_input_is_refused_and_changes_nothing(cluster):
    assert cluster.cnm("network", "create", "--subnet", "10.70.0.0/24", "net1").code == 0
    assert cluster.cnm("run", "-d", "--name", "a", "--net", "net1", "-p", "9090:80", "--",
                       "sleep", "300").code == 0
    assert cluster.cnm("run", "-d", "--name", "b", "--net", "net1", "--", "sleep",
                       "300").code == 0
    before = cluster.allocations()
    states_before = {key: host.state() for key, host in cluster.hosts.items()}
    h1 = cluster.hosts["h1"].host_id

    cases = [
        (("network", "connect", "nope", "a"), 3, "network 'nope' not found"),
        (("network", "connect", "--host", "h9", "net1", "x"), 3, "host 'h9' not found"),
        (("network", "connect", "--ip", "10.99.0.5", "net1", "x"), 2, "is outside subnet"),
        # No such container: NOT_FOUND before anything else is looked at or allocated.
        (("network", "connect", "--ip", "10.70.0.2", "net1", "x"), 3, "does not exist"),
        (("network", "connect", "--ip", "10.70.0.40", "net1", "a"), 4, "already connected"),
        (("network", "connect", "-p", "9090:80", "net1", "b"), 4, "already connected"),
        (("network", "connect", "-p", "80:80:80", "net1", "b"), 2, "invalid port mapping"),
        (("network", "disconnect", "net1", "nobody"), 3, "not connected"),
        (("network", "rm", "net1"), 5, "endpoint"),
        (("network", "inspect", "nope"), 3, "not found"),
        (("network", "create", "--subnet", "10.70.0.0/24", "-x"), 2, ""),
        (("network", "create", "--subnet", "10.71.0.0/24", "--gateway", "10.72.0.1", "n2"), 2,
         "is outside subnet"),
        (("rm", "ghost"), 3, "not found"),
        (("network", "create", "--subnet", "10.70.0.0/16", "n3"), 4,
         "overlaps subnet 10.70.0.0/24 of network 'net1'"),
        (("network", "create", "--subnet", "fd00:70::/64", "--ip-range", "fd00:70::/104", "n4"),
         2, "an IPv6 --subnet, --gateway or --ip-range needs --ipv6"),
        (("network", "create", "--subnet", "10.73.0.0/24", "-o",
          "com.docker.network.internal=maybe", "n5"), 2, "com.docker.network.internal"),
    ]
    for args, code, message in cases:
        result = cluster.cnm(*args)
        assert result.code == code, (args, result)
        assert message in result.err, (args, result.err)
        if code != 2 or message:
            assert result.err.startswith("cnm: error: ") and result.err.count("\n") == 1
    # an address or a port another container on the same host has
    taken = cluster.call
    with pytest.raises(errors.AlreadyExists, match="already in use"):
        taken("ConnectContainer", pb.ConnectContainerRequest(
            network="net1", container_id=f"cnm-{h1}-c", host_id=h1, sandbox=f"cnm-{h1}-b",
            address="10.70.0.2"))
    with pytest.raises(errors.AlreadyExists, match="9090"):
        taken("ConnectContainer", pb.ConnectContainerRequest(
            network="net1", container_id=f"cnm-{h1}-c", host_id=h1, sandbox=f"cnm-{h1}-b",
            port_mappings=[pb.PortMapping(host_port=9090, container_port=80)]))
    assert cluster.allocations() == before
    for key, host in cluster.hosts.items():
        assert list(host.state().endpoints) == list(states_before[key].endpoints)
    # a run that cannot connect leaves no sandbox; a run's exit code is the command's
    unknown = cluster.cnm("run", "--name", "x", "--net", "nope", "--", "true")
    assert unknown.code == 3 and "network 'nope' not found" in unknown.err
    failing = cluster.cnm("run", "--name", "y", "--net", "net1", "--", "sh", "-c", "exit 7")
    assert failing.code == 7, failing.err
    names = {s.name for s in cluster.call("ListSandboxes",
                                          pb.ListSandboxesRequest(host_id=h1)).sandboxes}
    assert names == {f"cnm-{h1}-a", f"cnm-{h1}-b"}
    assert cluster.allocations() == before
    assert cluster.cnm("rm", "a", "b").code == 0
    assert cluster.cnm("network", "prune", "-f").out.split() == ["Deleted", "Networks:", "net1"]
    assert_clean(cluster)


def test_agent_refusing_or_down_and_ipam_down_leak_nothing(cluster):
    assert cluster.cnm("network", "create", "--subnet", "10.80.0.0/24", "net1").code == 0
    h1 = cluster.hosts["h1"].host_id
    # the agent refuses: the sandbox does not exist on the host
    with pytest.raises(errors.CnmError) as refused:
        cluster.connect("net1", "ghost", sandbox="/var/run/netns/cnmt-does-not-exist")
    assert refused.value.code.name == "NOT_FOUND"
    assert_clean(cluster, pools=1)
    ghost = cluster.cnm("network", "connect", "net1", "ghost")  # no such container at all
    assert ghost.code == 3 and ghost.err.count("\n") == 1, ghost.err
    assert_clean(cluster, pools=1)

    # the agent is down
    cluster.hosts["h2"].stop(kill=True)
    down = cluster.cnm("network", "connect", "--host", cluster.hosts["h2"].host_id, "net1", "c1")
    assert down.code == 6 and "agent" in down.err
    assert cluster.endpoint_owners() == []
    assert "unhealthy" in cluster.cnm("host", "ls").out
    cluster.hosts["h2"].start()

    # IPAM is down: no endpoint reaches the agent
    cluster.cnm("run", "-d", "--name", "c2", "--net", "net1", "--", "sleep", "300")
    cluster.ipam.kill9()
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=f"cnm-{h1}-late", host_id=h1))
    failed = cluster.cnm("network", "connect", "net1", "late")
    assert failed.code == 6 and "ipam" in failed.err
    state = cluster.hosts["h1"].state()
    assert [e.container_id for e in state.endpoints] == [f"cnm-{h1}-c2"]
    cluster.restart_ipam()
    assert cluster.cnm("rm", "c2", "late").code == 0
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert_clean(cluster)


@pytest.mark.parametrize("step", ["connect-ipam", "connect-agent", "disconnect-agent",
                                  "delete-network-hosts"])
def test_orchestrator_killed_between_steps_then_restarted_leaks_nothing(cluster, step):
    cluster.orchestrator.stop()
    crashing = cluster.start_orchestrator(fault=f"crash-after:{step}")
    h1 = cluster.hosts["h1"].host_id
    sandbox = cluster.call("CreateSandbox", pb.CreateSandboxRequest(
        name=f"cnm-{h1}-c1", host_id=h1)).sandbox
    assert cluster.cnm("network", "create", "--subnet", "10.90.0.0/24", "net1").code == 0
    if step.startswith("connect"):
        result = cluster.cnm("network", "connect", "-p", "7070:80", "net1", "c1")
    else:
        connected = cluster.cnm("network", "connect", "net1", "c1")
        assert connected.code == 0, connected.err
    if step == "disconnect-agent":
        result = cluster.cnm("network", "disconnect", "net1", "c1")
    elif step == "delete-network-hosts":
        result = cluster.cnm("network", "rm", "--disconnect", "net1")
    assert result.code == 6, result
    support.wait_for(lambda: not crashing.alive(), 5, what="the orchestrator to crash")
    crashing.stop()

    cluster.start_orchestrator()
    if step == "delete-network-hosts":
        wait_clean(cluster)
    else:
        wait_clean(cluster, pools=1)
        connected = cluster.cnm("network", "connect", "-p", "7070:80", "--format", "json",
                                "net1", "c1")
        assert connected.code == 0, connected.err
        assert container_addresses(sandbox.path) == {"eth0": connected.json()["address"]}
        assert cluster.cnm("network", "rm", "--disconnect", "net1").code == 0
        wait_clean(cluster)
    cluster.call("DeleteSandbox", pb.DeleteSandboxRequest(name=sandbox.name, host_id=h1))


def test_overlay_containers_on_two_hosts_talk(cluster):
    created = cluster.cnm("network", "create", "-d", "overlay", "--subnet", "10.95.0.0/24", "ov")
    assert created.code == 0, created.err
    server = cluster.cnm("run", "-d", "--name", "srv", "--net", "ov", "--",
                         support.PYTHON, TRAFFIC, "serve", "tcp", "80")
    assert server.code == 0, server.err
    [inspected] = cluster.cnm("network", "inspect", "ov").json()
    assert inspected["vni"] >= 4096
    server_ip = inspected["endpoints"][0]["address"]
    probe = until_it_answers(cluster, "run", "--name", "probe", "--net", "ov", "--",
                             support.PYTHON, TRAFFIC, "ask", "tcp", server_ip, "80", host="h2")
    assert probe.out.strip().startswith("10.95.0.")
    assert probe.out.strip() != server_ip
    assert cluster.cnm("rm", "srv").code == 0
    assert cluster.cnm("network", "rm", "ov").code == 0
    assert_clean(cluster)


def test_two_orchestrator_replicas_connect_concurrently(cluster):
    second = Cluster(tmp=cluster.tmp, redis_url=cluster.redis_url, hosts=cluster.hosts,
                     ipam_address=cluster.ipam_address)
    second.start_orchestrator()
    try:
        assert cluster.cnm("network", "create", "--subnet", "10.96.0.0/24", "shared").code == 0
        h1 = cluster.hosts["h1"].host_id
        names = [f"cnm-{h1}-r{i}" for i in range(16)]
        for name in names:
            cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=name, host_id=h1))

        def connect(index_name):
            index, name = index_name
            replica = cluster if index % 2 else second
            # each container is connected twice, once through each replica
            return [replica.connect("shared", name).address,
                    (second if index % 2 else cluster).connect("shared", name).address]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(connect, enumerate(names)))
        assert all(a == b for a, b in results)
        addresses = [a for a, _ in results]
        assert len(set(addresses)) == 16
        assert len(cluster.endpoint_owners()) == 16
        state = cluster.hosts["h1"].state()
        assert sorted(e.address for e in state.endpoints) == sorted(addresses)
        second.call("DeleteNetwork", pb.DeleteNetworkRequest(network="shared", force=True))
        for name in names:
            cluster.call("DeleteSandbox", pb.DeleteSandboxRequest(name=name, host_id=h1))
        assert_clean(cluster)
    finally:
        second.orchestrator.stop()


def test_a_container_whose_netns_entry_was_deleted_is_still_removed(cluster):
    """`ip netns delete` behind cnm's back: the agent keeps its own handle on the sandbox,
    so `cnm ps` still lists it and `cnm rm` still stops its process and frees its address."""
    assert cluster.cnm("network", "create", "--subnet", "10.81.0.0/24", "net1").code == 0
    started = cluster.cnm("run", "-d", "--name", "lost", "--net", "net1", "--", "sleep", "600")
    assert started.code == 0, started.err
    sandbox = f"cnm-{cluster.hosts['h1'].host_id}-lost"
    pids = subprocess.run(["ip", "netns", "pids", sandbox], capture_output=True, text=True,
                          check=True).stdout.split()
    assert pids
    subprocess.run(["ip", "netns", "delete", sandbox], check=True)
    try:
        assert not Path(f"/var/run/netns/{sandbox}").exists()
        assert "lost" in cluster.cnm("ps").out
        removed = cluster.cnm("rm", "lost")
        assert removed.code == 0, removed.err
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()
        assert "lost" not in cluster.cnm("ps").out
    finally:  # whatever happened, the test's own process does not outlive it
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert_clean(cluster)


def test_a_port_published_without_host_port_gets_a_free_one(cluster, client, monkeypatch):
    """-p 80: the orchestrator chooses a host port of its ephemeral range; one a host
    process holds (the agent refuses it) is chosen again; a full range is
    RESOURCE_EXHAUSTED."""
    cluster.orchestrator.stop()
    monkeypatch.setenv("CNM_EPHEMERAL_PORTS", "47000-47001")
    cluster.start_orchestrator()
    assert cluster.cnm("network", "create", "--subnet", "10.80.0.0/24", "net1").code == 0
    holder = support.Process(cluster.hosts["h1"].ns.exec_args(
        support.PYTHON, "-c", "import socket, time; s = socket.socket(); "
        "s.bind(('0.0.0.0', 47000)); s.listen(); time.sleep(600)"))
    try:
        support.wait_for(lambda: cluster.hosts["h1"].ns.run(
            "ss", "-Htln", "sport = :47000").stdout.strip(), 10, 0.05, "the holder")
        web = cluster.cnm("run", "-d", "--name", "web", "--net", "net1", "-p", "80", "--",
                          support.PYTHON, TRAFFIC, "serve", "tcp", "80")
        assert web.code == 0, web.err
        assert "47001->80/tcp" in cluster.cnm("ps").out
        assert ask(client.path, HOST_ADDRESS, 47001) == "192.168.200.2"
        full = cluster.cnm("run", "-d", "--name", "web2", "--net", "net1", "-p", "80", "--",
                           "sleep", "60")
        assert full.code == 7 and "ephemeral range 47000-47001" in full.err, full.err
        assert cluster.cnm("rm", "web").code == 0
    finally:
        holder.stop()
        cluster.cnm("rm", "web", "web2")
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert_clean(cluster)


def test_run_takes_dockers_ip_mac_address_and_hostname(cluster):
    assert cluster.cnm("network", "create", "--subnet", "10.81.0.0/24", "net1").code == 0
    ran = cluster.cnm("run", "--name", "box", "--net", "net1", "--ip", "10.81.0.9",
                      "--mac-address", "02:42:0a:51:00:09", "--hostname", "box1.example", "--",
                      "sh", "-c", "hostname; ip -o link show dev eth0; "
                      "ip -4 -o addr show dev eth0")
    assert ran.code == 0, ran.err
    hostname, link, address = ran.out.splitlines()
    assert hostname == "box1.example"
    assert "link/ether 02:42:0a:51:00:09 " in link
    assert "10.81.0.9/24" in address
    assert socket.gethostname() != "box1.example"  # the host's own is untouched
    for args, message in ((["--hostname=bad_name"], "invalid hostname 'bad_name'"),
                          (["--mac-address", "zz"], "--mac-address: "),
                          (["--ip", "10.99.0.1"], "outside")):
        refused = cluster.cnm("run", "--name", "box2", "--net", "net1", *args, "--", "true")
        assert refused.code == 2 and message in refused.err, refused.err
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert_clean(cluster)


def test_containers_find_each_other_by_name_and_alias(cluster):
    """`cnm run` gives its command a resolv.conf naming the network's DNS server (its
    gateway); names and aliases resolve as soon as the connect returns, only on their
    network, and not after the container is removed."""
    assert cluster.cnm("network", "create", "--subnet", "10.84.0.0/24", "net1").code == 0
    assert cluster.cnm("network", "create", "--subnet", "10.85.0.0/24", "net2").code == 0
    assert cluster.cnm("network", "create", "--subnet", "10.86.0.0/24", "-o", "cnm.dns=false",
                       "quiet").code == 0
    ran = cluster.cnm("run", "-d", "--name", "web", "--alias", "www", "--net", "net1",
                      "--ip", "10.84.0.9", "--", "sleep", "120")
    assert ran.code == 0, ran.err

    def run(network: str, *command: str, extra: tuple[str, ...] = ()):
        return cluster.cnm("run", "--name", "client", "--net", network, *extra, "--", *command)

    looked = run("net1", "sh", "-c", "cat /etc/resolv.conf; getent hosts web; "
                 "getent hosts www.cnm.internal; getent hosts WWW")
    assert looked.code == 0, looked.err
    lines = looked.out.splitlines()
    assert lines[:2] == ["nameserver 10.84.0.1", "search cnm.internal"]
    assert [line.split()[0] for line in lines[2:]] == ["10.84.0.9"] * 3
    # Another network's containers do not see it; a network without DNS keeps the
    # host's resolv.conf unless told.
    assert run("net2", "getent", "hosts", "web").code != 0
    quiet = run("quiet", "cat", "/etc/resolv.conf")
    assert quiet.code == 0 and "10.86.0.1" not in quiet.out
    told = run("quiet", "cat", "/etc/resolv.conf",
               extra=("--dns", "10.86.0.53", "--dns-search", "example", "--dns-option",
                      "ndots:2"))
    assert told.out.splitlines() == ["nameserver 10.86.0.53", "search example",
                                     "options ndots:2"]
    assert Path("/etc/resolv.conf").read_text() != told.out  # the host's is untouched
    # A name is one container's on a network: taken, it is refused, naming the holder.
    taken = cluster.cnm("run", "--name", "other", "--alias", "WWW", "--net", "net1", "--",
                        "true")
    assert taken.code == 4 and "name 'www' is already used on network 'net1' by container" \
        in taken.err and "-web'" in taken.err, taken.err
    assert run("quiet", "true", extra=("--alias", "www")).code == 0  # another network's
    # A second network for web, with an alias of its own there.
    connected = cluster.cnm("network", "connect", "--alias", "api", "net2", "web")
    assert connected.code == 0, connected.err
    address = connected.out.strip().split("/")[0]
    other = run("net2", "sh", "-c", "getent hosts api; getent hosts web")
    assert [line.split()[0] for line in other.out.splitlines()] == [address] * 2
    # inspect shows each endpoint's names: the container's, then its aliases.
    [inspected] = json.loads(cluster.cnm("network", "inspect", "net2").out)
    assert [e["dns_names"] for e in inspected["endpoints"]] == [["web", "api"]]
    refused = cluster.cnm("network", "connect", "--alias", "bad name", "quiet", "web")
    assert refused.code == 2 and "invalid dns_names 'bad name'" in refused.err, refused.err
    assert cluster.cnm("rm", "web").code == 0
    assert run("net1", "getent", "hosts", "web").code != 0
    for network in ("net1", "net2", "quiet"):
        assert cluster.cnm("network", "rm", network).code == 0
    assert_clean(cluster)


def test_a_dual_stack_network_through_the_cli(cluster):
    """--ipv6 with a subnet of each family: containers get an address of each (a static
    one with --ip6), talk over IPv6, resolve each other's AAAA, show both in inspect
    and ps; IPAM holds both pools and gives both addresses back; bad input is refused
    with nothing made."""
    created = cluster.cnm("network", "create", "--ipv6", "--subnet", "10.83.0.0/24",
                          "--subnet", "fd00:83::/64", "--gateway", "fd00:83::fe", "dual")
    assert created.code == 0, created.err
    network_id = created.out.strip()
    assert cluster.cnm("network", "create", "--ipv6", "--subnet", "10.83.0.0/24", "--subnet",
                       "fd00:83::/64", "--gateway", "fd00:83::fe", "dual").code == 0  # a repeat
    [listed] = cluster.cnm("network", "ls", "--format", "json").json()
    assert (listed["enable_ipv6"], listed["ipv6_subnet"], listed["ipv6_gateway"]) == (
        True, "fd00:83::/64", "fd00:83::fe")
    assert cluster.cnm("network", "ls", "--format", "{{.Name}} {{.IPv6}}").out.strip() == \
        "dual true"
    assert "10.83.0.0/24,fd00:83::/64   10.83.0.1,fd00:83::fe" in cluster.cnm(
        "network", "ls").out
    web = cluster.cnm("run", "-d", "--name", "web", "--net", "dual", "--ip6", "fd00:83::9",
                      "-p", "8090:80", "--", support.PYTHON, TRAFFIC, "serve", "tcp", "80")
    assert web.code == 0, web.err
    [inspected] = cluster.cnm("network", "inspect", "dual").json()
    [endpoint] = inspected["endpoints"]
    assert (endpoint["address"], endpoint["ipv6_address"], endpoint["ipv6_prefix_length"]) \
        == ("10.83.0.2", "fd00:83::9", 64)
    assert "dual:10.83.0.2,fd00:83::9" in cluster.cnm("ps").out
    # the server starts after the run returns
    probe = until_it_answers(cluster, "run", "--name", "probe", "--net", "dual", "--", "sh", "-c",
                             f"{support.PYTHON} {TRAFFIC} ask tcp fd00:83::9 80 && "
                             "getent ahostsv6 web | head -1; ip -6 route show default")
    seen, resolved, route = probe.out.splitlines()
    assert seen.startswith("fd00:83::") and seen != "fd00:83::9"  # the prober's own address
    assert resolved.split()[0] == "fd00:83::9"
    assert route.startswith("default via fd00:83::fe dev eth0")
    # Its port, published on every address of both families: from the host on
    # 127.0.0.1 and on [::1] (relayed by the agent: IPv6 has no route_localnet).
    host_ns = cluster.hosts["h1"].ns.path
    assert ask(host_ns, "127.0.0.1", 8090) is not None
    assert ask(host_ns, "::1", 8090) == "fd00:83::fe"  # the relay's: the host's gateway
    pools = cluster.allocations()
    assert [a for a, owner in pools[f"{network_id}.v6"] if not owner.startswith("cnm:")] == \
        ["fd00:83::9"]
    # Bad input: nothing allocated, one line, the right code.
    for args, code, message in (
            (["network", "connect", "--ip6", "fd00:99::1", "dual", "web"], 2, "outside"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "none6"], 5,
             "no IPv6 default address pool"),
            (["network", "create", "--subnet", "10.84.0.0/24", "--subnet", "fd00:84::/64",
              "no-flag"], 2, "needs --ipv6"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet",
              "10.85.0.0/24", "two4"], 2, "two IPv4"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet",
              "fd00:83::/96", "clash"], 4, "overlaps subnet fd00:83::/64 of network 'dual'"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet",
              "fd00:84::/127", "tiny"], 2, "too small"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet",
              "fd00:84::/64", "--aux-address", "r=fd00:84::5", "aux6"], 2, "outside subnet"),
            (["network", "create", "--ipv6", "--subnet", "10.84.0.0/24", "--subnet",
              "fd00:84::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=nat6",
              "badmode"], 2, "gateway_mode_ipv6"),
    ):
        refused = cluster.cnm(*args)
        assert refused.code == code and message in refused.err, (args, refused.err)
        assert len(refused.err.strip().splitlines()) == 1, refused.err
    assert cluster.cnm("run", "--name", "x", "--net", "dual", "--ip6", "fd00:83::9", "--",
                       "true").code == 4  # in use
    assert sorted(cluster.allocations()) == sorted([network_id, f"{network_id}.v6"])
    assert cluster.cnm("rm", "web").code == 0
    assert cluster.cnm("network", "rm", "dual").code == 0
    assert_clean(cluster)


def test_an_ipv6_only_network_through_the_cli(cluster):
    """--ipv4=false --ipv6: containers have an IPv6 address alone, talk and resolve
    over it, publish on IPv6 only; IPAM has the IPv6 pool alone; IPv4 asked of the
    network is refused with nothing made."""
    created = cluster.cnm("network", "create", "--ipv6", "--ipv4=false", "--subnet",
                          "fd00:86::/64", "only6")
    assert created.code == 0, created.err
    network_id = created.out.strip()
    [listed] = cluster.cnm("network", "ls", "--format", "json").json()
    assert (listed["subnet"], listed["enable_ipv4"], listed["ipv6_subnet"]) == (
        "", False, "fd00:86::/64")
    assert "fd00:86::/64   fd00:86::1" in cluster.cnm("network", "ls").out
    web = cluster.cnm("run", "-d", "--name", "web", "--net", "only6", "--ip6", "fd00:86::9",
                      "-p", "8091:80", "--", support.PYTHON, TRAFFIC, "serve", "tcp", "80")
    assert web.code == 0, web.err
    [inspected] = cluster.cnm("network", "inspect", "only6").json()
    [endpoint] = inspected["endpoints"]
    assert (endpoint["address"], endpoint["ipv6_address"]) == ("", "fd00:86::9")
    assert "only6:fd00:86::9" in cluster.cnm("ps").out
    # the server starts after the run returns
    probe = until_it_answers(cluster, "run", "--name", "probe", "--net", "only6", "--", "sh", "-c",
                             f"{support.PYTHON} {TRAFFIC} ask tcp fd00:86::9 80 && "
                             "getent ahostsv6 web | head -1; ip -4 addr show eth0 | wc -l")
    seen, resolved, ipv4_lines = probe.out.splitlines()
    assert seen.startswith("fd00:86::") and seen != "fd00:86::9"
    assert resolved.split()[0] == "fd00:86::9"
    assert ipv4_lines.strip() == "0"  # no IPv4 address in the container
    host_ns = cluster.hosts["h1"].ns.path
    assert ask(host_ns, "::1", 8091) == "fd00:86::1"  # relayed, from the gateway
    assert ask(host_ns, "127.0.0.1", 8091) is None  # not published on IPv4
    assert sorted(cluster.allocations()) == [f"{network_id}.v6"]
    for args, code, message in (
            (["network", "connect", "--ip", "10.0.0.5", "only6", "web"], 2, "IPv6 only"),
            (["run", "--name", "x", "--net", "only6", "-p", "127.0.0.1:8092:80", "--",
              "true"], 2, "IPv4 host address"),
            (["network", "create", "--ipv4=false", "--subnet", "fd00:87::/64", "no6"], 2,
             "needs --ipv6"),
            (["network", "create", "--ipv6", "--ipv4=false", "--subnet", "10.87.0.0/24",
              "four"], 2, "IPv6-only"),
            (["network", "create", "--ipv6", "--ipv4=maybe", "odd"], 2, "true or false"),
    ):
        refused = cluster.cnm(*args)
        assert refused.code == code and message in refused.err, (args, refused.err)
        assert len(refused.err.strip().splitlines()) == 1, refused.err
    assert cluster.cnm("rm", "web").code == 0
    assert cluster.cnm("network", "rm", "only6").code == 0
    assert_clean(cluster)


def test_one_trace_id_follows_a_connect_through_every_service(cluster, monkeypatch):
    """The CLI's TRACEPARENT is the trace id on the request lines of the orchestrator,
    IPAM and the agent for that connect; a malformed one is replaced, not refused."""
    assert cluster.cnm("network", "create", "--subnet", "10.82.0.0/24", "net1").code == 0
    trace_id = uuid.uuid4().hex
    monkeypatch.setenv("TRACEPARENT", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")
    ran = cluster.cnm("run", "-d", "--name", "c1", "--net", "net1", "--", "sleep", "60")
    assert ran.code == 0, ran.err

    def lines(process: support.Process) -> list[dict]:
        return [json.loads(line) for line in process.log_path.read_text().splitlines()
                if line.startswith("{")]

    def traced(process: support.Process) -> set[str]:
        return {line.get("method", "").rsplit("/", 1)[-1] for line in lines(process)
                if line.get("trace_id") == trace_id and line.get("event") == "request"}

    # A request's line is written just after its reply: waited for, not raced.
    agent = cluster.hosts["h1"].process
    support.wait_for(lambda: "CreateEndpoint" in traced(agent), 5, 0.1, "the agent's line")
    support.wait_for(lambda: "AllocateAddress" in traced(cluster.ipam), 5, 0.1, "IPAM's line")
    support.wait_for(lambda: {"CreateSandbox", "ConnectContainer"} <= traced(cluster.orchestrator),
                     5, 0.1, "the orchestrator's lines")

    monkeypatch.setenv("TRACEPARENT", "not-a-traceparent")
    listed = cluster.cnm("network", "ls", "-q")
    assert listed.code == 0, listed.err

    def listed_last() -> dict | None:
        requests = [line for line in lines(cluster.orchestrator) if line.get("event") == "request"]
        return requests[-1] if requests[-1]["method"].endswith("/ListNetworks") else None

    last = support.wait_for(listed_last, 5, 0.1, "ListNetworks' line")
    assert re.fullmatch(r"[0-9a-f]{32}", last["trace_id"]) and last["trace_id"] != trace_id
    assert cluster.cnm("rm", "c1").code == 0
    assert cluster.cnm("network", "rm", "net1").code == 0
    assert_clean(cluster)

