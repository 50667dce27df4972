"""Mutual TLS for every gRPC link, from three files: the CA, a certificate, its key.

Every process takes ``--tls-ca``, ``--tls-cert`` and ``--tls-key`` (env
``CNM_TLS_CA``, ``CNM_TLS_CERT``, ``CNM_TLS_KEY``); all three or none. With
them a server requires a client certificate signed by the CA, and a client
verifies the server's certificate against the CA and the name it dials
(an address, or ``localhost`` for a unix socket). Certificates come from
``cnm pki``.

Rotation needs no restart: a server reads the files again at the next
handshake after they change (gRPC's dynamic server credentials), and a
long-lived client channel (cnm.grpc_client.RenewingChannel) is opened anew with
them at its next use after they change.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("cnm.tls")


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Tls | None:
        """The files the flags name; None without TLS; ValueError (a configuration error,
        not an RPC's) for one or two of the three, or a file that cannot be read."""
        given = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
        if not any(given.values()):
            return None
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise ValueError(f"TLS needs --tls-ca, --tls-cert and --tls-key together: "
                             f"{', '.join(missing)} missing")
        tls = cls(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key))
        tls.read()
        return tls

    def _warn_if_exposed(self) -> None:
        """A key others may read is used (refusing would break a running deployment on a
        chmod), but said at every start, once logging is set up."""
        mode = stat.S_IMODE(os.stat(self.key).st_mode)
        if mode & 0o077:
            log.warning("TLS key readable by others: chmod 600 it",
                        extra={"key": str(self.key), "mode": oct(mode)})

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate chain, key) as PEM."""
        try:
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None

    def stamp(self) -> tuple:
        """What changes when any of the three files does (their modification times)."""
        return tuple(os.stat(path).st_mtime_ns for path in (self.ca, self.cert, self.key))

    def server_credentials(self) -> grpc.ServerCredentials:
        """Requires and verifies client certificates; re-reads the files when they change."""
        self._warn_if_exposed()
        seen = [self.stamp()]  # before the files are read: a change meanwhile is seen later
        ca, chain, key = self.read()

        def configuration(ca: bytes, chain: bytes, key: bytes):
            return grpc.ssl_server_certificate_configuration([(key, chain)],
                                                             root_certificates=ca)

        def fetch():
            try:
                stamp = self.stamp()
                if stamp == seen[0]:
                    return None
                fresh = configuration(*self.read())
            except (OSError, ValueError) as error:  # mid-rotation: keep the old ones
                log.warning("TLS files not reloaded", extra={"error": str(error)})
                return None
            seen[0] = stamp
            log.info("TLS certificate reloaded", extra={"cert": str(self.cert)})
            return fresh

        return grpc.dynamic_ssl_server_credentials(
            configuration(ca, chain, key), fetch, require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        self._warn_if_exposed()
        ca, chain, key = self.read()
        return grpc.ssl_channel_credentials(ca, key, chain)



def from_parsed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tls | None:
    """The TLS files of parsed flags (config.add_tls_flags); a usage error, in one line,
    when they are incomplete or unreadable."""
    try:
        return Tls.from_args(args)
    except ValueError as error:
        parser.error(str(error))
