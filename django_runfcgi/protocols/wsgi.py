"""The WSGI side that the three protocols share: the gateway that runs the application,
the request's path, the 500 page and what HEAD leaves out.

flup's SCGI and AJP WSGI handlers still run the application for those two protocols,
called openly as the gateway's ``respond``; FastCGI's handler is ours (flup.rst lists
why). Everything a protocol does the same way as the others is written here once.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote_to_bytes

from flup.server import ajp_base, scgi_base

from django_runfcgi.protocols.clients import ClientAddress, LoopbackOnly
from django_runfcgi.sockets import Stream

Environ = dict[str, Any]
WSGIApplication = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

_ERROR_PAGE = b"""<!DOCTYPE html>
<html><head><title>500 Internal Server Error</title></head>
<body><h1>Internal Server Error</h1>
<p>The application raised an exception; the details are in the server's log.</p>
</body></html>
"""


def _route_flup_logs_through_django() -> None:
    """flup gives its SCGI and AJP loggers a stderr handler of their own at import.

    Records also reach the root logger, so with any LOGGING configured each error was
    printed twice, once outside the project's format. Without that handler they follow
    the project's LOGGING like every other logger.
    """
    for name in (scgi_base.LoggerName, ajp_base.LoggerName):
        flup_logger = logging.getLogger(name)
        for handler in list(flup_logger.handlers):
            if type(handler) is logging.StreamHandler:
                flup_logger.removeHandler(handler)


_route_flup_logs_through_django()


@dataclass(frozen=True)
class Bounds:
    """What a client may send, as the options of the same names give them.

    ``readtimeout``: seconds for a connection to deliver a complete request head, and
    for a request to go without sending more of its head or body (0: no limit).
    ``maxheadsize``: bytes of one request's FastCGI parameters or SCGI header block.
    ``maxheaders``: how many parameters or headers one request may have.
    """

    readtimeout: float = 30.0
    maxheadsize: int = 1 << 20
    maxheaders: int = 1000

    def __post_init__(self) -> None:
        if self.readtimeout < 0 or self.maxheadsize < 1 or self.maxheaders < 1:
            raise ValueError(f"{self} is out of range.")


class Connection(Protocol):
    """What a process model needs of a protocol's connection."""

    def run(self) -> None:
        """Serve the client's requests; return when the connection is done."""

    def serve_ready(self) -> bool:
        """Serve the requests that have come, without waiting for another once the last
        has been answered: True if the connection is then kept open and idle (serve again
        when its socket is readable), False once it is closed."""

    def stop_when_idle(self) -> None:
        """End after the request in progress instead of waiting for another."""


class RequestWatch(Protocol):
    """Told when each request begins and ends: what a worker observes of its requests.

    ``request_begins`` gets the request's environ as the web server sent it (before the
    application runs; read it, never change it). ``request_ends`` comes once the
    response is written: its status code and the bytes of its body that were written.
    When the application raised before its response began, the status is 500 and the
    error page follows. A prefork worker timing its requests (requesttimeout) and the
    figures of the status page are such watches; a watch must be quick, as it runs on
    every request.
    """

    def request_begins(self, environ: Environ) -> None: ...

    def request_ends(self, status: int, sent: int) -> None: ...


class Gateway:
    """Runs the WSGI application for one protocol's requests, one request per call of
    ``handler(request)``, which returns once the response is written and closed.

    A connection from the web server may carry many requests (FastCGI keep-conn, AJP)
    and wait idle between them; ``watch_requests()`` makes ``handler`` tell a watch when
    each request begins and ends, so only the time in a request counts. Without a
    watch, ``handler`` is ``respond`` itself and costs nothing more.
    """

    name: ClassVar[str]
    """The protocol's name, as log lines and messages show it."""

    def __init__(
        self,
        application: WSGIApplication,
        *,
        multithreaded: bool,
        multiprocess: bool,
        debug: bool = False,
        scriptname: str | None = None,
        environ: Environ | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        self.application = application
        self.bounds = Bounds() if bounds is None else bounds
        self.environ: Environ = {} if environ is None else environ
        self.multithreaded = multithreaded
        self.multiprocess = multiprocess
        self.debug = debug
        self._scriptname = scriptname
        # flup's handlers run the application under this lock when not multithreaded.
        self._appLock = threading.Lock()
        self.handler: Callable[[Any], None] = self.respond
        self.allows: Callable[[ClientAddress], bool] = LoopbackOnly(self.name)
        # flup's request classes log each request at INFO; as flup's own servers were
        # built, WARNING keeps their errors and drops the per-request lines.
        for name in (scgi_base.LoggerName, ajp_base.LoggerName):
            logging.getLogger(name).setLevel(logging.WARNING)
        """Whether a client may connect; SCGI and AJP have no setting of their own for it."""

    def connection(self, sock: Stream, addr: ClientAddress) -> Connection:
        """The connection that serves a client socket just accepted."""
        raise NotImplementedError

    def respond(self, request: Any) -> None:
        """Run the application for `request` and write its response."""
        raise NotImplementedError

    def error(self, request: Any) -> None:
        """Answer 500 for a request whose application raised before its response began."""
        raise NotImplementedError

    def watch_requests(self, watch: RequestWatch) -> None:
        """From now on, tell `watch` when each request begins and ends; watches added
        one after another are all told, the first added the innermost."""
        inner = self.handler
        environ_of, outcome_of = self.environ_of, self.outcome_of

        def watched(request: Any) -> None:
            watch.request_begins(environ_of(request))
            try:
                inner(request)
            except BaseException:
                watch.request_ends(*outcome_of(request, failed=True))
                raise
            watch.request_ends(*outcome_of(request, failed=False))

        self.handler = watched

    def environ_of(self, request: Any) -> Environ:
        """The environ of a protocol's request, for the watches."""
        environ: Environ = request.environ
        return environ

    def outcome_of(self, request: Any, *, failed: bool) -> tuple[int, int]:
        """The status code and body bytes of a request's response, for the watches; a
        request whose application `failed` before answering gets the 500 page."""
        raise NotImplementedError

    def failed_outcome(self, environ: Environ) -> tuple[int, int]:
        """The outcome of a request answered with the 500 page."""
        return 500, len(error_page(self.debug)[1]) if has_body(environ) else 0

    def _sanitizeEnv(self, environ: Environ) -> None:
        """SCRIPT_NAME and PATH_INFO from the URI, under the mount prefix (scriptname=, or
        the WSGI_SCRIPT_NAME a front end sends); flup's SCGI and AJP handlers call it."""
        mount = self._scriptname
        fill_script_and_path(environ, environ.get("WSGI_SCRIPT_NAME") if mount is None else mount)


def _unquote(path: str) -> str:
    """Percent-decode a URL path the WSGI way: bytes shown as latin-1 characters."""
    return unquote_to_bytes(path.encode("latin-1")).decode("latin-1") if "%" in path else path


def _below(path: str, prefix: str) -> str:
    return path[len(prefix) :] if path.startswith(prefix) else path


def fill_script_and_path(environ: Environ, mount: str | None = None) -> None:
    """Set SCRIPT_NAME, PATH_INFO and QUERY_STRING the way WSGI expects.

    Without PATH_INFO, flup cut the still percent-encoded REQUEST_URI by the length of
    the decoded SCRIPT_NAME ('3%A9'). Here PATH_INFO comes from REQUEST_URI's path,
    percent-decoded, minus SCRIPT_NAME when that is its start. `mount`, from the
    scriptname option or the deprecated WSGI_SCRIPT_NAME a front end may send, replaces
    SCRIPT_NAME and is cut from the full path; flup warned on every such request and
    raised KeyError without SCRIPT_NAME. See flup.rst#ajp-path-info,
    flup.rst#path-info-encoded and flup.rst#scgi-mount-prefix.
    """
    uri_path = None
    query = ""
    if "REQUEST_URI" in environ:
        raw_path, _, query = environ["REQUEST_URI"].partition("?")
        uri_path = _unquote(raw_path)
    if not environ.get("QUERY_STRING"):
        environ["QUERY_STRING"] = query
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    if mount is not None:
        # The front end's split is not trusted: the URI is what the browser asked for,
        # also when a rewrite sent the request to a script such as mysite.fcgi.
        full = uri_path if uri_path is not None else script_name + path_info
        mount = mount.rstrip("/")
        environ["SCRIPT_NAME"] = mount
        environ["PATH_INFO"] = _below(full, mount)
        return
    environ["SCRIPT_NAME"] = script_name
    if not path_info:
        environ["PATH_INFO"] = "" if uri_path is None else _below(uri_path, script_name)


def has_body(environ: Environ) -> bool:
    """Whether the response carries its body: not for HEAD, whose body Django renders as
    for GET (flup sent it; front ends drop it anyway)."""
    method: str = environ["REQUEST_METHOD"]
    return method != "HEAD"


def error_page(debug: bool) -> tuple[bytes, bytes]:
    """Content type and body of the 500 page; call it inside the `except` block.

    flup imported cgitb for debug, which is gone in Python 3.13: the error page itself
    raised, so FastCGI requests never ended, SCGI gave 502 and AJP 503
    (flup.rst#debug-cgitb).
    """
    if debug:
        return b"text/plain; charset=utf-8", traceback.format_exc().encode("utf-8", "replace")
    return b"text/html; charset=utf-8", _ERROR_PAGE


def write_cgi_error(stdout: Any, debug: bool) -> None:
    """The 500 page as a CGI response (FastCGI, SCGI): headers and body in separate writes,
    so a response to HEAD keeps the first (its header block) and drops the second."""
    content_type, body = error_page(debug)
    stdout.write(
        b"Status: 500 Internal Server Error\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (content_type, len(body))
    )
    stdout.write(body)


class LineReading:
    """readlines() and iteration for a wsgi.input that has readline()."""

    def readline(self, size: int | None = -1) -> bytes:
        raise NotImplementedError

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")
