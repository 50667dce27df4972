"""cnm.pki and `cnm pki`: what the certificates carry, and that real TLS accepts them."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import stat
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cnm import errors, pki


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca(tmp_path):
    pki.init_ca(tmp_path)
    return tmp_path


def test_the_ca_is_a_p256_ca_with_a_private_key(ca):
    certificate = load(ca / "ca.crt")
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.public_key().curve.name == "secp256r1"
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.issuer == certificate.subject
    assert stat.S_IMODE(os.stat(ca / "ca.key").st_mode) == 0o600
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime < datetime.timedelta(days=3651)


def test_an_agent_certificate_carries_its_host_and_the_names_it_is_reached_by(ca):
    pki.issue(ca, "agent-h1", "agent", host_id="h1", sans=("10.0.0.5", "h1.example", "::1"))
    certificate = load(ca / "agent-h1.crt")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cnm/agent/h1"]
    assert names.get_values_for_type(x509.DNSName) == ["h1.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"),
                                                         ipaddress.ip_address("::1")]
    assert pki.identity_of(certificate) == pki.Identity("agent", "h1")
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.issuer == load(ca / "ca.crt").subject
    load(ca / "agent-h1.crt").verify_directly_issued_by(load(ca / "ca.crt"))
    assert stat.S_IMODE(os.stat(ca / "agent-h1.key").st_mode) == 0o600
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert datetime.timedelta(days=364) < lifetime < datetime.timedelta(days=366)


@pytest.mark.parametrize("role", ["orchestrator", "ipam", "admin", "viewer"])
def test_every_other_role_is_one_uri(ca, role):
    pki.issue(ca, role, role)
    assert pki.identity_of(load(ca / f"{role}.crt")) == pki.Identity(role)
    assert str(pki.Identity(role)) == f"spiffe://cnm/{role}"


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"role": "root"}, "INVALID_ROLE"),
    ({"role": "agent"}, "INVALID_ROLE"),                      # no host id
    ({"role": "viewer", "host_id": "h1"}, "INVALID_ROLE"),    # only agents have one
    ({"role": "agent", "host_id": "bad host"}, "INVALID_ID"),
    ({"role": "admin", "sans": ("not a name!",)}, "INVALID_SAN"),
    ({"role": "admin", "days": 0}, "INVALID_LIFETIME"),
    ({"role": "admin", "days": 100_000}, "INVALID_LIFETIME"),
])
def test_bad_requests_write_nothing(ca, kwargs, reason):
    before = sorted(p.name for p in ca.iterdir())
    with pytest.raises(errors.InvalidArgument) as caught:
        pki.issue(ca, "x", **kwargs)
    assert caught.value.reason == reason
    assert sorted(p.name for p in ca.iterdir()) == before


def test_nothing_is_overwritten_without_force(ca):
    pki.issue(ca, "admin", "admin")
    first = (ca / "admin.key").read_bytes()
    with pytest.raises(errors.AlreadyExists, match="--force"):
        pki.issue(ca, "admin", "admin")
    with pytest.raises(errors.AlreadyExists, match="stops being trusted"):
        pki.init_ca(ca)
    assert (ca / "admin.key").read_bytes() == first
    pki.issue(ca, "admin", "admin", force=True)
    assert (ca / "admin.key").read_bytes() != first


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(errors.NotFound, match="cnm pki init"):
        pki.issue(tmp_path, "admin", "admin")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnm_cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_cli_makes_them_and_fails_in_one_line(tmp_path):
    made = cli("pki", "init", "--dir", str(tmp_path / "ca"))
    assert made.returncode == 0 and made.stdout.strip().endswith("ca.crt")
    issued = cli("pki", "issue", "--dir", str(tmp_path / "ca"), "--role", "agent",
                 "--host-id", "h1", "--san", "127.0.0.1", "agent-h1")
    assert issued.returncode == 0 and (tmp_path / "ca" / "agent-h1.key").exists()
    again = cli("pki", "issue", "--dir", str(tmp_path / "ca"), "--role", "agent",
                "--host-id", "h1", "agent-h1")
    assert again.returncode == 4 and again.stderr.count("\n") == 1
    assert again.stderr.startswith("cnm: error: ") and "--force" in again.stderr
    no_host = cli("pki", "issue", "--dir", str(tmp_path / "ca"), "--role", "agent", "a2")
    assert no_host.returncode == 2 and "--host-id" in no_host.stderr
    no_ca = cli("pki", "issue", "--dir", str(tmp_path / "none"), "--role", "admin", "x")
    assert no_ca.returncode == 3 and "cnm pki init" in no_ca.stderr


async def test_real_mutual_tls_accepts_them_and_refuses_another_ca(tmp_path):
    """The certificates work in gRPC's own TLS stack, both ways, and a client of
    another CA is refused: what every link of cnm will rely on."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for directory in (ours, theirs):
        pki.init_ca(directory)
        pki.issue(directory, "orch", "orchestrator", sans=("localhost", "127.0.0.1"))
        pki.issue(directory, "admin", "admin")

    def read(directory, name):
        return (directory / f"{name}.key").read_bytes(), (directory / f"{name}.crt").read_bytes()

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials([read(ours, "orch")],
                                              root_certificates=(ours / "ca.crt").read_bytes(),
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        async def check(directory) -> grpc.StatusCode:
            key, chain = read(directory, "admin")
            client = grpc.ssl_channel_credentials((ours / "ca.crt").read_bytes(), key, chain)
            async with grpc.aio.secure_channel(f"localhost:{port}", client) as channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.aio.AioRpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        assert await check(ours) == grpc.StatusCode.OK
        assert await check(theirs) == grpc.StatusCode.UNAVAILABLE  # handshake refused
    finally:
        await server.stop(0)
        await asyncio.sleep(0)
