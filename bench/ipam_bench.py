"""IPAM speed figures: gRPC allocation rate and latency, fill independence, batch rate,
and the raw Redis ceiling of the same Lua script.

    .venv/bin/python bench/ipam_bench.py [--clients 16] [--requests 15000]

Starts its own redis-server on a free loopback port, two IPAM server
processes and two no-op gRPC server processes (this script with --serve-noop:
the same cnm.server furniture and interceptor around a handler that does
nothing, i.e. the floor grpc.aio sets on this machine; and one whose handler
awaits one Redis PING through the IPAM's Redis client set-up, the floor for a
call that makes one Redis round trip, as an allocation must), and stops them
all by PID. The clients are asyncio tasks in this process, so client and
server work run on different cores. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnm import redis_client
from cnm import server as cnm_server
from cnm.ipam.v1 import ipam_pb2 as pb
from cnm.ipam.v1 import ipam_pb2_grpc
from ipam_service import lua
from ipam_service.service import SERVICE_NAME
from ipam_service.store import pool_keys
from tests import support

SLASH16_CAPACITY = 65533  # 65536 minus network, broadcast and gateway


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    """Allocations from concurrent clients: elapsed time, latencies, server CPU."""

    def __init__(self) -> None:
        self.count = 0
        self.elapsed = 0.0
        self.latencies: list[float] = []
        self.server_cpu = 0.0

    async def add(self, stubs, pids: list[int], pool_id: str, owners: list[str], clients: int):
        queue = iter(owners)

        async def client(stub) -> None:
            for owner in queue:
                started = time.perf_counter()
                await stub.AllocateAddress(pb.AllocateAddressRequest(pool_id=pool_id, owner=owner))
                self.latencies.append((time.perf_counter() - started) * 1000)

        cpu_before = sum(map(cpu_seconds, pids))
        started = time.perf_counter()
        await asyncio.gather(
            *(client(stub) for stub in itertools.islice(itertools.cycle(stubs), clients))
        )
        self.elapsed += time.perf_counter() - started
        self.server_cpu += sum(map(cpu_seconds, pids)) - cpu_before
        self.count += len(owners)
        return self

    @property
    def rate(self) -> float:
        return self.count / self.elapsed

    def line(self, label: str) -> str:
        latencies = sorted(self.latencies)
        return (
            f"{label:<44} {self.rate:7.0f}/s  p50 {percentile(latencies, 0.5):5.2f} ms  "
            f"p99 {percentile(latencies, 0.99):6.2f} ms  server CPU "
            f"{1e6 * self.server_cpu / self.count:4.0f} us/call"
        )


def raw_allocate_rate(client: redis.Redis, pool_id: str, prefix: str, count: int) -> float:
    """The ALLOCATE script by pipelined EVALSHA (500 deep): what Redis alone can do."""
    sha = client.script_load(lua.ALLOCATE)
    keys = pool_keys(pool_id)
    started = time.perf_counter()
    for base in range(0, count, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(base, min(count, base + 500)):
            pipe.evalsha(sha, len(keys), *keys, f"{prefix}{i}", "", "")
        for reply in pipe.execute():
            assert reply[0] == b"ok", reply
    return count / (time.perf_counter() - started)


def release_owners(client: redis.Redis, pool_id: str, owners: list[str]) -> None:
    sha = client.script_load(lua.RELEASE)
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        pipe.evalsha(sha, len(pool_keys(pool_id)), *pool_keys(pool_id), "owner", owner)
    pipe.execute()


def fill_to_90_percent(client: redis.Redis, pool_id: str, prefix: str, seed: int) -> None:
    """Fills a /16 completely, then frees a random tenth: 90% full and fragmented."""
    sha = client.script_load(lua.BATCH_ALLOCATE)
    pipe = client.pipeline(transaction=False)
    for base in range(0, SLASH16_CAPACITY, 4096):
        owners = [f"{prefix}{i}" for i in range(base, min(SLASH16_CAPACITY, base + 4096))]
        pipe.evalsha(sha, len(pool_keys(pool_id)), *pool_keys(pool_id), *owners)
    pipe.execute()
    freed = random.Random(seed).sample(range(SLASH16_CAPACITY), SLASH16_CAPACITY // 10)
    release_owners(client, pool_id, [f"{prefix}{i}" for i in freed])


def redis_usec_per_allocate(client: redis.Redis, pool_id: str, prefix: str, count: int) -> float:
    """Time spent inside Redis per ALLOCATE call, from Redis' own command stats."""
    client.config_resetstat()
    raw_allocate_rate(client, pool_id, prefix, count)
    usec = client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    release_owners(client, pool_id, [f"{prefix}{i}" for i in range(count)])
    return usec


class NoopIpam(ipam_pb2_grpc.IpamServiceServicer):
    """Answers at once; or, given a Redis client, after one PING through it (the IPAM's
    own client set-up, cnm.redis_client): what awaiting one Redis round trip costs."""

    def __init__(self, pinged=None) -> None:
        self.pinged = pinged

    async def AllocateAddress(self, request, context):
        if self.pinged is not None:
            await self.pinged.ping()
        return pb.AllocateAddressResponse(address="10.0.0.2", prefix_length=16, gateway="10.0.0.1")


async def serve_noop(address: str, redis_url: str = "") -> None:
    async def ready() -> bool:
        return True

    logging.basicConfig(level=logging.WARNING)
    servicer = NoopIpam(redis_client.connect(redis_url) if redis_url else None)
    running = await cnm_server.start(
        listen=address,
        services=[(ipam_pb2_grpc.add_IpamServiceServicer_to_server, servicer, SERVICE_NAME)],
        logger=logging.getLogger("noop"),
        readiness=ready,
    )
    await cnm_server.run_until_signalled(running, logging.getLogger("noop"))


async def bench(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ipam-bench-"))
    redis_server = support.RedisServer(workdir / "redis", appendonly=False).start()
    processes: list[support.Process] = []
    channels: list[grpc.aio.Channel] = []
    try:
        addresses = [f"127.0.0.1:{support.free_port()}" for _ in range(4)]
        for i, address in enumerate(addresses[:2]):
            processes.append(
                support.Process(
                    [
                        support.PYTHON,
                        "-m",
                        "ipam_service",
                        "--listen",
                        address,
                        "--redis-url",
                        redis_server.url,
                        "--log-level",
                        args.server_log_level,
                    ],
                    log_path=workdir / f"ipam{i}.log",
                )
            )
        processes.append(
            support.Process(
                [support.PYTHON, __file__, "--serve-noop", addresses[2]],
                log_path=workdir / "noop.log",
            )
        )
        processes.append(
            support.Process(
                [support.PYTHON, __file__, "--serve-noop", addresses[3],
                 "--noop-redis-url", redis_server.url],
                log_path=workdir / "noop-redis.log",
            )
        )
        for address in addresses:
            await asyncio.to_thread(support.wait_serving, address, 30)
        channels = [grpc.aio.insecure_channel(address) for address in addresses]
        stubs = [ipam_pb2_grpc.IpamServiceStub(channel) for channel in channels]
        one, two, noop, noop_redis = stubs[:1], stubs[:2], stubs[2:3], stubs[3:]
        pids = [process.pid for process in processes]
        client = redis.Redis.from_url(redis_server.url)
        print(
            f"setup: redis-server {client.info('server')['redis_version']}, {os.cpu_count()} "
            f"cores, load average {os.getloadavg()[0]:.2f} at start, {args.clients} concurrent "
            f"clients (asyncio tasks in the bench process), IPAM log level "
            f"{args.server_log_level}"
        )

        async def create(pool_id: str, subnet: str) -> None:
            await stubs[0].CreatePool(
                pb.CreatePoolRequest(pool=pb.Pool(pool_id=pool_id, subnet=subnet))
            )

        for pool_id, subnet in [
            ("warm", "10.200.0.0/16"),
            ("one", "10.1.0.0/16"),
            ("two", "10.2.0.0/16"),
            ("empty", "10.3.0.0/16"),
            ("full", "10.4.0.0/16"),
            ("batch", "10.5.0.0/16"),
            ("raw", "10.6.0.0/16"),
            ("raw-cost", "10.7.0.0/16"),
            ("v4-24", "10.8.0.0/24"),
            ("v6-empty", "fd00:64::/64"),
            ("v6-full", "fd00:65::/64"),
        ]:
            await create(pool_id, subnet)

        def owners(prefix: str, count: int) -> list[str]:
            return [f"{prefix}{i}" for i in range(count)]

        await Run().add(two, pids[:2], "warm", owners("w", 2000), args.clients)
        await Run().add(noop, pids[2:3], "noop", owners("w", 2000), args.clients)
        await Run().add(noop_redis, pids[3:], "noop", owners("w", 2000), args.clients)
        n = args.requests
        single = await Run().add(one, pids[:1], "one", owners("a", n), args.clients)
        print(single.line("gRPC AllocateAddress, 1 IPAM process"))
        double = await Run().add(two, pids[:2], "two", owners("b", n), args.clients)
        print(double.line("gRPC AllocateAddress, 2 IPAM processes"))
        floor = await Run().add(noop, pids[2:3], "noop", owners("c", n), args.clients)
        print(floor.line("no-op grpc.aio server (floor), 1 process"))
        with_redis = await Run().add(noop_redis, pids[3:], "noop", owners("d", n), args.clients)
        print(with_redis.line("no-op + one Redis PING per call, 1 process"))
        print(f"  IPAM (1 process) / no-op: {single.rate / floor.rate:.2f} by rate; "
              f"IPAM / no-op + PING: {single.rate / with_redis.rate:.2f}")
        print("  targets: >= 2000 allocs/s, p99 < 25 ms")

        # Fill independence: a fragmented /16 at 90% against an empty /16, in
        # alternating rounds (so load from elsewhere hits both alike); each
        # round's addresses are released again outside the timing.
        fill_to_90_percent(client, "full", "f", seed=1)
        empty, full = Run(), Run()
        rounds = 4
        per_round = min(n // rounds, 1500)
        for r in range(rounds):
            for run, pool_id in ((empty, "empty"), (full, "full")):
                batch = owners(f"r{r}-", per_round)
                await run.add(two, pids[:2], pool_id, batch, args.clients)
                release_owners(client, pool_id, batch)
        print(empty.line("gRPC AllocateAddress, empty /16 (2 procs)"))
        print(full.line("gRPC AllocateAddress, /16 at 90% (2 procs)"))
        print(f"  cost ratio 90%/empty: {empty.rate / full.rate:.2f}x by rate (target <= 1.2x)")
        fill_to_90_percent(client, "raw-cost", "f", seed=2)
        usec_full = redis_usec_per_allocate(client, "raw-cost", "x", 5000)
        usec_empty = redis_usec_per_allocate(client, "raw", "x", 5000)
        print(
            f"  inside Redis per ALLOCATE: empty /16 {usec_empty:.2f} us, /16 at 90% "
            f"{usec_full:.2f} us: {usec_full / usec_empty:.2f}x"
        )

        # A sparse /64 (no bitmap: ipam_service/pools.py) at 0% and after 100,000
        # allocations, against a /24 (a bitmap) at 0%, alternating rounds of what a /24
        # holds, each released again outside the timing.
        sha = client.script_load(lua.BATCH_ALLOCATE)
        pipe = client.pipeline(transaction=False)
        for base in range(0, args.v6_fill, 4096):
            batch = [f"fill{i}" for i in range(base, min(args.v6_fill, base + 4096))]
            pipe.evalsha(sha, len(pool_keys("v6-full")), *pool_keys("v6-full"), *batch)
        pipe.execute()
        runs = {"v4-24": Run(), "v6-empty": Run(), "v6-full": Run()}
        for r in range(12):
            for pool_id, run in runs.items():
                batch = owners(f"s{r}-", 250)
                await run.add(two, pids[:2], pool_id, batch, args.clients)
                release_owners(client, pool_id, batch)
        print(runs["v4-24"].line("gRPC AllocateAddress, /24 at 0% (2 procs)"))
        print(runs["v6-empty"].line("gRPC AllocateAddress, /64 at 0% (2 procs)"))
        print(runs["v6-full"].line(f"gRPC AllocateAddress, /64 after {args.v6_fill} (2 procs)"))
        base_rate = runs["v4-24"].rate
        print(f"  /24 rate / /64 rate: {base_rate / runs['v6-empty'].rate:.2f}x at 0%, "
              f"{base_rate / runs['v6-full'].rate:.2f}x after {args.v6_fill} (target <= 1.2x)")
        usec = {pool_id: redis_usec_per_allocate(client, pool_id, "u", 250) for pool_id in runs}
        print(f"  inside Redis per ALLOCATE: /24 {usec['v4-24']:.2f} us, /64 at 0% "
              f"{usec['v6-empty']:.2f} us, /64 after {args.v6_fill} {usec['v6-full']:.2f} us")

        started = time.perf_counter()
        for base in range(0, SLASH16_CAPACITY, 4096):
            count = min(4096, SLASH16_CAPACITY - base)
            await stubs[0].BatchAllocateAddresses(
                pb.BatchAllocateAddressesRequest(pool_id="batch", owners=owners(f"{base}-", count))
            )
        batch_rate = SLASH16_CAPACITY / (time.perf_counter() - started)
        print(
            f"gRPC BatchAllocateAddresses, 4096 per call, filling a /16: {batch_rate:7.0f} "
            "addresses/s (target >= 20000/s)"
        )

        raw_rate = raw_allocate_rate(client, "raw", "y", n)
        print(
            f"raw Redis ceiling, ALLOCATE by pipelined EVALSHA: {raw_rate:7.0f} allocs/s; "
            f"gRPC/raw = {double.rate / raw_rate:.3f} (2 procs), {single.rate / raw_rate:.3f} "
            "(1 proc)"
        )
        client.close()
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            process.stop()
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent gRPC clients")
    parser.add_argument("--requests", type=int, default=15_000, help="allocations per gRPC run")
    parser.add_argument(
        "--server-log-level",
        default="WARNING",
        help="IPAM log level; INFO logs one JSON line per request",
    )
    parser.add_argument("--v6-fill", type=int, default=100_000,
                        help="allocations made in the full /64 before it is measured")
    parser.add_argument("--serve-noop", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--noop-redis-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop:
        asyncio.run(serve_noop(args.serve_noop, args.noop_redis_url))
    else:
        os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
