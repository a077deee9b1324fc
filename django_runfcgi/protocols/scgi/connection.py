"""An SCGI connection: one request, then close.

flup's request class (scgi_base.Request) runs the request, and flup's WSGI handler the
application (see the gateway); the reading of the request, the body as wsgi.input, HEAD
and the close without a reset are ours.
"""

from __future__ import annotations

import socket
import time
from typing import IO, ClassVar

from flup.server import scgi_base

from django_runfcgi.protocols.base import ProtocolConnection
from django_runfcgi.protocols.scgi.headers import parse_headers, read_netstring
from django_runfcgi.protocols.wsgi import LineReading, has_body


class _SCGIInput(LineReading):
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

    def discard_rest(self, sock: socket.socket, seconds: float) -> None:
        """Read and drop the unread body, within `seconds`.

        Closing a socket with unread input sends a reset, and the front end loses the
        response (Apache 503 always, nginx 502 often, on a 50 MB POST:
        flup.rst#scgi-unread-body).
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


class _Response:
    """Response output: the CGI header block (the first write) with the status code, and
    the body, counted for the request watches and left out for HEAD."""

    def __init__(self, wfile: IO[bytes], body: bool) -> None:
        self._wfile = wfile
        self._body = body
        self._headers_written = False
        self.status = 0
        self.sent = 0

    def write(self, data: bytes) -> int:
        if not self._headers_written:
            self._headers_written = True
            if data.startswith(b"Status: ") and data[8:11].isdigit():
                self.status = int(data[8:11])
            self._wfile.write(data)
        elif self._body:
            self.sent += len(data)
            self._wfile.write(data)
        return len(data)

    def flush(self) -> None:
        self._wfile.flush()


class SCGIConnection(ProtocolConnection):
    """One SCGI connection: one request, then close."""

    drain_seconds: ClassVar[float] = 10.0
    """How long to spend reading a request body the application left unread
    (flup.rst#scgi-unread-body)."""
    max_header_bytes: ClassVar[int] = 1 << 20
    """Larger SCGI headers are refused: front ends send a few kilobytes."""

    def run(self) -> None:
        try:
            with self._logging_failures():
                if self._wait_for_request():
                    self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        with self._sock.makefile("rb") as rfile, self._sock.makefile("wb") as wfile:
            environ = parse_headers(read_netstring(rfile, self.max_header_bytes))
            stdin = _SCGIInput(rfile, int(environ["CONTENT_LENGTH"]))
            output = _Response(wfile, has_body(environ))
            scgi_base.Request(self, environ, stdin, output).run()
            wfile.flush()
            # The response ends at EOF: send it now, even while the unread body drains.
            self._sock.shutdown(socket.SHUT_WR)
            stdin.discard_rest(self._sock, self.drain_seconds)
