"""Start the real ``manage.py runfcgi`` in a subprocess and always clean up after it.

Every process a test starts carries a tag in its environment; on teardown whatever
still carries the tag (daemons, workers in their own process groups) is stopped, so
no test leaves a process behind and no test touches a process it did not start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.process_jobs import Captured, Servers

ROOT = Path(__file__).resolve().parent.parent
TESTPROJECT = ROOT / "testproject"
TAG_VARIABLE = "RUNFCGI_TEST_TAG"

Address = str | tuple[str, int]


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


def can_connect(address: Address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    if not isinstance(address, str) and ":" in address[0]:
        family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Run(Captured):
    """A finished or running runfcgi process and its output."""

    address: Address | None = None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class Runner:
    """Starts runfcgi processes for one test; everything is stopped at teardown."""

    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    runs: list[Run] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.update(
            {
                TAG_VARIABLE: self.tag,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTPROJECT)]),
                "TESTPROJECT_DB": str(self.tmp / "db.sqlite3"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        command: Sequence[str] | None = None,
    ) -> Run:
        """Start ``manage.py runfcgi ARGS`` (or ``command``) without waiting for it."""
        index = len(self.runs)
        out_path = self.tmp / f"run{index}.out"
        err_path = self.tmp / f"run{index}.err"
        argv = (
            list(command)
            if command
            else [sys.executable, str(TESTPROJECT / "manage.py"), "runfcgi", *args]
        )
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out,
                stderr=err,
                cwd=cwd or self.tmp,
                env=self.env(env),
                start_new_session=True,
            )
        run = Run(proc, out_path, err_path)
        self.runs.append(run)
        return run

    def run(self, *args: str, timeout: float = 30, **kwargs: Any) -> Run:
        """Run to completion (a command that fails, or a daemonizing parent)."""
        run = self.start(*args, **kwargs)
        try:
            run.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"runfcgi {' '.join(args)} did not finish in {timeout} s\n{run.describe()}"
            )
        return run

    def serve(self, *args: str, address: Address, timeout: float = 20, **kwargs: Any) -> Run:
        """Start a server in the foreground and wait until ``address`` accepts."""
        run = self.start(*args, **kwargs)
        run.address = address
        wait_until_accepting(run, address, timeout)
        return run

    def cleanup(self) -> list[int]:
        leftovers = kill_tagged(self.tag)
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.wait(timeout=10)
        return leftovers


def wait_until_accepting(run: Run | None, address: Address, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if can_connect(address):
            return
        if run is not None and run.proc.poll() is not None and run.proc.returncode != 0:
            pytest.fail(f"runfcgi exited before accepting on {address!r}\n{run.describe()}")
        time.sleep(0.05)
    detail = run.describe() if run is not None else ""
    pytest.fail(f"nothing accepted on {address!r} within {timeout} s\n{detail}")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    yield path
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


@pytest.fixture
def runner(short_tmp: Path) -> Iterator[Runner]:
    runner = Runner(short_tmp)
    yield runner
    runner.cleanup()


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Process-layer test servers (tests/process_jobs.py), all stopped at teardown."""
    with Servers() as started:
        yield started
