"""Detach from the terminal without losing the errors that happen after detaching.

Django 1.8 forked away first and failed later, so a restart script saw exit status 0
from a server that never served. Here the process that the user started waits on a
pipe until the daemon says it is serving, or passes on the daemon's error and fails.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django_runfcgi.log import stamp

READY = b"ready"

Logs = dict[int, int]
"""Log files opened for the standard streams: target descriptor (1, 2) -> open file."""


@dataclass
class Readiness:
    """The daemon's end of the pipe to the process that is waiting for it."""

    fd: int | None = field(default=None)

    def ready(self, status: str) -> None:
        """Serving: the waiting process prints ``status`` and exits 0."""
        self._send(READY + b" " + status.encode("utf-8", "replace") + b"\n")

    def failed(self, message: str) -> None:
        self._send(b"error: " + message.encode("utf-8", "replace") + b"\n")

    def _send(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, data)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def _wait_for_daemon(read_fd: int, first_child: int) -> int:
    """In the starting process: the daemon's verdict, as an exit status."""
    chunks = []
    while True:
        data = os.read(read_fd, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    os.waitpid(first_child, 0)
    message = b"".join(chunks)
    if message.startswith(READY + b" "):
        sys.stdout.write(message[len(READY) + 1 :].decode("utf-8", "replace"))
        sys.stdout.flush()
        return 0
    text = message.decode("utf-8", "replace").strip().removeprefix("error: ")
    if not text:
        text = "The server stopped before it was ready; see errlog= for its output."
    sys.stderr.write(f"CommandError: {text}\n")
    return 1


class LogError(Exception):
    """A log file cannot be opened; found in the foreground, before detaching."""


def open_log(name: str, path: Path) -> int:
    """Open option `name`'s log file for appending, creating it if needed."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise LogError(f"Cannot open {name}={str(path)!r}: {err.strerror}.") from None


def check_logs(outlog: Path | None, errlog: Path | None) -> None:
    """What :func:`open_logs` would fail on, found without creating or changing a file."""
    for name, path in (("errlog", errlog), ("outlog", outlog)):
        if path is not None:
            check_log(name, path)


def check_log(name: str, path: Path) -> None:
    """What :func:`open_log` would fail on, found without creating or changing a file."""
    try:
        # O_NONBLOCK: a FIFO without a reader fails instead of waiting for one.
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except FileNotFoundError:
        # As open() with O_CREAT would fail, in the same words.
        directory = path.parent
        code = 0
        if not directory.is_dir():
            code = errno.ENOENT
        elif not os.access(directory, os.W_OK | os.X_OK):
            code = errno.EACCES
        if code:
            raise LogError(f"Cannot open {name}={str(path)!r}: {os.strerror(code)}.") from None
    except OSError as err:
        raise LogError(f"Cannot open {name}={str(path)!r}: {err.strerror}.") from None


def open_logs(outlog: Path | None, errlog: Path | None) -> Logs:
    """Open the log files that are set, for appending; one path is opened once."""
    logs: Logs = {}
    try:
        if errlog is not None:
            logs[2] = open_log("errlog", errlog)
        if outlog is not None:
            logs[1] = os.dup(logs[2]) if outlog == errlog else open_log("outlog", outlog)
    except LogError:
        close_logs(logs)
        raise
    return logs


def close_logs(logs: Logs) -> None:
    for fd in logs.values():
        os.close(fd)


def use_logs(logs: Logs) -> None:
    """Make the opened log files the process's stdout and stderr; others stay as they are."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in logs.items():
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def reopen_logs(outlog: Path | None, errlog: Path | None) -> None:
    """Reopen the log files that are set, e.g. after logrotate moved them away.

    An unset one is left as it is: a foreground server keeps writing to its terminal.
    A file that cannot be opened is reported on the current stderr and left unchanged.
    """
    try:
        logs = open_logs(outlog, errlog)
    except LogError as err:
        sys.stderr.write(stamp(f"Cannot reopen the log files: {err}", "ERROR") + "\n")
        return
    use_logs(logs)


def reopen_onto(name: str, path: Path, fd: int, what: str) -> bool:
    """Open option `name`'s file at `path` again onto descriptor `fd` (after logrotate
    moved it away), in one step, so that a thread writing at that moment writes whole to
    one file or the other. A file that cannot be opened is reported on the current
    stderr, naming `what`, and the old one kept (False)."""
    try:
        new = open_log(name, path)
    except LogError as err:
        sys.stderr.write(stamp(f"Cannot reopen {what}: {err}", "ERROR") + "\n")
        return False
    os.dup2(new, fd, inheritable=False)
    os.close(new)
    return True


def close_inherited_fds(keep: set[int]) -> None:
    """Close descriptors inherited from whoever started us (shell, supervisor).

    Python opens its own files close-on-exec, so a descriptor without that flag was
    handed down across exec; the daemon has no use for it, and it may hold open a pipe
    that the starting program waits on.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        if not flags & fcntl.FD_CLOEXEC:
            os.close(fd)


def detach(*, workdir: Path, umask: int, logs: Logs, keep: set[int]) -> Readiness:
    """Double fork into a new session; only the daemon returns.

    A standard stream without a log file goes to /dev/null: the terminal is not ours.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first:
        os.close(write_fd)
        close_logs(logs)
        os._exit(_wait_for_daemon(read_fd, first))
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir(workdir)
    os.umask(umask)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        if target not in logs:
            os.dup2(null, target)
    os.close(null)
    use_logs(logs)
    close_inherited_fds(keep | {write_fd})
    return Readiness(write_fd)
