"""The protocol halves of the server: flup 1.0.3's FastCGI, SCGI and AJP 1.3 classes, fixed.

Each fix names the flup bug it covers (B1..B24 in the project's notes on flup under
Python 3) and has a test in tests/test_compat.py that fails against plain flup. The
process halves (prefork, threaded) are combined with these classes in server.py; the
listening socket is bound there too, so nothing here needs a bind address.

Every connection object has ``stop_when_idle()``: graceful shutdown lets the request in
progress finish, then the connection closes instead of waiting for another request on a
persistent FastCGI (FCGI_KEEP_CONN) or AJP connection (B5).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, ClassVar
from urllib.parse import unquote_to_bytes

from flup.server import ajp_base, fcgi_base, scgi_base

logger = logging.getLogger(__name__)


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


def _peer(addr: ClientAddress) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a unix-socket client"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, with an IPv4-mapped IPv6 address as plain IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _allow_loopback(addr: ClientAddress, protocol: str) -> bool:
    """Loopback TCP clients (IPv4, ::1, IPv4-mapped) and every unix-socket client."""
    if not isinstance(addr, tuple):
        return True
    ip = _ip(addr[0])
    if ip is not None and ip.is_loopback:
        return True
    logger.warning(
        "Refused %s connection from %s: only loopback clients may connect", protocol, addr[0]
    )
    return False


def _set_nodelay(sock: socket.socket) -> None:
    """Send small packets at once: with Nagle, every request body chunk waits 40 ms (B10)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _recv_exactly(sock: socket.socket, size: int, what: str, *, first: bool = False) -> bytes:
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


def _fill_script_and_path(environ: Environ, mount: str | None = None) -> None:
    """Set SCRIPT_NAME, PATH_INFO and QUERY_STRING the way WSGI expects (B8, B11, B12).

    Without PATH_INFO, flup cut the still percent-encoded REQUEST_URI by the length of
    the decoded SCRIPT_NAME ('3%A9'). Here PATH_INFO comes from REQUEST_URI's path,
    percent-decoded, minus SCRIPT_NAME when that is its start. `mount`, from the
    scriptname option or the deprecated WSGI_SCRIPT_NAME a front end may send, replaces
    SCRIPT_NAME and is cut from the full path; flup warned on every such request and
    raised KeyError without SCRIPT_NAME.
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


def _error_page(debug: bool) -> tuple[bytes, bytes]:
    """Content type and body of the 500 page; call it inside the `except` block.

    flup imported cgitb for debug, which is gone in Python 3.13 (B6): the error page
    itself raised, so FastCGI requests never ended, SCGI gave 502 and AJP 503.
    """
    if debug:
        return b"text/plain; charset=utf-8", traceback.format_exc().encode("utf-8", "replace")
    return b"text/html; charset=utf-8", _ERROR_PAGE


def _write_cgi_error(stdout: Any, debug: bool) -> None:
    """The 500 page as a CGI response (FastCGI, SCGI): headers and body in separate writes,
    like flup's handler, so a HEAD response drops the body."""
    content_type, body = _error_page(debug)
    stdout.write(
        b"Status: 500 Internal Server Error\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (content_type, len(body))
    )
    stdout.write(body)


# FastCGI


def _decode_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise ProtocolError("name-value pair cut short in its length")
    if data[pos] < 128:
        return data[pos], pos + 1
    if pos + 4 > len(data):
        raise ProtocolError("name-value pair cut short in its 4-byte length")
    (length,) = struct.unpack_from("!L", data, pos)
    return length & 0x7FFFFFFF, pos + 4


def _decode_pairs(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """FastCGI name-value pairs; flup's decoder raised IndexError or struct.error instead."""
    pos = 0
    while pos < len(data):
        name_length, pos = _decode_length(data, pos)
        value_length, pos = _decode_length(data, pos)
        end = pos + name_length + value_length
        if end > len(data):
            raise ProtocolError(
                f"name-value pair of {name_length}+{value_length} bytes"
                f" overruns its {len(data)}-byte record"
            )
        yield data[pos : pos + name_length], data[pos + name_length : end]
        pos = end


def _fcgi_record(kind: int, request_id: int, content: bytes | memoryview = b"") -> bytes:
    padding = -len(content) % 8
    header = struct.pack(
        "!BBHHBx", fcgi_base.FCGI_VERSION_1, kind, request_id, len(content), padding
    )
    return b"".join((header, content, bytes(padding)))


class _FCGIOutputStream(fcgi_base.OutputStream):  # type: ignore[misc]
    """FCGI_STDOUT/STDERR that sends whole records in one call per write.

    The first write to stdout (the CGI header block) is held back and goes out with the
    first body bytes; flup sent each record as three packets and headers apart from body.
    A response to HEAD stops after that header block: flup sent the body too.
    """

    dataWritten: bool

    def __init__(self, conn: FCGIConnection, req: Any, kind: int, buffered: bool = False) -> None:
        super().__init__(conn, req, kind, buffered)
        self._held = b""

    def write(self, data: bytes | str) -> None:
        if not data or self._buffered:
            super().write(data)
        elif not self.dataWritten:
            self.dataWritten = True
            self._held = data.encode() if isinstance(data, str) else data
        elif self._req.params.get("REQUEST_METHOD") != "HEAD":
            super().write(data)

    def _write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        self._conn.send_stream(self._type, self._req.requestId, data)

    def flush(self) -> None:
        super().flush()
        if self._held:
            self._write(b"")


class _FCGIRequest(fcgi_base.Request):  # type: ignore[misc]
    def __init__(self, conn: FCGIConnection, inputStreamClass: type[Any], timeout: Any) -> None:
        super().__init__(conn, inputStreamClass, timeout)
        self.stdout = _FCGIOutputStream(conn, self, fcgi_base.FCGI_STDOUT)
        self.stderr = _FCGIOutputStream(conn, self, fcgi_base.FCGI_STDERR, buffered=True)

    def _flush(self) -> None:
        """Send the end of the streams together with FCGI_END_REQUEST, in one call."""
        self._conn.hold()
        super()._flush()


class _Connection:
    """What every protocol's connection shares: no Nagle, the stop flag, failure logs."""

    protocol_name: ClassVar[str]
    protocol_errors: ClassVar[tuple[type[Exception], ...]] = (ProtocolError,)
    _sock: socket.socket
    _addr: ClientAddress

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)  # type: ignore[call-arg]
        _set_nodelay(sock)
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

    @contextmanager
    def _logging_failures(self) -> Iterator[None]:
        """A broken client costs one log line and its connection, never the worker."""
        try:
            yield
        except EOFError:
            pass
        except self.protocol_errors as exc:
            logger.warning(
                "%s protocol error from %s: %s; connection closed",
                self.protocol_name,
                _peer(self._addr),
                exc,
            )
        except OSError as exc:
            logger.info(
                "%s connection from %s failed: %s", self.protocol_name, _peer(self._addr), exc
            )
        except Exception:
            logger.exception("%s connection from %s failed", self.protocol_name, _peer(self._addr))


class FCGIConnection(_Connection, fcgi_base.Connection):  # type: ignore[misc]
    """One FastCGI connection from the web server; one request at a time."""

    close_wait_seconds: ClassVar[float] = 10.0
    """After the last request, how long to wait for the front end to close its side.
    flup waited forever, pinning a worker to a front end that never closed (B2)."""

    protocol_name = "FastCGI"

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)
        self._closed = False
        self._held: list[bytes] | None = None

    def run(self) -> None:
        self._keepGoing = True
        try:
            with self._logging_failures():
                while self._keepGoing:
                    if not self._requests and not self._wait_for_request():
                        break
                    self.process_input()
        finally:
            self._cleanupSocket()

    def process_input(self) -> None:
        """Read one record and act on it; also called by a request reading its body."""
        while self._keepGoing:
            readable, _, _ = select.select([self._sock], [], [], 1.0)
            if readable:
                break
        else:
            return
        header = _recv_exactly(
            self._sock, fcgi_base.FCGI_HEADER_LEN, "a record header", first=True
        )
        version, kind, request_id, length, padding = struct.unpack(fcgi_base.FCGI_Header, header)
        if version != fcgi_base.FCGI_VERSION_1:
            raise ProtocolError(f"record header {header!r} is not FastCGI version 1")
        content = (
            _recv_exactly(self._sock, length + padding, f"a type {kind} record")
            if length + padding
            else b""
        )
        rec = fcgi_base.Record(kind, request_id)
        rec.contentLength = length
        rec.contentData = content[:length]
        if kind == fcgi_base.FCGI_BEGIN_REQUEST:
            if length != struct.calcsize(fcgi_base.FCGI_BeginRequestBody):
                raise ProtocolError(f"FCGI_BEGIN_REQUEST body of {length} bytes, not 8")
            self._do_begin_request(rec)
        elif kind == fcgi_base.FCGI_PARAMS:
            self._do_params(rec)
        elif kind == fcgi_base.FCGI_STDIN:
            self._do_stdin(rec)
        elif kind == fcgi_base.FCGI_GET_VALUES:
            self._do_get_values(rec)
        elif kind == fcgi_base.FCGI_ABORT_REQUEST:
            self._do_abort_request(rec)
        elif kind == fcgi_base.FCGI_DATA:
            self._do_data(rec)
        elif request_id == fcgi_base.FCGI_NULL_REQUEST_ID:
            self._do_unknown_type(rec)

    def _do_params(self, inrec: Any) -> None:
        req = self._requests.get(inrec.requestId)
        if req is None:
            return
        if not inrec.contentLength:
            self._start_request(req)
            return
        for name, value in _decode_pairs(inrec.contentData):
            req.params[name.decode("latin-1")] = value.decode("latin-1")

    def _do_get_values(self, inrec: Any) -> None:
        reply = b""
        for name, _ in _decode_pairs(inrec.contentData):
            value = self.server.capability.get(name.decode("latin-1"))
            if value is not None:
                reply += fcgi_base.encode_pair(name, str(value).encode())
        self._send(_fcgi_record(fcgi_base.FCGI_GET_VALUES_RESULT, 0, reply))

    def hold(self) -> None:
        """Collect what is written until the next FCGI_END_REQUEST, then send it at once."""
        self._held = []

    def _send(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            self._sock.sendall(data)

    def writeRecord(self, rec: Any) -> None:
        """One send per record: header, content and padding together."""
        self._send(_fcgi_record(rec.type, rec.requestId, rec.contentData))

    def send_stream(self, kind: int, request_id: int, data: bytes) -> None:
        """Stream data as records of flup's size, a batch of records per send."""
        view = memoryview(data)
        step = self.server.maxwrite - fcgi_base.FCGI_HEADER_LEN
        batch = 32 * step
        for start in range(0, len(view), batch):
            piece = view[start : start + batch]
            self._send(
                b"".join(
                    _fcgi_record(kind, request_id, piece[i : i + step])
                    for i in range(0, len(piece), step)
                )
            )

    def end_request(
        self,
        req: Any,
        appStatus: int = 0,
        protocolStatus: int = fcgi_base.FCGI_REQUEST_COMPLETE,
        remove: bool = True,
    ) -> None:
        body = struct.pack(fcgi_base.FCGI_EndRequestBody, appStatus, protocolStatus)
        held, self._held = self._held or [], None
        self._sock.sendall(
            b"".join([*held, _fcgi_record(fcgi_base.FCGI_END_REQUEST, req.requestId, body)])
        )
        if remove:
            self._requests.pop(req.requestId, None)
        if not (req.flags & fcgi_base.FCGI_KEEP_CONN) and not self._requests:
            self._cleanupSocket()
            self._keepGoing = False

    def _cleanupSocket(self) -> None:
        """Close once the front end has closed its side, or after a bounded wait.

        Input still unread (e.g. a body the application ignored) is read first: closing
        over it would reset the connection. When stopping, only what has arrived is read.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.close_wait_seconds
            while True:
                remaining = 0.0 if self._stopping else deadline - time.monotonic()
                wait = min(max(remaining, 0.0), IDLE_POLL_SECONDS)
                if select.select([self._sock], [], [], wait)[0]:
                    if not self._sock.recv(65536):
                        break
                elif remaining <= 0:
                    break
        except OSError:
            pass
        finally:
            self._sock.close()


class FCGIServer(fcgi_base.BaseFCGIServer):  # type: ignore[misc]
    """FastCGI protocol half; combine it with a process class."""

    connection_class: ClassVar[type[FCGIConnection]] = FCGIConnection
    request_class = _FCGIRequest

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
        fcgi_base.BaseFCGIServer.__init__(
            self,
            application,
            environ=environ,
            multithreaded=multithreaded,
            multiprocess=multiprocess,
            debug=debug,
        )
        addrs = os.environ.get("FCGI_WEB_SERVER_ADDRS")
        self._web_server_addrs = (
            None
            if addrs is None
            else {self._normalize(part) for part in addrs.split(",") if part.strip()}
        )

    @staticmethod
    def _normalize(host: str) -> str:
        ip = _ip(host.strip())
        return host.strip() if ip is None else str(ip)

    def _isClientAllowed(self, addr: ClientAddress) -> bool:
        """FCGI_WEB_SERVER_ADDRS limits TCP clients; unix-socket clients always pass (B16)."""
        if not isinstance(addr, tuple) or self._web_server_addrs is None:
            return True
        if self._normalize(addr[0]) in self._web_server_addrs:
            return True
        logger.warning("Refused FastCGI connection from %s: not in FCGI_WEB_SERVER_ADDRS", addr[0])
        return False

    def _sanitizeEnv(self, environ: Environ) -> None:
        _fill_script_and_path(environ, self._scriptname)
        for name, default in (
            ("REQUEST_METHOD", "GET"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
        ):
            if name not in environ:
                environ["wsgi.errors"].write(
                    f"FastCGI param {name} is missing; using {default!r}\n"
                )
                environ[name] = default

    def error(self, req: Any) -> None:
        _write_cgi_error(req.stdout, self.debug)


# SCGI


class _SCGIInput:
    """wsgi.input limited to CONTENT_LENGTH that knows how much the application left unread."""

    def __init__(self, rfile: IO[bytes], length: int) -> None:
        self._rfile = rfile
        self.remaining = length

    def _limit(self, size: int | None) -> int:
        return self.remaining if size is None or size < 0 else min(size, self.remaining)

    def read(self, size: int | None = -1) -> bytes:
        size = self._limit(size)
        if not size:
            return b""
        data = self._rfile.read(size)
        # A short read means the front end closed the connection: nothing more comes.
        self.remaining = self.remaining - size if len(data) == size else 0
        return data

    def readline(self, size: int | None = -1) -> bytes:
        size = self._limit(size)
        if not size:
            return b""
        line = self._rfile.readline(size)
        if len(line) < size and not line.endswith(b"\n"):
            self.remaining = 0
        else:
            self.remaining -= len(line)
        return line

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
        while line := self.readline():
            yield line

    def discard_rest(self, sock: socket.socket, seconds: float) -> None:
        """Read and drop the unread body, within `seconds`.

        Closing a socket with unread input sends a reset, and the front end loses the
        response (B13: Apache 503 always, nginx 502 often, on a 50 MB POST).
        """
        deadline = time.monotonic() + seconds
        try:
            while self.remaining > 0 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = self._rfile.read(min(self.remaining, 262144))
                if not data:
                    break
                self.remaining -= len(data)
        except OSError:
            pass


class _HeadersOnly:
    """Response output for HEAD: the CGI header block (the first write) and no body."""

    def __init__(self, wfile: IO[bytes]) -> None:
        self._wfile = wfile
        self._headers_written = False

    def write(self, data: bytes) -> int:
        if not self._headers_written:
            self._headers_written = True
            self._wfile.write(data)
        return len(data)

    def flush(self) -> None:
        self._wfile.flush()


def _read_netstring(rfile: IO[bytes], limit: int) -> bytes:
    digits = b""
    while True:
        char = rfile.read(1)
        if not char:
            if digits:
                raise ProtocolError("connection closed inside the netstring length")
            raise EOFError
        if char == b":" and digits:
            break
        if not char.isdigit() or len(digits) > len(str(limit)):
            raise ProtocolError(
                f"request does not start with a netstring length: {digits + char!r}"
            )
        digits += char
    size = int(digits)
    if size > limit:
        raise ProtocolError(f"headers netstring of {size} bytes is over the {limit}-byte limit")
    data = rfile.read(size + 1)
    if len(data) < size + 1:
        raise ProtocolError(f"connection closed inside the {size}-byte headers netstring")
    if data[-1:] != b",":
        raise ProtocolError(f"headers netstring ends with {data[-1:]!r}, not ','")
    return data[:-1]


def _parse_scgi_headers(data: bytes) -> Environ:
    strings = data.split(b"\0")
    if strings[-1] or len(strings) % 2 == 0:
        raise ProtocolError("headers are not NUL-terminated name/value pairs")
    environ: Environ = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in zip(strings[:-1:2], strings[1::2], strict=True)
    }
    length = environ.get("CONTENT_LENGTH", "")
    if not length.isdigit():
        raise ProtocolError(f"CONTENT_LENGTH is {length!r}, not a number of bytes")
    if "REQUEST_METHOD" not in environ:
        raise ProtocolError("REQUEST_METHOD is missing")
    return environ


class SCGIConnection(_Connection, scgi_base.Connection):  # type: ignore[misc]
    """One SCGI connection: one request, then close."""

    drain_seconds: ClassVar[float] = 10.0
    """How long to spend reading a request body the application left unread (B13)."""
    max_header_bytes: ClassVar[int] = 1 << 20
    """Larger SCGI headers are refused: front ends send a few kilobytes."""

    protocol_name = "SCGI"

    def run(self) -> None:
        try:
            with self._logging_failures():
                if self._wait_for_request():
                    self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        with self._sock.makefile("rb") as rfile, self._sock.makefile("wb") as wfile:
            environ = _parse_scgi_headers(_read_netstring(rfile, self.max_header_bytes))
            stdin = _SCGIInput(rfile, int(environ["CONTENT_LENGTH"]))
            output = _HeadersOnly(wfile) if environ["REQUEST_METHOD"] == "HEAD" else wfile
            scgi_base.Request(self, environ, stdin, output).run()
            wfile.flush()
            # The response ends at EOF: send it now, even while the unread body drains.
            self._sock.shutdown(socket.SHUT_WR)
            stdin.discard_rest(self._sock, self.drain_seconds)


class _LoopbackServer:
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
        # per-request lines. No bind address is needed (B23).
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
        return _allow_loopback(addr, self.protocol_name)

    def _sanitizeEnv(self, environ: Environ) -> None:
        """PATH_INFO percent-decoded (B8: flup's AJP took req_uri raw)."""
        mount = self._scriptname
        _fill_script_and_path(environ, environ.get("WSGI_SCRIPT_NAME") if mount is None else mount)


class SCGIServer(_LoopbackServer, scgi_base.BaseSCGIServer):  # type: ignore[misc]
    """SCGI protocol half; combine it with a process class."""

    connection_class: ClassVar[type[SCGIConnection]] = SCGIConnection
    protocol_name = "SCGI"

    def error(self, request: Any) -> None:
        _write_cgi_error(request.stdout, self.debug)


# AJP 1.3

_AJP_MAX_BODY_CHUNK = 8184
"""Data per SEND_BODY_CHUNK: 8192 minus the packet header, type, length and NUL."""


def _container_packet(data: bytes | memoryview) -> bytes:
    return b"".join((ajp_base.CONTAINER_PREFIX, struct.pack(">H", len(data)), data))


def _body_chunk(chunk: memoryview) -> bytes:
    # flup ends the chunk with a NUL the AJP spec does not mention; front ends accept it.
    return _container_packet(
        b"".join((ajp_base.PKTTYPE_SEND_BODY, struct.pack(">H", len(chunk)), chunk, b"\0"))
    )


class _AJPRequest(ajp_base.Request):  # type: ignore[misc]
    _headersSent: bool

    def run(self) -> None:
        try:
            self._conn.server.handler(self)
        except Exception:
            self.logger.exception("Exception caught from handler")
            if not self._headersSent:
                self._conn.server.error(self)
        self._conn.end_response()

    def startResponse(
        self, statusCode: int, statusMsg: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Hold SEND_HEADERS back so it goes out with the first body chunk."""
        assert not self._headersSent, "Headers already sent!"
        self._conn.hold(
            _container_packet(
                ajp_base.PKTTYPE_SEND_HEADERS
                + struct.pack(">H", statusCode)
                + ajp_base.encodeString(statusMsg)
                + struct.pack(">H", len(headers))
                + b"".join(ajp_base.encodeResponseHeader(name, value) for name, value in headers)
            )
        )
        self._headersSent = True

    def write(self, data: bytes) -> None:
        """SEND_BODY_CHUNK packets; none for HEAD (flup sent the body)."""
        if self.environ["REQUEST_METHOD"] != "HEAD":
            self._conn.send_body(data)


class AJPConnection(_Connection, ajp_base.Connection):  # type: ignore[misc]
    """One AJP connection; the front end may send many requests over it."""

    protocol_name = "AJP"
    # flup parses FORWARD_REQUEST by indexing: garbage raises IndexError and co.
    protocol_errors = (ProtocolError, ajp_base.ProtocolError, IndexError, ValueError, struct.error)

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)
        self._held: list[bytes] = []

    def run(self) -> None:
        """Requests until the front end closes; once stopping, the last answer says no reuse."""
        try:
            with self._logging_failures():
                while self._wait_for_request():
                    self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        """Read one packet and act on it; also called by a request reading its body."""
        header = _recv_exactly(self._sock, 4, "a packet header", first=True)
        if header[:2] != ajp_base.SERVER_PREFIX:
            raise ProtocolError(f"packet header {header!r} does not start with 0x1234")
        pkt = ajp_base.Packet()
        (pkt.length,) = struct.unpack(">H", header[2:])
        pkt.data = _recv_exactly(self._sock, pkt.length, "a packet") if pkt.length else b""
        if self._request is not None:
            self._processBody(pkt)
        elif not pkt.length:
            return  # lighttpd's mod_ajp13 sends an empty packet between requests (B22)
        elif pkt.data[0] == ajp_base.PKTTYPE_FWD_REQ:
            self._forwardRequest(pkt)
        elif pkt.data[0] == ajp_base.PKTTYPE_CPING:
            self._cping(pkt)
        elif pkt.data[0] not in (ajp_base.PKTTYPE_SHUTDOWN, ajp_base.PKTTYPE_PING):
            raise ProtocolError(f"unknown packet type {pkt.data[0]:#04x}")

    def hold(self, packet: bytes) -> None:
        """Keep a packet to send with the next one."""
        self._held.append(packet)

    def _send(self, data: bytes) -> None:
        if self._held:
            data = b"".join([*self._held, data])
            self._held.clear()
        self._sock.sendall(data)

    def writePacket(self, pkt: Any) -> None:
        """Header and data in one send (B10: two sends plus Nagle cost 40 ms a packet)."""
        self._send(_container_packet(pkt.data))

    def send_body(self, data: bytes) -> None:
        """SEND_BODY_CHUNK packets, a batch per send."""
        view = memoryview(data)
        step = _AJP_MAX_BODY_CHUNK
        for start in range(0, len(view), 32 * step):
            piece = view[start : start + 32 * step]
            self._send(
                b"".join(_body_chunk(piece[i : i + step]) for i in range(0, len(piece), step))
            )

    def end_response(self) -> None:
        """END_RESPONSE; reuse is off once the connection is stopping."""
        reuse = b"\x00" if self._stopping else b"\x01"
        self._send(_container_packet(ajp_base.PKTTYPE_END_RESPONSE + reuse))


class AJPServer(_LoopbackServer, ajp_base.BaseAJPServer):  # type: ignore[misc]
    """AJP 1.3 protocol half; combine it with a process class."""

    connection_class: ClassVar[type[AJPConnection]] = AJPConnection
    requestClass = _AJPRequest
    protocol_name = "AJP"

    def error(self, request: Any) -> None:
        """500, not flup's 200 (B9)."""
        content_type, body = _error_page(self.debug)
        request.startResponse(
            500,
            b"Internal Server Error",
            [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)
