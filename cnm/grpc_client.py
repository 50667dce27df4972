"""Client-side helpers: channels with sane defaults, over mutual TLS when given, and the
deadline a server hands down to the calls it makes for a request."""

from __future__ import annotations

import contextvars
import time

import grpc

from cnm.tls import Tls

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's reconnect backoff grows to 120 s: a peer back after a restart would then
    # be refused for minutes. Retried at most every 2 s, it is used within 2 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
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


# When the request being served must be answered by (time.monotonic()), set by the
# server interceptor from the caller's deadline; None: the caller gave none.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("cnm_deadline",
                                                                         default=None)


def set_deadline(remaining: float | None) -> None:
    """The request being served must be answered within ``remaining`` seconds."""
    _deadline.set(None if remaining is None else time.monotonic() + remaining)


def budget(timeout: float) -> float:
    """A downstream call's timeout: ``timeout``, cut to what is left of the deadline of
    the request being served (every hop within its caller's deadline)."""
    deadline = _deadline.get()
    return timeout if deadline is None else min(timeout, deadline - time.monotonic())


def transport_failure(error: grpc.RpcError) -> bool:
    """UNAVAILABLE from the transport (no connection, reset), not an answer of the peer:
    cnm's own UNAVAILABLE errors carry a status detail."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and not any(
        key == "grpc-status-details-bin" for key, _ in error.trailing_metadata() or ())
