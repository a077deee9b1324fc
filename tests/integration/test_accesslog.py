"""The access log (accesslog=, accessformat=) of a real server: the lines a known
sequence of requests writes, field by field, on each process model and protocol; a
custom format; the errors; a hostile client; USR1 reopening; standard output."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Response, ajp_attribute, ajp_request, fcgi_request, scgi_request
from tests.support.net import Address, can_connect, free_port
from tests.support.processes import children_of, holding, wait_for
from tests.support.runner import Run, Runner, wait_until_accepting

REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
COMBINED = re.compile(
    r'(?P<remote_addr>\S+) - (?P<remote_user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)" '
    r"(?P<duration_us>\d+) (?P<pid>\d+)"
)
"""The default format: the combined log format, then microseconds and the worker's pid."""
FORGED = '127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /forged/ HTTP/1.1" 200 0 "-" "-" 0 1'
ACCEPTED_FIELDS = (
    "{remote_addr}, {remote_port}, {remote_user}, {time_local}, {time_iso8601}, "
    "{time_msec}, {request}, {method}, {uri}, {query}, {protocol}, {scheme}, {host}, "
    "{content_length}, {status}, {bytes}, {referer}, {user_agent}, {duration}, "
    "{duration_ms}, {duration_us}, {pid}, {tid}"
)


class Server:
    def __init__(self, run: Run, protocol: str, address: Address, log: Path) -> None:
        self.run = run
        self.protocol = protocol
        self.address = address
        self.log = log

    def request(self, method: str, path: str, query: str = "", **kwargs: Any) -> Response:
        return REQUESTS[self.protocol](
            self.address, method, path, query=query, timeout=30, **kwargs
        )

    def lines(self, count: int, log: Path | None = None) -> list[str]:
        """The log's lines once it has `count` of them (a worker writes its line after
        the response has gone, so it may come a moment after the client has it)."""
        path = log or self.log
        assert wait_for(lambda: len(read_lines(path)) >= count, timeout=10), read_lines(path)
        time.sleep(0.2)  # a line more than expected would show now
        return read_lines(path)

    def pids(self) -> set[int]:
        """The server and its workers."""
        return {self.run.proc.pid, *children_of(self.run.proc.pid)}


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def start(runner: Runner, protocol: str, method: str, *words: str) -> Server:
    if protocol == "ajp":
        port = free_port()
        address: Address = ("127.0.0.1", port)
        bind = ["host=127.0.0.1", f"port={port}"]
    else:
        address = str(runner.tmp / "app.sock")
        bind = [f"socket={address}"]
    log = runner.tmp / "access.log"
    run = runner.serve(
        "daemonize=false",
        f"protocol={protocol}",
        f"method={method}",
        *bind,
        f"accesslog={log}",
        *words,
        address=address,
    )
    return Server(run, protocol, address, log)


def user(protocol: str, name: str) -> dict[str, Any]:
    """The request arguments that make the web server's authenticated user `name`."""
    if protocol == "ajp":
        return {"attributes": [ajp_attribute(0x03, name)]}
    return {"params": {"REMOTE_USER": name}}


@pytest.mark.parametrize(
    ("protocol", "method"),
    [("fcgi", "prefork"), ("fcgi", "threaded"), ("scgi", "prefork"), ("ajp", "threaded")],
)
def test_a_known_sequence_of_requests_gives_its_lines(
    runner: Runner, protocol: str, method: str
) -> None:
    server = start(runner, protocol, method)
    began = time.time()
    browser = {"Referer": "https://example.org/from/", "User-Agent": "Mozilla/5.0 (X11)"}
    sent = {
        "1": server.request("GET", "/echo/", "n=1", headers=browser, **user(protocol, "alice")),
        "2": server.request("POST", "/echo/", "n=2", body=b"x" * 5000),
        "3": server.request("HEAD", "/echo/", "n=3"),
        "4": server.request("GET", "/status/404/", "n=4"),
        "5": server.request("GET", "/fail/", "n=5"),
        "6": server.request("GET", "/slow/", "n=6&s=0.3"),
        "7": server.request("GET", "/echo/", "n=7", headers={"User-Agent": f"evil\n{FORGED}"}),
    }
    ended = time.time()
    lines = server.lines(len(sent))
    assert len(lines) == len(sent), lines
    entries = {}
    for line in lines:
        match = COMBINED.fullmatch(line)
        assert match is not None, line
        entries[re.search(r"[?&]n=(\d)", match["request"])[1]] = match  # type: ignore[index]
    assert set(entries) == set(sent)
    methods = {"2": "POST", "3": "HEAD"}
    for n, response in sent.items():
        entry, path = entries[n], {"4": "/status/404/", "5": "/fail/", "6": "/slow/"}
        query = "n=6&s=0.3" if n == "6" else f"n={n}"
        assert (
            entry["request"] == f"{methods.get(n, 'GET')} {path.get(n, '/echo/')}?{query} HTTP/1.1"
        )
        assert entry["remote_addr"] == "127.0.0.1"
        assert int(entry["status"]) == response.status
        assert int(entry["bytes"]) == len(response.body)
        when = datetime.strptime(entry["time"], "%d/%b/%Y:%H:%M:%S %z").timestamp()
        assert int(began) <= when <= ended
    assert [int(entries[n]["status"]) for n in sorted(sent)] == [200, 200, 200, 404, 500, 200, 200]
    assert int(entries["3"]["bytes"]) == 0  # HEAD: no body
    assert int(entries["5"]["bytes"]) > 0  # the 500 page
    assert (entries["1"]["remote_user"], entries["2"]["remote_user"]) == ("alice", "-")
    assert (entries["1"]["referer"], entries["1"]["user_agent"]) == (
        "https://example.org/from/",
        "Mozilla/5.0 (X11)",
    )
    assert (entries["2"]["referer"], entries["2"]["user_agent"]) == ("-", "-")
    assert entries["7"]["user_agent"] == "evil\\x0A" + FORGED.replace('"', "\\x22")
    assert int(entries["6"]["duration_us"]) >= 300_000
    assert int(entries["1"]["duration_us"]) < 300_000
    # The worker that served it: a prefork worker, whose pid the view tells; the
    # threaded server itself.
    for n in ("1", "2", "7"):
        served_by = json.loads(sent[n].body)["pid"]
        assert int(entries[n]["pid"]) == served_by
    pids = {int(entry["pid"]) for entry in entries.values()}
    if method == "threaded":
        assert pids == {server.run.proc.pid}
    else:
        assert server.run.proc.pid not in pids
        assert pids <= set(children_of(server.run.proc.pid))


def test_a_custom_format(runner: Runner) -> None:
    server = start(
        runner,
        "scgi",
        "threaded",
        "accessformat={method} {uri} {status} {bytes} {http_x_forwarded_for} {{x}} {tid}",
        "ping=/ping",
    )
    first = server.request("GET", "/echo/", "a=1", headers={"X-Forwarded-For": "203.0.113.9"})
    server.request("OPTIONS", "/status/204/")
    # Answered by runfcgi without Django, and logged as well.
    assert server.request("GET", "/ping").body == b"pong"
    [get, options, ping] = server.lines(3)
    assert get.startswith(f"GET /echo/?a=1 200 {len(first.body)} 203.0.113.9 {{x}} ")
    assert options.startswith("OPTIONS /status/204/ 204 0 - {x} ")
    assert ping.startswith("GET /ping 200 4 - {x} ")
    tid = int(get.rsplit(" ", 1)[1])
    assert tid != server.run.proc.pid
    assert str(tid) in os.listdir(f"/proc/{server.run.proc.pid}/task")


def test_an_unknown_field_stops_the_start_with_one_line(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    run = runner.run(
        f"socket={sock}", f"accesslog={runner.tmp / 'access.log'}", "accessformat={status} {nope}"
    )
    assert run.proc.returncode != 0
    assert run.stderr == (
        "CommandError: accessformat='{status} {nope}' has an unknown field {nope}; use "
        f"{ACCEPTED_FIELDS}, or {{http_NAME}} for a request header such as "
        "{http_x_forwarded_for}.\n"
    )
    assert not sock.exists()
    assert not (runner.tmp / "access.log").exists()


def test_an_access_log_that_cannot_be_opened_stops_the_start(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    missing = runner.tmp / "missing" / "access.log"
    run = runner.run(f"socket={sock}", f"accesslog={missing}")
    assert run.proc.returncode != 0
    assert run.stderr.splitlines()[-1] == (
        f"CommandError: Cannot open accesslog='{missing}': No such file or directory."
    )
    assert not sock.exists()
    check = runner.run("check", f"socket={sock}", f"accesslog={missing}")
    assert check.proc.returncode != 0
    assert f"Cannot open accesslog='{missing}': No such file or directory." in check.stderr


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_usr1_reopens_the_access_log_in_every_worker(runner: Runner, method: str) -> None:
    server = start(runner, "fcgi", method, "minspare=2", "maxspare=2")
    if method == "prefork":
        assert wait_for(lambda: len(children_of(server.run.proc.pid)) == 2, timeout=10)
    for n in range(4):
        server.request("GET", "/echo/", f"old={n}")
    old = server.lines(4)
    rotated = server.log.with_name("access.log.1")
    server.log.rename(rotated)
    assert len(holding(server.pids(), rotated)) == (3 if method == "prefork" else 1)
    server.run.signal(signal.SIGUSR1)
    assert wait_for(lambda: not holding(server.pids(), rotated), timeout=10), holding(
        server.pids(), rotated
    )
    for n in range(4):
        server.request("GET", "/echo/", f"new={n}")
    new = server.lines(4)
    assert read_lines(rotated) == old
    assert all("?old=" in line for line in old)
    assert len(new) == 4
    assert all("?new=" in line for line in new)


def test_a_dash_writes_to_standard_output(runner: Runner) -> None:
    address = str(runner.tmp / "app.sock")
    run = runner.serve(
        "daemonize=false", f"socket={address}", "method=threaded", "accesslog=-", address=address
    )
    fcgi_request(address, "GET", "/echo/", query="to=stdout")
    assert wait_for(lambda: '"GET /echo/?to=stdout HTTP/1.1" 200' in run.stdout, timeout=10), (
        run.describe()
    )
    assert "GET /echo/" not in run.stderr


def test_a_daemon_writes_a_dash_to_outlog(runner: Runner) -> None:
    address = runner.tmp / "app.sock"
    outlog, errlog = runner.tmp / "out.log", runner.tmp / "err.log"
    run = runner.run(
        f"socket={address}",
        f"pidfile={runner.tmp / 'app.pid'}",
        f"outlog={outlog}",
        f"errlog={errlog}",
        "accesslog=-",
    )
    assert run.proc.returncode == 0, run.describe()
    wait_until_accepting(None, str(address), 20)
    assert can_connect(str(address))
    fcgi_request(str(address), "GET", "/echo/", query="to=outlog")
    assert wait_for(lambda: "GET /echo/?to=outlog" in outlog.read_text(), timeout=10)
    assert "GET /echo/" not in errlog.read_text()


def test_a_reloaded_server_keeps_logging(runner: Runner) -> None:
    """HUP runs the command again: the new code's workers write to the same file."""
    server = start(runner, "fcgi", "prefork", "minspare=1", "maxspare=1")
    before = server.request("GET", "/echo/", "code=old").json()["pid"]
    server.run.signal(signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in server.run.stdout, timeout=30)
    after = server.request("GET", "/echo/", "code=new").json()["pid"]
    assert after != before
    lines = server.lines(2)
    assert [line.split('"')[1] for line in lines] == [
        "GET /echo/?code=old HTTP/1.1",
        "GET /echo/?code=new HTTP/1.1",
    ]
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == [before, after]


def test_one_connection_from_a_super_server_is_logged(runner: Runner) -> None:
    """inetd style: the process is handed one accepted connection on fd 0."""
    log = runner.tmp / "access.log"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        run = runner.start(f"accesslog={log}", "daemonize=false", stdin=theirs.fileno())
        theirs.close()
        response = fcgi_request("socketpair", "GET", "/echo/", query="one=1", sock=ours)
        assert response.status == 200
        assert wait_for(lambda: len(read_lines(log)) == 1, timeout=10), run.describe()
    assert run.wait(20) == 0, run.describe()
    [entry] = read_lines(log)
    assert f'"GET /echo/?one=1 HTTP/1.1" 200 {len(response.body)} ' in entry
    assert entry.endswith(f" {run.proc.pid}")


def test_lines_of_workers_serving_at_once_stay_whole(runner: Runner) -> None:
    server = start(runner, "fcgi", "prefork", "minspare=4", "maxspare=4")
    agent = "A" * 3000  # long lines, so that a torn write would show
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(
            pool.map(
                lambda n: server.request("GET", "/echo/", f"n={n}", headers={"User-Agent": agent}),
                range(40),
            )
        )
    assert all(response.status == 200 for response in statuses)
    lines = server.lines(40)
    assert len(lines) == 40
    entries = [COMBINED.fullmatch(line) for line in lines]
    assert all(entry is not None and entry["user_agent"] == agent for entry in entries)
    assert sorted(line.split("?n=")[1].split(" ")[0] for line in lines) == sorted(
        str(n) for n in range(40)
    )
    assert len({entry["pid"] for entry in entries if entry is not None}) > 1
