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
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnm import grpc_client, pki
from tests import support

pytestmark = pytest.mark.root

CNM = str(Path(support.PYTHON).with_name("cnm"))


def tls_args(directory: Path, name: str) -> list[str]:
    return ["--tls-ca", str(directory / "ca.crt"), "--tls-cert", str(directory / f"{name}.crt"),
            "--tls-key", str(directory / f"{name}.key")]


def credentials(directory: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((directory / "ca.crt").read_bytes(),
                                        (directory / f"{name}.key").read_bytes(),
                                        (directory / f"{name}.crt").read_bytes())


@pytest.fixture
def deployment(tmp_path, redis_url, netns):
    ca, other = tmp_path / "pki", tmp_path / "other-pki"
    for directory in (ca, other):
        pki.init_ca(directory)
        pki.issue(directory, "admin", "admin")
    pki.issue(ca, "ipam", "ipam", sans=("127.0.0.1",))
    pki.issue(ca, "orchestrator", "orchestrator", sans=("localhost",))
    pki.issue(ca, "agent-h1", "agent", host_id="h1", sans=("localhost",))
    ipam_address = f"127.0.0.1:{support.free_port()}"
    # A unix socket: the agent, in a namespace of its own, reaches it through the file system.
    orchestrator_address = f"unix:/tmp/cnmt-tls-{uuid.uuid4().hex[:8]}.sock"
    agent_address = f"unix:/tmp/cnmt-tls-{uuid.uuid4().hex[:8]}.sock"
    host = netns("cnmt-th")
    processes = []
    try:
        processes.append(support.Process(
            [support.PYTHON, "-m", "ipam_service", "--listen", ipam_address,
             "--redis-url", redis_url, *tls_args(ca, "ipam")], log_path=tmp_path / "ipam.log"))
        support.wait_serving(ipam_address, credentials=credentials(ca, "admin"))
        processes.append(support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", orchestrator_address,
             "--redis-url", redis_url, "--ipam", ipam_address, *tls_args(ca, "orchestrator")],
            log_path=tmp_path / "orchestrator.log"))
        support.wait_serving(orchestrator_address, credentials=credentials(ca, "admin"))
        processes.append(support.Process(
            ["nsenter", f"--net={host.path}", support.PYTHON, "-m", "netdriver_service",
             "--listen", agent_address, "--host-id", "h1", "--state-dir",
             str(tmp_path / "agent"), "--orchestrator", orchestrator_address,
             "--underlay-ip", "10.99.0.1", *tls_args(ca, "agent-h1")],
            log_path=tmp_path / "agent.log"))
        support.wait_serving(agent_address, credentials=credentials(ca, "admin"))
        yield {"ca": ca, "other": other, "orchestrator": orchestrator_address,
               "ipam": ipam_address, "agent": agent_address, "tmp": tmp_path}
    finally:
        for process in reversed(processes):
            process.stop()
        for address in (orchestrator_address, agent_address):
            Path(address.removeprefix("unix:")).unlink(missing_ok=True)


def cnm(deployment, *args: str, identity: str = "admin", ca: Path | None = None,
        tls: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CNM_ORCHESTRATOR": deployment["orchestrator"], "CNM_HOST_ID": "h1",
           "CNM_RUN_DIR": str(deployment["tmp"] / "run"), "GRPC_ENABLE_FORK_SUPPORT": "0"}
    for name in ("CNM_TLS_CA", "CNM_TLS_CERT", "CNM_TLS_KEY"):
        env.pop(name, None)
    if tls:
        directory = ca or deployment["ca"]
        env.update(CNM_TLS_CA=str(deployment["ca"] / "ca.crt"),
                   CNM_TLS_CERT=str(directory / f"{identity}.crt"),
                   CNM_TLS_KEY=str(directory / f"{identity}.key"))
    return subprocess.run([CNM, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


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
