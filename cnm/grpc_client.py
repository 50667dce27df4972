"""Client-side helpers: channels with sane defaults, over mutual TLS when given, and the
deadline a server hands down to the calls it makes for a request."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import grpc

from cnm import errors, tracing
from cnm.tls import Tls

log = logging.getLogger("cnm.grpc_client")

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's reconnect backoff grows to 120 s: a peer back after a restart would then
    # be refused for minutes. Retried at most every 2 s, it is used within 2 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


# gRPC ends a call at its deadline. Should it ever not, the event loop cancels the call
# this many seconds later, so that no caller waits on a peer beyond its budget.
DEADLINE_GRACE = 0.5


def deadline_guard(timeout: float) -> asyncio.Timeout:
    """A context that cancels the call awaited in it (TimeoutError) if it has not ended
    :data:`DEADLINE_GRACE` after its deadline, ``timeout`` seconds from now."""
    return asyncio.timeout(timeout + DEADLINE_GRACE)


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


class RenewingChannel:
    """A long-lived aio channel and its stub that follow their TLS files: at the first use
    after the certificate, key or CA changed on disk, a new channel is opened with them;
    the old one is closed after a grace period, so calls under way finish. Certificate
    rotation thus needs no restart of a client either."""

    # Looking costs three stat() calls (some 10 us). Looked at every use: a call made on
    # the old channel after a server moved to a new CA would wait out its whole deadline.
    CHECK_EVERY = 0.0
    GRACE = 30.0

    def __init__(self, address: str, tls: Tls | None, stub_class) -> None:
        self.address, self.tls, self.stub_class = address, tls, stub_class
        self._retired: set[asyncio.Task] = set()
        self._open()

    def _open(self) -> None:
        # The stamp before the files are read: files replaced while they are read (a
        # rotation copying one file after another) then differ from it at the next
        # look, and are read again, instead of being taken as already in use.
        stamp = self.tls.stamp() if self.tls is not None else None
        self.channel = aio_channel(self.address, self.tls)
        self._stub = self.stub_class(self.channel)
        self._stamp = stamp
        self._checked = time.monotonic()

    @property
    def stub(self):
        if self.tls is not None and time.monotonic() - self._checked >= self.CHECK_EVERY:
            self._checked = time.monotonic()
            try:
                changed = self.tls.stamp() != self._stamp
                if changed:
                    old = self.channel
                    self._open()
                    self._retire(old)
                    log.info("TLS files changed: new channel", extra={"address": self.address})
            except (OSError, ValueError) as error:  # mid-rotation: keep the old channel
                log.warning("TLS files not reloaded", extra={"error": str(error)})
        return self._stub

    async def call(self, method: str, request, timeout: float):
        """One unary call of the stub's ``method`` on behalf of the request being served
        (its trace id passed on), waiting for the channel within ``timeout``: a peer just
        (re)started is used as soon as it listens, not after gRPC's reconnect backoff.
        A failure comes back as the CnmError the peer answered."""
        try:
            async with deadline_guard(timeout):
                return await getattr(self.stub, method)(
                    request, timeout=timeout, wait_for_ready=True, metadata=tracing.outgoing())
        except TimeoutError:
            raise errors.Unavailable(f"{method}: no answer within {timeout:g}s") from None
        except grpc.aio.AioRpcError as error:
            raise errors.from_rpc_error(error) from None

    def _retire(self, channel: grpc.aio.Channel) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(self.GRACE)
            finally:
                await channel.close()

        task = asyncio.ensure_future(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self.channel.close()


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
    return error.code() == grpc.StatusCode.UNAVAILABLE and not errors.answered_by_peer(error)
