"""``settings.RUNFCGI``: runfcgi's options written once, in the project's settings.

The dict takes the option names and values of ``key=value`` words (Python values too:
``"maxchildren": 20``, ``"daemonize": False``); the command line and ``runfastcgi()``
override it (``options.layer()``). It is read each time it is asked for, never at
import, so ``override_settings`` works; what is wrong with it is told in the same words
by the system checks (checks.py) and by runfcgi when it starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings

from django_runfcgi import options

SETTING = "RUNFCGI"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the setting, as a system check reports it."""

    id: str
    message: str
    hint: str | None = None

    def line(self) -> str:
        """The problem in one line, for the terminal."""
        return f"{self.message} {self.hint}" if self.hint else self.message


NOT_A_DICT = "django_runfcgi.E002"
UNKNOWN_KEY = "django_runfcgi.E003"
BAD_VALUE = "django_runfcgi.E004"
BAD_COMBINATION = "django_runfcgi.E005"


def _setting() -> object:
    return getattr(settings, SETTING, {})


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key.lower(), options.BY_NAME, n=1, cutoff=0.6)
    guess = f"Did you mean {close[0]!r}? " if close else ""
    return f"{guess}'manage.py runfcgi help' lists the options."


def problems() -> list[Problem]:
    """Everything wrong with ``settings.RUNFCGI``: each unknown key and each bad value,
    else the first rule between options that it breaks."""
    value = _setting()
    if not isinstance(value, Mapping):
        return [
            Problem(
                NOT_A_DICT,
                f"settings.{SETTING} must be a dict of runfcgi options, not "
                f"{type(value).__name__}.",
                'For example RUNFCGI = {"protocol": "scgi", "socket": "/run/mysite/scgi.sock"}.',
            )
        ]
    found: list[Problem] = []
    for key, raw in value.items():
        if not isinstance(key, str) or key not in options.BY_NAME:
            found.append(
                Problem(
                    UNKNOWN_KEY,
                    f"settings.{SETTING} has an unknown key {key!r}.",
                    _suggest(str(key)),
                )
            )
            continue
        try:
            options.BY_NAME[key].parse(key, raw)
        except options.OptionError as err:
            found.append(Problem(BAD_VALUE, f"settings.{SETTING}: {err}"))
    if found:
        return found
    try:
        options.check(value)
    except options.OptionError as err:
        return [Problem(BAD_COMBINATION, f"settings.{SETTING}: {err}")]
    return []


def runfcgi_options() -> dict[str, object]:
    """The options ``settings.RUNFCGI`` gives, as written; {} without the setting.

    Raises :class:`options.OptionError` with the first problem when it has any, so that
    a start with the system checks skipped still stops on the terminal.
    """
    found = problems()
    if found:
        raise options.OptionError(found[0].line())
    value = _setting()
    assert isinstance(value, Mapping), "problems() checks the type"
    return dict(value)
