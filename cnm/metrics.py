"""Prometheus metrics, with prometheus-client: what every service exposes, and its
``--metrics-listen`` endpoint.

Every service counts its RPCs and times them by method (and the count by status
code too), and exposes the client library's process metrics (CPU, memory, open
files). Names follow Prometheus' conventions: the ``cnm_`` prefix, base units
(seconds), ``_total`` counters; no label has unbounded values (a method name is
one of the API's, a code one of gRPC's). A service adds its own (the agent: its
endpoints, networks and sandboxes).

The endpoint is off unless asked for; a bare port listens on loopback; with the
service's TLS files it is HTTPS with client certificates of the same CA (a
Prometheus scrape config gives ``tls_config``). An address that is taken or not
valid stops the service at start, in one line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from cnm.tls import Tls

# No ``*_created`` gauge beside every counter and histogram: the text format has no use
# for them (a restart shows as a reset anyway), and they double the size of a scrape.
disable_created_metrics()

RPC_REQUESTS = Counter("cnm_rpc_requests", "RPCs answered, by method and status code",
                       ["method", "code"])
RPC_SECONDS = Histogram(
    "cnm_rpc_duration_seconds", "Time to answer an RPC, by method", ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


log = logging.getLogger("cnm.metrics")
# A scrape waits at most this long for the records a service reads from Redis.
READ_TIMEOUT = 5.0


class RecordsCollector:
    """Gauges of a service's records, read at each scrape by ``read`` (a coroutine run on
    the service's event loop, from the scrape's thread). When Redis cannot be read the
    scrape still answers, with ``cnm_SERVICE_records_up 0`` and none of those gauges."""

    def __init__(self, service: str, read: Callable[[], Awaitable[Iterable[Metric]]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.service, self.read, self.loop = service, read, loop

    def describe(self):
        """Nothing: without it, registering would collect at once, from the loop's own
        thread, and wait on the loop for READ_TIMEOUT."""
        return []

    def collect(self):
        up = GaugeMetricFamily(f"cnm_{self.service}_records_up",
                               "Whether the last scrape could read the service's records")
        try:
            families = list(asyncio.run_coroutine_threadsafe(self.read(), self.loop)
                            .result(READ_TIMEOUT))
        except Exception as error:  # noqa: BLE001 - a scrape never fails for it
            log.warning("metrics: records not read", extra={"error": str(error) or
                                                            type(error).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def register_records(service: str, read: Callable[[], Awaitable[Iterable[Metric]]],
                     listen: str) -> None:
    """Exposes ``read``'s gauges (see RecordsCollector) when metrics are served
    (``listen``); call from the service's loop."""
    if listen:
        REGISTRY.register(RecordsCollector(service, read, asyncio.get_running_loop()))


def gauge(name: str, documentation: str, values: dict[tuple[str, ...], float],
          labels: Iterable[str] = ()) -> GaugeMetricFamily:
    """A gauge family with one sample per labels tuple of ``values``."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def observe(method: str, code: str, seconds: float) -> None:
    RPC_REQUESTS.labels(method, code).inc()
    RPC_SECONDS.labels(method).observe(seconds)


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT`` (on loopback), ``HOST:PORT`` or ``[V6]:PORT``; ValueError says why not."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--metrics-listen {text!r}: want PORT or HOST:PORT, PORT 1-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"--metrics-listen {text!r}: {host!r} is not an IP address") \
                from None
    return host, int(port)


def serve(listen: str, tls: Tls | None) -> None:
    """Starts the metrics endpoint in a thread of its own (nothing when ``listen`` is
    empty); ValueError, in one line, when it cannot listen there."""
    if not listen:
        return
    host, port = parse_listen(listen)
    files = {} if tls is None else {
        "certfile": str(tls.cert), "keyfile": str(tls.key), "client_cafile": str(tls.ca),
        "client_auth_required": True}
    try:
        start_http_server(port, host, **files)
    except OSError as error:
        raise ValueError(f"--metrics-listen {listen}: cannot listen: {error.strerror}") \
            from None
