"""The status page and ping, answered by runfcgi in the worker, never by Django.

A request whose path (SCRIPT_NAME + PATH_INFO, as the application would see them
joined: the full path of the URL) equals status= gets the pool's figures, in the
format its query string asks for, as PHP-FPM's status page does: plain text by
default, ``?json``, ``?openmetrics``, ``?html``, and ``?full`` for one entry per worker.
One equal to ping= gets ``pong``. Every other request goes to the application as it is:
the application's response reaches the protocol unwrapped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from django_runfcgi.protocols.wsgi import Environ, WSGIApplication
from django_runfcgi.status import formats
from django_runfcgi.status.figures import Counts, History, PoolFigures, PoolSource
from django_runfcgi.status.listen import Queue, listen_queue
from django_runfcgi.workers import Limits

PONG = b"pong"
"""What ping= answers, as PHP-FPM's ping.response."""
NO_CACHE = [
    ("Cache-Control", "no-cache, no-store, must-revalidate, max-age=0"),
    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
]


def _version() -> str:
    from importlib import metadata  # noqa: PLC0415 - heavy, and needed once

    try:
        return metadata.version("django-runfcgi")
    except metadata.PackageNotFoundError:
        return "unknown"


class Status:
    """One server's status page: its settings, and the pool it reads once the process
    model serves (:meth:`serving`)."""

    def __init__(
        self,
        *,
        status_path: str | None,
        ping_path: str | None,
        protocol: str,
        process_manager: str,
        limits: Limits,
        history: History | None = None,
    ) -> None:
        self.status_path = status_path
        self.ping_path = ping_path
        self.protocol = protocol
        self.process_manager = process_manager
        self.limits = limits
        self.history = history if history is not None else History()
        self.version = _version()
        self._source: PoolSource | None = None
        self._sock: socket.socket | None = None
        self._pool = ""
        self._last: Counts | None = None

    def serving(self, sock: socket.socket, source: PoolSource) -> None:
        """The process model serves `sock`; the page reads the pool from `source`."""
        self._sock = sock
        self._source = source
        self._pool = pool_name(sock)

    def stopped(self) -> None:
        """The process model is about to free what `source` reads: its last counts are
        kept for the server that a reload starts."""
        if self._source is not None:
            self._last = self._source.status_counts()
        self._source = None

    def history_after_reload(self) -> History:
        """What the re-executed server starts from."""
        counts = self._last
        if counts is None:
            counts = Counts(
                idle=0,
                total=0,
                accepted=self.history.accepted_conn,
                slow=self.history.slow_requests,
                max_active=self.history.max_active_processes,
                max_children_reached=self.history.max_children_reached,
                max_listen_queue=self.history.max_listen_queue,
                recycled_maxrequests=self.history.recycled_maxrequests,
                recycled_maxmemory=self.history.recycled_maxmemory,
            )
        return self.history.after(counts)

    def queue(self) -> Queue | None:
        return listen_queue(self._sock) if self._sock is not None else None

    def figures(self, *, full: bool) -> PoolFigures | None:
        """The pool now; None before the process model serves."""
        source = self._source
        if source is None:
            return None
        counts = source.status_counts()
        queue = self.queue()
        now = time.time()
        limits = self.limits
        return PoolFigures(
            pool=self._pool,
            process_manager=self.process_manager,
            start_time=self.history.start_time,
            start_since=max(0, int(now - self.history.start_time)),
            accepted_conn=counts.accepted,
            listen_queue=queue.waiting if queue is not None else None,
            max_listen_queue=max(counts.max_listen_queue, queue.waiting if queue else 0),
            listen_queue_len=queue.backlog if queue is not None else None,
            idle_processes=counts.idle,
            active_processes=counts.total - counts.idle,
            total_processes=counts.total,
            max_active_processes=counts.max_active,
            max_children_reached=counts.max_children_reached,
            slow_requests=counts.slow,
            protocol=self.protocol,
            version=self.version,
            reloads=self.history.reloads,
            recycled_maxrequests=counts.recycled_maxrequests,
            recycled_maxmemory=counts.recycled_maxmemory,
            limits={
                "maxchildren": limits.maxchildren,
                "minspare": limits.minspare,
                "maxspare": limits.maxspare,
                "maxrequests": limits.maxrequests,
                "maxrequestsjitter": limits.maxrequestsjitter,
                "maxmemory": limits.maxmemory,
                "requesttimeout": limits.requesttimeout,
                "shutdowntimeout": limits.shutdowntimeout,
            },
            processes=tuple(source.workers()) if full else None,
        )

    def around(self, application: WSGIApplication) -> StatusPage:
        """The application with the status and ping paths answered in front of it."""
        return StatusPage(application, self)


def pool_name(sock: socket.socket) -> str:
    """The address served, as PHP-FPM names a pool: unix:/path or host:port."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            return "unix:@" + name.lstrip(b"\0").decode("utf-8", "replace")
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wanted(query: str) -> tuple[str, bool]:
    """The format a query string asks for (PHP-FPM's words: json, html, openmetrics,
    else text) and whether it asks for ``full``."""
    words = [part.partition("=")[0] for part in query.split("&")]
    chosen = next((word for word in words if word in formats.RENDERERS), "text")
    return chosen, "full" in words


class StatusPage:
    """The WSGI application runfcgi serves when status= or ping= is set: those paths
    are answered here, every other request is the application's, returned as it is."""

    def __init__(self, application: WSGIApplication, status: Status) -> None:
        self._application = application
        self._status = status
        self._answers: dict[str, Callable[[Environ, Callable[..., Any]], Iterable[bytes]]] = {}
        if status.status_path is not None:
            self._answers[status.status_path] = self._status_page
        if status.ping_path is not None:
            self._answers[status.ping_path] = self._pong

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self._answers.get(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        if answer is None:
            return self._application(environ, start_response)
        return answer(environ, start_response)

    def _pong(self, environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        return _answer(start_response, "200 OK", "text/plain", PONG)

    def _status_page(self, environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        chosen, full = wanted(environ.get("QUERY_STRING", ""))
        figures = self._status.figures(full=full)
        if figures is None:
            return _answer(
                start_response,
                "503 Service Unavailable",
                "text/plain",
                b"The status page is not available in this process.\n",
            )
        content_type, render = formats.RENDERERS[chosen]
        return _answer(start_response, "200 OK", content_type, render(figures))


def _answer(
    start_response: Callable[..., Any], status: str, content_type: str, body: bytes
) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *NO_CACHE],
    )
    return [body]
