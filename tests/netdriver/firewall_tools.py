"""Tools the firewall tests run inside namespaces with ``ip netns exec``.

``agent BACKEND[/RUNNER]``  drives a firewall backend from JSON lines on stdin, one
                   answer line each (the backend then runs in the namespace,
                   as the real agent does)
``serve NAME PORT...``  TCP and UDP servers answering "NAME PEER-ADDRESS"
``probe JSON``     runs [[proto, host, port, timeout], ...] in parallel,
                   prints a JSON list of answers (null when nothing answered)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def _agent(backend: str) -> None:
    from cnm import errors
    from netdriver_service.firewall import NetworkRules, PortRule
    from netdriver_service.firewall.backends import make_firewall

    async def main() -> None:
        name, _, prefer = backend.partition("/")
        firewall = make_firewall(name, **({"prefer": prefer} if prefer else {}))
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            request = json.loads(line)
            args = request.get("args", {})
            if "network" in args:
                args["network"] = NetworkRules(**{
                    **args["network"],
                    "allowed_networks": tuple(args["network"].get("allowed_networks", ())),
                })
            for key in ("ports",):
                if key in args:
                    args[key] = [PortRule(**port) for port in args[key]]
            if "networks" in args:
                args["networks"] = [
                    NetworkRules(**{**n, "allowed_networks": tuple(n.get("allowed_networks", ()))})
                    for n in args["networks"]
                ]
            try:
                result = await getattr(firewall, request["op"])(**args)
                if isinstance(result, list):
                    result = [dataclasses.asdict(item) if dataclasses.is_dataclass(item) else item
                              for item in result]
                answer = {"result": result}
            except errors.CnmError as error:
                answer = {"error": type(error).__name__, "message": error.message,
                          "reason": error.reason, "metadata": error.metadata}
            except Exception as error:  # noqa: BLE001 - reported to the test, which fails
                answer = {"error": "Internal", "message": f"{type(error).__name__}: {error}",
                          "reason": "UNEXPECTED", "metadata": {}}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()

    asyncio.run(main())


def _serve(name: str, ports: list[int]) -> None:
    def tcp(port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(64)
        while True:
            connection, peer = sock.accept()
            with connection:
                connection.sendall(f"{name} {peer[0]}".encode())

    def udp(port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        while True:
            _, peer = sock.recvfrom(64)
            sock.sendto(f"{name} {peer[0]}".encode(), peer)

    threads = [threading.Thread(target=serve, args=(port,), daemon=True)
               for port in ports for serve in (tcp, udp)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    threads[0].join()


def _ask(protocol: str, host: str, port: int, timeout: float) -> str | None:
    try:
        if protocol == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.sendto(b"?", (host, port))
                return sock.recvfrom(64)[0].decode()
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).decode()
    except OSError:
        return None


def _probe(probes: list[list]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        answers = list(pool.map(lambda probe: _ask(*probe), probes))
    print(json.dumps(answers))


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "agent":
        _agent(rest[0])
    elif command == "serve":
        _serve(rest[0], [int(port) for port in rest[1:]])
    else:
        _probe(json.loads(rest[0]))
