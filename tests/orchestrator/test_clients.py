"""The orchestrator's calls to IPAM and the agents end by their deadline, whatever the
transport does."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cnm import errors
from orchestrator import clients


async def test_a_call_grpc_does_not_end_is_cut_a_little_after_its_deadline():
    calls = []

    async def stuck(request, timeout, wait_for_ready, metadata):
        calls.append(timeout)
        await asyncio.Event().wait()  # gRPC never ends it: its deadline timer did not fire

    with pytest.raises(errors.Unavailable, match=r"^ipam: allocate: no answer within 0.2s$"):
        await asyncio.wait_for(clients.call("ipam: allocate", stuck, None, 0.2), 10)
    assert len(calls) == 1 and calls[0] <= 0.2


async def test_a_call_cut_by_the_transport_is_tried_again_within_its_deadline():
    tries = []

    async def flaky(request, timeout, wait_for_ready, metadata):
        tries.append(timeout)
        if len(tries) < 3:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), "connection reset")
        return "answer"

    assert await clients.call("ipam: allocate", flaky, None, 5, wait_for_ready=True) == "answer"
    assert len(tries) == 3 and tries[0] > tries[1] > tries[2]
