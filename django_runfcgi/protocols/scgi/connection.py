"""An SCGI connection: one request, then close.

All of it is ours: flup's connection read the head a byte at a time through a file
object, without bounds. Here the head is read with one recv() when it has come (else
waited for within readtimeout), split from those bytes within maxheadsize and
maxheaders (headers.py), and what came after it is the start of the body. The request
(request.py) runs the application; a connection that failed under it (a client gone
mid-response, a body that stalled) costs one log line, not a traceback. A body the
application left unread is drained before the close, which then sends no reset.
"""

from __future__ import annotations

import socket
from typing import ClassVar

from django_runfcgi.protocols.accelerator import scgi_request
from django_runfcgi.protocols.base import ProtocolConnection
from django_runfcgi.protocols.scgi.headers import parse_headers, split_netstring
from django_runfcgi.protocols.scgi.request import Input, SCGIRequest

HEAD_RECV = 16384
"""What one recv() takes for a request head: a front end's head is well under this, so
one call reads it; any of the body that came with it starts wsgi.input."""


class SCGIConnection(ProtocolConnection):
    """One SCGI connection: one request, then close."""

    drain_seconds: ClassVar[float] = 10.0
    """How long to spend reading a request body the application left unread
    (flup.rst#scgi-unread-body)."""

    def run(self) -> None:
        try:
            with self._logging_failures():
                self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        sock = self._sock
        try:
            data = sock.recv(HEAD_RECV, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if not self._wait_for_request():
                return
            try:
                data = sock.recv(HEAD_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = self._recv_blocking(HEAD_RECV)
        bounds = self.bounds
        # A whole, well-formed head in C when the accelerator is on; the Python code
        # below reads anything else (more to come, malformed) and says what is wrong.
        taken = (
            None
            if scgi_request is None
            else scgi_request(data, bounds.maxheadsize, bounds.maxheaders)
        )
        if taken is not None:
            environ, body_at, length = taken
        else:
            limit = bounds.maxheadsize
            eof = not data
            while (split := split_netstring(data, limit, eof=eof)) is None:
                more = self._recv_blocking(HEAD_RECV)
                eof = not more
                data += more
            head, body_at = split
            environ = parse_headers(head, bounds.maxheaders)
            length = int(environ["CONTENT_LENGTH"])
        self._head_complete()
        stdin = Input(self, data[body_at : body_at + length], length)
        SCGIRequest(self, environ, stdin).run()
        if stdin.unreceived > 0:
            # The response ends at EOF: send it now, even while the unread body drains.
            sock.shutdown(socket.SHUT_WR)
            stdin.discard_rest(sock, self.drain_seconds)
