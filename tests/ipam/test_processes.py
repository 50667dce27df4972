"""Real `python -m ipam_service` processes sharing one real Redis: races, crashes."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools

import grpc
import pytest

from cnm import pagination
from cnm.ipam.v1 import ipam_pb2 as pb
from cnm.ipam.v1 import ipam_pb2_grpc
from tests import support
from tests.ipam.consistency import check_pool


class IpamProcess:
    """One IPAM server process on a fixed port, restartable."""

    def __init__(self, redis_url: str, log_dir, name: str):
        self.redis_url = redis_url
        self.log_path = log_dir / f"{name}.log"
        self.port = support.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: support.Process | None = None

    async def start(self) -> IpamProcess:
        self.process = support.Process(
            [
                support.PYTHON,
                "-m",
                "ipam_service",
                "--listen",
                self.address,
                "--redis-url",
                self.redis_url,
                "--log-level",
                "WARNING",
            ],
            log_path=self.log_path,
        )
        try:
            await asyncio.to_thread(support.wait_serving, self.address, 30)
        except TimeoutError:
            raise AssertionError(f"IPAM did not start:\n{self.process.log_tail()}") from None
        return self

    def kill9(self) -> None:
        self.process.kill9()

    def stop(self) -> None:
        if self.process:
            self.process.stop()


@pytest.fixture
async def processes(redis_url, tmp_path):
    started: list[IpamProcess] = []
    channels: list[grpc.aio.Channel] = []

    async def start(count: int) -> list[tuple[IpamProcess, ipam_pb2_grpc.IpamServiceStub]]:
        made = [IpamProcess(redis_url, tmp_path, f"ipam{i}") for i in range(count)]
        started.extend(made)
        await asyncio.gather(*(p.start() for p in made))
        pairs = []
        for process in made:
            channel = grpc.aio.insecure_channel(process.address)
            channels.append(channel)
            pairs.append((process, ipam_pb2_grpc.IpamServiceStub(channel)))
        return pairs

    yield start
    for channel in channels:
        await channel.close()
    for process in started:
        process.stop()


async def test_two_processes_fill_a_pool_to_exactly_its_capacity(processes, redis_url):
    (_, first), (_, second) = await processes(2)
    # The range holds neither network, broadcast nor gateway: capacity is exactly 2048.
    await first.CreatePool(
        pb.CreatePoolRequest(
            pool=pb.Pool(pool_id="big", subnet="10.60.0.0/19", ip_range="10.60.8.0/21")
        )
    )
    owners = iter([f"ep{i}" for i in range(2300)])
    granted: dict[str, str] = {}
    exhausted: list[str] = []

    async def client(stub: ipam_pb2_grpc.IpamServiceStub) -> None:
        for owner in owners:
            try:
                reply = await stub.AllocateAddress(
                    pb.AllocateAddressRequest(pool_id="big", owner=owner), timeout=30
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                exhausted.append(owner)
            else:
                granted[owner] = reply.address

    await asyncio.gather(
        *(client(stub) for stub in itertools.islice(itertools.cycle([first, second]), 32))
    )
    assert len(granted) == 2048
    assert len(set(granted.values())) == 2048
    assert len(exhausted) == 2300 - 2048
    ip_range = ipaddress.ip_network("10.60.8.0/21")
    assert all(ipaddress.ip_address(address) in ip_range for address in granted.values())
    holders = check_pool(redis_url, "big")
    assert holders == {**{a: o for o, a in granted.items()}, "10.60.0.1": "cnm:gateway"}
    usage = (await second.GetPool(pb.GetPoolRequest(pool_id="big"))).pool.usage
    assert (usage.allocated, usage.free) == (2049, 0)


async def test_kill9_mid_load_loses_no_completed_allocation(processes, redis_url):
    (victim, victim_stub), (_, survivor) = await processes(2)
    await survivor.CreatePool(
        pb.CreatePoolRequest(pool=pb.Pool(pool_id="crash", subnet="10.61.0.0/20"))
    )
    completed: dict[str, str] = {}
    uncertain: list[str] = []
    counter = itertools.count()
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            owner = f"ep{next(counter)}"
            try:
                reply = await victim_stub.AllocateAddress(
                    pb.AllocateAddressRequest(pool_id="crash", owner=owner), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL,
                ), error.details()
                uncertain.append(owner)
                await asyncio.sleep(0.02)
            else:
                completed[owner] = reply.address

    async def until_completed(count: int) -> None:
        async with asyncio.timeout(60):
            while len(completed) < count:
                await asyncio.sleep(0.05)

    clients = [asyncio.create_task(client()) for _ in range(16)]
    await until_completed(300)
    victim.kill9()
    killed_at = len(completed)
    await asyncio.sleep(0.3)
    await victim.start()
    await until_completed(killed_at + 300)
    stop.set()
    await asyncio.gather(*clients)
    assert uncertain, "the kill did not interrupt any request"

    listed = await pagination.fetch_all_async(
        survivor.ListAllocations, pb.ListAllocationsRequest(pool_id="crash"), "allocations")
    held = {a.owner: a.address for a in listed}
    for owner, address in completed.items():
        assert held[owner] == address
    # A retried request gets whatever its first attempt took, never a second address.
    for owner in uncertain:
        reply = await survivor.AllocateAddress(
            pb.AllocateAddressRequest(pool_id="crash", owner=owner)
        )
        if owner in held:
            assert reply.address == held[owner] and not reply.newly_allocated
    holders = check_pool(redis_url, "crash")
    assert len(holders) == len(completed) + len(uncertain) + 1


async def test_configured_by_environment_and_stops_on_sigterm(redis_url, tmp_path):
    address = f"127.0.0.1:{support.free_port()}"
    process = support.Process(
        [support.PYTHON, "-m", "ipam_service"],
        env={"CNM_IPAM_LISTEN": address, "CNM_REDIS_URL": redis_url, "CNM_LOG_LEVEL": "INFO"},
        log_path=tmp_path / "ipam.log",
    )
    try:
        await asyncio.to_thread(support.wait_serving, address, 30)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            await stub.CreatePool(
                pb.CreatePoolRequest(pool=pb.Pool(pool_id="env", subnet="10.62.0.0/24"))
            )
    finally:
        assert process.stop() == 0
    log = process.log_path.read_text()
    assert '"method": "/cnm.ipam.v1.IpamService/CreatePool", "code": "OK"' in log
