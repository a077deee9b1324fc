"""A daemon says where it serves and where it logs, and its log keeps what happens later."""

from __future__ import annotations

import os
import re
import signal
from contextlib import suppress
from pathlib import Path

from tests.support.clients import ProtocolError, fcgi_request
from tests.support.processes import tagged_pids, wait_for
from tests.support.runner import Runner

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[(INFO|WARNING|ERROR)\] "


def stamped(text: str, message: str) -> list[tuple[str, str]]:
    """(pid, level) of each line of ``text`` that is ``message`` behind a stamp."""
    return re.findall(rf"^{STAMP}{message}$", text, re.MULTILINE)


def stop(pid: int, runner: Runner, *paths: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not any(path.exists() for path in paths), timeout=10)
    assert wait_for(lambda: tagged_pids(runner.tag) == [], timeout=10)


def test_daemon_prints_address_pid_and_log_before_detaching(runner: Runner) -> None:
    sock, pidfile = runner.tmp / "app.sock", runner.tmp / "app.pid"
    run = runner.run(f"socket={sock}", f"pidfile={pidfile}", cwd=runner.tmp)
    assert run.proc.returncode == 0, run.describe()
    log = runner.tmp / "runfcgi.log"
    daemon_pid = int(pidfile.read_text())
    serving = (
        rf"Serving over FastCGI \(prefork\) on unix:{re.escape(str(sock))}, "
        rf"PID {daemon_pid}; logging to {re.escape(str(log))}\."
    )
    assert stamped(run.stdout, serving) == [(str(daemon_pid), "INFO")], run.describe()
    assert fcgi_request(str(sock), "GET", "/echo/").status == 200
    stop(daemon_pid, runner, sock, pidfile)
    text = log.read_text()
    assert stamped(text, serving) == [(str(daemon_pid), "INFO")], text
    assert stamped(text, f"Stopped, PID {daemon_pid}.") == [(str(daemon_pid), "INFO")], text


def test_errlog_given_is_the_log_named(runner: Runner) -> None:
    sock, pidfile = runner.tmp / "app.sock", runner.tmp / "app.pid"
    run = runner.run(f"socket={sock}", f"pidfile={pidfile}", "errlog=logs.txt", cwd=runner.tmp)
    assert run.proc.returncode == 0, run.describe()
    assert f"; logging to {runner.tmp / 'logs.txt'}." in run.stdout
    stop(int(pidfile.read_text()), runner, sock, pidfile)
    assert "Stopped, PID" in (runner.tmp / "logs.txt").read_text()
    assert not (runner.tmp / "runfcgi.log").exists()


def test_daemon_log_keeps_a_killed_worker_and_a_failed_reload(runner: Runner) -> None:
    sock, pidfile = runner.tmp / "app.sock", runner.tmp / "app.pid"
    release = runner.tmp / "release"
    release.write_text("v1")
    run = runner.run(
        f"socket={sock}",
        f"pidfile={pidfile}",
        "requesttimeout=1",
        "maxspare=1",
        "minspare=1",
        cwd=runner.tmp,
        env={"TESTPROJECT_RELEASE_FILE": str(release)},
    )
    assert run.proc.returncode == 0, run.describe()
    master = int(pidfile.read_text())
    log = runner.tmp / "runfcgi.log"
    with suppress(ProtocolError, OSError):
        fcgi_request(str(sock), "GET", "/slow/", query="s=30", timeout=15)
    killed = r"Worker process \d+ has spent \S+ s on one request .*; killing it and starting .*"
    assert wait_for(lambda: stamped(log.read_text(), killed), timeout=10), log.read_text()
    assert stamped(log.read_text(), killed)[0] == (str(master), "ERROR")

    release.write_text("broken")
    os.kill(master, signal.SIGHUP)
    cancelled = "Reload cancelled.*"
    assert wait_for(lambda: stamped(log.read_text(), cancelled), timeout=20), log.read_text()
    assert "this release does not load" in log.read_text()
    assert fcgi_request(str(sock), "GET", "/echo/", timeout=10).status == 200
    stop(master, runner, sock, pidfile)
    assert stamped(log.read_text(), f"Stopped, PID {master}.")


def test_foreground_lines_are_stamped_too(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    run = runner.serve(f"socket={sock}", "daemonize=false", address=str(sock))
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0
    pid = str(run.proc.pid)
    assert stamped(run.stdout, r"Serving over FastCGI \(prefork\) on .*, PID \d+\.") == [
        (pid, "INFO")
    ], run.describe()
    assert stamped(run.stderr, f"Stopped, PID {pid}.") == [(pid, "INFO")], run.describe()
    assert not (runner.tmp / "runfcgi.log").exists()
