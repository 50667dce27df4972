"""A long-lived channel's call ends by its deadline, whatever the transport does."""

from __future__ import annotations

import asyncio

import pytest

from cnm import errors, grpc_client


class StuckStub:
    """A stub whose every call gRPC never ends (its deadline timer did not fire)."""

    def __init__(self, channel):
        self.timeouts = []

    async def GetThing(self, request, timeout, wait_for_ready, metadata):
        self.timeouts.append(timeout)
        await asyncio.Event().wait()


async def test_a_renewing_channels_call_grpc_does_not_end_is_cut_after_its_deadline():
    channel = grpc_client.RenewingChannel("unix:/nonexistent/cnm.sock", None, StuckStub)
    try:
        with pytest.raises(errors.Unavailable, match=r"^GetThing: no answer within 0.2s$"):
            await asyncio.wait_for(channel.call("GetThing", None, 0.2), 10)
        assert channel.stub.timeouts == [0.2]
    finally:
        await channel.close()
