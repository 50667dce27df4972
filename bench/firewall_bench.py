"""Firewall speed figures: cost of one nftables transaction, and of publishing one
port with 1 vs 1,000 ports already published (should be the same: ports are
map elements, not rules).

    .venv/bin/python bench/firewall_bench.py [--samples 300] [--sizes 1,1000]

Runs itself inside a network namespace it creates (and deletes), so the
kernel's other tables are never touched. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netdriver_service.firewall import NetworkRules, PortRule, ruleset
from netdriver_service.firewall.libnft import LibNftables, NftProcess
from netdriver_service.firewall.nftables_backend import NftablesFirewall

NETWORK = NetworkRules("bench", "cnmbench", "10.77.0.0/16", "10.77.0.1")


def port(i: int) -> PortRule:
    protocol, host_port = ("tcp", "udp", "sctp")[i // 60000], 1 + i % 60000
    return PortRule(f"ep{i}", "bench", protocol, "", host_port,
                    f"10.77.{i // 250 % 250}.{i % 250 + 2}", 80)


def micros(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95)]
    return (f"median {statistics.median(ordered) * 1e6:7.1f} us   p95 {p95 * 1e6:7.1f} us   "
            f"(n={len(ordered)})")


def time_calls(call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def publish_costs(firewall: NftablesFirewall, runner: LibNftables, existing: int,
                        samples: int) -> tuple[list[float], list[float], list[float]]:
    """(add_ports, raw batch, remove_ports by key, remove_ports by scan) times for one mapping
    with ``existing`` published."""
    await firewall.sync([NETWORK], [port(i) for i in range(existing)])
    added, raw, removed, scanned = [], [], [], []
    for k in range(samples):
        extra = port(existing + k)
        started = time.perf_counter()
        await firewall.add_ports([extra])
        added.append(time.perf_counter() - started)
        started = time.perf_counter()
        await firewall.remove_ports(extra.endpoint_id, [extra])
        removed.append(time.perf_counter() - started)
        await firewall.add_ports([extra])
        started = time.perf_counter()
        await firewall.remove_ports(extra.endpoint_id)
        scanned.append(time.perf_counter() - started)
        batch = ruleset.publish_batch([extra])
        started = time.perf_counter()
        runner.run(batch)
        raw.append(time.perf_counter() - started)
        runner.run([ruleset.element_command("delete", name, [element])
                    for name, element in ruleset.port_elements(extra)])
    return added, raw, removed, scanned


async def inside(samples: int, sizes: list[int]) -> None:
    runner = LibNftables()
    firewall = NftablesFirewall(runner)
    await firewall.ensure_base()
    await firewall.add_network(NETWORK)
    noop = [ruleset.element_command("add", "bridges", [ruleset.Element(("cnmbench",))])]
    print(f"transaction, libnftables binding    {micros(time_calls(lambda: runner.run(noop), 2000))}")
    process = NftProcess()
    print(f"transaction, nft -j -f - process    {micros(time_calls(lambda: process.run(noop), 50))}")
    results = {}
    for existing in sizes:
        results[existing] = await publish_costs(firewall, runner, existing, samples)
        added, raw, removed, scanned = results[existing]
        count = await firewall.element_count()
        print(f"\nwith {existing} ports published ({count} rules + elements in table inet cnm):")
        print(f"  add_ports, one mapping (async)    {micros(added)}")
        print(f"  its batch alone (libnftables)     {micros(raw)}")
        print(f"  remove_ports, ports known (keys)  {micros(removed)}")
        print(f"  remove_ports, by scan of the maps {micros(scanned)}")
    first = sizes[0]
    for existing in sizes[1:]:
        ratio = statistics.median(results[existing][0]) / statistics.median(results[first][0])
        raw = statistics.median(results[existing][1]) / statistics.median(results[first][1])
        print(f"add_ports median, {existing} vs {first} existing: x{ratio:.2f} "
              f"(batch alone x{raw:.2f})")
    await firewall.remove_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--sizes", default="1,1000", help="existing port counts to compare")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        asyncio.run(inside(args.samples, [int(size) for size in args.sizes.split(",")]))
        return
    namespace = f"cnmt-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", namespace, sys.executable, __file__, "--inside",
                        "--samples", str(args.samples), "--sizes", args.sizes], check=True)
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


if __name__ == "__main__":
    main()
