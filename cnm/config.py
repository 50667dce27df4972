"""Command-line flags whose defaults come from environment variables."""

from __future__ import annotations

import argparse
import os
import socket

from cnm import version

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_IPAM_ADDR = "127.0.0.1:50052"
DEFAULT_NETDRIVER_ADDR = "127.0.0.1:50053"
DEFAULT_ORCHESTRATOR_ADDR = "127.0.0.1:50051"
DEFAULT_RUN_DIR = "/run/cnm"


# Settings of a configuration file (the CLI's: cnm_cli.settings), by environment variable
# name; between the environment and the defaults. Services never load one.
_from_file: dict[str, str] = {}


def use_file_settings(settings: dict[str, str]) -> None:
    """Makes ``settings`` (environment variable name -> value) the layer :func:`env` reads
    between the environment and the defaults."""
    _from_file.clear()
    _from_file.update(settings)


def env(name: str, default: str) -> str:
    """The value of environment variable ``name``, else of the configuration file (when one
    was loaded), else ``default``."""
    return os.environ.get(name) or _from_file.get(name) or default


def run_dir() -> str:
    """Where cnm keeps a host's runtime state (the agent's, cnm run's logs)."""
    return env("CNM_RUN_DIR", DEFAULT_RUN_DIR)


def default_host_id() -> str:
    return env("CNM_HOST_ID", socket.gethostname())


def add_flag(
    parser: argparse.ArgumentParser, flag: str, env_name: str, default: str, help_text: str
) -> None:
    """Adds ``flag`` whose default is ``$env_name``, else ``default``; help names both."""
    parser.add_argument(
        flag,
        default=env(env_name, default),
        help=f"{help_text} (env {env_name}, default {default or 'unset'})",
    )


def add_listen_flag(parser: argparse.ArgumentParser, env_name: str, default: str) -> None:
    """A service's --listen (cnm.server.listen_addresses reads it)."""
    add_flag(parser, "--listen", env_name, default,
             "gRPC address(es) to listen on, host:port or unix:/path, comma-separated")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    version.add_flag(parser)
    add_flag(parser, "--log-level", "CNM_LOG_LEVEL", "INFO", "log level")
    add_tls_flags(parser)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """What a server adds to the common flags: its safe-default overrides."""
    parser.add_argument(
        "--insecure", action="store_true", default=env("CNM_INSECURE", "") not in ("", "0"),
        help="allow listening beyond loopback without TLS (env CNM_INSECURE=1)")
    add_flag(parser, "--socket-group", "CNM_SOCKET_GROUP", "",
             "group given access (mode 0660) to a unix listen socket; 0600 without")
    add_flag(parser, "--metrics-listen", "CNM_METRICS_LISTEN", "",
             "serve Prometheus metrics on PORT (loopback) or HOST:PORT, over HTTPS with "
             "client certificates when TLS is on; off when empty")
    add_flag(parser, "--otlp-endpoint", "CNM_OTLP_ENDPOINT", "",
             "export OpenTelemetry traces (a span per RPC) to this OTLP/gRPC collector: "
             "http://HOST:PORT, https://HOST:PORT or unix:///PATH; off when empty")


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """The three files of mutual TLS (see cnm.tls): all three, or none for plaintext."""
    add_flag(parser, "--tls-ca", "CNM_TLS_CA", "", "CA certificate (PEM) for mutual TLS")
    add_flag(parser, "--tls-cert", "CNM_TLS_CERT", "", "this process's certificate (PEM)")
    add_flag(parser, "--tls-key", "CNM_TLS_KEY", "", "its private key (PEM)")


def seconds(parser: argparse.ArgumentParser, flag: str, value: str) -> float:
    """A flag's value as a number of seconds >= 0; a usage error otherwise."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        parser.error(f"{flag}: want a number of seconds >= 0, not {value!r}")
    return number
