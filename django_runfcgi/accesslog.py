"""The access log (accesslog=, accessformat=): one line per request, written by the
worker that served it once the response is sent.

The log is a request watch (:class:`~django_runfcgi.protocols.wsgi.RequestWatch`)
handed to the protocol, so prefork workers and the threaded server's threads write
their own lines, on every protocol; a server without accesslog= has no watch and pays
nothing. Each line goes out in one ``write()`` on a descriptor opened with
``O_APPEND``: the lines of several workers never interleave. What the client sent (the
URI, the headers) is escaped as nginx does, so no request can write a line of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from django_runfcgi import daemon
from django_runfcgi.accessformat import STDOUT, LineFormat, Target

if TYPE_CHECKING:
    from django_runfcgi.protocols.wsgi import Environ

logger = logging.getLogger(__name__)


def check(target: Target | None) -> None:
    """What :class:`AccessLog` would fail to open, without creating a file
    (``runfcgi check``); raises daemon.LogError."""
    if target is not None and target != STDOUT:
        daemon.check_log("accesslog", target)


class AccessLog:
    """The access log of one server: a request watch that writes a line per request.

    Opened in the foreground, before the server detaches, so that a path that cannot
    be written fails on the terminal; prefork workers inherit the descriptor, and each
    reopens its own on USR1 (``reopen``). The per-request state is the calling
    thread's, as the threaded server's threads share the log.
    """

    def __init__(self, target: Target, line_format: LineFormat) -> None:
        self.target = target
        self._format = line_format
        self._fd = 1 if target == STDOUT else daemon.open_log("accesslog", target)
        self._local = threading.local()
        self._failing = False

    def request_begins(self, environ: Environ) -> None:
        local = self._local
        local.environ = environ
        local.start = time.perf_counter_ns()

    def request_ends(self, status: int, sent: int) -> None:
        local = self._local
        nanoseconds = time.perf_counter_ns() - local.start
        started = time.time() - nanoseconds / 1e9
        self._write(self._format.line(local.environ, status, sent, nanoseconds, started))
        local.environ = None

    def _write(self, data: bytes) -> None:
        """One write per line: O_APPEND places it whole at the end of the file."""
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as err:
            if not self._failing:
                self._failing = True
                logger.error(
                    "Cannot write to accesslog=%s: %s; its lines are lost until it works again.",
                    self.target,
                    err.strerror,
                )
            return
        self._failing = False

    def reopen(self) -> None:
        """After USR1 (logrotate moved the file away): write to a file at the path again.

        The new file takes the old one's descriptor in one step, so a thread writing at
        that moment writes whole to one file or the other. A file that cannot be opened
        is reported and the old one kept.
        """
        if self.target == STDOUT:
            return  # The standard output is reopened with outlog=.
        if daemon.reopen_onto("accesslog", self.target, self._fd, "the access log"):
            self._failing = False

    def close(self) -> None:
        if self.target != STDOUT:
            os.close(self._fd)
