"""Name resolution for one cnm network: a DNS server on its gateway address, port 53,
UDP and TCP, in the agent's process (issue 15; the wire format is dnslib's).

It answers, for clients of the network's subnet only (never an open resolver):

- A and AAAA of the names it holds (container names and aliases on this network),
  as a single label (``web``) or under the network's search domain
  (``web.cnm.internal``); a name it holds without an address of the family asked
  is NODATA (NOERROR, no answer), so a resolver goes on to the other family;
- PTR of the addresses of its subnet;
- NXDOMAIN for any other single label, name in the search domain or address of the
  subnet, with the authority bit: such names are never sent upstream;
- everything else forwarded, as received, to the host's upstream resolvers (each
  tried in turn within :data:`UPSTREAM_TIMEOUT`; SERVFAIL when none answers), over
  the transport the client used; on an internal network, REFUSED instead.

ANY is answered for held names with their addresses only and refused otherwise
(RFC 8482: no amplification). A malformed query with a readable header gets
FORMERR, one without is dropped; so is a client past :data:`RATE` queries a second
(a token bucket each), so that one client's flood leaves the others answered. A
TCP connection is closed on a frame longer than :data:`MAX_TCP_FRAME` or after
:data:`TCP_IDLE` seconds without a query.

The records are the caller's: :meth:`Resolver.set_records` replaces them at once
(the agent gives every endpoint's names on each change), so an answer is never
half updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Mapping, Sequence

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSLabel, DNSRecord

from cnm import errors, validation
from netdriver_service import netns
from netdriver_service.model import EndpointSpec, NetworkSpec, PortSpec, RemoteEndpoint

log = logging.getLogger("netdriver.dns")

DOMAIN = validation.DNS_DOMAIN
TTL = 5  # seconds: a container gone is forgotten by caches within this
UPSTREAM_TIMEOUT = 2.0  # seconds each upstream has to answer
# Queries a second each client may make (a busy service resolving a name per request,
# with no cache, stays under it), and its burst.
RATE, BURST = 2000.0, 4000.0
MAX_TCP_FRAME = 4096  # bytes: larger than any query a stub resolver sends
TCP_IDLE = 10.0  # seconds a TCP connection may wait for a query
MAX_CLIENTS = 4096  # token buckets kept; the oldest go first
IPV6_FREEBIND = 78  # <linux/in6.h>; not in Python's socket module
RESOLV_CONF = "/etc/resolv.conf"
# systemd-resolved's list of the upstreams behind its 127.0.0.53 stub.
STUB_UPSTREAMS = "/run/systemd/resolve/resolv.conf"


def upstreams(path: str = RESOLV_CONF, stub_path: str = STUB_UPSTREAMS) -> list[str]:
    """The host's resolvers (``nameserver`` lines of ``path``). When they are all on
    loopback (a local stub such as systemd-resolved's 127.0.0.53), the stub's own
    upstreams from ``stub_path`` if it lists any: they answer without the stub's
    rewriting and caching; else the stub itself (the agent shares the host's
    loopback, which containers do not)."""
    found = _nameservers(path)
    if found and all(ipaddress.ip_address(server).is_loopback for server in found):
        behind = [s for s in _nameservers(stub_path)
                  if not ipaddress.ip_address(s).is_loopback]
        return behind or found
    return found


def _nameservers(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as lines:
            text = lines.read()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(words[1].split("%")[0])))
            except ValueError:
                continue
    return found


class Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, now: float, rate: float) -> None:
        self.rate, self.burst = rate, rate * BURST / RATE
        self.tokens, self.stamp = self.burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Resolver:
    """The DNS server of one network, listening on ``address`` (its gateway) port
    ``port`` once :meth:`start` ran, and on the gateways of ``more`` (the IPv6 one of a
    dual-stack network: (gateway, subnet) pairs)."""

    def __init__(self, address: str, subnet: str, *, forward: bool = True,
                 upstream: Sequence[str] | None = None, port: int = 53,
                 domain: str = DOMAIN, rate: float | None = RATE,
                 more: Sequence[tuple[str, str]] = ()) -> None:
        """``rate``: queries a second each client may make (bursts of twice as many);
        None for no limit."""
        self.address, self.port = address, port
        self.addresses = [address, *(gateway for gateway, _ in more)]
        self.rate = rate
        self.subnets = [ipaddress.ip_network(net) for net in (subnet, *(n for _, n in more))]
        self.forward = forward
        self.upstream = list(upstreams() if upstream is None else upstream)
        self.domain = DNSLabel(domain)
        self._names: dict[str, list[str]] = {}  # name (lower case) -> its addresses
        self._reverse: dict[str, list[str]] = {}  # reverse pointer -> names
        self._buckets: dict[str, Bucket] = {}
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()

    # --- records -------------------------------------------------------------------

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Holds exactly ``records`` (name -> its addresses) from now on."""
        self._names, self._reverse = {}, {}
        for name, addresses in records.items():
            self.add(name, addresses)

    def add(self, name: str, addresses: Sequence[str]) -> None:
        """Answers ``name`` with ``addresses`` too (one endpoint's: a name several
        endpoints hold is answered with each of their addresses)."""
        name = name.lower()
        held = self._names.setdefault(name, [])
        for address in addresses:
            if address not in held:
                held.append(address)
                self._reverse.setdefault(ipaddress.ip_address(address).reverse_pointer,
                                         []).append(f"{name}.{self.domain}")

    def remove(self, name: str, addresses: Sequence[str]) -> None:
        """No longer answers ``name`` with ``addresses`` (nor with nothing left)."""
        name = name.lower()
        held = self._names.get(name, [])
        for address in addresses:
            if address in held:
                held.remove(address)
                pointer = ipaddress.ip_address(address).reverse_pointer
                targets = self._reverse.get(pointer, [])
                with contextlib.suppress(ValueError):
                    targets.remove(f"{name}.{self.domain}")
                if not targets:
                    self._reverse.pop(pointer, None)
        if not held:
            self._names.pop(name, None)

    # --- serving -------------------------------------------------------------------

    async def start(self, namespace: str | None = None) -> None:
        """Listens on every address, in network namespace ``namespace`` (a path) when
        given, else in this thread's; OSError when an address or port cannot be bound."""

        def bind() -> list[socket.socket]:
            made: list[socket.socket] = []
            try:
                for address in self.addresses:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    udp = socket.socket(family, socket.SOCK_DGRAM)
                    made.append(udp)
                    tcp = socket.socket(family, socket.SOCK_STREAM)
                    made.append(tcp)
                    if family == socket.AF_INET6:
                        # The IPv6 gateway is added without DAD: usable at once.
                        for sock in (udp, tcp):
                            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                    udp.bind((address, self.port))
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((address, self.port))
                    tcp.listen(128)
            except BaseException:
                for sock in made:
                    sock.close()
                raise
            return made

        made = await netns.in_namespace(namespace, bind) if namespace else bind()
        loop = asyncio.get_running_loop()
        for udp, tcp in zip(made[::2], made[1::2], strict=True):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
            self._udp.append(transport)
            self._tcp.append(await asyncio.start_server(self._serve_tcp, sock=tcp))

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def admitted(self, client: str) -> bool:
        """Whether ``client`` is of the subnet and within its rate."""
        try:
            address = ipaddress.ip_address(client.split("%")[0])
            if not any(address in subnet for subnet in self.subnets):
                return False
        except ValueError:
            return False
        if self.rate is None:
            return True
        now = time.monotonic()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[client] = Bucket(now, self.rate)
        return bucket.take(now)

    async def handle(self, data: bytes, tcp: bool) -> bytes | None:
        """The answer to query ``data`` (None: none is sent)."""
        try:
            query = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return _format_error(data)
        if query.header.qr or query.header.opcode != 0:
            return _reply(query, RCODE.NOTIMP).pack() if not query.header.qr else None
        if len(query.questions) != 1:
            return _reply(query, RCODE.FORMERR).pack()
        question = query.q
        local = self._local(query, question.qname, question.qtype)
        if local is not None:
            return local.pack()
        if question.qtype == QTYPE.ANY or not self.forward or not self.upstream:
            return _reply(query, RCODE.REFUSED).pack()
        return await self._forward(query, data, tcp)

    def _local(self, query: DNSRecord, name: DNSLabel, qtype: int) -> DNSRecord | None:
        """The answer from the records, or None for a name that is not the network's."""
        text = str(name).rstrip(".").lower()
        if text.endswith((".in-addr.arpa", ".ip6.arpa")):
            names = self._reverse.get(text)
            if names is None:
                if not any(_reverse_in(text, subnet) for subnet in self.subnets):
                    return None
                return _reply(query, RCODE.NXDOMAIN, authoritative=True)
            reply = _reply(query, authoritative=True)
            if qtype in (QTYPE.PTR, QTYPE.ANY):
                for target in names:
                    reply.add_answer(RR(name, QTYPE.PTR, rdata=PTR(target), ttl=TTL))
            return reply
        label = DNSLabel(text)
        if label.matchSuffix(self.domain):
            label = label.stripSuffix(self.domain)
        elif len(label.label) != 1:
            return None  # a name of the world: forwarded
        held = self._names.get(str(label).rstrip("."))
        if held is None:
            return _reply(query, RCODE.NXDOMAIN, authoritative=True)
        reply = _reply(query, authoritative=True)
        for address in held:
            if ":" not in address and qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=TTL))
            elif ":" in address and qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        return reply

    async def _forward(self, query: DNSRecord, data: bytes, tcp: bool) -> bytes:
        """``data`` sent to each upstream in turn, under an id of our own (a forged
        answer must guess it); its answer with the client's id back."""
        client_id = query.header.id
        for server in self.upstream:
            our_id = secrets.randbelow(0x10000)
            sent = struct.pack("!H", our_id) + data[2:]
            try:
                answer = await asyncio.wait_for(
                    (_ask_tcp if tcp else _ask_udp)(server, sent, our_id), UPSTREAM_TIMEOUT)
            except (TimeoutError, OSError, EOFError) as error:
                log.debug("upstream did not answer", extra={"upstream": server,
                                                             "error": str(error)})
                continue
            return struct.pack("!H", client_id) + answer[2:]
        return _reply(query, RCODE.SERVFAIL).pack()

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack("!H", header)
                if length > MAX_TCP_FRAME or length < 12:
                    return
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                if not self.admitted(client):
                    return
                answer = await self.handle(data, tcp=True)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


class Resolvers:
    """The DNS servers of this host's networks, one per network with option cnm.dns on,
    each holding the names of the network's endpoints on this host."""

    def __init__(self, namespace: str | None = None, port: int = 53,
                 upstream: Sequence[str] | None = None) -> None:
        self.namespace, self.port, self.upstream = namespace, port, upstream
        self.running: dict[str, Resolver] = {}

    async def update(self, network: NetworkSpec, endpoints: Sequence[EndpointSpec],
                     remotes: Sequence[RemoteEndpoint] = ()) -> None:
        """Serves exactly ``network``'s names (those of ``endpoints`` here and of
        ``remotes``, on other hosts), starting its server if it is not running; a server
        that cannot listen is logged, and tried again at the next update: the network
        works without its names."""
        resolver = await self._resolver(network)
        if resolver is not None:
            records: dict[str, list[str]] = {}
            for endpoint in [*endpoints, *remotes]:
                for name in endpoint.dns_names:
                    records.setdefault(name, []).extend(_addresses(endpoint))
            resolver.set_records(records)

    async def added(self, network: NetworkSpec, endpoint: EndpointSpec) -> None:
        """Answers ``endpoint``'s names too, on a running server (a connect: no walk
        over the other endpoints)."""
        resolver = self.running.get(network.network_id)
        if resolver is not None:
            for name in endpoint.dns_names:
                resolver.add(name, _addresses(endpoint))

    def removed(self, endpoint: EndpointSpec) -> None:
        resolver = self.running.get(endpoint.network_id)
        if resolver is not None:
            for name in endpoint.dns_names:
                resolver.remove(name, _addresses(endpoint))

    async def _resolver(self, network: NetworkSpec) -> Resolver | None:
        resolver = self.running.get(network.network_id)
        if resolver is not None or not network.dns or not network.first_gateway:
            return resolver
        gateways = [(gateway, subnet) for gateway, subnet in (
            (network.gateway, network.subnet), (network.ipv6_gateway, network.ipv6_subnet))
            if subnet]
        resolver = Resolver(*gateways[0], forward=not network.internal, more=gateways[1:],
                            upstream=self.upstream, port=self.port)
        try:
            await resolver.start(self.namespace)
        except OSError as error:
            log.warning("network's DNS server cannot listen", extra={
                "network_id": network.network_id, "address": network.first_gateway,
                "error": error.strerror or str(error)})
            return None
        self.running[network.network_id] = resolver
        return resolver

    def check_ports(self, ports: Sequence[PortSpec]) -> None:
        """ALREADY_EXISTS (PORT_IN_USE) for a published port a network's DNS server holds
        (on all addresses, or on its gateway); nothing else would say who holds it."""
        for port in ports:
            for network_id, resolver in self.running.items():
                if (port.protocol in ("udp", "tcp") and port.host_port == resolver.port
                        and port.host_ip in ("", *resolver.addresses)):
                    raise errors.AlreadyExists(
                        f"host port {port.host_ip or '*'}:{port.host_port}/{port.protocol} "
                        f"is held by the DNS server of network {network_id!r} on "
                        f"{resolver.address}: publish on another host address, or set "
                        f"{validation.OPTION_DNS}=false on that network",
                        reason="PORT_IN_USE", protocol=port.protocol, host_ip=port.host_ip,
                        host_port=port.host_port)

    async def stop(self, network_id: str) -> None:
        resolver = self.running.pop(network_id, None)
        if resolver is not None:
            await resolver.stop()

    async def close(self) -> None:
        for network_id in list(self.running):
            await self.stop(network_id)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.resolver.admitted(addr[0]):
            return
        self.resolver._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr) -> None:
        answer = await self.resolver.handle(data, tcp=False)
        if answer is not None and self.transport is not None:
            if len(answer) > 512:  # no EDNS from us: the client asks again over TCP
                answer = _truncated(answer)
            self.transport.sendto(answer, addr)


def _reply(query: DNSRecord, rcode: int = RCODE.NOERROR,
           authoritative: bool = False) -> DNSRecord:
    return DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=int(authoritative), ra=1,
                               rd=query.header.rd, rcode=rcode), q=query.q)


def _format_error(data: bytes) -> bytes | None:
    """FORMERR for a query whose header can be read, else nothing."""
    if len(data) < 12 or data[2] & 0x80:  # too short, or itself a response
        return None
    header = DNSHeader(id=struct.unpack("!H", data[:2])[0], qr=1, rcode=RCODE.FORMERR)
    return DNSRecord(header).pack()


def _addresses(endpoint: EndpointSpec | RemoteEndpoint) -> list[str]:
    """An endpoint's addresses: A, and AAAA on a dual-stack network (AAAA alone on an
    IPv6-only one)."""
    return [address for address in (endpoint.address, endpoint.ipv6_address) if address]


def _truncated(answer: bytes) -> bytes:
    record = DNSRecord.parse(answer)
    reply = DNSRecord(DNSHeader(id=record.header.id, qr=1, tc=1, ra=1, rd=record.header.rd,
                                aa=record.header.aa, rcode=record.header.rcode), q=record.q)
    return reply.pack()


def _reverse_in(name: str, subnet: ipaddress._BaseNetwork) -> bool:
    """Whether reverse name ``name`` is that of an address of ``subnet``."""
    labels = name.split(".")
    try:
        if name.endswith(".in-addr.arpa"):
            parts = labels[:-2][::-1]
            if len(parts) != 4:
                return False
            address = ipaddress.ip_address(".".join(parts))
        else:
            nibbles = labels[:-2][::-1]
            if len(nibbles) != 32:
                return False
            text = "".join(nibbles)
            address = ipaddress.ip_address(":".join(text[i:i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return False
    return address in subnet


async def _ask_udp(server: str, data: bytes, query_id: int) -> bytes:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()

    class Ask(asyncio.DatagramProtocol):
        def datagram_received(self, reply: bytes, addr) -> None:
            # Only the upstream's answer to this id: anything else is ignored.
            if (addr[0] == server and len(reply) >= 12
                    and struct.unpack("!H", reply[:2])[0] == query_id
                    and not answered.done()):
                answered.set_result(reply)

        def error_received(self, exc) -> None:
            if not answered.done():
                answered.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Ask, remote_addr=(server, 53))
    try:
        transport.sendto(data)
        return await answered
    finally:
        transport.close()


async def _ask_tcp(server: str, data: bytes, query_id: int) -> bytes:
    reader, writer = await asyncio.open_connection(server, 53)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = await reader.readexactly(length)
        if struct.unpack("!H", reply[:2])[0] != query_id:
            raise EOFError("an answer to another query")
        return reply
    finally:
        writer.close()

