"""SCGI: flup's scgi_base classes, fixed (B-numbers: the project's notes on flup)."""

from __future__ import annotations

import socket
import time
from typing import IO, Any, ClassVar

from flup.server import scgi_base

from django_runfcgi.compat.common import (
    Environ,
    LineReading,
    LoopbackServer,
    ProtocolConnection,
    ProtocolError,
    write_cgi_error,
)


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


class SCGIConnection(ProtocolConnection, scgi_base.Connection):  # type: ignore[misc]
    """One SCGI connection: one request, then close."""

    drain_seconds: ClassVar[float] = 10.0
    """How long to spend reading a request body the application left unread
    (flup.rst#scgi-unread-body)."""
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


class SCGIServer(LoopbackServer, scgi_base.BaseSCGIServer):  # type: ignore[misc]
    """SCGI protocol half; combine it with a process class."""

    connection_class: ClassVar[type[SCGIConnection]] = SCGIConnection
    protocol_name = "SCGI"

    def error(self, request: Any) -> None:
        write_cgi_error(request.stdout, self.debug)
