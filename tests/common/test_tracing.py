"""The request id (W3C traceparent) each service logs and passes on (cnm/tracing.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from cnm import tracing

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("value", "trace_id"), [
    (GOOD, "4bf92f3577b34da6a3ce929d0e0e4736"),
    (f" {GOOD} ", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("", None), (None, None), ("garbage", None),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # unknown version
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # zero parent
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),   # short
])
def test_parse_takes_well_formed_version_00_only(value, trace_id):
    assert tracing.parse(value) == trace_id


def test_a_request_keeps_its_trace_id_and_passes_it_on_with_a_span_of_its_own():
    async def serve(metadata) -> tuple[str, str, str | None]:
        trace_id = tracing.begin(metadata)
        [(key, value)] = tracing.outgoing()
        assert key == "traceparent"
        return trace_id, value, tracing.trace_id()

    async def main():
        return await asyncio.gather(serve((("traceparent", GOOD),)),
                                    serve((("traceparent", "bad"),)), serve(()))

    (kept, passed, current), (fresh, _, _), (other, _, _) = asyncio.run(main())
    assert kept == current == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert passed.startswith(f"00-{kept}-") and not passed.endswith("00f067aa0ba902b7-01")
    assert tracing.parse(passed) == kept
    assert re.fullmatch(r"[0-9a-f]{32}", fresh) and fresh != kept and other not in (kept, fresh)
    assert tracing.trace_id() is None  # each request's context is its own


def test_a_call_outside_any_request_gets_a_new_trace():
    [(_, first)] = tracing.outgoing()
    [(_, second)] = tracing.outgoing()
    assert tracing.parse(first) and tracing.parse(first) != tracing.parse(second)


def test_a_command_passes_its_callers_span_on_as_the_parent(monkeypatch):
    """The CLI records no span: the services' spans hang under the caller's."""
    monkeypatch.setenv("TRACEPARENT", GOOD)

    async def command() -> tuple[str, str]:
        trace_id = tracing.begin_from_environment()
        return trace_id, dict(tracing.outgoing())[tracing.TRACEPARENT]

    assert asyncio.run(command()) == ("4bf92f3577b34da6a3ce929d0e0e4736", GOOD)


def test_with_traces_off_opentelemetry_is_never_imported():
    script = ("import sys; from cnm import otel, server, tracing\n"
              "otel.setup('', 'ipam'); tracing.begin()\n"
              "assert otel.start('/cnm.ipam.v1.IpamService/ListPools') is None\n"
              "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
