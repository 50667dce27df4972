"""Test harness of the host agent: the agent process in a host namespace, a
small topology around it, and traffic probes."""

from __future__ import annotations

import difflib
import ipaddress
import json
import subprocess
import uuid
from pathlib import Path

import grpc

from cnm import errors
from cnm.netdriver.v1 import netdriver_pb2 as pb
from cnm.netdriver.v1 import netdriver_pb2_grpc
from tests import support

TRAFFIC = support.TRAFFIC


class AgentProcess:
    """``python -m netdriver_service`` inside ``host`` (network namespace only), on a unix socket.

    ``nsenter --net`` rather than ``ip netns exec``: the agent must stay in the
    machine's mount namespace so that the sandboxes it mounts are seen by all.
    """

    def __init__(self, host: support.Netns, state_dir: Path, *, firewall: str = "nftables",
                 fault: str = "", host_id: str = "h1", resync_interval: float = 30,
                 wrap: list[str] = ()) -> None:
        self.host = host
        self.state_dir = state_dir
        self.socket_path = f"/tmp/cnmt-{uuid.uuid4().hex[:8]}.sock"
        self.address = f"unix:{self.socket_path}"
        self.log_path = state_dir.parent / f"agent-{uuid.uuid4().hex[:6]}.log"
        self.process = support.Process(
            [*wrap, "nsenter", f"--net={host.path}", support.PYTHON, "-m", "netdriver_service",
             "--listen", self.address, "--host-id", host_id, "--state-dir", str(state_dir),
             "--firewall", firewall, "--fault", fault,
             "--resync-interval", str(resync_interval)],
            log_path=self.log_path,
        )
        try:
            support.wait_serving(self.address, timeout=20)
        except TimeoutError:
            self.stop()
            raise RuntimeError("agent did not become ready:\n" + self.process.log_tail())
        self.channel = grpc.insecure_channel(self.address)
        self.stub = netdriver_pb2_grpc.NetDriverServiceStub(self.channel)

    def call(self, method: str, request, timeout: float = 30):
        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None

    def stop(self) -> None:
        if getattr(self, "channel", None):
            self.channel.close()
        self.process.stop()
        Path(self.socket_path).unlink(missing_ok=True)


def without_netbase(empty_file: Path) -> list[str]:
    """A command prefix running the rest in a mount namespace of its own where
    /etc/protocols and /etc/services are empty, as in an image without netbase.
    Slave propagation: the machine's mounts still show inside; these do not leak out."""
    empty_file.write_text("")
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
            'mount --bind "$0" /etc/protocols && mount --bind "$0" /etc/services && exec "$@"',
            str(empty_file)]


def network(network_id: str, subnet: str, **fields) -> pb.Network:
    """A Network message; the gateway defaults to the subnet's first host (no subnet: an
    IPv6-only network, its ipv6_subnet among ``fields``)."""
    if subnet:
        fields.setdefault("gateway", str(next(ipaddress.IPv4Network(subnet).hosts())))
    return pb.Network(network_id=network_id, subnet=subnet, **fields)


def tcp(host_port: int, container_port: int, host_ip: str = "") -> pb.PortMapping:
    return pb.PortMapping(protocol=pb.PROTOCOL_TCP, host_port=host_port,
                          container_port=container_port, host_ip=host_ip)


def udp(host_port: int, container_port: int) -> pb.PortMapping:
    return pb.PortMapping(protocol=pb.PROTOCOL_UDP, host_port=host_port,
                          container_port=container_port)


class Server:
    """An echo server (answers with the peer address it saw) inside a namespace."""

    def __init__(self, ns_name: str, port: int, protocol: str = "tcp", log_dir: Path | None = None):
        self.process = support.Process(
            ["ip", "netns", "exec", ns_name, support.PYTHON, "-u", TRAFFIC, "serve", protocol,
             str(port)],
            log_path=(log_dir / f"server-{ns_name}-{port}.log") if log_dir else None,
        )
        self.log_path = self.process.log_path
        if self.log_path:
            support.wait_for(
                lambda: self.log_path.exists() and "ready" in self.log_path.read_text(),
                10, 0.02, f"server {ns_name}:{port}",
            )

    def stop(self) -> None:
        self.process.stop()


def ask(ns_name: str, host: str, port: int, protocol: str = "tcp", timeout: float = 2.0) -> str | None:
    """The source address the server at host:port saw, asked from ``ns_name``; None if no answer."""
    result = subprocess.run(
        ["ip", "netns", "exec", ns_name, support.PYTHON, TRAFFIC, "ask", protocol, host,
         str(port), str(timeout)],
        capture_output=True, text=True, timeout=timeout + 15, check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def links(ns_name: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns_name, "-j", "-d", "link", "show"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def link_summary(ns_name: str) -> list[tuple]:
    """The stable facts of every link: no carrier, STP or timing state that settles by itself."""
    return sorted(
        (link["ifname"], link.get("ifalias", ""), link.get("master", ""), link["mtu"],
         link.get("address", ""), "UP" in link["flags"],
         link.get("linkinfo", {}).get("info_kind", ""),
         link.get("linkinfo", {}).get("info_slave_data", {}).get("hairpin"))
        for link in links(ns_name)
    )


def link_names(ns_name: str) -> set[str]:
    return {link["ifname"] for link in links(ns_name)}


def addresses(ns_name: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns_name, "-j", "addr", "show"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def routes(ns_name: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns_name, "-j", "route", "show"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def ruleset(ns_name: str) -> str:
    """The namespace's whole nftables ruleset, as text without handles."""
    return subprocess.run(["ip", "netns", "exec", ns_name, "nft", "list", "ruleset"],
                          check=True, capture_output=True, text=True).stdout


def assert_unchanged(before: tuple, after: tuple, label: str) -> None:
    """Asserts two snapshots are equal; the message is a diff of the parts that differ."""
    if before == after:
        return
    parts = []
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        if old != new:
            old_lines = old.splitlines() if isinstance(old, str) else [repr(x) for x in old]
            new_lines = new.splitlines() if isinstance(new, str) else [repr(x) for x in new]
            diff = difflib.unified_diff(old_lines, new_lines, lineterm="", n=1)
            parts.append(f"part {index}:\n" + "\n".join(diff))
    raise AssertionError(f"{label}: state changed\n" + "\n".join(parts))


def namespace_names() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], check=True, capture_output=True,
                         text=True).stdout
    return [entry["name"] for entry in json.loads(out or "[]")]


def delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


_ASK = """
import sys
from dnslib import DNSRecord
query = DNSRecord.question(sys.argv[2], sys.argv[3])
try:
    print(query.send(sys.argv[1], 53, tcp=sys.argv[4] == "tcp", timeout=2,
                     ipv6=":" in sys.argv[1]).hex())
except OSError as error:  # socket.timeout too
    print("no-answer", type(error).__name__)
"""


def dns_ask(ns: support.Netns, server: str, name: str, qtype: str = "A",
            tcp: bool = False):
    """The DNS answer (a dnslib DNSRecord) of ``server`` to a query made from namespace
    ``ns``, or None when none came within 2 s."""
    from dnslib import DNSRecord

    out = ns.run(support.PYTHON, "-c", _ASK, server, name, qtype, "tcp" if tcp else "udp",
                 cwd=support.REPO).stdout.strip()
    return None if out.startswith("no-answer") else DNSRecord.parse(bytes.fromhex(out))


_WATCH = """
import sys, time
from dnslib import DNSRecord
names, deadline = sys.argv[2:], time.time() + float(sys.argv[1])
for name in names:
    query = DNSRecord.question(name, "A")
    while True:
        try:
            if DNSRecord.parse(query.send("%s", 53, timeout=0.05)).rr:
                print(name, time.time(), flush=True)
                break
        except OSError:
            pass
        if time.time() > deadline:
            print(name, "no-answer", flush=True)
            break
        time.sleep(0.01)
"""


def dns_watch(ns_name: str, server: str, names: list[str], timeout: float = 30.0):
    """A process in namespace ``ns_name`` asking ``server`` for each of ``names`` in turn,
    every 10 ms until it answers; ``dns_answered`` reads when each first did."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns_name, support.PYTHON, "-c", _WATCH % server, str(timeout),
         *names], cwd=support.REPO, stdout=subprocess.PIPE, text=True)


def dns_answered(watch: subprocess.Popen) -> dict[str, float | None]:
    """``dns_watch``'s result: each name's first answer (``time.time()``) or None."""
    out, _ = watch.communicate(timeout=60)
    return {name: None if when == "no-answer" else float(when)
            for name, when in (line.split() for line in out.splitlines())}


def dns_addresses(answer) -> list[str]:
    """The addresses (or names) an answer gives, in order."""
    return [str(record.rdata) for record in answer.rr]
