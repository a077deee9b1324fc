"""What systemd hands a service and what it wants to hear back, without libsystemd.

Socket activation passes listening sockets from file descriptor 3 on and names the
process they are meant for in ``LISTEN_PID``; a copy of those variables seen by any
other process (a worker, a program the project runs) is not meant for it. ``sd_notify``
is one datagram on the unix socket named by ``NOTIFY_SOCKET``; ``WATCHDOG_USEC`` (for
the process ``WATCHDOG_PID`` names, if set) asks for ``WATCHDOG=1`` at least that often.
All these variables are taken out of the environment at start, so that nothing the
server starts misreads them; a reload puts the notification ones back for the process
it becomes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from django_runfcgi.workers.hooks import Load

logger = logging.getLogger(__name__)

LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
NOTIFY_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
STATUS_SECONDS = 3.0
"""How often, at most, the main loop reads its figures for ``STATUS=``; it sends them only
when they changed."""
# Set by a socket-activated master for the process it becomes on a reload.
ACTIVATED_VARIABLE = "RUNFCGI_SYSTEMD_SOCKET"


class ActivationError(Exception):
    """The sockets systemd passed cannot be served; the message is one sentence."""


def listen_fd() -> int | None:
    """The descriptor of the one socket systemd passed to this process, if it passed one.

    The variables are removed whether or not they name this process, as
    ``sd_listen_fds(1)`` does.
    """
    values = {name: os.environ.pop(name, None) for name in LISTEN_VARIABLES}
    pid, fds = values["LISTEN_PID"], values["LISTEN_FDS"]
    if pid is None or fds is None:
        return None
    if not pid.strip().isdigit() or int(pid) != os.getpid():
        return None
    if not fds.strip().isdigit():
        raise ActivationError(f"LISTEN_FDS={fds!r} is not a number of file descriptors.")
    count = int(fds)
    if count == 0:
        return None
    if count > 1:
        names = values["LISTEN_FDNAMES"]
        named = f" ({names.replace(':', ', ')})" if names else ""
        raise ActivationError(
            f"LISTEN_FDS={count}{named}: runfcgi serves one socket; give its service a "
            "single ListenStream= in one .socket unit."
        )
    fd = LISTEN_FDS_START
    try:
        os.set_inheritable(fd, False)
    except OSError:
        raise ActivationError(
            f"LISTEN_FDS=1 but file descriptor {fd} is not open; start runfcgi from the "
            "socket unit, not by hand with LISTEN_PID set."
        ) from None
    return fd


def keep_activated() -> None:
    """Tell the process this one becomes (a reload) that its socket came from systemd."""
    os.environ[ACTIVATED_VARIABLE] = str(os.getpid())


def was_activated() -> bool:
    """Whether this process took over a socket that systemd passed to it before a reload.

    Only a value naming this very process counts, as a copy in a child's environment
    would not.
    """
    return os.environ.pop(ACTIVATED_VARIABLE, None) == str(os.getpid())


def watchdog_interval() -> float | None:
    """The seconds between two ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as
    ``sd_watchdog_enabled(3)`` advises; None when the watchdog is off or meant for
    another process (``WATCHDOG_PID``). Both variables are removed either way."""
    usec = os.environ.pop(WATCHDOG_USEC, None)
    pid = os.environ.pop(WATCHDOG_PID, None)
    if usec is None:
        return None
    if pid is not None and (not pid.strip().isdigit() or int(pid) != os.getpid()):
        return None
    if not usec.strip().isdigit() or int(usec) == 0:
        logger.warning("WATCHDOG_USEC=%r is not a number of microseconds; not pinging.", usec)
        return None
    return int(usec) / 2_000_000


def describe(load: Load) -> str:
    """The pool's load as ``systemctl status`` shows it after the serving line."""
    text = f"Busy: {load.busy} of {load.alive} {load.unit} (at most {load.most})"
    if load.accepted is not None:
        text += f", {load.accepted:,} connections"
    return text + "."


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends service state to systemd when ``NOTIFY_SOCKET`` is set; otherwise does nothing.

    A lost notification must never stop the server: a failure is logged. Only
    ``owner`` (the master; set anew after detaching) sends, so that a forked worker
    running the same hooks stays silent.
    """

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        """Seconds between two watchdog pings; None: no watchdog."""
        self.owner = os.getpid()
        self._serving = ""
        self._shown: str | None = None
        self._status_at = 0.0
        self._ping_at = 0.0
        self._full = False

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.pop(NOTIFY_VARIABLE, None) or None, watchdog_interval())

    def restore_environment(self) -> None:
        """Give ``NOTIFY_SOCKET`` and the watchdog's variables back, for a process that
        replaces this one (reload): the same pid, so ``WATCHDOG_PID`` names it."""
        if self.address is not None:
            os.environ[NOTIFY_VARIABLE] = self.address
        if self.watchdog is not None:
            os.environ[WATCHDOG_USEC] = str(round(self.watchdog * 2_000_000))
            os.environ[WATCHDOG_PID] = str(os.getpid())

    def turn(self, load: Callable[[], Load]) -> float | None:
        """At a turn of the main loop: ping the watchdog when it is due, and send the
        pool's figures with the serving line when they changed, at most every
        STATUS_SECONDS. Returns when the loop should turn next; None when nothing is
        notified, so that a server outside systemd sleeps until it has work."""
        if self.address is None or os.getpid() != self.owner:
            return None
        now = time.monotonic()
        fields = []
        if self.watchdog is not None and now >= self._ping_at:
            fields.append("WATCHDOG=1")
            self._ping_at = now + self.watchdog
        if now >= self._status_at:
            self._status_at = now + STATUS_SECONDS
            shown = f"{self._serving} {describe(load())}".lstrip()
            if shown != self._shown:
                fields.append(f"STATUS={shown}")
                self._shown = shown
        if fields:
            self.send(*fields)
        if self.watchdog is None:
            return self._status_at
        return min(self._status_at, self._ping_at)

    def _target(self) -> str | bytes | None:
        address = self.address
        if address is None:
            return None
        if address.startswith("@"):
            # The abstract namespace: a leading NUL instead of '@'.
            return b"\0" + os.fsencode(address[1:])
        if address.startswith("/"):
            return address
        logger.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying.", address)
        self.address = None
        return None

    def send(self, *fields: str) -> None:
        """One datagram, never waited for: while the receiver reads nothing its queue
        fills, and a blocking send would stall the main loop (and so the server)."""
        if os.getpid() != self.owner:
            return
        target = self._target()
        if target is None:
            return
        message = "\n".join(fields).encode("utf-8", "replace")
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.sendto(message, target)
        except BlockingIOError:
            if not self._full:
                logger.warning(
                    "NOTIFY_SOCKET=%r reads nothing; notifications are lost until it does.",
                    self.address,
                )
            self._full = True
        except OSError as err:
            logger.warning("Cannot notify systemd on NOTIFY_SOCKET=%r: %s", self.address, err)
        else:
            self._full = False

    def ready(self, status: str) -> None:
        """Serving, as `status` says; the figures follow it in later STATUS= lines."""
        self._serving, self._shown, self._status_at = status, status, 0.0
        self.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")

    def reloading(self) -> None:
        """HUP: the check of the new code blocks the loop, so its time starts with a ping."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", "STATUS=Reloading")
        self.ping()

    def ping(self) -> None:
        """``WATCHDOG=1`` now, when the watchdog is on: before the main loop is held up
        by loading the project (a reload's check, the reloaded code)."""
        if self.watchdog is not None:
            self.send("WATCHDOG=1")
            self._ping_at = time.monotonic() + self.watchdog

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=Stopping")
