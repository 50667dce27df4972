"""One request id across services: the W3C trace context's ``traceparent``.

The first cnm process a request reaches (the CLI, cnm-cni, the Docker plugin, or
a service called by something else) gives it a trace id; every service logs it as
``trace_id`` on each line it writes for that request and passes it on, with a span
id of its own, to every call it makes for it. So one ``grep TRACE_ID`` over the
logs of the orchestrator, IPAM and the agents follows a connect through all of
them. A ``traceparent`` that is not well formed is ignored and replaced, never an
error. The CLI takes one from the ``TRACEPARENT`` environment variable (the
W3C convention for processes), so a caller can choose the id it will grep for.
"""

from __future__ import annotations

import contextvars
import os
import re
import secrets

TRACEPARENT = "traceparent"
_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

# (trace id, this process's span id, the caller's span id or "") of the request being
# served.
_current: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "cnm_trace", default=None)


def parse_parent(value: str | None) -> tuple[str, str] | None:
    """(trace id, the caller's span id) of a well-formed version-00 ``traceparent``."""
    if not value:
        return None
    match = _FORMAT.fullmatch(value.strip())
    if match is None or match[1] == _ZERO_TRACE or match[2] == _ZERO_SPAN:
        return None
    return match[1], match[2]


def parse(value: str | None) -> str | None:
    """The trace id of a well-formed version-00 ``traceparent``, else None."""
    parsed = parse_parent(value)
    return parsed[0] if parsed else None


def begin(metadata=None, traceparent: str | None = None) -> str:
    """Starts serving a request: its trace id from its ``traceparent`` (in gRPC
    ``metadata``, or given), else a new one; returns it."""
    if traceparent is None and metadata is not None:
        traceparent = next((value for key, value in metadata if key == TRACEPARENT), None)
    trace, parent = parse_parent(traceparent) or (secrets.token_hex(16), "")
    _current.set((trace, secrets.token_hex(8), parent))
    return trace


def adopt(trace: str, span: str) -> None:
    """Makes the request being served part of trace ``trace`` as span ``span`` (the ids
    OpenTelemetry gave its span: cnm/otel.py), so that its log lines and the calls it
    makes name them."""
    current = _current.get()
    _current.set((trace, span, current[2] if current else ""))


def parent_id() -> str:
    """The caller's span id for the request being served ("" when it has none)."""
    current = _current.get()
    return current[2] if current else ""


def trace_id() -> str | None:
    """The trace id of the request being served, if any."""
    current = _current.get()
    return current[0] if current else None


def outgoing() -> tuple[tuple[str, str]]:
    """The metadata of a call made for the request being served (a new trace when none
    is: a background task's call)."""
    current = _current.get()
    if current is None:
        current = (secrets.token_hex(16), secrets.token_hex(8), "")
    return ((TRACEPARENT, f"00-{current[0]}-{current[1]}-01"),)


def begin_from_environment() -> str:
    """A command-line process's trace: ``$TRACEPARENT`` when well formed, else new. The
    process records no span of its own, so its calls name the caller's span as their
    parent (W3C: a process that does not take part passes the parent id on)."""
    parsed = parse_parent(os.environ.get("TRACEPARENT"))
    if parsed is None:
        return begin()
    _current.set((parsed[0], parsed[1], parsed[1]))
    return parsed[0]
