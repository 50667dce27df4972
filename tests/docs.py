"""The shell blocks of the READMEs, as tests run them.

Every ```sh block of a document in DOCUMENTS carries, on the line just above
its fence, an HTML comment (invisible when the Markdown is rendered) that says
who runs it:

    <!-- tested by tests/compose/test_compose.py: node1-up -->
    <!-- not tested: it needs a registry image -->

A test fetches its block by name with ``block(document, name)`` and runs the
text as an operator pastes it, after ``substitute``-ing the documented example
values (addresses, host ids, directories) with its own. So a README command
that drifts from the system fails the test that runs it, and a new block that
nobody runs fails ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "deploy/README.md")

_MARKER = re.compile(
    r"^\s*<!--\s*(?:tested by (?P<test>\S+): (?P<name>[\w-]+)|not tested: (?P<why>.+?))\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    test: str | None  # the test file that runs it
    name: str | None
    why_not: str | None  # the reason no test runs it


def blocks(document: str) -> list[Block]:
    """Every fenced block of ``document`` (a path relative to the repository)."""
    lines = (REPO / document).read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent, start = len(fence["indent"]), index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else
                        lines[index].lstrip())
            index += 1
        index += 1  # the closing fence
        marker = _MARKER.match(lines[start - 1]) if start else None
        found.append(Block(
            document, start + 1, fence["lang"], "\n".join(body) + "\n",
            marker and marker["test"], marker and marker["name"], marker and marker["why"],
        ))
    return found


def block(document: str, name: str) -> str:
    """The text of the block of ``document`` named ``name`` (see the module's doc)."""
    named = [b for b in blocks(document) if b.name == name]
    if len(named) != 1:
        raise LookupError(f"{document} has {len(named)} blocks named {name!r}, want one")
    return named[0].text


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with each documented example value replaced by the test's own, longest
    first (so 10.0.0.10 is not taken for 10.0.0.1 followed by a 0); each value must
    occur, so that a renamed example fails rather than running with the doc's."""
    for old in sorted(values, key=len, reverse=True):
        if old not in text:
            raise LookupError(f"{old!r} is not in the block:\n{text}")
        text = re.sub(re.escape(old) + r"(?![\w.])" if old[-1].isalnum() else re.escape(old),
                      values[old].replace("\\", "\\\\"), text)
    return text
