"""``cnm-cni``: the CNI plugin a runtime execs, as thin as a process can be.

It imports the standard library only, and of it as little as it can (a process
importing grpcio takes 110-150 ms to start; one importing json and socket 7 ms
each more than one that does not): VERSION is answered here, every other verb
is sent as it came to the agent of this host over its unix socket
(netdriver_service/cni.py), which decodes, checks and answers it, and the
answer is printed. See docs/cni.md.

``cnm-cni --install DIR [--python PYTHON]`` writes it into a CNI bin dir as the
file ``DIR/cnm`` (the configuration's ``type``), run with ``-IS`` by the system's
Python 3 (or this one, or PYTHON).

The socket is found in this order: the network configuration's ``socket``
key, then ``CNM_CNI_SOCKET``, then ``$CNM_RUN_DIR/cni.sock`` (``/run/cnm``
when CNM_RUN_DIR is unset), where an agent started with defaults serves it.
"""

from __future__ import annotations

import os
import sys

VERSION_ANSWER = '{"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}'
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
ENVIRONMENT = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")
INVALID_ENVIRONMENT, DECODING_FAILURE, TRY_AGAIN_LATER, NOT_AVAILABLE = 4, 6, 11, 50
TIMEOUT = 120.0  # seconds; a runtime has its own deadline and kills the plugin past it


def socket_path(config: str) -> str:
    """The agent's CNI socket: the configuration's ``socket``, else CNM_CNI_SOCKET, else
    $CNM_RUN_DIR/cni.sock."""
    found = top_level_string(config, "socket") if '"socket"' in config else None
    if found:
        return found
    return os.environ.get("CNM_CNI_SOCKET") or os.path.join(
        os.environ.get("CNM_RUN_DIR") or "/run/cnm", "cni.sock")


def top_level_string(config: str, key: str) -> str | None:
    """The string value of ``key`` in the configuration's top-level object, or None.

    Found by walking the text for the key at depth one, outside every string, because
    importing json would cost each exec 8 ms (more than the rest of this process); a
    value with an escape in it, or text that does not read as expected, is decoded by
    json after all. The agent decodes the whole configuration in any case."""
    wanted = f'"{key}"'
    depth, index, length = 0, 0, len(config)
    while index < length:
        char = config[index]
        if char == '"':
            end = _string_end(config, index)
            if end == -1:
                return None
            if depth == 1 and config.startswith(wanted, index) and end == index + len(key) + 1:
                rest = config[end + 1:].lstrip()
                if rest.startswith(":"):  # (else it was a value, "socket")
                    return _value(config, key, rest[1:].lstrip())
            index = end + 1
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        index += 1
    return None


def _string_end(text: str, start: int) -> int:
    """The index of the quote closing the string that opens at ``start`` (-1: none)."""
    end = start
    while (end := text.find('"', end + 1)) != -1:
        before = end
        while text[before - 1] == "\\":
            before -= 1
        if (end - before) % 2 == 0:  # not escaped: an even run of backslashes before it
            return end
    return -1


def _value(config: str, key: str, text: str) -> str | None:
    """The string that starts ``text``, read as is when it has no escape."""
    close = text.find('"', 1)
    if not text.startswith('"') or close == -1 or "\\" in text[:close]:
        return _decoded(config, key)
    return text[1:close]


def _decoded(config: str, key: str) -> str | None:
    import json

    try:
        value = json.loads(config).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


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
    import _socket  # not socket: that would add some 7 ms to every exec

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


SYSTEM_PYTHON = "/usr/bin/python3"


def install(directory: str, name: str = "cnm", python: str = "") -> str:
    """Writes this plugin into a runtime's CNI bin dir as one file, started with
    ``-IS`` (isolated, no site: this file needs only the standard library), which
    saves 10-15 ms of every exec over the console script. Returns its path.

    It runs on ``python`` if given, else on the system's Python 3 when there is one,
    else on this one: it needs no package of this environment, and a distribution's
    Python (built with PGO) starts some 3 ms sooner than one built from source (as
    pyenv builds them), which a runtime pays at every exec."""
    interpreter = python or (SYSTEM_PYTHON if _runs_this(SYSTEM_PYTHON) else sys.executable)
    path = os.path.join(directory, name)
    with open(__file__, encoding="utf-8") as source:
        body = source.read()
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.tmp{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as target:
        target.write(f"#!{interpreter} -IS\n{body}")
    os.chmod(partial, 0o755)
    os.replace(partial, path)
    return path


def _runs_this(python: str) -> bool:
    """Whether ``python`` is a Python new enough for this file (3.8: ``:=``)."""
    import subprocess

    try:
        check = "import sys; sys.exit(sys.version_info < (3, 8))"
        return subprocess.run([python, "-IS", "-c", check], check=False, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def main() -> None:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--install"] and len(arguments) in (2, 4) and (
            len(arguments) == 2 or arguments[2] == "--python"):
        print(install(arguments[1], python=arguments[3] if len(arguments) == 4 else ""))
        return
    if arguments == ["--version"]:
        from cnm import version  # only here: the plugin's start stays light

        print(f"cnm-cni {version.version()}")
        return
    if arguments:
        sys.exit("usage: cnm-cni (as a CNI plugin, CNI_COMMAND in the environment) | "
                 "cnm-cni --install CNI_BIN_DIR [--python INTERPRETER]")
    status, output = run(sys.stdin.read(), dict(os.environ))
    if output:
        sys.stdout.write(output + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
