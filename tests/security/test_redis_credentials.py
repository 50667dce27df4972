"""IPAM and the orchestrator reach a Redis that demands credentials (an ACL user and its
password), given as CNM_REDIS_PASSWORD beside a URL that carries only the user."""

from __future__ import annotations

import os
import shutil
import subprocess

import grpc
import pytest
import redis

from cnm.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from tests import support

PASSWORD = "s3cret-For-cnm"
pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


@pytest.fixture
def locked_redis(tmp_path):
    port = support.free_port()
    config = tmp_path / "redis.conf"
    # The password in a file, not on a command line every local user can read.
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsave \"\"\n"
                      f"appendonly no\nuser default off\n"
                      f"user cnm on >{PASSWORD} ~* &* +@all\n")
    config.chmod(0o600)
    process = support.Process(["redis-server", str(config)], log_path=tmp_path / "redis.log")
    client = redis.Redis(port=port, username="cnm", password=PASSWORD)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        support.wait_for(pings, 30, 0.05, "redis")
        yield port
    finally:
        client.close()
        process.stop()


def test_services_use_the_password_from_the_environment(locked_redis, tmp_path):
    url = f"redis://cnm@127.0.0.1:{locked_redis}/0"
    ipam = f"127.0.0.1:{support.free_port()}"
    orchestrator = f"127.0.0.1:{support.free_port()}"
    env = {"CNM_REDIS_PASSWORD": PASSWORD}
    processes = [support.Process([support.PYTHON, "-m", "ipam_service", "--listen", ipam,
                                  "--redis-url", url], env=env, log_path=tmp_path / "ipam.log")]
    try:
        support.wait_serving(ipam)
        processes.append(support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", orchestrator, "--redis-url", url,
             "--ipam", ipam], env=env, log_path=tmp_path / "orchestrator.log"))
        support.wait_serving(orchestrator)
        cnm = str(support.Path(support.PYTHON).with_name("cnm"))
        created = subprocess.run(
            [cnm, "--orchestrator", orchestrator, "network", "create", "--subnet",
             "10.129.0.0/24", "locked"], capture_output=True, text=True, timeout=60,
            check=False, env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"})
        assert created.returncode == 0, created.stderr
    finally:
        for process in reversed(processes):
            process.stop()
    for log in ("ipam.log", "orchestrator.log"):
        assert PASSWORD not in (tmp_path / log).read_text()


def test_without_the_password_ipam_is_unavailable_and_says_why(locked_redis, tmp_path):
    ipam = f"127.0.0.1:{support.free_port()}"
    process = support.Process(
        [support.PYTHON, "-m", "ipam_service", "--listen", ipam, "--redis-url",
         f"redis://cnm@127.0.0.1:{locked_redis}/0"],
        env={"CNM_REDIS_PASSWORD": ""}, log_path=tmp_path / "ipam.log")
    try:
        def answered() -> grpc.RpcError | None:
            with grpc.insecure_channel(ipam) as channel:
                try:
                    ipam_pb2_grpc.IpamServiceStub(channel).ListPools(
                        ipam_pb2.ListPoolsRequest(), timeout=5)
                except grpc.RpcError as error:
                    return error if error.code() != grpc.StatusCode.UNAVAILABLE or \
                        "redis" in (error.details() or "") else None
            return None

        error = support.wait_for(answered, 20, 0.1, "IPAM to answer")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused cnm's credentials" in error.details(), error.details()
    finally:
        process.stop()
