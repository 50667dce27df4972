"""OpenTelemetry traces, exported over OTLP/gRPC, behind ``--otlp-endpoint``.

Off unless a service is given an endpoint (env ``CNM_OTLP_ENDPOINT``); off, nothing
of OpenTelemetry is even imported, and a request pays one ``is None`` test. On,
every RPC a service answers is a span (kind SERVER, named by the method, with the
gRPC status code; an error status unless OK) in the trace of cnm's request id
(cnm/tracing.py): the child of the caller's span, and the parent of the calls it
makes. So a collector (Jaeger, Tempo, the OpenTelemetry Collector) shows a connect
as one tree: the orchestrator's span, with IPAM's and the agent's under it. The trace
id stays the one the logs carry.

The endpoint is the collector's OTLP/gRPC address: ``http://HOST:4317`` (plaintext),
``https://HOST:4317`` (TLS, the system's CAs) or ``unix:///PATH``. Spans are batched
and sent by the SDK's own thread; a collector that is away costs dropped spans and
a warning, never a failed request.
"""

from __future__ import annotations

import atexit
import logging

from cnm import tracing, version

log = logging.getLogger("cnm.otel")

_tracer = None  # opentelemetry.trace.Tracer once set up


def setup(endpoint: str, service: str) -> None:
    """Exports spans of this process (``service``: "orchestrator", "ipam", "agent") to
    ``endpoint``; nothing when it is empty. ValueError, in one line, for an endpoint
    that is not one of the forms above."""
    global _tracer
    if not endpoint:
        return
    if not endpoint.startswith(("http://", "https://", "unix:")):
        raise ValueError(f"--otlp-endpoint {endpoint!r}: want http://HOST:PORT, "
                         "https://HOST:PORT or unix:///PATH")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({
        "service.name": f"cnm-{service}", "service.version": version.version()}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https:"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    atexit.register(provider.shutdown)  # what is batched still goes out
    _tracer = provider.get_tracer("cnm")
    log.info("exporting traces", extra={"endpoint": endpoint})


def start(method: str):
    """A span for the request being served (after :func:`tracing.begin`), or None when
    traces are off. The request adopts its ids, so its log lines and calls name them."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    trace_id, parent = tracing.trace_id(), tracing.parent_id()
    context = None
    if trace_id and parent:
        context = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            int(trace_id, 16), int(parent, 16), is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))))
    service, _, name = method.lstrip("/").rpartition("/")
    span = _tracer.start_span(method.lstrip("/"), context=context, kind=trace.SpanKind.SERVER,
                              attributes={"rpc.system": "grpc", "rpc.service": service,
                                          "rpc.method": name})
    ids = span.get_span_context()
    # A request with no caller's trace takes OpenTelemetry's new trace id (not yet in any
    # log line: this runs before the request's first).
    tracing.adopt(format(ids.trace_id, "032x"), format(ids.span_id, "016x"))
    return span


def end(span, code) -> None:
    """Ends ``span`` (from :func:`start`; None does nothing) with the gRPC ``code``."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name != "OK":
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
