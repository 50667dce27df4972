"""`python -m cnm.healthcheck`, the compose health check, against a real cnm server."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from cnm import healthcheck, pki, server
from cnm.tls import Tls
from tests import support


async def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNM_TLS_")}
    process = await asyncio.create_subprocess_exec(
        support.PYTHON, "-m", "cnm.healthcheck", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=support.REPO,
        env={**clean, **(env or {})},
    )
    output, _ = await process.communicate()
    return process.returncode, output.decode()


async def healthy_soon(address: str, timeout: float = 10.0) -> tuple[int, str]:
    """The health check's result once it passes, or its last failure after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        code, output = await run_healthcheck(address)
        if code == 0 or asyncio.get_running_loop().time() > deadline:
            return code, output
        await asyncio.sleep(0.05)


async def test_exit_status_follows_the_health_service():
    ready = asyncio.Event()

    async def readiness() -> bool:
        return ready.is_set()

    running = await server.start(
        listen="0.0.0.0:0", services=[], logger=logging.getLogger("test"), insecure=True,
        readiness=readiness, readiness_interval=0.05,
    )
    try:
        code, output = await run_healthcheck(f"127.0.0.1:{running.port}")
        assert code == 1 and "NOT_SERVING" in output

        ready.set()
        code, output = await healthy_soon(f"127.0.0.1:{running.port}")
        assert code == 0, output
        # The listen address as configured: a wildcard host is checked on loopback.
        code, output = await run_healthcheck(f"0.0.0.0:{running.port}")
        assert (code, output.strip()) == (0, f"127.0.0.1:{running.port} SERVING")
        code, output = await run_healthcheck(
            f"127.0.0.1:{running.port}", "--service", "cnm.unknown.v1.NoService"
        )
        assert code == 1 and "NOT_FOUND" in output
    finally:
        await running.stop(0)

    # Nothing listening any more.
    code, output = await run_healthcheck(f"127.0.0.1:{running.port}", "--timeout", "1")
    assert code == 1 and "UNAVAILABLE" in output


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("127.0.0.1:50052", "127.0.0.1:50052"),
        ("10.0.0.1:50051", "10.0.0.1:50051"),
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        (":50051", "127.0.0.1:50051"),
        ("[::]:50053", "[::1]:50053"),
        ("[fd00::1]:50053", "[fd00::1]:50053"),
        ("unix:/run/cnm/agent.sock", "unix:/run/cnm/agent.sock"),
    ],
)
def test_dial_address(listen, dial):
    assert healthcheck.dial_address(listen) == dial


@pytest.mark.parametrize("listen", ["50051", "host:", "host:port", ""])
def test_dial_address_rejects_what_is_not_host_port(listen):
    with pytest.raises(ValueError, match="not HOST:PORT"):
        healthcheck.dial_address(listen)


async def test_unix_socket_listen_address(tmp_path):
    async def readiness() -> bool:
        return True

    socket_path = tmp_path / "agent.sock"
    running = await server.start(
        listen=f"unix:{socket_path}", services=[], logger=logging.getLogger("test"),
        readiness=readiness, readiness_interval=0.05,
    )
    try:
        code, output = await healthy_soon(f"unix:{socket_path}")
        assert code == 0, output
    finally:
        await running.stop(0)


async def test_over_mutual_tls_with_the_services_own_certificate(tmp_path):
    async def readiness() -> bool:
        return True

    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "ipam", "ipam", sans=("127.0.0.1",))
    files = Tls(tmp_path / "ca.crt", tmp_path / "ipam.crt", tmp_path / "ipam.key")
    running = await server.start(
        listen="127.0.0.1:0", services=[], logger=logging.getLogger("test"),
        readiness=readiness, readiness_interval=0.05, tls=files,
    )
    address = f"127.0.0.1:{running.port}"
    try:
        code, output = await run_healthcheck(address)  # plaintext: refused
        assert code == 1 and "UNAVAILABLE" in output
        env = {"CNM_TLS_CA": str(files.ca), "CNM_TLS_CERT": str(files.cert),
               "CNM_TLS_KEY": str(files.key)}
        deadline = asyncio.get_running_loop().time() + 10
        while (code := (await run_healthcheck(address, env=env))[0]) != 0 \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert code == 0
    finally:
        await running.stop(0)
