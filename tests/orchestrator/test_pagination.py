"""AIP-158 paging of the orchestrator's List RPCs, and the CLI paging through them."""

from __future__ import annotations

import asyncio

import pytest

from cnm import errors
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests.cli.test_cli import cnm
from tests.orchestrator.conftest import connect_request, network_request

COUNT = 130  # more than one default page (100)


async def pages(world, method: str, request, field: str) -> list[list]:
    out = []
    while True:
        reply = await world.call(method, request)
        out.append(list(getattr(reply, field)))
        if not reply.next_page_token:
            return out
        request.page_token = reply.next_page_token


@pytest.fixture
async def many(world):
    names = [f"n{i:03d}" for i in range(COUNT)]
    await asyncio.gather(*(world.call("CreateNetwork", network_request(
        name, f"10.{100 + i // 200}.{i % 200}.0/24", labels={"odd": str(i % 2)}))
        for i, name in enumerate(names)))
    return names


async def test_networks_come_in_pages_and_the_cli_reads_them_all(world, many):
    got = await pages(world, "ListNetworks", pb.ListNetworksRequest(), "networks")
    assert [len(page) for page in got] == [100, 30]
    assert [n.name for page in got for n in page] == many
    odd = await pages(world, "ListNetworks", pb.ListNetworksRequest(
        label_filters=["odd=1"], page_size=20), "networks")
    assert [len(page) for page in odd] == [20, 20, 20, 5]
    assert [n.name for page in odd for n in page] == many[1::2]

    listed = await cnm(world, "network", "ls", "-q")
    assert listed.code == 0 and len(listed.out.split()) == COUNT


async def test_a_token_with_other_filters_or_garbage_is_invalid_argument(world, many):
    first = await world.call("ListNetworks", pb.ListNetworksRequest(page_size=10))
    for request in (
        pb.ListNetworksRequest(page_token=first.next_page_token, driver=pb.DRIVER_OVERLAY),
        pb.ListNetworksRequest(page_token="not-a-token"),
        pb.ListNetworksRequest(page_size=-5),
    ):
        with pytest.raises(errors.InvalidArgument) as caught:
            await world.call("ListNetworks", request)
        assert caught.value.reason in ("INVALID_PAGE_TOKEN", "INVALID_PAGE_SIZE")


async def test_endpoints_hosts_and_sandboxes_page_too(world):
    await world.call("CreateNetwork", network_request())
    containers = [f"c{i:03d}" for i in range(12)]
    for container in containers:
        await world.call("ConnectContainer", connect_request(container))
    got = await pages(world, "ListEndpoints", pb.ListEndpointsRequest(network="net1",
                                                                      page_size=5), "endpoints")
    assert [len(page) for page in got] == [5, 5, 2]
    assert sorted(e.container_id for page in got for e in page) == containers
    hosts = await pages(world, "ListHosts", pb.ListHostsRequest(page_size=1), "hosts")
    assert [h.host_id for page in hosts for h in page] == ["h1", "h2"]
