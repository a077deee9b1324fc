"""FastCGI: flup's fcgi_base classes, fixed (B-numbers: the project's notes on flup)."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
import traceback
from collections import deque
from typing import Any, ClassVar

from flup.server import fcgi_base

from django_runfcgi.compat.common import (
    IDLE_POLL_SECONDS,
    ClientAddress,
    Environ,
    LineReading,
    ProtocolConnection,
    ProtocolError,
    WSGIApplication,
    fill_script_and_path,
    ip_address_of,
    logger,
    recv_exactly,
    write_cgi_error,
)

try:
    from django_runfcgi import _speedups
except ImportError:  # Installed without a compiler: Python reads every record.
    _speedups = None  # type: ignore[assignment]

_read_request = (
    None
    if _speedups is None or os.environ.get("RUNFCGI_PURE_PYTHON", "0") != "0"
    else _speedups.read_request
)
"""The C accelerator's reader of a whole request, if built and not turned off."""

_HEADER = struct.Struct("!BBHHBx")
_END_REQUEST_BODY = struct.Struct(fcgi_base.FCGI_EndRequestBody)
_PADDING = bytes(8)
_RECV_SIZE = 65536
_SEND_AT = 262144
"""Non-streaming output is sent once this much is held, so memory stays bounded."""
_WITH_HEADERS = 16384
"""A first body piece up to this size shares the headers' record (copying it is cheap)."""


def _decode_pairs(data: bytes) -> dict[str, str]:
    """The name-value pairs of one FCGI_PARAMS record, in one pass; flup's decoder raised
    IndexError or struct.error on a pair cut short.

    This runs for some thirty pairs per request, so it is written for speed: the record
    is decoded once (in latin-1 a byte is a character, so names and values are slices
    of that text at the byte offsets), pairs with two one-byte lengths take the short
    path, and a pair that overruns the record is caught once, after the loop.
    """
    pairs = {}
    text = data.decode("latin-1")
    pos, end = 0, len(data)
    name_length = value_length = 0
    try:
        while pos < end:
            name_length = data[pos]
            value_length = data[pos + 1]
            if name_length < 128 and value_length < 128:
                value_at = pos + 2 + name_length
            else:
                if name_length < 128:
                    pos += 1
                else:
                    name_length = int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF
                    pos += 4
                value_length = data[pos]
                if value_length < 128:
                    pos += 1
                else:
                    value_length = int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF
                    pos += 4
                value_at = pos + name_length
            pos = value_at + value_length
            pairs[text[value_at - name_length : value_at]] = text[value_at:pos]
    except IndexError:
        raise ProtocolError("name-value pair cut short in its length") from None
    if pos > end:
        raise ProtocolError(
            f"name-value pair of {name_length}+{value_length} bytes overruns its {end}-byte record"
        )
    return pairs


def _frame(kind: int, request_id: int, data: bytes, step: int, out: list[Any]) -> None:
    """Append `data` to `out` as records of at most `step` bytes, ready for one join."""
    if len(data) <= step:
        padding = -len(data) % 8
        out.append(_HEADER.pack(1, kind, request_id, len(data), padding))
        out.append(data)
        if padding:
            out.append(_PADDING[:padding])
        return
    view = memoryview(data)
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        padding = -len(piece) % 8
        out.append(_HEADER.pack(1, kind, request_id, len(piece), padding))
        out.append(piece)
        if padding:
            out.append(_PADDING[:padding])


def _fcgi_record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    out: list[Any] = []
    _frame(kind, request_id, content, 65535, out)
    return b"".join(out)


def _latin1(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


class _Input(LineReading):
    """FCGI_STDIN (or FCGI_DATA) as wsgi.input: records are read as the application asks.

    Arrived pieces are kept as they came and joined once per read; flup's stream
    copied a body twice more.
    """

    def __init__(self, conn: FCGIConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._avail = 0
        self._eof = False
        self._scanned = 0
        """How many bytes of the first pieces hold no newline (for readline)."""

    def add_data(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._avail += len(data)
        else:
            self._eof = True

    def _take(self, size: int) -> bytes:
        self._scanned = 0
        if size >= self._avail:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._avail = 0
            return data
        parts = []
        need = size
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                parts.append(self._chunks.popleft())
                need -= len(chunk)
            else:
                parts.append(chunk[:need])
                self._chunks[0] = chunk[need:]
                need = 0
        self._avail -= size
        return b"".join(parts)

    def read(self, size: int | None = -1) -> bytes:
        while not self._eof and (size is None or size < 0 or self._avail < size):
            self._conn.process_input()
        return self._take(self._avail if size is None or size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        while True:
            found = self._newline_at()
            if found is not None:
                end = found + 1
                break
            if self._eof or 0 <= limit <= self._avail:
                end = self._avail
                break
            self._conn.process_input()
        return self._take(end if limit < 0 else min(end, limit))

    def _newline_at(self) -> int | None:
        offset = 0
        for chunk in self._chunks:
            if offset + len(chunk) > self._scanned:
                index = chunk.find(b"\n", max(0, self._scanned - offset))
                if index >= 0:
                    return offset + index
            offset += len(chunk)
        self._scanned = offset
        return None


class _Errors:
    """wsgi.errors: FCGI_STDERR, sent with the response or when flushed."""

    def __init__(self, request: _FCGIRequest) -> None:
        self._request = request
        self.pending: list[bytes] = []
        self.written = False

    def write(self, data: str | bytes) -> None:
        if data:
            self.pending.append(data.encode() if isinstance(data, str) else data)
            self.written = True

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.pending:
            self._request.send()


class _CGIOutput:
    """FCGI_STDOUT as a CGI response for writing by hand: the first write is the header
    block (the 500 page); a response to HEAD stops after it."""

    def __init__(self, request: _FCGIRequest) -> None:
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write_cgi(data)


class _FCGIRequest:
    """One request: its parameters, its body as the application reads it, and its answer.

    Output is collected and sent with as few sends as the response allows: a response
    the application returned whole (a list, or Django's non-streaming HttpResponse)
    goes out as its CGI headers and body in one send, then the end of the streams and
    FCGI_END_REQUEST in another. A streaming response is sent piece by piece as the
    application yields it. A response to HEAD stops after its header block.
    """

    def __init__(self, conn: FCGIConnection, request_id: int, role: int, flags: int) -> None:
        self._conn = conn
        self.requestId = request_id
        self.role = role
        self.flags = flags
        self.aborted = False
        self.server = conn.server
        self.params: Environ = {}
        self.stdin = _Input(conn)
        # FCGI_DATA comes only in the Filter role, which front ends do not use.
        self.data: _Input | None = None
        self.stdout = _CGIOutput(self)
        self.stderr = _Errors(self)
        self._out: list[Any] = []
        self._held = 0
        self._headers: tuple[bytes, bytes] | None = None
        self._headers_sent = False
        self._head = False
        self._add_length = False
        self.dataWritten = False

    # The response.

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        if exc_info:
            try:
                if self._headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._headers is not None:
            raise AssertionError("start_response() called twice without exc_info")
        status_bytes = _latin1(status, "the status")
        if len(status_bytes) < 4 or not status_bytes[:3].isdigit() or status_bytes[3] != 0x20:
            raise ValueError(f"status {status!r} is not a 3-digit code, a space and a reason")
        if type(headers) is not list:
            raise TypeError("response headers must be a list")
        try:
            # Native strings, as WSGI asks and Django gives: one join and one encode.
            lines = "".join([name + ": " + value + "\r\n" for name, value in headers])
            block = lines.encode("latin-1")
        except (TypeError, UnicodeEncodeError):
            block = b"".join(
                _latin1(name, "a header name") + b": " + _latin1(value, "a header value") + b"\r\n"
                for name, value in headers
            )
        self._headers = (status_bytes, block)
        return self.write_now

    def _header_block(self, body_length: int | None) -> bytes:
        if self._headers is None:
            raise AssertionError("write() before start_response()")
        status, block = self._headers
        length = b""
        if body_length is not None and b"\ncontent-length:" not in b"\n" + block.lower():
            length = b"Content-Length: %d\r\n" % body_length
        return b"Status: " + status + b"\r\n" + block + length + b"\r\n"

    def write(self, data: bytes | str, *, flush: bool = False) -> None:
        """Queue response output; with `flush`, send it and what was queued before."""
        data = _latin1(data, "response data")
        if not self._headers_sent:
            self._headers_sent = True
            self.dataWritten = True
            header = self._header_block(len(data) if self._add_length else None)
            if self._head or not data:
                self._queue(fcgi_base.FCGI_STDOUT, header)
            elif len(data) <= _WITH_HEADERS:
                # A small body goes in the headers' record: one record, not two.
                self._queue(fcgi_base.FCGI_STDOUT, header + data)
            else:
                self._queue(fcgi_base.FCGI_STDOUT, header)
                self._queue(fcgi_base.FCGI_STDOUT, data)
        elif data and not self._head:
            self._queue(fcgi_base.FCGI_STDOUT, data)
        if flush or self._held >= _SEND_AT:
            self.send()

    def write_cgi(self, data: bytes) -> None:
        if not self._headers_sent:
            self._headers_sent = self.dataWritten = True
            self._queue(fcgi_base.FCGI_STDOUT, data)
        elif data and not self._head:
            self._queue(fcgi_base.FCGI_STDOUT, data)

    def write_now(self, data: bytes) -> None:
        """The write() callable start_response() returns: sent at once (WSGI)."""
        if data:
            self.write(data, flush=True)

    def _queue(self, kind: int, data: bytes) -> None:
        _frame(kind, self.requestId, data, self._conn.record_size, self._out)
        self._held += len(data)

    def send(self) -> None:
        """Send what is queued, with what was written to wsgi.errors."""
        out = self._take_queued()
        if out:
            self._conn.send_bytes(out)

    def _take_queued(self) -> bytes:
        errors = self.stderr.pending
        if errors:
            self.stderr.pending = []
            self._queue(fcgi_base.FCGI_STDERR, b"".join(errors))
        out, self._out, self._held = self._out, [], 0
        return b"".join(out)

    def run(self) -> None:
        """Run the application and end the request, like flup's Request.run()."""
        server = self.server
        if self.role not in server.roles:
            self._conn.end_request(self, 0, fcgi_base.FCGI_UNKNOWN_ROLE)
            return
        try:
            server.handler(self)
        except Exception:
            # As flup: the traceback goes to the web server's error log, and a 500 page
            # to the client unless the response has begun. If the connection itself
            # failed, writing the page fails too, and the connection ends.
            self.stderr.write(traceback.format_exc())
            if not self._headers_sent:
                self._headers = None
                server.error(self)
        # The rest of the response goes out with the end of the request: one send, and
        # one wake-up of the web server.
        end = self._take_queued() + _HEADER.pack(1, fcgi_base.FCGI_STDOUT, self.requestId, 0, 0)
        if self.stderr.written:
            end += _HEADER.pack(1, fcgi_base.FCGI_STDERR, self.requestId, 0, 0)
        self._conn.end_request(self, 0, fcgi_base.FCGI_REQUEST_COMPLETE, end=end)


class FCGIConnection(ProtocolConnection, fcgi_base.Connection):  # type: ignore[misc]
    """One FastCGI connection from the web server; one request at a time.

    Input is read in large pieces and split into records from a buffer: a request
    with its parameters and empty body usually arrives in one recv().
    """

    close_wait_seconds: ClassVar[float] = 10.0
    """With input left unread after the last request, how long to wait for the front end
    to close its side. flup waited forever, pinning a worker to a front end that never
    closed (flup.rst#stop-signals)."""

    protocol_name = "FastCGI"

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)
        self._closed = False
        self._input_ended = False
        self._drained = False
        self._buffer = b""
        self._pos = 0
        self.record_size = server.maxwrite - fcgi_base.FCGI_HEADER_LEN

    def run(self) -> None:
        self._keepGoing = True
        try:
            with self._logging_failures():
                while self._keepGoing:
                    if not self._requests:
                        if not self._wait_for_request():
                            break
                        if self._start_request():
                            continue
                    self.process_input()
        finally:
            self._cleanupSocket()

    def _wait_for_request(self) -> bool:
        """A request already read, or one the front end sent before we looked, starts at
        once; otherwise wait as every protocol does."""
        if self._pos < len(self._buffer) or self._fill(block=False):
            self._first = False
            return True
        if not super()._wait_for_request():
            return False
        # Read what came, so that a request that arrived whole is read in one step.
        self._fill(block=True, at_start=True)
        return True

    def _start_request(self) -> bool:
        """Run a request whose records have all arrived, read in one step (in C); False
        if the accelerator is off or the records are anything but the common case, which
        are then read one by one."""
        if _read_request is None:
            return False
        found = _read_request(self._buffer, self._pos)
        if found is None:
            return False
        self._pos, request_id, role, flags, params, body_ended = found
        req = _FCGIRequest(self, request_id, role, flags)
        req.params = params
        if body_ended:
            req.stdin.add_data(b"")
        self._requests[request_id] = req
        req.run()
        return True

    def _fill(self, *, block: bool, at_start: bool = False) -> bool:
        """Read more input into the buffer; without `block`, False if none has come."""
        try:
            data = self._sock.recv(_RECV_SIZE, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        # A short read took all the kernel held: nothing is left unread (see _cleanupSocket).
        self._drained = len(data) < _RECV_SIZE
        if not data:
            if not block:
                self._input_ended = True
                return False
            if at_start:
                raise EOFError
            raise ProtocolError("connection closed inside a record")
        if self._pos < len(self._buffer):
            self._buffer = self._buffer[self._pos :] + data
        else:
            self._buffer = data
        self._pos = 0
        return True

    def _next_record(self, *, block: bool = True) -> tuple[int, int, bytes] | None:
        """The next record's type, request id and content; without `block`, None if it
        has not fully arrived."""
        while len(self._buffer) - self._pos < fcgi_base.FCGI_HEADER_LEN:
            if not self._fill(block=block, at_start=self._pos == len(self._buffer)):
                return None
        version, kind, request_id, length, padding = _HEADER.unpack_from(self._buffer, self._pos)
        if version != fcgi_base.FCGI_VERSION_1:
            header = self._buffer[self._pos : self._pos + fcgi_base.FCGI_HEADER_LEN]
            raise ProtocolError(f"record header {header!r} is not FastCGI version 1")
        total = fcgi_base.FCGI_HEADER_LEN + length + padding
        missing = total - (len(self._buffer) - self._pos)
        if block and missing > _RECV_SIZE:
            # Most of a large record is still to come: read it straight, not via the buffer.
            rest = recv_exactly(self._sock, missing, f"a type {kind} record")
            self._drained = False
            content = (self._buffer[self._pos + fcgi_base.FCGI_HEADER_LEN :] + rest)[:length]
            self._buffer, self._pos = b"", 0
            return kind, request_id, content
        while len(self._buffer) - self._pos < total:
            if not self._fill(block=block):
                return None
        start = self._pos + fcgi_base.FCGI_HEADER_LEN
        self._pos += total
        return kind, request_id, self._buffer[start : start + length]

    def process_input(self) -> None:
        """Read one record and act on it; also called by a request reading its body."""
        record = self._next_record()
        assert record is not None, "a blocking read returns a record"
        self._dispatch(*record)

    def _dispatch(self, kind: int, request_id: int, content: bytes) -> None:
        if kind == fcgi_base.FCGI_STDIN:
            req = self._requests.get(request_id)
            if req is not None:
                req.stdin.add_data(content)
        elif kind == fcgi_base.FCGI_PARAMS:
            req = self._requests.get(request_id)
            if req is None:
                return
            if content:
                req.params.update(_decode_pairs(content))
            else:
                req.run()
        elif kind == fcgi_base.FCGI_BEGIN_REQUEST:
            if len(content) != struct.calcsize(fcgi_base.FCGI_BeginRequestBody):
                raise ProtocolError(f"FCGI_BEGIN_REQUEST body of {len(content)} bytes, not 8")
            role, flags = struct.unpack(fcgi_base.FCGI_BeginRequestBody, content)
            req = _FCGIRequest(self, request_id, role, flags)
            if self._requests:
                self.end_request(req, 0, fcgi_base.FCGI_CANT_MPX_CONN, remove=False)
            else:
                self._requests[request_id] = req
        elif kind == fcgi_base.FCGI_GET_VALUES:
            self._do_get_values(content)
        elif kind == fcgi_base.FCGI_ABORT_REQUEST:
            req = self._requests.get(request_id)
            if req is not None:
                req.aborted = True
        elif kind == fcgi_base.FCGI_DATA:
            req = self._requests.get(request_id)
            if req is not None:
                if req.data is None:
                    req.data = _Input(self)
                req.data.add_data(content)
        elif request_id == fcgi_base.FCGI_NULL_REQUEST_ID:
            body = struct.pack(fcgi_base.FCGI_UnknownTypeBody, kind)
            self.send_bytes(_fcgi_record(fcgi_base.FCGI_UNKNOWN_TYPE, 0, body))

    def _do_get_values(self, content: bytes) -> None:
        reply = b""
        for name in _decode_pairs(content):
            value = self.server.capability.get(name)
            if value is not None:
                reply += fcgi_base.encode_pair(name.encode("latin-1"), str(value).encode())
        self.send_bytes(_fcgi_record(fcgi_base.FCGI_GET_VALUES_RESULT, 0, reply))

    def send_bytes(self, data: bytes) -> None:
        self._sock.sendall(data)

    def writeRecord(self, rec: Any) -> None:
        """One send per record: header, content and padding together."""
        self.send_bytes(_fcgi_record(rec.type, rec.requestId, rec.contentData))

    def end_request(
        self,
        req: Any,
        appStatus: int = 0,
        protocolStatus: int = fcgi_base.FCGI_REQUEST_COMPLETE,
        remove: bool = True,
        end: bytes = b"",
    ) -> None:
        # Eight bytes of body: a whole record with no padding.
        record = _HEADER.pack(1, fcgi_base.FCGI_END_REQUEST, req.requestId, 8, 0)
        self.send_bytes(end + record + _END_REQUEST_BODY.pack(appStatus, protocolStatus))
        if remove:
            self._requests.pop(req.requestId, None)
        if not (req.flags & fcgi_base.FCGI_KEEP_CONN) and not self._requests:
            self._cleanupSocket(req)
            self._keepGoing = False

    def _rest_of_input(self, req: Any) -> bool | None:
        """Whether the front end has sent all it will for `req`, reading what has come;
        None if something other than its body came, which ends the reading.

        The end of a request's body (an empty FCGI_STDIN record) usually arrives with its
        parameters, or was read by the application; body records it left unread are read
        and dropped here, as far as they have arrived.
        """
        if req.stdin._eof:
            return True
        while True:
            record = self._next_record(block=False)
            if record is None:
                return False
            kind, request_id, content = record
            if kind != fcgi_base.FCGI_STDIN or request_id != req.requestId:
                return None
            if not content:
                return True

    def _nothing_unread(self) -> bool:
        """Whether no input waits in the kernel, so that closing resets nothing.

        The front end sends nothing after a request's body without FCGI_KEEP_CONN: when
        the last read took all there was, there is no need to ask again.
        """
        return self._drained or not select.select([self._sock], [], [], 0)[0]

    def _cleanupSocket(self, req: Any = None) -> None:
        """Close at once if the front end has sent all its input for `req`, else drain it
        first.

        Closing over unread input (e.g. a body the application ignored) would reset the
        connection and could cut the response short, so then the input is read until the
        rest of the body has come (or, if anything else comes, the front end closes its
        side), for a bounded time; when stopping, only what has arrived is read. When all
        input has been read the response is already queued in full, and a plain close
        delivers it, then the end of the stream: waiting for the front end to close first
        cost every request a round trip to it, and pinned the worker to a front end that
        kept its side open.
        """
        if self._closed:
            return
        self._closed = True
        try:
            pending = None if req is None else self._rest_of_input(req)
            if pending and self._nothing_unread():
                return
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.close_wait_seconds
            while True:
                remaining = 0.0 if self._stopping else deadline - time.monotonic()
                wait = min(max(remaining, 0.0), IDLE_POLL_SECONDS)
                if select.select([self._sock], [], [], wait)[0]:
                    if pending is False:
                        # The body's end may come after the response: read records to it.
                        pending = self._rest_of_input(req)
                        if self._input_ended:
                            break
                        if pending and self._nothing_unread():
                            break
                    elif not self._sock.recv(65536):
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
        """FCGI_WEB_SERVER_ADDRS limits TCP clients; unix-socket clients always pass
        (flup.rst#unix-web-server-addrs)."""
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

    def handler(self, req: _FCGIRequest) -> None:
        """Run the application for one request and write its response.

        The prefork master's request timing (requesttimeout) wraps this method, not the
        application, so the response the application returns is seen as it is.
        """
        environ = req.params
        if self.environ:
            environ.update(self.environ)
        environ["wsgi.version"] = (1, 0)
        environ["wsgi.input"] = req.stdin
        environ["wsgi.errors"] = req.stderr
        environ["wsgi.multithread"] = self.multithreaded
        environ["wsgi.multiprocess"] = self.multiprocess
        environ["wsgi.run_once"] = False
        environ["wsgi.url_scheme"] = (
            "https" if environ.get("HTTPS", "off") in ("on", "1") else "http"
        )
        self._sanitizeEnv(environ)
        req._head = environ["REQUEST_METHOD"] == "HEAD"
        lock = None if self.multithreaded else self._appLock
        if lock is not None:
            lock.acquire()
        try:
            result = self.application(environ, req.start_response)
            try:
                # A one-item list or tuple gets a Content-Length; Django's responses have
                # no len(), and trying it raised an exception per request.
                sequence = isinstance(result, (list, tuple))
                whole = sequence or getattr(result, "streaming", None) is False
                req._add_length = sequence and len(result) == 1
                for data in result:
                    if data:
                        req.write(data, flush=not whole)
                if not req._headers_sent:
                    req.write(b"")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            if lock is not None:
                lock.release()

    def error(self, req: Any) -> None:
        write_cgi_error(req.stdout, self.debug)
