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
import shutil
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


def test_a_new_ca_rolls_out_to_servers_and_long_lived_clients_without_restarts(deployment):
    """Every file replaced by ones of a new CA: the orchestrator's server presents and
    accepts the new ones, and its long-lived channel to IPAM dials with its new
    certificate once IPAM (restarted here, so that a new handshake is needed) has them."""
    ca, fresh = deployment["ca"], deployment["tmp"] / "new-pki"
    pki.init_ca(fresh)
    pki.issue(fresh, "ipam", "ipam", sans=("127.0.0.1",))
    pki.issue(fresh, "orchestrator", "orchestrator", sans=("localhost",))
    pki.issue(fresh, "admin", "admin")
    assert cnm(deployment, "network", "ls").returncode == 0  # the channel to IPAM is up
    for name in ("ca.crt", "ipam.crt", "ipam.key", "orchestrator.crt", "orchestrator.key",
                 "admin.crt", "admin.key"):
        shutil.copy2(fresh / name, ca / name)
    ipam = next(p for p in deployment["processes"] if "ipam_service" in p.args)
    ipam.stop()
    deployment["processes"].append(support.Process(
        [support.PYTHON, "-m", "ipam_service", "--listen", deployment["ipam"], "--redis-url",
         deployment["redis_url"], "--tls-ca", str(ca / "ca.crt"), "--tls-cert",
         str(ca / "ipam.crt"), "--tls-key", str(ca / "ipam.key")],
        log_path=deployment["tmp"] / "ipam-2.log"))
    support.wait_serving(deployment["ipam"], credentials=credentials(ca, "admin"))
    created = cnm(deployment, "network", "create", "--subnet", "10.132.0.0/24", "rolled")
    assert created.returncode == 0, created.stderr
    assert cnm(deployment, "network", "rm", "rolled").returncode == 0
