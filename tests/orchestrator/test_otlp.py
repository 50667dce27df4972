"""OpenTelemetry traces (cnm/otel.py): the three services export a span per RPC to an
OTLP/gRPC collector, one tree per request, in the trace the logs carry.

The collector is OpenTelemetry's own TraceService (its generated gRPC stubs), served
here on a unix socket that the agent in its host namespace reaches as well.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.orchestrator.e2e import Cluster, Host

pytestmark = pytest.mark.root

ORCHESTRATOR = "cnm.orchestrator.v1.OrchestratorService"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    status: int  # 0 unset, 2 error
    grpc_code: int


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        for resource in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    code = next((a.value.int_value for a in span.attributes
                                 if a.key == "rpc.grpc.status_code"), -1)
                    with self.lock:
                        self.spans.append(Span(
                            attributes.get("service.name", ""), span.name, span.trace_id.hex(),
                            span.span_id.hex(), span.parent_span_id.hex(), span.status.code,
                            code))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture
def traced(redis_url, netns, tmp_path, monkeypatch):
    """One host, IPAM and the orchestrator, each exporting to the collector."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    socket_path = f"/tmp/cnmt-otlp-{uuid.uuid4().hex[:8]}.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    monkeypatch.setenv("CNM_OTLP_ENDPOINT", f"unix://{socket_path}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the SDK's batch delay, in ms
    host_id = f"h1{uuid.uuid4().hex[:4]}"
    hosts = {"h1": Host(host_id=host_id, ns=netns("cnmt-host"), state_dir=tmp_path / "state",
                        socket_path=f"/tmp/cnmt-{uuid.uuid4().hex[:8]}.sock",
                        log_path=tmp_path / "agent.log")}
    cluster = Cluster(tmp=tmp_path, redis_url=redis_url, hosts=hosts)
    try:
        hosts["h1"].start()
        cluster.start_ipam()
        cluster.start_orchestrator()
        yield cluster, collector
    finally:
        cluster.stop()
        server.stop(0)


def test_a_connect_is_one_tree_of_spans_across_the_three_services(traced, monkeypatch):
    cluster, collector = traced
    assert cluster.cnm("network", "create", "--subnet", "10.83.0.0/24", "net1").code == 0
    trace_id, caller = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    monkeypatch.setenv("TRACEPARENT", f"00-{trace_id}-{caller}-01")
    ran = cluster.cnm("run", "-d", "--name", "c1", "--net", "net1", "--", "sleep", "60")
    assert ran.code == 0, ran.err

    def names() -> set[tuple[str, str]]:
        return {(span.service, span.name.rsplit("/", 1)[-1])
                for span in collector.of_trace(trace_id)}

    wanted = {("cnm-orchestrator", "ConnectContainer"), ("cnm-ipam", "AllocateAddress"),
              ("cnm-agent", "CreateEndpoint")}
    support.wait_for(lambda: wanted <= names(), 15, 0.1, f"the spans {wanted}")
    spans = {(span.service, span.name.rsplit("/", 1)[-1]): span
             for span in collector.of_trace(trace_id)}
    connect = spans["cnm-orchestrator", "ConnectContainer"]
    assert connect.name == f"{ORCHESTRATOR}/ConnectContainer"
    assert connect.parent_id == caller  # the CLI's span: the caller's traceparent
    # IPAM's and the agent's spans are children of the orchestrator's.
    assert spans["cnm-ipam", "AllocateAddress"].parent_id == connect.span_id
    assert spans["cnm-agent", "CreateEndpoint"].parent_id == connect.span_id
    assert {span.status for span in spans.values()} == {0}
    assert connect.grpc_code == 0

    # A refusal is an error span with its gRPC code (NOT_FOUND, 5).
    monkeypatch.delenv("TRACEPARENT")
    assert cluster.cnm("network", "rm", "nosuch").code != 0
    support.wait_for(lambda: any(span.name.endswith("/DeleteNetwork")
                                 for span in collector.spans), 15, 0.1, "the refusal's span")
    refused = next(span for span in collector.spans if span.name.endswith("/DeleteNetwork"))
    assert (refused.status, refused.grpc_code) == (2, 5)
    assert cluster.cnm("rm", "c1").code == 0


def test_a_request_with_no_trace_takes_the_spans_trace_id_in_its_logs(traced):
    cluster, collector = traced
    cluster.call("ListNetworks", pb.ListNetworksRequest())  # no traceparent
    support.wait_for(lambda: any(span.name.endswith("/ListNetworks")
                                 for span in collector.spans), 15, 0.1, "the span")
    span = next(span for span in collector.spans if span.name.endswith("/ListNetworks"))
    assert span.parent_id == ""
    logged = [json.loads(line) for line in cluster.orchestrator.log_path.read_text().splitlines()
              if line.startswith("{")]
    request = next(line for line in logged if line.get("method", "").endswith("/ListNetworks"))
    assert request["trace_id"] == span.trace_id


@pytest.mark.parametrize("bad", ["collector:4317", "ftp://collector"])
def test_a_service_with_a_bad_otlp_endpoint_does_not_start(bad):
    started = subprocess.run(
        [support.PYTHON, "-m", "ipam_service", "--listen", f"127.0.0.1:{support.free_port()}",
         "--redis-url", "redis://127.0.0.1:1/0", "--otlp-endpoint", bad],
        capture_output=True, text=True, timeout=60, check=False, cwd=support.REPO)
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "--otlp-endpoint" in lines[0], started.stderr
