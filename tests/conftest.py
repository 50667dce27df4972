from __future__ import annotations

import os

import pytest

from tests import support

# pyroute2 forks; gRPC's fork handlers crash under load when it does.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"


def pytest_collection_modifyitems(config, items):
    # Long variants (chaos storms, exhaustive mutations) run apart, with CNM_EXHAUSTIVE=1:
    # deselected otherwise, not skipped; each has a short version that always runs.
    if os.environ.get("CNM_EXHAUSTIVE") != "1":
        kept = [item for item in items if "exhaustive" not in item.keywords]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[item for item in items if item not in kept])
            items[:] = kept
    if support.IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, netlink, nftables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the whole session, on a free loopback port."""
    server = support.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def netns():
    """A factory of network namespaces, all removed when the test ends."""
    made: list[support.Netns] = []

    def make(prefix: str = "cnmt") -> support.Netns:
        namespace = support.Netns(prefix)
        made.append(namespace)
        return namespace

    yield make
    for namespace in reversed(made):
        namespace.close()
