"""Client-side helpers: channels with sane defaults, over mutual TLS when given."""

from __future__ import annotations

import grpc

from cnm.tls import Tls

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
]


def tls_options(address: str) -> list[tuple[str, object]]:
    """Channel options for TLS to ``address``: a unix socket's server is checked against
    the name ``localhost`` (gRPC would check the socket's path)."""
    if address.startswith("unix:"):
        return [("grpc.ssl_target_name_override", "localhost")]
    return []


def aio_channel(address: str, tls: Tls | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, tls.channel_credentials(),
                                   options=CHANNEL_OPTIONS + tls_options(address))


def channel(address: str, tls: Tls | None = None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.channel_credentials(),
                               options=CHANNEL_OPTIONS + tls_options(address))
