"""``cnm-docker-plugin``: serves Docker's plugin protocol on a unix socket that dockerd
finds in its plugin directory, beside the agent of every host (docs/docker.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from aiohttp import web

from cnm import config, logs, tls
from cnm_docker.plugin import Plugin

DEFAULT_SOCKET = "/run/docker/plugins/cnm.sock"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnm-docker-plugin",
        description="cnm as Docker's network and IPAM driver (docker network create -d cnm "
                    "--ipam-driver cnm)")
    config.add_flag(parser, "--socket", "CNM_DOCKER_PLUGIN_SOCKET", DEFAULT_SOCKET,
                    "unix socket to serve; dockerd looks for plugins in /run/docker/plugins")
    config.add_flag(parser, "--orchestrator", "CNM_ORCHESTRATOR",
                    config.DEFAULT_ORCHESTRATOR_ADDR, "the orchestrator's gRPC address")
    config.add_flag(parser, "--host-id", "CNM_HOST_ID", config.default_host_id(),
                    "this host's id, as its agent registers it")
    config.add_common_flags(parser)
    args = parser.parse_args(argv)
    args.tls = tls.from_parsed(parser, args)
    if not os.path.isabs(args.socket):
        parser.error(f"--socket: {args.socket!r} is not an absolute path")
    return args


async def serve(args: argparse.Namespace) -> None:
    logger = logs.setup("docker_plugin", args.log_level)
    plugin = Plugin(orchestrator=args.orchestrator, host_id=args.host_id, tls=args.tls)
    runner = web.AppRunner(plugin.app(), access_log=None)
    await runner.setup()
    os.makedirs(os.path.dirname(args.socket), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    previous = os.umask(0o177)  # dockerd runs as root: the socket is root's alone
    try:
        await web.UnixSite(runner, args.socket).start()
    finally:
        os.umask(previous)
    logger.info("serving Docker's plugin protocol",
                extra={"socket": args.socket, "host_id": args.host_id,
                       "orchestrator": args.orchestrator})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
        await plugin.close()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
