"""Mutual TLS on every link, over real processes with certificates from `cnm pki`.

IPAM, the orchestrator and a host agent (in a namespace of its own) run with
--tls-ca/--tls-cert/--tls-key; the agent registers with the orchestrator over
TLS (no static host list), the orchestrator reaches IPAM and the agent over
TLS, and the CLI drives it all with an admin certificate. Then the refusals:
a plaintext client, a client without a certificate, and one whose
certificate comes from another CA.
"""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnm import grpc_client, pki
from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from tests import support
from tests.security.conftest import cnm, credentials

pytestmark = pytest.mark.root

def test_the_story_runs_over_mutual_tls_on_every_link(deployment, netns):
    # Agent -> orchestrator: it registered itself over TLS.
    support.wait_for(lambda: "h1" in cnm(deployment, "host", "ls").stdout, 15,
                     what="the agent's registration")
    created = cnm(deployment, "network", "create", "--subnet", "10.123.0.0/24", "tlsnet")
    assert created.returncode == 0, created.stderr
    container = netns("cnmt-tc")
    # CLI -> orchestrator -> IPAM and -> agent: an address, and the interface in the namespace.
    connected = cnm(deployment, "network", "connect", "--sandbox", container.path, "tlsnet", "c1")
    assert (connected.returncode, connected.stdout) == (0, "10.123.0.2/24\n"), connected.stderr
    addresses = json.loads(container.run("ip", "-j", "addr", "show").stdout)
    assert any(a.get("local") == "10.123.0.2" for link in addresses
               for a in link.get("addr_info", []))
    assert cnm(deployment, "network", "disconnect", "tlsnet", "c1").returncode == 0
    assert cnm(deployment, "network", "rm", "tlsnet").returncode == 0


def test_a_client_without_our_certificate_is_refused(deployment):
    plaintext = cnm(deployment, "network", "ls", tls=False)
    assert plaintext.returncode == 6 and plaintext.stderr.count("\n") == 1
    foreign = cnm(deployment, "network", "ls", ca=deployment["other"])
    assert foreign.returncode == 6 and foreign.stderr.startswith("cnm: error:")
    for address in (deployment["ipam"], deployment["orchestrator"], deployment["agent"]):
        # TLS, trusting the server, but no client certificate: the handshake fails.
        anonymous = grpc.ssl_channel_credentials((deployment["ca"] / "ca.crt").read_bytes())
        options = grpc_client.tls_options(address)
        with grpc.secure_channel(address, anonymous, options) as channel, \
                pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_incomplete_tls_flags_stop_a_service_with_one_line(tmp_path):
    done = subprocess.run([support.PYTHON, "-m", "ipam_service", "--tls-ca", "/nonexistent"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--tls-cert, --tls-key missing" in done.stderr.splitlines()[-1]


def test_a_renewed_certificate_is_served_without_a_restart(deployment):
    """IPAM's certificate names 127.0.0.1 only; re-issued with another name, the running
    server presents it at the next handshake."""
    ca = deployment["ca"]
    admin = credentials(ca, "admin")

    def pools(name: str) -> grpc.StatusCode:
        options = [("grpc.ssl_target_name_override", name)]
        with grpc.secure_channel(deployment["ipam"], admin, options) as channel:
            try:
                ipam_pb2_grpc.IpamServiceStub(channel).ListPools(ipam_pb2.ListPoolsRequest(),
                                                                 timeout=5)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    assert pools("ipam.example") == grpc.StatusCode.UNAVAILABLE
    pki.issue(ca, "ipam", "ipam", sans=("127.0.0.1", "ipam.example"), force=True)
    support.wait_for(lambda: pools("ipam.example") == grpc.StatusCode.OK, 10,
                     what="the renewed certificate")
    assert pools("127.0.0.1") == grpc.StatusCode.OK


def test_a_key_readable_by_others_is_used_with_a_warning(tmp_path):
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "ipam", "ipam", sans=("127.0.0.1",))
    (tmp_path / "ipam.key").chmod(0o644)
    address = f"127.0.0.1:{support.free_port()}"
    process = support.Process(
        [support.PYTHON, "-m", "ipam_service", "--listen", address, "--redis-url",
         "redis://127.0.0.1:1/0", "--tls-ca", str(tmp_path / "ca.crt"), "--tls-cert",
         str(tmp_path / "ipam.crt"), "--tls-key", str(tmp_path / "ipam.key")],
        log_path=tmp_path / "ipam.log")
    try:
        support.wait_for(lambda: "listening" in (tmp_path / "ipam.log").read_text(), 20,
                         what="IPAM to listen")
    finally:
        process.stop()
    warnings = [json.loads(line) for line in (tmp_path / "ipam.log").read_text().splitlines()
                if "readable by others" in line]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["mode"] == "0o644"
