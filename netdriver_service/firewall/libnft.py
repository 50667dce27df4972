"""Runs libnftables JSON batches: in-process binding, or an ``nft`` process.

The binding (``pip-nftables`` over Debian's ``libnftables1``) costs well
under a millisecond per transaction; ``nft -j -f -`` costs a process start
(~16 ms) and is only the fallback when the library cannot be loaded. Both
are blocking: callers run them in a thread. One batch is one transaction:
the kernel applies all of it or none.

A libnftables context opens its netlink socket when it is made, in the
network namespace of the thread that makes it, and keeps acting there from
any thread (proven by test_libnftables_context_stays_in_the_namespace_it_was_made_in).
The agent makes it in its own namespace and never switches.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Protocol

from prometheus_client import Histogram

from cnm import errors

TRANSACTION_SECONDS = Histogram(
    "cnm_agent_nftables_transaction_seconds",
    "Time of one nftables batch (one kernel transaction), by what it was: a change or a "
    "listing", ["kind"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))


class NftError(Exception):
    """A batch the kernel or libnftables refused; nothing of it was applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message.strip()

    @property
    def exists(self) -> bool:
        return "File exists" in self.message

    @property
    def missing(self) -> bool:
        return "No such file or directory" in self.message


class NftRunner(Protocol):
    name: str

    def run(self, commands: list[dict]) -> dict:
        """Applies ``commands`` as one transaction; returns the JSON output."""


class LibNftables:
    """libnftables through its ctypes binding, one context for the process."""

    name = "libnftables"

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)

    def run(self, commands: list[dict]) -> dict:
        rc, output, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise NftError(error or f"libnftables returned {rc}")
        return output or {}


class NftProcess:
    """``nft -j -f -``: one process per batch."""

    name = "nft"

    def __init__(self, binary: str = "nft") -> None:
        path = shutil.which(binary)
        if path is None:
            raise errors.Unavailable(f"{binary!r} not found on PATH", reason="NFT_NOT_FOUND")
        self._binary = path

    def run(self, commands: list[dict]) -> dict:
        done = subprocess.run(
            [self._binary, "-j", "-f", "-"], input=json.dumps({"nftables": commands}),
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise NftError(done.stderr or f"nft exited with {done.returncode}")
        return json.loads(done.stdout) if done.stdout.strip() else {}


class Timed:
    """A runner whose every batch is timed in :data:`TRANSACTION_SECONDS`."""

    def __init__(self, runner: NftRunner) -> None:
        self.runner = runner
        self.name = runner.name

    def run(self, commands: list[dict]) -> dict:
        kind = "list" if all("list" in command for command in commands) else "change"
        started = time.perf_counter()
        try:
            return self.runner.run(commands)
        finally:
            TRANSACTION_SECONDS.labels(kind).observe(time.perf_counter() - started)


def open_runner(prefer: str = "auto") -> NftRunner:
    """The libnftables binding if it loads (or ``prefer="nft"``), else an ``nft`` process;
    timed."""
    if prefer != "nft":
        try:
            return Timed(LibNftables())
        except (ImportError, OSError):
            if prefer == "libnftables":
                raise
    return Timed(NftProcess())
