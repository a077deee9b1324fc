"""The status page's figures for method=threaded: a record per pool thread, which only
that thread writes (figures.ThreadRecord), the totals of threads that have exited, and
the counters the main thread samples."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.status.figures import (
    Counts,
    History,
    ThreadedCounters,
    ThreadRecord,
    WorkerFigures,
    peak_memory,
)


class ThreadedFigures:
    """What the pool's threads tell (figures.WorkerWatch, for the calling thread's own
    record) and what the status page reads (figures.PoolSource)."""

    def __init__(self, history: History) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._records: dict[int, ThreadRecord] = {}
        self._accepted = history.accepted_conn
        self._slow = history.slow_requests
        self._most = history.max_active_processes
        self.counters = ThreadedCounters(
            max_listen_queue=history.max_listen_queue,
            max_children_reached=history.max_children_reached,
        )
        self._pool_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def reads_pool(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Where the idle and alive threads are counted: the pool."""
        self._pool_counts = counts

    def thread_starts(self) -> None:
        record = ThreadRecord()
        self._local.record = record
        with self._lock:
            self._records[threading.get_ident()] = record

    def thread_ends(self) -> None:
        with self._lock:
            record = self._records.pop(threading.get_ident(), None)
            if record is not None:
                self._accepted += record.accepted
                self._slow += record.slow
                self._most = max(self._most, record.max_active)

    def connection_begins(self, active: int) -> None:
        self._local.record.connection_begins(active)

    def connection_ends(self) -> None:
        self._local.record.connection_ends()

    def request_begins(self, environ: Environ) -> None:
        self._local.record.request_begins(environ)

    def request_ends(self, status: int, sent: int) -> None:
        self._local.record.request_ends(status, sent)

    def slow_request(self, thread: int | None = None) -> None:
        """Count a slow request of `thread` (a threading ident; the calling thread by
        default). One thread counts them, as it is the only one that writes the count."""
        with self._lock:
            record = self._records.get(threading.get_ident() if thread is None else thread)
        if record is not None:
            record.slow_request()

    def status_counts(self) -> Counts:
        idle, total = self._pool_counts()
        with self._lock:
            records = list(self._records.values())
            accepted, slow, most = self._accepted, self._slow, self._most
        return Counts(
            idle=idle,
            total=total,
            accepted=accepted + sum(record.accepted for record in records),
            slow=slow + sum(record.slow for record in records),
            max_active=max([most, *(record.max_active for record in records)]),
            max_children_reached=self.counters.max_children_reached,
            max_listen_queue=self.counters.max_listen_queue,
        )

    def workers(self) -> Sequence[WorkerFigures]:
        now = time.time()
        memory = peak_memory(os.getpid())
        with self._lock:
            records = list(self._records.values())
        return [record.figures(now, memory) for record in records]
