"""What runfcgi plugs into either process model: the reload check, the actions for
USR1 and for the start of a stop, and what each turn of the main loop reports.

Each runs in the server's main loop, never in a signal handler, and an exception in one
is logged without stopping the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("django_runfcgi.workers")


@dataclass(frozen=True)
class Load:
    """How busy a pool is, as cheaply as the process model can tell: its workers
    (``unit``: "processes" or "threads"), those on a connection, the most it may have,
    and the connections accepted since the first start when the status page counts
    them (status=), else None."""

    busy: int
    alive: int
    most: int
    unit: str
    accepted: int | None = None


@dataclass
class Hooks:
    """``reload_check`` returns an error to cancel a HUP reload. ``on_usr1`` runs after
    SIGUSR1 (runfcgi reopens its log files), in the master and in each prefork worker.
    ``on_stop`` runs once when TERM (graceful: True) or INT starts a stop: runfcgi offers
    its socket to a new server there, or removes its socket file, so that a new server
    can start while this one finishes its requests."""

    reload_check: Callable[[], str | None] | None = None
    on_usr1: Callable[[], None] | None = None
    on_stop: Callable[[bool], None] | None = None
    on_turn: Callable[[Callable[[], Load]], float | None] | None = None
    """Called at each turn of the main loop with how to read the pool's load (read only
    when wanted); returns when (time.monotonic()) it wants the next turn, or None. Under
    systemd it sends the watchdog's pings and the STATUS= figures from there, so that a
    stalled loop stops the pings."""

    def reload_allowed(self) -> bool:
        """Whether a HUP may reload: no check, or the check of the new code finds no error.
        A failure is logged and cancels the reload (flup.rst#sigusr1 for USR1's)."""
        if self.reload_check is None:
            return True
        try:
            error = self.reload_check()
        except Exception:
            logger.exception("Reload cancelled: the check failed; still serving the old code.")
            return False
        if error is not None:
            logger.error("Reload cancelled, still serving the old code: %s", error)
            return False
        return True

    def usr1(self) -> None:
        """After SIGUSR1 (flup's handler killed the master: flup.rst#sigusr1)."""
        if self.on_usr1 is None:
            return
        try:
            self.on_usr1()
        except Exception:
            logger.exception("Error while handling SIGUSR1.")

    def stop_begins(self, graceful: bool) -> None:
        if self.on_stop is None:
            return
        try:
            self.on_stop(graceful)
        except Exception:
            logger.exception("Error while starting to stop.")

    def turn(self, load: Callable[[], Load]) -> float | None:
        """At each turn of the main loop: the next time it wants one. A failure is
        logged and asks for no turn, so that it cannot spin the loop."""
        if self.on_turn is None:
            return None
        try:
            return self.on_turn(load)
        except Exception:
            logger.exception("Error while reporting the server's state.")
            return None
