"""Every error reason a service can send is listed in its proto.

Clients switch on ``ErrorInfo.reason`` (AIP-193), so the list in each proto is
part of the contract. This reads the source (no servers): every ``reason=``
a service's package gives, the default reason of every error it raises
without one, and the reasons of the shared code it calls (the
:mod:`cnm.validation` functions it uses, one by one, and the other ``cnm``
modules it imports), and asserts each is named in the service's proto.
A new reason without its line in the proto fails here.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from cnm import errors

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "ipam_service": "protos/cnm/ipam/v1/ipam.proto",
    "netdriver_service": "protos/cnm/netdriver/v1/netdriver.proto",
    "orchestrator": "protos/cnm/orchestrator/v1/orchestrator.proto",
}
DEFAULTS = {name: cls.default_reason for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, errors.CnmError)}


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "TEXT" assignments (reasons kept in constants)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _reasons(node: ast.AST, constants: dict[str, str]) -> set[str]:
    """Reasons given or defaulted by the error constructions under ``node``."""
    found = set()
    for call in ast.walk(node):
        if isinstance(call, ast.FunctionDef):  # def check(..., reason="INVALID_ID")
            arguments = call.args
            named = arguments.args[-len(arguments.defaults):] if arguments.defaults else []
            pairs = [*zip(named, arguments.defaults, strict=True),
                     *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)]
            found |= {default.value for arg, default in pairs
                      if arg.arg == "reason" and isinstance(default, ast.Constant)}
        if not isinstance(call, ast.Call):
            continue
        reason = next((k.value for k in call.keywords if k.arg == "reason"), None)
        if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
            found.add(reason.value)
        elif isinstance(reason, ast.Name) and reason.id in constants:
            found.add(constants[reason.id])
        elif reason is None:
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in DEFAULTS and name != "CnmError":
                found.add(DEFAULTS[name])
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@cache
def _validation() -> dict[str, tuple[set[str], set[str]]]:
    """cnm.validation: function -> (its own reasons, the module's functions it calls)."""
    tree = _parse(ROOT / "cnm/validation.py")
    constants = _constants(tree)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    return {
        name: (_reasons(node, constants),
               {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in functions})
        for name, node in functions.items()
    }


def _validation_reasons(names: set[str]) -> set[str]:
    table, seen, found = _validation(), set(), set()
    todo = [name for name in names if name in table]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        own, calls = table[name]
        found |= own
        todo += calls
    return found


def sent_reasons(package: str) -> set[str]:
    found: set[str] = set()
    shared: set[str] = {"server"}  # every service runs on cnm.server
    used: set[str] = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = _parse(path)
        found |= _reasons(tree, _constants(tree))
        validation = {"validation"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "cnm":
                shared |= {alias.name for alias in node.names}
                validation |= {alias.asname for alias in node.names
                               if alias.name == "validation" and alias.asname}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "cnm":
                continue
            elif isinstance(node, ast.ImportFrom) and node.module == "cnm.validation":
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnm."):
                shared.add(node.module.split(".")[1])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in validation:
                used.add(node.attr)
    found |= _validation_reasons(used)
    for module in shared - {"validation", "errors"}:
        path = ROOT / "cnm" / f"{module}.py"
        if path.exists():
            tree = _parse(path)
            found |= _reasons(tree, _constants(tree))
    return found


def listed_reasons(proto: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b[A-Z]{4,}\b",
                          (ROOT / proto).read_text()))


@pytest.mark.parametrize(("package", "proto"), SERVICES.items())
def test_every_reason_a_service_sends_is_in_its_proto(package, proto):
    missing = sent_reasons(package) - listed_reasons(proto)
    assert not missing, f"{proto} does not list: {', '.join(sorted(missing))}"


def test_the_reader_finds_what_it_should():
    # Guards the test itself: reasons known to be sent are found.
    assert {"POOL_EXHAUSTED", "INVALID_POOL_ID", "REDIS_UNAVAILABLE", "INTERNAL"} \
        <= sent_reasons("ipam_service")
    assert {"FIREWALL_TABLE_MISSING", "INVALID_SANDBOX", "INVALID_PAGE_TOKEN"} \
        <= sent_reasons("netdriver_service")
    assert {"IPV6_NOT_SUPPORTED", "INVALID_ID", "HOST_NOT_FOUND"} <= sent_reasons("orchestrator")
