"""accessformat=: the fields of an access log line, and the escaping of what the client
sent.

A format names its fields in braces, ``{remote_addr} {status}``; it is compiled once, at
start, into a %-template and the functions that read each field, so a request costs one
call per field. Pure: options.py checks formats with it, without loading a server.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from django_runfcgi.protocols.wsgi import Environ

STDOUT: Literal["-"] = "-"
"""accesslog=- writes to the server's standard output (a daemon's is outlog=)."""

Target = Path | Literal["-"]
"""Where accesslog= writes: a file, or the standard output."""

DEFAULT_FORMAT = (
    '{remote_addr} - {remote_user} [{time_local}] "{request}" {status} {bytes} '
    '"{referer}" "{user_agent}" {duration_us} {pid}'
)
"""The combined log format of Apache and nginx, then the request's microseconds and
the pid of the worker that served it."""

HEADER_PREFIX = "http_"
"""{http_x_forwarded_for}: any request header, as nginx's $http_NAME."""

FIELDS: dict[str, str] = {
    "remote_addr": "the client's address, as the web server sent it (REMOTE_ADDR)",
    "remote_port": "the client's port (REMOTE_PORT)",
    "remote_user": "the user the web server authenticated (REMOTE_USER)",
    "time_local": "when the request began, as 03/Dec/2026:10:30:00 +0000",
    "time_iso8601": "when the request began, as 2026-12-03T10:30:00+00:00",
    "time_msec": "when the request began, in seconds since the epoch, as 1796293800.123",
    "request": "the request line: method, URI and protocol, as GET /a/?b=1 HTTP/1.1",
    "method": "the request method (REQUEST_METHOD)",
    "uri": "the URI as the client asked for it, query string included (REQUEST_URI)",
    "query": "the query string (QUERY_STRING)",
    "protocol": "the HTTP version (SERVER_PROTOCOL)",
    "scheme": "http or https (wsgi.url_scheme)",
    "host": "the Host header",
    "content_length": "the request body's length as the client gave it (CONTENT_LENGTH)",
    "status": "the response's status code",
    "bytes": "bytes of the response body sent (0 for HEAD)",
    "referer": "the Referer header",
    "user_agent": "the User-Agent header",
    "duration": "seconds from the request reaching the application to its response sent, as 0.012",
    "duration_ms": "the same in whole milliseconds",
    "duration_us": "the same in whole microseconds",
    "pid": "the process that served the request (a prefork worker; method=threaded: the server)",
    "tid": "the thread that served it (its native id, as ps -L shows it)",
}
"""Every field accessformat= takes besides {http_NAME}, with what it holds."""

_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TOKENS = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
"""What a value from the client may not put in a line as it is: control characters
(a newline would start a forged line), the double quote and backslash that delimit
and escape, and anything beyond ASCII."""


class FormatError(ValueError):
    """accessformat= is not a format; the message is worded for the person who typed it."""


def _hex(match: re.Match[str]) -> str:
    char = match.group()
    data = bytes([ord(char)]) if ord(char) < 256 else char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{byte:02X}" for byte in data)


def escape(value: str) -> str:
    """`value` safe for one line: each unsafe character as ``\\xHH``, the byte that came
    on the wire (WSGI gives the bytes as latin-1 characters), as nginx writes them."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_hex, value)


_pid = os.getpid()


def _after_fork() -> None:
    global _pid  # noqa: PLW0603 - one value per process, read on every request
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _offset(seconds: int, colon: bool) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"


@functools.lru_cache(maxsize=4)
def _time_local(second: int) -> str:
    """Formatted once a second, not once a request."""
    t = time.localtime(second)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {_offset(t.tm_gmtoff, colon=False)}"
    )


@functools.lru_cache(maxsize=4)
def _time_iso8601(second: int) -> str:
    t = time.localtime(second)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + _offset(t.tm_gmtoff, colon=True)


WIRE: dict[str, str] = {
    "remote_addr": "REMOTE_ADDR",
    "remote_port": "REMOTE_PORT",
    "remote_user": "REMOTE_USER",
    "method": "REQUEST_METHOD",
    "query": "QUERY_STRING",
    "protocol": "SERVER_PROTOCOL",
    "scheme": "wsgi.url_scheme",
    "host": "HTTP_HOST",
    "content_length": "CONTENT_LENGTH",
    "referer": "HTTP_REFERER",
    "user_agent": "HTTP_USER_AGENT",
}
"""The fields that are one environ value as the client or web server sent it."""

NUMBERS: dict[str, str] = {
    "status": "%d",
    "bytes": "%d",
    "duration": "%.3f",
    "duration_ms": "%d",
    "duration_us": "%d",
    "pid": "%d",
    "time_msec": "%.3f",
}
"""The fields that are numbers, in the order of every line's numbers, and how each is
written."""

COMPUTED = ("uri", "request", "time_local", "time_iso8601", "tid")
"""The fields that cost a call, made only for a format that has them, in this order."""

assert WIRE.keys() | NUMBERS.keys() | set(COMPUTED) == FIELDS.keys(), "each field described"


def _uri_of(environ: Environ) -> str:
    """REQUEST_URI; AJP sends its query apart, and a front end may send no URI at all."""
    uri = environ.get("REQUEST_URI")
    if uri is None:
        uri = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING")
    if query and "?" not in uri:
        uri = f"{uri}?{query}"
    return str(uri) or "-"


def _unknown(text: str, name: str) -> FormatError:
    accepted = ", ".join(f"{{{known}}}" for known in FIELDS)
    return FormatError(
        f"accessformat={text!r} has an unknown field {{{name}}}; use {accepted}, "
        f"or {{{HEADER_PREFIX}NAME}} for a request header such as {{http_x_forwarded_for}}."
    )


def _pick(indices: tuple[int, ...]) -> Callable[[list[object]], tuple[object, ...]]:
    """The values at `indices`, as a tuple for the %-template."""
    if len(indices) == 1:
        index = indices[0]
        return lambda values: (values[index],)
    if not indices:
        return lambda values: ()
    return operator.itemgetter(*indices)


@dataclass(frozen=True)
class LineFormat:
    """accessformat= compiled: a %-template, and where each of its values comes from.

    Per request, the values from the wire are read with one comprehension and checked
    at once for what must be escaped (almost always nothing); only the fields that cost
    a call and are in the format are made; the numbers are put in as they are. Each of
    these steps is a few C calls: the log is written on every request.
    """

    text: str
    template: str
    keys: tuple[str, ...]
    """The environ key of each value from the wire, {http_NAME} included."""
    computed: frozenset[str]
    pick: Callable[[list[object]], tuple[object, ...]]
    """The template's values from [wire..., computed..., numbers...]."""

    def line(
        self, environ: Environ, status: int, sent: int, nanoseconds: int, started: float
    ) -> bytes:
        """The line of a request whose response is sent: its `status`, its `sent` body
        bytes, the `nanoseconds` since it reached the application, and when it began
        (time.time())."""
        get = environ.get
        strings = [get(key) or "-" for key in self.keys]
        computed = self.computed
        if computed:
            uri = _uri_of(environ) if "uri" in computed or "request" in computed else "-"
            if "uri" in computed:
                strings.append(uri)
            if "request" in computed:
                method, protocol = get("REQUEST_METHOD") or "-", get("SERVER_PROTOCOL") or "-"
                strings.append(f"{method} {uri} {protocol}")
            if "time_local" in computed:
                strings.append(_time_local(int(started)))
            if "time_iso8601" in computed:
                strings.append(_time_iso8601(int(started)))
            if "tid" in computed:
                strings.append(str(threading.get_native_id()))
        try:
            joined = "".join(strings)
        except TypeError:  # Not a str, which WSGI wants; a middleware may have set one.
            joined = "\0"
        if not (joined.isascii() and joined.isprintable()) or '"' in joined or "\\" in joined:
            strings = [escape(str(value)) for value in strings]
        values: list[object] = [*strings, status, sent, nanoseconds / 1e9]
        values += (nanoseconds // 1_000_000, nanoseconds // 1000, _pid, started)
        return (self.template % self.pick(values) + "\n").encode("utf-8", "surrogateescape")


def compile_format(text: str) -> LineFormat:
    """The format's fields, named in braces; ``{{`` and ``}}`` are literal braces.

    Raises FormatError naming what is wrong: an unknown field, a lone brace.
    """
    if "\n" in text or "\r" in text:
        raise FormatError(f"accessformat={text!r} spans lines; an access log line is one line.")
    parts: list[str] = []
    fields: list[str] = []
    keys: dict[str, str] = {}
    position = 0
    for match in _TOKENS.finditer(text):
        parts.append(text[position : match.start()].replace("%", "%%"))
        position = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            parts.append(token[0])
            continue
        name = match.group(1)
        if name is None:
            raise FormatError(
                f"accessformat={text!r} has a lone {token!r}; write {token * 2} for a brace "
                "of its own, or {name} for a field."
            )
        if name in WIRE:
            keys[name] = WIRE[name]
        elif (
            name.startswith(HEADER_PREFIX)
            and len(name) > len(HEADER_PREFIX)
            and _FIELD_NAME.fullmatch(name)
        ):
            keys[name] = "HTTP_" + name[len(HEADER_PREFIX) :].upper()
        elif name not in NUMBERS and name not in COMPUTED:
            raise _unknown(text, name)
        fields.append(name)
        parts.append(NUMBERS.get(name, "%s"))
    parts.append(text[position:].replace("%", "%%"))
    computed = [name for name in COMPUTED if name in fields]
    order = [*keys, *computed, *NUMBERS]
    return LineFormat(
        text,
        "".join(parts),
        tuple(keys.values()),
        frozenset(computed),
        _pick(tuple(order.index(name) for name in fields)),
    )
