"""The process models: prefork (a master and worker processes) and threaded (one process,
a pool of threads).

Each is handed a protocol (:class:`django_runfcgi.protocols.ServedProtocol`: who may
connect, and a connection per accepted socket), the pool's :class:`Limits` and the
:class:`~django_runfcgi.workers.hooks.Hooks` runfcgi plugs in. Neither knows a wire
format, and no protocol knows how it is served. flup's process classes are not used:
their pools neither grew nor stopped when told to (docs/flup.rst).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("django_runfcgi.workers")


@dataclass(frozen=True)
class Limits:
    """The pool's bounds, as the options of the same names give them.

    At least ``maxspare`` workers and ``minspare`` idle ones, up to ``maxchildren`` in all;
    a prefork worker is replaced after ``maxrequests`` requests plus up to
    ``maxrequestsjitter`` (0: never), once it holds more than ``maxmemory`` megabytes
    after a request (0: no limit), or once a request takes longer than
    ``requesttimeout`` seconds (0: no limit); a graceful stop waits ``shutdowntimeout``
    seconds for requests in progress.
    """

    minspare: int = 1
    maxspare: int = 5
    maxchildren: int = 50
    maxrequests: int = 0
    maxrequestsjitter: int = 0
    maxmemory: int = 0
    shutdowntimeout: float = 30.0
    requesttimeout: float = 0.0

    def __post_init__(self) -> None:
        if self.maxchildren < 1:
            raise ValueError("maxchildren must be at least 1.")
        if self.shutdowntimeout < 0:
            raise ValueError("shutdowntimeout must be 0 or more.")
        if self.requesttimeout < 0:
            raise ValueError("requesttimeout must be 0 or more.")


class ProcessModel(Protocol):
    """What runfcgi's lifecycle needs of a process model."""

    @property
    def retiring(self) -> Sequence[int]:
        """After a reload: the pids of workers left to finish their requests."""
        ...

    def run(self, sock: socket.socket) -> bool:
        """Serve on a bound, listening socket until stopped; True when HUP asked to reload."""
        ...

    def adopt_workers(self, pids: Iterable[int]) -> None:
        """Wait for the workers a previous master (this process, before exec) left."""
        ...


class _Stoppable(Protocol):
    def stop_when_idle(self) -> None: ...


def stop_when_idle(connection: _Stoppable) -> None:
    """Tell a connection to return after its request in progress; a failure is logged."""
    try:
        connection.stop_when_idle()
    except Exception:
        logger.exception("Could not tell a connection to stop")
