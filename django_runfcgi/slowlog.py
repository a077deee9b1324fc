"""The slow-request log (slowlog=, slowlogfile=): the stack of each request still
running after ``slowlog`` seconds, written while it runs, as PHP-FPM's slowlog does.

Unlike requesttimeout nothing is interrupted: the entry says where the request spends
its time, and the request goes on. A watcher thread in each serving process (a prefork
worker, the threaded server) sleeps until the oldest running request reaches the limit,
then reads that one thread's stack from ``sys._current_frames()``: no ptrace, no signal.
An idle server's watcher sleeps without a timeout. Imported only with slowlog= set.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from django_runfcgi import daemon
from django_runfcgi.log import DATE_FORMAT
from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.workers.signals import start_thread

logger = logging.getLogger("django_runfcgi.slowlog")

SlowCounter = Callable[[int], None]
"""Counts a slow request for the status page; told the ident of the request's thread."""

METHOD_BYTES = 16
URI_BYTES = 4096
"""How much of a request's method and URI an entry shows."""
STACK_FRAMES = 100
"""The most recent calls an entry shows; a deep recursion shows its end."""

_ESCAPED = tuple(
    chr(byte) if 0x21 <= byte <= 0x7E and byte != 0x5C else f"\\x{byte:02x}" for byte in range(256)
)


def escape(text: str, limit: int) -> str:
    """What the web server sent, as one word of printable ASCII: each other byte (space,
    control characters, newlines, bytes above 127, the backslash) as ``\\xNN``, as nginx
    escapes its access log; cut at `limit` bytes, which ``...`` then ends."""
    data = text.encode("latin-1", "replace")
    shown = "".join(_ESCAPED[byte] for byte in data[:limit])
    return shown + "..." if len(data) > limit else shown or "-"


class SlowLogFile:
    """Where entries go: slowlogfile=, or else file descriptor 2, the server's own
    messages (errlog=, or the terminal), which ``daemon.reopen_logs`` reopens already.

    The file is opened in append mode, and each entry is one write: entries of
    different workers do not interleave.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fd = 2 if path is None else daemon.open_log("slowlogfile", path)

    def write(self, entry: bytes) -> None:
        while entry:
            written = os.write(self.fd, entry)
            entry = entry[written:]

    def reopen(self) -> None:
        """After USR1 (logrotate): the same path, opened again on the same descriptor, so
        that a watcher writing meanwhile writes to one file or the other. A file that
        cannot be opened is reported and the old one kept."""
        if self.path is not None:
            daemon.reopen_onto("slowlogfile", self.path, self.fd, "the slow log")

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)


@dataclass(frozen=True)
class SlowLog:
    """The options: requests running longer than `seconds` are written to `file`. Built
    before any fork; each serving process then gets its own watch."""

    seconds: float
    file: SlowLogFile

    def watch(self, count: SlowCounter | None) -> SlowRequests:
        """A RequestWatch for the calling process, whose watcher thread starts with its
        first request (in a prefork worker, after the fork)."""
        return SlowRequests(self.seconds, self.file, count)


def open_slowlog(seconds: float, path: Path | None) -> SlowLog | None:
    """The slow log the options ask for, its file opened; None when slowlog= is 0.
    Raises daemon.LogError when slowlogfile= cannot be opened."""
    if seconds <= 0:
        return None
    return SlowLog(seconds, SlowLogFile(path))


_Request = tuple[float, str, str, str, bool]
"""A running request as its watch records it when it begins: since (time.monotonic()),
method, URI, query string, and whether it has been logged. A plain tuple: making it
costs no Python call."""


class SlowRequests:
    """A process's running requests (a RequestWatch) and the thread that watches them.

    Per request the watch takes a lock twice and keeps a tuple; only a request that
    turns out slow costs more, in the watcher thread.
    """

    def __init__(self, seconds: float, file: SlowLogFile, count: SlowCounter | None) -> None:
        self._seconds = seconds
        self._file = file
        self._count = count
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        """The watcher waits on it; the requests take its lock alone, in C."""
        self._running: dict[int, _Request] = {}
        self._deadline: float | None = None
        """When the watcher wakes next; None while it waits for a request to begin."""
        self._watcher: threading.Thread | None = None

    def request_begins(self, environ: Environ) -> None:
        get = environ.get
        request = (
            time.monotonic(),
            get("REQUEST_METHOD", ""),
            get("REQUEST_URI", ""),
            get("QUERY_STRING", ""),
            False,
        )
        with self._lock:
            self._running[threading.get_ident()] = request
            if self._deadline is None:
                # Else an earlier deadline is awaited already.
                self._wake_watcher()

    def request_ends(self, status: int, sent: int) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)

    def _wake_watcher(self) -> None:
        """With the lock held: a request began while the watcher waits for one."""
        if self._watcher is None:
            self._start_watcher()
        else:
            self._condition.notify()

    def _start_watcher(self) -> None:
        thread = threading.Thread(target=self._watch, name="runfcgi-slowlog", daemon=True)
        try:
            start_thread(thread)
        except RuntimeError as err:
            logger.error("Cannot start the slow-request watcher: %s", err)
            self._deadline = float("inf")  # Not again for every request.
            return
        self._watcher = thread

    def _watch(self) -> None:
        """The watcher thread: sleep until the oldest running request not yet logged
        reaches the limit, then log what is due."""
        condition = self._condition
        with condition:
            while True:
                now = time.monotonic()
                due = self._take_due(now)
                if due:
                    condition.release()
                    try:
                        self._log(due)
                    finally:
                        condition.acquire()
                    continue
                condition.wait(None if self._deadline is None else self._deadline - now)

    def _take_due(self, now: float) -> list[tuple[int, _Request, _Stack]]:
        """Under the lock, so each thread is still in its request: the requests past the
        limit, marked logged, with their stacks; sets the next deadline."""
        due = []
        deadline = None
        frames = None
        running = self._running
        for ident, request in running.items():
            since, logged = request[0], request[4]
            if logged:
                continue
            when = since + self._seconds
            if when <= now:
                if frames is None:
                    frames = sys._current_frames()
                frame = frames.get(ident)
                if frame is None:
                    continue
                due.append((ident, request, _Stack(frame)))
            elif deadline is None or when < deadline:
                deadline = when
        for ident, request, _ in due:
            since, method, uri, query, _ = request
            running[ident] = (since, method, uri, query, True)
        self._deadline = deadline
        return due

    def _log(self, due: Iterable[tuple[int, _Request, _Stack]]) -> None:
        native = {thread.ident: thread.native_id for thread in threading.enumerate()}
        # The thread that forked a prefork worker keeps its parent's native_id there; a
        # process's main thread has the process's id.
        native[threading.main_thread().ident] = os.getpid()
        now = time.monotonic()
        for ident, request, stack in due:
            try:
                self._file.write(self._entry(request, native.get(ident, ident), stack, now))
            except Exception:
                logger.exception("Cannot write to the slow log.")
            if self._count is not None:
                try:
                    self._count(ident)
                except Exception:
                    logger.exception("Cannot count a slow request.")

    def _entry(self, request: _Request, thread: int | None, stack: _Stack, now: float) -> bytes:
        since, method, uri, query, _ = request
        if query and "?" not in uri:
            uri = f"{uri}?{query}"  # AJP sends the query apart
        header = (
            f"[{time.strftime(DATE_FORMAT)}] [{os.getpid()}] [WARNING] Slow request: "
            f"{escape(method, METHOD_BYTES)} {escape(uri, URI_BYTES)} "
            f"running {now - since:.1f} s (slowlog={self._seconds:g}), "
            f"thread {thread}; its stack, most recent call last:\n"
        )
        return (header + stack.format() + "\n").encode("utf-8", "backslashreplace")


class _Stack:
    """A thread's calls, oldest first, taken without reading the source (that is done
    outside the lock, when the entry is written); beyond STACK_FRAMES the oldest are
    left out."""

    def __init__(self, frame: FrameType) -> None:
        walked = list(traceback.walk_stack(frame))
        self.left_out = max(0, len(walked) - STACK_FRAMES)
        self.calls = traceback.StackSummary.extract(
            iter(walked[:STACK_FRAMES]), lookup_lines=False
        )
        self.calls.reverse()

    def format(self) -> str:
        calls = "".join(self.calls.format())
        if self.left_out:
            return f"  ... {self.left_out} older calls left out\n{calls}"
        return calls
