"""An SCGI connection: one request, then close.

flup's WSGI handler runs the application (see the gateway), and flup's request class
holds the request; running it is ours, so that a connection that failed under the
application (a client gone mid-response, a body that stalled) costs one log line, not
a traceback. The reading of the request within maxheadsize, maxheaders and readtimeout,
the body as wsgi.input, HEAD and the close without a reset are ours.
"""

from __future__ import annotations

import io
import socket
import time
from typing import IO, TYPE_CHECKING, Any, ClassVar

from flup.server import scgi_base

from django_runfcgi.protocols.base import ProtocolConnection, ProtocolError
from django_runfcgi.protocols.scgi.headers import parse_headers, read_netstring
from django_runfcgi.protocols.wsgi import LineReading, has_body

if TYPE_CHECKING:
    from typing_extensions import Buffer


class _SocketReader(io.RawIOBase):
    """The connection's socket as a raw stream to buffer: what has arrived is taken at
    once, and a wait for more keeps to the read timeout (ReadTimeout, not a short read
    that would look like the end of the input)."""

    def __init__(self, conn: SCGIConnection) -> None:
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            return self._conn._sock.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return self._conn._recv_into_blocking(view)


class _SCGIInput(LineReading):
    """wsgi.input limited to CONTENT_LENGTH that knows how much the application left unread.

    A read that fails (the body stalled past readtimeout, the connection broke) raises
    InputError; the connection closes once the application returns.
    """

    def __init__(self, rfile: IO[bytes], length: int, conn: SCGIConnection) -> None:
        self._rfile = rfile
        self.remaining = length
        self._conn = conn

    def _limit(self, size: int | None) -> int:
        return self.remaining if size is None or size < 0 else min(size, self.remaining)

    def read(self, size: int | None = -1) -> bytes:
        size = self._limit(size)
        if not size:
            return b""
        try:
            data = self._rfile.read(size)
        except (ProtocolError, OSError) as exc:
            raise self._conn._input_failed(exc) from None
        # A short read means the front end closed the connection: nothing more comes.
        self.remaining = self.remaining - size if len(data) == size else 0
        return data

    def readline(self, size: int | None = -1) -> bytes:
        size = self._limit(size)
        if not size:
            return b""
        try:
            line = self._rfile.readline(size)
        except (ProtocolError, OSError) as exc:
            raise self._conn._input_failed(exc) from None
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
        except (ProtocolError, OSError):
            pass


class _Output:
    """Response output: the CGI header block (the first write) with the status code, and
    the body, counted for the request watches and left out for HEAD. A failed write is
    kept for the connection to log once."""

    def __init__(self, wfile: IO[bytes], conn: SCGIConnection, *, head: bool) -> None:
        self._wfile = wfile
        self._conn = conn
        self._headers_only = head
        self._headers_written = False
        self.status = 0
        self.sent = 0

    def write(self, data: bytes) -> int:
        if not self._headers_written:
            self._headers_written = True
            if data.startswith(b"Status: ") and data[8:11].isdigit():
                self.status = int(data[8:11])
        elif self._headers_only:
            return len(data)
        else:
            self.sent += len(data)
        try:
            return self._wfile.write(data)
        except OSError as exc:
            self._conn.failure = self._conn.failure or exc
            raise

    def flush(self) -> None:
        try:
            self._wfile.flush()
        except OSError as exc:
            self._conn.failure = self._conn.failure or exc
            raise


class SCGIConnection(ProtocolConnection):
    """One SCGI connection: one request, then close."""

    drain_seconds: ClassVar[float] = 10.0
    """How long to spend reading a request body the application left unread
    (flup.rst#scgi-unread-body)."""

    def run(self) -> None:
        try:
            with self._logging_failures():
                if self._wait_for_request():
                    self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        bounds = self.bounds
        with io.BufferedReader(_SocketReader(self)) as rfile, self._sock.makefile("wb") as wfile:
            environ = parse_headers(read_netstring(rfile, bounds.maxheadsize), bounds.maxheaders)
            self._head_complete()
            stdin = _SCGIInput(rfile, int(environ["CONTENT_LENGTH"]), self)
            output: Any = _Output(wfile, self, head=not has_body(environ))
            self._run(scgi_base.Request(self, environ, stdin, output))
            if self.failure is not None:
                raise self.failure
            wfile.flush()
            # The response ends at EOF: send it now, even while the unread body drains.
            self._sock.shutdown(socket.SHUT_WR)
            stdin.discard_rest(self._sock, self.drain_seconds)

    def _run(self, request: Any) -> None:
        """flup's Request.run() without its per-request INFO lines, and without a
        traceback when the connection, not the application, failed (a web server that
        reset the connection mid-response): the connection logs that once."""
        try:
            self.server.handler(request)
        except Exception:
            if self.failure is None:
                request.logger.exception("Exception caught from handler")
                if not request.stdout.dataWritten:
                    self.server.error(request)
