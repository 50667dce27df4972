"""cnm-cni driven as libcni drives a plugin (configuration on stdin, CNI_* in the
environment, the executable exec'd once per verb), against a real orchestrator, IPAM
and agent (tests/multihost/cluster.py: one host, mutual TLS), in namespaces the test
makes: every verb and version, idempotency, drift, GC, STATUS, and bad input."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.multihost.cluster import MultiHost

pytestmark = pytest.mark.root
PLUGIN = str(Path(support.PYTHON).with_name("cnm-cni"))
CONTAINER = "f" * 64  # what runtimes give: 64 hex digits


@dataclass
class Outcome:
    code: int
    out: dict | None
    raw: str


@pytest.fixture
def cluster(redis_url, netns, tmp_path):
    made = MultiHost(tmp=tmp_path, redis_url=redis_url,
                     underlay=support.Underlay(netns)).start()
    made.add_host()
    assert made.cnm("network", "create", "--subnet", "10.45.0.0/24", "cninet").code == 0
    yield made
    made.stop()


def config(cluster, version: str = "1.0.0", **fields) -> dict:
    return {"cniVersion": version, "name": "podnet", "type": "cnm", "network": "cninet",
            "socket": cluster.hosts[0].cni_socket, **fields}


def plugin(command: str, conf: dict | str | None, *, container: str = CONTAINER,
           netns: str = "", ifname: str = "eth0", env: dict | None = None) -> Outcome:
    stdin = conf if isinstance(conf, str) else json.dumps(conf or {})
    variables = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
                 "CNI_CONTAINERID": container, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
                 "CNI_PATH": "/usr/lib/cni", **(env or {})}
    done = subprocess.run([PLUGIN], input=stdin, env={k: v for k, v in variables.items()
                                                      if v is not None},
                          capture_output=True, text=True, timeout=60, check=False)
    out = json.loads(done.stdout) if done.stdout.strip() else None
    return Outcome(done.returncode, out, done.stdout + done.stderr)


def endpoints(cluster) -> list[pb.Endpoint]:
    return list(cluster.call("ListEndpoints", pb.ListEndpointsRequest(network="cninet"))
                .endpoints)


def test_version_add_check_del_and_repeats(cluster, netns):
    version = plugin("VERSION", {"cniVersion": "1.1.0"})
    assert version.code == 0
    assert version.out["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]
    container = netns("cnmt-pod")
    port = {"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}
    conf = config(cluster, runtimeConfig={"portMappings": [port]})
    added = plugin("ADD", conf, netns=container.path, ifname="net1")
    assert added.code == 0, added.raw
    result = added.out
    assert result["cniVersion"] == "1.0.0"
    host_side, inside = result["interfaces"]
    assert inside == {"name": "net1", "mac": inside["mac"], "sandbox": container.path}
    (ip,) = result["ips"]
    assert ip["gateway"] == "10.45.0.1" and ip["interface"] == 1
    assert ip["address"].endswith("/24") and "version" not in ip
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.45.0.1"}]
    # The network's DNS server is the pod's resolver (the runtime writes its resolv.conf).
    assert result["dns"] == {"nameservers": ["10.45.0.1"], "search": ["cnm.internal"]}
    address = ip["address"].split("/")[0]
    # In the kernel: the interface, its address and MAC, the default route.
    shown = json.loads(container.run("ip", "-j", "addr", "show", "net1").stdout)[0]
    assert shown["address"] == inside["mac"]
    assert [a["local"] for a in shown["addr_info"] if a["family"] == "inet"] == [address]
    assert host_side["name"] in cluster.hosts[0].ns.run("ip", "-br", "link").stdout
    (endpoint,) = endpoints(cluster)
    assert (endpoint.container_id, endpoint.container_interface) == (CONTAINER, "net1")
    assert [m.host_port for m in endpoint.port_mappings] == [18081]
    # ADD again: the same attachment (idempotent, as runtimes retry).
    again = plugin("ADD", conf, netns=container.path, ifname="net1")
    assert again.code == 0 and again.out == result
    # CHECK, with the result as prevResult; then someone removes the address.
    checked = dict(conf, prevResult=result)
    assert plugin("CHECK", checked, netns=container.path, ifname="net1").code == 0
    container.run("ip", "addr", "flush", "dev", "net1")
    drift = plugin("CHECK", checked, netns=container.path, ifname="net1")
    assert drift.code != 0 and drift.out["code"] == 105 and "lacks its address" in \
        drift.out["msg"]
    # DEL releases address and port; DEL again, and DEL of what was never added, succeed.
    assert plugin("DEL", conf, netns=container.path, ifname="net1").code == 0
    assert endpoints(cluster) == []
    assert plugin("DEL", conf, netns=container.path, ifname="net1").code == 0
    assert plugin("DEL", conf, container="never-added", netns="").code == 0
    other = netns("cnmt-pod")
    reuse = plugin("ADD", config(cluster, runtimeConfig={"portMappings": [port],
                                                         "ips": [f"{address}/24"]}),
                   container="b" * 64, netns=other.path)
    assert reuse.code == 0, reuse.raw
    # DEL after the runtime deleted the namespace.
    other.close()
    assert plugin("DEL", config(cluster), container="b" * 64, netns=other.path).code == 0
    assert endpoints(cluster) == []


def test_a_pod_is_found_by_its_name_from_cni_args_and_its_aliases(cluster, netns):
    """The pod's name from CNI_ARGS (kubelet, containerd), and the aliases Podman passes
    for this network (runtimeConfig.aliases, keyed by the configuration's name)."""
    from tests.netdriver import harness

    pod, other = netns("cnmt-pod"), netns("cnmt-pod")
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x"
    aliases = {"podnet": ["www", "WEB-0"], "othernet": ["not-here"]}
    added = plugin("ADD", config(cluster, runtimeConfig={"aliases": aliases}), netns=pod.path,
                   env={"CNI_ARGS": args})
    assert added.code == 0, added.raw
    assert plugin("ADD", config(cluster), container="c" * 64, netns=other.path).code == 0
    address = added.out["ips"][0]["address"].split("/")[0]
    for name in ("web-0", "www"):
        answer = harness.dns_ask(other, "10.45.0.1", name)
        assert harness.dns_addresses(answer) == [address]
    assert harness.dns_ask(other, "10.45.0.1", "not-here").rr == []
    (endpoint,) = [e for e in endpoints(cluster) if e.container_id == CONTAINER]
    assert list(endpoint.dns_names) == ["web-0", "www"]
    # Another pod may not take a name in use: the runtime hears whose it is.
    third = netns("cnmt-pod")
    taken = plugin("ADD", config(cluster, runtimeConfig={"aliases": {"podnet": ["www"]}}),
                   container="d" * 64, netns=third.path)
    assert taken.code != 0 and "name 'www' is already used" in taken.out["msg"], taken.raw
    for container, path in ((CONTAINER, pod.path), ("c" * 64, other.path)):
        assert plugin("DEL", config(cluster), container=container, netns=path).code == 0


def test_a_dual_stack_network_gives_both_families(cluster, netns):
    created = cluster.cnm("network", "create", "--ipv6", "--subnet", "10.44.0.0/24",
                          "--subnet", "fd00:44::/64", "cnidual")
    assert created.code == 0, created.err
    pod = netns("cnmt-pod")
    conf = config(cluster, network="cnidual", runtimeConfig={"ips": ["fd00:44::7/64"]})
    added = plugin("ADD", conf, netns=pod.path)
    assert added.code == 0, added.raw
    four, six = added.out["ips"]
    assert four["gateway"] == "10.44.0.1" and four["address"].startswith("10.44.0.")
    assert (six["address"], six["gateway"], six["interface"]) == ("fd00:44::7/64",
                                                                  "fd00:44::1", 1)
    assert added.out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.44.0.1"},
                                   {"dst": "::/0", "gw": "fd00:44::1"}]
    shown = pod.run("ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert "fd00:44::7/64" in shown
    old = plugin("ADD", dict(conf, cniVersion="0.4.0"), container="e" * 64,
                 netns=netns("cnmt-pod").path)
    assert old.code != 0 and "in use" in old.out["msg"], old.raw  # the same static address
    two_v6 = plugin("ADD", config(cluster, network="cnidual", runtimeConfig={
        "ips": ["fd00:44::8", "fd00:44::9"]}), container="f" * 64, netns=netns("cnmt-pod").path)
    assert two_v6.code != 0 and two_v6.out["code"] == 7, two_v6.raw
    assert plugin("DEL", conf, netns=pod.path).code == 0
    assert cluster.cnm("network", "rm", "cnidual").code == 0
    # IPv6 only: the one address and route of that family; CHECK reads it.
    created = cluster.cnm("network", "create", "--ipv6", "--ipv4=false", "--subnet",
                          "fd00:45::/64", "cnisix")
    assert created.code == 0, created.err
    conf = config(cluster, network="cnisix")
    added = plugin("ADD", conf, netns=pod.path)
    assert added.code == 0, added.raw
    (six,) = added.out["ips"]
    assert six["address"].startswith("fd00:45::") and six["gateway"] == "fd00:45::1"
    assert added.out["routes"] == [{"dst": "::/0", "gw": "fd00:45::1"}]
    assert added.out["dns"]["nameservers"] == ["fd00:45::1"]
    assert pod.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout == ""
    assert plugin("CHECK", dict(conf, prevResult=added.out), netns=pod.path).code == 0
    assert plugin("DEL", conf, netns=pod.path).code == 0
    assert cluster.cnm("network", "rm", "cnisix").code == 0


def test_older_and_newer_versions_and_a_chain(cluster, netns):
    container = netns("cnmt-pod")
    previous = {"cniVersion": "0.4.0", "interfaces": [{"name": "dummy0"}],
                "ips": [{"version": "4", "address": "192.0.2.9/32", "interface": 0}]}
    added = plugin("ADD", config(cluster, "0.4.0", prevResult=previous), netns=container.path)
    assert added.code == 0, added.raw
    assert added.out["interfaces"][0] == {"name": "dummy0"}  # passed through
    assert added.out["ips"][1]["version"] == "4" and added.out["ips"][1]["interface"] == 2
    assert plugin("DEL", config(cluster, "0.4.0"), netns=container.path).code == 0
    newer = plugin("ADD", config(cluster, "1.1.0"), netns=container.path)
    assert newer.code == 0 and newer.out["cniVersion"] == "1.1.0"
    assert plugin("STATUS", config(cluster, "1.1.0")).code == 0
    status_old = plugin("STATUS", config(cluster, "1.0.0"))
    assert status_old.code != 0 and status_old.out["code"] == 1


def test_gc_releases_only_this_configurations_attachments_not_listed(cluster, netns):
    pods = {name: netns("cnmt-pod") for name in ("a", "b", "c")}
    for name, pod in pods.items():
        assert plugin("ADD", config(cluster, "1.1.0"), container=name * 64,
                      netns=pod.path).code == 0
    # Another runtime's (another configuration's) attachment, and a cnm run container.
    other = netns("cnmt-pod")
    assert plugin("ADD", config(cluster, "1.1.0", name="othernet"), container="d" * 64,
                  netns=other.path).code == 0
    host = cluster.hosts[0].host_id
    assert cluster.cnm("run", "--host", host, "-d", "--name", "plain", "--net", "cninet", "--",
                       "sleep", "300").code == 0
    valid = [{"containerID": "a" * 64, "ifname": "eth0"}]
    assert plugin("GC", config(cluster, "1.1.0", **{"cni.dev/valid-attachments": valid})
                  ).code == 0
    left = sorted(e.container_id for e in endpoints(cluster))
    assert left == sorted(["a" * 64, "d" * 64, f"cnm-{cluster.hosts[0].host_id}-plain"])
    assert plugin("GC", config(cluster, "1.1.0", **{"cni.dev/valid-attachments": []})
                  ).code == 0
    assert "a" * 64 not in {e.container_id for e in endpoints(cluster)}
    assert cluster.cnm("rm", "--host", host, "plain").code == 0


def test_agent_down_is_try_again_later_and_status_fails_with_50(cluster, netns):
    cluster.hosts[0].stop()
    container = netns("cnmt-pod")
    down = plugin("ADD", config(cluster), netns=container.path)
    assert down.code != 0 and down.out["code"] == 11
    status = plugin("STATUS", config(cluster, "1.1.0"))
    assert status.code != 0 and status.out["code"] == 50
    assert "does not answer" in status.out["msg"]


@pytest.mark.parametrize(("command", "conf", "env", "code"), [
    ("", {}, {}, 4),
    ("FROB", {}, {}, 4),
    ("ADD", {"cniVersion": "0.3.1"}, {}, 1),
    ("ADD", "{not json", {}, 6),
    ("ADD", {"network": None}, {}, 7),
    ("ADD", {}, {"CNI_NETNS": "/var/run/netns/cnmt-none-such"}, 4),
    ("ADD", {}, {"CNI_NETNS": "/proc/1/ns/net"}, 4),  # the host's own
    ("ADD", {}, {"CNI_NETNS": "/proc/self/ns/mnt"}, 4),  # not a network namespace
    ("ADD", {}, {"CNI_NETNS": ""}, 4),
    ("ADD", {}, {"CNI_IFNAME": "a-name-too-long-x"}, 4),
    ("ADD", {}, {"CNI_IFNAME": "a/b"}, 4),
    ("ADD", {}, {"CNI_CONTAINERID": ""}, 4),
    ("ADD", {}, {"CNI_CONTAINERID": "bad id!"}, 4),
    ("ADD", {"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}, {}, 7),
    ("ADD", {"runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}},
     {}, 7),
    ("ADD", {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80,
                                                 "protocol": "sctp"}]}}, {}, 7),
    ("ADD", {"runtimeConfig": {"ips": ["10.99.9.9/24"]}}, {}, 7),
    ("ADD", {"runtimeConfig": {"aliases": {"podnet": ["bad name"]}}}, {}, 7),
    ("ADD", {"runtimeConfig": {"aliases": {"podnet": "www"}}}, {}, 7),
    ("ADD", {"runtimeConfig": {"aliases": ["www"]}}, {}, 7),
    ("ADD", {"network": "no-such-network"}, {}, 101),
])
def test_bad_input_is_a_cni_error_and_allocates_nothing(cluster, netns, command, conf, env,
                                                        code):
    container = netns("cnmt-pod")
    base = config(cluster)
    if isinstance(conf, dict):
        base.update(conf)
        base = {k: v for k, v in base.items() if v is not None}
    variables = {"CNI_COMMAND": command, "CNI_NETNS": container.path, **env}
    failed = plugin(command, base if isinstance(conf, dict) else conf,
                    netns=variables["CNI_NETNS"],
                    container=env.get("CNI_CONTAINERID", CONTAINER),
                    ifname=env.get("CNI_IFNAME", "eth0"))
    assert failed.code != 0, failed.raw
    assert failed.out["code"] == code, failed.out
    assert "\n" not in failed.out["msg"]
    assert endpoints(cluster) == []


def test_a_host_port_already_published_is_refused_with_cnm_code(cluster, netns):
    port = {"hostPort": 18082, "containerPort": 80}
    first, second = netns("cnmt-pod"), netns("cnmt-pod")
    conf = config(cluster, runtimeConfig={"portMappings": [port]})
    assert plugin("ADD", conf, container="a" * 64, netns=first.path).code == 0
    taken = plugin("ADD", conf, container="b" * 64, netns=second.path)
    assert taken.code != 0 and taken.out["code"] == 103 and "18082" in taken.out["msg"]
    assert [e.container_id for e in endpoints(cluster)] == ["a" * 64]


def test_status_fails_with_50_when_the_orchestrator_does_not_answer(cluster):
    for process in cluster.processes:
        if "orchestrator" in " ".join(process.args):
            process.stop()
    status = plugin("STATUS", config(cluster, "1.1.0"))
    assert status.code != 0 and status.out["code"] == 50, status.raw
    missing = plugin("STATUS", dict(config(cluster, "1.1.0"), socket="/tmp/cnmt-none.sock"))
    assert missing.out["code"] == 50
