"""A prefork worker: built by the master before fork(), run only in the child.

The master never has to undo its own state in a worker: the worker has its own signal
queue, its own stop flag and its own loop. It accepts and serves connections until it
is told to stop, its master goes away, or it has served ``maxrequests`` requests, and
it leaves through os._exit() whatever happens: flup's workers raised SystemExit, or
their job's exception, into the master's code, whose finally blocks and atexit hooks
then ran in every worker.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, NoReturn

from django_runfcgi.protocols import Connection, ServedProtocol
from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.sockets import Acceptor
from django_runfcgi.workers import Limits, stop_when_idle
from django_runfcgi.workers.hooks import Hooks
from django_runfcgi.workers.prefork.recycling import Recycling
from django_runfcgi.workers.prefork.scoreboard import BUSY, IDLE, Scoreboard
from django_runfcgi.workers.signals import INTENTS, WORKER_SIGNALS, Intent, SignalQueue

if TYPE_CHECKING:
    from django_runfcgi.slowlog import SlowLog

logger = logging.getLogger("django_runfcgi.workers")

# What a worker tells the master, one byte at a time: that the pool has to change (the
# scoreboard says how), and (with a request timeout) when each request begins and ends.
POOL_CHANGES = b"\x00"
REQUEST_BEGINS = b"\x01"
REQUEST_ENDS = b"\x02"
# With a status page: every worker the pool may have is busy (the master samples the
# listen queue for max_children_reached); sent only while the master does not know it.
POOL_FULL = b"\x03"

DUMP_SIGNAL = signal.SIGUSR2
"""A worker past its request timeout gets this signal, which makes it write where it is
stuck to standard error; the master kills it soon after."""

NOTIFY_TIMEOUT = 5.0
"""A worker that cannot tell the master its state in this time takes it for gone."""


def flush_stdio() -> None:
    """Flush what Python buffered, so it is written once and not lost at os._exit()."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()


def _notify(link: socket.socket, message: bytes) -> None:
    """Tell the master; a master that no longer listens is seen by the wait."""
    with suppress(OSError):
        link.sendall(message)


class RequestTimer:
    """Tells the master when each request begins and ends, for ``requesttimeout``.

    Handed to the protocol (``watch_requests``): only the time in a request counts, not a
    kept connection's idle time between requests, and the application's response is
    left as it is. Workers without a request timeout have no timer and pay nothing.
    """

    def __init__(self, link: socket.socket) -> None:
        self._link = link

    def request_begins(self, environ: Environ) -> None:
        _notify(self._link, REQUEST_BEGINS)

    def request_ends(self, status: int, sent: int) -> None:
        _notify(self._link, REQUEST_ENDS)


class Worker:
    """One worker process of the pool, as the master forks it."""

    def __init__(
        self,
        protocol: ServedProtocol,
        limits: Limits,
        hooks: Hooks,
        *,
        board: Scoreboard,
        slot: int,
        link: socket.socket,
        slowlog: SlowLog | None = None,
    ) -> None:
        self._protocol = protocol
        self._limits = limits
        self._hooks = hooks
        self._board = board
        self._slot = slot
        self._link = link
        """The worker's end of its status link to the master."""
        self._stopping = False
        self._connection: Connection | None = None
        self._record = board.figures.record(slot) if board.figures is not None else None
        """The worker's figures for the status page, when there is one."""
        self._slowlog = slowlog

    def run(
        self, sock: socket.socket, leave_master: Callable[[], None], mask: Iterable[int]
    ) -> NoReturn:
        """In the child: drop what belongs to the master, serve, and exit."""
        status = 0
        try:
            try:
                leave_master()
                self._signals = SignalQueue(WORKER_SIGNALS, self._signalled)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self._recycling = Recycling(
                    self._limits,
                    self._end_connection,
                    self._record.recycled if self._record is not None else None,
                )
                if self._limits.requesttimeout > 0:
                    faulthandler.register(DUMP_SIGNAL, all_threads=True, chain=False)
                    self._protocol.watch_requests(RequestTimer(self._link))
                if self._recycling.watches_requests:
                    self._protocol.watch_requests(self._recycling)
                if self._record is not None:
                    self._record.started()
                    self._protocol.watch_requests(self._record)
                if self._slowlog is not None:
                    record = self._record
                    count = None if record is None else lambda _thread: record.slow_request()
                    self._protocol.watch_requests(self._slowlog.watch(count))
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                self._serve(sock)
            except KeyboardInterrupt:
                # SIGINT: stop now, and from here. Leaving this block would free the
                # interrupted frames, and a connection's socket still open in them would
                # be closed by the garbage collector with a ResourceWarning on stderr.
                leave(0)
            except BaseException:
                logger.exception("Worker process %d failed.", os.getpid())
                status = 1
        finally:
            leave(status)

    def _signalled(self, signum: int) -> None:
        """In the signal handler: a busy worker's persistent connection must end."""
        if signum in (signal.SIGTERM, signal.SIGHUP):
            self._stopping = True
            if self._connection is not None:
                stop_when_idle(self._connection)

    def _serve(self, sock: socket.socket) -> None:
        """Accept and serve connections until told to stop, or maxrequests is reached.

        Per request, the worker makes no system call of its own beyond the wait and
        accept(): its state goes to the scoreboard, and the master is woken only when
        the pool has to change.
        """
        link = self._link
        link.settimeout(NOTIFY_TIMEOUT)
        board, slot, limits = self._board, self._slot, self._limits
        record = self._record
        counters = board.figures.counters if board.figures is not None else None
        allows = self._protocol.allows
        accept = Acceptor(sock)
        with _Waiter(sock, link, self._signals.fd) as waiter:
            while True:
                if self._stopping:
                    return
                ready = waiter.wait()
                if "signal" in ready:
                    for signum in self._signals.pop():
                        # TERM and HUP set the stop flag in the handler already.
                        if INTENTS[signal.Signals(signum)][1] is Intent.REOPEN_LOGS:
                            self._hooks.usr1()
                if "master" in ready:
                    return  # Retired, stopping, or the master is gone.
                if "listener" not in ready or self._stopping:
                    continue
                accepted = accept()
                if accepted is None:
                    continue  # Another worker took it (flup.rst#sock-timeout).
                client, addr = accepted
                if not allows(addr):
                    client.close()
                    continue
                board.mark(slot, BUSY)
                idle, alive = board.counts()
                if idle < limits.minspare and alive < limits.maxchildren:
                    _notify(link, POOL_CHANGES)
                if record is not None:
                    record.connection_begins(alive - idle)
                    full = not idle and alive >= limits.maxchildren
                    if full and counters is not None and not counters.full_noticed:
                        _notify(link, POOL_FULL)
                self._serve_client(client, addr)
                board.mark(slot, IDLE)
                if self._recycling.due:
                    return
                if board.counts()[0] > limits.maxspare:
                    _notify(link, POOL_CHANGES)

    def _end_connection(self) -> None:
        """Recycling: the connection in progress ends after its request."""
        if self._connection is not None:
            stop_when_idle(self._connection)

    def _serve_client(self, client: socket.socket, addr: Any) -> None:
        """Serve one connection; an exception is logged and the worker goes on serving."""
        try:
            connection = self._protocol.connection(client, addr)
            self._connection = connection
            if self._stopping:
                stop_when_idle(connection)
            connection.run()
        except Exception:
            logger.exception("Error while serving a connection.")
        finally:
            self._connection = None
            client.close()


def leave(status: int) -> NoReturn:
    """End a worker process: output flushed, no finally blocks or atexit hooks."""
    try:
        flush_stdio()
    finally:
        os._exit(status)


class _Waiter:
    """What a worker waits on: the listening socket, its master and its signals.

    On Linux the listening socket is watched with EPOLLEXCLUSIVE, so that a new
    connection wakes one idle worker rather than every one of them, all but one of
    which would find nothing to accept.
    """

    def __init__(self, sock: socket.socket, link: socket.socket, signal_fd: int) -> None:
        self._names = {sock.fileno(): "listener", link.fileno(): "master", signal_fd: "signal"}
        self._epoll: Any = None
        self._selector: selectors.BaseSelector | None = None
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        if exclusive:
            self._epoll = select.epoll()
            try:
                self._epoll.register(sock.fileno(), select.EPOLLIN | exclusive)
            except OSError:  # A kernel older than 4.5.
                self._epoll.close()
                self._epoll = None
        if self._epoll is not None:
            self._epoll.register(link.fileno(), select.EPOLLIN)
            self._epoll.register(signal_fd, select.EPOLLIN)
        else:
            self._selector = selectors.DefaultSelector()
            for fd in self._names:
                self._selector.register(fd, selectors.EVENT_READ)

    def wait(self) -> set[str]:
        if self._epoll is not None:
            return {self._names[fd] for fd, _ in self._epoll.poll()}
        assert self._selector is not None
        return {self._names[key.fd] for key, _ in self._selector.select()}

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
