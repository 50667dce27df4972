"""A small PKI for cnm: one CA per deployment, one certificate per identity.

Every certificate carries who it is as a SPIFFE URI SAN, the one thing the
services authorize on::

    spiffe://cnm/orchestrator     spiffe://cnm/ipam
    spiffe://cnm/agent/<host-id>  spiffe://cnm/admin    spiffe://cnm/viewer

plus the DNS names and addresses a server is reached by (what a client
checks the server's certificate against). Keys are ECDSA P-256; every leaf
may serve and be a client (mutual TLS on every link). Written with the
``cryptography`` library; keys are created mode 0600 and never overwritten
unless asked.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cnm import errors, validation
from cnm.errors import capped

TRUST_DOMAIN = "cnm"
ROLES = ("orchestrator", "agent", "ipam", "admin", "viewer")
CA_DAYS = 3650
LEAF_DAYS = 365
MAX_DAYS = 3650
# A DNS name a certificate may carry: labels of letters, digits and hyphens (and "*.").
_DNS_NAME = re.compile(r"(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*"
                       r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    role: str
    host_id: str = ""  # agents only

    @property
    def uri(self) -> str:
        suffix = f"/{self.host_id}" if self.host_id else ""
        return f"spiffe://{TRUST_DOMAIN}/{self.role}{suffix}"

    def __str__(self) -> str:
        return self.uri


def identity(role: str, host_id: str = "") -> Identity:
    """A checked identity: an agent names its host, no other role does."""
    if role not in ROLES:
        raise errors.InvalidArgument(
            f"unknown role {capped(role)!r}: one of {', '.join(ROLES)}",
            reason="INVALID_ROLE", field="role")
    if role == "agent":
        if not host_id:
            raise errors.InvalidArgument("an agent certificate needs --host-id (the host it "
                                         "runs on)", reason="INVALID_ROLE", field="host_id")
        validation.check_id("host_id", host_id)
    elif host_id:
        raise errors.InvalidArgument(f"only an agent certificate carries a host id, not a "
                                     f"{role}'s", reason="INVALID_ROLE", field="host_id")
    return Identity(role, host_id)


def identity_of(certificate: x509.Certificate) -> Identity | None:
    """The cnm identity a certificate carries; None when it carries none."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(prefix):
            role, _, host_id = uri[len(prefix):].partition("/")
            if role in ROLES and (role == "agent") == bool(host_id):
                return Identity(role, host_id)
    return None


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not _DNS_NAME.fullmatch(value):
        raise errors.InvalidArgument(
            f"--san {capped(value)!r} is neither an IP address nor a DNS name",
            reason="INVALID_SAN", field="san")
    return x509.DNSName(value.lower())


def _days(days: int) -> datetime.timedelta:
    if not 1 <= days <= MAX_DAYS:
        raise errors.InvalidArgument(f"--days must be between 1 and {MAX_DAYS}, got {days}",
                                     reason="INVALID_LIFETIME", field="days")
    return datetime.timedelta(days=days)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes a new file with ``mode`` from the start (a key is never readable by others,
    not even for a moment); an existing one only with ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if force else os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise errors.AlreadyExists(f"{path} exists: give --force to replace it",
                                   reason="FILE_EXISTS", path=path) from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)


def _refuse_existing(paths: list[Path], force: bool, consequence: str = "") -> None:
    """ALREADY_EXISTS before anything is written, so that nothing is left half made."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise errors.AlreadyExists(f"{path} exists: give --force to replace it{consequence}",
                                       reason="FILE_EXISTS", path=path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, *, days: int = CA_DAYS, force: bool = False) -> Path:
    """Makes ``directory``/ca.crt and ca.key; returns the certificate's path."""
    lifetime = _days(days)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_existing([directory / "ca.crt", directory / "ca.key"], force,
                     " (every certificate it issued stops being trusted)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cnm"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "cnm CA")])
    now = _now()
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.key", _key_pem(key), 0o600, force)
    _write(directory / "ca.crt", certificate.public_bytes(serialization.Encoding.PEM), 0o644,
           force)
    return directory / "ca.crt"


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        certificate = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError as error:
        raise errors.NotFound(f"no CA in {directory} ({error.filename} is missing): run "
                              f"`cnm pki init --dir {directory}` first",
                              reason="CA_NOT_FOUND") from None
    except ValueError as error:
        raise errors.InvalidArgument(f"the CA in {directory} cannot be read: {error}",
                                     reason="INVALID_CA") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.InvalidArgument(f"{directory / 'ca.key'} is not an ECDSA key",
                                     reason="INVALID_CA")
    return certificate, key


def issue(directory: Path, name: str, role: str, *, host_id: str = "",
          sans: tuple[str, ...] = (), days: int = LEAF_DAYS, force: bool = False) -> Path:
    """Issues ``directory``/NAME.crt and NAME.key for ``role`` (and ``host_id``), signed by
    the CA in ``directory``; returns the certificate's path."""
    validation.check_id("name", name)
    who = identity(role, host_id)
    names = [x509.UniformResourceIdentifier(who.uri), *dict.fromkeys(map(_san, sans))]
    lifetime = _days(days)
    ca_certificate, ca_key = load_ca(directory)
    _refuse_existing([directory / f"{name}.crt", directory / f"{name}.key"], force)
    now = _now()
    not_after = min(now + lifetime, ca_certificate.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cnm"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / f"{name}.key", _key_pem(key), 0o600, force)
    _write(directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM),
           0o644, force)
    return directory / f"{name}.crt"
