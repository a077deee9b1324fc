"""The threaded process model: one process, a pool of threads that accept and serve.

flup's pool starts threads in its constructor with deprecated calls
(flup.rst#thread-constructor), queues a burst onto threads that are already busy
(flup.rst#thread-burst), and is not waited for on shutdown (flup.rst#threaded-shutdown),
or is waited for forever when a connection is persistent (flup.rst#persistent-shutdown).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flup.server import threadedserver, threadpool

from django_runfcgi.control import (
    GRACEFUL,
    INT_GRACE,
    NOW,
    Hooks,
    Job,
    SignalQueue,
    reload_allowed,
    start_thread,
    stop_when_idle,
)
from django_runfcgi.sockets import Acceptor

logger = logging.getLogger(__name__)


class _Accepted:
    """A job and the client socket it serves; the socket is closed even if the job raises."""

    def __init__(self, job: Job, sock: socket.socket) -> None:
        self.job = job
        self.sock = sock

    def run(self) -> None:
        try:
            self.job.run()
        finally:
            self.sock.close()

    def stop_when_idle(self) -> None:
        stop_when_idle(self.job)


# How often a thread that is not serving checks whether the requests in progress leave
# the processor idle, and so how long a connection may wait for a thread that would
# take it while requests are in progress.
WATCH_INTERVAL = 0.005
# Below this share of one processor over the last interval, the requests in progress are
# mostly waiting (on a database, a service, a sleep): another one may start beside them.
SPARE_CPU = 0.5
# How much each interval's share counts in the average that is compared with SPARE_CPU.
BUSY_WEIGHT = 0.25
# After this many intervals with no request in progress, the watching thread stops
# waking until a connection comes.
IDLE_INTERVALS = 200


class ThreadPool(threadpool.ThreadPool):  # type: ignore[misc]
    """Threads that accept connections themselves: between minSpare and maxSpare idle,
    up to maxThreads in all.

    flup's main thread accepted each connection and handed it to a pool thread
    (flup.rst#thread-burst): a hand-off and a turn on the GIL per request, and a burst
    of quick requests spread over threads that then competed for the GIL, which cost
    the one-process server about half its throughput. Here one idle thread at a time
    (the leader) waits on the socket and serves what it accepts; a thread that
    finishes a request leads next, or takes a connection already waiting, so quick
    requests run one after another on one thread, as in a prefork worker.

    Requests run side by side when that helps: another idle thread (the watcher)
    measures the process's processor time every WATCH_INTERVAL, and when the requests
    in progress leave the processor mostly idle (they wait on I/O) while no thread
    leads, it leads, so views that wait run up to maxThreads at once.

    Threads start in :meth:`start`, not in the constructor (flup.rst#thread-constructor);
    :meth:`stop` lets running jobs finish (flup.rst#threaded-shutdown) and tells
    persistent connections to end (flup.rst#persistent-shutdown).
    """

    def __init__(
        self, minSpare: int = 1, maxSpare: int = 5, maxThreads: int = sys.maxsize
    ) -> None:
        # flup's constructor starts threads, with the deprecated setDaemon()
        # (flup.rst#thread-constructor).
        self._minSpare = minSpare
        self._maxSpare = maxSpare
        self._maxThreads = max(minSpare, maxThreads)
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)
        self._watch = threading.Condition(self._lock)
        self._workerCount = 0
        self._threads: list[threading.Thread] = []
        self._running: list[_Accepted] = []
        self._leading = False
        self._watching = False
        self._watch_idle = False
        # The process's share of a processor, averaged over the watcher's last intervals.
        self._busy = 1.0
        self._stop = False
        self._wake: Callable[[], None] | None = None
        self._acceptor: Acceptor | None = None
        self._make_job: Callable[[socket.socket, Any], _Accepted | None] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._stop_fds: tuple[int, int] | None = None

    def start(
        self,
        sock: socket.socket,
        make_job: Callable[[socket.socket, Any], _Accepted | None],
        wake: Callable[[], None],
    ) -> None:
        """Start the spare threads on a non-blocking listening socket.

        ``make_job`` turns an accepted connection into a job, or closes it and returns
        None; ``wake`` is called when a thread exits.
        """
        with self._lock:
            self._stop = False
            self._acceptor = Acceptor(sock)
            self._make_job = make_job
            self._wake = wake
            # Written once on stop and never read: it wakes the leader.
            self._stop_fds = os.pipe()
            self._selector = selectors.DefaultSelector()
            self._selector.register(sock, selectors.EVENT_READ)
            self._selector.register(self._stop_fds[0], selectors.EVENT_READ)
            for _ in range(min(self._maxSpare, self._maxThreads)):
                if not self._start_new_thread():
                    break

    def _start_new_thread(self) -> bool:
        thread = threading.Thread(target=self._worker, name="runfcgi-worker", daemon=True)
        try:
            start_thread(thread)
        except RuntimeError as err:
            logger.error("Cannot start a worker thread: %s", err)
            return False
        self._threads.append(thread)
        self._workerCount += 1
        return True

    def stop(self) -> None:
        """Accept no more; let threads exit once their job is done; tell running jobs to
        end (flup.rst#persistent-shutdown)."""
        with self._lock:
            self._stop = True
            self._followers.notify_all()
            self._watch.notify_all()
            running = list(self._running)
            if self._stop_fds is not None:
                os.write(self._stop_fds[1], b"\0")
        for job in running:
            job.stop_when_idle()

    def alive(self) -> int:
        """How many threads have not exited yet."""
        with self._lock:
            return self._workerCount

    def detach(self) -> None:
        """Forget the wake-up callback, whose pipe is about to be closed."""
        with self._lock:
            self._wake = None
            if self._workerCount:
                return
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            if self._stop_fds is not None:
                for fd in self._stop_fds:
                    os.close(fd)
                self._stop_fds = None

    def _worker(self) -> None:
        try:
            while (job := self._wait_for_job()) is not None:
                while job is not None:
                    self._run(job)
                    job = self._next_job()
        finally:
            with self._lock:
                self._workerCount -= 1
                self._threads.remove(threading.current_thread())
                wake = self._wake
            if wake is not None:
                wake()

    def _run(self, job: _Accepted) -> None:
        with self._lock:
            self._running.append(job)
            stopping = self._stop
            if self._watch_idle:
                self._watch_idle = False
                self._watch.notify()
            idle = self._workerCount - len(self._running)
            while idle < self._minSpare and self._workerCount < self._maxThreads:
                if not self._start_new_thread():
                    break
                idle += 1
        try:
            if stopping:
                job.stop_when_idle()
            job.run()
        except Exception:
            logger.exception("Error while serving a connection.")
        finally:
            with self._lock:
                self._running.remove(job)

    def _next_job(self) -> _Accepted | None:
        """After a request: a connection that is already waiting, taken here while another
        thread leads, unless other requests in progress keep the processor busy. With no
        leader, None: this thread leads next, and finds a waiting connection at once."""
        with self._lock:
            if self._stop or not self._leading:
                return None
            if self._running and self._busy >= SPARE_CPU:
                return None
        return self._accept()

    def _wait_for_job(self) -> _Accepted | None:
        """Lead, watch or follow until there is a connection to serve; None to exit."""
        with self._lock:
            while not self._stop:
                if not self._leading:
                    self._leading = True
                    if not self._watching:
                        # It may have been woken to watch: another idle thread does.
                        self._followers.notify()
                    break
                if not self._watching:
                    if self._watch_until_leading():
                        break
                    continue
                if self._workerCount - len(self._running) > self._maxSpare:
                    return None
                self._followers.wait()
            else:
                return None
        return self._lead()

    def _watch_until_leading(self) -> bool:
        """As the watcher, with the lock held: True once this thread is to lead."""
        self._watching = True
        last_time, last_cpu = time.monotonic(), time.process_time()
        quiet = 0
        try:
            while not self._stop:
                self._watch.wait(None if self._watch_idle else WATCH_INTERVAL)
                now, cpu = time.monotonic(), time.process_time()
                if now > last_time and self._running:
                    # Averaged over several intervals: a process that computes may be
                    # off the processor for one (the web server has it). Idle intervals
                    # do not count: a burst of quick requests after a pause would find
                    # the processor "free" and spread over threads.
                    share = (cpu - last_cpu) / (now - last_time)
                    self._busy += (share - self._busy) * BUSY_WEIGHT
                last_time, last_cpu = now, cpu
                if not self._leading and (not self._running or self._busy < SPARE_CPU):
                    self._leading = True
                    return True
                quiet = 0 if self._running else quiet + 1
                self._watch_idle = quiet >= IDLE_INTERVALS
            return False
        finally:
            self._watching = False
            # An idle thread takes over watching.
            self._followers.notify()

    def _lead(self) -> _Accepted | None:
        """Wait on the socket until a connection is accepted; None on stop."""
        assert self._selector is not None, "start() made the selector"
        assert self._stop_fds is not None, "start() made the pipe"
        try:
            while True:
                ready = self._selector.select()
                if self._stop or any(key.fd == self._stop_fds[0] for key, _ in ready):
                    return None
                job = self._accept()
                if job is not None:
                    return job
        finally:
            with self._lock:
                self._leading = False

    def _accept(self) -> _Accepted | None:
        assert self._acceptor is not None, "set by start()"
        assert self._make_job is not None, "set by start()"
        accepted = self._acceptor()
        return None if accepted is None else self._make_job(*accepted)


class ThreadedServer(Hooks, threadedserver.ThreadedServer):  # type: ignore[misc]
    """flup's threaded server, which waits for its threads and stops when told to.

    TERM and HUP stop gracefully: no new connection is accepted, persistent
    connections are told ``stop_when_idle()`` and running requests get
    ``shutdownTimeout`` seconds to finish. INT does the same with one second.
    USR1 calls :meth:`_handle_usr1`. With ``reload_check`` set, HUP first calls it and
    is ignored, with the error logged, when it returns one.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

    def __init__(
        self,
        jobClass: Callable[..., Job] | None = None,
        jobArgs: Sequence[Any] = (),
        *,
        minSpare: int = 1,
        maxSpare: int = 5,
        maxThreads: int = 50,
        shutdownTimeout: float = 30.0,
    ) -> None:
        # flup's constructor builds flup's pool, which starts threads at once
        # (flup.rst#thread-constructor).
        if maxThreads < 1:
            raise ValueError("maxThreads must be at least 1.")
        if shutdownTimeout < 0:
            raise ValueError("shutdownTimeout must be 0 or more.")
        self._jobClass = jobClass
        self._jobArgs = jobArgs
        self._threadPool = ThreadPool(minSpare, maxSpare, maxThreads)
        self._shutdownTimeout = shutdownTimeout
        self._hupReceived = False
        self._stopping: str | None = None

    def adopt_workers(self, pids: Iterable[int]) -> None:
        """Nothing to wait for: a threaded server's threads end before it reloads."""
        if list(pids):
            raise ValueError("A threaded server has no worker processes to adopt.")

    def shutdown(self) -> None:
        """Nothing to do: run() has waited for the threads (flup's callers still call this)."""

    def run(self, sock: socket.socket) -> bool:
        """Serve on a bound, listening socket until TERM, INT or HUP; True after HUP.

        Returns once the worker threads have finished, or the stop signal's time limit
        has passed. The socket stays open.
        """
        if self._jobClass is None:
            raise TypeError("ThreadedServer.run() needs a jobClass.")
        self._hupReceived = False
        self._stopping = None
        # Threads race for each connection; the losers go back to waiting.
        sock.setblocking(False)
        pool = self._threadPool
        self._signals = SignalQueue(self.SIGNALS)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._signals.fd, selectors.EVENT_READ)
                pool.start(sock, self._make_job, self._signals.wake)
                try:
                    self._serve(selector)
                finally:
                    # No thread accepts once the socket may be offered to a new server.
                    pool.stop()
                if not self._hupReceived:
                    self._stop_begins(self._stopping == GRACEFUL)
                self._wait_for_threads(selector)
        finally:
            pool.detach()
            self._signals.close()
        return self._hupReceived

    def _handle_signals(self) -> None:
        for signum in self._signals.pop():
            if signum == signal.SIGUSR1:
                self._usr1_received()
            elif signum == signal.SIGINT:
                self._stopping = NOW
            elif signum == signal.SIGHUP and not self._reload_allowed():
                continue
            else:
                self._hupReceived = self._hupReceived or signum == signal.SIGHUP
                self._stopping = self._stopping or GRACEFUL

    def _reload_allowed(self) -> bool:
        """With ``reload_check`` set, HUP stops only if the check finds no error."""
        if self.reload_check is None:
            return True
        return self._stopping is None and reload_allowed(self.reload_check)

    def _serve(self, selector: selectors.BaseSelector) -> None:
        """Until a stop: the pool's threads accept, this thread hears signals."""
        while True:
            self._handle_signals()
            if self._stopping is not None:
                return
            selector.select()

    def _make_job(self, client: socket.socket, addr: Any) -> _Accepted | None:
        if not self._isClientAllowed(addr):
            client.close()
            return None
        assert self._jobClass is not None, "checked in run()"
        try:
            return _Accepted(self._jobClass(client, addr, *self._jobArgs), client)
        except Exception:
            logger.exception("Error while setting up a connection.")
            client.close()
            return None

    def _wait_for_threads(self, selector: selectors.BaseSelector) -> None:
        """Wait for running jobs, up to the stop signal's time limit.

        flup.rst#threaded-shutdown and #persistent-shutdown.
        """
        mode = self._stopping
        limit = INT_GRACE if mode == NOW else self._shutdownTimeout
        deadline = time.monotonic() + limit
        pool = self._threadPool
        while pool.alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "%d worker thread(s) still running %.1f s after the stop signal; "
                    "leaving them.",
                    pool.alive(),
                    limit,
                )
                return
            selector.select(remaining)
            self._handle_signals()
            if self._stopping != mode:
                mode = self._stopping
                deadline = min(deadline, time.monotonic() + INT_GRACE)
