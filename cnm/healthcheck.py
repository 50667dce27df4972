"""Exits 0 when the gRPC server at ADDR reports SERVING: a container health check.

    python -m cnm.healthcheck ADDR [--service NAME] [--timeout SECONDS]

ADDR is the server's listen address as configured (``CNM_*_LISTEN``: HOST:PORT
or unix:PATH); a wildcard host (``0.0.0.0``, ``[::]``, empty) is checked on loopback, since a
server listening on every address is reachable there. With ``CNM_TLS_CA``,
``CNM_TLS_CERT`` and ``CNM_TLS_KEY`` set (as in the service's own container),
the check speaks mutual TLS with those files: any certificate of the CA may ask
for health.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnm import config, grpc_client, tls
from cnm.tls import Tls

WILDCARD_HOSTS = {"", "0.0.0.0", "[::]", "::"}


def dial_address(listen: str) -> str:
    """The address to dial for a server that listens on ``listen``."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return listen
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {listen!r} is not HOST:PORT")
    if host in WILDCARD_HOSTS:
        host = "[::1]" if host in {"[::]", "::"} else "127.0.0.1"
    return f"{host}:{port}"


def check(address: str, service: str = "", timeout: float = 3.0, tls: Tls | None = None) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) the server reports for ``service``."""
    with grpc_client.channel(address, tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cnm.healthcheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("address", help="the server's listen address, HOST:PORT or unix:PATH")
    parser.add_argument("--service", default="", help="service name to check (default: the server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    config.add_tls_flags(parser)
    args = parser.parse_args(argv)
    files = tls.from_parsed(parser, args)
    try:
        address = dial_address(args.address)
        status = check(address, args.service, args.timeout, files)
    except ValueError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"unhealthy: {address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {address} is {status}", file=sys.stderr)
        return 1
    print(f"{address} SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
