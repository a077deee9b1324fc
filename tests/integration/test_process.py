"""The process a user runs: worker pool growth, recycling, and stopping on signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from tests.support.clients import fcgi_request
from tests.support.processes import tagged_pids
from tests.support.runner import Runner


def serve_unix(runner: Runner, *words: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    address = str(runner.tmp / "app.sock")
    run = runner.serve("daemonize=false", f"socket={address}", *words, address=address, env=env)
    return address, run.proc.pid


def concurrently(count: int, call: object) -> tuple[float, list[object]]:
    results: list[object] = []
    lock = threading.Lock()

    def one() -> None:
        value = call()  # type: ignore[operator]
        with lock:
            results.append(value)

    threads = [threading.Thread(target=one) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return time.monotonic() - started, results


@pytest.mark.parametrize(("method", "maxchildren"), [("prefork", 10), ("threaded", 20)])
def test_concurrent_requests_are_served_at_once(
    runner: Runner, method: str, maxchildren: int
) -> None:
    """The prefork pool grows to a worker per request; the threaded server takes them all
    in its one process."""
    address, master = serve_unix(runner, f"method={method}", f"maxchildren={maxchildren}")
    elapsed, results = concurrently(
        8, lambda: fcgi_request(address, "GET", "/slow/", query="s=1", timeout=30).json()["pid"]
    )
    assert len(results) == 8
    assert elapsed < 2.0, f"8 one-second requests took {elapsed:.2f} s"
    if method == "prefork":
        assert len(set(results)) == 8
    else:
        assert set(results) == {master}


def test_maxrequests_recycles_workers_and_the_socket_survives(runner: Runner) -> None:
    address, _ = serve_unix(runner, "maxrequests=2", "maxspare=1", "minspare=1", "maxchildren=1")
    pids = [fcgi_request(address, "GET", "/echo/").json()["pid"] for _ in range(6)]
    # The start-up probe was one connection too, so the first worker may serve one request.
    assert max(Counter(pids).values()) == 2, pids
    assert len(set(pids)) >= 3, pids


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_sigterm_on_an_idle_server_stops_it_at_once(runner: Runner, method: str) -> None:
    address, _ = serve_unix(runner, f"method={method}")
    assert fcgi_request(address, "GET", "/echo/").status == 200
    run = runner.runs[-1]
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(5) == 0, run.describe()
    assert time.monotonic() - started < 2.0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and tagged_pids(runner.tag):
        time.sleep(0.05)
    assert tagged_pids(runner.tag) == [], "a worker was left behind"
    assert not (runner.tmp / "app.sock").exists()


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_sigterm_lets_a_request_in_progress_finish(runner: Runner, method: str) -> None:
    marks = runner.tmp / "marks"
    marks.mkdir()
    address, _ = serve_unix(runner, f"method={method}", env={"TESTPROJECT_MARK_DIR": str(marks)})
    run = runner.runs[-1]
    result: dict[str, object] = {}

    def slow() -> None:
        result["response"] = fcgi_request(address, "GET", "/slow/", query="s=1", timeout=30)

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 10
    while not (marks / "slow-started").exists():
        assert time.monotonic() < deadline, "the request never reached the view"
        time.sleep(0.01)
    run.signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert run.wait(10) == 0, run.describe()
    response = result["response"]
    assert response.status == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_sigusr1_does_not_stop_the_server(runner: Runner, method: str) -> None:
    address, _ = serve_unix(runner, f"method={method}")
    run = runner.runs[-1]
    run.signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert run.proc.poll() is None, run.describe()
    assert fcgi_request(address, "GET", "/echo/").status == 200


def open_files(pid: int) -> list[str]:
    directory = f"/proc/{pid}/fd"
    names = []
    for fd in os.listdir(directory):
        try:
            names.append(os.readlink(f"{directory}/{fd}"))
        except OSError:
            continue
    return names


def test_database_connection_from_loading_is_not_shared_with_workers(runner: Runner) -> None:
    address, master = serve_unix(runner, env={"TESTPROJECT_QUERY_AT_LOAD": "1"})
    assert fcgi_request(address, "GET", "/echo/").status == 200
    database = str(runner.tmp / "db.sqlite3")
    assert database not in open_files(master), "the master kept its database connection"
