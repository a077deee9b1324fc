"""Signals: what each one asks of a server, and how the main loop hears them.

One table says what TERM, INT, HUP and USR1 mean, for the prefork master and the
threaded server alike and for a prefork worker; handlers only queue the signal and wake
the main loop, which acts (flup.rst#stop-signals).
"""

from __future__ import annotations

import enum
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django_runfcgi.workers.hooks import Hooks

INT_GRACE = 1.0
"""Workers told to stop now (SIGINT) are killed if they are still there after this."""

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Intent(enum.Enum):
    """What a signal asks for."""

    STOP = "stop gracefully"
    STOP_NOW = "stop now"
    RELOAD = "reload the code"
    REOPEN_LOGS = "reopen the log files"
    CHILD_EXITED = "reap a worker"


INTENTS: dict[signal.Signals, tuple[Intent, Intent | None]] = {
    # signal: (to the prefork master or the threaded server, to a prefork worker)
    signal.SIGTERM: (Intent.STOP, Intent.STOP),
    signal.SIGINT: (Intent.STOP_NOW, None),  # a worker: KeyboardInterrupt, from here
    signal.SIGHUP: (Intent.RELOAD, Intent.STOP),  # a worker: the master reloads
    signal.SIGUSR1: (Intent.REOPEN_LOGS, Intent.REOPEN_LOGS),
    signal.SIGCHLD: (Intent.CHILD_EXITED, None),
}
SERVER_SIGNALS = tuple(signum for signum in INTENTS if signum != signal.SIGCHLD)
"""What a server handles; the prefork master also SIGCHLD."""
WORKER_SIGNALS = tuple(signum for signum, (_, intent) in INTENTS.items() if intent is not None)


class Stop(enum.Enum):
    """How a server is stopping."""

    GRACEFUL = "graceful"
    NOW = "now"
    RELOAD = "reload"


@dataclass
class Orders:
    """What the signals received so far ask of a server: the same rules for both models.

    TERM stops gracefully, INT stops now (also during a graceful stop), HUP reloads
    unless a stop is under way or the reload check finds an error, USR1 reopens the logs.
    """

    hooks: Hooks
    stop: Stop | None = None

    def take(self, signums: Iterable[int]) -> None:
        for signum in signums:
            intent = INTENTS[signal.Signals(signum)][0]
            if intent is Intent.REOPEN_LOGS:
                self.hooks.usr1()
            elif intent is Intent.STOP_NOW:
                self.stop = Stop.NOW
            elif intent is Intent.STOP:
                self.stop = self.stop or Stop.GRACEFUL
            elif intent is Intent.RELOAD and self.stop is None and self.hooks.reload_allowed():
                self.stop = Stop.RELOAD
            # CHILD_EXITED only wakes the loop, which reaps.


class StopDeadline:
    """When a stop must be over: ``shutdowntimeout`` after a graceful stop begins, or
    INT_GRACE after INT, also when INT comes during a graceful stop."""

    def __init__(self, orders: Orders, shutdowntimeout: float) -> None:
        self._orders = orders
        self.mode = orders.stop
        self.limit = INT_GRACE if self.mode is Stop.NOW else shutdowntimeout
        self._deadline = time.monotonic() + self.limit

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def hurried(self) -> bool:
        """Whether INT came since the last look: the stop is now one of INT_GRACE."""
        if self._orders.stop is self.mode:
            return False
        self.mode = self._orders.stop
        self._deadline = min(self._deadline, time.monotonic() + INT_GRACE)
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
