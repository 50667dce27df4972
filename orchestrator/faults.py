"""Crash points for fault-injection tests.

``CNM_ORCHESTRATOR_FAULT=crash-after:<step>[,crash-after:<step>...]`` makes the
process exit at once (no cleanup, like a kill -9) right after ``step`` of a
flow, so tests can prove the reconciler finishes or undoes what was left.
"""

from __future__ import annotations

import logging
import os
import sys

EXIT_CODE = 70
STEPS = (
    "create-network-intent", "create-network-ipam", "create-network-vni",
    "connect-intent", "connect-ipam", "connect-agent",
    "disconnect-intent", "disconnect-agent",
    "delete-network-intent", "delete-network-hosts",
)

log = logging.getLogger("orchestrator.faults")


def _configured() -> frozenset[str]:
    spec = os.environ.get("CNM_ORCHESTRATOR_FAULT", "")
    return frozenset(
        part.removeprefix("crash-after:") for part in spec.split(",")
        if part.startswith("crash-after:")
    )


_CRASH_AFTER = _configured()


def point(step: str) -> None:
    """Exits the process if a crash after ``step`` was asked for."""
    if step in _CRASH_AFTER:
        log.warning("fault injected: crashing", extra={"after": step})
        sys.stderr.flush()
        os._exit(EXIT_CODE)
