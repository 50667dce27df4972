"""A deployment of the three services as real processes with mutual TLS on every link."""

from __future__ import annotations

import datetime
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cnm import grpc_client, pki
from tests import support

CNM = str(Path(support.PYTHON).with_name("cnm"))
tls_args = support.tls_args
credentials = support.tls_credentials


@pytest.fixture
def deployment(tmp_path, redis_url, netns):
    ca, other = tmp_path / "pki", tmp_path / "other-pki"
    for directory in (ca, other):
        pki.init_ca(directory)
        pki.issue(directory, "admin", "admin")
    pki.issue(ca, "ipam", "ipam", sans=("127.0.0.1",))
    pki.issue(ca, "orchestrator", "orchestrator", sans=("localhost",))
    pki.issue(ca, "agent-h1", "agent", host_id="h1", sans=("localhost",))
    pki.issue(ca, "agent-h2", "agent", host_id="h2")
    pki.issue(ca, "viewer", "viewer")
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
               "ipam": ipam_address, "agent": agent_address, "tmp": tmp_path,
               "processes": processes, "redis_url": redis_url}
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




def channel(deployment, address: str, identity: str) -> grpc.Channel:
    """A channel to ``address`` holding certificate ``identity`` of the deployment's CA."""
    return grpc.secure_channel(address, credentials(deployment["ca"], identity),
                               grpc_client.tls_options(address))


def odd_certificate(directory: Path, name: str, *, uri: str | None,
                    expired: bool = False) -> None:
    """``directory``/NAME.crt and .key signed by the CA there, as `cnm pki` would never
    issue them: with no cnm identity (``uri`` None) or expired."""
    ca_certificate, ca_key = pki.load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = ((now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
                  if expired else (now - datetime.timedelta(minutes=5),
                                   now + datetime.timedelta(days=1)))
    names = [x509.DNSName("localhost")] + ([x509.UniformResourceIdentifier(uri)] if uri else [])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
