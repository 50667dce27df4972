"""Tiny TCP/UDP echo tools for traffic tests, run inside namespaces with ``ip netns exec``.

``serve PROTO PORT``: answer every connection or datagram with the
source address the server saw. ``ask PROTO HOST PORT``: print the answer,
exit 1 when nothing answers within the timeout.
"""

from __future__ import annotations

import socket
import sys
import threading


def _bound(kind: int, port: int) -> socket.socket:
    """A socket on ``port`` of every IPv4 and IPv6 address (IPv4 only where the
    namespace has no IPv6)."""
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", port)
    except OSError:
        sock, address = socket.socket(socket.AF_INET, kind), ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def _seen(peer) -> bytes:
    """The peer's address as it sent from: IPv4 without its IPv6 mapping."""
    return peer[0].removeprefix("::ffff:").encode()


def serve(protocol: str, port: int) -> None:
    if protocol == "udp":
        sock = _bound(socket.SOCK_DGRAM, port)
        print("ready", flush=True)
        while True:
            _, peer = sock.recvfrom(64)
            sock.sendto(_seen(peer), peer)
    sock = _bound(socket.SOCK_STREAM, port)
    sock.listen(64)
    print("ready", flush=True)
    while True:
        connection, peer = sock.accept()
        threading.Thread(target=_answer, args=(connection, peer), daemon=True).start()


def _answer(connection: socket.socket, peer) -> None:
    with connection:
        connection.sendall(_seen(peer))


def ask(protocol: str, host: str, port: int, timeout: float) -> int:
    try:
        if protocol == "udp":
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.sendto(b"?", (host, port))
                answer, _ = sock.recvfrom(64)
        else:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                answer = sock.recv(64)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(answer.decode())
    return 0


if __name__ == "__main__":
    command, protocol, *rest = sys.argv[1:]
    if command == "serve":
        serve(protocol, int(rest[0]))
    else:
        sys.exit(ask(protocol, rest[0], int(rest[1]), float(rest[2]) if len(rest) > 2 else 2.0))
