"""The reconciler: leaks collected in-process, and real crashes of the orchestrator process.

The crash tests run ``python -m orchestrator`` as a real process with
``CNM_ORCHESTRATOR_FAULT=crash-after:<step>`` against fake IPAM and agents
served by this test (real gRPC servers), let it die mid-flow, start a fresh
one and wait for it to leave nothing behind.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from cnm import errors, grpc_client
from cnm.ipam.v1 import ipam_pb2
from cnm.netdriver.v1 import netdriver_pb2 as nd
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.orchestrator.v1 import orchestrator_pb2_grpc
from orchestrator import faults, validation
from orchestrator.flows import MANAGED_LABEL, MANAGED_VALUE
from tests import support
from tests.orchestrator.conftest import connect_request, network_request


async def test_reconciler_releases_orphan_address(world):
    network = (await world.call("CreateNetwork", network_request())).network
    kept = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    world.ipam.allocations[network.network_id]["10.20.0.99"] = "deadbeefdeadbeef"
    report = await world.reconciler.run_once()
    assert report.released_addresses == [f"{network.network_id}/10.20.0.99"]
    assert world.ipam.owners(network.network_id) == {kept.endpoint_id: kept.address}
    assert world.ipam.allocations[network.network_id]["10.20.0.1"] == "cnm:gateway"
    assert (await world.reconciler.run_once()).released_addresses == []


async def test_an_address_of_unknown_owner_is_released_only_once_every_host_answered(world):
    """After a Redis crash an unknown owner may be a live container whose record was
    lost: its host is read first (and the endpoint adopted) before anything is released,
    and nothing of unknown owner is while a host does not answer."""
    network = (await world.call("CreateNetwork", network_request())).network
    world.ipam.allocations[network.network_id]["10.20.0.99"] = "deadbeefdeadbeef"
    assert (await world.reconciler.run_once(collect_hosts=False)).released_addresses == []
    await world.servers["h2"].stop(0)
    report = await world.reconciler.run_once()
    assert report.released_addresses == [] and report.errors
    assert world.ipam.allocations[network.network_id]["10.20.0.99"] == "deadbeefdeadbeef"
    await world.call("DeleteHost", pb.DeleteHostRequest(host_id="h2", force=True))
    report = await world.reconciler.run_once()
    assert report.released_addresses == [f"{network.network_id}/10.20.0.99"]


async def test_reconciler_deletes_unknown_host_objects_and_pools(world):
    network = (await world.call("CreateNetwork", network_request())).network
    kept = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    agent = world.agents["h1"]
    agent.endpoints["0123456789abcdef"] = nd.Endpoint(endpoint_id="0123456789abcdef",
                                                      network_id=network.network_id)
    agent.networks["feedfeedfeed"] = nd.Network(network_id="feedfeedfeed")
    world.ipam.pools["abcabcabcabc"] = ipam_pb2.Pool(
        pool_id="abcabcabcabc", subnet="10.77.0.0/24", labels={MANAGED_LABEL: MANAGED_VALUE})
    world.ipam.allocations["abcabcabcabc"] = {}
    world.ipam.pools["foreign"] = ipam_pb2.Pool(pool_id="foreign", subnet="10.78.0.0/24")
    world.ipam.allocations["foreign"] = {}
    report = await world.reconciler.run_once()
    assert report.deleted_host_endpoints == ["h1/0123456789abcdef"]
    assert report.deleted_host_networks == ["h1/feedfeedfeed"]
    assert report.deleted_pools == ["abcabcabcabc"]
    assert set(agent.endpoints) == {kept.endpoint_id}
    assert set(agent.networks) == {network.network_id}
    assert set(world.ipam.pools) == {network.network_id, "foreign"}


async def test_a_dual_stack_networks_ipv6_pool_is_its_own(world):
    """A dual-stack network's IPv6 pool (its id and ".v6") is kept with it, an IPv6
    address of no known owner in it released, and the pool deleted once the network is
    gone."""
    spec = network_request()
    spec.network.enable_ipv6, spec.network.ipv6_subnet = True, "fd00:20::/64"
    network = (await world.call("CreateNetwork", spec)).network
    kept = (await world.call("ConnectContainer", connect_request("c1"))).endpoint
    pool6 = validation.ipv6_pool_id(network.network_id)
    assert world.ipam.owners(pool6) == {kept.endpoint_id: kept.ipv6_address}
    world.ipam.allocations[pool6]["fd00:20::99"] = "deadbeefdeadbeef"
    report = await world.reconciler.run_once()
    assert (report.deleted_pools, report.released_addresses) == ([], [f"{pool6}/fd00:20::99"])
    assert world.ipam.owners(pool6) == {kept.endpoint_id: kept.ipv6_address}
    await world.call("DisconnectContainer", pb.DisconnectContainerRequest(
        network=network.network_id, container_id="c1"))
    assert world.ipam.owners(pool6) == {}
    world.ipam.pools[f"abcabcabcabc{validation.IPV6_POOL_SUFFIX}"] = ipam_pb2.Pool(
        pool_id="abcabcabcabc.v6", subnet="fd00:77::/64", labels={MANAGED_LABEL: MANAGED_VALUE})
    world.ipam.allocations["abcabcabcabc.v6"] = {}
    assert (await world.reconciler.run_once()).deleted_pools == ["abcabcabcabc.v6"]


async def test_reconciler_leaves_flows_in_progress_alone(world):
    network = (await world.call("CreateNetwork", network_request())).network
    endpoint_id = validation.endpoint_id(network.network_id, "c9")
    world.ipam.allocations[network.network_id]["10.20.0.9"] = endpoint_id
    async with world.store.lock(f"ep:{endpoint_id}"):
        report = await world.reconciler.run_once()
        assert report.released_addresses == []
    assert (await world.reconciler.run_once()).released_addresses == [
        f"{network.network_id}/10.20.0.9"]


async def test_reconciler_releases_vnis_of_networks_that_do_not_exist(world):
    kept = (await world.call("CreateNetwork", network_request(driver=pb.DRIVER_OVERLAY))).network
    orphan = await world.orch.vnis.allocate("0badc0ffee00")
    creating = await world.orch.vnis.allocate("c0ffee000001")
    await world.store.put_intent(world.store.new_intent(
        "name:other", "create-network", lock="name:other", network_id="c0ffee000001",
        name="other"))
    async with world.store.lock("name:other"):  # a create in flight, not abandoned
        report = await world.reconciler.run_once()
    assert report.released_vnis == [f"{orphan} of 0badc0ffee00"]
    assert await world.orch.vnis.holders() == {kept.network_id: kept.vni,
                                               "c0ffee000001": creating}


async def test_only_one_replica_reconciles_at_a_time(world):
    lock = world.store.lock("reconciler")
    async with lock:
        assert await world.reconciler.run_once() is None
    assert await world.reconciler.run_once() is not None


class OrchestratorProcess:
    def __init__(self, world, tmp_path, fault: str = ""):
        self.port = support.free_port()
        self.address = f"127.0.0.1:{self.port}"
        hosts = ",".join(f"{h}=127.0.0.1:{world.servers[h].port}" for h in ("h1", "h2"))
        self.process = support.Process(
            [support.PYTHON, "-m", "orchestrator", "--listen", self.address,
             "--redis-url", world.redis_url, "--ipam", world.ipam_address, "--hosts", hosts,
             "--reconcile-interval", "0.3", "--replica-lease", "1"],
            env={"CNM_ORCHESTRATOR_FAULT": fault},
            log_path=tmp_path / f"orchestrator-{self.port}.log",
        )
        self.channel = grpc_client.aio_channel(self.address)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)

    async def ready(self):
        await asyncio.to_thread(support.wait_serving, self.address)
        return self

    async def call(self, method, request):
        try:
            return await getattr(self.stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            raise errors.from_rpc_error(error) from None

    async def close(self):
        await self.channel.close()
        await asyncio.to_thread(self.process.stop)


async def eventually(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


STEP_FLOWS = {
    "create-network-intent": "create",
    "create-network-ipam": "create",
    "create-network-vni": "create-overlay",
    "connect-intent": "connect",
    "connect-ipam": "connect",
    "connect-agent": "connect",
    "disconnect-intent": "disconnect",
    "disconnect-agent": "disconnect",
    "delete-network-intent": "delete",
    "delete-network-hosts": "delete",
}


def test_every_crash_point_is_tested():
    assert set(STEP_FLOWS) == set(faults.STEPS)


@pytest.mark.parametrize("step", list(STEP_FLOWS))
async def test_crash_between_steps_is_repaired_after_restart(world, tmp_path, step):
    flow = STEP_FLOWS[step]
    crashing = await OrchestratorProcess(world, tmp_path, f"crash-after:{step}").ready()
    ports = [pb.PortMapping(host_port=8080, container_port=80)]
    try:
        with pytest.raises(errors.Unavailable):
            if flow == "create":
                await crashing.call("CreateNetwork", network_request())
            elif flow == "create-overlay":
                await crashing.call("CreateNetwork", network_request(driver=pb.DRIVER_OVERLAY))
            else:
                await crashing.call("CreateNetwork", network_request())
                await crashing.call("ConnectContainer", connect_request("c1", port_mappings=ports))
                if flow == "disconnect":
                    await crashing.call("DisconnectContainer", pb.DisconnectContainerRequest(
                        network="net1", container_id="c1"))
                elif flow == "delete":
                    await crashing.call("DeleteNetwork",
                                        pb.DeleteNetworkRequest(network="net1", force=True))
        await asyncio.to_thread(support.wait_for, lambda: not crashing.process.alive(), 5)
        assert crashing.process.popen.returncode == faults.EXIT_CODE
    finally:
        await crashing.close()

    assert await world.store.intents(), "the crash should leave an intent behind"
    restarted = await OrchestratorProcess(world, tmp_path).ready()
    try:
        async def repaired():
            assert await world.store.intents() == []
            for pool_id in world.ipam.pools:
                assert world.ipam.owners(pool_id) == {}
            for agent in world.agents.values():
                assert agent.endpoints == {}
            if flow in ("create", "create-overlay", "delete"):
                assert world.ipam.pools == {}
                assert all(agent.networks == {} for agent in world.agents.values())
            assert await world.orch.vnis.holders() == {}

        await eventually(repaired)
        networks = (await restarted.call("ListNetworks", pb.ListNetworksRequest())).networks
        gone = ("create", "create-overlay", "delete")
        assert [n.name for n in networks] == ([] if flow in gone else ["net1"])
        # everything works again, including the port the crashed connect reserved
        await restarted.call("CreateNetwork", network_request())
        endpoint = (await restarted.call(
            "ConnectContainer", connect_request("c1", port_mappings=ports))).endpoint
        assert endpoint.address == "10.20.0.2"
    finally:
        await restarted.close()
