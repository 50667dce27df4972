"""The shared server furniture: error mapping, health, reflection, logging."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cnm import errors, server

SERVICE = "cnm.test.v1.ProbeService"


def _probe_handlers(behaviour):
    async def call(request: bytes, context) -> bytes:
        return await behaviour(request)

    handler = grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=lambda b: b, response_serializer=lambda b: b
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Call": handler})


async def _start(behaviour, readiness):
    def add(servicer, grpc_server):
        grpc_server.add_generic_rpc_handlers((_probe_handlers(behaviour),))

    return await server.start(
        listen="127.0.0.1:0",
        services=[(add, None, SERVICE)],
        logger=logging.getLogger("test"),
        readiness=readiness,
        readiness_interval=0.05,
    )


async def _call(port: int, payload: bytes) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(f"/{SERVICE}/Call")
        return await method(payload, timeout=5)


async def _always_ready() -> bool:
    return True


async def test_domain_error_becomes_status_with_error_info():
    async def fail(_request):
        raise errors.ResourceExhausted("pool 'p1' is full", reason="POOL_EXHAUSTED", pool="p1")

    running = await _start(fail, _always_ready)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(running.port, b"x")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "pool 'p1' is full"
        converted = errors.from_rpc_error(caught.value)
        assert isinstance(converted, errors.ResourceExhausted)
        assert converted.reason == "POOL_EXHAUSTED"
        assert converted.metadata == {"pool": "p1"}
    finally:
        await running.stop(0)


async def test_unexpected_exception_is_internal_and_success_passes_through(caplog):
    async def behave(request):
        if request == b"boom":
            raise ValueError("bad thing")
        return request.upper()

    caplog.set_level(logging.INFO, logger="test")
    running = await _start(behave, _always_ready)
    try:
        assert await _call(running.port, b"ok") == b"OK"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(running.port, b"boom")
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "ValueError: bad thing" in caught.value.details()
        request_lines = [r for r in caplog.records if r.getMessage() == "request"]
        assert [r.code for r in request_lines] == ["OK", "INTERNAL"]
        assert all(r.method == f"/{SERVICE}/Call" for r in request_lines)
    finally:
        await running.stop(0)


async def test_health_follows_readiness_and_reflection_lists_services():
    ready = asyncio.Event()

    async def readiness() -> bool:
        return ready.is_set()

    async def echo(request):
        return request

    running = await _start(echo, readiness)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready.set()
            for _ in range(100):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = set()
            async for reply in replies:
                names |= {s.name for s in reply.list_services_response.service}
            assert {SERVICE, "grpc.health.v1.Health"} <= names
    finally:
        await running.stop(0)


def test_from_rpc_error_without_details_maps_by_code():
    class FakeError(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

        def trailing_metadata(self):
            return ()

    converted = errors.from_rpc_error(FakeError())
    assert isinstance(converted, errors.Unavailable)
    assert converted.message == "connection refused"


async def test_stop_waits_for_the_readiness_task():
    started = asyncio.Event()

    async def slow_probe() -> bool:
        started.set()
        await asyncio.sleep(3600)
        return True

    async def echo(request: bytes) -> bytes:
        return request

    running = await _start(echo, slow_probe)
    await started.wait()
    tasks = list(running._tasks)
    await running.stop(0)
    assert tasks and all(task.done() for task in tasks)


@pytest.mark.parametrize("module", ["ipam_service", "orchestrator"])
def test_a_busy_listen_address_is_one_log_line_and_exit_1(module):
    import socket
    import subprocess

    from tests import support

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [support.PYTHON, "-m", module, "--listen", f"127.0.0.1:{port}",
             "--redis-url", "redis://127.0.0.1:1/0"],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "GRPC_ENABLE_FORK_SUPPORT": "0",
                 "GRPC_VERBOSITY": "NONE"},
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "cannot listen on 127.0.0.1:" in done.stderr + done.stdout


async def _ready() -> bool:
    return True


async def test_a_unix_socket_is_for_its_owner_alone_unless_a_group_is_given(tmp_path):
    for group, mode in (("", 0o600), (grp.getgrgid(os.getgid()).gr_name, 0o660)):
        path = tmp_path / f"server-{mode:o}.sock"
        running = await server.start(listen=f"unix:{path}", services=[],
                                     logger=logging.getLogger("test"), readiness=_ready,
                                     socket_group=group)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
        finally:
            await running.stop(0)


@pytest.mark.parametrize(("listen", "refused"), [
    ("127.0.0.1:0", False), ("[::1]:0", False), ("localhost:0", False), ("unix:/x.sock", False),
    ("0.0.0.0:0", True), ("[::]:0", True), ("10.1.2.3:50051", True), ("example.org:1", True),
    ("127.0.0.1:0,unix:/x.sock", False), ("unix:/x.sock,0.0.0.0:0", True),
])
def test_plaintext_listens_beyond_loopback_only_when_told_insecure(listen, refused):
    if refused:
        with pytest.raises(ValueError, match="--insecure"):
            server.check_listen(listen, None, insecure=False)
    else:
        server.check_listen(listen, None, insecure=False)
    server.check_listen(listen, None, insecure=True)


async def test_it_listens_on_every_address_of_a_comma_separated_list(tmp_path):
    """A port for remote clients and a unix socket for this host's agent, one server."""
    path = tmp_path / "both.sock"
    running = await server.start(listen=f"127.0.0.1:0, unix:{path}", services=[],
                                 logger=logging.getLogger("test"), readiness=_ready)
    try:
        for address in (f"127.0.0.1:{running.port}", f"unix:{path}"):
            async with grpc.aio.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        await running.stop(0)
    with pytest.raises(ValueError, match="empty address"):
        server.check_listen("127.0.0.1:0,", None, insecure=False)


@pytest.mark.parametrize("abstract", [False, True])
async def test_systemd_hears_ready_once_serving_and_stopping_at_the_end(
        monkeypatch, tmp_path, abstract):
    """Type=notify (deploy/systemd): READY=1 when health first says SERVING, not before;
    STOPPING=1 at stop. With $NOTIFY_SOCKET a path, or '@' and an abstract name."""
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"cnmt-notify-{os.getpid()}-{abstract}"
    if abstract:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        listener.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    listener.setblocking(False)
    ready = asyncio.Event()

    async def readiness() -> bool:
        return ready.is_set()

    async def heard(timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(listener, 64),
                                      timeout)

    async def echo(request):
        return request

    running = await _start(echo, readiness)
    try:
        with pytest.raises(TimeoutError):
            await heard(0.3)  # not ready yet: nothing said
        ready.set()
        assert await heard() == b"READY=1"
    finally:
        await running.stop(0)
    assert await heard() == b"STOPPING=1"
    listener.close()
