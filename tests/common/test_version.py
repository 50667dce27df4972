"""--version on the CLI, every service and the plugins, and the services' console scripts."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["cnm", "cnm-orchestrator", "cnm-ipam", "cnm-agent",
                                    "cnm-cni", "cnm-docker-plugin"])
def test_every_program_says_its_version(script):
    shown = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    # The package's version, and the commit of this checkout when there is one.
    assert re.fullmatch(rf"{script} {re.escape(metadata.version('cnm'))}"
                        r"( \(git [0-9a-f]{12}(-dirty)?\))?\n", shown.stdout), shown.stdout


def test_the_console_scripts_start_the_services_as_python_m_does():
    for script, module in (("cnm-orchestrator", "orchestrator"), ("cnm-ipam", "ipam_service"),
                           ("cnm-agent", "netdriver_service")):
        by_script = subprocess.run([str(BIN / script), "--help"], capture_output=True,
                                   text=True, timeout=60, check=True).stdout
        by_module = subprocess.run([sys.executable, "-m", module, "--help"],
                                   capture_output=True, text=True, timeout=60,
                                   check=True).stdout
        assert by_script == by_module and by_script.startswith(f"usage: {script} ")
