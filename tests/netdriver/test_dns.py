"""A network's DNS server (netdriver_service/dns.py) on real sockets, in namespaces.

A "host" namespace runs the resolver on the network's gateway 10.97.0.1 (a
subprocess reading its records as JSON lines on stdin); "client" is a container
of the network (10.97.0.2 and .3); "stranger" reaches the gateway from outside the
subnet; "internet" runs a fake upstream DNS server that knows one name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from netdriver_service import dns
from tests import support
from tests.netdriver import harness
from tests.support import connect_namespaces

pytestmark = pytest.mark.root

RESOLVER = """
import asyncio, json, sys
from netdriver_service.dns import Resolver

async def main():
    # "host": the host's resolv.conf, as the agent reads it; else the fake upstream.
    resolver = Resolver("10.97.0.1", "10.97.0.0/24", forward=sys.argv[1] != "internal",
                        upstream=None if sys.argv[1] == "host" else ["10.98.0.2"])
    await resolver.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        resolver.set_records(json.loads(line))
        print("set", flush=True)
    await resolver.stop()

asyncio.run(main())
"""

# A fake DNS server: on ADDRESS port 53, A queries for NAME ("*": any) answered ANSWER,
# the rest empty. The "internet"'s upstream knows example.test; systemd-resolved's stub
# on the host's loopback answers everything 10.53.0.53.
FAKE_DNS = """
import socket, sys
from dnslib import A, QTYPE, RR, DNSRecord
address, answer, name = sys.argv[1:]
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((address, 53))
while True:
    data, client = server.recvfrom(4096)
    query = DNSRecord.parse(data)
    reply = query.reply()
    if query.q.qtype == QTYPE.A and name in ("*", str(query.q.qname).rstrip(".")):
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(answer), ttl=60))
    server.sendto(reply.pack(), client)
"""
UPSTREAM = ("10.98.0.2", "10.98.0.99", "example.test")
STUB = ("127.0.0.53", "10.53.0.53", "*")

# The host's files as the resolver sees them, in a mount namespace of its own:
# $1 over /etc/resolv.conf and, when $2 is not empty, $2 as systemd-resolved's list.
HOST_FILES = """
set -e
mount --bind "$1" /etc/resolv.conf
mount -t tmpfs cnmt /run/systemd
if [ -n "$2" ]; then mkdir /run/systemd/resolve; cp "$2" /run/systemd/resolve/resolv.conf; fi
shift 2
exec "$@"
"""


class World:
    def __init__(self, netns, tmp_path: Path, forward: bool = True,
                 host_files: tuple[Path, Path | None] | None = None) -> None:
        """``host_files``: a resolv.conf and systemd-resolved's upstream list (or None)
        the resolver reads as the host's, with a stub on 127.0.0.53."""
        self.host, self.client = netns("cnmt-dnsh"), netns("cnmt-dnsc")
        self.stranger, self.internet = netns("cnmt-dnss"), netns("cnmt-dnsi")
        connect_namespaces(self.host, "br0", "10.97.0.1/24", self.client, "eth0", "10.97.0.2/24")
        self.client.run("ip", "addr", "add", "10.97.0.3/24", "dev", "eth0")
        connect_namespaces(self.host, "out0", "10.98.0.1/24", self.internet, "eth0",
                           "10.98.0.2/24")
        connect_namespaces(self.host, "far0", "10.96.0.1/24", self.stranger, "eth0",
                           "10.96.0.2/24")
        self.stranger.run("ip", "route", "add", "default", "via", "10.96.0.1")
        self.processes: list[subprocess.Popen] = []
        self.processes.append(subprocess.Popen(
            self.internet.exec_args(support.PYTHON, "-c", FAKE_DNS, *UPSTREAM), cwd=support.REPO))
        command = [support.PYTHON, "-c", RESOLVER, "forward" if forward else "internal"]
        if host_files:
            self.processes.append(subprocess.Popen(
                self.host.exec_args(support.PYTHON, "-c", FAKE_DNS, *STUB), cwd=support.REPO))
            conf, stub_list = host_files
            command = ["unshare", "--mount", "sh", "-c", HOST_FILES, "sh", str(conf),
                       str(stub_list or ""), *command[:-1], "host"]
        self.resolver = subprocess.Popen(
            self.host.exec_args(*command),
            cwd=support.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(self.resolver)
        assert self.resolver.stdout.readline().strip() == "ready"

    def records(self, records: dict[str, list[str]]) -> None:
        self.resolver.stdin.write(json.dumps(records) + "\n")
        self.resolver.stdin.flush()
        assert self.resolver.stdout.readline().strip() == "set"

    def ask(self, name: str, qtype: str = "A", tcp: bool = False, ns=None) -> DNSRecord | None:
        return harness.dns_ask(ns or self.client, "10.97.0.1", name, qtype, tcp=tcp)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture
def world(netns, tmp_path):
    made = World(netns, tmp_path)
    made.records({"web": ["10.97.0.10"], "db": ["10.97.0.11", "fd00:97::11"],
                  "alias-of-web": ["10.97.0.10"]})
    yield made
    made.stop()


addresses = harness.dns_addresses


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_names_of_the_network_are_answered_and_others_are_not_sent_upstream(world, tcp):
    web = world.ask("web", tcp=tcp)
    assert (web.header.rcode, web.header.aa, addresses(web)) == (RCODE.NOERROR, 1, ["10.97.0.10"])
    assert addresses(world.ask("web.cnm.internal", tcp=tcp)) == ["10.97.0.10"]
    assert addresses(world.ask("ALIAS-OF-WEB", tcp=tcp)) == ["10.97.0.10"]
    assert addresses(world.ask("db", "AAAA", tcp=tcp)) == ["fd00:97::11"]
    nodata = world.ask("web", "AAAA", tcp=tcp)  # held, but no IPv6 address: NODATA
    assert (nodata.header.rcode, nodata.rr) == (RCODE.NOERROR, [])
    for unknown in ("nosuch", "nosuch.cnm.internal"):
        missing = world.ask(unknown, tcp=tcp)
        assert (missing.header.rcode, missing.header.aa) == (RCODE.NXDOMAIN, 1)
    reverse = world.ask("10.0.97.10.in-addr.arpa", "PTR", tcp=tcp)
    assert sorted(addresses(reverse)) == ["alias-of-web.cnm.internal.", "web.cnm.internal."]
    assert world.ask("99.0.97.10.in-addr.arpa", "PTR", tcp=tcp).header.rcode == RCODE.NXDOMAIN


def test_other_names_are_forwarded_upstream_and_any_is_refused(world):
    forwarded = world.ask("example.test")
    assert (forwarded.header.rcode, addresses(forwarded)) == (RCODE.NOERROR, ["10.98.0.99"])
    assert world.ask("example.test", "ANY").header.rcode == RCODE.REFUSED
    assert addresses(world.ask("web", "ANY")) == ["10.97.0.10"]  # held: its addresses only


def test_an_internal_network_forwards_nothing(netns, tmp_path):
    internal = World(netns, tmp_path, forward=False)
    try:
        internal.records({"web": ["10.97.0.10"]})
        assert internal.ask("example.test").header.rcode == RCODE.REFUSED
        assert addresses(internal.ask("web")) == ["10.97.0.10"]
    finally:
        internal.stop()


def test_a_host_behind_a_loopback_stub_still_resolves(netns, tmp_path):
    """A host whose resolv.conf names systemd-resolved's 127.0.0.53, which containers
    cannot reach: the server forwards to the stub's own upstreams when
    /run/systemd/resolve/resolv.conf lists them, else to the stub (on the host's
    loopback, where the agent runs)."""
    conf, stub_list = tmp_path / "resolv.conf", tmp_path / "stub-upstreams.conf"
    conf.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    stub_list.write_text("nameserver 10.98.0.2\n")
    for listed, expected in ((stub_list, "10.98.0.99"), (None, "10.53.0.53")):
        world = World(netns, tmp_path, host_files=(conf, listed))
        try:
            answer = world.ask("example.test")
            assert (answer.header.rcode, addresses(answer)) == (RCODE.NOERROR, [expected])
        finally:
            world.stop()
            for namespace in (world.host, world.client, world.stranger, world.internet):
                namespace.close()
    assert Path("/etc/resolv.conf").read_text() != conf.read_text()  # the host's untouched


def test_records_replaced_take_effect_at_once(world):
    world.records({"db": ["10.97.0.11"]})
    assert world.ask("web").header.rcode == RCODE.NXDOMAIN
    world.records({"db": ["10.97.0.11"], "web": ["10.97.0.12"]})
    assert addresses(world.ask("web")) == ["10.97.0.12"]


def test_a_client_outside_the_subnet_gets_nothing(world):
    assert world.ask("web", ns=world.stranger) is None
    assert world.ask("example.test", ns=world.stranger) is None  # no open resolver


ABUSE = """
import json, socket, struct, sys, time
from dnslib import DNSRecord

def udp(data, source="10.97.0.2"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(1)
    s.sendto(data, ("10.97.0.1", 53))
    try:
        return s.recv(4096).hex()
    except socket.timeout:
        return "none"

query = DNSRecord.question("web").pack()
results = {}
results["garbage"] = udp(b"\\x12\\x34\\x01\\x00" + b"\\xff" * 16)
results["short"] = udp(b"\\x12\\x34")
results["loop"] = udp(bytes.fromhex("123401000001000000000000") + b"\\xc0\\x0c\\x00\\x01\\x00\\x01")
tcp = socket.create_connection(("10.97.0.1", 53), timeout=2)
tcp.sendall(struct.pack("!H", 60000) + b"x" * 100)
try:
    results["oversized"] = tcp.recv(10).hex() or "closed"
except (ConnectionError, socket.timeout) as error:
    results["oversized"] = type(error).__name__
# A flood from .3; then .2 asks once.
flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flood.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE: room for every answer
flood.bind(("10.97.0.3", 0))
flood.setblocking(False)
started = time.monotonic()
sent = 0
while sent < 12000:
    try:
        flood.sendto(query, ("10.97.0.1", 53))
        sent += 1
    except BlockingIOError:
        time.sleep(0.001)
results["flood_seconds"] = time.monotonic() - started
answered = 0
time.sleep(1)
while True:
    try:
        flood.recv(4096)
        answered += 1
    except BlockingIOError:
        break
results["flood_answered"] = answered
results["other"] = udp(query)
print(json.dumps(results))
"""


def test_malformed_queries_oversized_frames_and_a_flood(world):
    out = world.client.run(support.PYTHON, "-c", ABUSE, cwd=support.REPO, timeout=60).stdout
    results = json.loads(out)
    garbage = DNSRecord.parse(bytes.fromhex(results["garbage"]))
    assert (garbage.header.id, garbage.header.rcode) == (0x1234, RCODE.FORMERR)
    assert results["short"] == "none"
    assert DNSRecord.parse(bytes.fromhex(results["loop"])).header.rcode == RCODE.FORMERR
    assert results["oversized"] in ("closed", "ConnectionResetError")
    # The flooding client was cut off past its burst and rate; the other one is answered.
    allowed = dns.BURST + dns.RATE * (results["flood_seconds"] + 1) + 100
    assert results["flood_answered"] <= min(allowed, 12000 - 1000), results
    assert addresses(DNSRecord.parse(bytes.fromhex(results["other"]))) == ["10.97.0.10"]


def test_upstreams_come_from_resolv_conf_or_from_behind_a_loopback_stub(tmp_path):
    conf, stub = tmp_path / "resolv.conf", tmp_path / "stub.conf"
    conf.write_text("# comment\nsearch example\nnameserver 10.1.1.1\nnameserver fe80::1%eth0\n"
                    "nameserver bogus\n")
    assert dns.upstreams(str(conf), str(stub)) == ["10.1.1.1", "fe80::1"]
    conf.write_text("nameserver 127.0.0.53\noptions edns0\n")
    assert dns.upstreams(str(conf), str(stub)) == ["127.0.0.53"]  # no stub file: the stub
    stub.write_text("nameserver 192.0.2.53\nnameserver 192.0.2.54\n")
    assert dns.upstreams(str(conf), str(stub)) == ["192.0.2.53", "192.0.2.54"]
    assert dns.upstreams(str(tmp_path / "missing"), str(stub)) == []
