"""Prefork workers replaced without all restarting together (maxrequestsjitter), and a
worker that grew past maxmemory replaced after its request, on the real server."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest

from tests.support.clients import fcgi_request
from tests.support.processes import wait_for
from tests.support.runner import Runner

REQUESTS = 400


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def serve_requests(runner: Runner, *words: str) -> tuple[str, Counter[int]]:
    """REQUESTS requests (one connection each) to a pool of four: the address, and how
    many requests each worker served."""
    address = str(runner.tmp / "app.sock")
    pool = ("maxspare=4", "minspare=4", "maxchildren=4")
    runner.serve("daemonize=false", f"socket={address}", *pool, *words, address=address)
    served: Counter[int] = Counter()
    for _ in range(REQUESTS):
        served[fcgi_request(address, "GET", "/echo/", timeout=10).json()["pid"]] += 1
    return address, served


def lifetimes(runner: Runner, *words: str) -> list[int]:
    """How many requests each worker served before it was replaced; workers still
    serving at the end are left out."""
    _, served = serve_requests(runner, *words)
    return sorted(count for pid, count in served.items() if not running(pid))


def test_without_jitter_every_worker_restarts_after_maxrequests(runner: Runner) -> None:
    counts = lifetimes(runner, "maxrequests=10")
    print(f"maxrequests=10: {len(counts)} workers replaced, lifetimes {Counter(counts)}")
    assert len(counts) >= REQUESTS // 10 - 4
    assert set(counts) == {10}


def test_the_status_page_counts_the_workers_recycled_after_maxrequests(
    runner: Runner,
) -> None:
    address, served = serve_requests(runner, "maxrequests=10", "status=/status")
    # Every worker that served its tenth request is being replaced, or has been.
    due = sum(1 for count in served.values() if count == 10)
    assert due >= REQUESTS // 10 - 4
    page = fcgi_request(address, "GET", "/status", query="json").json()
    # The status request is one more request for the worker that answers it.
    assert page["recycled_maxrequests"] in (due, due + 1), (page, served)
    assert page["recycled_maxmemory"] == 0
    assert (page["maxrequests"], page["maxrequestsjitter"], page["maxmemory"]) == (10, 0, 0)


def test_jitter_spreads_the_restarts(runner: Runner) -> None:
    counts = lifetimes(runner, "maxrequests=10", "maxrequestsjitter=10")
    spread = Counter(counts)
    print(f"maxrequests=10 maxrequestsjitter=10: {len(counts)} workers, lifetimes {spread}")
    assert len(counts) >= REQUESTS // 20 - 4
    assert min(counts) >= 10
    assert max(counts) <= 20
    # Eleven possible limits: workers started together no longer end together.
    assert len(spread) >= 5, spread
    assert max(spread.values()) <= len(counts) // 2, spread


def start_one_worker(runner: Runner, *words: str) -> str:
    address = str(runner.tmp / "app.sock")
    pool = ("maxspare=1", "minspare=1", "maxchildren=1")
    runner.serve("daemonize=false", f"socket={address}", *pool, *words, address=address)
    return address


def test_a_worker_that_grew_past_maxmemory_is_replaced_after_its_request(
    runner: Runner,
) -> None:
    address = start_one_worker(runner, "maxmemory=150", "status=/status")
    first = fcgi_request(address, "GET", "/echo/").json()["pid"]
    small = fcgi_request(address, "GET", "/grow/", query="mb=10")
    assert (small.status, small.json()["pid"]) == (200, first)
    assert fcgi_request(address, "GET", "/echo/").json()["pid"] == first

    grown = fcgi_request(address, "GET", "/grow/", query="mb=200")
    assert grown.status == 200
    assert grown.json() == {"pid": first, "kept_mb": 210}
    assert wait_for(lambda: not running(first), timeout=10)
    fresh = fcgi_request(address, "GET", "/echo/").json()["pid"]
    assert fresh != first
    run = runner.runs[-1]
    assert wait_for(lambda: "above maxmemory=150" in run.stderr, timeout=5)
    assert f"Worker process {first} holds " in run.stderr
    assert "replacing it after its request." in run.stderr
    page = fcgi_request(address, "GET", "/status", query="json").json()
    assert (page["recycled_maxmemory"], page["recycled_maxrequests"]) == (1, 0)
    assert page["maxmemory"] == 150


def test_a_kept_connection_is_closed_after_the_request_that_crossed_maxmemory(
    runner: Runner,
) -> None:
    """As nginx keeps it with fastcgi_keep_conn on: the request is answered whole, then
    the connection is closed between requests, never in the middle of one."""
    address = start_one_worker(runner, "maxmemory=150")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(address)
        before = fcgi_request(address, "GET", "/echo/", sock=conn, keep_conn=True)
        pid = before.json()["pid"]
        grown = fcgi_request(address, "GET", "/grow/", query="mb=200", sock=conn, keep_conn=True)
        assert (grown.status, grown.json()["pid"]) == (200, pid)
        assert conn.recv(1) == b"", "the worker kept the connection open"
    assert wait_for(lambda: not running(pid), timeout=10)
    assert fcgi_request(address, "GET", "/echo/").json()["pid"] != pid


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["method=threaded", "maxmemory=100"],
            "maxmemory= applies to method=prefork only; threads are not recycled.",
        ),
        (
            ["maxrequestsjitter=10"],
            "maxrequestsjitter=10 spreads the restarts that maxrequests= makes; give "
            "maxrequests= too.",
        ),
        (["maxmemory=lots"], "maxmemory='lots' is not a whole number."),
    ],
)
def test_bad_recycling_options(runner: Runner, words: list[str], message: str) -> None:
    run = runner.run(f"socket={runner.tmp / 'app.sock'}", *words)
    assert run.proc.returncode == 1
    assert run.stderr.strip() == f"CommandError: {message}"
