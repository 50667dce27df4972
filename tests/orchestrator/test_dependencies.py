"""A request succeeds as soon as what it needs is back (issue 11, defect 4): the
orchestrator, started long before IPAM, uses IPAM the moment it listens, not after
gRPC's reconnect backoff (which grew to two minutes)."""

from __future__ import annotations

import os
import subprocess
import time

from tests import support
from tests.orchestrator.e2e import CNM


def cnm(orchestrator: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CNM, "--orchestrator", orchestrator, *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"})


def test_ipam_started_late_is_used_at_once(redis_url, tmp_path):
    ipam = f"127.0.0.1:{support.free_port()}"
    orchestrator = f"127.0.0.1:{support.free_port()}"
    processes = [support.Process(
        [support.PYTHON, "-m", "orchestrator", "--listen", orchestrator, "--redis-url",
         redis_url, "--ipam", ipam], log_path=tmp_path / "orchestrator.log")]
    try:
        support.wait_serving(orchestrator)
        # IPAM is not there for a while: each try fails, and the channel's backoff grows.
        until = time.monotonic() + 12
        while time.monotonic() < until:
            failed = cnm(orchestrator, "network", "create", "--subnet", "10.131.0.0/24", "late")
            assert failed.returncode != 0, failed.stderr
            time.sleep(0.5)
        processes.append(support.start_ipam(ipam, redis_url, tmp_path / "ipam.log"))
        started = time.monotonic()
        created = cnm(orchestrator, "network", "create", "--subnet", "10.131.0.0/24", "late")
        assert created.returncode == 0, created.stderr
        assert time.monotonic() - started < 4
    finally:
        for process in reversed(processes):
            process.stop()
