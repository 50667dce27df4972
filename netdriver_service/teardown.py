"""Best-effort teardown: try every step, treat "not found" as done, report all failures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cnm import errors


class Teardown:
    """Runs every step of a teardown, treats "not found" as done, raises all failures at the end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures: list[errors.CnmError] = []

    async def step(self, description: str, action: Callable[[], Awaitable[object]]) -> None:
        try:
            await action()
        except errors.NotFound:
            pass
        except errors.CnmError as error:
            failure = errors.with_context(error, description)
            failure.__cause__ = error
            self.failures.append(failure)
        except Exception as error:  # noqa: BLE001 - collected and raised below
            self.failures.append(errors.Internal(f"{description}: {error}"))

    def raise_failures(self) -> None:
        if not self.failures:
            return
        if len(self.failures) == 1:
            failure = self.failures[0]
            raise errors.with_context(failure, self.what) from failure
        raise errors.Internal(
            f"{self.what}: {len(self.failures)} steps failed: "
            + "; ".join(failure.message for failure in self.failures),
            reason="TEARDOWN_FAILED",
        )
