"""What the three protocol halves share: who may connect, how a request's path is split,
the 500 page, and a connection's stop flag and failure logging."""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import unquote_to_bytes

from flup.server import ajp_base, scgi_base

logger = logging.getLogger("django_runfcgi.compat")


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

Environ = dict[str, Any]
WSGIApplication = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]
ClientAddress = str | bytes | tuple[Any, ...]
"""What accept() returns: a (host, port[, flow, scope]) tuple, or '' for a unix socket."""

IDLE_POLL_SECONDS = 0.5
"""How often an idle connection checks whether stop_when_idle() was called."""

FIRST_REQUEST_SECONDS = 2.0
"""How long a connection accepted during a stop waits for its first request."""

_ERROR_PAGE = b"""<!DOCTYPE html>
<html><head><title>500 Internal Server Error</title></head>
<body><h1>Internal Server Error</h1>
<p>The application raised an exception; the details are in the server's log.</p>
</body></html>
"""


class ProtocolError(Exception):
    """A client sent bytes the protocol does not allow; its connection is closed."""


def peer(addr: ClientAddress) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a unix-socket client"


def ip_address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, with an IPv4-mapped IPv6 address as plain IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allow_loopback(addr: ClientAddress, protocol: str) -> bool:
    """Loopback TCP clients (IPv4, ::1, IPv4-mapped) and every unix-socket client."""
    if not isinstance(addr, tuple):
        return True
    ip = ip_address_of(addr[0])
    if ip is not None and ip.is_loopback:
        return True
    logger.warning(
        "Refused %s connection from %s: only loopback clients may connect", protocol, addr[0]
    )
    return False


def set_nodelay(sock: socket.socket, addr: ClientAddress) -> None:
    """Send small packets at once: with Nagle, every request body chunk waits 40 ms
    (flup.rst#ajp-nagle).

    A TCP client's address is a tuple, a unix-socket client's a string: that tells the
    family without reading ``sock.family``, which costs an enum lookup per connection.
    """
    if isinstance(addr, tuple):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def recv_exactly(sock: socket.socket, size: int, what: str, *, first: bool = False) -> bytes:
    """`size` bytes; EOFError for a clean close before the `first` piece of a message."""
    parts = []
    received = 0
    while received < size:
        data = sock.recv(min(size - received, 262144))
        if not data:
            if first and not received:
                raise EOFError
            raise ProtocolError(
                f"connection closed after {received} of the {size} bytes of {what}"
            )
        parts.append(data)
        received += len(data)
    return b"".join(parts)


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
    like flup's handler, so a HEAD response drops the body."""
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


class ProtocolConnection:
    """What every protocol's connection shares: no Nagle, the stop flag, failure logs."""

    protocol_name: ClassVar[str]
    protocol_errors: ClassVar[tuple[type[Exception], ...]] = (ProtocolError,)
    _sock: socket.socket
    _addr: ClientAddress

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)  # type: ignore[call-arg]
        set_nodelay(sock, addr)
        self._stopping = False
        self._first = True

    def stop_when_idle(self) -> None:
        """Finish the request in progress, then close instead of waiting for another.

        A separate flag, not flup's _keepGoing: FastCGI body reads loop on that one.
        """
        self._stopping = True

    def _wait_for_request(self) -> bool:
        """Wait until the client sends a request (True) or stop_when_idle() is called (False).

        The first request is waited for even during a stop: the web server connected to
        send it, and a worker that accepted the connection must not drop it (a reload or
        a stop under load would answer 502).
        """
        first, self._first = self._first, False
        deadline = None
        while True:
            if self._stopping:
                if not first:
                    return False
                if deadline is None:
                    deadline = time.monotonic() + FIRST_REQUEST_SECONDS
                elif time.monotonic() > deadline:
                    return False
            readable, _, _ = select.select([self._sock], [], [], IDLE_POLL_SECONDS)
            if readable:
                return True

    def _logging_failures(self) -> ProtocolConnection:
        """For ``with``: a broken client costs one log line and its connection, never the
        worker. The connection is its own context manager: a generator-based one cost
        every connection a generator and four calls."""
        return self

    def __enter__(self) -> ProtocolConnection:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, Exception):
            return False  # None, or KeyboardInterrupt and SystemExit: not ours to swallow.
        if isinstance(exc, EOFError):
            return True
        if isinstance(exc, self.protocol_errors):
            logger.warning(
                "%s protocol error from %s: %s; connection closed",
                self.protocol_name,
                peer(self._addr),
                exc,
            )
        elif isinstance(exc, OSError):
            logger.info(
                "%s connection from %s failed: %s", self.protocol_name, peer(self._addr), exc
            )
        else:
            logger.error(
                "%s connection from %s failed",
                self.protocol_name,
                peer(self._addr),
                exc_info=(type(exc), exc, tb),
            )
        return True


class LoopbackServer:
    """What the SCGI and AJP halves share: set-up, who may connect, the mount prefix."""

    protocol_name: ClassVar[str]

    def __init__(
        self,
        application: WSGIApplication,
        *,
        multithreaded: bool,
        multiprocess: bool,
        debug: bool = False,
        environ: Environ | None = None,
        scriptname: str | None = None,
    ) -> None:
        self._scriptname = scriptname
        # flup logs each request at INFO: WARNING keeps errors and drops the
        # per-request lines. No bind address is needed: the socket comes
        # bound (flup.rst#bind-address).
        super().__init__(  # type: ignore[call-arg]
            application,
            environ=environ,
            multithreaded=multithreaded,
            multiprocess=multiprocess,
            bindAddress=None,
            allowedServers=None,
            loggingLevel=logging.WARNING,
            debug=debug,
        )

    def _isClientAllowed(self, addr: ClientAddress) -> bool:
        """Loopback and unix-socket clients; flup allowed only '127.0.0.1', not ::1."""
        return allow_loopback(addr, self.protocol_name)

    def _sanitizeEnv(self, environ: Environ) -> None:
        """PATH_INFO percent-decoded (flup's AJP took req_uri raw: flup.rst#ajp-path-info)."""
        mount = self._scriptname
        fill_script_and_path(environ, environ.get("WSGI_SCRIPT_NAME") if mount is None else mount)
