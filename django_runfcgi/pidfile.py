"""Pidfiles the way gunicorn keeps them: refuse a live one, replace a stale one.

Written through a temporary file and a rename, so a reader never sees half a number,
and removed at exit only while it still names this process.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import suppress
from pathlib import Path


class PidfileError(Exception):
    """The pidfile cannot be used; the message says why."""


def read_pid(path: Path) -> int | None:
    """The pid in ``path``; None if there is no file. Raise if it is not a pidfile."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise PidfileError(f"pidfile={str(path)!r} is a directory.") from None
    except OSError as err:
        raise PidfileError(f"Cannot read pidfile {str(path)!r}: {err.strerror}.") from None
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise PidfileError(
            f"{str(path)!r} does not hold a process id (it starts {shown!r}); "
            "refusing to overwrite it. Check the pidfile= path."
        )
    return int(text)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Alive, but another user's.
        return True
    return True


def check(path: Path, successor_of: int | None = None) -> None:
    """Run in the foreground before binding: fail now rather than after detaching.

    ``successor_of`` is a stopping server whose socket this one takes over: its pid in
    the pidfile is no reason to refuse.
    """
    pid = read_pid(path)
    if pid is not None and pid not in (os.getpid(), successor_of) and is_alive(pid):
        raise PidfileError(
            f"Already running as PID {pid} (pidfile {str(path)!r}). Stop it first, or "
            "remove the pidfile if that process is not this server."
        )
    directory = path.parent
    if not directory.is_dir():
        raise PidfileError(f"Cannot write pidfile {str(path)!r}: its directory does not exist.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PidfileError(f"Cannot write pidfile {str(path)!r}: permission denied.")


def write(path: Path, pid: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{pid}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_if_ours(path: Path, pid: int) -> None:
    try:
        if read_pid(path) != pid:
            return
        os.unlink(path)
    except PidfileError:
        return
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise
