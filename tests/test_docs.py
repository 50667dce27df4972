"""Every shell block of the READMEs is run by a test, or says why not (tests/docs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import docs

SHELL_BLOCKS = [b for document in docs.DOCUMENTS for b in docs.blocks(document)
                if b.lang == "sh"]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: f"{b.document}:{b.line}")
def test_every_shell_block_is_run_by_a_test_or_says_why_not(block: docs.Block):
    where = f"{block.document}:{block.line}"
    assert block.test or block.why_not, (
        f"{where}: a ```sh block without '<!-- tested by TEST: NAME -->' or "
        "'<!-- not tested: WHY -->' on the line above its fence")
    if block.test:
        test = docs.REPO / block.test
        assert test.is_file(), f"{where}: {block.test} does not exist"
        assert f'"{block.name}"' in test.read_text(), \
            f"{where}: {block.test} never asks for the block {block.name!r}"


def test_block_names_are_unique_per_document():
    for document in docs.DOCUMENTS:
        names = [b.name for b in docs.blocks(document) if b.name]
        assert len(names) == len(set(names)), f"{document}: {names}"


def test_substitute_replaces_whole_values_and_insists_on_each():
    text = "listen 10.0.0.1:50051, not 10.0.0.10; host node1\n"
    assert docs.substitute(text, {"10.0.0.1": "10.9.9.1", "node1": "n-1"}) == \
        "listen 10.9.9.1:50051, not 10.0.0.10; host n-1\n"
    with pytest.raises(LookupError):
        docs.substitute(text, {"node2": "x"})


def test_readme_certificates_block(tmp_path: Path):
    """README, "Certificates": as printed, in a directory of the test's own."""
    pki = tmp_path / "pki"
    script = docs.substitute(docs.block("README.md", "pki"), {"/etc/cnm/pki": str(pki)})
    bin_dir = Path(sys.executable).parent
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, timeout=120,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True)
    assert sorted(p.name for p in pki.iterdir()) == sorted(
        f"{name}.{ext}" for name in ("ca", "orchestrator", "agent-h1", "admin")
        for ext in ("crt", "key"))
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
