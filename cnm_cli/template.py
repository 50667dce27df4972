"""The subset of Go templates that `docker ... --format` users type.

``{{.Field}}``, ``{{json .}}``, ``{{json .Field}}`` and literal text, with ``\\t`` and
``\\n`` written as the shell passes them; a ``table`` prefix prints a header and
aligns the columns (Docker's ``table {{.ID}}\\t{{.Name}}``). Anything else inside
``{{ }}`` (if, range, functions) is refused with a message saying what is
supported, and an unknown field names the fields there are (ValueError: the CLI
makes it a usage error, as Docker's template errors are).
"""

from __future__ import annotations

import json
import re

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
_FIELD = re.compile(r"\.([A-Za-z][A-Za-z0-9]*)")


class Template:
    def __init__(self, text: str, fields: dict[str, str], kind: str) -> None:
        """``fields``: each field's column header (e.g. ``{"ID": "NETWORK ID"}``); ``kind``
        names the value in errors (``network``)."""
        self.table = text.startswith("table")
        if self.table:
            text = text.removeprefix("table").lstrip(" ")
        self.text = text.replace("\\t", "\t").replace("\\n", "\n")
        self.fields = fields
        self.kind = kind
        self.actions = [self._parse(action) for action in _ACTION.findall(self.text)]

    def _parse(self, action: str) -> tuple[bool, str | None]:
        """(json?, field or None for the whole value)."""
        as_json = action.startswith("json ")
        target = action.removeprefix("json ").strip() if as_json else action
        if target == "." and as_json:
            return True, None
        field = _FIELD.fullmatch(target)
        if field is None:
            raise ValueError(
                f"template: {{{{{action}}}}} is not supported: use {{{{.Field}}}}, "
                f"{{{{json .}}}} or {{{{json .Field}}}}, with a field of "
                f"{', '.join(self.fields)}")
        if field[1] not in self.fields:
            raise ValueError(f"template: can't evaluate field {field[1]} in type {self.kind} "
                             f"(fields: {', '.join(self.fields)})")
        return as_json, field[1]

    def header(self) -> str:
        return _ACTION.sub(lambda match: self._header_of(match[1]), self.text)

    def _header_of(self, action: str) -> str:
        _, field = self._parse(action)
        return self.fields[field] if field else self.kind.upper()

    def render(self, values: dict[str, object]) -> str:
        def value_of(match) -> str:
            as_json, field = self._parse(match[1])
            value = values if field is None else values[field]
            if as_json:
                return json.dumps(value, sort_keys=True)
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, dict):
                return ",".join(f"{key}={item}" for key, item in sorted(value.items()))
            return str(value)

        return _ACTION.sub(value_of, self.text)

    def print(self, rows: list[dict[str, object]]) -> None:
        lines = [self.render(row) for row in rows]
        if not self.table:
            for line in lines:
                print(line)
            return
        cells = [line.split("\t") for line in [self.header(), *lines]]
        width = max(len(row) for row in cells)
        widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(width)]
        for row in cells:
            print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
