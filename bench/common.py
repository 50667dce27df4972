"""Pieces every bench shares: statistics lines, namespaces, the CNI peer chain."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

CNI_PATH = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(run, *args) -> float:
    """``run(*args)``'s latency in ms."""
    started = time.perf_counter()
    run(*args)
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):7.2f} ms  p90 {percentile(values, 0.9):7.2f} ms  "
            f"mean {statistics.fmean(values):7.2f} ms  (n={len(values)})")


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def print_request_times(log_paths: list[Path]) -> None:
    """Each service's own time per call (p50, count), from its DEBUG log: the gRPC
    services' "request" lines and the Docker plugin's "plugin call" lines. The
    breakdown of a bench's figures (``--trace``)."""
    calls: dict[tuple[str, str], list[float]] = {}
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            call = record.get("method") if record.get("event") == "request" else \
                record.get("call") if record.get("event") == "plugin call" else None
            if call and "ms" in record:
                calls.setdefault((record.get("service", path.stem), call), []).append(
                    record["ms"])
    print("# each service's own time per call (p50 ms, calls)")
    for (service, call), times in sorted(calls.items()):
        print(f"  {service:14} {call.rsplit('/', 1)[-1]:42} {statistics.median(times):7.2f}"
              f"  {len(times)}")


def agent_run_dir() -> Path:
    """A fresh directory on tmpfs for agents' state, as the agent's default (/run/cnm)
    puts it; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix="cnm-bench-", dir="/run"))


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def enter_namespace(fd: int) -> None:
    """Moves the calling thread (and threads it creates later) into the namespace on ``fd``."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@contextlib.contextmanager
def inside(ns_path: str):
    """The calling thread (and threads it creates meanwhile) in the network namespace at
    ``ns_path`` for the block, back in its own after it."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns_path, os.O_RDONLY)
        try:
            enter_namespace(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            enter_namespace(back)
    finally:
        os.close(back)


class Namespaces:
    """Container namespaces, made in batches with one ``ip -batch``, removed at the end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def make(self, count: int) -> list[str]:
        names = [f"{self.prefix}-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        self.names += names
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names),
                       text=True, check=True)
        return names

    def make_one(self) -> str:
        return self.make(1)[0]

    def remove(self, names: list[str]) -> None:
        """Deletes ``names`` (as a runtime does once their containers are gone)."""
        if names:
            subprocess.run(["ip", "-force", "-batch", "-"], text=True, check=False,
                           input="".join(f"netns delete {n}\n" for n in names),
                           capture_output=True)
        gone = set(names)
        self.names = [name for name in self.names if name not in gone]

    def remove_all(self) -> None:
        self.remove(self.names)


class CniChain:
    """bridge + host-local + portmap, exec'd one plugin at a time like a runtime.

    ADD is bridge ADD then portmap ADD; DEL is portmap DEL then bridge DEL,
    each given the ADD's result as a runtime would.
    """

    def __init__(self, data_dir: Path, *, name: str, bridge: str, subnet: str,
                 subnet6: str = "") -> None:
        """``subnet6``: dual stack, an IPv6 range and default route too."""
        self.name = name
        ranges = [[{"subnet": subnet}]] + ([[{"subnet": subnet6}]] if subnet6 else [])
        routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if subnet6 else [])
        self.plugins = [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": ranges,
                      "routes": routes, "dataDir": str(data_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ]
        self.results: dict[str, dict] = {}

    def _exec(self, plugin: dict, command: str, container_id: str, netns: str,
              prev: dict | None, port: int) -> dict | None:
        config = {"cniVersion": "1.0.0", "name": self.name, **plugin}
        if prev is not None:
            config["prevResult"] = prev
        if plugin["type"] == "portmap":
            config["runtimeConfig"] = {
                "portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]
            }
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH,
               "PATH": os.environ["PATH"]}
        done = subprocess.run([f"{CNI_PATH}/{plugin['type']}"], input=json.dumps(config),
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"CNI {plugin['type']} {command}: {done.stdout} {done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def add(self, container_id: str, netns: str, port: int) -> None:
        result = None
        for plugin in self.plugins:
            result = self._exec(plugin, "ADD", container_id, netns, result, port)
        self.results[container_id] = result

    def delete(self, container_id: str, netns: str, port: int) -> None:
        result = self.results.pop(container_id)
        for plugin in reversed(self.plugins):
            self._exec(plugin, "DEL", container_id, netns, result, port)
