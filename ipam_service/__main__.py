"""``python -m ipam_service``: the IPAM gRPC server.

Flags (environment default):
  --listen     CNM_IPAM_LISTEN  (127.0.0.1:50052)
  --redis-url  CNM_REDIS_URL    (redis://127.0.0.1:6379/0); also rediss://, unix://,
               redis+sentinel://host:port/master/db, redis+cluster://host:port
  --log-level  CNM_LOG_LEVEL    (INFO)

Health reports NOT_SERVING until Redis answers PING, and again whenever it
stops answering; requests meanwhile fail with UNAVAILABLE. The process keeps
no state, so it recovers on its own when Redis comes back.
"""

from __future__ import annotations

import argparse
import asyncio

from cnm import config, errors, logs, metrics, redis_client, server, tls
from ipam_service.service import serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnm-ipam", description=__doc__.split("\n")[0]
    )
    config.add_listen_flag(parser, "CNM_IPAM_LISTEN", config.DEFAULT_IPAM_ADDR)
    config.add_flag(parser, "--redis-url", "CNM_REDIS_URL", config.DEFAULT_REDIS_URL, "Redis URL")
    config.add_common_flags(parser)
    config.add_server_flags(parser)
    args = parser.parse_args(argv)
    args.tls = tls.from_parsed(parser, args)
    server.check_args(parser, args)
    args.redis_url = redis_client.with_env_password(args.redis_url)
    try:
        redis_client.connect(args.redis_url)
    except ValueError as error:
        parser.error(f"--redis-url: {error}")
    return args


async def pool_metrics(store) -> list:
    """Each pool's size, allocated and free addresses, for a scrape (cnm/metrics.py)."""
    pools = await store.list_pools()
    return [
        metrics.gauge(f"cnm_ipam_pool_{what}_addresses", documentation,
                      {(pool.spec.pool_id,): getattr(pool.usage, what) for pool in pools},
                      ["pool"])
        for what, documentation in (
            ("size", "Usable addresses of each pool"),
            ("allocated", "Addresses held in each pool: gateway, reserved, endpoints"),
            ("free", "Addresses of each pool's dynamic range still free"))
    ]


async def main_async(args: argparse.Namespace) -> None:
    logger = logs.setup("ipam", args.log_level)
    try:
        ipam = await serve(args.listen, args.redis_url, logger, args.tls,
                           args.insecure, args.socket_group, args.metrics_listen,
                           args.otlp_endpoint)
    except errors.CnmError as error:
        logger.error("cannot start", extra={"error": error.message})
        raise SystemExit(1) from None
    metrics.register_records("ipam", lambda: pool_metrics(ipam.store), args.metrics_listen)
    try:
        await server.run_until_signalled(ipam.running, logger)
    finally:
        await ipam.store.close()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
