"""settings.RUNFCGI: defaults for every option, the command line on top, and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.checks import Error
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings

from django_runfcgi import conf, options
from django_runfcgi.addresses import TCP, Unix
from django_runfcgi.checks import check_settings
from django_runfcgi.management.commands import runfcgi

ACCEPTED_FIELDS = (
    "{remote_addr}, {remote_port}, {remote_user}, {time_local}, {time_iso8601}, "
    "{time_msec}, {request}, {method}, {uri}, {query}, {protocol}, {scheme}, {host}, "
    "{content_length}, {status}, {bytes}, {referer}, {user_agent}, {duration}, "
    "{duration_ms}, {duration_us}, {pid}, {tid}"
)
"""What an accessformat= error lists."""


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[options.Config]:
    """The Config each runfcgi command would serve with; nothing is served."""
    configs: list[options.Config] = []
    monkeypatch.setattr(runfcgi, "serve", lambda config, announce: configs.append(config))
    return configs


def run(*words: str, **kwargs: Any) -> None:
    call_command("runfcgi", *words, verbosity=0, **kwargs)


def test_no_setting_means_the_table_defaults(served: list[options.Config]) -> None:
    run()
    [config] = served
    assert config == options.resolve({})


@override_settings(
    RUNFCGI={
        "protocol": "scgi",
        "socket": "/run/mysite/scgi.sock",
        "maxchildren": 20,
        "daemonize": False,
        "umask": "007",
        "shutdowntimeout": 5,
    }
)
def test_settings_give_the_defaults(served: list[options.Config]) -> None:
    run()
    [config] = served
    assert config.protocol == "scgi"
    assert config.bind == Unix(Path("/run/mysite/scgi.sock"))
    assert config.maxchildren == 20
    assert config.daemonize is False
    assert config.umask == 0o007
    assert config.shutdowntimeout == 5.0


@override_settings(RUNFCGI={"protocol": "scgi", "maxchildren": 20, "daemonize": False})
def test_the_command_line_wins_option_by_option(served: list[options.Config]) -> None:
    run("maxchildren=8", "--protocol", "fcgi")
    [config] = served
    assert (config.protocol, config.maxchildren, config.daemonize) == ("fcgi", 8, False)


@override_settings(RUNFCGI={"socket": "/run/mysite/fcgi.sock", "daemonize": False})
def test_an_address_on_the_command_line_replaces_the_settings_address(
    served: list[options.Config],
) -> None:
    run("host=127.0.0.1", "port=8025")
    [config] = served
    assert config.bind == TCP("127.0.0.1", 8025)


@override_settings(RUNFCGI={"host": "127.0.0.1", "port": 8025, "daemonize": False})
def test_a_socket_on_the_command_line_replaces_host_and_port(
    served: list[options.Config],
) -> None:
    run("socket=/tmp/app.sock")
    [config] = served
    assert config.bind == Unix(Path("/tmp/app.sock"))


@override_settings(RUNFCGI={"method": "threaded", "maxchildren": 4})
def test_runfastcgi_arguments_win_over_the_settings(served: list[options.Config]) -> None:
    """runfastcgi(maxchildren=9) reaches the command as python_values."""
    runfcgi.Command().execute(
        words=[],
        python_values={"maxchildren": 9},
        verbosity=0,
        skip_checks=True,
        no_color=True,
        force_color=False,
        traceback=False,
    )
    [config] = served
    assert (config.method, config.maxchildren) == ("threaded", 9)


def test_the_setting_is_read_when_the_command_runs(served: list[options.Config]) -> None:
    """Never at import: override_settings after the modules are loaded still counts."""
    for maxchildren in (3, 7):
        with override_settings(RUNFCGI={"maxchildren": maxchildren}):
            run()
    assert [config.maxchildren for config in served] == [3, 7]


def test_help_says_the_command_line_wins() -> None:
    text = options.help_text()
    assert "settings: RUNFCGI = {" in text
    assert "An option given on the command line (or to runfastcgi()) wins over the setting;" in (
        text
    )


# The checks: one id per kind of problem, and the exact words.


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            ["protocol", "scgi"],
            Error(
                "settings.RUNFCGI must be a dict of runfcgi options, not list.",
                hint='For example RUNFCGI = {"protocol": "scgi", '
                '"socket": "/run/mysite/scgi.sock"}.',
                id="django_runfcgi.E002",
            ),
        ),
        (
            {"maxchilren": 20},
            Error(
                "settings.RUNFCGI has an unknown key 'maxchilren'.",
                hint="Did you mean 'maxchildren'? 'manage.py runfcgi help' lists the options.",
                id="django_runfcgi.E003",
            ),
        ),
        (
            {"MaxChildren": 20},
            Error(
                "settings.RUNFCGI has an unknown key 'MaxChildren'.",
                hint="Did you mean 'maxchildren'? 'manage.py runfcgi help' lists the options.",
                id="django_runfcgi.E003",
            ),
        ),
        (
            {"frobnicate": 20},
            Error(
                "settings.RUNFCGI has an unknown key 'frobnicate'.",
                hint="'manage.py runfcgi help' lists the options.",
                id="django_runfcgi.E003",
            ),
        ),
        (
            {"port": "http"},
            Error(
                "settings.RUNFCGI: port='http' is not a whole number.",
                id="django_runfcgi.E004",
            ),
        ),
        (
            {"method": "gevent"},
            Error(
                "settings.RUNFCGI: method='gevent' is not supported; use prefork or threaded.",
                id="django_runfcgi.E004",
            ),
        ),
        (
            {"socket": "/run/mysite/fcgi.sock", "host": "127.0.0.1"},
            Error(
                "settings.RUNFCGI: Use either socket= or host=/port=, not both.",
                id="django_runfcgi.E005",
            ),
        ),
        (
            {"method": "threaded", "maxrequests": 500},
            Error(
                "settings.RUNFCGI: maxrequests= applies to method=prefork only; threads are "
                "not recycled.",
                id="django_runfcgi.E005",
            ),
        ),
        (
            {"accesslog": "/var/log/mysite/access.log", "accessformat": "{status} {nope}"},
            Error(
                "settings.RUNFCGI: accessformat='{status} {nope}' has an unknown field "
                f"{{nope}}; use {ACCEPTED_FIELDS}, or {{http_NAME}} for a request header "
                "such as {http_x_forwarded_for}.",
                id="django_runfcgi.E004",
            ),
        ),
    ],
)
def test_each_kind_of_problem_has_its_id_and_message(setting: object, expected: Error) -> None:
    with override_settings(RUNFCGI=setting):
        assert check_settings() == [expected]


@override_settings(RUNFCGI={"protocl": "scgi", "port": 0, "maxspare": "many"})
def test_every_unknown_key_and_bad_value_is_reported() -> None:
    assert [(error.id, error.msg) for error in check_settings()] == [
        ("django_runfcgi.E003", "settings.RUNFCGI has an unknown key 'protocl'."),
        ("django_runfcgi.E004", "settings.RUNFCGI: port=0 is out of range; use 1 to 65535."),
        ("django_runfcgi.E004", "settings.RUNFCGI: maxspare='many' is not a whole number."),
    ]


@pytest.mark.parametrize(
    "setting",
    [
        {},
        {"protocol": "ajp", "secret": "s3cret"},
        {"daemonize": True, "pidfile": "/run/mysite/mysite.pid"},
        {"socketmode": "660", "socketgroup": "www-data"},
        {"user": "no-such-user-here", "socketgroup": "no-such-group-here"},
        {"allow": ["198.18.0.2", "198.18.1.0/24"], "maxchildren": 20, "mkdir": True},
    ],
)
def test_settings_that_leave_the_address_to_the_command_line_pass(setting: object) -> None:
    """No address in the settings: the rules about it wait for the command line. Users
    and groups are looked up where the server starts, not where `check` runs."""
    with override_settings(RUNFCGI=setting):
        assert check_settings() == []


@override_settings(RUNFCGI={"socket": "/run/mysite/fcgi.sock", "protocol": "ajp"})
def test_settings_with_an_address_are_checked_with_it() -> None:
    [error] = check_settings()
    assert error.id == "django_runfcgi.E005"
    assert error.msg.startswith("settings.RUNFCGI: AJP needs host= and port=;")


@override_settings(RUNFCGI={"maxchilren": 20})
def test_manage_py_check_finds_them() -> None:
    with pytest.raises(SystemCheckError, match=r"django_runfcgi\.E003"):
        call_command("check")
    with pytest.raises(SystemCheckError, match=r"django_runfcgi\.E003"):
        call_command("check", "--tag", "runfcgi")


@override_settings(RUNFCGI={"maxchilren": 20})
def test_runfcgi_stops_on_them_before_it_starts(
    served: list[options.Config], tmp_path: Path
) -> None:
    with pytest.raises(SystemCheckError, match=r"django_runfcgi\.E003"):
        run(f"socket={tmp_path / 'app.sock'}", "daemonize=false", skip_checks=False)
    # With the system checks skipped, the same words, in one line.
    with pytest.raises(CommandError) as caught:
        run(f"socket={tmp_path / 'app.sock'}", "daemonize=false")
    assert str(caught.value) == (
        "settings.RUNFCGI has an unknown key 'maxchilren'. Did you mean 'maxchildren'? "
        "'manage.py runfcgi help' lists the options."
    )
    assert served == []
    assert not (tmp_path / "app.sock").exists()


@override_settings(RUNFCGI={"socket": "/run/mysite/fcgi.sock", "daemonize": False})
def test_a_bad_combination_across_settings_and_command_line_is_one_line(
    served: list[options.Config],
) -> None:
    with pytest.raises(CommandError, match=r"^AJP needs host= and port=; it cannot listen"):
        run("protocol=ajp")
    assert served == []


def test_runfcgi_options_is_the_setting_as_written() -> None:
    with override_settings(RUNFCGI={"maxchildren": 20, "debug": True}):
        assert conf.runfcgi_options() == {"maxchildren": 20, "debug": True}
    assert conf.runfcgi_options() == {}
