"""The same store over a real Redis Sentinel and a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from cnm import errors
from ipam_service import pools
from ipam_service.store import RedisStore
from tests import support

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(
    not (REDIS_SERVER and REDIS_CLI), reason="needs redis-server and redis-cli"
)


def start_redis(workdir: Path, *extra: str) -> tuple[support.Process, int]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = support.free_port()
    process = support.Process(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            *extra,
        ],
        log_path=workdir / "redis.log",
    )
    client = redis.Redis(port=port)
    try:
        support.wait_for(lambda: _pings(client), 30, 0.05, f"redis on {port}")
    except TimeoutError:
        process.stop()
        raise
    finally:
        client.close()
    return process, port


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


async def exercise(store: RedisStore, pool_ids: list[str]) -> None:
    """Create, allocate, batch, release and delete across several pools."""
    for n, pool_id in enumerate(pool_ids):
        await store.create_pool(pools.build_pool(pool_id=pool_id, subnet=f"10.{n}.0.0/24"))
        assert (await store.allocate(pool_id, "a")).address == f"10.{n}.0.2"
        batch = await store.allocate_batch(pool_id, ["b", "c"])
        assert batch.addresses == [f"10.{n}.0.3", f"10.{n}.0.4"]
        assert await store.release(pool_id, owner="b") == f"10.{n}.0.3"
        assert (await store.get_pool(pool_id)).usage.allocated == 3
    with pytest.raises(errors.AlreadyExists):
        await store.create_pool(pools.build_pool(pool_id="clash", subnet="10.0.0.0/16"))
    assert [p.spec.pool_id for p in await store.list_pools()] == sorted(pool_ids)
    for pool_id in pool_ids:
        await store.delete_pool(pool_id, force=True)
    assert await store.list_pools() == []


async def test_sentinel_url(tmp_path):
    master, master_port = start_redis(tmp_path / "master")
    config = tmp_path / "sentinel" / "sentinel.conf"
    config.parent.mkdir()
    config.write_text(
        f"port {support.free_port()}\nbind 127.0.0.1\nprotected-mode no\n"
        f"dir {config.parent}\nsentinel monitor cnm-master 127.0.0.1 {master_port} 1\n"
    )
    sentinel_port = int(config.read_text().split()[1])
    sentinel = support.Process(
        [REDIS_SERVER, str(config), "--sentinel"], log_path=config.parent / "sentinel.log"
    )
    store = None
    try:
        probe = redis.Redis(port=sentinel_port)
        support.wait_for(lambda: _master_known(probe), 30, 0.1, "sentinel to know the master")
        probe.close()
        store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{sentinel_port}/cnm-master/0")
        assert await store.ping()
        await exercise(store, ["s1", "s2"])
    finally:
        if store:
            await store.close()
        sentinel.stop()
        master.stop()


def _master_known(client: redis.Redis) -> bool:
    try:
        return client.sentinel_get_master_addr_by_name("cnm-master") is not None
    except redis.exceptions.ConnectionError:
        return False


async def test_cluster_url(tmp_path):
    nodes: list[tuple[support.Process, int]] = []
    store = None
    try:
        for i in range(3):
            node_dir = tmp_path / f"node{i}"
            nodes.append(
                start_redis(
                    node_dir,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    # The bus defaults to port + 10000, which may not exist or be free.
                    "--cluster-port",
                    str(support.free_port()),
                )
            )
        await asyncio.to_thread(
            subprocess.run,
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *[f"127.0.0.1:{port}" for _, port in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        probe = redis.Redis(port=nodes[0][1], decode_responses=True)
        support.wait_for(
            lambda: probe.cluster("info").get("cluster_state") == "ok", 60, 0.1, "cluster state ok"
        )
        probe.close()
        store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{nodes[0][1]}")
        # Enough pools that their hash tags land on every node.
        await exercise(store, [f"net{i}" for i in range(8)])
        slots = {redis.cluster.key_slot(f"cnm:ipam:{{net{i}}}:meta".encode()) for i in range(8)}
        assert len(slots) > 1
    finally:
        if store:
            await store.close()
        for process, _ in nodes:
            process.stop()
