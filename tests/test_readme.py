"""README's "Using it", word for word: scripts/up, the block, scripts/down.

The system scripts/up starts is the one the README's first command (scripts/demo)
starts, on ports, a run directory, a host namespace and a host id of this test's
own, so that it runs beside other tests and a running demo.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests import docs, support

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def test_using_it(tmp_path):
    run = tmp_path / "run"
    suffix = uuid.uuid4().hex[:6]
    host_id = f"readme-{suffix}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CNM_")},
        "CNM_CONFIG": str(tmp_path / "no-cli-config.json"),  # not this machine's own
        "CNM_RUN_DIR": str(run),
        "CNM_DEMO_HOST_NS": f"cnmt-readme-{suffix}",
        "CNM_HOST_ID": host_id,
        "CNM_DEMO_REDIS_PORT": str(support.free_port()),
        "CNM_IPAM_LISTEN": f"127.0.0.1:{support.free_port()}",
        "CNM_ORCHESTRATOR_LISTEN": f"127.0.0.1:{support.free_port()}",
    }
    try:
        up = subprocess.run([str(support.REPO / "scripts" / "up")], env=env, cwd=support.REPO,
                            capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, f"scripts/up failed:\n{up.stdout}\n{up.stderr}"
        # As a user types it in a shell of their own: only what run/env sets.
        shell_env = {k: v for k, v in env.items()
                     if k not in ("CNM_HOST_ID", "CNM_RUN_DIR") and not k.endswith("_LISTEN")}
        script = docs.substitute(docs.block("README.md", "using-it"),
                                 {"run/env": f"{run}/env"})
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=shell_env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"the block failed:\n{result.stdout}\n{result.stderr}"
        assert "1 packets transmitted, 1 received" in result.stdout, result.stdout
        assert '"name": "testbr"' in result.stdout  # inspect's JSON
    finally:
        down = subprocess.run([str(support.REPO / "scripts" / "down")], env=env,
                              cwd=support.REPO, capture_output=True, text=True, timeout=120,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert not [name for name in os.listdir("/var/run/netns")
                if name.startswith(f"cnm-{host_id}-") or name == env["CNM_DEMO_HOST_NS"]]
