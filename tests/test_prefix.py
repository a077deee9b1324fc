"""forget_prefixed_urls(): what start-up worked out without a prefix is worked out again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.files.storage import default_storage
from django.templatetags.static import static
from django.test import override_settings
from django.urls import get_script_prefix, set_script_prefix

from django_runfcgi.prefix import forget_prefixed_urls


@pytest.fixture
def started() -> Iterator[None]:
    """As after the system checks: the URLs read, and the storages used, at prefix "/"."""
    before = get_script_prefix()
    set_script_prefix("/")
    forget_prefixed_urls()
    assert settings.STATIC_URL == "/static/"
    assert static("admin/css/base.css") == "/static/admin/css/base.css"
    assert default_storage.url("report.pdf") == "/media/report.pdf"
    yield
    set_script_prefix(before)
    forget_prefixed_urls()


@pytest.mark.usefixtures("started")
def test_a_request_under_a_prefix_then_gets_prefixed_urls() -> None:
    forget_prefixed_urls()
    set_script_prefix("/app/")
    assert (settings.STATIC_URL, settings.MEDIA_URL) == ("/app/static/", "/app/media/")
    assert static("admin/css/base.css") == "/app/static/admin/css/base.css"
    assert staticfiles_storage.url("admin/js/core.js") == "/app/static/admin/js/core.js"
    assert default_storage.url("report.pdf") == "/app/media/report.pdf"


@pytest.mark.usefixtures("started")
def test_the_first_request_fixes_the_value_as_under_any_wsgi_server() -> None:
    forget_prefixed_urls()
    set_script_prefix("/app/")
    assert settings.STATIC_URL == "/app/static/"
    set_script_prefix("/other/")
    assert settings.STATIC_URL == "/app/static/"


@pytest.mark.usefixtures("started")
def test_urls_that_start_with_a_slash_are_left_as_written() -> None:
    with override_settings(STATIC_URL="/assets/", MEDIA_URL="https://media.example.com/"):
        forget_prefixed_urls()
        set_script_prefix("/app/")
        assert (settings.STATIC_URL, settings.MEDIA_URL) == (
            "/assets/",
            "https://media.example.com/",
        )
        assert static("x.css") == "/assets/x.css"
