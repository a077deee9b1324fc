"""Run runfcgi as root and let it become another user, as an init script would.

A server that drops to ``nobody`` must still read the Python it runs on and the code it
imports after the drop. The test interpreter may live where only root can look (pyenv
under /root, mode 700). Rather than open that directory to everyone, the server runs in
a private mount namespace of its own (``unshare -m``) in which the directory that blocks
the way is covered by an empty tmpfs that anyone may search, with only the one entry
the interpreter needs mounted back into it. Nothing outside that process changes, and
no permission of a real directory does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

OTHERS_SEARCH = stat.S_IXOTH


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def nobody() -> User:
    entry = pwd.getpwnam("nobody")
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a server as root needs the tests to run as root")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")


def blocking_directory(path: Path) -> Path | None:
    """The outermost directory on ``path`` that other users cannot search, if any."""
    for directory in [*reversed(path.parents), path]:
        if not os.stat(directory).st_mode & OTHERS_SEARCH:
            return directory
    return None


def reachable_interpreter_command(argv: list[str], stage: Path) -> list[str]:
    """``argv`` wrapped so that, once it drops root, the interpreter is still readable.

    ``stage`` is an empty directory of the test's own, used as a mount point for a moment.
    """
    prefix = Path(sys.base_prefix).resolve()
    blocked = blocking_directory(prefix)
    if blocked is None:
        return argv
    child = blocked / prefix.relative_to(blocked).parts[0]
    stage.mkdir(mode=0o755, exist_ok=True)
    script = (
        "set -e; "
        'mount --bind "$1" "$3"; '
        'mount -t tmpfs -o mode=0755,size=64k runfcgi-test "$2"; '
        'mkdir "$1"; '
        'mount --move "$3" "$1"; '
        "shift 3; "
        'exec "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(child),
        str(blocked),
        str(stage),
        *argv,
    ]
