"""SIGHUP reloads the code in place; SIGUSR1 reopens the logs; TERM frees the socket path.

The testproject reads TESTPROJECT_RELEASE_FILE once, when it loads: what /echo/ reports
as "release" shows which code a worker runs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.clients import fcgi_request, raw_exchange
from tests.support.processes import tagged_pids, wait_for
from tests.support.runner import Runner


def release_of(address: str) -> tuple[str, int]:
    data = fcgi_request(address, "GET", "/echo/", timeout=10).json()
    return data["release"], data["pid"]


def start(runner: Runner, *words: str, release: str = "v1") -> tuple[str, Path, int]:
    release_file = runner.tmp / "release"
    release_file.write_text(release)
    address = str(runner.tmp / "app.sock")
    run = runner.serve(
        "daemonize=false",
        f"socket={address}",
        *words,
        address=address,
        env={"TESTPROJECT_RELEASE_FILE": str(release_file)},
    )
    return address, release_file, run.proc.pid


def reloaded_to(address: str, release: str) -> bool:
    try:
        return release_of(address)[0] == release
    except OSError:
        return False


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_sighup_loads_the_current_code_keeping_pid_socket_and_pidfile(
    runner: Runner, method: str
) -> None:
    pidfile = runner.tmp / "app.pid"
    address, release_file, master = start(runner, f"method={method}", f"pidfile={pidfile}")
    inode = os.stat(address).st_ino
    assert release_of(address)[0] == "v1"

    release_file.write_text("v2")
    os.kill(master, signal.SIGHUP)
    assert wait_for(lambda: reloaded_to(address, "v2"), timeout=20), runner.runs[-1].describe()

    run = runner.runs[-1]
    assert run.proc.poll() is None
    assert os.stat(address).st_ino == inode, "the socket was bound again"
    assert pidfile.read_text().strip() == str(master)
    assert "Reloaded; serving over FastCGI" in run.stdout
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()
    assert not os.path.exists(address)
    assert not pidfile.exists()
    assert tagged_pids(runner.tag) == []


def test_a_release_that_does_not_load_leaves_the_old_code_serving(runner: Runner) -> None:
    address, release_file, master = start(runner, "maxspare=2", "minspare=1")
    old_workers = {release_of(address)[1]}
    release_file.write_text("broken")
    os.kill(master, signal.SIGHUP)
    run = runner.runs[-1]
    assert wait_for(lambda: "Reload cancelled" in run.stderr, timeout=20), run.describe()
    assert "this release does not load" in run.stderr
    release, worker = release_of(address)
    assert release == "v1"
    assert run.proc.poll() is None
    # The old workers were not touched.
    old_workers.add(worker)
    assert len(old_workers) <= 2


def test_a_request_in_flight_finishes_across_a_reload(runner: Runner) -> None:
    address, release_file, master = start(runner, "maxspare=2", "minspare=1")
    slow: dict[str, object] = {}

    def request() -> None:
        response = fcgi_request(address, "GET", "/slow/", query="s=1.5", timeout=30)
        slow.update(status=response.status, body=response.body)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)
    release_file.write_text("v2")
    os.kill(master, signal.SIGHUP)
    assert wait_for(lambda: reloaded_to(address, "v2"), timeout=20)
    thread.join(timeout=30)
    assert slow.get("status") == 200, slow
    run = runner.runs[-1]
    assert "killing it" not in run.stderr
    assert wait_for(lambda: len(tagged_pids(runner.tag)) == 3, timeout=10), tagged_pids(runner.tag)


def test_sigusr1_reopens_log_files_in_master_and_workers(runner: Runner) -> None:
    """As logrotate does it: move the files away, send USR1, the server writes new ones."""
    errlog, outlog = runner.tmp / "err.log", runner.tmp / "out.log"
    address, _, master = start(
        runner, f"errlog={errlog}", f"outlog={outlog}", "maxspare=1", "minspare=1"
    )
    # The socket listens just before the line is written: a ready socket does not mean
    # the line is there yet.
    assert wait_for(lambda: "Serving over" in outlog.read_text(), timeout=10)
    errlog.rename(runner.tmp / "err.log.1")
    outlog.rename(runner.tmp / "out.log.1")
    os.kill(master, signal.SIGUSR1)
    assert wait_for(errlog.exists, timeout=5)
    assert wait_for(outlog.exists, timeout=5)
    # The worker reopens between requests: one request, then bad bytes for a log line.
    release_of(address)
    raw_exchange(address, b"GET / HTTP/1.1\r\n\r\n")
    assert wait_for(lambda: "FastCGI" in errlog.read_text(), timeout=5), (
        runner.tmp / "err.log.1"
    ).read_text()
    # The master writes the new file too: a reload announces itself on stdout.
    os.kill(master, signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in outlog.read_text(), timeout=20)


def test_sigterm_frees_the_socket_path_at_once_for_the_next_server(runner: Runner) -> None:
    address, _, master = start(runner, "maxspare=1", "minspare=1")
    slow: dict[str, int] = {}

    def request() -> None:
        slow["status"] = fcgi_request(address, "GET", "/slow/", query="s=2", timeout=30).status

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)
    os.kill(master, signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(address), timeout=2)
    second = runner.serve("daemonize=false", f"socket={address}", address=address)
    assert fcgi_request(address, "GET", "/echo/").json()["pid"] != master
    thread.join(timeout=30)
    assert slow == {"status": 200}
    assert runner.runs[0].wait(10) == 0
    assert os.path.exists(address), "the first server removed the second one's socket"
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0


@pytest.mark.parametrize(("umask", "mode"), [("007", 0o770), ("022", 0o755), ("077", 0o700)])
def test_socket_permissions_follow_umask(runner: Runner, umask: str, mode: int) -> None:
    address = str(runner.tmp / "app.sock")
    runner.serve("daemonize=false", f"socket={address}", f"umask={umask}", address=address)
    assert os.stat(address).st_mode & 0o777 == mode
