"""The status page and ping (status=, ping=) of a real server, against a known load.

Every test starts ``manage.py runfcgi`` and reads the page as a web server would, over
the server's own protocol: each field is checked against what the test made the server
do (N requests, M slow ones at once, a full pool with connections waiting).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request
from tests.support.net import Address, free_port, own_loopback
from tests.support.processes import wait_for
from tests.support.runner import Run, Runner

REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
COMBINATIONS = [(p, m) for p in ("fcgi", "scgi", "ajp") for m in ("prefork", "threaded")]
SLOW = 2.0
"""How long the slow requests of a test take (the testproject's /slow/ view)."""


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as handle:
        return min(socket.SOMAXCONN, int(handle.read()))


class Server:
    """A runfcgi server and the requests a test sends it."""

    def __init__(self, run: Run, protocol: str, address: Address, path: str) -> None:
        self.run = run
        self.protocol = protocol
        self.address = address
        self.path = path

    def request(self, path: str, query: str = "", **kwargs: Any) -> Response:
        kwargs.setdefault("timeout", 30)
        return REQUESTS[self.protocol](self.address, "GET", path, query=query, **kwargs)

    def status(self, full: bool = True) -> dict[str, Any]:
        response = self.request(self.path, "json&full" if full else "json")
        assert response.status == 200, response
        assert response.header("Content-Type") == "application/json"
        data: dict[str, Any] = json.loads(response.body)
        return data

    def in_background(self, path: str, query: str = "", **kwargs: Any) -> Future[Response]:
        future: Future[Response] = Future()

        def send() -> None:
            try:
                future.set_result(self.request(path, query, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=send, daemon=True).start()
        return future


def start(
    runner: Runner,
    protocol: str,
    method: str,
    *words: str,
    transport: str = "unix",
    env: dict[str, str] | None = None,
) -> Server:
    if protocol == "ajp" or transport == "tcp":
        # Connections are counted: none from any other test may reach this server.
        host = own_loopback()
        port = free_port(host)
        address: Address = (host, port)
        bind = [f"host={host}", f"port={port}"]
    else:
        address = str(runner.tmp / "app.sock")
        bind = [f"socket={address}"]
    run = runner.serve(
        "daemonize=false",
        f"protocol={protocol}",
        f"method={method}",
        *bind,
        *words,
        address=address,
        env=env,
    )
    [path] = [word[len("status=") :] for word in words if word.startswith("status=")]
    server = Server(run, protocol, address, path)
    # The connection that found the server ready is counted: wait until it is done.
    assert wait_for(lambda: server.status()["active_processes"] == 1, 10), run.describe()
    return server


def running(data: dict[str, Any], uri: str) -> list[dict[str, Any]]:
    return [p for p in data["processes"] if p["state"] == "Running" and p["request_uri"] == uri]


@pytest.mark.parametrize(("protocol", "method"), COMBINATIONS)
def test_each_format_and_ping_are_answered_without_django(
    runner: Runner, protocol: str, method: str
) -> None:
    """status= and ping= are answered by runfcgi: here they are paths Django serves
    itself (/meta/ and /echo/), and Django never sees them; other paths still reach it."""
    server = start(runner, protocol, method, "status=/meta/", "ping=/echo/")
    pong = server.request("/echo/")
    assert (pong.status, pong.body) == (200, b"pong")
    assert pong.header("Content-Type") == "text/plain"
    expected = {
        "": "text/plain; charset=utf-8",
        "json": "application/json",
        "html": "text/html; charset=utf-8",
        "openmetrics": "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "full&json": "application/json",
    }
    for query, content_type in expected.items():
        response = server.request("/meta/", query)
        assert response.status == 200
        assert response.header("Content-Type") == content_type
        assert response.header("Cache-Control") == "no-cache, no-store, must-revalidate, max-age=0"
        assert int(response.header("Content-Length") or -1) == len(response.body)
    text = server.request("/meta/").body.decode()
    assert f"process manager:      {method}\n" in text
    assert f"protocol:             {protocol}\n" in text
    assert "<th>accepted conn</th>" in server.request("/meta/", "html").body.decode()
    full = json.loads(server.request("/meta/", "full&json").body)
    assert full["process_manager"] == method
    assert {p["request_uri"] for p in full["processes"] if p["state"] == "Running"} == {
        "/meta/?full&json"
    }
    # Django still answers what is not the status page or ping.
    assert server.request("/meta/x").status == 404
    assert server.request("/status/204/").status == 204
    head = REQUESTS[protocol](server.address, "HEAD", "/meta/")
    assert (head.status, head.body) == (200, b"")


@pytest.mark.parametrize(("protocol", "method"), COMBINATIONS)
def test_pool_fields_follow_a_known_load(runner: Runner, protocol: str, method: str) -> None:
    """N quick requests, then M slow ones at once: each pool and worker field says so."""
    server = start(
        runner, protocol, method, "status=/status", "minspare=1", "maxspare=4", "maxchildren=4"
    )
    before = server.status()
    requests_before = sum(p["requests"] for p in before["processes"])
    n = 12
    for _ in range(n):
        assert server.request("/").status == 200
    after = server.status()
    # Each request came on a connection of its own, and so did this status request.
    assert after["accepted_conn"] - before["accepted_conn"] == n + 1
    assert sum(p["requests"] for p in after["processes"]) - requests_before == n + 1
    m = 2
    slow = [server.in_background("/slow/", f"s={SLOW}", body=b"12345") for _ in range(m)]
    assert wait_for(lambda: len(running(server.status(), f"/slow/?s={SLOW}")) == m, 10)
    time.sleep(0.5)
    busy = server.status()
    assert busy["active_processes"] == m + 1  # the slow ones and this status request
    assert busy["idle_processes"] == busy["total_processes"] - m - 1
    assert busy["accepted_conn"] - after["accepted_conn"] >= m + 1
    for process in running(busy, f"/slow/?s={SLOW}"):
        assert process["request_method"] == "GET"
        assert process["content_length"] == 5
        assert 0.4e6 <= process["request_duration"] <= SLOW * 1e6
    for future in slow:
        assert future.result(timeout=30).status == 200
    # A worker may still be closing the connection its client has read to the end. Each
    # status request may be served by a slow request's worker, whose figures then show
    # the status request: each worker's first sight after its slow request is kept.
    finished_seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while True:
        done = server.status()
        for process in done["processes"]:
            if process["request_uri"] == f"/slow/?s={SLOW}" and process["state"] != "Running":
                finished_seen.setdefault(process["pid"], process)
        if done["active_processes"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert done["active_processes"] == 1
    assert done["max_active_processes"] >= m + 1
    finished = list(finished_seen.values())
    assert len(finished) >= m - 1 >= 1
    for process in finished:
        assert process["state"] in ("Idle", "Reading headers")
        assert SLOW * 1e6 <= process["request_duration"] <= (SLOW + 2) * 1e6
        assert 0 <= process["last_request_cpu"] < 50  # mostly asleep
        assert process["last_request_memory"] > 1 << 20
        assert time.time() - 60 < process["start_time"] <= time.time()
    if method == "prefork":
        assert len({p["pid"] for p in done["processes"]}) == done["total_processes"]
    assert done["slow_requests"] == 0
    assert done["max_children_reached"] == 0
    assert done["listen_queue"] == 0


def wait_for_mark(mark: Path) -> None:
    """The testproject's /slow/ view touches this file when it starts sleeping."""
    assert wait_for(mark.exists, 10), "the slow request did not start"
    mark.unlink()


@pytest.mark.parametrize(
    ("protocol", "method", "transport"),
    [
        ("fcgi", "prefork", "unix"),
        ("fcgi", "prefork", "tcp"),
        ("scgi", "threaded", "unix"),
        ("ajp", "prefork", "tcp"),
        ("ajp", "threaded", "tcp"),
    ],
)
def test_a_full_pool_with_waiting_connections(
    runner: Runner, protocol: str, method: str, transport: str
) -> None:
    """maxchildren=2, both busy with slow requests, and connections waiting: the listen
    queue shows them, and max_children_reached counts each time the pool was full."""
    mark = runner.tmp / "slow-started"
    server = start(
        runner,
        protocol,
        method,
        "status=/status",
        "minspare=1",
        "maxspare=2",
        "maxchildren=2",
        transport=transport,
        env={"TESTPROJECT_MARK_DIR": str(runner.tmp)},
    )
    assert server.status()["listen_queue_len"] == somaxconn()
    for times_full in (1, 2):
        # The first slow request ends first: its worker then takes the status request,
        # which waits at the head of the queue, with three requests behind it.
        slow = [server.in_background("/slow/", f"s={SLOW}")]
        wait_for_mark(mark)
        slow.append(server.in_background("/slow/", f"s={2 * SLOW}"))
        wait_for_mark(mark)
        page = server.in_background("/status", "json&full")
        time.sleep(0.2)
        behind = [server.in_background("/") for _ in range(3)]
        data = json.loads(page.result(timeout=30).body)
        assert data["listen_queue"] == 3
        assert data["max_listen_queue"] >= 4
        assert data["max_children_reached"] == times_full
        assert data["total_processes"] == 2
        assert data["active_processes"] == 2
        for future in [*slow, *behind]:
            assert future.result(timeout=30).status == 200
        # Once the pool has had an idle worker for a sampling interval, a new time
        # of being full counts again.
        time.sleep(1.5)
    assert server.status()["listen_queue"] == 0


def test_connections_of_replaced_workers_still_count(runner: Runner) -> None:
    """maxrequests=2: workers come and go, and accepted_conn still counts each one's
    connections."""
    server = start(
        runner, "fcgi", "prefork", "status=/status", "maxrequests=2", "minspare=1", "maxspare=1"
    )
    before = server.status()
    pids = set()
    for _ in range(10):
        pids.add(server.request("/slow/", "s=0").json()["pid"])
    after = server.status()
    assert len(pids) >= 4
    assert after["accepted_conn"] - before["accepted_conn"] == 11
    assert after["max_active_processes"] >= 1


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_a_reload_keeps_the_start_time_and_counts_it(runner: Runner, method: str) -> None:
    server = start(runner, "fcgi", method, "status=/status")
    before = server.status()
    for _ in range(3):
        server.request("/")
    server.run.signal(signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in server.run.stdout, 60), server.run.describe()
    after = server.status(full=False)
    assert after["reloads"] == 1
    assert after["start_time"] == before["start_time"]
    assert after["accepted_conn"] >= before["accepted_conn"] + 4


def test_openmetrics_is_read_by_prometheus_client(runner: Runner) -> None:
    server = start(runner, "fcgi", "prefork", "status=/status")
    for _ in range(3):
        server.request("/")
    body = server.request("/status", "openmetrics&full").body.decode()
    data = server.status()
    families = {family.name: family for family in text_string_to_metric_families(body)}
    value = {
        name: families[name].samples[0].value
        for name in families
        if families[name].samples and not families[name].samples[0].labels
    }
    assert families["runfcgi_accepted_conn"].type == "counter"
    assert value["runfcgi_accepted_conn"] == data["accepted_conn"] - 1
    assert value["runfcgi_total_processes"] == data["total_processes"]
    assert value["runfcgi_listen_queue_len"] == data["listen_queue_len"]
    assert value["runfcgi_max_children_reached"] == 0
    assert value["runfcgi_start_time_seconds"] == pytest.approx(data["start_time"], abs=1)
    [info] = families["runfcgi_server"].samples
    assert info.labels["process_manager"] == "prefork"
    assert info.labels["protocol"] == "fcgi"
    limits = {s.labels["limit"]: s.value for s in families["runfcgi_limit"].samples}
    assert limits["maxchildren"] == 50
    requests = {s.labels["pid"]: s.value for s in families["runfcgi_worker_requests"].samples}
    assert sum(requests.values()) >= 4
    states = families["runfcgi_worker_state"].samples
    assert sum(s.value for s in states if s.labels["state"] == "Running") == 1


def test_without_status_the_path_is_djangos(runner: Runner) -> None:
    address = str(runner.tmp / "app.sock")
    runner.serve("daemonize=false", f"socket={address}", address=address)
    assert fcgi_request(address, "GET", "/status").status == 404
    assert fcgi_request(address, "GET", "/ping").status == 404


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["status=status"],
            "status='status' is not a URL path; use a path such as /status (decoded, no query).",
        ),
        (
            ["ping=/p?x"],
            "ping='/p?x' is not a URL path; use a path such as /ping (decoded, no query).",
        ),
        (["status=/s", "ping=/s"], "status= and ping= are both '/s'; give each its own path."),
    ],
)
def test_a_bad_path_is_one_line(runner: Runner, words: list[str], message: str) -> None:
    run = runner.run("socket=/tmp/x.sock", "daemonize=false", *words)
    assert run.proc.returncode == 1
    assert run.stderr.strip() == f"CommandError: {message}"
