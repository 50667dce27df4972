"""cnm.undo: inverses run newest first on failure, never on commit, and never hide the error."""

from __future__ import annotations

import asyncio

import pytest

from cnm import errors
from cnm.undo import Undo


async def test_failure_runs_the_inverses_newest_first_and_keeps_the_error():
    done = []

    async def inverse(name):
        done.append(name)

    with pytest.raises(errors.NotFound, match="the original"):
        async with Undo("op") as undo:
            undo.push("first", lambda: inverse("first"))
            undo.push("second", lambda: inverse("second"))
            raise errors.NotFound("the original")
    assert done == ["second", "first"]
    assert not undo.failed


async def test_a_failing_inverse_is_logged_the_rest_run_and_the_original_error_stays(caplog):
    done = []

    async def broken():
        raise errors.Unavailable("rollback could not reach the host")

    async def fine():
        done.append("fine")

    with pytest.raises(ValueError, match="the original"):
        async with Undo("op") as undo:
            undo.push("fine", fine)
            undo.push("broken", broken)
            raise ValueError("the original")
    assert done == ["fine"]
    assert undo.failed
    assert "undo step failed" in caplog.text


async def test_commit_keeps_everything():
    done = []
    async with Undo("op") as undo:
        undo.push("x", lambda: asyncio.sleep(0, done.append("x")))
        undo.commit()
    assert done == []


async def test_cancellation_undoes_too():
    done = []

    async def inverse():
        done.append("undone")

    async def operation():
        async with Undo("op") as undo:
            undo.push("x", inverse)
            await asyncio.sleep(10)

    task = asyncio.create_task(operation())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["undone"]


async def test_adopt_runs_a_nested_operations_inverses_after_the_later_ones():
    done = []

    async def inverse(name):
        done.append(name)

    with pytest.raises(RuntimeError):
        async with Undo("outer") as outer:
            inner = Undo("inner")
            inner.push("inner", lambda: inverse("inner"))
            outer.adopt(inner)
            outer.push("outer", lambda: inverse("outer"))
            raise RuntimeError
    assert done == ["outer", "inner"]
    assert inner.steps == []
