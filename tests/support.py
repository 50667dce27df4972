"""Helpers shared by the test suites: free ports, processes, namespaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnm import grpc_client

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The TCP/UDP echo tools every traffic test runs inside its namespaces.
TRAFFIC = str(REPO / "tests" / "traffic.py")
IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_serving(address: str, timeout: float = 15.0, service: str = "",
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    """Waits until the gRPC health service at ``address`` reports SERVING (over TLS with
    ``credentials``)."""

    def serving() -> bool:
        with (grpc.insecure_channel(address) if credentials is None
              else grpc.secure_channel(address, credentials,
                                       options=grpc_client.tls_options(address))) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    wait_for(serving, timeout, 0.1, f"{address} to be SERVING")


class Process:
    """A child process we started, stopped by its PID only."""

    def __init__(self, args: list[str], *, env: dict | None = None, log_path: Path | None = None):
        self.args = args
        self.log_path = log_path
        # Closed in stop(); the child writes to it for its whole life.
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        full_env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0", **(env or {})}
        self.popen = subprocess.Popen(
            args, env=full_env, stdout=self._log, stderr=self._log, cwd=REPO,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_agent(
    ns_path: str, address: str, *, host_id: str, state_dir: Path, log_path: Path,
    args: tuple[str, ...] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> Process:
    """``python -m netdriver_service`` inside network namespace ``ns_path``, serving on
    ``address``, returned once SERVING (RuntimeError with its log tail, and stopped, if not).

    ``nsenter --net`` rather than ``ip netns exec``: the agent keeps the machine's mount
    namespace, where the sandboxes it mounts are seen by all.
    """
    process = Process(
        ["nsenter", f"--net={ns_path}", PYTHON, "-m", "netdriver_service",
         "--listen", address, "--host-id", host_id, "--state-dir", str(state_dir), *args],
        log_path=log_path,
    )
    try:
        wait_serving(address, timeout=20, credentials=credentials)
    except TimeoutError:
        process.stop()
        raise RuntimeError("agent did not start:\n" + process.log_tail()) from None
    return process


def start_ipam(address: str, redis_url: str, log_path: Path) -> Process:
    """``python -m ipam_service`` on ``address`` over ``redis_url``, returned once SERVING."""
    process = Process(
        [PYTHON, "-m", "ipam_service", "--listen", address, "--redis-url", redis_url],
        log_path=log_path,
    )
    wait_serving(address)
    return process


class RedisServer:
    """A real redis-server on a free loopback port, with its data in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = True,
                 appendfsync: str = "everysec"):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no", "--protected-mode", "no",
        ]
        self.process = Process(args, log_path=self.workdir / "redis.log")
        wait_for(self.ping, 10, 0.05, f"redis on port {self.port}")
        return self

    def ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            self.process = None


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Netns:
    """A network namespace this test made; removed on close."""

    def __init__(self, prefix: str = "cnmt"):
        self.name = unique_name(prefix)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    @classmethod
    def existing(cls, name: str) -> Netns:
        """A handle on namespace ``name``, made elsewhere (``close`` removes it all the same)."""
        namespace = cls.__new__(cls)
        namespace.name = name
        return namespace

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *args: str, check: bool = True, timeout: float = 30, **kwargs):
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            check=check, capture_output=True, text=True, timeout=timeout, **kwargs,
        )

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


class Underlay:
    """Simulated hosts joined by one layer-2 underlay: a bridge in a "switch" namespace and
    a veth ``eth0`` into each host namespace, addressed 10.99.0.N/24 inside it (plus a
    default route via 10.99.0.254, an address nobody has, so that agents find the
    underlay interface the way they would on a real host). With ``ipv6``, an IPv6-only
    underlay: fd99::N/64, and a default route via fd99::fe."""

    PREFIX = "10.99.0"
    PREFIX6 = "fd99:"

    def __init__(self, make_netns, ipv6: bool = False) -> None:
        self.make_netns = make_netns
        self.ipv6 = ipv6
        self.switch = make_netns("cnmt-sw")
        self.switch.run("ip", "link", "add", "sw", "type", "bridge")
        self.switch.run("ip", "link", "set", "sw", "up")
        self.hosts: list[Netns] = []

    def add_host(self) -> Netns:
        """A new host namespace, plugged into the switch; its address is ``address(i)``."""
        number = len(self.hosts) + 1
        host = self.make_netns("cnmt-host")
        port = f"p{number}"
        subprocess.run(["ip", "-n", self.switch.name, "link", "add", port, "type", "veth",
                        "peer", "name", "eth0", "netns", host.name], check=True)
        self.switch.run("ip", "link", "set", port, "master", "sw", "up")
        if self.ipv6:
            host.run("ip", "addr", "add", f"{self.address(number)}/64", "dev", "eth0", "nodad")
            host.run("ip", "link", "set", "eth0", "up")
            host.run("ip", "-6", "route", "add", "default", "via", f"{self.PREFIX6}:fe")
        else:
            host.run("ip", "addr", "add", f"{self.address(number)}/24", "dev", "eth0")
            host.run("ip", "link", "set", "eth0", "up")
            host.run("ip", "route", "add", "default", "via", f"{self.PREFIX}.254")
        self.hosts.append(host)
        return host

    def address(self, number: int) -> str:
        return f"{self.PREFIX6}:{number:x}" if self.ipv6 else f"{self.PREFIX}.{number}"

    def add_internet(self) -> Netns:
        """A namespace on the switch holding the hosts' default gateway, 10.99.0.254: what
        the hosts' egress reaches."""
        internet = self.make_netns("cnmt-inet")
        subprocess.run(["ip", "-n", self.switch.name, "link", "add", "pinet", "type", "veth",
                        "peer", "name", "eth0", "netns", internet.name], check=True)
        self.switch.run("ip", "link", "set", "pinet", "master", "sw", "up")
        internet.run("ip", "addr", "add", f"{self.PREFIX}.254/24", "dev", "eth0")
        internet.run("ip", "link", "set", "eth0", "up")
        return internet

    def unplug(self, number: int) -> None:
        """Takes host ``number`` off the switch (its port down)."""
        self.switch.run("ip", "link", "set", f"p{number}", "down")

    def plug(self, number: int) -> None:
        self.switch.run("ip", "link", "set", f"p{number}", "up")


def connect_namespaces(a: Netns, a_if: str, a_cidr: str,
                       b: Netns, b_if: str, b_cidr: str) -> None:
    """A veth between two test namespaces, addressed and up."""
    subprocess.run(["ip", "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name",
                    b_if, "netns", b.name], check=True)
    for ns, name, cidr in ((a, a_if, a_cidr), (b, b_if, b_cidr)):
        subprocess.run(["ip", "-n", ns.name, "addr", "add", cidr, "dev", name], check=True)
        subprocess.run(["ip", "-n", ns.name, "link", "set", name, "up"], check=True)


# --- mutual TLS, with a `cnm pki` directory --------------------------------------------

def tls_args(directory: Path, name: str) -> list[str]:
    """A service's flags for certificate ``name`` of the CA in ``directory``."""
    return ["--tls-ca", str(directory / "ca.crt"), "--tls-cert", str(directory / f"{name}.crt"),
            "--tls-key", str(directory / f"{name}.key")]


def tls_credentials(directory: Path, name: str = "admin") -> grpc.ChannelCredentials:
    """A client's credentials holding certificate ``name`` (the admin's unless told)."""
    return grpc.ssl_channel_credentials((directory / "ca.crt").read_bytes(),
                                        (directory / f"{name}.key").read_bytes(),
                                        (directory / f"{name}.crt").read_bytes())


def tls_channel(directory: Path, address: str, name: str = "admin") -> grpc.Channel:
    """A channel to ``address`` holding certificate ``name`` (the admin's unless told)."""
    return grpc.secure_channel(address, tls_credentials(directory, name),
                               grpc_client.tls_options(address))
