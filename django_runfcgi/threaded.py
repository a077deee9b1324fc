"""The threaded process model: one process, a main thread that accepts, a pool of threads.

flup's pool starts threads in its constructor with deprecated calls (B19), queues a
burst onto threads that are already busy (B4), and is not waited for on shutdown, or
is waited for forever when a connection is persistent (B21, B5).
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
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


class ThreadPool(threadpool.ThreadPool):  # type: ignore[misc]
    """flup's pool, keeping between minSpare and maxSpare idle threads, up to maxThreads.

    Threads start in :meth:`start`, not in the constructor (B19); a job takes an idle
    thread the moment it is added (B4); :meth:`stop` lets running jobs finish (B21).
    """

    def __init__(
        self, minSpare: int = 1, maxSpare: int = 5, maxThreads: int = sys.maxsize
    ) -> None:
        # flup's constructor starts threads, with the deprecated setDaemon() (B19).
        self._minSpare = minSpare
        self._maxSpare = maxSpare
        self._maxThreads = max(minSpare, maxThreads)
        self._lock = threading.Condition()
        self._workQueue: deque[_Accepted] = deque()
        # Idle threads not yet promised to a queued job.
        self._idleCount = 0
        self._workerCount = 0
        self._threads: list[threading.Thread] = []
        self._running: list[_Accepted] = []
        self._stop = False
        self._full = False
        self._wake: Callable[[], None] | None = None

    def start(self, wake: Callable[[], None]) -> None:
        """Start the spare threads; ``wake`` is called when a thread frees up or exits."""
        with self._lock:
            self._stop = False
            self._wake = wake
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
        self._idleCount += 1
        return True

    def has_capacity(self) -> bool:
        """Whether a job added now would run at once; if not, wake the caller when it would."""
        with self._lock:
            self._full = self._idleCount <= 0 and self._workerCount >= self._maxThreads
            return not self._full

    def addJob(self, job: _Accepted, allowQueuing: bool = False) -> bool:
        """Hand a job to an idle thread, starting one if needed; False if none is free."""
        with self._lock:
            while self._idleCount < self._minSpare and self._workerCount < self._maxThreads:
                if not self._start_new_thread():
                    break
            if self._idleCount <= 0 and not allowQueuing:
                return False
            # B4: flup counted the thread as busy only when it woke up, so a burst was
            # queued onto threads that were already taken.
            self._idleCount -= 1
            self._workQueue.append(job)
            self._lock.notify()
            return True

    def stop(self) -> None:
        """Let threads exit once the queue is empty; tell running jobs to end (B5)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
            running = list(self._running)
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

    def _notify_owner(self) -> None:
        if self._wake is not None:
            self._wake()

    def _worker(self) -> None:
        self._lock.acquire()
        try:
            while True:
                while not self._workQueue and not self._stop:
                    self._lock.wait()
                if not self._workQueue:
                    return
                job = self._workQueue.popleft()
                self._running.append(job)
                stopping = self._stop
                self._lock.release()
                try:
                    if stopping:
                        job.stop_when_idle()
                    job.run()
                except Exception:
                    logger.exception("Error while serving a connection.")
                finally:
                    self._lock.acquire()
                    self._running.remove(job)
                if self._idleCount >= self._maxSpare and not self._stop:
                    return
                self._idleCount += 1
                if self._full:
                    self._notify_owner()
        finally:
            self._workerCount -= 1
            self._threads.remove(threading.current_thread())
            self._notify_owner()
            self._lock.release()


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
        # flup's constructor builds flup's pool, which starts threads at once (B19).
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
        # select() may report a client that is gone before accept() runs.
        sock.setblocking(False)
        pool = self._threadPool
        self._signals = SignalQueue(self.SIGNALS)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._signals.fd, selectors.EVENT_READ)
                pool.start(self._signals.wake)
                try:
                    self._serve(sock, selector)
                    if not self._hupReceived:
                        self._stop_begins(self._stopping == GRACEFUL)
                finally:
                    pool.stop()
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

    def _serve(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        listening = False
        # Reading the empty signal pipe after every accept cost a failed read() and a
        # turn on the GIL per request: read it when select() says it has something.
        signalled = True
        while True:
            if signalled:
                self._handle_signals()
            if self._stopping is not None:
                return
            # While every thread is busy, connections wait in the listen queue instead
            # of being accepted and closed.
            if self._threadPool.has_capacity() != listening:
                listening = not listening
                if listening:
                    selector.register(sock, selectors.EVENT_READ)
                else:
                    selector.unregister(sock)
            signalled = False
            for key, _ in selector.select():
                if key.fileobj is sock:
                    self._accept(sock)
                else:
                    signalled = True

    def _accept(self, sock: socket.socket) -> None:
        try:
            client, addr = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        if not self._isClientAllowed(addr):
            client.close()
            return
        assert self._jobClass is not None, "checked in run()"
        try:
            job = self._jobClass(client, addr, *self._jobArgs)
        except Exception:
            logger.exception("Error while setting up a connection.")
            client.close()
            return
        if not self._threadPool.addJob(_Accepted(job, client)):
            client.close()

    def _wait_for_threads(self, selector: selectors.BaseSelector) -> None:
        """Wait for running jobs, up to the stop signal's time limit (B21, B5)."""
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
