"""What the three protocols' connections share: no Nagle, the stop flag, the wait for a
request, reading an exact number of bytes, and one log line per failed connection.

flup's connection classes read without bounds and let errors escape into the worker;
none of their code runs here.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from types import TracebackType
from typing import ClassVar

from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.wsgi import Gateway

logger = logging.getLogger("django_runfcgi.protocols")

IDLE_POLL_SECONDS = 0.5
"""How often an idle connection checks whether stop_when_idle() was called."""

FIRST_REQUEST_SECONDS = 2.0
"""How long a connection accepted during a stop waits for its first request."""


class ProtocolError(Exception):
    """A client sent bytes the protocol does not allow; its connection is closed."""


def peer(addr: ClientAddress) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a unix-socket client"


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


class ProtocolConnection:
    """One connection from the web server: serves its requests in ``run()``, which returns
    when the connection is done; ``stop_when_idle()`` makes it end after the request in
    progress. A broken client costs one log line and its connection, never the worker.
    """

    protocol_errors: ClassVar[tuple[type[Exception], ...]] = (ProtocolError,)

    def __init__(self, sock: socket.socket, addr: ClientAddress, server: Gateway) -> None:
        self._sock = sock
        self._addr = addr
        self.server = server
        set_nodelay(sock, addr)
        self._stopping = False
        self._first = True

    def run(self) -> None:
        raise NotImplementedError

    def stop_when_idle(self) -> None:
        """Finish the request in progress, then close instead of waiting for another."""
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
        """For ``with``: a failure is logged and ends the connection. The connection is its
        own context manager: a generator-based one cost every connection a generator and
        four calls."""
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
                self.server.name,
                peer(self._addr),
                exc,
            )
        elif isinstance(exc, OSError):
            logger.info(
                "%s connection from %s failed: %s", self.server.name, peer(self._addr), exc
            )
        else:
            logger.error(
                "%s connection from %s failed",
                self.server.name,
                peer(self._addr),
                exc_info=(type(exc), exc, tb),
            )
        return True
