"""FastCGI: flup's fcgi_base classes, fixed (B-numbers: the project's notes on flup)."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from flup.server import fcgi_base

from django_runfcgi.compat.common import (
    IDLE_POLL_SECONDS,
    ClientAddress,
    Environ,
    ProtocolConnection,
    ProtocolError,
    WSGIApplication,
    fill_script_and_path,
    ip_address_of,
    logger,
    recv_exactly,
    write_cgi_error,
)


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


class FCGIConnection(ProtocolConnection, fcgi_base.Connection):  # type: ignore[misc]
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
        header = recv_exactly(self._sock, fcgi_base.FCGI_HEADER_LEN, "a record header", first=True)
        version, kind, request_id, length, padding = struct.unpack(fcgi_base.FCGI_Header, header)
        if version != fcgi_base.FCGI_VERSION_1:
            raise ProtocolError(f"record header {header!r} is not FastCGI version 1")
        content = (
            recv_exactly(self._sock, length + padding, f"a type {kind} record")
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
        ip = ip_address_of(host.strip())
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
        fill_script_and_path(environ, self._scriptname)
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
        write_cgi_error(req.stdout, self.debug)
