"""The prefork process model: a master process that keeps a pool of worker processes.

flup's master never grows the pool (flup.rst#pool-growth), ignores stop signals while
idle (flup.rst#stop-signals), dies on SIGUSR1 (flup.rst#sigusr1), and lets a worker
whose job raised run on into the master's code; its shutdown can hang forever. This
subclass keeps flup's constructor and pool policy and replaces the loops of the master
and of the workers.
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
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NoReturn

from flup.server import preforkserver

from django_runfcgi.control import (
    GRACEFUL,
    INT_GRACE,
    NOW,
    RELOAD,
    Hooks,
    Job,
    SignalQueue,
    reload_allowed,
    stop_when_idle,
)
from django_runfcgi.scoreboard import BUSY, IDLE, Scoreboard
from django_runfcgi.sockets import Acceptor

logger = logging.getLogger(__name__)

# What a worker tells the master, one byte at a time: that the pool has to change (the
# scoreboard says how), and (with a request timeout) when each request begins and ends.
POOL_CHANGES = b"\x00"
REQUEST_BEGINS = b"\x01"
REQUEST_ENDS = b"\x02"

# A worker past its request timeout gets this signal, which makes it write where it is
# stuck to standard error, and is killed this many seconds later.
DUMP_SIGNAL = signal.SIGUSR2
DUMP_GRACE = 1.0

# How long to wait for the kernel to release workers after SIGKILL.
REAP_LIMIT = 5.0
# How long the master waits before trying again after fork() failed.
RETRY_INTERVAL = 1.0
# A worker that cannot tell the master its state in this time takes it for gone.
NOTIFY_TIMEOUT = 5.0


def flush_stdio() -> None:
    """Flush what Python buffered, so it is written once and not lost at os._exit()."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()


@dataclass
class _Worker:
    """The master's view of a worker: its end of the status link and its scoreboard slot."""

    link: socket.socket | None
    # None for a worker of a previous master, which has its own scoreboard.
    slot: int | None = None
    # Set for a worker that finishes its request for a previous master (reload): when
    # it is killed if still running. It no longer counts towards the pool.
    deadline: float | None = None
    # When the request in progress began, as the master saw it.
    request_since: float | None = None
    # Past its request timeout: when it is killed.
    kill_at: float | None = None


class PreforkServer(Hooks, preforkserver.PreforkServer):  # type: ignore[misc]
    """flup's prefork server, with a master and workers that stop when told to.

    TERM and HUP stop gracefully: idle workers leave at once, busy ones finish their
    request (persistent connections are told ``stop_when_idle()``), and whatever is
    left after ``shutdownTimeout`` seconds is killed. INT stops now: workers get
    SIGINT and are killed after a second. USR1 calls :meth:`_handle_usr1` in the
    master, then is passed on to the workers.

    With ``requestTimeout`` above 0, a worker that spends longer than that on one
    request (as reported through :class:`TimedRequests`) is sent ``DUMP_SIGNAL``,
    so its stack shows where it hung, then killed; the pool replaces it.

    With ``reload_check`` set, HUP reloads instead: if the check returns no error,
    the workers are told to finish and ``run()`` returns True at once, leaving them
    running; their pids are in ``retiring``, for :meth:`adopt_workers` in the master
    that takes over. If the check returns an error, it is logged and nothing changes.
    """

    MASTER_SIGNALS = (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGCHLD,
    )
    WORKER_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)

    def __init__(  # noqa: PLR0917 - flup's positional order, which callers use
        self,
        minSpare: int = 1,
        maxSpare: int = 5,
        maxChildren: int = 50,
        maxRequests: int = 0,
        jobClass: Callable[..., Job] | None = None,
        jobArgs: Sequence[Any] = (),
        *,
        shutdownTimeout: float = 30.0,
        requestTimeout: float = 0.0,
    ) -> None:
        # sockTimeout is left out: flup feeds it to setblocking() (flup.rst#sock-timeout).
        super().__init__(
            minSpare=minSpare,
            maxSpare=maxSpare,
            maxChildren=maxChildren,
            maxRequests=maxRequests,
            jobClass=jobClass,
            jobArgs=jobArgs,
        )
        if shutdownTimeout < 0:
            raise ValueError("shutdownTimeout must be 0 or more.")
        if requestTimeout < 0:
            raise ValueError("requestTimeout must be 0 or more.")
        self._shutdownTimeout = shutdownTimeout
        self._requestTimeout = requestTimeout
        # In a worker: its end of the status link.
        self._link: socket.socket | None = None
        self._children: dict[int, _Worker] = {}
        self._hupReceived = False
        self._stopping: str | None = None
        self._retry_at: float | None = None
        self._job: object | None = None
        self._board: Scoreboard | None = None
        # In a worker: its place on the scoreboard.
        self._slot = 0

    def adopt_workers(self, pids: Iterable[int]) -> None:
        """Wait for the workers of the master this process replaced (same pid, after exec).

        They finish their request and exit; after ``shutdownTimeout`` they are killed.
        """
        deadline = time.monotonic() + self._shutdownTimeout
        for pid in pids:
            self._children[pid] = _Worker(None, deadline=deadline)

    # The master.

    def run(self, sock: socket.socket) -> bool:
        """Serve on a bound, listening socket until TERM, INT or HUP; True after HUP.

        Returns once every worker has exited and been reaped. The socket stays open.
        """
        if self._jobClass is None:
            raise TypeError("PreforkServer.run() needs a jobClass.")
        self._hupReceived = False
        self._stopping = None
        self._retry_at = None
        self.retiring = []
        # Workers race for each connection; a non-blocking accept() lets the losers go
        # back to waiting (flup.rst#sock-timeout).
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        # Every worker of this master has a slot: the pool never exceeds the larger.
        self._board = Scoreboard(max(self._maxSpare, self._maxChildren))
        self._signals = SignalQueue(self.MASTER_SIGNALS)
        self._selector.register(self._signals.fd, selectors.EVENT_READ)
        try:
            self._serve(sock)
            if self._stopping == RELOAD:
                self._retire_workers()
            else:
                self._stop_begins(self._stopping == GRACEFUL)
                self._shutdown()
        finally:
            self._kill_workers()
            self._signals.close()
            self._selector.close()
            self._board.close()
        return self._hupReceived

    def _serve(self, sock: socket.socket) -> None:
        while True:
            self._handle_signals()
            if self._stopping is not None:
                return
            self._reapChildren()
            self._maintain_pool(sock)
            wake_at = [self._retry_at, self._expire_retiring(), self._expire_requests()]
            timeout = min((t for t in wake_at if t is not None), default=None)
            if timeout is not None:
                timeout = max(0.0, timeout - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fd != self._signals.fd:
                    self._read_state(key.data)

    def _handle_signals(self) -> None:
        for signum in self._signals.pop():
            if signum == signal.SIGUSR1:
                self._usr1_received()
                self._signal_workers(signal.SIGUSR1)
            elif signum == signal.SIGINT:
                self._stopping = NOW
            elif signum == signal.SIGHUP and self.reload_check is not None:
                if self._stopping is None and reload_allowed(self.reload_check):
                    self._hupReceived = True
                    self._stopping = RELOAD
            elif signum in (signal.SIGTERM, signal.SIGHUP):
                self._hupReceived = self._hupReceived or signum == signal.SIGHUP
                self._stopping = self._stopping or GRACEFUL
            # SIGCHLD only wakes the loop, which reaps.

    def _retire_workers(self) -> None:
        """Reload: workers finish their request and exit; a new master will wait for them."""
        self._signal_workers(signal.SIGTERM)
        for pid in self._children:
            self._close_link(pid)
        self.retiring = sorted(self._children)
        self._children = {}

    def _expire_retiring(self) -> float | None:
        """Kill the previous master's workers that are past their time; the next deadline."""
        now = time.monotonic()
        nearest = None
        for pid, worker in self._children.items():
            if worker.deadline is None or worker.deadline == float("inf"):
                continue
            if worker.deadline <= now:
                logger.warning(
                    "Worker process %d of the previous code still running %.1f s after "
                    "the reload; killing it.",
                    pid,
                    self._shutdownTimeout,
                )
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                worker.deadline = float("inf")
            elif nearest is None or worker.deadline < nearest:
                nearest = worker.deadline
        return nearest

    def _expire_requests(self) -> float | None:
        """Kill workers stuck on one request for longer than allowed; the next deadline."""
        if self._requestTimeout <= 0:
            return None
        now = time.monotonic()
        nearest = None
        for pid, worker in self._active().items():
            if worker.kill_at is not None:
                if worker.kill_at <= now:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    worker.kill_at = float("inf")
                when = worker.kill_at
            elif worker.request_since is None:
                continue
            elif now - worker.request_since >= self._requestTimeout:
                logger.error(
                    "Worker process %d has spent %.1f s on one request (requesttimeout=%g); "
                    "killing it and starting another.",
                    pid,
                    now - worker.request_since,
                    self._requestTimeout,
                )
                with suppress(ProcessLookupError):
                    os.kill(pid, DUMP_SIGNAL)
                when = worker.kill_at = now + DUMP_GRACE
            else:
                when = worker.request_since + self._requestTimeout
            if when != float("inf") and (nearest is None or when < nearest):
                nearest = when
        return nearest

    def _scoreboard(self) -> Scoreboard:
        assert self._board is not None, "run() creates the scoreboard"
        return self._board

    def _active(self) -> dict[int, _Worker]:
        """The workers of this master's pool, without those finishing for a previous one."""
        return {pid: worker for pid, worker in self._children.items() if worker.deadline is None}

    def _read_state(self, pid: int) -> None:
        link = self._children[pid].link
        assert link is not None, "closed links are unregistered"
        try:
            data = link.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            # POOL_CHANGES only wakes the loop, which reads the scoreboard.
            worker = self._children[pid]
            now = time.monotonic()
            for message in data:
                if message == REQUEST_BEGINS[0]:
                    worker.request_since = now
                elif message == REQUEST_ENDS[0]:
                    worker.request_since = None
        else:
            # The worker is on its way out; SIGCHLD will wake us to reap it.
            self._close_link(pid)

    def _close_link(self, pid: int) -> None:
        """Stop talking to a worker; an idle worker sees end of file and exits."""
        worker = self._children[pid]
        if worker.link is not None:
            self._selector.unregister(worker.link)
            worker.link.close()
            worker.link = None
        if worker.slot is not None:
            # Leaving: no longer idle, still alive until reaped.
            self._scoreboard().mark(worker.slot, BUSY)

    def _maintain_pool(self, sock: socket.socket) -> None:
        """flup's policy: at least maxSpare workers and minSpare idle ones, up to maxChildren."""
        if self._retry_at is not None:
            if time.monotonic() < self._retry_at:
                return
            self._retry_at = None
        while len(self._active()) < self._maxSpare:
            if not self._spawnChild(sock):
                return
        active = self._active()
        board = self._scoreboard()
        # flup compared the worker's state byte with a str, so every worker looked idle
        # (flup.rst#pool-growth).
        idle = sorted(
            pid
            for pid, worker in active.items()
            if worker.link is not None and worker.slot is not None and board.is_idle(worker.slot)
        )
        if len(idle) < self._minSpare:
            wanted = min(self._minSpare - len(idle), self._maxChildren - len(active))
            for _ in range(wanted):
                if not self._spawnChild(sock):
                    return
        else:
            for pid in idle[self._maxSpare :]:
                self._close_link(pid)

    def _spawnChild(self, sock: socket.socket) -> bool:
        """Fork a worker; False if the system cannot fork now (retried later)."""
        slot = self._scoreboard().claim()
        if slot is None:
            logger.error("Cannot start a worker process: every scoreboard slot is taken.")
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            return False
        link, worker_link = socket.socketpair()
        link.setblocking(False)
        flush_stdio()
        # Signals wait until the worker has replaced the master's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as err:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            link.close()
            worker_link.close()
            self._scoreboard().release(slot)
            logger.error("Cannot start a worker process: %s", err)
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            return False
        if pid == 0:
            self._slot = slot
            self._worker_main(sock, worker_link, link, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_link.close()
        self._children[pid] = _Worker(link, slot)
        self._selector.register(link, selectors.EVENT_READ, pid)
        return True

    def _reapChildren(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            self._close_link(pid)
            worker = self._children.pop(pid)
            if worker.slot is not None:
                self._scoreboard().release(worker.slot)
            # A worker killed for its request timeout has been logged already.
            expected = worker.deadline is not None or worker.kill_at is not None
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and self._stopping is None and not expected:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                logger.warning("Worker process %d %s; starting another.", pid, how)

    def _signal_workers(self, signum: signal.Signals) -> None:
        for pid in self._children:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _shutdown(self) -> None:
        """Stop every worker within the time the stop signal allows (flup.rst#stop-signals)."""
        mode = self._stopping
        self._signal_workers(signal.SIGINT if mode == NOW else signal.SIGTERM)
        for pid in self._children:
            self._close_link(pid)
        limit = INT_GRACE if mode == NOW else self._shutdownTimeout
        deadline = time.monotonic() + limit
        while True:
            self._reapChildren()
            if not self._children:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._selector.select(remaining)
            self._handle_signals()
            if self._stopping != mode:
                # INT during a graceful stop: stop now.
                mode = self._stopping
                self._signal_workers(signal.SIGINT)
                deadline = min(deadline, time.monotonic() + INT_GRACE)
        if limit > 0:
            logger.warning(
                "%d worker process(es) still running %.1f s after the stop signal; killing them.",
                len(self._children),
                limit,
            )

    def _kill_workers(self) -> None:
        """SIGKILL whatever workers are left and reap them, within a bound."""
        if not self._children:
            return
        self._signal_workers(signal.SIGKILL)
        deadline = time.monotonic() + REAP_LIMIT
        while self._children and time.monotonic() < deadline:
            self._reapChildren()
            if self._children:
                self._selector.select(0.05)
        if self._children:
            logger.error("Worker processes %s did not exit after SIGKILL.", sorted(self._children))

    # A worker.

    def _worker_main(
        self,
        sock: socket.socket,
        link: socket.socket,
        master_link: socket.socket,
        mask: Iterable[int],
    ) -> NoReturn:
        """Run a worker and leave through os._exit(), whatever happens.

        flup's workers raise SystemExit, or the job's exception, into the master's
        code that called run(): its finally blocks and atexit hooks ran in every worker.
        """
        status = 0
        try:
            try:
                master_link.close()
                self._leave_master()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                self._child(sock, link)
            except KeyboardInterrupt:
                # SIGINT: stop now, and from here. Leaving this block would free the
                # interrupted frames, and a connection's socket still open in them would
                # be closed by the garbage collector with a ResourceWarning on stderr.
                _leave_worker(0)
            except BaseException:
                logger.exception("Worker process %d failed.", os.getpid())
                status = 1
        finally:
            _leave_worker(status)

    def _leave_master(self) -> None:
        """Drop the master's handlers, pipe and links; install the worker's handlers."""
        self._signals.close()
        self._selector.close()
        for worker in self._children.values():
            if worker.link is not None:
                worker.link.close()
        self._children = {}
        self._stopping = None
        self._signals = SignalQueue(self.WORKER_SIGNALS, self._worker_signalled)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._requestTimeout > 0:
            faulthandler.register(DUMP_SIGNAL, all_threads=True, chain=False)

    def _worker_signalled(self, signum: int) -> None:
        """In the signal handler: a busy worker's persistent connection must end."""
        if signum in (signal.SIGTERM, signal.SIGHUP):
            self._stopping = GRACEFUL
            if self._job is not None:
                stop_when_idle(self._job)

    def _child(self, sock: socket.socket, link: socket.socket) -> None:
        """Accept and serve connections until told to stop, or maxRequests is reached.

        Per request, the worker makes no system call of its own beyond the wait and
        accept(): its state goes to the scoreboard, and the master is woken only when
        the pool has to change.
        """
        link.settimeout(NOTIFY_TIMEOUT)
        self._link = link
        board = self._scoreboard()
        served = 0
        accept = Acceptor(sock)
        with _Waiter(sock, link, self._signals.fd) as waiter:
            while True:
                if self._stopping is not None:
                    return
                ready = waiter.wait()
                if "signal" in ready:
                    for signum in self._signals.pop():
                        if signum == signal.SIGUSR1:
                            self._usr1_received()
                if "master" in ready:
                    return  # Retired, stopping, or the master is gone.
                if "listener" not in ready or self._stopping is not None:
                    continue
                accepted = accept()
                if accepted is None:
                    continue  # Another worker took it (flup.rst#sock-timeout).
                client, addr = accepted
                if not self._isClientAllowed(addr):
                    client.close()
                    continue
                board.mark(self._slot, BUSY)
                idle, alive = board.counts()
                if idle < self._minSpare and alive < self._maxChildren:
                    self._notify(link, POOL_CHANGES)
                self._serve_client(client, addr)
                board.mark(self._slot, IDLE)
                served += 1
                if 0 < self._maxRequests <= served:
                    return
                if board.counts()[0] > self._maxSpare:
                    self._notify(link, POOL_CHANGES)

    def _notify(self, link: socket.socket, message: bytes) -> None:
        """Tell the master; a master that no longer listens is seen by the wait."""
        with suppress(OSError):
            link.sendall(message)

    def request_begins(self) -> None:
        """In a worker timing its requests: tell the master a request has begun."""
        if self._link is not None and self._requestTimeout > 0:
            self._notify(self._link, REQUEST_BEGINS)

    def request_ends(self) -> None:
        """In a worker timing its requests: tell the master the request has ended."""
        if self._link is not None and self._requestTimeout > 0:
            self._notify(self._link, REQUEST_ENDS)

    def _serve_client(self, client: socket.socket, addr: Any) -> None:
        """Run one job; an exception is logged and the worker goes on serving."""
        try:
            job = self._jobClass(client, addr, *self._jobArgs)
            self._job = job
            if self._stopping is not None:
                stop_when_idle(job)
            job.run()
        except Exception:
            logger.exception("Error while serving a connection.")
        finally:
            self._job = None
            client.close()


def _leave_worker(status: int) -> NoReturn:
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


class TimedRequests:
    """For a server class, before its protocol half: each request is timed by the master.

    Every protocol hands a request to the application through ``handler(request)``,
    which returns once the response is written and closed. A connection from the web
    server may carry many requests (FastCGI keep-conn, AJP) and wait idle between them:
    only the time in ``handler()`` counts. The application and its response are left as
    they are, so the protocol still sees a list as a whole response. Servers without a
    request timeout are built without this class and pay nothing for it.
    """

    # PreforkServer's, later in the combined class.
    request_begins: Callable[[], None]
    request_ends: Callable[[], None]

    def handler(self, request: Any) -> None:
        self.request_begins()
        try:
            super().handler(request)  # type: ignore[misc]  # The protocol half's.
        finally:
            self.request_ends()
