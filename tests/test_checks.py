from __future__ import annotations

import io
from importlib import metadata
from pathlib import Path

import pytest
from django.core.checks.registry import registry
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_runfcgi.checks import check_flup, check_settings


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


def _flup_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)


def test_check_tag_runfcgi_runs_our_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    _flup_missing(monkeypatch)
    with pytest.raises(SystemCheckError, match=r"django_runfcgi\.E001"):
        call_command("check", "--tag", "runfcgi")


def test_check_tag_runfcgi_runs_only_our_checks() -> None:
    tagged = [
        check
        for check in registry.get_checks(include_deployment_checks=True)
        if "runfcgi" in check.tags
    ]
    assert set(tagged) == {check_flup, check_settings}


def test_check_tag_runfcgi_is_listed() -> None:
    out = io.StringIO()
    call_command("check", "--list-tags", stdout=out)
    assert "runfcgi" in out.getvalue().split()


def test_runfcgi_runs_our_checks_before_binding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _flup_missing(monkeypatch)
    sock = tmp_path / "app.sock"
    with pytest.raises(SystemCheckError, match=r"django_runfcgi\.E001"):
        call_command("runfcgi", f"socket={sock}", "daemonize=false", skip_checks=False)
    assert not sock.exists()
