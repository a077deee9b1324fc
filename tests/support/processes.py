"""Processes as /proc shows them, the tag that marks the ones a test started, and waiting.

Every process a test starts carries a tag in its environment; on teardown whatever
still carries the tag (daemons, workers in their own process groups) is stopped, so
no test leaves a process behind and no test touches a process it did not start.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAG_VARIABLE = "RUNFCGI_TEST_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``tag``: the ones this test started."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def kill_tagged(tag: str, grace: float = 3.0) -> list[int]:
    """TERM, then KILL, every process carrying ``tag``; returns those that needed it."""
    pids = tagged_pids(tag)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and tagged_pids(tag):
        time.sleep(0.05)
    for pid in tagged_pids(tag):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def stat_of(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode().split()
    except OSError:
        return None


def processes() -> dict[int, list[str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_of(int(entry))) is not None:
            found[int(entry)] = fields
    return found


def parent_of(pid: int) -> int:
    fields = stat_of(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[1])


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    fields = stat_of(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group."""
    return [
        pid
        for pid, fields in processes().items()
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X")
    ]


def children_of(pid: int) -> dict[int, str]:
    """The children of PID and their state letter ("Z" for a zombie)."""
    return {child: fields[0] for child, fields in processes().items() if fields[1] == str(pid)}


def session_members(sid: int, zombies: bool = True) -> list[int]:
    """The processes in the session that the server started."""
    return [
        pid
        for pid, fields in processes().items()
        if fields[3] == str(sid) and (zombies or fields[0] != "Z")
    ]


def holding(pids: Iterable[int], path: Path) -> set[int]:
    """The processes among `pids` that have `path` open (a log file a server writes)."""
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.add(pid)
    return found


def wait_for(condition: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def task_status(pid: int, tid: int | str, field: str) -> str:
    """One field of /proc/<pid>/task/<tid>/status, such as ``SigBlk``."""
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    raise AssertionError(f"no {field} for thread {tid} of {pid}")


def wakeups(pid: int, *, threads: bool = False) -> int:
    """How many times the process (with ``threads``, all its threads) has slept and been
    woken: voluntary context switches."""
    tasks = os.listdir(f"/proc/{pid}/task") if threads else [str(pid)]
    total = 0
    for tid in tasks:
        try:
            total += int(task_status(pid, tid, "voluntary_ctxt_switches"))
        except FileNotFoundError:  # A thread that has just exited.
            continue
    return total


def _lowest_free_fd(pid: int, after: float = 0.0) -> int:
    """The number the process's next file descriptor would get."""
    time.sleep(after)
    in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(len(in_use) + 1)) - in_use)


def leave_descriptors(pid: int, spare: int) -> tuple[int, int]:
    """Lower the process's file limit so that ``spare`` more descriptors fit; the
    previous limits, to put back. The process may still be closing a connection."""
    assert wait_for(lambda: _lowest_free_fd(pid) == _lowest_free_fd(pid, after=0.2), 5.0)
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid) + spare, limits[1]))
    return limits


@dataclass
class Captured:
    """A process started by a test, with its stdout and stderr kept in files."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit status {self.proc.poll()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
