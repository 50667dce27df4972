"""``cnm-cni``: the CNI plugin a runtime execs, as thin as a process can be.

It imports the standard library only, and of it as little as it can (a process
importing grpcio takes 110-150 ms to start; one importing json and socket 7 ms
each more than one that does not): VERSION is answered here, every other verb
is sent as it came to the agent of this host over its unix socket
(netdriver_service/cni.py), which decodes, checks and answers it, and the
answer is printed. See docs/cni.md.

``cnm-cni --install DIR`` writes it into a CNI bin dir as the file ``DIR/cnm``
(the configuration's ``type``), run by this Python with ``-IS``.

The socket is found in this order: the network configuration's ``socket``
key, then ``CNM_CNI_SOCKET``, then ``$CNM_RUN_DIR/cni.sock`` (``/run/cnm``
when CNM_RUN_DIR is unset), where an agent started with defaults serves it.
"""

from __future__ import annotations

import _socket  # not socket, nor json: each would add some 7 ms to every exec
import os
import sys

VERSION_ANSWER = '{"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}'
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
ENVIRONMENT = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")
INVALID_ENVIRONMENT, DECODING_FAILURE, TRY_AGAIN_LATER, NOT_AVAILABLE = 4, 6, 11, 50
TIMEOUT = 120.0  # seconds; a runtime has its own deadline and kills the plugin past it


def socket_path(config: str) -> str:
    """The agent's CNI socket: the configuration's ``socket``, else CNM_CNI_SOCKET, else
    $CNM_RUN_DIR/cni.sock. The configuration is decoded here only when it has one."""
    if '"socket"' in config:
        import json

        try:
            path = json.loads(config).get("socket")
        except (ValueError, AttributeError):
            path = None
        if isinstance(path, str) and path:
            return path
    return os.environ.get("CNM_CNI_SOCKET") or os.path.join(
        os.environ.get("CNM_RUN_DIR") or "/run/cnm", "cni.sock")


def fail(config: str, code: int, msg: str) -> tuple[int, str]:
    """A CNI error this process must say itself (the agent says every other one)."""
    import json

    try:
        version = json.loads(config).get("cniVersion")
    except ValueError as error:  # the first thing wrong (the agent would have said so)
        version, code, msg = None, DECODING_FAILURE, f"the configuration is not JSON: {error}"
    except AttributeError:
        version = None
    return 1, json.dumps({"cniVersion": version if isinstance(version, str) and version
                          else "1.1.0", "code": code, "msg": msg})


def ask(path: str, request: bytes) -> tuple[int, str]:
    """Sends the request to the agent; its answer is the exit status on a line, then what
    to print."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    status, _, output = b"".join(chunks).partition(b"\n")
    return int(status), output.decode()


def run(config: str, env: dict[str, str]) -> tuple[int, str]:
    """(exit status, stdout) of one invocation."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, VERSION_ANSWER
    if command not in COMMANDS:
        return fail(config, INVALID_ENVIRONMENT,
                    f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}, VERSION")
    values = [env.get(name, "") for name in ENVIRONMENT]
    if any("\n" in value for value in values):
        return fail(config, INVALID_ENVIRONMENT, "a CNI_* variable holds a line break")
    # The request: a version line, the variables, an empty line, the configuration as given.
    request = ("CNI/1\n" + "".join(f"{name}={value}\n" for name, value in
                                   zip(ENVIRONMENT, values)) + "\n" + config).encode()
    path = socket_path(config)
    try:
        return ask(path, request)
    except (OSError, ValueError) as error:
        return fail(config, NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER,
                    f"the cnm agent does not answer on {path}: "
                    f"{getattr(error, 'strerror', None) or error}")


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
    status, output = run(sys.stdin.read(), dict(os.environ))
    if output:
        sys.stdout.write(output + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
