"""``runfcgi config``: each option's effective value, and where it came from.

The value is what the server would use: a default that depends on other options is
shown as it works out (``daemonize``, ``workdir``, a daemon's ``errlog``), paths are
absolute, numbers are numbers. The secret is never shown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django_runfcgi import options
from django_runfcgi.addresses import TCP, Unix
from django_runfcgi.lifecycle import log_paths

HIDDEN = "<hidden>"


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def values(config: options.Config, given: Mapping[str, object], start_dir: Path) -> dict[str, Any]:
    """Every option's effective value, in JSON's types; ``given`` holds the raw values of
    the options that were set (users and groups are shown by the names given)."""
    bind, logs = config.bind, log_paths(config, config.daemonize, start_dir)
    account = {
        name: (None if name not in given else options.BY_NAME[name].parse(name, given[name]))
        for name in ("socketowner", "socketgroup", "user", "group")
    }
    # The options whose Config field is not their value as JSON shows it; every other
    # option's value is its Config field, read by name.
    shown: dict[str, Any] = {
        "host": bind.host if isinstance(bind, TCP) else None,
        "port": bind.port if isinstance(bind, TCP) else None,
        "socket": str(bind.path) if isinstance(bind, Unix) else None,
        "allow": None if config.allow is None else [str(entry) for entry in config.allow],
        "pidfile": _path(config.pidfile),
        "workdir": _path(config.workdir),
        "outlog": _path(logs.outlog),
        "errlog": _path(logs.errlog),
        "umask": f"{config.umask:03o}",
        "socketmode": None if config.socketmode is None else f"{config.socketmode:03o}",
        "scriptname": None if config.scriptname is None else config.scriptname or "/",
        "secret": None if config.secret is None else HIDDEN,
        **account,
    }
    return {
        option.name: shown[option.name] if option.name in shown else getattr(config, option.name)
        for option in options.OPTIONS
    }


def _text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def as_text(shown: Mapping[str, Any], sources: Mapping[str, options.Source]) -> str:
    """One line per option: its name, its value, where the value came from. A value
    longer than the column (accessformat's) pushes its source right, two spaces on."""
    width = max(len(name) for name in shown) + 2
    texts = {name: _text(value) for name, value in shown.items()}
    value_width = max((len(text) for text in texts.values() if len(text) <= 42), default=0) + 2
    return "\n".join(
        f"{name.ljust(width)}{texts[name].ljust(value_width - 2)}  {sources[name]}".rstrip()
        for name in shown
    )


def as_json(shown: Mapping[str, Any], sources: Mapping[str, options.Source]) -> str:
    return json.dumps(
        {name: {"value": value, "source": sources[name]} for name, value in shown.items()},
        indent=2,
    )
