"""The directories the socket and the pidfile go in, created only when asked.

/run is emptied at every boot, so ``/run/mysite`` from the recipes is missing on a fresh
machine and a bind there fails. runfcgi does not create it silently (a typo in socket=
would scatter directories); with ``mkdir=true`` it does, owned by ``user=`` so the server
can still remove its socket and pidfile after dropping root. Without it, the error says
exactly what to run.
"""

from __future__ import annotations

import os
from pathlib import Path

from django_runfcgi.privileges import Account

# Readable and searchable by all: the web server's user must reach the socket inside;
# the socket's own mode and group decide who may connect.
DIRECTORY_MODE = 0o755


class DirectoryError(Exception):
    """A directory is missing or cannot be created; the message says what to do."""


def _missing(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist, outermost first."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    return list(reversed(missing))


def _to_create(option: str, path: Path, *, create: bool, owner: Account | None) -> list[Path]:
    """The directories ``ensure()`` would create for ``path``, outermost first; raise
    when they may not be created, or what is there is not a directory."""
    directory = path.parent
    missing = _missing(directory)
    if not missing:
        if not directory.is_dir():
            raise DirectoryError(
                f"Cannot use {option}={str(path)!r}: {str(directory)!r} is not a directory."
            )
        return []
    if not create:
        chown = f" && chown {owner.describe()} {directory}" if owner is not None else ""
        raise DirectoryError(
            f"The directory of {option}={str(path)!r} does not exist; create it "
            f"(mkdir -p {directory}{chown}) or pass mkdir=true."
        )
    return missing


def check(option: str, path: Path, *, create: bool, owner: Account | None) -> None:
    """What ``ensure()`` would fail on, without creating anything."""
    missing = _to_create(option, path, create=create, owner=owner)
    if missing and not os.access(missing[0].parent, os.W_OK | os.X_OK):
        raise DirectoryError(
            f"mkdir=true cannot create {str(missing[0])!r} for {option}=: Permission denied."
        )


def ensure(option: str, path: Path, *, create: bool, owner: Account | None) -> None:
    """Make sure the directory of ``path`` (given as ``option=``) exists."""
    for new in _to_create(option, path, create=create, owner=owner):
        try:
            new.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            continue  # Created in the meantime, by another runfcgi starting.
        except OSError as err:
            raise DirectoryError(
                f"mkdir=true cannot create {str(new)!r} for {option}=: {err.strerror}."
            ) from None
        # mkdir() applies the umask; the web server must be able to search the directory.
        os.chmod(new, DIRECTORY_MODE)
        if owner is not None:
            os.chown(new, owner.uid, owner.gid)
