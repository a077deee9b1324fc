"""Run runfcgi as root and let it become another user, as an init script would.

A server that drops to ``nobody`` must still read the Python it runs on and the code it
imports after the drop; tests/support/reachable.py makes them readable for it, in a private
mount namespace of its own, without changing a real directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


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


def reachable_interpreter_command(argv: list[str], stage: Path) -> list[str]:
    """``argv`` wrapped so that, once it drops root, what it runs on is still readable
    (tests/support/reachable.py). ``stage`` is an empty directory of the test's own."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        "-m",
        "tests.support.reachable",
        str(stage),
        "--",
        *argv,
    ]
