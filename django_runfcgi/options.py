"""The one table of runfcgi options, and everything derived from it.

Django 1.8's ``runfcgi`` took ``key=value`` words; scripts and ``.fcgi`` files written
for it still exist. The same table feeds the historic words, the ``--option`` form,
``runfcgi help``, the settings check and the docs' option reference, so they cannot
drift apart.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from django_runfcgi import privileges
from django_runfcgi.accessformat import DEFAULT_FORMAT as DEFAULT_ACCESS_FORMAT
from django_runfcgi.accessformat import STDOUT, FormatError, compile_format
from django_runfcgi.accessformat import Target as AccessTarget
from django_runfcgi.addresses import TCP, Bind, Inherited, Unix

if TYPE_CHECKING:
    from django_runfcgi.protocols.clients import AllowEntry

Protocol = Literal["fcgi", "scgi", "ajp"]
Method = Literal["prefork", "threaded"]

PROTOCOLS: tuple[Protocol, ...] = ("fcgi", "scgi", "ajp")
METHODS: tuple[Method, ...] = ("prefork", "threaded")
DEFAULT_LOG = "runfcgi.log"
"""A daemon's log when errlog= is not given, in the directory it was started in."""

METHOD_ALIASES = {"fork": "prefork", "thread": "threaded"}
TRUE_WORDS = frozenset({"true", "yes", "t", "y", "1", "on"})
FALSE_WORDS = frozenset({"false", "no", "f", "n", "0", "off"})


class OptionError(ValueError):
    """A bad option value or combination, worded for the person who typed it."""


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise OptionError(f"{name}={value!r} is not a boolean; use true or false (also yes/no, 1/0).")


def _parse_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise OptionError(f"{name}={value!r} is not a whole number.")
    try:
        number = int(str(value).strip(), 10) if not isinstance(value, int) else value
    except ValueError:
        raise OptionError(f"{name}={value!r} is not a whole number.") from None
    if number < minimum or (maximum is not None and number > maximum):
        accepted = f"{minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        raise OptionError(f"{name}={value!r} is out of range; use {accepted}.")
    return number


def _count(minimum: int) -> Callable[[str, object], int]:
    def parse(name: str, value: object) -> int:
        return _parse_int(name, value, minimum)

    return parse


def parse_seconds(name: str, value: object) -> float:
    """A duration such as ``30`` or ``2.5``; 0 is allowed, its meaning is the option's."""
    if isinstance(value, bool):
        number = math.nan
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            number = math.nan
    if not math.isfinite(number) or number < 0:
        raise OptionError(
            f"{name}={value!r} is not a number of seconds; use 0 or more, such as 30."
        )
    return number


def parse_port(name: str, value: object) -> int:
    return _parse_int(name, value, 1, 65535)


def _octal(value: object) -> int | None:
    """Octal digits as the shell writes them (``022``, ``0660``, ``0o660``); an int is
    taken as the number itself. None when the text is not octal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip().lower().removeprefix("0o"), 8)
    except ValueError:
        return None


def parse_umask(name: str, value: object) -> int:
    """Octal as in the shell (``022``); a Python int is taken as the mode itself."""
    number = _octal(value)
    if number is None:
        raise OptionError(
            f"{name}={value!r} is not an octal umask; use three octal digits such as 022."
        )
    if not 0 <= number <= 0o777:
        raise OptionError(f"{name}={value!r} is out of range; use 000 to 777 (octal).")
    return number


def parse_mode(name: str, value: object) -> int:
    """A file mode in octal as ``chmod`` takes it (``660``, ``0660``); an int is the mode."""
    number = _octal(value)
    if number is None or not 0 <= number <= 0o777:
        raise OptionError(
            f"{name}={value!r} is not an octal file mode; use three octal digits such as 660."
        )
    return number


def parse_account(name: str, value: object) -> str:
    """A user or group name, or a numeric id; looked up in resolve()."""
    text = str(value).strip()
    if not text or isinstance(value, bool):
        raise OptionError(f"{name}= needs a value: a name or a numeric id.")
    return text


def _choice(values: Iterable[str], aliases: Mapping[str, str] | None = None) -> Any:
    allowed = tuple(values)
    aliases = aliases or {}

    def parse(name: str, value: object) -> str:
        word = str(value).strip().lower()
        word = aliases.get(word, word)
        if word not in allowed:
            raise OptionError(f"{name}={value!r} is not supported; use {' or '.join(allowed)}.")
        return word

    return parse


def parse_host(name: str, value: object) -> str:
    host = str(value).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise OptionError(f"{name}= is empty; give a host name or an IP address.")
    return host


def parse_scriptname(name: str, value: object) -> str:
    """A URL path prefix such as ``/app``; ``/`` (the root) is kept as the empty prefix."""
    prefix = str(value).strip()
    if not prefix.startswith("/") or any(char in prefix for char in "?#%"):
        raise OptionError(
            f"{name}={value!r} is not a URL path prefix; use / or a path such as /app "
            "(decoded, no query)."
        )
    return prefix.rstrip("/")


def parse_url_path(name: str, value: object) -> str:
    """A URL path such as ``/status``, compared with each request's whole path."""
    path = "" if isinstance(value, bool) else str(value).strip()
    if not path.startswith("/") or any(char in path for char in "?#% "):
        raise OptionError(
            f"{name}={value!r} is not a URL path; use a path such as /{name} (decoded, no query)."
        )
    return path


def parse_secret(name: str, value: object) -> str:
    """A shared secret as Apache's ``secret=`` takes it: printable ASCII, no spaces."""
    text = str(value)
    if isinstance(value, bool) or not text:
        raise OptionError(
            f"{name}= needs a value, such as a random string from 'openssl rand -hex 32'."
        )
    if not all("!" <= char <= "~" for char in text):
        raise OptionError(
            f"{name}= takes printable ASCII characters without spaces (letters, digits, "
            "punctuation), such as a random string from 'openssl rand -hex 32'."
        )
    return text


def parse_allow(name: str, value: object) -> tuple[AllowEntry, ...]:
    """Addresses and networks, comma-separated (from Python, a list of them too); the
    filter that uses them is the protocols' (imported only when the option is given: it
    brings in flup)."""
    from django_runfcgi.protocols import clients  # noqa: PLC0415

    if isinstance(value, (list, tuple)):
        text = ",".join(str(item) for item in value)
    else:
        text = "" if isinstance(value, bool) else str(value)
    try:
        return clients.parse_allow(text)
    except clients.AllowError as err:
        raise OptionError(f"{name}={value!r}: {err}.") from None


def parse_text(name: str, value: object) -> str:
    text = str(value)
    if not text:
        raise OptionError(f"{name}= is empty; give a path.")
    return text


def parse_accesslog(name: str, value: object) -> str:
    """A file, or - for the standard output; made absolute in resolve()."""
    text = "" if isinstance(value, bool) else str(value).strip()
    if not text:
        raise OptionError(f"{name}= needs a value: a file, or - for the standard output.")
    return text


def parse_accessformat(name: str, value: object) -> str:
    """A line format with {field}s; checked here, compiled when the server starts."""
    text = "" if isinstance(value, bool) else str(value)
    if not text.strip():
        raise OptionError(f"{name}= is empty; give fields such as {{remote_addr}} {{status}}.")
    try:
        compile_format(text)
    except FormatError as err:
        raise OptionError(str(err)) from None
    return text


@dataclass(frozen=True)
class Option:
    """One runfcgi option: its historic name, how to parse it and what to say about it."""

    name: str
    parse: Callable[[str, object], Any]
    default: Any
    help: str
    metavar: str
    default_text: str | None = None
    flag: bool = False

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "unset"
        return str(self.default)


OPTIONS: tuple[Option, ...] = (
    Option(
        "protocol",
        _choice(PROTOCOLS),
        "fcgi",
        "Protocol spoken to the web server: fcgi (FastCGI), scgi or ajp (AJP 1.3).",
        "PROTOCOL",
    ),
    Option("host", parse_host, None, "Host name or IP address to listen on (IPv6 works).", "HOST"),
    Option("port", parse_port, None, "TCP port to listen on, with host.", "PORT"),
    Option(
        "socket",
        parse_text,
        None,
        "Unix socket path to listen on, instead of host and port. "
        "Not for ajp. With no host, port or socket, the listening socket is inherited "
        "on file descriptor 0 from the web server that started the process.",
        "FILE",
    ),
    Option(
        "allow",
        parse_allow,
        None,
        "Comma-separated IP addresses and networks (CIDR) of the web servers that may "
        "connect over TCP, such as 198.18.0.2,198.18.1.0/24,2001:db8::/32; any other "
        "client is refused and logged. Takes the place of FCGI_WEB_SERVER_ADDRS. "
        "Unix-socket clients are not affected.",
        "ADDRESSES",
        default_text="scgi and ajp: loopback clients only; fcgi: the addresses in "
        "FCGI_WEB_SERVER_ADDRS when it is set, else every client",
    ),
    Option(
        "method",
        _choice(METHODS, METHOD_ALIASES),
        "prefork",
        "prefork (worker processes) or threaded (one process, worker threads). "
        "The old names fork and thread are accepted.",
        "METHOD",
    ),
    Option(
        "maxrequests",
        _count(0),
        0,
        "Requests a prefork worker serves before it is replaced by a fresh one (0 = no limit).",
        "NUMBER",
    ),
    Option(
        "maxrequestsjitter",
        _count(0),
        0,
        "With maxrequests: each prefork worker's limit is maxrequests plus a random number "
        "from 0 to this, so that workers started together are not all replaced together.",
        "NUMBER",
    ),
    Option(
        "maxmemory",
        _count(0),
        0,
        "Megabytes of resident memory a prefork worker may use: one that has more after "
        "a request finishes that request, closes its connection and is replaced by a "
        "fresh one (0 = no limit).",
        "MB",
    ),
    Option("maxspare", _count(1), 5, "Most idle workers (processes or threads) kept.", "NUMBER"),
    Option("minspare", _count(1), 2, "Fewest idle workers kept ready.", "NUMBER"),
    Option(
        "maxchildren",
        _count(1),
        50,
        "Hard limit on worker processes (prefork) or threads (threaded).",
        "NUMBER",
    ),
    Option(
        "shutdowntimeout",
        parse_seconds,
        30.0,
        "Seconds that TERM (stop) and HUP (reload) give requests in progress to finish "
        "before the workers still serving them are killed (0 = kill them at once).",
        "SECONDS",
        default_text="30",
    ),
    Option(
        "requesttimeout",
        parse_seconds,
        0.0,
        "Seconds a prefork worker may spend on one request; past that, the master kills "
        "it and starts another (0 = no limit).",
        "SECONDS",
        default_text="0",
    ),
    Option(
        "readtimeout",
        parse_seconds,
        30.0,
        "Seconds a new connection has to send its whole request head, and that a request "
        "may go without sending more of its head or body; past that, the connection is "
        "closed and its worker freed (0 = no limit). A kept connection may stay idle "
        "between requests until the web server closes it.",
        "SECONDS",
        default_text="30",
    ),
    Option(
        "maxheadsize",
        _count(1024),
        1048576,
        "Largest request head in bytes: the FastCGI parameters or the SCGI header block of "
        "one request. A larger one closes its connection.",
        "BYTES",
        default_text="1048576 (1 MiB)",
    ),
    Option(
        "maxheaders",
        _count(1),
        1000,
        "Most FastCGI parameters or SCGI headers one request may have; more close its connection.",
        "NUMBER",
    ),
    Option(
        "daemonize",
        parse_bool,
        None,
        "Detach from the terminal and run in the background.",
        "BOOL",
        default_text="true when host/port or socket is given, else false",
        flag=True,
    ),
    Option(
        "pidfile",
        parse_text,
        None,
        "Write the server's process id to this file; removed when the server stops.",
        "FILE",
    ),
    Option(
        "workdir",
        parse_text,
        None,
        "Directory to change to before serving.",
        "DIRECTORY",
        default_text="/ when daemonized, else unchanged",
    ),
    Option(
        "debug",
        parse_bool,
        False,
        "Answer errors that escape Django with a plain-text traceback instead of a generic page.",
        "BOOL",
        flag=True,
    ),
    Option(
        "outlog",
        parse_text,
        None,
        "Append standard output to this file.",
        "FILE",
        default_text="the terminal; when daemonized, errlog's file",
    ),
    Option(
        "errlog",
        parse_text,
        None,
        "Append standard error, and runfcgi's own time-stamped messages, to this file.",
        "FILE",
        default_text=f"the terminal; when daemonized, {DEFAULT_LOG} in the starting directory",
    ),
    Option(
        "umask",
        parse_umask,
        0o022,
        "Umask, in octal, for the unix socket and, when daemonized, the process.",
        "UMASK",
        default_text="022",
    ),
    Option(
        "socketmode",
        parse_mode,
        None,
        "Permissions of the unix socket, in octal, such as 660 (owner and group may "
        "connect). Set when the socket is created, before anyone can connect.",
        "MODE",
        default_text="from umask: 755 with umask 022",
    ),
    Option(
        "socketowner",
        parse_account,
        None,
        "User (name or uid) that owns the unix socket; changing it needs root.",
        "USER",
        default_text="the user that starts runfcgi",
    ),
    Option(
        "socketgroup",
        parse_account,
        None,
        "Group (name or gid) of the unix socket, such as the web server's www-data, so "
        "that with socketmode=660 the web server may connect.",
        "GROUP",
        default_text="the group of the user that starts runfcgi",
    ),
    Option(
        "mkdir",
        parse_bool,
        False,
        "Create the directory of socket= and of pidfile= if it is missing (such as "
        "/run/mysite after a reboot), mode 755, owned by user= when given.",
        "BOOL",
        flag=True,
    ),
    Option(
        "user",
        parse_account,
        None,
        "When started as root: the user (name or uid) to become once the socket is bound "
        "and the pidfile written, before the project is loaded.",
        "USER",
        default_text="unset: keep running as the user that started runfcgi",
    ),
    Option(
        "group",
        parse_account,
        None,
        "With user=: the group (name or gid) to become instead of the user's own; "
        "the user's supplementary groups are kept.",
        "GROUP",
        default_text="the user's primary group",
    ),
    Option(
        "scriptname",
        parse_scriptname,
        None,
        "URL prefix the site is mounted at, such as /app, or / for the root. Set it when "
        "the web server cannot send a correct SCRIPT_NAME/PATH_INFO split (Apache "
        "mod_proxy_scgi, AJP, a rewritten .fcgi script): runfcgi then takes SCRIPT_NAME "
        "from this option and PATH_INFO from the request's URI.",
        "PATH",
        default_text="unset: use what the web server sends",
    ),
    Option(
        "secret",
        parse_secret,
        None,
        "AJP only: the secret the web server must send with every request (Apache's "
        "ProxyPass or BalancerMember secret=); a request without it, or with another, is "
        "answered 403 Forbidden. Like every option it shows in the process list.",
        "SECRET",
        default_text="unset: requests are served with or without a secret",
    ),
    Option(
        "status",
        parse_url_path,
        None,
        "URL path of the status page, such as /status: a request for it is answered by "
        "runfcgi with the pool's figures (PHP-FPM's fields; ?json, ?openmetrics, ?html, "
        "?full), never by Django. Expose it to localhost only (see the docs).",
        "PATH",
        default_text="unset: no status page",
    ),
    Option(
        "ping",
        parse_url_path,
        None,
        "URL path that runfcgi answers with 'pong' (text/plain, 200) without Django, for "
        "the web server's or a monitor's health checks, such as /ping.",
        "PATH",
        default_text="unset: no ping",
    ),
    Option(
        "accesslog",
        parse_accesslog,
        None,
        "Write a line per request to this file, or - for standard output (a daemon's "
        "goes to outlog=): the combined log format, then the request's microseconds and "
        "the worker's pid. Each worker writes its own lines once the response is sent; "
        "USR1 (runfcgi reopen) reopens the file.",
        "FILE",
        default_text="unset: no access log",
    ),
    Option(
        "accessformat",
        parse_accessformat,
        DEFAULT_ACCESS_FORMAT,
        "With accesslog=: the line's fields, named in braces, such as "
        "'{remote_addr} {method} {uri} {status} {bytes} {duration_us}' "
        "(the docs list them all; {http_NAME} is a request header).",
        "FORMAT",
    ),
    Option(
        "slowlog",
        parse_seconds,
        0.0,
        "Seconds after which a request still running has the Python stack of the thread "
        "serving it written to the slow log, once, while it goes on running (0 = off). "
        "Unlike requesttimeout, nothing is interrupted. Counted in the status page's slow "
        "requests.",
        "SECONDS",
        default_text="0",
    ),
    Option(
        "slowlogfile",
        parse_text,
        None,
        "With slowlog: append the slow log to this file instead.",
        "FILE",
        default_text="where the server's own messages go: errlog's file, or the terminal",
    ),
    Option(
        "handover",
        parse_seconds,
        10.0,
        "When TERM stops the server, it offers its socket, with the connections waiting "
        "on it, to a runfcgi started on the same address; while a restart is under way "
        "(its pidfile was removed, as the restart script does) it waits up to this long "
        "for the new server. 0 closes the socket at once.",
        "SECONDS",
    ),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def _unknown(name: str) -> OptionError:
    close = difflib.get_close_matches(name, [*BY_NAME, "help"], n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return OptionError(f"Unknown option {name!r}.{hint} See 'manage.py runfcgi help'.")


def parse_words(words: Iterable[str]) -> tuple[dict[str, object], bool]:
    """Read historic ``key=value`` words; a bare key means true, as in Django 1.8.

    Returns the raw values by option name, and whether ``help`` was asked for.
    """
    values: dict[str, object] = {}
    wants_help = False
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower().lstrip("-")
        if key == "help":
            wants_help = True
            continue
        if key not in BY_NAME:
            if not sep and key in TRUE_WORDS | FALSE_WORDS:
                raise OptionError(
                    f"{word!r} stands alone; write the option and its value as one word,"
                    f" e.g. daemonize={key} or --daemonize={key}."
                )
            raise _unknown(key)
        if key in values:
            raise OptionError(f"{key}= is given twice.")
        values[key] = value if sep else True
    return values, wants_help


def _is_value(word: str) -> bool:
    return not word.startswith("-") and "=" not in word and word.lower() not in {"help", *BY_NAME}


def dashed_to_words(args: Sequence[str], own: Collection[str]) -> list[str]:
    """Turn runfcgi's ``--name`` forms into the ``key=value`` words of Django 1.8.

    Both forms then go through :func:`parse_words`, so they accept the same values and
    may be mixed in any order. A boolean takes ``--name``, ``--no-name``, ``--name=VALUE``
    and ``--name VALUE`` (VALUE one of the boolean words); any other option takes
    ``--name=VALUE`` or ``--name VALUE``. ``own`` holds the option strings that belong
    to the command itself (``--settings``, ``-v``...): those are left for argparse. An
    unknown ``--name`` becomes a word too, so that its error suggests the closest name.
    """
    words: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        following = args[index + 1] if index + 1 < len(args) else None
        index += 1
        if arg == "--":
            words.extend(args[index - 1 :])
            break
        head, sep, value = arg.partition("=")
        key = head[2:].lower()
        option = BY_NAME.get(key)
        negated = option is None and key.startswith("no-") and key[3:] in BY_NAME
        if not arg.startswith("--") or (option is None and not negated and head in own):
            words.append(arg)
            continue
        if negated:
            name = key[3:]
            if not BY_NAME[name].flag:
                raise OptionError(f"{head} is not an option: {name}= is not true or false.")
            if sep:
                raise OptionError(f"{head} takes no value; write --{name}={value} instead.")
            words.append(f"{name}=false")
        elif option is None or sep:
            words.append(f"{key}{sep}{value}")
        elif option.flag:
            # A following word that is neither an option nor key=value is this flag's
            # value, so that "--daemonize maybe" says what a boolean accepts.
            if following is not None and _is_value(following):
                words.append(f"{key}={following}")
                index += 1
            else:
                words.append(key)
        elif following is None:
            raise OptionError(
                f"{head} needs a value; write {head}={option.metavar} or {key}={option.metavar}."
            )
        else:
            words.append(f"{key}={following}")
            index += 1
    return words


def merge(*sources: Mapping[str, object]) -> dict[str, object]:
    """Join option values from several forms; a name given in two of them is an error."""
    merged: dict[str, object] = {}
    for source in sources:
        for key, value in source.items():
            name = key.lower()
            if name not in BY_NAME:
                raise _unknown(name)
            if name in merged:
                raise OptionError(f"{name}= is given twice.")
            merged[name] = value
    return merged


Source = Literal["default", "settings", "command line"]

ADDRESS_OPTIONS = ("host", "port", "socket")
"""Where to listen: one choice, which the command line makes for the settings as a whole."""


def layer(
    settings: Mapping[str, object], command_line: Mapping[str, object]
) -> tuple[dict[str, object], dict[str, Source]]:
    """The options from ``settings.RUNFCGI`` with the command line's on top, and where
    each option's value comes from.

    The command line (or ``runfastcgi()``'s arguments) wins, option by option; host=,
    port= and socket= count as one: any of them given there replaces all three from
    the settings, so ``host= port=`` on the command line moves a server whose settings
    say ``socket=``.
    """
    moved = any(name in command_line for name in ADDRESS_OPTIONS)
    kept = {
        name: value for name, value in settings.items() if not (moved and name in ADDRESS_OPTIONS)
    }
    sources: dict[str, Source] = {}
    for name in BY_NAME:
        if name in command_line:
            sources[name] = "command line"
        elif name in kept:
            sources[name] = "settings"
        else:
            sources[name] = "default"
    return {**kept, **command_line}, sources


@dataclass(frozen=True)
class Config:
    """Options after parsing and cross-checking: what the server will actually do.

    Every field is named after its option. Those set below from several options, or
    made absolute, are computed in resolve(); the others are the option's parsed value,
    with its default from the option table, copied by name.
    """

    protocol: Protocol
    method: Method
    bind: Bind
    daemonize: bool
    pidfile: Path | None
    workdir: Path | None
    outlog: Path | None
    errlog: Path | None
    umask: int
    maxrequests: int
    maxrequestsjitter: int
    maxmemory: int
    maxspare: int
    minspare: int
    maxchildren: int
    debug: bool
    scriptname: str | None
    shutdowntimeout: float
    requesttimeout: float
    readtimeout: float
    maxheadsize: int
    maxheaders: int
    handover: float
    socketmode: int | None
    socketowner: int | None
    socketgroup: int | None
    mkdir: bool
    user: privileges.Account | None
    secret: str | None
    allow: tuple[AllowEntry, ...] | None
    status: str | None
    ping: str | None
    accesslog: AccessTarget | None
    accessformat: str
    slowlog: float
    slowlogfile: Path | None


def _absolute(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _parsed(raw: Mapping[str, object]) -> dict[str, Any]:
    return {name: BY_NAME[name].parse(name, value) for name, value in raw.items()}


def resolve(raw: Mapping[str, object], cwd: Path | None = None) -> Config:
    """Parse every value and apply the rules that span options.

    Relative paths are taken from ``cwd`` (the directory runfcgi was started in), not
    from ``workdir``: a daemon changes directory, the person typing the command did not.
    """
    base = cwd or Path.cwd()
    given = _parsed(raw)
    values = {option.name: option.default for option in OPTIONS} | given
    bind = _bind(values, raw, base)
    daemonize = _daemonize(values["daemonize"], bind)
    maxspare, minspare = _spares(values, given)
    _check_method(values, given)
    _check_protocol(values, given)
    _check_status_paths(values)
    _check_slowlog(given)
    _check_permissions(given, bind)
    socketowner, socketgroup, user = _accounts(given)
    paths = {
        name: (_absolute(values[name], base) if values[name] is not None else None)
        for name in ("pidfile", "outlog", "errlog", "workdir", "slowlogfile")
    }
    if paths["workdir"] is None and daemonize:
        paths["workdir"] = Path("/")
    accesslog = values["accesslog"]
    if accesslog is not None and accesslog != STDOUT:
        accesslog = _absolute(accesslog, base)
    if accesslog is None and "accessformat" in given:
        raise OptionError(
            "accessformat= shapes the lines of the access log; give accesslog=FILE "
            "(or accesslog=- for standard output) too."
        )
    computed: dict[str, Any] = {
        "bind": bind,
        "daemonize": daemonize,
        "maxspare": maxspare,
        "minspare": minspare,
        "socketowner": socketowner,
        "socketgroup": socketgroup,
        "user": user,
        "accesslog": accesslog,
        **paths,
    }
    as_parsed = {
        field.name: values[field.name] for field in fields(Config) if field.name not in computed
    }
    return Config(**as_parsed, **computed)


def check(raw: Mapping[str, object]) -> None:
    """What resolve() checks that does not depend on this machine: each value, and the
    rules between them, without looking up users and groups.

    The rules about where to listen apply only when ``raw`` names an address (host=,
    port= or socket=): settings that leave it out leave it to the command line.
    """
    given = _parsed(raw)
    values = {option.name: option.default for option in OPTIONS} | given
    if any(name in raw for name in ADDRESS_OPTIONS):
        bind = _bind(values, raw, Path("/"))
        _daemonize(values["daemonize"], bind)
        _check_permissions(given, bind)
    _spares(values, given)
    _check_method(values, given)
    _check_protocol(values, given)
    _check_status_paths(values)
    _check_slowlog(given)
    _check_group(given)


def _bind(values: Mapping[str, Any], raw: Mapping[str, object], base: Path) -> Bind:
    """Where to listen: host= and port=, socket=, or the socket on fd 0."""
    host, port, sock = values["host"], values["port"], values["socket"]
    if sock is not None and (host is not None or port is not None):
        raise OptionError("Use either socket= or host=/port=, not both.")
    if sock is not None:
        if values["protocol"] == "ajp":
            raise OptionError(
                "AJP needs host= and port=; it cannot listen on a unix socket "
                f"(socket={raw['socket']!r})."
            )
        if values["allow"] is not None:
            raise OptionError(
                "allow= applies to TCP clients; who may connect to a unix socket is up to "
                "its permissions (socketmode=, socketgroup=)."
            )
        return Unix(_absolute(sock, base))
    if host is not None or port is not None:
        if port is None:
            raise OptionError(f"host={host!r} needs port= too.")
        if host is None:
            raise OptionError(f"port={port!r} needs host= too (for example host=127.0.0.1).")
        return TCP(host, port)
    if values["protocol"] == "ajp":
        raise OptionError(
            "AJP needs host= and port=; a socket inherited from the web server "
            "works only with protocol=fcgi or protocol=scgi."
        )
    return Inherited()


def _daemonize(daemonize: bool | None, bind: Bind) -> bool:
    """Unset, a server detaches unless the web server started it on an inherited socket."""
    if daemonize is None:
        return not isinstance(bind, Inherited)
    if daemonize and isinstance(bind, Inherited):
        raise OptionError(
            "daemonize=true needs host=/port= or socket=: a server started by the web "
            "server on an inherited socket must stay in the foreground."
        )
    return daemonize


def _spares(values: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[int, int]:
    """maxspare and minspare, within maxchildren."""
    maxspare, minspare, maxchildren = values["maxspare"], values["minspare"], values["maxchildren"]
    if maxchildren < maxspare:
        if "maxspare" in given:
            raise OptionError(
                f"maxchildren={maxchildren} is below maxspare={maxspare}; "
                "raise maxchildren or lower maxspare."
            )
        # maxchildren=3 alone means at most three workers: the idle limits follow it.
        maxspare = maxchildren
        minspare = min(minspare, maxspare)
    if minspare > maxspare:
        raise OptionError(
            f"minspare={minspare} is above maxspare={maxspare}; minspare must be at most maxspare."
        )
    return maxspare, minspare


def _check_method(values: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Options that only a prefork worker can honour."""
    for name in ("maxrequests", "maxrequestsjitter", "maxmemory"):
        if values["method"] == "threaded" and name in given:
            raise OptionError(f"{name}= applies to method=prefork only; threads are not recycled.")
    if values["maxrequestsjitter"] > 0 and values["maxrequests"] == 0:
        raise OptionError(
            f"maxrequestsjitter={values['maxrequestsjitter']} spreads the restarts that "
            "maxrequests= makes; give maxrequests= too."
        )
    if values["method"] == "threaded" and values["requesttimeout"] > 0:
        raise OptionError(
            "requesttimeout= applies to method=prefork only; a thread cannot be stopped "
            "in the middle of a request."
        )


def _check_status_paths(values: Mapping[str, Any]) -> None:
    """status= and ping= answer different requests."""
    if values["status"] is not None and values["status"] == values["ping"]:
        raise OptionError(
            f"status= and ping= are both {values['status']!r}; give each its own path."
        )


def _check_slowlog(given: Mapping[str, Any]) -> None:
    """A file for the slow log is of no use without its limit."""
    if "slowlogfile" in given and "slowlog" not in given:
        raise OptionError(
            f"slowlogfile={given['slowlogfile']!r} needs slowlog= too: the seconds after "
            "which a running request is logged, such as slowlog=5."
        )


def _check_protocol(values: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Options that only one protocol has."""
    if "secret" in given and values["protocol"] != "ajp":
        raise OptionError(
            f"secret= applies to protocol=ajp only; protocol={values['protocol']} has no secret."
        )


def _check_permissions(given: Mapping[str, Any], bind: Bind) -> None:
    """The socket's mode, owner and group are for a unix socket that runfcgi creates."""
    for name in ("socketmode", "socketowner", "socketgroup"):
        if name in given and not isinstance(bind, Unix):
            raise OptionError(
                f"{name}= applies to a unix socket that runfcgi creates (socket=); "
                "a socket on TCP or passed by another program keeps its own permissions."
            )
    _check_group(given)


def _check_group(given: Mapping[str, Any]) -> None:
    if "group" in given and "user" not in given:
        raise OptionError(f"group={given['group']!r} needs user= too: both are taken on together.")


def _accounts(
    given: Mapping[str, Any],
) -> tuple[int | None, int | None, privileges.Account | None]:
    """The socket's owner and group, and the account to become, as numbers.

    Names are looked up now, so a typo fails on the terminal before anything is bound.
    """
    try:
        owner = (
            privileges.user_id("socketowner", given["socketowner"])
            if "socketowner" in given
            else None
        )
        group = (
            privileges.group_id("socketgroup", given["socketgroup"])
            if "socketgroup" in given
            else None
        )
        user = privileges.account(given["user"], given.get("group")) if "user" in given else None
        if user is not None:
            privileges.check_can_become(user)
    except privileges.PrivilegeError as err:
        raise OptionError(str(err)) from None
    return owner, group, user


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Give every option its ``--name`` form; values stay raw so one parser checks both."""
    group = parser.add_argument_group("runfcgi options (also accepted as key=value words)")
    for option in OPTIONS:
        text = f"{option.help} (default: {option.describe_default()})"
        if option.flag:
            group.add_argument(
                f"--{option.name}",
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            group.add_argument(
                f"--{option.name}",
                dest=option.name,
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=text,
            )


HELP_EXAMPLES = """\
Examples:
  Run a FastCGI server started by the web server on its socket (file descriptor 0)
    $ manage.py runfcgi method=threaded

  Run an SCGI server on a TCP host and port
    $ manage.py runfcgi protocol=scgi method=prefork host=127.0.0.1 port=8025

  Run a FastCGI server on a unix socket
    $ manage.py runfcgi method=prefork socket=/tmp/fcgi.sock

  Started as root: a socket for the web server's group, then serve as user mysite
    $ manage.py runfcgi socket=/run/mysite/fcgi.sock mkdir=true \\
        socketgroup=www-data socketmode=660 user=mysite

  Run a FastCGI server as a daemon and write its process id to a file
    $ manage.py runfcgi socket=/tmp/fcgi.sock method=prefork \\
        daemonize=true pidfile=/var/run/django-fcgi.pid
"""


def help_text() -> str:
    """The text of ``manage.py runfcgi help``, in the shape Django 1.8 printed."""
    width = max(len(f"{o.name}={o.metavar}") for o in OPTIONS) + 2
    lines = [
        "Serve this project over FastCGI, SCGI or AJP 1.3 through flup.",
        "",
        "  manage.py runfcgi [key=value ...]    or    manage.py runfcgi [--key value ...]",
        "",
        "The same options, with the same values, may be written once in the project's",
        'settings: RUNFCGI = {"protocol": "scgi", "socket": "/run/mysite/scgi.sock"}.',
        "An option given on the command line (or to runfastcgi()) wins over the setting;",
        "host, port and socket count as one: any of them there replaces all three.",
        "",
        "Actions, with the same options (or none, when settings.RUNFCGI has them):",
        "  manage.py runfcgi config [--json]   each option's value and where it came from",
        "  manage.py runfcgi check             check everything a start would, serve nothing",
        "  manage.py runfcgi stop [--now]      TERM (INT) to the server; wait until it is gone",
        "  manage.py runfcgi reload            HUP, then say whether the new code serves",
        "  manage.py runfcgi reopen            USR1: the server reopens its log files",
        "  (the server pidfile= names; without it, the one listening on socket= or host=/port=)",
        "",
        "Options:",
    ]
    for option in OPTIONS:
        head = f"  {option.name}={option.metavar}".ljust(width + 4)
        lines.append(f"{head}{option.help} (default: {option.describe_default()})")
    lines += ["", HELP_EXAMPLES]
    return "\n".join(lines)
