"""The threaded model's pool: threads that accept connections themselves and serve them.

flup's pool started threads in its constructor with deprecated calls
(flup.rst#thread-constructor), queued a burst onto threads that were already busy
(flup.rst#thread-burst), and was not waited for on shutdown (flup.rst#threaded-shutdown),
or was waited for forever when a connection was persistent
(flup.rst#persistent-shutdown). None of its code runs here.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django_runfcgi.protocols import Connection
from django_runfcgi.sockets import Acceptor, Stream
from django_runfcgi.workers import stop_when_idle
from django_runfcgi.workers.signals import start_thread

if TYPE_CHECKING:
    from django_runfcgi.workers.threaded.figures import ThreadedFigures

logger = logging.getLogger("django_runfcgi.workers")


class Accepted:
    """A job and the client socket it serves; the socket is closed even if the job raises."""

    def __init__(self, job: Connection, sock: Stream) -> None:
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


class ThreadPool:
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
        self,
        minSpare: int = 1,
        maxSpare: int = 5,
        maxThreads: int = sys.maxsize,
        figures: ThreadedFigures | None = None,
    ) -> None:
        self._figures = figures
        """The status page's figures, when there is one."""
        if figures is not None:
            figures.reads_pool(self.idle_and_alive)
        self._minSpare = minSpare
        self._maxSpare = maxSpare
        self._maxThreads = max(minSpare, maxThreads)
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)
        self._watch = threading.Condition(self._lock)
        self._workerCount = 0
        self._threads: list[threading.Thread] = []
        self._running: list[Accepted] = []
        self._leading = False
        self._watching = False
        self._watch_idle = False
        # The process's share of a processor, averaged over the watcher's last intervals.
        self._busy = 1.0
        self._stop = False
        self._wake: Callable[[], None] | None = None
        self._acceptor: Acceptor | None = None
        self._make_job: Callable[[Stream, Any], Accepted | None] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._stop_fds: tuple[int, int] | None = None

    def start(
        self,
        sock: socket.socket,
        make_job: Callable[[Stream, Any], Accepted | None],
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

    def idle_and_alive(self) -> tuple[int, int]:
        """How many threads wait for a connection, and how many have not exited."""
        with self._lock:
            return self._workerCount - len(self._running), self._workerCount

    def full(self) -> bool:
        """Whether every thread the pool may have is serving a connection."""
        with self._lock:
            return len(self._running) >= self._maxThreads

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
        figures = self._figures
        if figures is not None:
            figures.thread_starts()
        try:
            while (job := self._wait_for_job()) is not None:
                while job is not None:
                    self._run(job)
                    job = self._next_job()
        finally:
            if figures is not None:
                figures.thread_ends()
            with self._lock:
                self._workerCount -= 1
                self._threads.remove(threading.current_thread())
                wake = self._wake
            if wake is not None:
                wake()

    def _run(self, job: Accepted) -> None:
        with self._lock:
            self._running.append(job)
            stopping = self._stop
            if self._watch_idle:
                self._watch_idle = False
                self._watch.notify()
            active = len(self._running)
            idle = self._workerCount - active
            while idle < self._minSpare and self._workerCount < self._maxThreads:
                if not self._start_new_thread():
                    break
                idle += 1
            wake = self._wake
        figures = self._figures
        if figures is not None:
            figures.connection_begins(active)
            if active >= self._maxThreads and not figures.counters.full_noticed and wake:
                wake()  # the main thread samples the listen queue (max_children_reached)
        try:
            if stopping:
                job.stop_when_idle()
            job.run()
        except Exception:
            logger.exception("Error while serving a connection.")
        finally:
            if figures is not None:
                figures.connection_ends()
            with self._lock:
                self._running.remove(job)

    def _next_job(self) -> Accepted | None:
        """After a request: a connection that is already waiting, taken here while another
        thread leads, unless other requests in progress keep the processor busy. With no
        leader, None: this thread leads next, and finds a waiting connection at once."""
        with self._lock:
            if self._stop or not self._leading:
                return None
            if self._running and self._busy >= SPARE_CPU:
                return None
        return self._accept()

    def _wait_for_job(self) -> Accepted | None:
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
                # With no request in progress and no leader, the thread that has just
                # accepted a connection or finished a request is about to serve or lead:
                # leading here would hand the next queued connection to a second thread.
                if not self._leading and self._running and self._busy < SPARE_CPU:
                    self._leading = True
                    return True
                quiet = 0 if self._running else quiet + 1
                self._watch_idle = quiet >= IDLE_INTERVALS
            return False
        finally:
            self._watching = False
            # An idle thread takes over watching.
            self._followers.notify()

    def _lead(self) -> Accepted | None:
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

    def _accept(self) -> Accepted | None:
        assert self._acceptor is not None, "set by start()"
        assert self._make_job is not None, "set by start()"
        accepted = self._acceptor()
        return None if accepted is None else self._make_job(*accepted)
