"""The orchestrator's Redis locks, against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cnm import errors
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator.store import Op, Store, k
from tests import support


@pytest.fixture
async def stores(redis_url):
    made = []
    for _ in range(2):
        store = Store.connect(redis_url, lease_seconds=5)
        store.LOCK_TTL_MS = 300
        await store.renew_lease()
        made.append(store)
    yield made
    for store in made:
        await store.close()


async def test_a_held_lock_outlives_its_ttl(stores):
    ours, theirs = stores
    async with ours.lock("net:x"):
        await asyncio.sleep(1.0)  # more than three TTLs
        assert not await theirs.lock("net:x", wait=0).try_acquire()
    other = theirs.lock("net:x", wait=0)
    assert await other.try_acquire()
    await other.release()


async def test_an_endpoint_lock_reads_record_and_intent_as_it_is_taken(stores):
    """The endpoint's lock (one script: take, then read under it): taken, stolen only
    from a replica whose lease expired, each time with what is recorded."""
    ours, theirs = stores
    ours.LOCK_TTL_MS = 60_000
    endpoint = pb.Endpoint(endpoint_id="7", address="10.0.0.7")
    await ours.r.set(k("ep", "7"), endpoint.SerializeToString())
    await ours.put_intent(ours.new_intent("ep:7", Op.DISCONNECT, lock="ep:7"))
    held = ours.endpoint_lock("7", wait=0)
    assert await held.try_acquire()
    assert held.endpoint == endpoint and (held.intent.key, held.intent.op) == (
        "ep:7", Op.DISCONNECT)
    assert not await theirs.endpoint_lock("7", wait=0).try_acquire()
    await ours.drop_lease()
    stolen = theirs.endpoint_lock("7", wait=0)
    assert await stolen.try_acquire() and stolen.endpoint == endpoint
    assert await theirs.r.get(k("lock", "ep:7")) == stolen.token.encode()
    await stolen.release()
    await held.release()
    unknown = theirs.endpoint_lock("8", wait=0)
    assert await unknown.try_acquire() and (unknown.endpoint, unknown.intent) == (None, None)
    await unknown.release()


async def test_a_flow_that_loses_its_lock_is_stopped_with_unavailable(stores):
    ours, theirs = stores
    reached_end = False
    with pytest.raises(errors.Unavailable, match="lost the lock net:x"):
        async with ours.lock("net:x"):
            # Another replica takes it over (as after our lease lapsed).
            await theirs.r.set(k("lock", "net:x"), b"other:1234")
            await asyncio.sleep(1.0)
            reached_end = True
    assert not reached_end
    assert await theirs.r.get(k("lock", "net:x")) == b"other:1234"


async def test_a_lock_is_stolen_only_from_a_replica_whose_lease_expired(stores):
    ours, theirs = stores
    ours.LOCK_TTL_MS = 60_000  # no expiry during the test: only the lease matters
    held = ours.lock("ep:1", wait=0)
    assert await held.try_acquire()
    assert not await theirs.lock("ep:1", wait=0).try_acquire()
    await ours.drop_lease()
    stolen = theirs.lock("ep:1", wait=0)
    assert await stolen.try_acquire()
    assert await theirs.r.get(k("lock", "ep:1")) == stolen.token.encode()
    await stolen.release()
    await held.release()


async def test_host_updates_from_two_replicas_lose_nothing(stores, monkeypatch):
    from cnm.orchestrator.v1 import orchestrator_pb2 as pb

    ours, theirs = stores
    await ours.put_host(pb.Host(host_id="h1", address="10.0.0.1:50053"))
    read = ours._host_bytes
    raced = []

    async def read_then_race(host_id):
        raw = await read(host_id)
        if not raced:  # the other replica writes between our read and our write
            raced.append(True)

            def learn(host):
                host.underlay_ip = "192.0.2.1"
                return True

            await theirs.update_host(host_id, learn)
        return raw

    monkeypatch.setattr(ours, "_host_bytes", read_then_race)

    def beat(host):
        host.last_heartbeat_time.FromSeconds(1234)
        return True

    updated = await ours.update_host("h1", beat)
    assert raced
    stored = await theirs.get_host("h1")
    assert stored == updated
    assert stored.underlay_ip == "192.0.2.1" and stored.last_heartbeat_time.seconds == 1234
    assert await ours.update_host("nope", beat) is None


async def test_peers_generations_never_go_back_even_when_redis_forgets_them(stores):
    ours, theirs = stores
    first = await ours.next_peers_generation("n1")
    second = await theirs.next_peers_generation("n1")
    assert first < second < 2**63 - 1  # the agents refuse more (INVALID_GENERATION)
    await ours.r.delete(k("net", "n1", "peers-gen"))  # Redis flushed, or replaced
    assert await ours.next_peers_generation("n1") > second


@pytest.mark.parametrize(("text", "driver"), [(b"overlay", pb.DRIVER_OVERLAY),
                                              (b"bridge", pb.DRIVER_BRIDGE)])
async def test_a_network_stored_when_its_driver_was_text_reads_back_with_its_driver(
    stores, text, driver,
):
    """Network.driver was a string (field 3); records written then must keep their driver."""
    store = stores[0]
    current = pb.Network(network_id="0ld0ld0ld0ld", name="old", subnet="10.9.0.0/24",
                         vni=4100).SerializeToString()
    legacy = current + b"\x1a" + bytes([len(text)]) + text  # field 3, length-delimited
    assert await store.record_network(pb.Network.FromString(current), "no-intent")
    await store.r.hset(k("net", "0ld0ld0ld0ld"), "pb", legacy)
    network, _ = await store.resolve_network("old")
    assert (network.driver, network.vni, network.subnet) == (driver, 4100, "10.9.0.0/24")
    assert [n.driver for n, _ in await store.list_networks()] == [driver]
    # Written back, it is a record of today's form.
    assert pb.Network.FromString(network.SerializeToString()) == network


async def test_a_holder_cut_short_by_a_redis_blip_gives_its_lock_back_at_once(tmp_path):
    """Redis stops answering (SIGSTOP) while a flow holds a lock; the flow fails and its
    release cannot reach Redis. Once Redis answers again the lock is free within moments,
    not a TTL (which was a minute) later."""
    server = support.RedisServer(tmp_path, appendonly=False).start()
    ours, theirs = Store.connect(server.url), Store.connect(server.url)
    try:
        await ours.renew_lease()
        await theirs.renew_lease()
        lock = ours.lock("ep:blip")
        assert await lock.try_acquire()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.2)
            await lock.release()  # fails to reach Redis: tried again in the background
        finally:
            await asyncio.sleep(1.3)
            os.kill(server.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        other = theirs.lock("ep:blip", wait=3)
        async with other:
            waited = time.monotonic() - resumed
        assert waited < 1.0, waited
        assert ours.LOCK_TTL_MS <= 10_000  # a renewed lock lives seconds, not a minute
    finally:
        await ours.close()
        await theirs.close()
        server.stop()
