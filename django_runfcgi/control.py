"""``runfcgi stop``, ``reload`` and ``reopen``: a signal to the server, and its outcome.

A signal carries no answer, and a reload's outcome was written only to a log that a
daemon may not have. So a server with a pidfile keeps a small state file beside it
(``mysite.pid.state``, JSON): who it is (pid and process start time, so a pid reused by
another program is never taken for it), its ``shutdowntimeout``, and the last thing it
did on a signal (started, reloaded, reload cancelled and why, logs reopened). A command
reads it before signalling and waits for it to change. A file rather than a socket the
command would listen on: the server needs no address of the command's, a command run
later still finds the last outcome, and it takes nothing but the pidfile's directory.

The server writes it in place after the first time (the account of ``user=`` may not
create files in a root-owned /run), each time as one short write; a reader that finds
half a record reads again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_runfcgi import listeners
from django_runfcgi import pidfile as pidfiles
from django_runfcgi.addresses import TCP, Unix
from django_runfcgi.privileges import Account

logger = logging.getLogger(__name__)

STARTED = "started"
RELOADED = "reloaded"
CANCELLED = "reload cancelled"
FAILED = "reload failed"
REOPENED = "logs reopened"

POLL_SECONDS = 0.05
STOP_MARGIN = 10.0
"""Beyond shutdowntimeout: a server's stop also closes connections and its socket."""
RELOAD_SECONDS = 300.0
"""A reload loads the project twice: once to check it, once to serve it."""
REOPEN_SECONDS = 10.0


class ControlError(Exception):
    """The command cannot do what was asked; the message is one line."""


def state_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".state")


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such process
    (or only its zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


class StateFile:
    """The server's side: what it did last, for the commands to read."""

    def __init__(self, pidfile: Path, shutdowntimeout: float) -> None:
        self.path = state_path(pidfile)
        self._shutdowntimeout = shutdowntimeout

    def _record(self, event: str, reason: str | None) -> bytes:
        pid = os.getpid()
        return (
            json.dumps(
                {
                    "pid": pid,
                    "started": start_time(pid),
                    "event": event,
                    "reason": reason,
                    "shutdowntimeout": self._shutdowntimeout,
                    "serial": secrets.token_hex(8),
                }
            ).encode()
            + b"\n"
        )

    def create(self, owner: Account | None) -> None:
        """At start, with the pidfile: a new file (no symlink followed), given to the
        account the server becomes so that it can write it later."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._record(STARTED, None))
            os.chmod(tmp, 0o644)
            if owner is not None:
                os.chown(tmp, owner.uid, owner.gid)
            os.replace(tmp, self.path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def record(self, event: str, reason: str | None = None) -> None:
        """What the server just did; a failure is logged, never raised."""
        data = self._record(event, reason)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
        except OSError as err:
            logger.warning("Cannot write %s: %s.", self.path, err.strerror or err)

    def remove_if_ours(self) -> None:
        """At the end, unless it tells why a reload ended the server: the reload command
        may not have read that yet."""
        state = read_state(self.path)
        if state is not None and state.get("pid") == os.getpid() and state["event"] != FAILED:
            with suppress(OSError):
                os.unlink(self.path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state a server left; None when there is none (or half of one, being written)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# The command's side.


@dataclass
class Server:
    """The running server a pidfile names, or that was found listening on an address
    (``pidfile`` None: its state file, if any, is not known)."""

    pid: int
    pidfile: Path | None
    started: int
    state: dict[str, Any] | None
    """Its state file, when it keeps one (a server started by an older runfcgi does not)."""

    def _current(self) -> dict[str, Any] | None:
        if self.pidfile is None:
            return None
        state = read_state(state_path(self.pidfile))
        if state is None or (state.get("pid"), state.get("started")) != (self.pid, self.started):
            return None
        return state

    def gone(self) -> bool:
        return start_time(self.pid) != self.started

    def send(self, signum: signal.Signals) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            raise ControlError(f"PID {self.pid} exited before it got {signum.name}.") from None
        except PermissionError:
            raise ControlError(
                f"Not allowed to signal PID {self.pid}: it runs as another user; run this "
                "command as that user or as root."
            ) from None

    def shutdowntimeout(self, fallback: float) -> float:
        value = (self.state or {}).get("shutdowntimeout")
        return float(value) if isinstance(value, (int, float)) else fallback


def _command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def find(pidfile: Path) -> Server:
    """The runfcgi server that ``pidfile`` names; refuse a missing or stale pidfile, and
    a pid that belongs to some other program."""
    shown = str(pidfile)
    try:
        pid = pidfiles.read_pid(pidfile)
    except pidfiles.PidfileError as err:
        raise ControlError(str(err)) from None
    if pid is None:
        raise ControlError(
            f"No server to control: pidfile {shown!r} does not exist (or is empty); it is "
            "not running, or was started with another pidfile=."
        )
    started = start_time(pid)
    if started is None:
        raise ControlError(
            f"Stale pidfile {shown!r}: PID {pid} is not running; the server is gone "
            "(remove the pidfile, or start the server)."
        )
    server = Server(pid, pidfile, started, None)
    server.state = server._current()
    if server.state is not None:
        return server
    # Started by a runfcgi without state files, or the pid now belongs to another program.
    running = _not_runfcgi(pid)
    if running is None:
        return server
    raise ControlError(
        f"PID {pid} (pidfile {shown!r}) is not a runfcgi server: it runs {running!r}. "
        "The server is gone; remove the pidfile."
    )


def _not_runfcgi(pid: int) -> str | None:
    """None for a runfcgi (its command line says so), else what it runs."""
    argv = _command_line(pid)
    if any("runfcgi" in arg or arg.endswith(".fcgi") for arg in argv):
        return None
    return " ".join(argv) if argv else "a process whose command line is hidden"


def find_listening(bind: TCP | Unix) -> Server:
    """The runfcgi server listening on ``bind``, found through /proc (Linux); refuse
    when nothing listens there, when what listens is not runfcgi or cannot be read,
    and when more than one server does."""
    if not listeners.available():
        raise ControlError(
            f"Cannot find the server listening on {bind} without Linux's /proc; give pidfile=."
        )
    found = listeners.holders(bind)
    # systemd holds the socket of a socket unit too, and is the server's parent.
    ours = {pid for pid in found.pids if _not_runfcgi(pid) is None}
    masters = {pid for pid in ours if listeners.parent(pid) not in ours}
    if not found.pids and found.unreadable:
        raise ControlError(
            f"Cannot tell which process listens on {bind}: the processes of other users "
            "cannot be read here; run this command as the server's user or as root, or "
            "give pidfile=."
        )
    if not found.pids:
        raise ControlError(f"No server to control: nothing listens on {bind}.")
    if not masters:
        pid = min(found.masters() or found.pids)
        raise ControlError(
            f"PID {pid} listens on {bind} but is not runfcgi: it runs {_not_runfcgi(pid)!r}."
        )
    if len(masters) > 1:
        pids = ", ".join(str(pid) for pid in sorted(masters))
        raise ControlError(
            f"More than one server listens on {bind} (PIDs {pids}); give pidfile= to choose one."
        )
    (pid,) = masters
    started = start_time(pid)
    if started is None:
        raise ControlError(f"No server to control: PID {pid} on {bind} has just exited.")
    return Server(pid, None, started, None)


def _wait(until: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until():
            return True
        time.sleep(POLL_SECONDS)
    return until()


def stop(server: Server, now: bool, shutdowntimeout: float) -> str:
    """TERM (INT with ``now``), then wait until the process is gone."""
    signum = signal.SIGINT if now else signal.SIGTERM
    # INT gives requests a second, then kills the workers (workers.signals.INT_GRACE).
    limit = (1.0 if now else server.shutdowntimeout(shutdowntimeout)) + STOP_MARGIN
    server.send(signum)
    if not _wait(server.gone, limit):
        hint = "" if now else "; 'runfcgi stop --now' sends INT"
        raise ControlError(
            f"PID {server.pid} is still running {limit:.0f} s after {signum.name}{hint}."
        )
    return f"Stopped: PID {server.pid} is gone."


def _outcome(server: Server, events: tuple[str, ...], before: str | None) -> Callable[[], bool]:
    def arrived() -> bool:
        state = server._current()
        if state is not None and state.get("serial") != before and state.get("event") in events:
            server.state = state
            return True
        return server.gone()

    return arrived


def _unconfirmed(server: Server, signum: signal.Signals, what: str) -> str:
    """A server found by its address: its state file is beside a pidfile this command
    was not given, so the signal is sent without waiting for an outcome."""
    server.send(signum)
    return (
        f"Sent {signum.name} to PID {server.pid}; without pidfile= runfcgi cannot tell "
        f"whether {what}: see the server's log."
    )


def _require_state(server: Server, what: str) -> str | None:
    assert server.pidfile is not None, "a server found by its address is not asked"
    if server.state is None:
        raise ControlError(
            f"PID {server.pid} keeps no state file ({state_path(server.pidfile)}), so it "
            f"cannot tell whether {what}: it was started by an older runfcgi. Send the "
            "signal with kill, and read its log."
        )
    serial = server.state.get("serial")
    return serial if isinstance(serial, str) else None


def reload(server: Server) -> str:
    """HUP, then the outcome: the new code serves, or why the old code still does."""
    if server.pidfile is None:
        return _unconfirmed(server, signal.SIGHUP, "the new code serves")
    before = _require_state(server, "a reload worked")
    server.send(signal.SIGHUP)
    if not _wait(_outcome(server, (RELOADED, CANCELLED, FAILED), before), RELOAD_SECONDS):
        raise ControlError(
            f"PID {server.pid} has not reloaded within {RELOAD_SECONDS:.0f} s of HUP; see its log."
        )
    state = server.state or {}
    event = state.get("event") if state.get("serial") != before else None
    if event == CANCELLED:
        raise ControlError(f"Reload cancelled, still serving the old code: {state.get('reason')}")
    if event == FAILED:
        raise ControlError(f"Reload failed, the server stopped: {state.get('reason')}")
    if event != RELOADED or server.gone():
        raise ControlError(f"Reload failed: PID {server.pid} stopped; see its log.")
    return f"Reloaded: serving the new code, PID {server.pid}."


def reopen(server: Server) -> str:
    """USR1, then wait until the server says it has reopened its logs."""
    if server.pidfile is None:
        return _unconfirmed(server, signal.SIGUSR1, "it reopened its logs")
    before = _require_state(server, "it reopened its logs")
    server.send(signal.SIGUSR1)
    if not _wait(_outcome(server, (REOPENED,), before), REOPEN_SECONDS):
        raise ControlError(f"PID {server.pid} has not reopened its logs within 10 s of USR1.")
    if server.gone():
        raise ControlError(f"PID {server.pid} stopped after USR1; see its log.")
    return f"Reopened the log files of PID {server.pid}."


def running(pidfile: Path) -> int | None:
    """The pid of the runfcgi server ``pidfile`` names, if one runs."""
    try:
        return find(pidfile).pid
    except ControlError:
        return None
