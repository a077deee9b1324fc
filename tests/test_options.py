"""The option table: historic words, --options, validation and the rules between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from django_runfcgi import options
from django_runfcgi import server as runfcgi_server
from django_runfcgi.addresses import TCP, Inherited, Unix
from django_runfcgi.options import OptionError, parse_words, resolve
from django_runfcgi.protocols import Bounds


def config_from(*words: str, cwd: Path = Path("/srv/start")) -> options.Config:
    values, _ = parse_words(words)
    return resolve(values, cwd=cwd)


def test_defaults_match_django_1_8() -> None:
    config = config_from()
    assert config.protocol == "fcgi"
    assert config.method == "prefork"
    assert config.bind == Inherited()
    assert config.daemonize is False
    assert (config.maxrequests, config.maxspare, config.minspare, config.maxchildren) == (
        0,
        5,
        2,
        50,
    )
    assert config.umask == 0o022
    assert config.debug is False


@pytest.mark.parametrize(
    ("words", "daemonize"),
    [
        (("host=127.0.0.1", "port=8000"), True),
        (("socket=/tmp/x.sock",), True),
        (("socket=/tmp/x.sock", "daemonize=false"), False),
        (("socket=/tmp/x.sock", "daemonize"), True),
        ((), False),
    ],
)
def test_daemonize_defaults_to_on_when_bound(words: tuple[str, ...], daemonize: bool) -> None:
    assert config_from(*words).daemonize is daemonize


@pytest.mark.parametrize("word", ["true", "TRUE", "yes", "1", "t", "on"])
def test_true_words(word: str) -> None:
    assert config_from(f"debug={word}").debug is True


@pytest.mark.parametrize("word", ["false", "False", "no", "0", "f", "off"])
def test_debug_false_means_false(word: str) -> None:
    # Django 1.8 turned debug on for any value at all, including debug=false.
    assert config_from(f"debug={word}").debug is False


def test_bare_key_means_true() -> None:
    assert config_from("debug").debug is True


@pytest.mark.parametrize(("word", "method"), [("fork", "prefork"), ("thread", "threaded")])
def test_old_method_names(word: str, method: str) -> None:
    assert config_from(f"method={word}").method == method


def test_keys_are_case_insensitive() -> None:
    assert config_from("PROTOCOL=scgi", "Host=::1", "PORT=9000").bind == TCP("::1", 9000)


def test_ipv6_host_in_brackets() -> None:
    assert config_from("host=[::1]", "port=9000").bind == TCP("::1", 9000)


def test_relative_paths_follow_the_starting_directory_not_workdir() -> None:
    config = config_from(
        "socket=run/app.sock",
        "pidfile=app.pid",
        "outlog=logs/out.log",
        "errlog=logs/err.log",
        "workdir=/var/empty",
    )
    assert config.bind == Unix(Path("/srv/start/run/app.sock"))
    assert config.pidfile == Path("/srv/start/app.pid")
    assert config.outlog == Path("/srv/start/logs/out.log")
    assert config.errlog == Path("/srv/start/logs/err.log")
    assert config.workdir == Path("/var/empty")


def test_workdir_defaults_to_root_only_when_daemonized() -> None:
    assert config_from("socket=/x.sock").workdir == Path("/")
    assert config_from("socket=/x.sock", "daemonize=false").workdir is None


def test_umask_is_octal() -> None:
    assert config_from("umask=007").umask == 0o007
    assert config_from("umask=0o027").umask == 0o027


def test_maxchildren_alone_caps_the_spares() -> None:
    config = config_from("maxchildren=3")
    assert (config.maxchildren, config.maxspare, config.minspare) == (3, 3, 2)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("deamonize=true",), "Unknown option 'deamonize'. Did you mean 'daemonize'?"),
        (("protocl=scgi",), "Unknown option 'protocl'. Did you mean 'protocol'?"),
        (("frobnicate=1",), "Unknown option 'frobnicate'. See 'manage.py runfcgi help'."),
        (("protocol=http",), "protocol='http' is not supported; use fcgi or scgi or ajp."),
        (("method=gevent",), "method='gevent' is not supported; use prefork or threaded."),
        (("host=h", "port=0"), "port='0' is out of range; use 1 to 65535."),
        (("host=h", "port=65536"), "port='65536' is out of range; use 1 to 65535."),
        (("host=h", "port=http"), "port='http' is not a whole number."),
        (("umask=999",), "umask='999' is not an octal umask"),
        (("umask=7777",), "umask='7777' is out of range; use 000 to 777 (octal)."),
        (("socket=/x.sock", "host=127.0.0.1"), "Use either socket= or host=/port=, not both."),
        (("host=127.0.0.1",), "host='127.0.0.1' needs port= too."),
        (("port=8000",), "port=8000 needs host= too"),
        (("protocol=ajp", "socket=/x.sock"), "AJP needs host= and port=; it cannot listen on"),
        (("protocol=ajp",), "AJP needs host= and port=;"),
        (("minspare=6",), "minspare=6 is above maxspare=5; minspare must be at most maxspare."),
        (("maxspare=9", "maxchildren=4"), "maxchildren=4 is below maxspare=9"),
        (("maxspare=0",), "maxspare='0' is out of range; use 1 or more."),
        (("daemonize=maybe",), "daemonize='maybe' is not a boolean; use true or false"),
        (("daemonize=true",), "daemonize=true needs host=/port= or socket="),
        (("method=threaded", "maxrequests=10"), "maxrequests= applies to method=prefork only"),
        (
            ("method=threaded", "requesttimeout=30"),
            "requesttimeout= applies to method=prefork only; a thread cannot be stopped",
        ),
        (
            ("shutdowntimeout=-1",),
            "shutdowntimeout='-1' is not a number of seconds; use 0 or more, such as 30.",
        ),
        (("shutdowntimeout=soon",), "shutdowntimeout='soon' is not a number of seconds"),
        (("requesttimeout=nan",), "requesttimeout='nan' is not a number of seconds"),
        (("requesttimeout=inf",), "requesttimeout='inf' is not a number of seconds"),
        (("port=1", "port=2"), "port= is given twice."),
        (("socket=",), "socket= is empty; give a path."),
        (("handover=soon",), "handover='soon' is not a number of seconds; use 0 or more"),
        (("handover=-1",), "handover='-1' is not a number of seconds; use 0 or more"),
        (
            ("socket=/x.sock", "socketmode=rw"),
            "socketmode='rw' is not an octal file mode; use three octal digits such as 660.",
        ),
        (("socket=/x.sock", "socketmode=1660"), "socketmode='1660' is not an octal file mode"),
        (("socket=/x.sock", "socketmode"), "socketmode=True is not an octal file mode"),
        (("socket=/x.sock", "socketgroup="), "socketgroup= needs a value: a name or a numeric"),
        (("socket=/x.sock", "user"), "user= needs a value: a name or a numeric id."),
        (
            ("socket=/x.sock", "socketgroup=no-such-group"),
            "socketgroup='no-such-group': no such group on this system; give a group name "
            "from /etc/group or a numeric gid.",
        ),
        (
            ("socket=/x.sock", "socketowner=no-such-user"),
            "socketowner='no-such-user': no such user on this system",
        ),
        (("user=no-such-user",), "user='no-such-user': no such user on this system"),
        (("user=0", "group=no-such-group"), "group='no-such-group': no such group"),
        (("group=0",), "group='0' needs user= too"),
        (
            ("host=h", "port=1", "socketmode=660"),
            "socketmode= applies to a unix socket that runfcgi creates (socket=)",
        ),
        (("socketgroup=0",), "socketgroup= applies to a unix socket that runfcgi creates"),
        (("mkdir=perhaps",), "mkdir='perhaps' is not a boolean"),
        (("readtimeout=-1",), "readtimeout='-1' is not a number of seconds; use 0 or more"),
        (("readtimeout=soon",), "readtimeout='soon' is not a number of seconds"),
        (("maxheadsize=100",), "maxheadsize='100' is out of range; use 1024 or more."),
        (("maxheadsize=1M",), "maxheadsize='1M' is not a whole number."),
        (("maxheaders=0",), "maxheaders='0' is out of range; use 1 or more."),
    ],
)
def test_errors_name_the_option_and_what_is_accepted(words: tuple[str, ...], message: str) -> None:
    with pytest.raises(OptionError) as caught:
        config_from(*words)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_help_word() -> None:
    assert parse_words(["help"]) == ({}, True)


def test_python_typed_values() -> None:
    config = resolve(
        options.merge({"daemonize": False, "port": 8000, "host": "::1", "umask": 0o007}),
        cwd=Path("/"),
    )
    assert config.daemonize is False
    assert config.bind == TCP("::1", 8000)
    assert config.umask == 0o007


def test_help_lists_every_option_with_its_default() -> None:
    text = options.help_text()
    for option in options.OPTIONS:
        assert f"  {option.name}={option.metavar}" in text
        assert f"(default: {option.describe_default()})" in text


@pytest.mark.parametrize(
    ("word", "prefix"),
    [("/app", "/app"), ("/app/", "/app"), ("/", ""), ("/a/b", "/a/b"), ("/café", "/café")],
)
def test_scriptname_is_a_path_prefix(word: str, prefix: str) -> None:
    assert config_from(f"scriptname={word}").scriptname == prefix


def test_handover_takes_seconds_with_fractions() -> None:
    assert config_from().handover == 10.0
    assert config_from("handover=2.5").handover == 2.5
    assert config_from("handover=0").handover == 0.0


def test_scriptname_unset_trusts_the_front_end() -> None:
    assert config_from().scriptname is None


@pytest.mark.parametrize("word", ["app", "", "/app?x=1", "/caf%C3%A9"])
def test_scriptname_must_be_a_decoded_absolute_path(word: str) -> None:
    with pytest.raises(OptionError, match="is not a URL path prefix; use / or a path"):
        config_from(f"scriptname={word}")


def test_timeouts_default_to_30_s_to_stop_and_no_request_limit() -> None:
    config = config_from()
    assert (config.shutdowntimeout, config.requesttimeout) == (30.0, 0.0)


@pytest.mark.parametrize(
    ("word", "seconds"), [("0", 0.0), ("5", 5.0), ("2.5", 2.5), (" 10 ", 10.0)]
)
def test_timeouts_take_seconds(word: str, seconds: float) -> None:
    config = config_from(f"shutdowntimeout={word}", f"requesttimeout={word}")
    assert (config.shutdowntimeout, config.requesttimeout) == (seconds, seconds)


def test_timeouts_from_python_values() -> None:
    config = resolve(options.merge({"shutdowntimeout": 0, "requesttimeout": 2.5}), cwd=Path("/"))
    assert (config.shutdowntimeout, config.requesttimeout) == (0.0, 2.5)


def test_threaded_takes_a_shutdown_timeout_and_requesttimeout_0() -> None:
    config = config_from("method=threaded", "shutdowntimeout=5", "requesttimeout=0")
    assert (config.shutdowntimeout, config.requesttimeout) == (5.0, 0.0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--daemonize"], ["daemonize"]),
        (["--no-daemonize"], ["daemonize=false"]),
        (["--daemonize=no"], ["daemonize=no"]),
        (["--daemonize", "Off", "--debug"], ["daemonize=Off", "debug"]),
        (["--debug", "--socket", "/s"], ["debug", "socket=/s"]),
        (["--port", "-1"], ["port=-1"]),
        (
            ["socket=/s", "--settings", "x", "--method=threaded"],
            ["socket=/s", "--settings", "x", "method=threaded"],
        ),
        (["--Socket=/s"], ["socket=/s"]),
        (["--sockett", "/s"], ["sockett", "/s"]),
        (["--", "--debug"], ["--", "--debug"]),
    ],
)
def test_dashed_forms_become_words(args: list[str], words: list[str]) -> None:
    assert options.dashed_to_words(args, {"--settings"}) == words


def test_dashed_and_word_forms_read_the_same() -> None:
    dashed = options.dashed_to_words(["--daemonize", "false", "--maxspare", "9"], set())
    assert options.parse_words(dashed) == options.parse_words(["daemonize=false", "maxspare=9"])


@pytest.mark.parametrize(("word", "mode"), [("660", 0o660), ("0660", 0o660), ("0o600", 0o600)])
def test_socketmode_is_octal(word: str, mode: int) -> None:
    assert config_from("socket=/x.sock", f"socketmode={word}").socketmode == mode


def test_socket_permissions_default_to_the_umask_and_the_running_user() -> None:
    config = config_from("socket=/x.sock")
    assert (config.socketmode, config.socketowner, config.socketgroup) == (None, None, None)
    assert (config.mkdir, config.user) == (False, None)


def test_socket_owner_and_group_by_name_or_id() -> None:
    config = config_from("socket=/x.sock", "socketowner=root", "socketgroup=0", "mkdir")
    assert (config.socketowner, config.socketgroup, config.mkdir) == (0, 0, True)
    assert config_from("socket=/x.sock", "socketowner=4321").socketowner == 4321


def test_request_bounds_default_to_what_the_protocols_assume() -> None:
    """The table's defaults are the ones a gateway built without options gets."""
    config = config_from()
    assert runfcgi_server.bounds(config) == Bounds()
    assert (config.readtimeout, config.maxheadsize, config.maxheaders) == (30.0, 1 << 20, 1000)


def test_request_bounds_reach_the_protocol() -> None:
    config = config_from("readtimeout=2.5", "maxheadsize=4096", "maxheaders=40")
    gateway = runfcgi_server.make_protocol(config, lambda environ, start_response: [])
    assert gateway.bounds == Bounds(readtimeout=2.5, maxheadsize=4096, maxheaders=40)
