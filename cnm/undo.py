"""One undo idiom for every multi-step operation, in every service.

A step that changes something pushes its inverse; the operation commits when
it has succeeded. If it fails (or is cancelled) before that, the inverses run
newest first. An inverse that fails is logged and the rest still run: the
caller always sees the original error, never the rollback's.

    async with Undo("connect endpoint 'ab12'") as undo:
        await make_veth()
        undo.push("delete veth 'vh12'", lambda: delete_veth())
        await record()
        undo.commit()

``failed`` tells whether an inverse failed, so that a caller can keep a
record (an intent) that lets a reconciler finish the job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Self

log = logging.getLogger("cnm.undo")

Step = Callable[[], Awaitable[object]]


class Undo:
    """The inverse steps of an operation, run newest first unless it commits."""

    def __init__(self, what: str = "", logger: logging.Logger = log) -> None:
        self.what = what
        self.logger = logger
        self.steps: list[tuple[str, Step]] = []
        self.failed = False

    def push(self, description: str, step: Step) -> None:
        """Registers the inverse of a step that has just been done."""
        self.steps.append((description, step))

    def adopt(self, other: Undo) -> None:
        """Takes over ``other``'s steps (a nested operation's), to run before its own."""
        self.steps.extend(other.steps)
        other.steps = []

    def commit(self) -> None:
        """The operation succeeded: nothing will be undone."""
        self.steps = []

    async def rollback(self) -> None:
        """Runs every inverse, newest first; a failing one is logged and the rest still run."""
        steps, self.steps = self.steps, []
        for description, step in reversed(steps):
            try:
                await step()
            except Exception as error:  # noqa: BLE001 - the original error is what counts
                self.failed = True
                self.logger.warning("undo step failed", extra={
                    "operation": self.what, "step": description,
                    "error": getattr(error, "message", None) or f"{type(error).__name__}: {error}",
                })

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            await self.rollback()
        elif self.steps:
            # Leaving without commit() and without an error is a bug in the caller;
            # undoing is the safe reading of it.
            await self.rollback()
        return False
