"""The CLI is tested against a real orchestrator over fake agents: the same world."""

from tests.orchestrator.conftest import world  # noqa: F401 - a fixture, used by name
