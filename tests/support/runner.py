"""Start the real ``manage.py runfcgi`` (or another command) in a subprocess, and always
clean up after it: whatever carries the runner's tag is stopped (tests/support/processes.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import Address, can_connect
from tests.support.paths import ROOT, TESTPROJECT
from tests.support.processes import TAG_VARIABLE, Captured, kill_tagged


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


@contextmanager
def runner_in_tmp() -> Iterator[Runner]:
    """A runner in a new short directory, for a fixture wider than one test: at the end
    everything it started is stopped and the directory removed."""
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner = Runner(tmp)
    try:
        yield runner
    finally:
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
