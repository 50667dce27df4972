"""The CLI's configuration, set once per host: ``cnm config``.

Like ``docker context``, so that commands need no flags on a host whose agent
and orchestrator are not at the defaults (a Compose deployment, a multi-host
one, TLS). One JSON file holds the settings below; its path is ``$CNM_CONFIG``,
else ``$XDG_CONFIG_HOME/cnm/config.json`` (``~/.config/cnm/config.json``) when it
exists, else ``/etc/cnm/cli.json`` (for every user of the host). Flags win over
the environment, which wins over the file, which wins over the defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cnm import errors

# Setting -> the environment variable it stands in for.
SETTINGS = {
    "orchestrator": "CNM_ORCHESTRATOR",
    "host_id": "CNM_HOST_ID",
    "run_dir": "CNM_RUN_DIR",
    "tls_ca": "CNM_TLS_CA",
    "tls_cert": "CNM_TLS_CERT",
    "tls_key": "CNM_TLS_KEY",
}
SYSTEM_FILE = Path("/etc/cnm/cli.json")
PATH_SETTINGS = ("run_dir", "tls_ca", "tls_cert", "tls_key")


def user_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cnm" / "config.json"


def path() -> Path:
    """The file read (and written): see the module's docstring."""
    if os.environ.get("CNM_CONFIG"):
        return Path(os.environ["CNM_CONFIG"])
    user = user_file()
    if user.exists() or not SYSTEM_FILE.exists():
        return user
    return SYSTEM_FILE


def load(where: Path | None = None) -> dict[str, str]:
    """The settings of the file (none when there is no file); a file that cannot be
    read is an error, not silently nothing."""
    where = where or path()
    try:
        data = json.loads(where.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise errors.InvalidArgument(f"cannot read the configuration {where}: {error}",
                                     reason="INVALID_CONFIG") from None
    if not isinstance(data, dict) or not all(
            key in SETTINGS and isinstance(value, str) for key, value in data.items()):
        raise errors.InvalidArgument(
            f"{where}: want a JSON object of {', '.join(SETTINGS)} (strings)",
            reason="INVALID_CONFIG")
    return data


def as_environment(settings: dict[str, str]) -> dict[str, str]:
    return {SETTINGS[key]: value for key, value in settings.items() if value}


def save(settings: dict[str, str], where: Path | None = None) -> Path:
    """Writes ``settings`` (mode 0600: it names key files) and returns the path."""
    where = where or path()
    where.parent.mkdir(parents=True, exist_ok=True)
    temporary = where.with_name(where.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(dict(sorted(settings.items())), out, indent=2)
        out.write("\n")
    os.replace(temporary, where)
    return where


def parse_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``cnm config set``; paths made absolute (the file is read from
    anywhere)."""
    key, sep, value = text.partition("=")
    if not sep or key not in SETTINGS:
        raise errors.InvalidArgument(
            f"want KEY=VALUE with KEY one of {', '.join(SETTINGS)}, not {errors.capped(text)!r}",
            reason="INVALID_CONFIG")
    if key in PATH_SETTINGS and value:
        value = str(Path(value).resolve())
    return key, value
