"""``runfcgi config``: every option's effective value and its source, as text or JSON;
and how the command reads its action words."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_runfcgi import options


def config_output(*words: str) -> str:
    out = io.StringIO()
    call_command("runfcgi", "config", *words, stdout=out)
    return out.getvalue()


@override_settings(RUNFCGI={"protocol": "scgi", "maxchildren": "many"})
def test_settings_are_checked_before_config_shows_them() -> None:
    with pytest.raises(CommandError) as caught:
        config_output()
    assert str(caught.value) == "settings.RUNFCGI: maxchildren='many' is not a whole number."


@override_settings(
    RUNFCGI={"protocol": "ajp", "host": "127.0.0.1", "port": 8009, "maxchildren": 20}
)
def test_text_names_each_value_and_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/tmp")
    lines = config_output("maxchildren=8", "secret=s3cret", "--umask", "007").splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert list(rows) == [option.name for option in options.OPTIONS]
    assert rows["protocol"] == ["ajp", "settings"]
    assert rows["host"] == ["127.0.0.1", "settings"]
    assert rows["port"] == ["8009", "settings"]
    assert rows["maxchildren"] == ["8", "command", "line"]
    assert rows["umask"] == ["007", "command", "line"]
    assert rows["secret"] == ["<hidden>", "command", "line"]
    assert rows["socket"] == ["unset", "default"]
    # Defaults that follow from other options, as they work out.
    assert rows["daemonize"] == ["true", "default"]
    assert rows["workdir"] == ["/", "default"]
    assert rows["errlog"] == ["/tmp/runfcgi.log", "default"]
    assert rows["outlog"] == ["/tmp/runfcgi.log", "default"]
    assert rows["shutdowntimeout"] == ["30", "default"]
    assert "s3cret" not in "\n".join(lines)


def test_json_has_every_option_with_typed_values(tmp_path: Path) -> None:
    shown = json.loads(
        config_output(
            f"socket={tmp_path / 'app.sock'}", "daemonize=false", "shutdowntimeout=2.5", "--json"
        )
    )
    assert list(shown) == [option.name for option in options.OPTIONS]
    assert shown["socket"] == {"value": str(tmp_path / "app.sock"), "source": "command line"}
    assert shown["daemonize"] == {"value": False, "source": "command line"}
    assert shown["shutdowntimeout"] == {"value": 2.5, "source": "command line"}
    assert shown["maxspare"] == {"value": 5, "source": "default"}
    assert shown["host"] == {"value": None, "source": "default"}
    assert shown["errlog"] == {"value": None, "source": "default"}


def test_allow_is_a_list_in_json() -> None:
    shown = json.loads(
        config_output("host=0.0.0.0", "port=8025", "allow=198.18.0.2,198.18.1.0/24", "--json")
    )
    assert shown["allow"]["value"] == ["198.18.0.2", "198.18.1.0/24"]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["check", "--json"], "--json applies to 'runfcgi config' and 'runfcgi status' only."),
        (["--now", "socket=/x.sock"], "--now applies to 'runfcgi stop' only."),
        (["stop", "reload"], "Give one action at a time, not 'stop' and 'reload'."),
        (["config", "protocol=http"], "protocol='http' is not supported; use fcgi or scgi"),
        (
            ["stop"],
            "runfcgi stop finds the server by its pidfile or its address: give pidfile=, "
            'socket= or host= and port= (or "pidfile" in settings.RUNFCGI).',
        ),
    ],
)
def test_action_mistakes_are_one_line(words: list[str], message: str) -> None:
    with pytest.raises(CommandError) as caught:
        call_command("runfcgi", *words)
    assert str(caught.value).startswith(message)


def test_help_lists_the_actions() -> None:
    text = options.help_text()
    for action in ("config [--json]", "check ", "stop [--now]", "reload ", "reopen "):
        assert f"  manage.py runfcgi {action}" in text


def test_the_docs_show_what_config_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/settings.rst: ``runfcgi config maxchildren=4`` with the page's RUNFCGI, run
    in /srv/mysite."""
    configs = Path(__file__).resolve().parent.parent / "docs" / "configs"
    namespace: dict[str, object] = {}
    exec((configs / "runfcgi-settings.py").read_text(), namespace)
    monkeypatch.setattr(Path, "cwd", classmethod(lambda cls: Path("/srv/mysite")))
    with override_settings(RUNFCGI=namespace["RUNFCGI"]):
        shown = config_output("maxchildren=4")
    assert shown == (configs / "runfcgi-config.txt").read_text()
