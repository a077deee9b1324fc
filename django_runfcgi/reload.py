"""Graceful reload on SIGHUP: the master runs its own command line again, in place.

The master loads the project before it binds and forks, so that start-up errors reach
the terminal; code it has imported cannot be loaded again in the same interpreter. So a
reload first checks the current code in a throwaway interpreter (a broken deploy leaves
the old code serving), then ``exec``\\ s the same command. The process keeps its pid (the
pidfile stays true), its listening socket (passed by descriptor number, so connections
wait in the listen queue instead of being refused) and its running workers, which finish
their requests and exit under the new master.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import NoReturn

STATE_VARIABLE = "RUNFCGI_RELOAD"
CHECK_VARIABLE = "RUNFCGI_RELOAD_CHECK"
KEPT_VARIABLE = "RUNFCGI_RELOAD_KEPT"
CHECK_TIMEOUT = 120.0


@dataclass(frozen=True)
class State:
    """What the master hands to the process it becomes."""

    fd: int
    created: tuple[int, int] | None
    retiring: tuple[int, ...]
    start_dir: str
    figures: dict[str, float] | None = None
    """The status page's figures counted since the first start (status.figures.History)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": os.getpid(),
                "fd": self.fd,
                "created": self.created,
                "retiring": self.retiring,
                "start_dir": self.start_dir,
                "figures": self.figures,
            }
        )


def take_state() -> State | None:
    """The state a reloading master left, once; None on a normal start.

    The variable is removed so that programs the project starts do not see it; it is
    ignored unless it names this very process, as a copy in a child's environment would not.
    """
    raw = os.environ.pop(STATE_VARIABLE, None)
    if raw is None:
        return None
    data = json.loads(raw)
    if data.get("pid") != os.getpid():
        return None
    created = data["created"]
    return State(
        fd=int(data["fd"]),
        created=(int(created[0]), int(created[1])) if created else None,
        retiring=tuple(int(pid) for pid in data["retiring"]),
        start_dir=str(data["start_dir"]),
        figures=data.get("figures"),
    )


def checking() -> bool:
    """Whether this process only checks that the project loads, for a reload."""
    return os.environ.get(CHECK_VARIABLE) == "1"


def command() -> list[str]:
    """This process's command line, with the interpreter's own options."""
    return [sys.executable, *sys.orig_argv[1:]]


def kept() -> dict[str, str] | None:
    """In the checking process: what the running server keeps across the reload."""
    raw = os.environ.get(KEPT_VARIABLE)
    if raw is None:
        return None
    return {str(name): str(value) for name, value in json.loads(raw).items()}


def check_new_code(start_dir: str, keeps: Mapping[str, str]) -> str | None:
    """Load the project's current code as the reloaded master will; its error, or None.

    ``keeps`` is what a reload cannot change (the address, the pidfile...), which the
    checking process compares with what the new settings give.
    """
    env = dict(os.environ)
    env.pop(STATE_VARIABLE, None)
    env[CHECK_VARIABLE] = "1"
    env[KEPT_VARIABLE] = json.dumps(dict(keeps))
    argv = command()
    try:
        result = subprocess.run(
            argv,
            cwd=start_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"loading the project took more than {CHECK_TIMEOUT:.0f} s"
    except OSError as err:
        return f"cannot run {argv[0]}: {err}"
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"the check exited with status {result.returncode}"


def reexec(state: State, signals: Iterable[signal.Signals]) -> NoReturn:
    """Become a fresh runfcgi with the same command line, keeping pid and socket."""
    os.set_inheritable(state.fd, True)
    env = dict(os.environ)
    env[STATE_VARIABLE] = state.to_json()
    # Signals wait until the new master has its handlers (see lifecycle).
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os.chdir(state.start_dir)
    argv = command()
    os.execve(argv[0], argv, env)  # noqa: S606 - this same program, by its absolute path
