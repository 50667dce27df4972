"""A real Prometheus (Debian's package) scrapes IPAM, the orchestrator and an agent.

Everything runs inside one network namespace made here (the "host"): Redis, the
three services, and Prometheus, whose configuration is deploy/prometheus.yml with
this test's ports and certificates. Every link is mutual TLS, as deployed: gRPC
over unix sockets, which the test reaches from outside, and the metrics over
HTTPS, scraped with a viewer's certificate; Prometheus' query API is asked from
inside. After three `cnm run`s and one repaired drift the query API must return
the series with exactly the values those requests made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import pytest

from cnm import pki
from cnm.netdriver.v1 import netdriver_pb2, netdriver_pb2_grpc
from tests import docs, support
from tests.orchestrator.e2e import CNM, remove_sandboxes

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

PROMETHEUS = shutil.which("prometheus")
CONNECT = "/cnm.orchestrator.v1.OrchestratorService/ConnectContainer"
ALLOCATE = "/cnm.ipam.v1.IpamService/AllocateAddress"


class Host:
    def __init__(self, netns, tmp_path: Path) -> None:
        self.ns = netns("cnmt-prom")
        self.ns.run("ip", "link", "set", "lo", "up")
        self.tmp = tmp_path
        self.tag = uuid.uuid4().hex[:8]
        self.processes: list[support.Process] = []

    def socket(self, name: str) -> str:
        return f"/tmp/cnmt-{self.tag}-{name}.sock"

    def start(self, name: str, *args: str) -> support.Process:
        process = support.Process(self.ns.exec_args(*args), log_path=self.tmp / f"{name}.log")
        self.processes.append(process)
        return process

    def get(self, url: str, certificate: Path | None = None) -> str:
        """GETs ``url`` from inside; an HTTPS one holding ``certificate`` (and its .key),
        checked against the CA beside it."""
        script = ("import ssl, sys, urllib.request\n"
                  "context = None\n"
                  "if len(sys.argv) > 2:\n"
                  "    context = ssl.create_default_context(cafile=sys.argv[2])\n"
                  "    context.load_cert_chain(sys.argv[3], sys.argv[4])\n"
                  "print(urllib.request.urlopen(sys.argv[1], context=context).read().decode())")
        files = () if certificate is None else (
            str(certificate.with_name("ca.crt")), str(certificate),
            str(certificate.with_suffix(".key")))
        return self.ns.run(support.PYTHON, "-c", script, url, *files).stdout

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def query(host: Host, port: int, promql: str) -> dict[str, float]:
    """job -> value of each series the instant query returns."""
    answer = json.loads(host.get(
        f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"))
    assert answer["status"] == "success", answer
    return {series["metric"].get("job", ""): float(series["value"][1])
            for series in answer["data"]["result"]}


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/setup)")
def test_prometheus_scrapes_every_service_and_sees_what_requests_did(netns, tmp_path):
    host = Host(netns, tmp_path)
    ports = {name: support.free_port() for name in ("ipam", "orchestrator", "agent", "prom")}
    redis = f"unix://{host.socket('redis')}?db=0"
    ipam, orchestrator, agent = (f"unix:{host.socket(name)}"
                                 for name in ("ipam", "orchestrator", "agent"))
    host_id = f"prom-{host.tag}"
    certificates = tmp_path / "pki"
    pki.init_ca(certificates)
    for name in ("ipam", "orchestrator"):
        pki.issue(certificates, name, name, sans=("localhost", "127.0.0.1"))
    pki.issue(certificates, "agent", "agent", host_id=host_id, sans=("localhost", "127.0.0.1"))
    pki.issue(certificates, "admin", "admin")
    pki.issue(certificates, "prometheus", "viewer")
    tls = {name: support.tls_args(certificates, name)
           for name in ("ipam", "orchestrator", "agent")}
    try:
        host.start("redis", "redis-server", "--port", "0", "--unixsocket", host.socket("redis"),
                   "--save", "", "--appendonly", "no", "--dir", str(tmp_path))
        support.wait_for(lambda: Path(host.socket("redis")).exists(), 10, 0.05, "redis")
        host.start("ipam", support.PYTHON, "-m", "ipam_service", "--listen", ipam,
                   "--redis-url", redis, "--metrics-listen", str(ports["ipam"]), *tls["ipam"])
        admin = support.tls_credentials(certificates)
        support.wait_serving(ipam, credentials=admin)
        host.start("agent", support.PYTHON, "-m", "netdriver_service", "--listen", agent,
                   "--host-id", host_id, "--state-dir", str(tmp_path / "agent"),
                   "--metrics-listen", str(ports["agent"]), *tls["agent"])
        support.wait_serving(agent, timeout=20, credentials=admin)
        host.start("orchestrator", support.PYTHON, "-m", "orchestrator", "--listen",
                   orchestrator, "--redis-url", redis, "--ipam", ipam,
                   "--hosts", f"{host_id}={agent}", "--reconcile-interval", "1",
                   "--metrics-listen", str(ports["orchestrator"]), *tls["orchestrator"])
        support.wait_serving(orchestrator, credentials=admin)
        # deploy/prometheus.yml, with this test's ports, certificates and a short
        # scrape interval.
        config = docs.substitute((support.REPO / "deploy" / "prometheus.yml").read_text(), {
            **{f"'127.0.0.1:{DEFAULT_PORTS[name]}'": f"'127.0.0.1:{ports[name]}'"
               for name in ("ipam", "orchestrator", "agent")},
            "/etc/cnm/pki/": f"{certificates}/",
            "scrape_interval: 15s": "scrape_interval: 1s"})
        (tmp_path / "prometheus.yml").write_text(config)
        host.start("prometheus", PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{ports['prom']}")

        env = {"CNM_ORCHESTRATOR": orchestrator, "CNM_HOST_ID": host_id,
               "CNM_RUN_DIR": str(tmp_path / "run"), "CNM_CONFIG": str(tmp_path / "none.json"),
               "CNM_TLS_CA": str(certificates / "ca.crt"),
               "CNM_TLS_CERT": str(certificates / "admin.crt"),
               "CNM_TLS_KEY": str(certificates / "admin.key")}

        def cnm(*args: str) -> None:
            done = subprocess.run([CNM, *args], env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr

        cnm("network", "create", "--subnet", "10.86.0.0/24", "net1")
        for name in ("a", "b", "c"):
            cnm("run", "-d", "--name", name, "--net", "net1", "--", "sleep", "120")
        # Drift the agent's resync puts right: one veth taken off its bridge.
        veth = next(link["ifname"] for link in json.loads(host.ns.run(
            "ip", "-j", "link", "show", "type", "veth").stdout) if "master" in link)
        host.ns.run("ip", "link", "set", "dev", veth, "nomaster")
        # Only the orchestrator may command an agent: its certificate.
        with support.tls_channel(certificates, agent, "orchestrator") as channel:
            repaired = netdriver_pb2_grpc.NetDriverServiceStub(channel).Resync(
                netdriver_pb2.ResyncRequest(), timeout=30).repaired
        assert len(repaired) == 1 and repaired[0].startswith(f"re-attached {veth} to bridge")

        wanted = {
            f'cnm_rpc_requests_total{{method="{CONNECT}",code="OK"}}': {"orchestrator": 3},
            f'sum by (job) (cnm_rpc_requests_total{{method="{ALLOCATE}",code="OK"}})':
                {"ipam": 3},
            "cnm_agent_endpoints": {"agent": 3},
            "cnm_agent_sandboxes": {"agent": 3},
            'count by (job) (process_resident_memory_bytes)':
                {"ipam": 1, "orchestrator": 1, "agent": 1},
            f'sum by (job) (cnm_rpc_duration_seconds_count{{method="{CONNECT}"}})':
                {"orchestrator": 3},
            # The records, read from Redis at each scrape.
            "cnm_orchestrator_endpoints": {"orchestrator": 3},
            'cnm_orchestrator_networks{state="ready"}': {"orchestrator": 1},
            'cnm_orchestrator_hosts{state="healthy"}': {"orchestrator": 1},
            "cnm_orchestrator_intents": {"orchestrator": 0},
            "sum by (job) (cnm_ipam_pool_allocated_addresses)": {"ipam": 4},  # and gateway
            "sum by (job) (cnm_ipam_pool_size_addresses)": {"ipam": 254},
            "cnm_ipam_allocate_redis_seconds_count": {"ipam": 3},
            "cnm_ipam_records_up": {"ipam": 1},
            "cnm_orchestrator_records_up": {"orchestrator": 1},
            # What went wrong and was put right; and that the reconciler runs.
            'cnm_agent_resync_repairs_total{kind="reattached"}': {"agent": 1},
            'sum by (job) (cnm_agent_resync_repairs_total)': {"agent": 1},
            'count by (job) (up == 1)': {"ipam": 1, "orchestrator": 1, "agent": 1},
            'cnm_orchestrator_reconciler_passes_total{result="ran"} > bool 0':
                {"orchestrator": 1},
            'sum by (job) (cnm_orchestrator_reconciler_actions_total)': {"orchestrator": 0},
            'cnm_agent_nftables_transaction_seconds_count{kind="change"} > bool 0':
                {"agent": 1},
        }
        last: dict = {}

        def all_seen() -> bool:
            last.update({promql: query(host, ports["prom"], promql) for promql in wanted})
            return last == wanted

        try:
            support.wait_for(all_seen, 30, 0.5, "the expected series in Prometheus")
        except TimeoutError as error:
            raise AssertionError(f"{error}: last answers {last}") from error
        for name in ("a", "b", "c"):
            cnm("rm", name)
        support.wait_for(lambda: query(host, ports["prom"], "cnm_agent_endpoints") ==
                         {"agent": 0}, 30, 0.5, "no endpoint left")
        # Redis gone: a scrape still answers, saying the records could not be read.
        host.processes[0].stop()
        for service in ("orchestrator", "ipam"):
            text = host.get(f"https://127.0.0.1:{ports[service]}/metrics",
                            certificates / "prometheus.crt")
            assert f"cnm_{service}_records_up 0.0" in text
            assert "cnm_rpc_requests_total" in text
    finally:
        host.stop()
        remove_sandboxes(host_id)  # what a failure midway left


DEFAULT_PORTS = {"ipam": 9102, "orchestrator": 9101, "agent": 9103}

