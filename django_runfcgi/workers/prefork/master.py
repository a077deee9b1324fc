"""The prefork master: keeps a pool of worker processes serving one listening socket.

flup's master never grew the pool (flup.rst#pool-growth), ignored stop signals while
idle (flup.rst#stop-signals), died on SIGUSR1 (flup.rst#sigusr1), and let a worker whose
job raised run on into the master's code; its shutdown could hang forever. This master
is ours and keeps flup's pool policy (at least maxspare workers, minspare idle ones, up
to maxchildren). Each worker is a :class:`~.worker.Worker` built before fork().
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django_runfcgi.protocols import ServedProtocol
from django_runfcgi.workers import Limits
from django_runfcgi.workers.hooks import Hooks, Load
from django_runfcgi.workers.prefork.scoreboard import BUSY, Scoreboard
from django_runfcgi.workers.prefork.worker import (
    DUMP_SIGNAL,
    POOL_FULL,
    REQUEST_BEGINS,
    REQUEST_ENDS,
    Worker,
    flush_stdio,
)
from django_runfcgi.workers.signals import SERVER_SIGNALS, Orders, SignalQueue, Stop, StopDeadline

if TYPE_CHECKING:
    from django_runfcgi.slowlog import SlowLog
    from django_runfcgi.status.figures import Sampler
    from django_runfcgi.status.page import Status

logger = logging.getLogger("django_runfcgi.workers")

DUMP_GRACE = 1.0
"""How long a worker past its request timeout has to write its stack before it is killed."""
REAP_LIMIT = 5.0
"""How long to wait for the kernel to release workers after SIGKILL."""
RETRY_INTERVAL = 1.0
"""How long the master waits before trying again after fork() failed."""
MASTER_SIGNALS = (*SERVER_SIGNALS, signal.SIGCHLD)


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


class PreforkMaster:
    """The master of a pool of worker processes.

    TERM stops gracefully: idle workers leave at once, busy ones finish their request
    (persistent connections are told ``stop_when_idle()``), and whatever is left after
    ``shutdowntimeout`` seconds is killed. INT stops now: workers get SIGINT and are
    killed after a second. USR1 runs the hooks' ``usr1()`` in the master, then is passed
    on to the workers.

    HUP reloads: if the hooks' reload check finds no error, the workers are told to
    finish and ``run()`` returns True at once, leaving them running; their pids are in
    ``retiring``, for :meth:`adopt_workers` in the master that takes over.

    With ``requesttimeout`` above 0, a worker that spends longer than that on one
    request is sent ``DUMP_SIGNAL``, so its stack shows where it hung, then killed; the
    pool replaces it.
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
        self._children: dict[int, _Worker] = {}
        self._orders = Orders(self.hooks)
        self._retry_at: float | None = None
        self._board: Scoreboard | None = None
        self._status = status
        self._sampler: Sampler | None = None
        self._slowlog = slowlog

    def adopt_workers(self, pids: Iterable[int]) -> None:
        """Wait for the workers of the master this process replaced (same pid, after exec).

        They finish their request and exit; after ``shutdownTimeout`` they are killed.
        """
        deadline = time.monotonic() + self._limits.shutdowntimeout
        for pid in pids:
            self._children[pid] = _Worker(None, deadline=deadline)

    # The master.

    def run(self, sock: socket.socket) -> bool:
        """Serve on a bound, listening socket until TERM, INT or HUP; True after HUP.

        Returns once every worker has exited and been reaped. The socket stays open.
        """
        self._orders = Orders(self.hooks)
        self._retry_at = None
        self.retiring = []
        # Workers race for each connection; a non-blocking accept() lets the losers go
        # back to waiting (flup.rst#sock-timeout).
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        # Every worker of this master has a slot: the pool never exceeds the larger.
        self._board = Scoreboard(
            max(self._limits.maxspare, self._limits.maxchildren),
            records=self._status is not None,
        )
        self._show_status(sock)
        self._signals = SignalQueue(MASTER_SIGNALS)
        self._selector.register(self._signals.fd, selectors.EVENT_READ)
        try:
            self._serve(sock)
            if self._orders.stop is Stop.RELOAD:
                self._retire_workers()
            else:
                self.hooks.stop_begins(self._orders.stop is Stop.GRACEFUL)
                self._shutdown()
        finally:
            self._kill_workers()
            if self._status is not None:
                self._status.stopped()
            self._signals.close()
            self._selector.close()
            self._board.close()
        return self._orders.stop is Stop.RELOAD

    def _show_status(self, sock: socket.socket) -> None:
        """With a status page: the counters carried over a reload, the page reading the
        scoreboard, and the sampling of the listen queue."""
        status, figures = self._status, self._scoreboard().figures
        if status is None or figures is None:
            self._sampler = None
            return
        from django_runfcgi.status.figures import Sampler  # noqa: PLC0415 - status= only

        counters = figures.counters
        counters.carry(status.history)
        status.serving(sock, figures)
        self._sampler = Sampler(counters, status.queue, self._pool_is_full)

    def _pool_is_full(self) -> bool:
        idle, alive = self._scoreboard().counts()
        return idle == 0 and alive >= self._limits.maxchildren

    def _serve(self, sock: socket.socket) -> None:
        while True:
            self._handle_signals()
            if self._orders.stop is not None:
                return
            self._reap_workers()
            self._maintain_pool(sock)
            wake_at = [
                self._retry_at,
                self._expire_retiring(),
                self._expire_requests(),
                self.hooks.turn(self._load),
            ]
            if self._sampler is not None:
                wake_at.append(self._sampler.due(time.monotonic()))
            timeout = min((t for t in wake_at if t is not None), default=None)
            if timeout is not None:
                timeout = max(0.0, timeout - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fd != self._signals.fd:
                    self._read_state(key.data)

    def _load(self) -> Load:
        """The pool's load from the scoreboard; the connections too with status=."""
        board = self._scoreboard()
        if board.figures is None:
            idle, alive = board.counts()
            return Load(alive - idle, alive, board.slots, "processes")
        counts = board.figures.status_counts()
        busy = counts.total - counts.idle
        return Load(busy, counts.total, board.slots, "processes", counts.accepted)

    def _handle_signals(self) -> None:
        signums = self._signals.pop()
        self._orders.take(signums)
        if signal.SIGUSR1 in signums:
            self._signal_workers(signal.SIGUSR1)

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
                    self._limits.shutdowntimeout,
                )
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                worker.deadline = float("inf")
            elif nearest is None or worker.deadline < nearest:
                nearest = worker.deadline
        return nearest

    def _expire_requests(self) -> float | None:
        """Kill workers stuck on one request for longer than allowed; the next deadline."""
        if self._limits.requesttimeout <= 0:
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
            elif now - worker.request_since >= self._limits.requesttimeout:
                logger.error(
                    "Worker process %d has spent %.1f s on one request (requesttimeout=%g); "
                    "killing it and starting another.",
                    pid,
                    now - worker.request_since,
                    self._limits.requesttimeout,
                )
                with suppress(ProcessLookupError):
                    os.kill(pid, DUMP_SIGNAL)
                when = worker.kill_at = now + DUMP_GRACE
            else:
                when = worker.request_since + self._limits.requesttimeout
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
                elif message == POOL_FULL[0] and self._sampler is not None:
                    self._sampler.pool_full()
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
        while len(self._active()) < self._limits.maxspare:
            if not self._spawn_worker(sock):
                return
        active = self._active()
        board = self._scoreboard()
        # flup compared the worker's state byte with a str, so every worker looked idle
        # (flup.rst#pool-growth).
        idle_slots = {
            pid: worker.slot
            for pid, worker in active.items()
            if worker.link is not None and worker.slot is not None and board.is_idle(worker.slot)
        }
        idle = sorted(idle_slots)
        if len(idle) < self._limits.minspare:
            wanted = min(self._limits.minspare - len(idle), self._limits.maxchildren - len(active))
            for _ in range(wanted):
                if not self._spawn_worker(sock):
                    return
        elif len(idle) > self._limits.maxspare:
            # A worker holding kept connections stays: closing one races with the web
            # server sending a request on it, which fails if it is not idempotent.
            spare = [pid for pid in idle if not board.holds_kept(idle_slots[pid])]
            for pid in spare[self._limits.maxspare - len(idle) :]:
                self._close_link(pid)

    def _spawn_worker(self, sock: socket.socket) -> bool:
        """Fork a worker; False if the system cannot fork now (retried later)."""
        slot = self._scoreboard().claim()
        if slot is None:
            logger.error("Cannot start a worker process: every scoreboard slot is taken.")
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            return False
        link, worker_link = socket.socketpair()
        link.setblocking(False)
        worker = Worker(
            self._protocol,
            self._limits,
            self.hooks,
            board=self._scoreboard(),
            slot=slot,
            link=worker_link,
            slowlog=self._slowlog,
        )
        flush_stdio()
        # Signals wait until the worker has replaced the master's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
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
            link.close()
            worker.run(sock, self._leave_master, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_link.close()
        self._children[pid] = _Worker(link, slot)
        self._selector.register(link, selectors.EVENT_READ, pid)
        return True

    def _reap_workers(self) -> None:
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
            if code != 0 and self._orders.stop is None and not expected:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                logger.warning("Worker process %d %s; starting another.", pid, how)

    def _signal_workers(self, signum: signal.Signals) -> None:
        for pid in self._children:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _shutdown(self) -> None:
        """Stop every worker within the time the stop signal allows (flup.rst#stop-signals)."""
        deadline = StopDeadline(self._orders, self._limits.shutdowntimeout)
        self._signal_workers(signal.SIGINT if deadline.mode is Stop.NOW else signal.SIGTERM)
        for pid in self._children:
            self._close_link(pid)
        while True:
            self._reap_workers()
            if not self._children:
                return
            remaining = deadline.remaining()
            if remaining <= 0:
                break
            self._selector.select(remaining)
            self._handle_signals()
            if deadline.hurried():
                self._signal_workers(signal.SIGINT)
        if deadline.limit > 0:
            logger.warning(
                "%d worker process(es) still running %.1f s after the stop signal; killing them.",
                len(self._children),
                deadline.limit,
            )

    def _kill_workers(self) -> None:
        """SIGKILL whatever workers are left and reap them, within a bound."""
        if not self._children:
            return
        self._signal_workers(signal.SIGKILL)
        deadline = time.monotonic() + REAP_LIMIT
        while self._children and time.monotonic() < deadline:
            self._reap_workers()
            if self._children:
                self._selector.select(0.05)
        if self._children:
            logger.error("Worker processes %s did not exit after SIGKILL.", sorted(self._children))

    def _leave_master(self) -> None:
        """In a forked worker: close the master's signal pipe, selector and links to the
        other workers, whose end of file tells an idle worker to leave."""
        self._signals.close()
        self._selector.close()
        for worker in self._children.values():
            if worker.link is not None:
                worker.link.close()
        self._children = {}
