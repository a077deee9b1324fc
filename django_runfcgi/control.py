"""What the prefork and threaded servers share: how they hear signals and what runfcgi
plugs into them.

Both process models stop, reload and reopen logs on the same signals with the same
meanings; the queue, the stop modes and the hooks live here once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Workers told to stop now (SIGINT) are killed if they are still there after this.
INT_GRACE = 1.0

# How a server is stopping, if it is.
GRACEFUL = "graceful"
NOW = "now"
RELOAD = "reload"

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Job(Protocol):
    """A protocol connection: serves one client socket, then returns."""

    def run(self) -> object: ...


def stop_when_idle(job: object) -> None:
    """Tell a persistent connection to return after its request in progress, if it can."""
    stop = getattr(job, "stop_when_idle", None)
    if stop is None:
        return
    try:
        stop()
    except Exception:
        logger.exception("Could not tell a connection to stop")


def reload_allowed(check: Callable[[], str | None]) -> bool:
    """Run a reload's check of the new code; a failure is logged and cancels the reload."""
    try:
        error = check()
    except Exception:
        logger.exception("Reload cancelled: the check failed; still serving the old code.")
        return False
    if error is not None:
        logger.error("Reload cancelled, still serving the old code: %s", error)
        return False
    return True


# The signals a helper thread blocks. The kernel gives a signal sent to the process to
# any thread that does not block it; taken by a helper thread, its Python handler runs
# only once the main thread wakes for something else, which an idle server may not do.
ASYNC_SIGNALS = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGQUIT,
        signal.SIGALRM,
    }
)


def start_thread(thread: threading.Thread) -> None:
    """Start a helper thread that leaves every process signal to the main thread."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class SignalQueue:
    """Signal handlers that only queue the signal and wake the main loop (flup.rst#stop-signals).

    Since PEP 475, select() and os.wait() resume after a Python signal handler runs,
    so a flag alone is not seen until the next request. The handler also writes a
    byte to a pipe that the main loop selects on.
    """

    def __init__(
        self,
        signums: Iterable[signal.Signals],
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._pending: deque[int] = deque()
        self._on_signal = on_signal
        self._saved: dict[signal.Signals, SignalHandler] = {}
        for signum in signums:
            self._saved[signum] = signal.signal(signum, self._handle)
        # A signal that comes after the main loop's last look at the queue and before its
        # select() has its Python handler run only once select() returns: the wait could
        # last for good. The interpreter's own handler writes to this pipe at once.
        self._previous_wakeup_fd: int | None = None
        if threading.current_thread() is threading.main_thread():
            self._previous_wakeup_fd = signal.set_wakeup_fd(
                self._write_fd, warn_on_full_buffer=False
            )
        # Signals blocked until a handler was in place (see lifecycle) arrive now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self._saved)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)
        self.wake()
        if self._on_signal is not None:
            self._on_signal(signum)

    def wake(self) -> None:
        """Make the main loop's select() return; safe from threads and signal handlers."""
        # A full pipe already holds a wake-up.
        with suppress(OSError):
            os.write(self._write_fd, b"\0")

    def pop(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        with suppress(OSError):
            while os.read(self.fd, 512):
                pass
        signums = []
        while self._pending:
            signums.append(self._pending.popleft())
        return signums

    def close(self) -> None:
        """Give the signals back their previous handlers, blocked, and close the pipe.

        The server has stopped: a second Ctrl-C or TERM now must not cut short the
        removal of the pidfile and socket file (SIGTERM's default would kill at once).
        Such a signal stays pending, and is dropped when the process exits.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, self._saved)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self.fd)
        os.close(self._write_fd)


class Hooks:
    """What runfcgi sets on either server: the reload check and the USR1 and stop actions.

    ``reload_check`` returns an error to cancel a HUP reload. ``on_usr1`` runs after
    SIGUSR1 (runfcgi reopens its log files). ``on_stop`` runs once when TERM
    (graceful: True) or INT starts a stop: runfcgi offers its socket to a new server
    there, or removes its socket file, so that a new server can start while this one
    finishes its requests. ``retiring`` holds the pids of workers
    left to finish their requests after a reload.
    """

    reload_check: Callable[[], str | None] | None = None
    on_usr1: Callable[[], None] | None = None
    on_stop: Callable[[bool], None] | None = None
    retiring: Sequence[int] = ()

    def _handle_usr1(self) -> None:
        """Called from the main loop after SIGUSR1 (flup's handler killed the master:
        flup.rst#sigusr1).

        In a prefork worker, between requests. Calls ``on_usr1`` when set.
        """
        if self.on_usr1 is not None:
            self.on_usr1()

    def _usr1_received(self) -> None:
        try:
            self._handle_usr1()
        except Exception:
            logger.exception("Error while handling SIGUSR1.")

    def _stop_begins(self, graceful: bool) -> None:
        if self.on_stop is not None:
            try:
                self.on_stop(graceful)
            except Exception:
                logger.exception("Error while starting to stop.")
