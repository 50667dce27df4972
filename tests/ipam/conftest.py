from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnm.ipam.v1 import ipam_pb2_grpc
from ipam_service.service import serve


@dataclass
class Ipam:
    address: str
    stub: ipam_pb2_grpc.IpamServiceStub
    health: health_pb2_grpc.HealthStub


async def health_status(health: health_pb2_grpc.HealthStub) -> int:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return reply.status


async def wait_health(health: health_pb2_grpc.HealthStub, status: int, timeout: float = 15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while (current := await health_status(health)) != status:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"health stayed {current}, want {status}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def start_ipam():
    """Starts in-process IPAM servers on port 0; all stopped at the end."""
    started = []

    async def start(redis_url: str, wait_serving: bool = True) -> Ipam:
        server = await serve("127.0.0.1:0", redis_url, logging.getLogger("ipam-test"))
        address = f"127.0.0.1:{server.port}"
        channel = grpc.aio.insecure_channel(address)
        started.append((server, channel))
        ipam = Ipam(
            address, ipam_pb2_grpc.IpamServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        )
        if wait_serving:
            await wait_health(ipam.health, health_pb2.HealthCheckResponse.SERVING)
        return ipam

    yield start
    for server, channel in reversed(started):
        await channel.close()
        await server.stop(grace=0.5)


@pytest.fixture
async def ipam(redis_url, start_ipam) -> Ipam:
    return await start_ipam(redis_url)
