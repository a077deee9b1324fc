"""``runfastcgi()`` for ``.fcgi`` scripts written for Django 1.8.

An old ``mysite.fcgi`` changes one import and nothing else::

    from django_runfcgi import runfastcgi
    runfastcgi(method="threaded", daemonize="false")
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

import django
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError


def runfastcgi(argset: Iterable[str] = (), **kwargs: Any) -> None:
    """Serve like ``manage.py runfcgi``; on a bad start, one line on stderr and exit 1.

    Django 1.8 returned False on errors, and the script then exited 0 having served
    nothing: web servers restarted it in a loop without a word in their error log.
    """
    try:
        setup_django()
        from django_runfcgi.management.commands.runfcgi import Command  # noqa: PLC0415

        Command().execute(
            words=list(argset),
            python_values={key.lower(): value for key, value in kwargs.items()},
            verbosity=1,
            skip_checks=False,
            no_color=True,
            force_color=False,
            traceback=False,
        )
    except CommandError as err:
        sys.stderr.write(f"runfcgi: error: {err}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


def setup_django() -> None:
    """``django.setup()``, with settings or apps that fail to load told in one line.

    The script runs under a web server, whose error log would otherwise get a
    traceback into Django's internals for a mistyped ``DJANGO_SETTINGS_MODULE``.
    """
    try:
        django.setup()
    except (ImportError, ImproperlyConfigured, SyntaxError) as err:
        module = os.environ.get("DJANGO_SETTINGS_MODULE")
        detail = " ".join(str(err).split())
        raise CommandError(
            f"Cannot load the project (DJANGO_SETTINGS_MODULE={module!r}): "
            f"{type(err).__name__}: {detail}"
        ) from err
