"""System checks, run by ``manage.py check`` and before runfcgi starts serving.

The app's ``ready()`` registers them with the ``runfcgi`` tag; this module only defines them.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from django.core import checks

from django_runfcgi import conf

SUPPORTED_FLUP = "1.0."


def check_flup(**kwargs: Any) -> list[checks.CheckMessage]:
    """Our fixes reach into flup's internals, so only the release they were made for."""
    try:
        version = metadata.version("flup")
    except metadata.PackageNotFoundError:
        return [
            checks.Error(
                "flup is not installed.",
                hint="python -m pip install 'flup>=1.0.3,<1.1'",
                id="django_runfcgi.E001",
            )
        ]
    if not version.startswith(SUPPORTED_FLUP):
        return [
            checks.Warning(
                f"flup {version} is installed; django-runfcgi is made and tested for flup 1.0.",
                hint="python -m pip install 'flup>=1.0.3,<1.1'",
                id="django_runfcgi.W001",
            )
        ]
    return []


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """settings.RUNFCGI: each unknown key and bad value, or the rule it breaks."""
    return [
        checks.Error(problem.message, hint=problem.hint, id=problem.id)
        for problem in conf.problems()
    ]
