"""``python -m orchestrator``: the orchestrator server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from cnm import config, errors, logs, metrics, redis_client, server, tls
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from orchestrator import access, address_pools, validation
from orchestrator.clients import Agents, Ipam
from orchestrator.flows import EPHEMERAL_PORTS, GONE_GRACE, Orchestrator
from orchestrator.hosts import HEARTBEAT_INTERVAL, STALE_AFTER
from orchestrator.overlay import DEFAULT_VNI_RANGE, parse_vni_range
from orchestrator.reconciler import Reconciler
from orchestrator.service import SERVICE_NAME, OrchestratorServicer
from orchestrator.store import Store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnm-orchestrator",
        description="cnm orchestrator: networks, endpoints and hosts over gRPC",
    )
    config.add_listen_flag(parser, "CNM_ORCHESTRATOR_LISTEN", config.DEFAULT_ORCHESTRATOR_ADDR)
    config.add_flag(parser, "--redis-url", "CNM_REDIS_URL", config.DEFAULT_REDIS_URL,
                    "Redis holding the orchestrator's records")
    config.add_flag(parser, "--ipam", "CNM_IPAM_ADDR", config.DEFAULT_IPAM_ADDR,
                    "gRPC address of the IPAM service")
    config.add_flag(parser, "--hosts", "CNM_HOSTS", "",
                    "static host agents, id=addr,... (addr host:port or unix:/path)")
    config.add_flag(parser, "--reconcile-interval", "CNM_RECONCILE_INTERVAL", "10",
                    "seconds between reconciler passes")
    config.add_flag(parser, "--host-gc-interval", "CNM_HOST_GC_INTERVAL", "60",
                    "seconds between reconciler passes over the agents' kernel state")
    config.add_flag(parser, "--replica-lease", "CNM_REPLICA_LEASE", "10",
                    "seconds after which a silent replica's locks and intents are taken over")
    config.add_flag(parser, "--heartbeat-interval", "CNM_HEARTBEAT_INTERVAL",
                    str(HEARTBEAT_INTERVAL), "seconds between heartbeats asked of agents")
    config.add_flag(parser, "--vni-range", "CNM_VNI_RANGE", DEFAULT_VNI_RANGE,
                    "VXLAN ids given to overlay networks, FIRST-LAST")
    config.add_flag(parser, "--gone-grace", "CNM_GONE_GRACE", str(GONE_GRACE),
                    "seconds a container its host reported gone keeps its address")
    config.add_flag(parser, "--stale-after", "CNM_STALE_AFTER", str(STALE_AFTER),
                    "seconds of silence after which a host's endpoints are shown stale")
    parser.add_argument(
        "--default-address-pool", action="append", metavar="base=CIDR,size=N",
        help="where a network created without a subnet takes one: the first subnet of "
             "length N in CIDR that overlaps no network and no host's route; repeatable, "
             "tried in order (env CNM_DEFAULT_ADDRESS_POOLS, space-separated; default "
             "Docker's: base=172.17.0.0/16,size=16 ... base=172.31.0.0/16,size=16, "
             "base=192.168.0.0/16,size=20; IPv6 pools, none by default, serve --ipv6 "
             "networks without an IPv6 subnet, e.g. base=fd00:c0::/48,size=64)")
    config.add_flag(parser, "--ephemeral-ports", "CNM_EPHEMERAL_PORTS",
                    "-".join(map(str, EPHEMERAL_PORTS)),
                    "host ports chosen for a mapping that asks for any (host port 0), "
                    "FIRST-LAST")
    config.add_common_flags(parser)
    config.add_server_flags(parser)
    args = parser.parse_args(argv)
    try:
        args.ephemeral_ports = validation.number_range(args.ephemeral_ports, 65535)
    except ValueError as error:
        parser.error(f"--ephemeral-ports: {error}")
    try:
        args.default_pools = address_pools.parse_all(
            " ".join(args.default_address_pool or ())
            or config.env("CNM_DEFAULT_ADDRESS_POOLS", ""))
    except ValueError as error:
        parser.error(f"--default-address-pool: {error}")
    args.tls = tls.from_parsed(parser, args)
    server.check_args(parser, args)
    args.redis_url = redis_client.with_env_password(args.redis_url)
    args.gone_grace = config.seconds(parser, "--gone-grace", args.gone_grace)
    args.stale_after = config.seconds(parser, "--stale-after", args.stale_after)
    try:
        args.vni_range = parse_vni_range(args.vni_range)
    except ValueError as error:
        parser.error(f"--vni-range: {error}")
    return args


async def record_metrics(orch: Orchestrator) -> list:
    """The orchestrator's records, for a scrape (cnm/metrics.py): networks, endpoints and
    hosts by state, intents in flight, quarantined endpoints, heartbeat ages."""
    networks, endpoint_ids, hosts, intents, quarantined = await asyncio.gather(
        orch.store.list_networks(), orch.store.all_endpoint_ids(), orch.hosts.list(),
        orch.store.intents(), orch.store.quarantined())
    by_state: dict[tuple[str, ...], float] = {("ready",): 0, ("deleting",): 0}
    for _, state in networks:
        by_state[(state,)] = by_state.get((state,), 0) + 1
    host_states = {("healthy",): 0, ("unhealthy",): 0}
    for host in hosts:
        word = "healthy" if host.state == pb.HOST_STATE_HEALTHY else "unhealthy"
        host_states[(word,)] += 1
    now = time.time()
    return [
        metrics.gauge("cnm_orchestrator_networks", "Networks, by state", by_state, ["state"]),
        metrics.gauge("cnm_orchestrator_endpoints", "Endpoints recorded",
                      {(): len(endpoint_ids)}),
        metrics.gauge("cnm_orchestrator_hosts", "Hosts, by health", host_states, ["state"]),
        metrics.gauge("cnm_orchestrator_intents", "Flows in flight or cut short (intents)",
                      {(): len(intents)}),
        metrics.gauge("cnm_orchestrator_quarantined_endpoints",
                      "Endpoints forgotten while their host was unreachable",
                      {(): len(quarantined)}),
        metrics.gauge("cnm_orchestrator_host_heartbeat_age_seconds",
                      "Seconds since each registered host's last heartbeat",
                      {(host.host_id,): now - host.last_heartbeat_time.ToNanoseconds() / 1e9
                       for host in hosts if not host.static}, ["host"]),
    ]


async def renew_lease(store: Store, logger) -> None:
    """Keeps this replica's lease; a renewal may take at most a third of it.

    A lease that lapses lets other replicas take over this one's locks; the
    flows holding them notice when extending their lock fails (store.Lock).
    """
    while True:
        try:
            await asyncio.wait_for(store.renew_lease(), store.lease_seconds / 3)
        except Exception as error:  # noqa: BLE001 - retried at the next tick
            logger.warning("replica lease not renewed", extra={"error": str(error) or
                                                               type(error).__name__})
        await asyncio.sleep(store.lease_seconds / 3)


async def serve(args: argparse.Namespace) -> None:
    logger = logs.setup("orchestrator", args.log_level)
    store = Store.connect(args.redis_url, float(args.replica_lease))
    ipam = Ipam(args.ipam, args.tls)
    agents = Agents(args.tls)
    orch = Orchestrator(store, ipam, agents, int(args.heartbeat_interval), args.vni_range,
                        gone_grace=args.gone_grace, stale_after=args.stale_after,
                        default_pools=args.default_pools,
                        ephemeral_ports=args.ephemeral_ports)
    reconciler = Reconciler(orch)
    metrics.register_records("orchestrator", lambda: record_metrics(orch), args.metrics_listen)

    async def ready() -> bool:
        return await store.ping()

    try:
        running = await server.start(
            listen=args.listen,
            services=[(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                       OrchestratorServicer(orch), SERVICE_NAME)],
            logger=logger, readiness=ready, tls=args.tls, policy=access.POLICY,
            insecure=args.insecure, socket_group=args.socket_group,
            metrics_listen=args.metrics_listen, otlp_endpoint=args.otlp_endpoint,
            service="orchestrator",
        )
    except errors.CnmError as error:
        logger.error("cannot start", extra={"error": error.message})
        await agents.close()
        await ipam.close()
        await store.close()
        raise SystemExit(1) from None
    background: list[asyncio.Task] = []

    async def start_background() -> None:
        # Redis may come up after us: retry until the records are reachable.
        while True:
            try:
                await store.renew_lease()
                await orch.hosts.add_static(args.hosts)
                break
            except Exception as error:  # noqa: BLE001 - retried until Redis answers
                logger.warning("waiting for redis", extra={"error": str(error)})
                await asyncio.sleep(1)
        background.append(asyncio.create_task(renew_lease(store, logger)))
        background.append(asyncio.create_task(
            reconciler.run_forever(float(args.reconcile_interval),
                                   float(args.host_gc_interval))))

    starter = asyncio.create_task(start_background())
    try:
        await server.run_until_signalled(running, logger)
    finally:
        for task in [starter, *background]:
            task.cancel()
        with contextlib.suppress(Exception):
            await store.drop_lease()
        await agents.close()
        await ipam.close()
        await store.close()


def main(argv=None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
