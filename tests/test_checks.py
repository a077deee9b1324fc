from __future__ import annotations

from importlib import metadata

import pytest

from django_runfcgi.checks import check_flup


def test_supported_flup_passes() -> None:
    assert check_flup() == []


def test_missing_flup_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    [error] = check_flup()
    assert error.id == "django_runfcgi.E001"
    assert error.msg == "flup is not installed."


def test_other_flup_release_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "version", lambda name: "1.1.0")
    [warning] = check_flup()
    assert warning.id == "django_runfcgi.W001"
    assert "flup 1.1.0 is installed" in warning.msg
