"""Authorization by identity (cnm.authz), over real processes with mutual TLS.

Each refusal names the identity and the method in one line, has the right
code, and changes nothing; each allowed call works. The tables themselves are
checked for completeness in tests/common/test_authz.py.
"""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from tests import support
from tests.security.conftest import channel, cnm, odd_certificate

pytestmark = pytest.mark.root


def registered(deployment) -> None:
    support.wait_for(lambda: "h1" in cnm(deployment, "host", "ls").stdout, 15,
                     what="the agent's registration")


def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_a_viewer_reads_but_cannot_change_anything(deployment):
    registered(deployment)
    assert cnm(deployment, "network", "create", "--subnet", "10.124.0.0/24", "seen").returncode == 0
    listed = cnm(deployment, "network", "ls", identity="viewer")
    assert listed.returncode == 0 and "seen" in listed.stdout
    created = cnm(deployment, "network", "create", "--subnet", "10.125.0.0/24", "nope",
                  identity="viewer")
    assert created.returncode == 8 and created.stderr.count("\n") == 1
    assert created.stderr == ("cnm: error: spiffe://cnm/viewer may not call "
                              "/cnm.orchestrator.v1.OrchestratorService/CreateNetwork\n")
    for args in (("network", "rm", "seen"), ("host", "rm", "h1")):
        done = cnm(deployment, *args, identity="viewer")
        assert done.returncode == 8, done.stderr
    # Nothing changed.
    names = cnm(deployment, "network", "ls", "--format", "json").stdout
    assert [n["name"] for n in json.loads(names)] == ["seen"]
    assert "h1" in cnm(deployment, "host", "ls").stdout
    with channel(deployment, deployment["ipam"], "viewer") as ch:
        ipam = ipam_pb2_grpc.IpamServiceStub(ch)
        assert ipam.ListPools(ipam_pb2.ListPoolsRequest(), timeout=10).pools
        refused(lambda: ipam.CreatePool(ipam_pb2.CreatePoolRequest(
            pool=ipam_pb2.Pool(pool_id="x", subnet="10.126.0.0/24")), timeout=10), grpc.StatusCode.PERMISSION_DENIED)


def test_only_the_orchestrator_drives_the_agent(deployment):
    for identity in ("admin", "viewer", "agent-h1"):
        with channel(deployment, deployment["agent"], identity) as ch:
            agent = netdriver_pb2_grpc.NetDriverServiceStub(ch)
            details = refused(lambda: agent.CreateSandbox(  # noqa: B023 - called at once
                netdriver_pb2.CreateSandboxRequest(name="intruder"), timeout=10),
                grpc.StatusCode.PERMISSION_DENIED)
            assert "/cnm.netdriver.v1.NetDriverService/CreateSandbox" in details
            if identity != "agent-h1":
                assert agent.GetState(netdriver_pb2.GetStateRequest(), timeout=10)
    with channel(deployment, deployment["agent"], "admin") as ch:
        sandboxes = netdriver_pb2_grpc.NetDriverServiceStub(ch).ListSandboxes(
            netdriver_pb2.ListSandboxesRequest(), timeout=10)
    assert not [s for s in sandboxes.sandboxes if s.name == "intruder"]


def test_an_agent_acts_for_its_own_host_only(deployment, netns):
    registered(deployment)
    with channel(deployment, deployment["orchestrator"], "agent-h2") as ch:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        # Host h2's certificate can neither register nor keep alive host h1.
        details = refused(lambda: orchestrator.RegisterHost(pb.RegisterHostRequest(
            host=pb.Host(host_id="h1", address="unix:/tmp/evil.sock")), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED)
        assert details.startswith("spiffe://cnm/agent/h2 may not call ") and "'h1'" in details
        refused(lambda: orchestrator.HeartbeatHost(pb.HeartbeatHostRequest(host_id="h1"),
                                                   timeout=10),
                grpc.StatusCode.PERMISSION_DENIED)
        refused(lambda: orchestrator.DeleteHost(pb.DeleteHostRequest(host_id="h1"), timeout=10),
                grpc.StatusCode.PERMISSION_DENIED)
        refused(lambda: orchestrator.ListHosts(pb.ListHostsRequest(), timeout=10),
                grpc.StatusCode.PERMISSION_DENIED)
        assert cnm(deployment, "network", "create", "--subnet", "10.127.0.0/24",
                   "shared").returncode == 0
        # It reads networks, but connects nothing on a host not its own.
        assert orchestrator.GetNetwork(pb.GetNetworkRequest(network="shared"), timeout=10)
        refused(lambda: orchestrator.ConnectContainer(pb.ConnectContainerRequest(
            network="shared", container_id="c9", host_id="h1"), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED)
        # An endpoint on h1 cannot be disconnected by h2's agent either.
        container = netns("cnmt-az")
        assert cnm(deployment, "network", "connect", "--sandbox", container.path, "shared",
                   "c1").returncode == 0
        details = refused(lambda: orchestrator.DisconnectContainer(
            pb.DisconnectContainerRequest(network="shared", container_id="c1"), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED)
        assert "host 'h1'" in details
    # h1's registration stands, its endpoint too.
    hosts = json.loads(cnm(deployment, "host", "ls", "--format", "json").stdout)
    assert [(h["host_id"], h["address"]) for h in hosts] == [("h1", deployment["agent"])]
    assert "c1" in cnm(deployment, "network", "inspect", "shared").stdout
    # h1's own agent certificate may connect and disconnect on h1.
    with channel(deployment, deployment["orchestrator"], "agent-h1") as ch:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        orchestrator.DisconnectContainer(
            pb.DisconnectContainerRequest(network="shared", container_id="c1"), timeout=30)
    assert cnm(deployment, "network", "rm", "shared").returncode == 0


def test_mutating_calls_are_logged_with_the_callers_identity(deployment):
    assert cnm(deployment, "network", "create", "--subnet", "10.128.0.0/24", "audited"
               ).returncode == 0
    assert cnm(deployment, "network", "rm", "audited", identity="viewer").returncode == 8

    def requests() -> list[tuple]:
        lines = [json.loads(line) for line in
                 (deployment["tmp"] / "orchestrator.log").read_text().splitlines()
                 if line.startswith("{")]
        return [(line["method"].rsplit("/", 1)[1], line["code"], line.get("caller"))
                for line in lines if line.get("event") == "request"]

    # A request's line is written just after its reply: waited for, not raced.
    support.wait_for(lambda: ("DeleteNetwork", "PERMISSION_DENIED", "spiffe://cnm/viewer")
                     in requests(), 5, 0.1, "the refused request's line")
    assert ("CreateNetwork", "OK", "spiffe://cnm/admin") in requests()
    # IPAM logs the orchestrator as the caller of the pool it created.
    ipam = (deployment["tmp"] / "ipam.log").read_text()
    assert '"caller": "spiffe://cnm/orchestrator"' in ipam


def test_certificates_we_would_not_issue_are_refused(deployment):
    ca = deployment["ca"]
    odd_certificate(ca, "nobody", uri=None)
    odd_certificate(ca, "stranger", uri="spiffe://elsewhere/admin")
    for name in ("nobody", "stranger"):
        # Signed by our CA, so the handshake passes; no cnm identity, so nothing else does.
        done = cnm(deployment, "network", "ls", identity=name)
        assert done.returncode == 8 and "carries no cnm identity" in done.stderr, done.stderr
    odd_certificate(ca, "expired", uri="spiffe://cnm/admin", expired=True)
    done = cnm(deployment, "network", "ls", identity="expired")
    assert done.returncode == 6 and done.stderr.count("\n") == 1


def test_a_server_checks_its_name_in_the_certificate(deployment):
    # IPAM's certificate names 127.0.0.1 only: a client dialling it as another name refuses.
    credentials = grpc.ssl_channel_credentials(
        (deployment["ca"] / "ca.crt").read_bytes(),
        (deployment["ca"] / "admin.key").read_bytes(),
        (deployment["ca"] / "admin.crt").read_bytes())
    options = [("grpc.ssl_target_name_override", "ipam.example")]
    with grpc.secure_channel(deployment["ipam"], credentials, options) as ch:
        refused(lambda: ipam_pb2_grpc.IpamServiceStub(ch).ListPools(
            ipam_pb2.ListPoolsRequest(), timeout=5), grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize("module", ["ipam_service", "orchestrator", "netdriver_service"])
def test_plaintext_beyond_loopback_refuses_to_start(module):
    done = subprocess.run([support.PYTHON, "-m", module, "--listen", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "refusing to listen on 0.0.0.0:0 without TLS: give --tls-ca/--tls-cert/--tls-key "
        "(see `cnm pki`), listen on loopback or a unix socket, or accept the risk with "
        "--insecure (env CNM_INSECURE=1)")
