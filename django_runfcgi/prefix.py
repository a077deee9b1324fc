"""Forget the URLs Django worked out at start, before any request set the mount prefix.

Django puts the script prefix in front of a relative ``STATIC_URL`` or ``MEDIA_URL``
(``"static/"``, as startproject writes it): the prefix of the moment, which the WSGI
handler sets from each request's SCRIPT_NAME. ``LazySettings`` keeps the result of the
first read for good. A WSGI server that loads the project and then serves makes that
first read inside a request, under the mount prefix. runfcgi runs the system checks
first, and ``check_url_settings`` reads both settings with the prefix still ``/``: every
``{% static %}`` link then left out ``/app``. Once the project is loaded, what start-up
kept is dropped, so that the first request works it out again, as under any WSGI server.
"""

from __future__ import annotations

import sys
from typing import cast

from django.conf import settings
from django.core.files.storage import Storage, default_storage, storages
from django.utils.functional import LazyObject, empty

# The settings LazySettings passes through _add_script_prefix() and then caches.
PREFIXED_SETTINGS = ("STATIC_URL", "MEDIA_URL")


def forget_prefixed_urls() -> None:
    """Drop the cached prefixed settings and the storages built from them at start."""
    for name in PREFIXED_SETTINGS:
        settings.__dict__.pop(name, None)
    _forget_storages()


def _forget_storages() -> None:
    """A storage created at start holds the URL of then: ``StaticFilesStorage`` takes
    ``settings.STATIC_URL`` in its constructor, ``FileSystemStorage`` keeps ``MEDIA_URL``
    in its ``base_url``. They are made again on first use, as Django's own handler for a
    changed STATIC_URL does (``django.test.signals.storages_changed``)."""
    made: dict[str, Storage] = vars(storages)["_storages"]
    if not made:
        return
    made.clear()
    cast("LazyObject[Storage]", default_storage)._wrapped = empty
    staticfiles = sys.modules.get("django.contrib.staticfiles.storage")
    if staticfiles is not None:
        cast("LazyObject[Storage]", staticfiles.staticfiles_storage)._wrapped = empty
