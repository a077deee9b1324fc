"""Prefork workers the master keeps in hand: killed mid-request, hung, or slow to stop.

Every test runs the real ``manage.py runfcgi`` and talks to it as a web server would;
the worker holding a request is found through /proc, the way an operator would find it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pytest

from django_runfcgi.workers.prefork.worker import KEPT_CONNECTIONS
from tests.support.clients import (
    ProtocolError,
    Response,
    ajp_request,
    connect,
    fcgi_request,
    scgi_request,
)
from tests.support.net import free_port
from tests.support.processes import alive, children_of, tagged_pids, wait_for
from tests.support.runner import Run, Runner

T = TypeVar("T")

POOL = ("maxspare=2", "minspare=1", "maxchildren=3")
REQUESTS = {"fcgi": fcgi_request, "scgi": scgi_request}


def serve_unix(runner: Runner, *words: str) -> tuple[str, Run]:
    """A server on a unix socket, once the connection that found it ready has ended."""
    address = str(runner.tmp / "app.sock")
    run = runner.serve("daemonize=false", f"socket={address}", *words, address=address)
    # Until then, the worker that accepted it would pass for the one serving a request.
    assert wait_for(lambda: not connected_inodes(address), timeout=5.0), run.describe()
    return address, run


def in_background(call: Callable[[], T]) -> Future[T]:
    """Run a request in a thread; the test goes on while the server works on it."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open."""
    inodes: set[str] = set()
    directory = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(directory)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{directory}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def connected_inodes(path: str) -> set[str]:
    """Server ends of the connections accepted on the unix socket at ``path``.

    Accepted sockets carry the listening socket's path; the listener itself has the
    accepting flag (0x10000) and is shared by every worker.
    """
    found = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) == 8 and fields[7] == path and not int(fields[3], 16) & 0x10000:
                found.add(fields[6])
    return found


def worker_holding_a_connection(master: int, path: str, timeout: float = 5.0) -> int:
    """The worker of ``master`` that has accepted a connection on ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connections = connected_inodes(path)
        holders = [pid for pid in children_of(master) if socket_inodes(pid) & connections]
        if len(holders) == 1:
            return holders[0]
        time.sleep(0.02)
    raise AssertionError(f"no worker of {master} holds a connection on {path}")


def assert_pool_is_whole(runner: Runner, run: Run, size: int) -> None:
    """``size`` workers, no zombie among them, and no process outside the server's tree.

    Both are read in one step and waited for together: the pool may still grow and
    shrink back for a moment, and a fork between two separate reads showed a new
    worker in one and not in the other.
    """
    master = run.proc.pid

    def whole() -> bool:
        workers = children_of(master)
        tagged = tagged_pids(runner.tag)
        return (
            len(workers) == size
            and "Z" not in workers.values()
            and sorted(tagged) == sorted([master, *workers])
            and children_of(master) == workers
        )

    assert wait_for(whole, timeout=5.0), (
        f"workers: {children_of(master)}, tagged: {sorted(tagged_pids(runner.tag))}\n"
        f"{run.describe()}"
    )


@pytest.mark.parametrize("protocol", ["fcgi", "scgi"])
def test_a_worker_killed_mid_request_is_replaced_and_the_server_serves_on(
    runner: Runner, protocol: str
) -> None:
    request = REQUESTS[protocol]
    address, run = serve_unix(runner, f"protocol={protocol}", *POOL)
    master = run.proc.pid
    pending = in_background(lambda: request(address, "GET", "/slow/", query="s=30", timeout=30))
    worker = worker_holding_a_connection(master, address)

    os.kill(worker, signal.SIGKILL)

    # The connection closes with no response: the web server answers 502.
    with pytest.raises(ProtocolError):
        pending.result(timeout=10)
    assert wait_for(lambda: not alive(worker), timeout=5.0)
    pids = {request(address, "GET", "/echo/", timeout=10).json()["pid"] for _ in range(5)}
    assert worker not in pids
    assert_pool_is_whole(runner, run, 2)
    assert f"Worker process {worker} was killed by signal 9; starting another." in run.stderr
    assert run.proc.poll() is None, run.describe()


def test_requesttimeout_kills_a_hung_worker_and_logs_where_it_hung(runner: Runner) -> None:
    address, run = serve_unix(runner, "requesttimeout=1", *POOL)
    master = run.proc.pid
    started = time.monotonic()
    pending = in_background(lambda: fcgi_request(address, "GET", "/slow/", query="s=30"))
    worker = worker_holding_a_connection(master, address)

    with pytest.raises(ProtocolError):
        pending.result(timeout=15)
    elapsed = time.monotonic() - started

    # One second allowed, one more to write its stack, then SIGKILL.
    assert 1.0 <= elapsed < 4.0
    assert wait_for(lambda: not alive(worker), timeout=5.0)
    assert fcgi_request(address, "GET", "/echo/", timeout=10).status == 200
    assert_pool_is_whole(runner, run, 2)
    log = run.stderr
    lines = re.findall(rf"Worker process {worker} has spent (\S+) s on one request.*", log)
    assert len(lines) == 1, log
    assert 1.0 <= float(lines[0]) < 2.0, log
    assert "(requesttimeout=1); killing it and starting another." in log
    # The worker's stack, written by faulthandler before the kill, names the view.
    assert re.search(r'File ".*testproject/views\.py", line \d+ in slow', log), log
    assert "was killed by signal" not in log, log


def test_requesttimeout_counts_time_in_a_request_not_on_a_kept_connection(
    runner: Runner,
) -> None:
    """nginx keeps FastCGI connections open between requests: idle time is not counted."""
    address, run = serve_unix(runner, "requesttimeout=1", *POOL)
    with connect(address, 10) as conn:
        first = fcgi_request(address, "GET", "/slow/", query="s=0.5", keep_conn=True, sock=conn)
        time.sleep(1.5)
        second = fcgi_request(address, "GET", "/slow/", query="s=0.5", keep_conn=True, sock=conn)

    assert (first.status, second.status) == (200, 200)
    assert first.json()["pid"] == second.json()["pid"]
    assert "has spent" not in run.stderr, run.stderr
    assert_pool_is_whole(runner, run, 2)


def test_requesttimeout_with_the_threaded_method_is_refused(runner: Runner) -> None:
    finished = runner.run("method=threaded", "requesttimeout=5")

    assert finished.proc.returncode == 1
    assert "requesttimeout= applies to method=prefork only" in finished.stderr
    assert "Traceback" not in finished.stderr


def term_during_a_slow_request(runner: Runner, *words: str) -> tuple[Run, Future[Response], float]:
    """TERM a server while it serves a 30 s request; the server, the request, seconds to exit."""
    address, run = serve_unix(runner, *words)
    pending = in_background(lambda: fcgi_request(address, "GET", "/slow/", query="s=30"))
    if "method=threaded" in words:
        time.sleep(0.5)
    else:
        worker_holding_a_connection(run.proc.pid, address)

    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()
    return run, pending, time.monotonic() - started


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_shutdowntimeout_bounds_how_long_term_waits_for_a_request(
    runner: Runner, method: str
) -> None:
    run, pending, elapsed = term_during_a_slow_request(
        runner, f"method={method}", "shutdowntimeout=1"
    )

    assert 1.0 <= elapsed < 3.0, run.describe()
    assert "still running 1.0 s after the stop signal" in run.stderr
    with pytest.raises(ProtocolError):
        pending.result(timeout=10)
    assert tagged_pids(runner.tag) == []


def test_shutdowntimeout_0_stops_at_once_without_waiting(runner: Runner) -> None:
    _, pending, elapsed = term_during_a_slow_request(runner, "shutdowntimeout=0")

    assert elapsed < 1.0
    with pytest.raises(ProtocolError):
        pending.result(timeout=10)
    assert tagged_pids(runner.tag) == []


def test_a_request_shorter_than_shutdowntimeout_finishes_across_a_stop(runner: Runner) -> None:
    address, run = serve_unix(runner, "shutdowntimeout=5")
    pending = in_background(lambda: fcgi_request(address, "GET", "/slow/", query="s=1.5"))
    worker_holding_a_connection(run.proc.pid, address)

    run.signal(signal.SIGTERM)

    response: Response = pending.result(timeout=10)
    assert response.status == 200
    assert run.wait(10) == 0, run.describe()
    assert "still running" not in run.stderr


def test_shutdowntimeout_bounds_how_long_a_reload_waits_for_old_workers(runner: Runner) -> None:
    address, run = serve_unix(runner, "shutdowntimeout=1", *POOL)
    master = run.proc.pid
    pending = in_background(lambda: fcgi_request(address, "GET", "/slow/", query="s=30"))
    old_worker = worker_holding_a_connection(master, address)

    os.kill(master, signal.SIGHUP)

    with pytest.raises(ProtocolError):
        pending.result(timeout=20)
    assert wait_for(lambda: not alive(old_worker), timeout=5.0)
    assert wait_for(lambda: "Reloaded; serving" in run.stdout, timeout=10.0), run.describe()
    assert f"Worker process {old_worker} of the previous code still running 1.0 s" in run.stderr
    assert fcgi_request(address, "GET", "/echo/", timeout=10).json()["pid"] != old_worker
    assert run.proc.poll() is None, run.describe()
    assert_pool_is_whole(runner, run, 2)


@pytest.mark.parametrize("protocol", ["fcgi", "scgi"])
def test_requesttimeout_changes_nothing_in_what_the_web_server_receives(
    runner: Runner, protocol: str
) -> None:
    """Timing wraps each response; a whole one stays whole, a stream stays a stream."""
    request = REQUESTS[protocol]
    plain, _ = serve_unix(runner, f"protocol={protocol}")
    timed_path = str(runner.tmp / "timed.sock")
    runner.serve(
        "daemonize=false",
        f"socket={timed_path}",
        f"protocol={protocol}",
        "requesttimeout=30",
        address=timed_path,
    )

    for address in (plain, timed_path):
        whole = request(address, "GET", "/")
        streamed = request(address, "GET", "/stream/", query="n=3&pause=0.3")
        download = request(address, "GET", "/download/", query="size=100000")
        assert (whole.status, streamed.status, download.status) == (200, 200, 200)
        assert streamed.chunk_times[-1][0] - streamed.chunk_times[0][0] >= 0.4
        assert len(download.body) == 100000
    headers = {
        address: sorted(name.lower() for name, _ in request(address, "GET", "/").headers)
        for address in (plain, timed_path)
    }
    assert headers[plain] == headers[timed_path]


KEPT = 4
"""Connections a web server keeps open in the test below: twice the workers."""


@pytest.mark.parametrize(
    ("protocol", "pure_python"),
    [("fcgi", False), ("fcgi", True), ("ajp", False)],
    ids=["fcgi", "fcgi-pure-python", "ajp"],
)
def test_more_kept_connections_than_workers_are_each_served(
    runner: Runner, protocol: str, pure_python: bool
) -> None:
    """Four connections kept open (FastCGI keep-conn, AJP) and two workers: a request on
    each in turn, twice over, is answered at once, with the accelerated and the pure
    Python FastCGI reader. A worker that waited on a kept connection until the web
    server closed it left the third connection in the accept queue."""
    address = ("127.0.0.1", free_port())
    runner.serve(
        "daemonize=false",
        f"protocol={protocol}",
        "method=prefork",
        "minspare=2",
        "maxspare=2",
        "maxchildren=2",
        f"host={address[0]}",
        f"port={address[1]}",
        address=address,
        env={"RUNFCGI_PURE_PYTHON": "1"} if pure_python else {},
    )
    conns = [connect(address, timeout=2) for _ in range(KEPT)]
    try:
        for _ in range(2):
            for conn in conns:
                if protocol == "fcgi":
                    response = fcgi_request(
                        address, "GET", "/echo/", keep_conn=True, sock=conn, timeout=5
                    )
                else:
                    response = ajp_request(address, "GET", "/echo/", sock=conn, timeout=5)
                assert response.status == 200
    finally:
        for conn in conns:
            conn.close()


def test_a_worker_closes_its_longest_idle_connection_past_the_bound(runner: Runner) -> None:
    """One worker holds at most KEPT_CONNECTIONS idle kept connections: one more, and the
    one idle the longest is closed between its requests; the others still serve."""
    address, _ = serve_unix(runner, "method=prefork", "minspare=1", "maxspare=1", "maxchildren=1")
    conns = [connect(address, timeout=5) for _ in range(KEPT_CONNECTIONS + 1)]
    try:
        for conn in conns:
            response = fcgi_request(address, "GET", "/echo/", keep_conn=True, sock=conn, timeout=5)
            assert response.status == 200
        assert conns[0].recv(1) == b"", "the longest idle connection is still open"
        for conn in (conns[1], conns[-1]):
            response = fcgi_request(address, "GET", "/echo/", keep_conn=True, sock=conn, timeout=5)
            assert response.status == 200
    finally:
        for conn in conns:
            conn.close()


def test_a_worker_holding_kept_connections_is_not_retired_as_a_spare(runner: Runner) -> None:
    """Two slow requests on two kept connections grow the pool past maxspare; once they
    are done, the master retires a spare idle worker, never one that holds a kept
    connection: closing it could meet a request the web server is sending on it."""
    address, _ = serve_unix(runner, "method=prefork", "minspare=1", "maxspare=1", "maxchildren=4")
    conns = [connect(address, timeout=10) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = []
            for conn in conns:
                slow.append(
                    pool.submit(
                        fcgi_request, address, "GET", "/slow/", query="s=1", keep_conn=True,
                        sock=conn, timeout=10,
                    )
                )  # fmt: skip
                time.sleep(0.3)  # The second finds the first worker busy.
            first = [future.result() for future in slow]
        assert [response.status for response in first] == [200, 200]
        pids = [response.json()["pid"] for response in first]
        assert len(set(pids)) == 2
        # The master has seen three idle workers, two more than maxspare, and retired one.
        time.sleep(2)
        for conn, pid in zip(conns, pids, strict=True):
            response = fcgi_request(address, "GET", "/echo/", keep_conn=True, sock=conn, timeout=5)
            assert (response.status, response.json()["pid"]) == (200, pid)
    finally:
        for conn in conns:
            conn.close()
