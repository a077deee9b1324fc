"""Serve a Django project over FastCGI, SCGI or AJP 1.3 with ``manage.py runfcgi``."""

from __future__ import annotations

from typing import Any

__all__ = ["runfastcgi"]


def runfastcgi(argset: list[str] | tuple[str, ...] = (), **kwargs: Any) -> None:
    """Drop-in for Django 1.8's ``django.core.servers.fastcgi.runfastcgi``."""
    from django_runfcgi.fcgi_scripts import runfastcgi as run  # noqa: PLC0415 - keep import light

    run(argset, **kwargs)
