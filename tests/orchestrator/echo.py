"""A TCP echo of the peer's address, for traffic tests inside namespaces.

``serve PORT``: answer every connection with the address it came from.
``ask HOST PORT [TIMEOUT]``: print the answer; exit 1 when nothing answers.
"""

from __future__ import annotations

import socket
import sys


def serve(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(16)
        print("ready", flush=True)
        while True:
            connection, peer = sock.accept()
            with connection:
                connection.sendall(peer[0].encode())


def ask(host: str, port: int, timeout: float) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            print(sock.recv(64).decode())
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit(ask(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4
                     else 3.0))
