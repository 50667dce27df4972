"""cnm-cni finds the configuration's ``socket`` without importing json: whatever the
text, it must find what json would, or nothing where json finds no string."""

from __future__ import annotations

import json
import random
import string

import pytest

from cnm_cni.main import socket_path, top_level_string

CASES = [
    '{"socket": "/a/b.sock"}',
    '{"cniVersion":"1.0.0","socket" : "/x"}',
    '{"prevResult": {"socket": "/nested"}, "name": "n"}',
    '{"name": "has \\"socket\\" in it", "socket": "/y"}',
    '{"name": "ends with a backslash \\\\", "socket": "/z"}',
    '{"socket": "/with\\\\escape"}',
    '{"socket": "/caf\\u00e9"}',
    '{"socket": 5}',
    '{"socket": null}',
    '{"name": "socket", "socket": "/after-a-value"}',
    '{"x": ["socket", {"socket": "/q"}], "socket": "/r"}',
    '{"a": "\\"socket\\": \\"/fake\\"", "b": 1}',
    '[{"socket": "/in-an-array"}]',
    'not json "socket"',
    '{"socket": "/unterminated',
    "",
]


def expected(text: str) -> str | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None
    value = found.get("socket") if isinstance(found, dict) else None
    return value if isinstance(value, str) else None


@pytest.mark.parametrize("text", CASES)
def test_finds_what_json_finds(text):
    assert top_level_string(text, "socket") == expected(text)


def test_random_configurations_agree_with_json():
    alphabet = string.ascii_letters + '"\\{}[]:, /\u00e9'
    chooser = random.Random(12)

    def value(depth: int):
        kind = chooser.randrange(5 if depth < 3 else 3)
        if kind == 0:
            return "".join(chooser.choice(alphabet) for _ in range(chooser.randrange(8)))
        if kind == 1:
            return chooser.choice([1, 2.5, None, True])
        if kind == 2:
            return "socket"
        if kind == 3:
            return [value(depth + 1) for _ in range(chooser.randrange(3))]
        return {chooser.choice(["socket", "name", "s", '"socket"']): value(depth + 1)
                for _ in range(chooser.randrange(3))}

    for _ in range(2000):
        document = {key: value(1) for key in chooser.sample(
            ["socket", "name", "prevResult", "runtimeConfig", "x"], chooser.randrange(1, 5))}
        text = json.dumps(document, ensure_ascii=chooser.random() < 0.5,
                          separators=chooser.choice([(",", ":"), (", ", ": ")]))
        assert top_level_string(text, "socket") == expected(text), text


def test_socket_key_then_environment_then_run_dir(monkeypatch):
    monkeypatch.delenv("CNM_CNI_SOCKET", raising=False)
    monkeypatch.delenv("CNM_RUN_DIR", raising=False)
    assert socket_path('{"socket": "/s.sock"}') == "/s.sock"
    assert socket_path("{}") == "/run/cnm/cni.sock"
    monkeypatch.setenv("CNM_RUN_DIR", "/tmp/run")
    assert socket_path("{}") == "/tmp/run/cni.sock"
    monkeypatch.setenv("CNM_CNI_SOCKET", "/env.sock")
    assert socket_path("{}") == "/env.sock"
    assert socket_path('{"socket": ""}') == "/env.sock"
