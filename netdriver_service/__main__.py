"""``python -m netdriver_service``: the privileged host agent."""

from __future__ import annotations

import argparse
import asyncio
import os

from cnm import config, logs, server
from cnm.netdriver.v1 import netdriver_pb2_grpc
from netdriver_service import firewall as firewalls
from netdriver_service.agent import Agent
from netdriver_service.faults import Faults
from netdriver_service.netlink import Netlink
from netdriver_service.service import SERVICE_NAME, NetDriverServicer
from netdriver_service.state import Store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m netdriver_service",
        description="cnm host agent: bridges, veths, namespaces and firewall rules of this host",
    )
    config.add_flag(
        parser, "--listen", "CNM_NETDRIVER_LISTEN", config.DEFAULT_NETDRIVER_ADDR,
        "gRPC address to listen on (host:port or unix:/path)",
    )
    config.add_flag(parser, "--host-id", "CNM_HOST_ID", config.default_host_id(), "this host's id")
    config.add_flag(
        parser, "--orchestrator", "CNM_ORCHESTRATOR", "",
        "orchestrator to register with (registration comes with a later release)",
    )
    config.add_flag(
        parser, "--underlay-ip", "CNM_UNDERLAY_IP", "",
        "address other hosts reach this one on; default: the default-route interface's",
    )
    config.add_flag(
        parser, "--firewall", "CNM_NETDRIVER_FIREWALL", "nftables", "firewall backend: "
        + " or ".join(sorted(firewalls.BACKENDS)),
    )
    config.add_flag(
        parser, "--state-dir", "CNM_NETDRIVER_STATE_DIR", "",
        "where endpoint and network parameters are kept; default /var/lib/cnm/netdriver/HOST_ID",
    )
    config.add_flag(
        parser, "--fault", "CNM_NETDRIVER_FAULT", "",
        "testing only: fail after a step, e.g. after:veth",
    )
    config.add_common_flags(parser)
    args = parser.parse_args(argv)
    if args.firewall not in firewalls.BACKENDS:
        parser.error(f"--firewall: unknown backend {args.firewall!r}")
    try:
        args.faults = Faults(args.fault)
    except ValueError as error:
        parser.error(f"--fault: {error}")
    args.state_dir = args.state_dir or os.path.join("/var/lib/cnm/netdriver", args.host_id)
    return args


async def serve(args: argparse.Namespace) -> None:
    logger = logs.setup("netdriver", args.log_level)
    netlink = await Netlink().open()
    agent = Agent(
        host_id=args.host_id, underlay_ip=args.underlay_ip, netlink=netlink,
        firewall=firewalls.make_firewall(args.firewall), store=Store(args.state_dir).load(),
        faults=args.faults,
    )
    running = await server.start(
        listen=args.listen,
        services=[
            (netdriver_pb2_grpc.add_NetDriverServiceServicer_to_server,
             NetDriverServicer(agent), SERVICE_NAME),
        ],
        logger=logger,
        readiness=agent.ready,
    )
    logger.info(
        "agent started",
        extra={"host_id": args.host_id, "underlay_ip": agent.underlay_ip,
               "firewall": args.firewall, "state_dir": args.state_dir},
    )
    try:
        await server.run_until_signalled(running, logger)
    finally:
        await netlink.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
