"""``cnm-docker-plugin``: serves Docker's plugin protocol on a unix socket that dockerd
finds in its plugin directory, beside the agent of every host (docs/docker.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

import aiohttp
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
    parser.add_argument("--check", action="store_true",
                        help="do not serve: exit 0 if a plugin answers on --socket, else 1 "
                             "(a health check)")
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


async def check(socket: str) -> str:
    """What is wrong with the plugin serving ``socket``; empty when it answers as one."""
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket)) as session, session.post(
                "http://plugin/Plugin.Activate", timeout=aiohttp.ClientTimeout(total=5)) as reply:
            answer = await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return f"no plugin answers on {socket}: {error or type(error).__name__}"
    if "NetworkDriver" not in (answer.get("Implements") or []):
        return f"{socket} answers, but not as a network driver: {answer}"
    return ""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.check:
        problem = asyncio.run(check(args.socket))
        print(problem or f"ok: {args.socket}", file=sys.stderr if problem else sys.stdout)
        sys.exit(1 if problem else 0)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
