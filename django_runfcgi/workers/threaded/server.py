"""The threaded process model: one process, whose main thread hears signals while a pool
of threads accepts and serves.

flup's threaded server was not waited for on shutdown (flup.rst#threaded-shutdown); this
one is ours.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django_runfcgi.protocols import ServedProtocol
from django_runfcgi.sockets import Stream
from django_runfcgi.workers import Limits
from django_runfcgi.workers.hooks import Hooks, Load
from django_runfcgi.workers.signals import SERVER_SIGNALS, Orders, SignalQueue, Stop, StopDeadline
from django_runfcgi.workers.threaded.pool import Accepted, ThreadPool

if TYPE_CHECKING:
    from django_runfcgi.slowlog import SlowLog
    from django_runfcgi.status.figures import Sampler
    from django_runfcgi.status.page import Status
    from django_runfcgi.workers.threaded.figures import ThreadedFigures

logger = logging.getLogger("django_runfcgi.workers")


class ThreadedServer:
    """One process whose threads accept and serve, and stop when told to.

    TERM stops gracefully: no new connection is accepted, persistent connections are
    told ``stop_when_idle()`` and running requests get ``shutdowntimeout`` seconds to
    finish. INT does the same with one second. USR1 runs the hooks' ``usr1()``. HUP
    reloads unless the hooks' reload check finds an error: the threads finish their
    requests as for TERM, then ``run()`` returns True.
    """

    def __init__(
        self,
        protocol: ServedProtocol,
        limits: Limits,
        hooks: Hooks | None = None,
        *,
        status: Status | None = None,
        slowlog: SlowLog | None = None,
    ) -> None:
        self._protocol = protocol
        self._limits = limits
        self.hooks = hooks if hooks is not None else Hooks()
        self.retiring: list[int] = []
        self._status = status
        self._figures: ThreadedFigures | None = None
        if status is not None:
            from django_runfcgi.workers.threaded.figures import (  # noqa: PLC0415
                ThreadedFigures,
            )

            self._figures = ThreadedFigures(status.history)
            protocol.watch_requests(self._figures)
        if slowlog is not None:
            count = None if self._figures is None else self._figures.slow_request
            protocol.watch_requests(slowlog.watch(count))
        self._pool = ThreadPool(
            limits.minspare, limits.maxspare, limits.maxchildren, figures=self._figures
        )
        self._orders = Orders(self.hooks)
        self._sampler: Sampler | None = None

    def adopt_workers(self, pids: Iterable[int]) -> None:
        """Nothing to wait for: a threaded server's threads end before it reloads."""
        if list(pids):
            raise ValueError("A threaded server has no worker processes to adopt.")

    def run(self, sock: socket.socket) -> bool:
        """Serve on a bound, listening socket until TERM, INT or HUP; True after HUP.

        Returns once the worker threads have finished, or the stop signal's time limit
        has passed. The socket stays open.
        """
        self._orders = Orders(self.hooks)
        # Threads race for each connection; the losers go back to waiting.
        sock.setblocking(False)
        pool = self._pool
        self._signals = SignalQueue(SERVER_SIGNALS)
        if self._status is not None and self._figures is not None:
            from django_runfcgi.status.figures import Sampler  # noqa: PLC0415 - status= only

            self._status.serving(sock, self._figures)
            self._sampler = Sampler(self._figures.counters, self._status.queue, pool.full)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._signals.fd, selectors.EVENT_READ)
                pool.start(sock, self._make_job, self._signals.wake)
                try:
                    self._serve(selector)
                finally:
                    # No thread accepts once the socket may be offered to a new server.
                    pool.stop()
                if self._orders.stop is not Stop.RELOAD:
                    self.hooks.stop_begins(self._orders.stop is Stop.GRACEFUL)
                self._wait_for_threads(selector)
        finally:
            if self._status is not None:
                self._status.stopped()
            pool.detach()
            self._signals.close()
        return self._orders.stop is Stop.RELOAD

    def _serve(self, selector: selectors.BaseSelector) -> None:
        """Until a stop: the pool's threads accept, this thread hears signals."""
        while True:
            self._orders.take(self._signals.pop())
            if self._orders.stop is not None:
                return
            now = time.monotonic()
            wake_at = [self.hooks.turn(self._load)]
            if self._sampler is not None:
                wake_at.append(self._sampler.due(now))
            timeout = min((t for t in wake_at if t is not None), default=None)
            selector.select(None if timeout is None else max(0.0, timeout - now))

    def _load(self) -> Load:
        """The pool's load; the connections too with status=."""
        most = max(self._limits.minspare, self._limits.maxchildren)  # as the pool has it
        if self._figures is None:
            idle, alive = self._pool.idle_and_alive()
            return Load(alive - idle, alive, most, "threads")
        counts = self._figures.status_counts()
        return Load(counts.total - counts.idle, counts.total, most, "threads", counts.accepted)

    def _make_job(self, client: Stream, addr: Any) -> Accepted | None:
        if not self._protocol.allows(addr):
            client.close()
            return None
        try:
            return Accepted(self._protocol.connection(client, addr), client)
        except Exception:
            logger.exception("Error while setting up a connection.")
            client.close()
            return None

    def _wait_for_threads(self, selector: selectors.BaseSelector) -> None:
        """Wait for running jobs, up to the stop signal's time limit.

        flup.rst#threaded-shutdown and #persistent-shutdown.
        """
        deadline = StopDeadline(self._orders, self._limits.shutdowntimeout)
        pool = self._pool
        while pool.alive():
            remaining = deadline.remaining()
            if remaining <= 0:
                logger.warning(
                    "%d worker thread(s) still running %.1f s after the stop signal; "
                    "leaving them.",
                    pool.alive(),
                    deadline.limit,
                )
                return
            selector.select(remaining)
            self._orders.take(self._signals.pop())
            deadline.hurried()
