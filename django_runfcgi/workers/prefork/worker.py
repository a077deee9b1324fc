"""A prefork worker: built by the master before fork(), run only in the child.

The master never has to undo its own state in a worker: the worker has its own signal
queue, its own stop flag and its own loop. It accepts and serves connections until it
is told to stop, its master goes away, or it has served ``maxrequests`` requests, and
it leaves through os._exit() whatever happens: flup's workers raised SystemExit, or
their job's exception, into the master's code, whose finally blocks and atexit hooks
then ran in every worker.

A connection the web server keeps open between requests (FastCGI keep-conn, AJP) is
not waited on alone: once it has no request, the worker watches it with the listening
socket and its other kept connections, and serves whichever has a request. Waiting on
it alone held the worker while nginx let the connection idle, and with as many kept
connections as workers, new connections waited in the accept queue for seconds. A new
connection's first request is still waited for (it comes with the connection): kept
in the set, the connection would belong to this worker while another, idle, could
serve it, and its readtimeout would run while this worker served others.
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
from django_runfcgi.sockets import Acceptor, Stream
from django_runfcgi.workers import Limits, stop_when_idle
from django_runfcgi.workers.hooks import Hooks
from django_runfcgi.workers.prefork.recycling import Recycling
from django_runfcgi.workers.prefork.scoreboard import BUSY, IDLE, KEPT, Scoreboard
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

KEPT_CONNECTIONS = 64
"""The most idle kept connections one worker holds. Past that, the one idle the longest
is closed (after the request that may have come on it): the front end, which reuses its
most recent connections first, then opens a new one when it needs more."""

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
        """The connection being served, which a stop or recycling ends after its request."""
        self._kept: dict[int, tuple[Connection, Stream]] = {}
        """Idle kept connections by socket fd, the one idle the longest first."""
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
        """Serve new connections and kept ones until told to stop, or recycled.

        Per request, the worker makes no system call of its own beyond the wait and
        accept(): its state goes to the scoreboard, and the master is woken only when
        the pool has to change.
        """
        self._link.settimeout(NOTIFY_TIMEOUT)
        allows = self._protocol.allows
        accept = Acceptor(sock)
        with _Waiter(sock, self._link, self._signals.fd) as waiter:
            self._waiter = waiter
            try:
                while not self._stopping:
                    ready, kept = waiter.wait()
                    if "signal" in ready:
                        for signum in self._signals.pop():
                            # TERM and HUP set the stop flag in the handler already.
                            if INTENTS[signal.Signals(signum)][1] is Intent.REOPEN_LOGS:
                                self._hooks.usr1()
                    if "master" in ready or self._stopping:
                        return  # Retired, stopping, or the master is gone.
                    # Kept connections and new ones take turns: the accept queue is
                    # not left to wait behind every kept connection with a request.
                    listening = "listener" in ready
                    for fd in [*kept, None]:
                        if self._stopping or self._recycling.due:
                            return
                        if fd is not None:
                            self._serve_kept(fd)
                        if not listening or self._stopping or self._recycling.due:
                            continue
                        accepted = accept()
                        # None: the queue is empty, or another worker took the connection
                        # (flup.rst#sock-timeout).
                        if accepted is None:
                            listening = False
                        elif allows(accepted[1]):
                            self._serve_new(*accepted)
                        else:
                            accepted[0].close()
                    if self._recycling.due:
                        return
            finally:
                self._close_kept()

    def _busy(self) -> tuple[int, int]:
        """Mark the worker busy, telling the master if the pool should grow; returns the
        number of idle workers and of workers alive."""
        board, limits = self._board, self._limits
        board.mark(self._slot, BUSY)
        idle, alive = board.counts()
        if idle < limits.minspare and alive < limits.maxchildren:
            _notify(self._link, POOL_CHANGES)
        return idle, alive

    def _idle(self) -> None:
        """Mark the worker idle (kept connections wait in its set), telling the master if
        the pool has more idle workers than maxspare."""
        board = self._board
        board.mark(self._slot, KEPT if self._kept else IDLE)
        if board.counts()[0] > self._limits.maxspare:
            _notify(self._link, POOL_CHANGES)

    def _serve_new(self, client: Stream, addr: Any) -> None:
        idle, alive = self._busy()
        record = self._record
        if record is not None:
            record.connection_begins(alive - idle)
            counters = self._board.figures.counters if self._board.figures else None
            full = not idle and alive >= self._limits.maxchildren
            if full and counters is not None and not counters.full_noticed:
                _notify(self._link, POOL_FULL)
        try:
            connection = self._protocol.connection(client, addr)
        except Exception:
            logger.exception("Error while serving a connection.")
            client.close()
        else:
            self._serve_client(connection, client)
        self._idle()

    def _serve_kept(self, fd: int) -> None:
        """A kept connection is readable: serve its request (or see it closed)."""
        kept = self._kept.pop(fd, None)
        if kept is None:
            return  # Closed since the wait, to keep a newer one.
        connection, client = kept
        self._busy()
        self._serve_client(connection, client, fd)
        self._idle()

    def _serve_client(self, connection: Connection, client: Stream, fd: int | None = None) -> None:
        """Serve what has come on a connection; one left idle and open joins the kept set
        (`fd`: it is watched already). An exception is logged and the worker goes on."""
        kept = False
        try:
            self._connection = connection
            if self._stopping:
                stop_when_idle(connection)
            kept = connection.serve_ready()
        except Exception:
            logger.exception("Error while serving a connection.")
        finally:
            self._connection = None
            if not kept:
                if fd is not None:
                    self._waiter.forget(fd)
                client.close()
        if kept:
            self._keep(connection, client, fd)

    def _keep(self, connection: Connection, client: Stream, fd: int | None) -> None:
        """Hold an idle kept connection until it is readable; past KEPT_CONNECTIONS the
        one idle the longest is closed."""
        if len(self._kept) >= KEPT_CONNECTIONS:
            oldest = next(iter(self._kept))
            stale, stale_client = self._kept.pop(oldest)
            stop_when_idle(stale)
            self._serve_client(stale, stale_client, oldest)
        if fd is None:
            fd = client.fileno()
            self._waiter.watch(fd)
        self._kept[fd] = (connection, client)

    def _close_kept(self) -> None:
        """Leaving: each kept connection serves the requests that have come, then closes."""
        self._stopping = True
        if self._kept:
            self._board.mark(self._slot, BUSY)
        while self._kept:
            fd = next(iter(self._kept))
            connection, client = self._kept.pop(fd)
            stop_when_idle(connection)
            self._serve_client(connection, client, fd)

    def _end_connection(self) -> None:
        """Recycling: the connection in progress ends after its request."""
        if self._connection is not None:
            stop_when_idle(self._connection)


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

    def watch(self, fd: int) -> None:
        """Wake up too when this kept connection is readable: a request, or its end."""
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._selector is not None
            self._selector.register(fd, selectors.EVENT_READ)

    def forget(self, fd: int) -> None:
        """Stop watching a kept connection; one already closed has left epoll by itself."""
        with suppress(OSError, KeyError, ValueError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._selector is not None
                self._selector.unregister(fd)

    def wait(self) -> tuple[set[str], list[int]]:
        """What is ready: by name the listener, master and signals; the kept connections
        by fd."""
        if self._epoll is not None:
            events = [fd for fd, _ in self._epoll.poll()]
        else:
            assert self._selector is not None
            events = [key.fd for key, _ in self._selector.select()]
        names = self._names
        ready = {names[fd] for fd in events if fd in names}
        return ready, [fd for fd in events if fd not in names]

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
