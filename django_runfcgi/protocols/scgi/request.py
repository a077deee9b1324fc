"""One SCGI request: its body as wsgi.input, and its response sent with as few sends as
the response allows.

flup's Request, StdoutWrapper and WSGI handler wrote a response through a buffered file
made per request, flushed after every piece; none of them runs here (see the gateway).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from flup.server import scgi_base

from django_runfcgi.protocols.accelerator import cgi_response, response_head
from django_runfcgi.protocols.base import ProtocolError
from django_runfcgi.protocols.wsgi import Environ, LineReading
from django_runfcgi.sockets import Stream

if TYPE_CHECKING:
    from django_runfcgi.protocols.scgi.connection import SCGIConnection

logger = logging.getLogger(scgi_base.LoggerName)
"""flup's SCGI logger, as before: a project's LOGGING for it still applies."""

SEND_AT = 262144
"""Non-streaming output is sent once this much is held, so memory stays bounded."""
JOIN_UP_TO = 16384
"""Held pieces up to this size in all are joined and sent with send(); larger ones go
in one sendmsg() without being copied."""
MAX_PARTS = 64
"""More held pieces than this are joined: sendmsg() takes at most IOV_MAX (1024)."""
RECV_SIZE = 65536
"""How much of the body one recv() takes for readline() and for draining."""


def latin1(data: bytes | str, what: str) -> bytes:
    """`data` as bytes; a str must be latin-1, as WSGI asks."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        try:
            return data.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{what} {data!r} is not latin-1") from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, not {type(data).__name__}")


class Input(LineReading):
    """wsgi.input limited to CONTENT_LENGTH, read from the socket as the application asks.

    What came with the head is served first; a larger read is received straight into
    one buffer of its size (recv_into, no pieces to join). A blocking recv() returns
    what has arrived, and gives up after readtimeout of silence (SO_RCVTIMEO). A read
    that fails (the body stalled past readtimeout, the connection broke) raises
    InputError; the connection closes once the application returns.
    """

    def __init__(self, conn: SCGIConnection, arrived: bytes, length: int) -> None:
        self._conn = conn
        self._buf = arrived
        self._pos = 0
        self.unreceived = length - len(arrived)
        """Bytes of the body still to come from the socket."""

    def _left(self) -> int:
        return len(self._buf) - self._pos + self.unreceived

    def read(self, size: int | None = -1) -> bytes:
        left = self._left()
        size = left if size is None or size < 0 else min(size, left)
        if not size:
            return b""
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        if size <= have:
            self._pos = pos + size
            return buf if size == len(buf) else buf[pos : pos + size]
        out = bytearray(size)
        out[:have] = memoryview(buf)[pos:]
        self._buf, self._pos = b"", 0
        view = memoryview(out)
        got = have
        conn = self._conn
        try:
            while got < size:
                received = conn._recv_into_blocking(view[got:])
                if not received:
                    # The front end closed the connection: nothing more comes.
                    self.unreceived = 0
                    return bytes(view[:got])
                got += received
                self.unreceived -= received
        except (ProtocolError, OSError) as exc:
            raise conn._input_failed(exc) from None
        finally:
            view.release()
        return bytes(out)

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._left() if size is None or size < 0 else min(size, self._left())
        while True:
            buf, pos = self._buf, self._pos
            found = buf.find(b"\n", pos, pos + limit)
            if found >= 0:
                end = found + 1
                break
            if len(buf) - pos >= limit or not self.unreceived:
                end = pos + min(limit, len(buf) - pos)
                break
            try:
                more = self._conn._recv_blocking(min(self.unreceived, RECV_SIZE))
            except (ProtocolError, OSError) as exc:
                raise self._conn._input_failed(exc) from None
            if not more:
                self.unreceived = 0
            self.unreceived -= len(more)
            self._buf, self._pos = buf[pos:] + more, 0
        self._pos = end
        return buf[pos:end]

    def discard_rest(self, sock: Stream, seconds: float) -> None:
        """Read and drop the unread body, within `seconds`.

        Closing a socket with unread input sends a reset, and the front end loses the
        response (Apache 503 always, nginx 502 often, on a 50 MB POST:
        flup.rst#scgi-unread-body).
        """
        self._buf, self._pos = b"", 0
        deadline = time.monotonic() + seconds
        scratch = bytearray(262144)
        try:
            while self.unreceived > 0 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                received = sock.recv_into(scratch, min(self.unreceived, len(scratch)))
                if not received:
                    break
                self.unreceived -= received
        except OSError:
            pass


class _CGIOutput:
    """The response as a CGI stream written by hand (the 500 page): the first write is
    the header block; a response to HEAD stops after it."""

    def __init__(self, request: SCGIRequest) -> None:
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write_cgi(data)


class SCGIRequest:
    """One request: its headers as environ, its body as wsgi.input, and its answer.

    A response the application returned whole (a list, or Django's non-streaming
    HttpResponse) goes out as its CGI headers and body in one send; a streaming one
    is sent piece by piece as the application yields it. A response to HEAD stops after
    its header block. ``status`` and ``sent`` (bytes of the body) are what the request
    watches report.
    """

    def __init__(self, conn: SCGIConnection, environ: Environ, stdin: Input) -> None:
        self._conn = conn
        self.environ = environ
        self.stdin = stdin
        self._head = False
        self._add_length = False
        self._headers: tuple[bytes, bytes] | None = None
        self._headers_sent = False
        self._out: list[bytes] = []
        self._held = 0
        self.dataWritten = False
        self.status = 0
        self.sent = 0

    @property
    def stdout(self) -> _CGIOutput:
        """The response as a CGI stream, for the 500 page (made only when needed)."""
        return _CGIOutput(self)

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
            # In C, for ASCII status and headers: the same bytes as below, checked alike.
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
            block = "".join([name + ": " + value + "\r\n" for name, value in headers]).encode(
                "latin-1"
            )
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
        self.status = int(status[:3])
        length = b""
        if body_length is not None and b"\ncontent-length:" not in b"\n" + block.lower():
            length = b"Content-Length: %d\r\n" % body_length
        return b"Status: " + status + b"\r\n" + block + length + b"\r\n"

    def write(self, data: bytes | str, *, flush: bool = False) -> None:
        """Hold response output; with `flush`, send it and what was held before."""
        if type(data) is not bytes:
            data = latin1(data, "response data")
        if not self._headers_sent:
            self._headers_sent = self.dataWritten = True
            if cgi_response is not None and self._headers is not None and len(data) <= JOIN_UP_TO:
                # In C: the header block and a small first piece, joined in one step.
                status, block = self._headers
                self.status = int(status[:3])
                length = len(data) if self._add_length else -1
                first = b"" if self._head else data
                self.sent += len(first)
                self._hold(cgi_response(status, block, length, first))
                data = b""  # Held with the head.
            else:
                self._hold(self._header_block(len(data) if self._add_length else None))
        if data and not self._head:
            self.sent += len(data)
            self._hold(data)
        if flush or self._held >= SEND_AT:
            self.send()

    def write_now(self, data: bytes) -> None:
        """The write() callable start_response() returns: sent at once (WSGI)."""
        if data:
            self.write(data, flush=True)

    def write_cgi(self, data: bytes) -> None:
        if not self._headers_sent:
            self._headers_sent = self.dataWritten = True
            if data.startswith(b"Status: ") and data[8:11].isdigit():
                self.status = int(data[8:11])
            self._hold(data)
        elif data and not self._head:
            self.sent += len(data)
            self._hold(data)

    def _hold(self, data: bytes) -> None:
        self._out.append(data)
        self._held += len(data)

    def send(self) -> None:
        """Send what is held: one send(), or one sendmsg() for large pieces."""
        out, held = self._out, self._held
        if not out:
            return
        self._out, self._held = [], 0
        conn = self._conn
        try:
            if len(out) == 1:
                conn._sock.sendall(out[0])
            elif held <= JOIN_UP_TO or len(out) > MAX_PARTS:
                conn._sock.sendall(b"".join(out))
            else:
                _sendmsg_all(conn._sock, out, held)
        except OSError as exc:
            conn.failure = conn.failure or exc
            raise

    def end(self) -> None:
        """The response is complete: the header block if nothing was written, then send."""
        if not self._headers_sent:
            self.write(b"")
        self.send()

    def run(self) -> None:
        """Run the application, like flup's Request.run() without its per-request INFO
        lines, and without a traceback when the connection, not the application, failed
        (a web server that reset the connection mid-response): the connection logs that
        once. If the connection failed, that failure is raised here."""
        conn = self._conn
        try:
            conn.server.handler(self)
        except Exception:
            if conn.failure is None:
                logger.exception("Exception caught from handler")
                if not self.dataWritten:
                    self._headers = None
                    self._out, self._held = [], 0
                    conn.server.error(self)
                    self.send()
        if conn.failure is not None:
            raise conn.failure


def _sendmsg_all(sock: Stream, parts: list[bytes], total: int) -> None:
    """Send `parts` in one system call where the kernel takes them all (a blocking
    socket does unless a signal interrupts it), without joining them."""
    sent = sock.sendmsg(parts)
    if sent < total:
        sock.sendall(memoryview(b"".join(parts))[sent:])
