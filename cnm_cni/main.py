"""``cnm-cni``: the CNI plugin a runtime execs, as thin as a process can be.

It imports the standard library only (a process importing grpcio takes
110-150 ms to start): VERSION is answered here, every other verb is sent to
the agent of this host over its unix socket (netdriver_service/cni.py) and
its answer printed as CNI wants it. See docs/cni.md.

``cnm-cni --install DIR`` writes it into a CNI bin dir as the file ``DIR/cnm``
(the configuration's ``type``), run by this Python with ``-IS``.

The socket is found in this order: the network configuration's ``socket``
key, then ``CNM_CNI_SOCKET``, then ``$CNM_RUN_DIR/cni.sock`` (``/run/cnm``
when CNM_RUN_DIR is unset), where an agent started with defaults serves it.
"""

from __future__ import annotations

import json
import os
import socket
import sys

SUPPORTED_VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, DECODING_FAILURE = 1, 4, 6
TRY_AGAIN_LATER, NOT_AVAILABLE = 11, 50
TIMEOUT = 120.0  # seconds; a runtime has its own deadline and kills the plugin past it


def socket_path(config: dict) -> str:
    path = config.get("socket")
    if isinstance(path, str) and path:
        return path
    return os.environ.get("CNM_CNI_SOCKET") or os.path.join(
        os.environ.get("CNM_RUN_DIR") or "/run/cnm", "cni.sock")


def fail(version: str, code: int, msg: str, details: str = "") -> int:
    error = {"cniVersion": version or SUPPORTED_VERSIONS[-1], "code": code, "msg": msg}
    if details:
        error["details"] = details
    print(json.dumps(error))
    return 1


def ask(path: str, request: dict) -> dict:
    """One request to the agent, its answer; OSError when the agent cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def run(stdin: str, env: dict[str, str]) -> int:
    command = env.get("CNI_COMMAND", "")
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except ValueError as error:
        return fail("", DECODING_FAILURE, f"the network configuration is not JSON: {error}")
    if not isinstance(config, dict):
        return fail("", DECODING_FAILURE, "the network configuration is not a JSON object")
    version = config.get("cniVersion", "") if isinstance(config.get("cniVersion"), str) else ""
    if command == "VERSION":
        print(json.dumps({"cniVersion": SUPPORTED_VERSIONS[-1],
                          "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    if command not in COMMANDS:
        return fail(version, INVALID_ENVIRONMENT,
                    f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if version not in SUPPORTED_VERSIONS:
        return fail(version, INCOMPATIBLE_VERSION,
                    f"cniVersion {version!r} is not supported (supported: "
                    f"{', '.join(SUPPORTED_VERSIONS)})")
    path = socket_path(config)
    try:
        answer = ask(path, {
            "command": command, "containerID": env.get("CNI_CONTAINERID", ""),
            "netns": env.get("CNI_NETNS", ""), "ifname": env.get("CNI_IFNAME", ""),
            "args": env.get("CNI_ARGS", ""), "config": config,
        })
    except (OSError, ValueError) as error:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        return fail(version, code, f"the cnm agent does not answer on {path}: "
                                   f"{getattr(error, 'strerror', None) or error}")
    if "error" in answer:
        error = answer["error"]
        return fail(version, int(error.get("code", 100)), str(error.get("msg", "")),
                    str(error.get("details", "")))
    if "result" in answer:
        print(json.dumps(answer["result"]))
    return 0


def install(directory: str, name: str = "cnm") -> str:
    """Writes this plugin into a runtime's CNI bin dir as one file, started with
    ``-IS`` (isolated, no site: this file needs only the standard library),
    which saves 10-15 ms of every exec over the console script. Returns its path."""
    path = os.path.join(directory, name)
    with open(__file__, encoding="utf-8") as source:
        body = source.read()
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.tmp{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as target:
        target.write(f"#!{sys.executable} -IS\n{body}")
    os.chmod(partial, 0o755)
    os.replace(partial, path)
    return path


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--install":
        print(install(sys.argv[2]))
        return
    if len(sys.argv) > 1:
        sys.exit("usage: cnm-cni (as a CNI plugin, CNI_COMMAND in the environment) | "
                 "cnm-cni --install CNI_BIN_DIR")
    sys.exit(run(sys.stdin.read(), dict(os.environ)))


if __name__ == "__main__":
    main()
