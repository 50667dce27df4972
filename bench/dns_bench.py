"""A network's DNS server (netdriver_service/dns.py) against aardvark-dns, Podman's,
serving the same names, side by side in one run, driven by dnsperf.

A "host" namespace runs both: cnm's resolver (the agent's code, in a process of its
own so that its memory and CPU are its own) on 10.97.0.1 for 10.97.0.0/16, and
aardvark-dns 1.4 (Debian's) on 10.98.0.1 for 10.98.0.0/16, each with ``--names``
containers (name0, name1, ...). A "client" namespace runs dnsperf against each in
turn, alternating, with A queries for random names:

- throughput: as fast as dnsperf can send for ``--seconds`` (qps, lost);
- latency: at a fixed ``--rate`` with every answer's time (p50, p99; dnsperf -v);
- memory: each server's RSS with the names loaded.

Targets (issue 15): cnm's qps >= 1/2 of aardvark's, p99 <= 2x aardvark's, nothing lost.

    apt-get install aardvark-dns dnsperf
    .venv/bin/python bench/dns_bench.py [--names 1000] [--seconds 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import rss_kib, verdict
from tests import support
from tests.netdriver import harness
from tests.support import connect_namespaces

AARDVARK = "/usr/lib/podman/aardvark-dns"
CNM, THEM = "10.97.0.1", "10.98.0.1"

RESOLVER = """
import asyncio, json, sys
from netdriver_service.dns import Resolver

async def main():
    resolver = Resolver(sys.argv[1], sys.argv[2], upstream=[], rate=None)
    resolver.set_records(json.loads(sys.argv[3]))
    await resolver.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def address(base: str, index: int) -> str:
    first, second, _, _ = base.split(".")
    return f"{first}.{second}.{2 + index // 250}.{2 + index % 250}"


def dnsperf(client: support.Netns, server: str, queries: Path, *args: str) -> str:
    return client.run("dnsperf", "-s", server, "-d", str(queries), *args, timeout=120).stdout


def throughput(output: str) -> tuple[float, int]:
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", output)[1])
    lost = int(re.search(r"Queries lost:\s+(\d+)", output)[1])
    return qps, lost


def latencies(output: str) -> list[float]:
    """ms of each answer in dnsperf -v output ("> NOERROR name A 0.000123")."""
    return [float(line.split()[-1]) * 1000 for line in output.splitlines()
            if line.startswith(">")]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10, help="each throughput run")
    parser.add_argument("--rate", type=int, default=2000, help="qps of the latency runs")
    parser.add_argument("--rounds", type=int, default=2, help="runs per server, alternated")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for tool in (AARDVARK, shutil.which("dnsperf")):
        if not tool or not Path(tool).exists():
            sys.exit("needs aardvark-dns and dnsperf: apt-get install aardvark-dns dnsperf")
    workdir = Path(tempfile.mkdtemp(prefix="cnm-dns-bench-"))
    host, client = support.Netns("cnmdns-h"), support.Netns("cnmdns-c")
    processes: list[subprocess.Popen] = []
    try:
        connect_namespaces(host, "br0", f"{CNM}/16", client, "eth0", "10.97.0.2/16")
        host.run("ip", "addr", "add", f"{THEM}/16", "dev", "br0")
        client.run("ip", "addr", "add", "10.98.0.2/16", "dev", "eth0")
        names = [f"name{i}" for i in range(args.names)]
        # cnm: the resolver with the names, in a process of its own.
        records = {name: [address(CNM, i)] for i, name in enumerate(names)}
        cnm = subprocess.Popen(
            host.exec_args(support.PYTHON, "-c", RESOLVER, CNM, "10.97.0.0/16",
                           json.dumps(records)),
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        processes.append(cnm)
        assert cnm.stdout.readline().strip() == "ready"
        # aardvark-dns: its configuration directory, one file per network.
        config = workdir / "aardvark"
        config.mkdir()
        lines = [THEM] + [f"{i:064x} {address(THEM, i)}  {name}" for i, name in enumerate(names)]
        (config / "bench").write_text("\n".join(lines) + "\n")
        subprocess.run(host.exec_args(AARDVARK, "--config", str(config), "--port", "53", "run"),
                       check=True, capture_output=True, timeout=30)  # it daemonizes
        aardvark_pid = int((config / "aardvark.pid").read_text())
        support.wait_for(lambda: harness.dns_ask(client, THEM, "name0") is not None,
                         10, 0.2, "aardvark-dns to answer")
        queries = workdir / "queries"
        randomly = random.Random(7)
        queries.write_text("".join(f"{randomly.choice(names)} A\n" for _ in range(20000)))
        # Both answer before anything is measured.
        for server in (CNM, THEM):
            _, lost = throughput(client.run("dnsperf", "-s", server, "-d", str(queries),
                                            "-l", "1", "-q", "10", "-t", "2").stdout)
            assert lost == 0, f"{server} lost queries while warming up"

        results = {server: {"qps": [], "lost": [], "lat": [], "lost_rate": []}
                   for server in (CNM, THEM)}
        for round_ in range(args.rounds):
            for server in (CNM, THEM) if round_ % 2 == 0 else (THEM, CNM):
                qps, lost = throughput(dnsperf(client, server, queries, "-l",
                                               str(args.seconds), "-c", "4", "-q", "200"))
                results[server]["qps"].append(qps)
                results[server]["lost"].append(lost)
                measured = dnsperf(client, server, queries, "-l", "5", "-Q", str(args.rate),
                                   "-v")
                results[server]["lat"] += latencies(measured)
                results[server]["lost_rate"].append(throughput(measured)[1])
        label = {CNM: "cnm (dnslib, asyncio)", THEM: "aardvark-dns 1.4"}
        print(f"# A queries for {args.names} names, dnsperf from another namespace; "
              f"{args.rounds} alternated rounds")
        for server in (CNM, THEM):
            r = results[server]
            print(f"{label[server]:24s} qps {statistics.median(r['qps']):9.0f} "
                  f"(runs {', '.join(f'{q:.0f}' for q in r['qps'])}; unanswered at the "
                  f"cut-off {sum(r['lost'])})  at {args.rate} qps: p50 "
                  f"{percentile(r['lat'], 0.5):.3f} ms p99 {percentile(r['lat'], 0.99):.3f} ms "
                  f"lost {sum(r['lost_rate'])} (n={len(r['lat'])})")
        ratio = statistics.median(results[CNM]["qps"]) / statistics.median(results[THEM]["qps"])
        p99 = percentile(results[CNM]["lat"], 0.99) / percentile(results[THEM]["lat"], 0.99)
        lost = sum(results[CNM]["lost_rate"])
        print(f"cnm qps / aardvark qps {ratio:.2f} (target >= 0.5) {verdict(ratio >= 0.5)}")
        print(f"cnm p99 / aardvark p99 {p99:.2f} (target <= 2) {verdict(p99 <= 2)}")
        print(f"cnm lost at {args.rate} qps {lost} (target 0) {verdict(lost == 0)} (the "
              "saturating runs' unanswered are counted at dnsperf's time limit, as many for "
              "aardvark)")
        print(f"\n# memory with {args.names} names")
        print(f"cnm resolver process  {rss_kib(cnm.pid) / 1024:6.1f} MiB RSS "
              "(a Python process: interpreter, asyncio, dnslib)")
        print(f"aardvark-dns          {rss_kib(aardvark_pid) / 1024:6.1f} MiB RSS")
        os.kill(aardvark_pid, 15)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        pid_file = workdir / "aardvark" / "aardvark.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
        client.close()
        host.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
