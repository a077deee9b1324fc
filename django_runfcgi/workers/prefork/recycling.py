"""When a prefork worker is replaced by a fresh one, which bounds what a leaking
application can grow to.

``maxrequests``: after that many requests, plus a random 0 to ``maxrequestsjitter``
drawn by each worker for itself (gunicorn's max_requests_jitter), so that workers
started together are not all replaced at once. ``maxmemory``: once the worker's
resident memory is above it after a request (uWSGI's reload-on-rss). The request in
progress always finishes; on a connection the web server keeps open, the worker closes
it after that request, between requests, as the protocol allows.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.workers import Limits

logger = logging.getLogger("django_runfcgi.workers")

MB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory (RSS)."""
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * _PAGE


class Recycling:
    """Built in the worker once forked: its own jittered limit, and the watch that counts
    its requests and measures its memory after each."""

    def __init__(
        self,
        limits: Limits,
        end_connection: Callable[[], None],
        recycled: Callable[[bool], None] | None = None,
    ) -> None:
        """`recycled` hears once why the worker is due (True: maxmemory), for the status
        page's counts."""
        # A spread, not a secret; the random module is reseeded in each forked child.
        jitter = random.randint(0, limits.maxrequestsjitter)  # noqa: S311
        self.limit = limits.maxrequests + jitter if limits.maxrequests > 0 else 0
        self._maxmemory = limits.maxmemory
        self._end_connection = end_connection
        self._recycled = recycled
        self._requests = 0
        self.due = False
        """Whether the worker leaves once its connection in progress ends."""

    @property
    def watches_requests(self) -> bool:
        return self.limit > 0 or self._maxmemory > 0

    def request_begins(self, environ: Environ) -> None:
        """Nothing to do before a request."""

    def request_ends(self, status: int, sent: int) -> None:
        """After each request: a worker at its limit ends its connection, then leaves.

        Requests, not connections, are counted: a web server that keeps its connections
        open (FastCGI keep-conn, AJP) would otherwise keep a worker for ever.
        """
        self._requests += 1
        if self.due:
            return
        over_memory = False
        if 0 < self.limit <= self._requests:
            self.due = True
        elif self._maxmemory > 0:
            used = resident_bytes()
            if used > self._maxmemory * MB:
                self.due = over_memory = True
                logger.info(
                    "Worker process %d holds %d MB, above maxmemory=%d; replacing it after "
                    "its request.",
                    os.getpid(),
                    used // MB,
                    self._maxmemory,
                )
        if self.due:
            if self._recycled is not None:
                self._recycled(over_memory)
            self._end_connection()
