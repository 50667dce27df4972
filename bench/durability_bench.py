"""What an fsync before every reply costs: IPAM allocations over Redis with
``appendfsync always`` (what Compose and scripts/up run, so that an acknowledged
allocation survives a crash) against ``appendfsync everysec`` (up to a second of
acknowledged writes lost), side by side in one run.

    .venv/bin/python bench/durability_bench.py [--allocations N] [--clients C]

Each Redis runs AOF in a temporary directory on this machine's disk; the store
is IPAM's own (ipam_service.store.RedisStore: one Lua script per allocation).
Sequential allocations give the latency an operation pays; concurrent ones the
throughput, where Redis's group commit shares one fsync among the writes that
arrive together.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipam_service import pools
from ipam_service.store import RedisStore
from tests import support


async def measure(url: str, allocations: int, clients: int) -> tuple[float, float]:
    """(p50 ms of sequential allocations, allocations/s with ``clients`` at once)."""
    store = RedisStore.from_url(url)
    try:
        await store.create_pool(pools.build_pool(pool_id="seq", subnet="10.0.0.0/16"))
        await store.create_pool(pools.build_pool(pool_id="par", subnet="10.1.0.0/16"))
        took = []
        for n in range(allocations):
            started = time.perf_counter()
            await store.allocate("seq", f"o{n}")
            took.append((time.perf_counter() - started) * 1000)
        queue = iter(range(allocations))

        async def worker() -> None:
            for n in queue:
                await store.allocate("par", f"o{n}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        rate = allocations / (time.perf_counter() - started)
        return statistics.median(took), rate
    finally:
        await store.close()


async def bench(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="durability-bench-"))
    servers = {mode: support.RedisServer(workdir / mode, appendfsync=mode).start()
               for mode in ("everysec", "always")}
    try:
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in servers}
        for _ in range(args.rounds):  # alternating, so that noise hits both alike
            for mode, server in servers.items():
                server_flush(server)
                results[mode].append(await measure(server.url, args.allocations, args.clients))
        print(f"# IPAM allocations over Redis AOF, {args.allocations} per run, {args.rounds} "
              f"rounds alternating, {args.clients} concurrent clients")
        summary = {}
        for mode, rows in results.items():
            p50 = statistics.median(row[0] for row in rows)
            rate = statistics.median(row[1] for row in rows)
            summary[mode] = (p50, rate)
            print(f"appendfsync {mode:8s}  sequential p50 {p50:6.3f} ms   "
                  f"{args.clients} clients {rate:8.0f} allocations/s")
        (p50_e, rate_e), (p50_a, rate_a) = summary["everysec"], summary["always"]
        print(f"always / everysec: sequential p50 {p50_a / p50_e:.2f}x, "
              f"throughput {rate_a / rate_e:.2f}x")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def server_flush(server: support.RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.flushall()
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--allocations", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
