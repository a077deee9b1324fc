"""What the three protocols' connections share: no Nagle, the stop flag, the wait for a
request, the read timeout, reading an exact number of bytes, and one log line per failed
connection.

flup's connection classes read without bounds or time limits and let errors escape into
the worker; none of their code runs here.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar

from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.wsgi import Bounds, Gateway
from django_runfcgi.sockets import Stream

logger = logging.getLogger("django_runfcgi.protocols")

IDLE_POLL_SECONDS = 0.5
"""How often an idle connection checks whether stop_when_idle() was called."""

FIRST_REQUEST_SECONDS = 2.0
"""How long a connection accepted during a stop waits for its first request."""


class ProtocolError(Exception):
    """A client sent bytes the protocol does not allow; its connection is closed."""


class ReadTimeout(ProtocolError):
    """A client did not send its request head, or stopped sending, within readtimeout."""


class InputError(OSError):
    """What the application's wsgi.input raises once the connection under it has failed.

    An OSError, as other servers raise when a client goes away in the middle of a body
    (Django turns it into UnreadablePostError); the connection logs the cause itself.
    """


def peer(addr: ClientAddress) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a unix-socket client"


def set_nodelay(sock: Stream, addr: ClientAddress) -> None:
    """Send small packets at once: with Nagle, every request body chunk waits 40 ms
    (flup.rst#ajp-nagle).

    A TCP client's address is a tuple, a unix-socket client's a string: that tells the
    family without reading ``sock.family``, which costs an enum lookup per connection.
    """
    if isinstance(addr, tuple):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def readable(sock: Stream, timeout: float) -> bool:
    """Whether input, or the end of the stream, comes on `sock` within `timeout` seconds
    (0: has it come already).

    poll(), not select(): select() refuses a descriptor numbered 1024 or more, which a
    threaded server with many connections (and a raised ``ulimit -n``) reaches.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    # In milliseconds, rounded up by Python; a negative time would wait for ever.
    return bool(poller.poll(max(timeout, 0.0) * 1000.0))


def set_read_timeout(sock: Stream, seconds: float) -> None:
    """Make each blocking recv() on `sock` give up after `seconds` without data.

    SO_RCVTIMEO is the kernel's: sends stay unbounded (a slow reader of a large response
    is not a stalled request), it costs nothing per read, and it holds in any code that
    reads the socket. recv() then raises BlockingIOError, which the readers here turn
    into ReadTimeout.
    """
    whole = int(seconds)
    # At least a microsecond: a timeval of zero would mean no timeout at all.
    micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)
    timeval = struct.pack("ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def recv_exactly(
    sock: Stream,
    size: int,
    what: str,
    *,
    first: bool = False,
    deadline: float | None = None,
    arm: Callable[[], None] | None = None,
) -> bytes:
    """`size` bytes; EOFError for a clean close before the `first` piece of a message.

    ReadTimeout if the client stops sending for the read timeout, or, with a `deadline`
    (a request head's), if the bytes have not all come by then. What has arrived is
    taken without waiting, so a deadline costs nothing while the client keeps up.
    `arm` is called before a read that may wait: the connection's
    ``_arm_read_timeout``, which sets the read timeout on first need.
    """
    parts = []
    received = 0
    while received < size:
        wanted = min(size - received, 262144)
        try:
            data = sock.recv(wanted, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not readable(sock, left):
                    raise ReadTimeout(f"{what} did not come whole") from None
            if arm is not None:
                arm()
            try:
                data = sock.recv(wanted)
            except BlockingIOError:
                raise ReadTimeout(f"nothing more of {what} came") from None
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

    def __init__(self, sock: Stream, addr: ClientAddress, server: Gateway) -> None:
        self._sock = sock
        self._addr = addr
        self.server = server
        self.bounds: Bounds = server.bounds
        set_nodelay(sock, addr)
        self._stopping = False
        self._first = True
        self.failure: Exception | None = None
        """What broke the connection. Found while the application reads from it, it is
        raised again once the application returns, so the connection is logged and
        closed without draining its input."""
        timeout = self.bounds.readtimeout
        self._head_deadline: float | None = None
        """When the request head now arriving must be complete; None between requests on
        a kept connection, and while a request's body is read."""
        if timeout:
            self._head_deadline = time.monotonic() + timeout

    _timeout_armed = False
    """Whether the read timeout is set on the socket: only before the first read that may
    wait (``_arm_read_timeout``)."""

    def _arm_read_timeout(self) -> None:
        """Before a read that may wait: set SO_RCVTIMEO from readtimeout, once.

        Most requests arrive whole and are read without waiting, so the system call is
        made only on first need: made for every connection, with its argument packed in
        Python, it was a tenth of the server's own instructions per request.
        """
        if not self._timeout_armed:
            self._timeout_armed = True
            if self.bounds.readtimeout:
                set_read_timeout(self._sock, self.bounds.readtimeout)

    def run(self) -> None:
        raise NotImplementedError

    def serve_ready(self) -> bool:
        """Serve the requests that have come; True if the connection is left open and idle
        (call again once its socket is readable), False once it is closed.

        A protocol that cannot leave a connection between requests serves all of it here.
        """
        self.run()
        return False

    def stop_when_idle(self) -> None:
        """Finish the request in progress, then close instead of waiting for another."""
        self._stopping = True

    def _wait_for_request(self) -> bool:
        """Wait until the client sends a request (True) or stop_when_idle() is called (False).

        The first request is waited for even during a stop: the web server connected to
        send it, and a worker that accepted the connection must not drop it (a reload or
        a stop under load would answer 502). A connection that sends nothing within
        readtimeout of its accept raises ReadTimeout; a kept connection waits between
        requests until the web server closes it or the server stops.
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
            wait = IDLE_POLL_SECONDS
            if self._head_deadline is not None:
                wait = min(wait, self._head_deadline - time.monotonic())
                if wait <= 0:
                    raise ReadTimeout("no complete request came")
            if readable(self._sock, wait):
                self._head_begins()
                return True

    def _head_begins(self) -> None:
        """A request's first bytes have come: its head must be complete within readtimeout."""
        if self._head_deadline is None and self.bounds.readtimeout:
            self._head_deadline = time.monotonic() + self.bounds.readtimeout

    def _head_complete(self) -> None:
        """The request head has come whole: from now on only stalls count."""
        self._head_deadline = None

    def _await_input(self) -> None:
        """While a head is read, wait for more of it no later than its deadline."""
        deadline = self._head_deadline
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(self._sock, left):
                raise ReadTimeout("no complete request head came")

    def _recv_blocking(self, size: int) -> bytes:
        """Up to `size` bytes that have not arrived yet: waited for until the head's
        deadline while a head is read, else until the client stalls for readtimeout."""
        self._await_input()
        self._arm_read_timeout()
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            raise ReadTimeout("the request stalled: nothing more came") from None

    def _recv_into_blocking(self, buffer: memoryview) -> int:
        """As _recv_blocking(), into `buffer`: what a buffered reader of the socket calls."""
        self._await_input()
        self._arm_read_timeout()
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            raise ReadTimeout("the request stalled: nothing more came") from None

    def _input_failed(self, exc: Exception) -> InputError:
        """Remember why reading the request failed, and what to raise in the application,
        which may catch it: the connection is closed once the application returns."""
        if self.failure is None:
            self.failure = exc
        cause = str(exc) or "the connection closed"
        return InputError(f"{self.server.name} request input failed: {cause}")

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
        if self.failure is None:
            self.failure = exc
        if isinstance(exc, EOFError):
            return True
        if isinstance(exc, ReadTimeout):
            logger.warning(
                "%s connection from %s timed out: %s within readtimeout=%gs; connection closed",
                self.server.name,
                peer(self._addr),
                exc,
                self.bounds.readtimeout,
            )
        elif isinstance(exc, self.protocol_errors):
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
