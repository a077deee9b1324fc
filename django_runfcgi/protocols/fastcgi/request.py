"""One FastCGI request: its body as wsgi.input, wsgi.errors, and its response framed into
records with as few sends as the response allows.

flup's request and stream classes copied a body twice more and sent a record per
write; none of them runs here.
"""

from __future__ import annotations

import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

from flup.server import fcgi_base

from django_runfcgi.protocols.accelerator import head_records, response_head
from django_runfcgi.protocols.base import InputError, ProtocolError
from django_runfcgi.protocols.fastcgi.records import decode_pairs, frame, latin1, stream_end
from django_runfcgi.protocols.wsgi import Environ, LineReading

if TYPE_CHECKING:
    from django_runfcgi.protocols.fastcgi.connection import FCGIConnection

SEND_AT = 262144
"""Non-streaming output is sent once this much is held, so memory stays bounded."""
WITH_HEADERS = 16384
"""A first body piece up to this size shares the headers' record (copying it is cheap)."""


class Input(LineReading):
    """FCGI_STDIN as wsgi.input: records are read as the application asks.

    Arrived pieces are kept as they came (views of the bytes the connection read) and
    joined once per read, the body's one copy after the kernel's; flup's stream copied
    a body twice more. Once the web server aborts the request, or the connection
    fails, a read that needs more than has arrived raises InputError.
    """

    def __init__(self, conn: FCGIConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes | memoryview] = deque()
        self._avail = 0
        self._eof = False
        self._aborted = False
        self._scanned = 0
        """How many bytes of the first pieces hold no newline (for readline)."""

    def abort(self) -> None:
        """The web server aborted the request: no more of the body will come."""
        self._aborted = True

    def _more(self) -> None:
        if not self._aborted:
            self._conn.read_input()
        if self._aborted:
            raise InputError("FastCGI request input failed: the web server aborted the request")

    def add_data(self, data: bytes | memoryview) -> None:
        if data:
            self._chunks.append(data)
            self._avail += len(data)
        else:
            self._eof = True

    def add_pieces(self, pieces: list[memoryview], size: int) -> None:
        """Several non-empty pieces of the body, `size` bytes in all."""
        self._chunks.extend(pieces)
        self._avail += size

    def _take(self, size: int) -> bytes:
        self._scanned = 0
        if size >= self._avail:
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else None
            if type(data) is not bytes:
                data = b"".join(chunks)
            chunks.clear()
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
            self._more()
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
            self._more()
        return self._take(end if limit < 0 else min(end, limit))

    def _newline_at(self) -> int | None:
        offset = 0
        chunks = self._chunks
        for at, piece in enumerate(chunks):
            chunk = piece
            if offset + len(chunk) > self._scanned:
                if type(chunk) is not bytes:
                    # A view has no find(): lines are looked for in a copy.
                    chunk = chunks[at] = bytes(chunk)
                index = chunk.find(b"\n", max(0, self._scanned - offset))
                if index >= 0:
                    return offset + index
            offset += len(chunk)
        self._scanned = offset
        return None


class _Errors:
    """wsgi.errors: FCGI_STDERR, sent with the response or when flushed."""

    pending: list[bytes] | None = None
    """What was written and not yet sent; None until the first write."""
    written = False

    def __init__(self, request: FCGIRequest) -> None:
        self._request = request

    def write(self, data: str | bytes) -> None:
        if data:
            if self.pending is None:
                self.pending = []
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

    def __init__(self, request: FCGIRequest) -> None:
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write_cgi(data)


class FCGIRequest:
    """One request: its parameters, its body as the application reads it, and its answer.

    Output is collected and sent with as few sends as the response allows: a response
    the application returned whole (a list, or Django's non-streaming HttpResponse)
    goes out as its CGI headers and body in one send, then the end of the streams and
    FCGI_END_REQUEST in another. A streaming response is sent piece by piece as the
    application yields it. A response to HEAD stops after its header block.
    """

    def __init__(self, conn: FCGIConnection, request_id: int, role: int, flags: int) -> None:
        # Every attribute is set here, none left to a class-level default: CPython 3.13
        # keeps an object's attributes inline when its __init__ sets them all, and an
        # attribute first set later (over a class default) costs each request more
        # (3,800 instructions per hello request, counted by benchmarks.instructions).
        self._conn = conn
        self.requestId = request_id
        self.role = role
        self.flags = flags
        self.server = conn.server
        self.params: Environ = {}
        self._param_records: list[bytes] = []
        self.stdin = Input(conn)
        self.stderr = _Errors(self)
        self._out: list[Any] = []
        self.aborted = False
        self.params_ended = False
        self._param_bytes = 0
        self._held = 0
        self._headers: tuple[bytes, bytes] | None = None
        self._headers_sent = False
        self._head = False
        self._add_length = False
        self.dataWritten = False
        self.sent = 0
        """Bytes of the response body written, for the request watches."""

    @property
    def stdout(self) -> _CGIOutput:
        """The response as a CGI stream written by hand (the 500 page)."""
        return _CGIOutput(self)

    # The parameters.

    def add_params(self, content: bytes, limit: int) -> None:
        """One FCGI_PARAMS record's content. The stream is decoded at its end: a pair may
        span records, as the specification allows."""
        self._param_bytes += len(content)
        if self._param_bytes > limit:
            self._param_records.clear()
            raise ProtocolError(
                f"FCGI_PARAMS of request {self.requestId} over maxheadsize={limit} bytes"
            )
        self._param_records.append(content)

    def end_params(self, limit: int) -> None:
        """The empty FCGI_PARAMS record: decode the stream, at most `limit` pairs."""
        self.params_ended = True
        records, self._param_records = self._param_records, []
        data = records[0] if len(records) == 1 else b"".join(records)
        self.params = decode_pairs(data, limit) if data else {}

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
        if response_head is not None:
            head = response_head(status, headers)
            if head is not None:
                self._headers = head
                return self.write_now
        status_bytes = latin1(status, "the status")
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
                latin1(name, "a header name") + b": " + latin1(value, "a header value") + b"\r\n"
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
        if type(data) is not bytes:
            data = latin1(data, "response data")
        if not self._head:
            self.sent += len(data)
        if not self._headers_sent:
            self._headers_sent = True
            self.dataWritten = True
            if head_records is not None and self._headers is not None:
                # In C: the header block and a small first piece, framed in one step.
                status, block = self._headers
                first = data if not self._head and len(data) <= WITH_HEADERS else b""
                length = len(data) if self._add_length else -1
                step = self._conn.record_size
                self._out.append(head_records(self.requestId, status, block, length, first, step))
                self._held += len(first)
                if data and not first and not self._head:
                    self._queue(fcgi_base.FCGI_STDOUT, data)
                if flush or self._held >= SEND_AT:
                    self.send()
                return
            header = self._header_block(len(data) if self._add_length else None)
            if self._head or not data:
                self._queue(fcgi_base.FCGI_STDOUT, header)
            elif len(data) <= WITH_HEADERS:
                # A small body goes in the headers' record: one record, not two.
                self._queue(fcgi_base.FCGI_STDOUT, header + data)
            else:
                self._queue(fcgi_base.FCGI_STDOUT, header)
                self._queue(fcgi_base.FCGI_STDOUT, data)
        elif data and not self._head:
            self._queue(fcgi_base.FCGI_STDOUT, data)
        if flush or self._held >= SEND_AT:
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
        frame(kind, self.requestId, data, self._conn.record_size, self._out)
        self._held += len(data)

    def send(self) -> None:
        """Send what is queued, with what was written to wsgi.errors."""
        out = self._take_queued()
        if out:
            self._conn.send_bytes(out)

    def _take_queued(self) -> bytes:
        errors = self.stderr.pending
        if errors:
            self.stderr.pending = None
            self._queue(fcgi_base.FCGI_STDERR, b"".join(errors))
        out, self._out, self._held = self._out, [], 0
        return b"".join(out)

    def run(self) -> None:
        """Run the application and end the request, like flup's Request.run().

        If the connection failed while the application read its body, the failure is
        raised here, once the application has returned, and nothing more is sent; after
        FCGI_ABORT_REQUEST the request ends without the application's response.
        """
        server = self.server
        conn = self._conn
        if self.role not in server.roles:
            conn.end_request(self, 0, fcgi_base.FCGI_UNKNOWN_ROLE)
            return
        try:
            server.handler(self)
        except Exception:
            # As flup: the traceback goes to the web server's error log, and a 500 page
            # to the client unless the response has begun. If the connection itself
            # failed, writing the page fails too, and the connection ends.
            if conn.failure is None and not self.aborted:
                self.stderr.write(traceback.format_exc())
                if not self._headers_sent:
                    self._headers = None
                    server.error(self)
        if conn.failure is not None:
            raise conn.failure
        if self.aborted:
            self._out, self._held, self.stderr.pending = [], 0, None
            end = stream_end(fcgi_base.FCGI_STDOUT, self.requestId)
            conn.end_request(self, 0, fcgi_base.FCGI_REQUEST_COMPLETE, end=end)
            return
        # The rest of the response goes out with the end of the request: one send, and
        # one wake-up of the web server.
        end = self._take_queued() + stream_end(fcgi_base.FCGI_STDOUT, self.requestId)
        if self.stderr.written:
            end += stream_end(fcgi_base.FCGI_STDERR, self.requestId)
        conn.end_request(self, 0, fcgi_base.FCGI_REQUEST_COMPLETE, end=end)
