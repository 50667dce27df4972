"""Server bootstrap shared by the three services.

Every cnm server is a ``grpc.aio`` server with the same furniture: the
interceptor that authorizes each call (with TLS, against the service's
cnm.authz policy), maps errors and logs one line per request with the
caller's identity (written just after the reply is sent); the standard
health service (driven by a readiness probe the service supplies); server
reflection; and a graceful shutdown on SIGTERM/SIGINT.

Safe defaults: without TLS a server listens only on loopback or a unix
socket unless told ``--insecure``; unix sockets are created mode 0600 (0660
with ``--socket-group``).
"""

from __future__ import annotations

import asyncio
import functools
import grp
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cnm import authz, errors, grpc_client, metrics, otel, sdnotify, tracing
from cnm.tls import Tls

log = logging.getLogger("cnm.server")

ReadinessProbe = Callable[[], Awaitable[bool]]


class ErrorAndLogInterceptor(grpc.aio.ServerInterceptor):
    """Authorizes each unary request against ``policy`` (None: no TLS, no identities),
    maps CnmError to a gRPC status and logs one line per request, naming its caller."""

    def __init__(self, logger: logging.Logger, policy: authz.Policy | None = None) -> None:
        self.logger = logger
        self.policy = policy
        # grpc.aio asks for the handler on every call; wrapping is done once per method.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        logger, policy = self.logger, self.policy
        # Probes call Health/Check every few seconds; their lines would drown the rest.
        level = logging.DEBUG if method.startswith("/grpc.health.") else logging.INFO

        async def unary_unary(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            failure: errors.CnmError | None = None
            caller = None
            # Downstream calls made for this request share its deadline (grpc_client.budget)
            # and its trace id (tracing: every log line of the request carries it).
            grpc_client.set_deadline(context.time_remaining())
            tracing.begin(context.invocation_metadata())
            span = otel.start(method)
            try:
                if policy is not None:
                    caller = authz.identity_of(context)
                    authz.set_caller(caller)
                    policy.check(method, request, caller)
                return await inner(request, context)
            except errors.CnmError as error:
                code, failure = error.code, error
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                if isinstance(error, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                logger.exception("unhandled error", extra={"method": method})
                code = grpc.StatusCode.INTERNAL
                failure = errors.Internal(f"internal error: {type(error).__name__}: {error}")
            finally:
                fields = {
                    "method": method,
                    "code": code.name,
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                    "peer": context.peer(),
                }
                if caller is not None:
                    fields["caller"] = str(caller)
                if failure is not None:
                    fields["error"] = failure.message
                    fields["reason"] = failure.reason
                # Written once the reply is on its way, not while the caller waits for it:
                # the line costs 0.05-0.07 ms, a tenth of a call that does nothing.
                asyncio.get_running_loop().call_soon(
                    functools.partial(logger.log, level, "request", extra=fields))
                metrics.observe(method, code.name, time.perf_counter() - started)
                otel.end(span, code)
            await context.abort_with_status(errors.to_grpc_status(failure))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Server:
    """A running cnm server; ``port`` is the bound port (useful with port 0)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    _tasks: list[asyncio.Task] = field(default_factory=list)
    notified: bool = False  # READY=1 was sent to systemd

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        sdnotify.notify("STOPPING=1")
        await self.set_serving(False)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.server.stop(grace)


async def start(
    *,
    listen: str,
    services: Iterable[tuple[Callable[[object, grpc.aio.Server], None], object, str]],
    logger: logging.Logger,
    readiness: ReadinessProbe,
    readiness_interval: float = 1.0,
    tls: Tls | None = None,
    policy: authz.Policy | None = None,
    insecure: bool = False,
    socket_group: str = "",
    metrics_listen: str = "",
    otlp_endpoint: str = "",
    service: str = "",
) -> Server:
    """Starts a server on ``listen`` with ``services`` (add function, servicer, full name).

    With ``tls`` every call is authorized against ``policy``. Without it,
    ``listen`` must be loopback or a unix socket unless ``insecure`` (then a
    warning is logged). Health reports NOT_SERVING until ``readiness`` first
    returns True, and is re-evaluated every ``readiness_interval`` seconds
    afterwards.
    """
    addresses = listen_addresses(listen)
    check_listen(listen, tls, insecure)
    try:
        metrics.serve(metrics_listen, tls)
        otel.setup(otlp_endpoint, service)
    except ValueError as error:
        raise errors.InvalidArgument(str(error), reason="INVALID_ARGUMENT") from None
    for address in addresses:
        if tls is None and insecure and not is_local(address):
            logger.warning("listening without TLS beyond this machine: anyone who reaches "
                           "the port may call every RPC", extra={"address": address})
    server = grpc.aio.server(
        interceptors=[ErrorAndLogInterceptor(logger, policy if tls is not None else None)],
        options=[("grpc.so_reuseport", 0)],
    )
    names = []
    for add, servicer, full_name in services:
        add(servicer, server)
        names.append(full_name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    # A unix socket is born 0600: no window in which another user could connect.
    umask = os.umask(0o177) if any(a.startswith("unix:") for a in addresses) else None
    ports = []
    try:
        for address in addresses:
            try:
                ports.append(server.add_insecure_port(address) if tls is None
                             else server.add_secure_port(address, tls.server_credentials()))
            except RuntimeError as error:
                raise errors.Unavailable(f"cannot listen on {address}: address in use or not "
                                         "valid", listen=address) from error
        running = Server(server=server, port=ports[0], health=health_servicer,
                         service_names=names)
        await running.set_serving(False)
        try:
            await server.start()
        except RuntimeError as error:
            raise errors.Unavailable(f"cannot listen on {listen}: address in use or not "
                                     "valid", listen=listen) from error
    except errors.Unavailable:
        await server.stop(None)
        raise
    finally:
        if umask is not None:
            os.umask(umask)
    for address, port in zip(addresses, ports):
        if address.startswith("unix:") and socket_group:
            path = address.removeprefix("unix:").removeprefix("//")
            os.chown(path, -1, grp.getgrnam(socket_group).gr_gid)
            os.chmod(path, 0o660)
        bound = address if address.startswith("unix:") else \
            f"{address.rsplit(':', 1)[0]}:{port}"
        logger.info("listening", extra={"address": bound})

    async def watch_readiness() -> None:
        serving = None
        while True:
            try:
                ready = await readiness()
            except Exception:  # noqa: BLE001 - a failing probe means not ready
                ready = False
            if ready != serving:
                if ready and not running.notified:
                    running.notified = sdnotify.notify("READY=1")  # systemd: Type=notify
                serving = ready
                await running.set_serving(ready)
                logger.info("health", extra={"serving": ready})
            await asyncio.sleep(readiness_interval)

    running._tasks.append(asyncio.create_task(watch_readiness()))
    return running


def is_local(listen: str) -> bool:
    """Whether ``listen`` (host:port or unix:path) is reachable from this machine only."""
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_addresses(listen: str) -> list[str]:
    """The addresses of a --listen value: one, or several separated by commas (e.g. a
    port for remote clients and a unix socket for the agent of this host)."""
    addresses = [address.strip() for address in listen.split(",")]
    if not all(addresses):
        raise ValueError(f"--listen {listen!r}: an empty address")
    return addresses


def check_listen(listen: str, tls: Tls | None, insecure: bool) -> None:
    """ValueError (a configuration error) for plaintext beyond loopback without --insecure."""
    for address in listen_addresses(listen):
        if tls is None and not insecure and not is_local(address):
            raise ValueError(
                f"refusing to listen on {address} without TLS: give --tls-ca/--tls-cert/"
                f"--tls-key (see `cnm pki`), listen on loopback or a unix socket, or accept "
                f"the risk with --insecure (env CNM_INSECURE=1)")


def check_args(parser, args) -> None:
    """The listen flags of parsed args (config.add_server_flags, args.tls set) checked at
    start-up: a usage error, in one line, for plaintext beyond loopback or an unknown group."""
    try:
        check_listen(args.listen, args.tls, args.insecure)
    except ValueError as error:
        parser.error(str(error))
    if args.socket_group:
        try:
            grp.getgrnam(args.socket_group)
        except KeyError:
            parser.error(f"--socket-group: no group {args.socket_group!r}")


async def run_until_signalled(running: Server, logger: logging.Logger, grace: float = 5.0) -> None:
    """Waits for SIGTERM or SIGINT, then stops ``running`` gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping", extra={"grace_seconds": grace})
    await running.stop(grace)
    logger.info("stopped")
