"""deploy/systemd's units, checked by systemd's own parser (systemd-analyze verify).

systemd is not PID 1 on the test machines, so the units are not started here; what
they ask of the programs is tested where it can be: readiness notification
(tests/common/test_server.py), the agent with exactly the unit's capability set
(tests/netdriver/test_agent_grpc.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import support

UNITS = sorted((support.REPO / "deploy" / "systemd").glob("*.service"))
BIN = Path(sys.executable).parent


def test_there_is_a_unit_per_service():
    assert [unit.name for unit in UNITS] == [
        "cnm-agent.service", "cnm-ipam.service", "cnm-orchestrator.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_finds_nothing_wrong_in_the_unit(unit, tmp_path):
    """As installed (deploy/README.md "Without Docker"), but with this venv's console
    scripts for /opt/cnm/bin and environment files of the test's own: verify checks
    that the programs exist, and says every key or value it would ignore."""
    text = unit.read_text()
    assert "Type=notify" in text and "Restart=on-failure" in text
    installed = text.replace("/opt/cnm/bin/", f"{BIN}/").replace(
        "EnvironmentFile=/etc/cnm/", f"EnvironmentFile={tmp_path}/")
    (tmp_path / unit.name.replace("cnm-", "").replace(".service", ".env")).write_text("")
    (tmp_path / unit.name).write_text(installed)
    checked = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_the_central_services_have_no_capability_and_the_agent_only_its_three():
    bounding = {unit.name: next(line.partition("=")[2].split() for line in
                                unit.read_text().splitlines()
                                if line.startswith("CapabilityBoundingSet="))
                for unit in UNITS}
    assert bounding == {
        "cnm-ipam.service": [], "cnm-orchestrator.service": [],
        "cnm-agent.service": ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"],
    }
