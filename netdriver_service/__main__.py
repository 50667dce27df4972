"""``python -m netdriver_service``: the privileged host agent."""

from __future__ import annotations

import argparse
import asyncio
import os

from prometheus_client import Gauge

from cnm import config, errors, logs, server, tls
from cnm.netdriver.v1 import netdriver_pb2_grpc
from netdriver_service import access
from netdriver_service.agent import Agent
from netdriver_service.cni import CniService, CniSocket
from netdriver_service.faults import Faults
from netdriver_service.firewall import backends as firewalls
from netdriver_service.linkwatch import LinkWatch
from netdriver_service.membership import Membership
from netdriver_service.netlink import Netlink
from netdriver_service.service import SERVICE_NAME, NetDriverServicer
from netdriver_service.state import Store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnm-agent",
        description="cnm host agent: bridges, veths, namespaces and firewall rules of this host",
    )
    config.add_listen_flag(parser, "CNM_NETDRIVER_LISTEN", config.DEFAULT_NETDRIVER_ADDR)
    config.add_flag(parser, "--host-id", "CNM_HOST_ID", config.default_host_id(), "this host's id")
    config.add_flag(
        parser, "--orchestrator", "CNM_ORCHESTRATOR", "",
        "orchestrator to register with and heartbeat to; empty: do not register",
    )
    config.add_flag(
        parser, "--cni-socket", "CNM_CNI_SOCKET", "",
        "unix socket the cnm-cni plugin talks to (served when --orchestrator is given); "
        "default $CNM_RUN_DIR/cni.sock",
    )
    config.add_flag(
        parser, "--advertise", "CNM_NETDRIVER_ADVERTISE", "",
        "gRPC address the orchestrator should dial; default: the --listen address",
    )
    config.add_flag(
        parser, "--underlay-ip", "CNM_UNDERLAY_IP", "",
        "address (IPv4 or IPv6) other hosts reach this one on; default: the IPv4 "
        "default route interface's, else the IPv6 one's",
    )
    config.add_flag(
        parser, "--firewall", "CNM_NETDRIVER_FIREWALL", "nftables", "firewall backend: "
        + " or ".join(sorted(firewalls.BACKENDS)),
    )
    config.add_flag(
        parser, "--state-dir", "CNM_NETDRIVER_STATE_DIR", "",
        "where endpoint and network parameters are kept; default "
        "$CNM_RUN_DIR/netdriver/HOST_ID, CNM_RUN_DIR defaulting to /run/cnm: on tmpfs, "
        "the store lives exactly as long as the links and namespaces it describes",
    )
    config.add_flag(
        parser, "--resync-interval", "CNM_NETDRIVER_RESYNC_INTERVAL", "30",
        "seconds between two reconciliations of the kernel state and the firewall; 0: never",
    )
    config.add_flag(
        parser, "--sandbox-dirs", "CNM_SANDBOX_DIRS", "",
        "directories, comma-separated, whose namespaces the agent may connect besides its "
        "own sandboxes, /var/run/netns and /proc/PID/ns/net",
    )
    config.add_flag(
        parser, "--fault", "CNM_NETDRIVER_FAULT", "",
        "testing only: fail after a step, e.g. after:veth",
    )
    config.add_common_flags(parser)
    config.add_server_flags(parser)
    args = parser.parse_args(argv)
    args.tls = tls.from_parsed(parser, args)
    server.check_args(parser, args)
    if args.firewall not in firewalls.BACKENDS:
        parser.error(f"--firewall: unknown backend {args.firewall!r}")
    try:
        args.resync_interval = float(args.resync_interval)
        if args.resync_interval < 0:
            raise ValueError(args.resync_interval)
    except ValueError:
        parser.error(f"--resync-interval: want a number of seconds >= 0, not {args.resync_interval!r}")
    try:
        args.faults = Faults(args.fault)
    except ValueError as error:
        parser.error(f"--fault: {error}")
    args.sandbox_dirs = tuple(d for d in args.sandbox_dirs.split(",") if d)
    for directory in args.sandbox_dirs:
        if not os.path.isabs(directory):
            parser.error(f"--sandbox-dirs: {directory!r} is not an absolute path")
    args.state_dir = args.state_dir or os.path.join(
        config.run_dir(), "netdriver", args.host_id
    )
    args.advertise = args.advertise or server.listen_addresses(args.listen)[0]
    args.cni_socket = args.cni_socket or os.path.join(config.run_dir(), "cni.sock")
    return args


async def serve(args: argparse.Namespace) -> None:
    logger = logs.setup("netdriver", args.log_level)
    netlink = await Netlink().open()
    agent = Agent(
        host_id=args.host_id, underlay_ip=args.underlay_ip, netlink=netlink,
        firewall=firewalls.make_firewall(args.firewall), store=Store(args.state_dir).load(),
        faults=args.faults, sandbox_dirs=args.sandbox_dirs,
    )
    # What this host holds, read at each scrape (cnm/metrics.py).
    for name, what, count in (
            ("cnm_agent_endpoints", "Endpoints on this host", lambda: len(agent.store.endpoints)),
            ("cnm_agent_networks", "Networks on this host", lambda: len(agent.store.networks)),
            ("cnm_agent_sandboxes", "Sandboxes this agent made",
             lambda: len(agent.store.sandboxes))):
        Gauge(name, what).set_function(count)
    try:
        running = await server.start(
            listen=args.listen,
            services=[
                (netdriver_pb2_grpc.add_NetDriverServiceServicer_to_server,
                 NetDriverServicer(agent), SERVICE_NAME),
            ],
            logger=logger,
            readiness=agent.ready,
            tls=args.tls, policy=access.POLICY,
            insecure=args.insecure, socket_group=args.socket_group,
            metrics_listen=args.metrics_listen, otlp_endpoint=args.otlp_endpoint,
            service="agent",
        )
    except errors.CnmError as error:
        logger.error("cannot start", extra={"error": error.message})
        await netlink.close()
        raise SystemExit(1) from None
    logger.info(
        "agent started",
        extra={"host_id": args.host_id, "underlay_ip": agent.underlay_ip,
               "firewall": args.firewall, "state_dir": args.state_dir},
    )
    resync = (
        asyncio.create_task(agent.resync_periodically(args.resync_interval))
        if args.resync_interval else None
    )
    # A dead container's veth goes with its namespace: the agent hears of it at once.
    watch = await LinkWatch(agent.link_deleted, netlink.host_ns).start()
    membership = cni = None
    if args.orchestrator and server.is_local(args.advertise) \
            and not server.is_local(args.orchestrator):
        # The scripts/up and one-host set-ups share a machine and are fine; beyond it,
        # only an orchestrator on this machine can dial what we register.
        logger.warning(
            "registering an address only this machine can dial: an orchestrator "
            "elsewhere, or a replica, cannot reach this agent; listen on (or "
            "--advertise) an address the orchestrator reaches",
            extra={"advertise": args.advertise, "orchestrator": args.orchestrator})
    if args.orchestrator:
        member = Membership(
            orchestrator=args.orchestrator, host_id=args.host_id, advertise=args.advertise,
            underlay_ip=lambda: agent.underlay_ip, ready=agent.ready,
            registering=agent.forget_peer_generations, lost=agent.lost_endpoint_ids,
            forget_lost=agent.forget_lost, tls=args.tls, routes=lambda: agent.host_routes,
        )
        agent.on_lost = member.poke
        membership = asyncio.create_task(member.run())
        # Runtimes' CNI plugin (cnm-cni) reaches cnm through this agent (docs/cni.md).
        cni = await CniSocket(CniService(orchestrator=args.orchestrator, agent=agent,
                                         tls=args.tls), args.cni_socket).start()
    try:
        await server.run_until_signalled(running, logger)
    finally:
        if cni is not None:
            await cni.close()
        watch.close()
        if resync is not None:
            resync.cancel()
        if membership is not None:
            membership.cancel()
        await agent.resolvers.close()
        await netlink.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
