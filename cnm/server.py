"""Server bootstrap shared by the three services.

Every cnm server is a ``grpc.aio`` server with the same furniture: the
error-mapping and logging interceptor, the standard health service (driven
by a readiness probe the service supplies), server reflection, and a
graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cnm import errors
from cnm.tls import Tls

log = logging.getLogger("cnm.server")

ReadinessProbe = Callable[[], Awaitable[bool]]


class ErrorAndLogInterceptor(grpc.aio.ServerInterceptor):
    """Maps CnmError to a gRPC status and logs one line per unary request."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
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
        logger = self.logger
        # Probes call Health/Check every few seconds; their lines would drown the rest.
        level = logging.DEBUG if method.startswith("/grpc.health.") else logging.INFO

        async def unary_unary(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            failure: errors.CnmError | None = None
            try:
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
                if failure is not None:
                    fields["error"] = failure.message
                    fields["reason"] = failure.reason
                logger.log(level, "request", extra=fields)
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

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
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
) -> Server:
    """Starts a server on ``listen`` with ``services`` (add function, servicer, full name).

    Health reports NOT_SERVING until ``readiness`` first returns True, and is
    re-evaluated every ``readiness_interval`` seconds afterwards.
    """
    server = grpc.aio.server(
        interceptors=[ErrorAndLogInterceptor(logger)],
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
    try:
        port = (server.add_insecure_port(listen) if tls is None
                else server.add_secure_port(listen, tls.server_credentials()))
    except RuntimeError as error:
        await server.stop(None)
        raise errors.Unavailable(
            f"cannot listen on {listen}: address in use or not valid", listen=listen
        ) from error
    running = Server(server=server, port=port, health=health_servicer, service_names=names)
    await running.set_serving(False)
    await server.start()
    bound = listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"
    logger.info("listening", extra={"address": bound})

    async def watch_readiness() -> None:
        serving = None
        while True:
            try:
                ready = await readiness()
            except Exception:  # noqa: BLE001 - a failing probe means not ready
                ready = False
            if ready != serving:
                serving = ready
                await running.set_serving(ready)
                logger.info("health", extra={"serving": ready})
            await asyncio.sleep(readiness_interval)

    running._tasks.append(asyncio.create_task(watch_readiness()))
    return running


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
