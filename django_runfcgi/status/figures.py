"""The figures of the status page, under PHP-FPM's names, and how they are gathered.

A worker keeps the figures of its own requests in a record of its own: a prefork
worker in its slot of the scoreboard's shared memory
(:class:`~django_runfcgi.workers.prefork.scoreboard.SlotRecord`), a thread in a
:class:`ThreadRecord`. Only that worker writes its record, so nothing is locked on the
request path; the pool's figures are sums over the records, plus what the main loop
samples (:class:`Sampler`): the listen queue's peak and the times the pool was full.
A status page shows a moment: figures a worker is writing may be one request apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.status.listen import Queue

STATE_IDLE, STATE_READING, STATE_RUNNING = 0, 1, 2
"""A worker's state: waiting for a connection; on a connection, waiting for or reading
the request; in the application."""
STATE_NAMES = ("Idle", "Reading headers", "Running")
"""The states as PHP-FPM names them."""

METHOD_BYTES = 16
URI_BYTES = 512
"""How much of a request's method, URI and query a record keeps (as PHP-FPM: 16, 128
and 512)."""

cpu_time = time.thread_time
"""The calling thread's processor seconds. getrusage() is no substitute: it leaves out
the time since the thread was last scheduled, so a short request counted 0."""


def peak_memory(pid: int) -> int:
    """The peak resident memory of process `pid` in bytes (VmHWM), 0 where unknown.

    Read when the page is shown, not after each request: getrusage() per request cost
    more than the rest of the figures together. For an idle worker it is what it had
    reached by the end of its last request.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class WorkerWatch(Protocol):
    """What a process model tells a worker's record: each connection it accepts, and
    each request (through the protocol's ``watch_requests``). Whether the worker is on a
    connection at all, the process model knows already (the scoreboard, the pool)."""

    def connection_begins(self, active: int) -> None:
        """A connection was accepted; `active` workers are busy, this one included."""

    def request_begins(self, environ: Environ) -> None: ...

    def request_ends(self, status: int, sent: int) -> None: ...

    def slow_request(self) -> None:
        """Count one more request that ran past the slow-request limit."""


@dataclass(frozen=True)
class WorkerFigures:
    """One worker as ``?full`` shows it (PHP-FPM's per-process fields)."""

    pid: int
    state: str
    start_time: float
    start_since: int
    requests: int
    request_duration: float
    """Seconds, of the request in progress when Running, else of the last one."""
    request_method: str
    request_uri: str
    content_length: int
    last_request_cpu: float
    """Processor seconds of the last finished request."""
    last_request_memory: int
    """Peak resident memory of the worker's process (VmHWM), in bytes."""

    @property
    def last_request_cpu_percent(self) -> float:
        """PHP-FPM's "last request cpu": its processor time over its duration."""
        if self.state == STATE_NAMES[STATE_RUNNING] or self.request_duration <= 0:
            return 0.0
        return 100.0 * self.last_request_cpu / self.request_duration


def worker_figures(
    *,
    pid: int,
    state: int,
    start_time: float,
    requests: int,
    duration: float,
    method: str,
    uri: str,
    query: str,
    length: str,
    cpu: float,
    memory: int,
    now: float,
) -> WorkerFigures:
    """A worker's figures from its record, read at `now` (time.time()): the request's
    fields as the web server sent them, put together here rather than per request."""
    if query and "?" not in uri:
        uri = f"{uri}?{query}"  # AJP sends the query apart
    return WorkerFigures(
        pid=pid,
        state=STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else "Unknown",
        start_time=start_time,
        start_since=max(0, int(now - start_time)),
        requests=requests,
        request_duration=duration,
        request_method=method or "-",
        request_uri=uri or "-",
        content_length=int(length) if length.isdigit() else 0,
        last_request_cpu=cpu,
        last_request_memory=memory,
    )


@dataclass(frozen=True)
class Counts:
    """What a process model counts, for the pool's figures."""

    idle: int
    total: int
    accepted: int
    slow: int
    max_active: int
    max_children_reached: int
    max_listen_queue: int
    recycled_maxrequests: int = 0
    recycled_maxmemory: int = 0
    """Prefork workers replaced after maxrequests (with its jitter), and after holding
    more than maxmemory."""


class PoolSource(Protocol):
    """What the status page reads from a process model."""

    def status_counts(self) -> Counts: ...

    def workers(self) -> Sequence[WorkerFigures]: ...


class PoolCounters(Protocol):
    """The pool's figures that only the main loop writes (see Sampler)."""

    max_listen_queue: int
    max_children_reached: int
    full_noticed: bool


@dataclass
class History:
    """The figures a server carries over a reload (HUP), which re-executes it: they stay
    counted since the first start."""

    start_time: float = field(default_factory=time.time)
    reloads: int = 0
    accepted_conn: int = 0
    slow_requests: int = 0
    max_active_processes: int = 0
    max_children_reached: int = 0
    max_listen_queue: int = 0
    recycled_maxrequests: int = 0
    recycled_maxmemory: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def after(self, counts: Counts) -> History:
        """This history once a server that counted `counts` reloads."""
        return History(
            start_time=self.start_time,
            reloads=self.reloads + 1,
            accepted_conn=counts.accepted,
            slow_requests=counts.slow,
            max_active_processes=counts.max_active,
            max_children_reached=counts.max_children_reached,
            max_listen_queue=counts.max_listen_queue,
            recycled_maxrequests=counts.recycled_maxrequests,
            recycled_maxmemory=counts.recycled_maxmemory,
        )


@dataclass(frozen=True)
class PoolFigures:
    """The pool as the status page shows it, PHP-FPM's fields first."""

    pool: str
    process_manager: str
    start_time: float
    start_since: int
    accepted_conn: int
    listen_queue: int | None
    max_listen_queue: int
    listen_queue_len: int | None
    idle_processes: int
    active_processes: int
    total_processes: int
    max_active_processes: int
    max_children_reached: int
    slow_requests: int
    protocol: str
    version: str
    reloads: int
    recycled_maxrequests: int
    recycled_maxmemory: int
    limits: dict[str, float]
    """maxchildren, minspare, maxspare, maxrequests, maxrequestsjitter, maxmemory,
    requesttimeout, shutdowntimeout."""
    processes: tuple[WorkerFigures, ...] | None
    """One entry per worker with ?full, else None."""


class ThreadRecord:
    """One thread's figures (method=threaded): written by that thread only."""

    __slots__ = (
        "_cpu_at_start",
        "accepted",
        "cpu",
        "duration",
        "length",
        "max_active",
        "method",
        "pid",
        "query",
        "request_start",
        "requests",
        "slow",
        "start_time",
        "state",
        "uri",
    )

    def __init__(self) -> None:
        self.pid = threading.get_native_id()
        self.start_time = time.time()
        self.state = STATE_IDLE
        self.accepted = self.requests = self.slow = self.max_active = 0
        self.request_start = self.duration = self.cpu = self._cpu_at_start = 0.0
        self.method = self.uri = self.query = self.length = ""

    def connection_begins(self, active: int) -> None:
        self.accepted += 1
        self.max_active = max(self.max_active, active)
        self.state = STATE_READING

    def connection_ends(self) -> None:
        self.state = STATE_IDLE

    def request_begins(self, environ: Environ) -> None:
        self.request_start = time.monotonic()
        self._cpu_at_start = cpu_time()
        self.method = environ.get("REQUEST_METHOD", "")
        self.uri = environ.get("REQUEST_URI", "")
        self.query = environ.get("QUERY_STRING", "")
        self.length = environ.get("CONTENT_LENGTH", "")
        self.state = STATE_RUNNING

    def request_ends(self, status: int, sent: int) -> None:
        self.cpu = cpu_time() - self._cpu_at_start
        self.duration = time.monotonic() - self.request_start
        self.requests += 1
        self.state = STATE_READING

    def slow_request(self) -> None:
        self.slow += 1

    def figures(self, now: float, memory: int) -> WorkerFigures:
        """As read at `now` (time.time()); the threads share the process's `memory`."""
        running = self.state == STATE_RUNNING
        return worker_figures(
            pid=self.pid,
            state=self.state,
            start_time=self.start_time,
            requests=self.requests,
            duration=time.monotonic() - self.request_start if running else self.duration,
            method=self.method[:METHOD_BYTES],
            uri=self.uri[:URI_BYTES],
            query=self.query[:URI_BYTES],
            length=self.length,
            cpu=self.cpu,
            memory=memory,
            now=now,
        )


SAMPLE_SECONDS = 1.0
"""How often the main loop samples the listen queue, as PHP-FPM's master does."""
FULL_SAMPLE_SECONDS = 0.1
"""How often, while the pool is full and no connection has been seen waiting yet."""


class Sampler:
    """In the main loop (the prefork master, the threaded server's main thread): the
    figures that need watching over time.

    ``max_listen_queue`` is the longest accept queue seen. ``max_children_reached``
    counts the times every worker the pool may have (maxchildren) was busy while a
    connection waited in the listen queue: once per such time, which ends when a
    worker is idle again. A worker that makes the pool full calls :meth:`pool_full`
    (through its master), so a short time is seen too.
    """

    def __init__(
        self,
        counters: PoolCounters,
        queue: Callable[[], Queue | None],
        full: Callable[[], bool],
    ) -> None:
        self._counters = counters
        self._queue = queue
        self._full = full
        self._counted = False
        self._next = 0.0

    def pool_full(self) -> None:
        """Sample at the next turn of the main loop."""
        self._next = 0.0

    def due(self, now: float) -> float:
        """Sample if it is time; when to sample next (time.monotonic())."""
        if now < self._next:
            return self._next
        counters = self._counters
        queue = self._queue()
        if queue is not None and queue.waiting > counters.max_listen_queue:
            counters.max_listen_queue = queue.waiting
        if not self._full():
            self._counted = False
            counters.full_noticed = False
            self._next = now + SAMPLE_SECONDS
            return self._next
        counters.full_noticed = True
        if not self._counted and (queue is None or queue.waiting > 0):
            counters.max_children_reached += 1
            self._counted = True
        self._next = now + (SAMPLE_SECONDS if self._counted else FULL_SAMPLE_SECONDS)
        return self._next


@dataclass
class ThreadedCounters:
    """PoolCounters for method=threaded: plain attributes the main thread writes."""

    max_listen_queue: int = 0
    max_children_reached: int = 0
    full_noticed: bool = False
