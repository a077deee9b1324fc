"""The slow-request log (slowlog=, slowlogfile=) of a real server.

A request to the testproject's /slow/ view sleeps past the limit: it must still be
answered in full, and the log must hold one entry for it, naming the view's sleeping
line in the stack of the one thread that served it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request
from tests.support.net import Address, free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import wait_for, wakeups
from tests.support.runner import Run, Runner

REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
LIMIT = 0.5
SLEEP = 1.5
HEADER = re.compile(
    r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})\] \[(?P<pid>\d+)\] \[WARNING\] "
    r"Slow request: (?P<method>\S+) (?P<uri>\S+) running (?P<elapsed>\d+\.\d) s "
    r"\(slowlog=(?P<limit>[\d.]+)\), thread (?P<thread>\d+); its stack, most recent call last:$",
    re.MULTILINE,
)
SMALL_POOL = ("minspare=1", "maxspare=2", "maxchildren=2")
"""Two workers for good: neither is started nor retired while a test measures."""
VIEWS = TESTPROJECT / "testproject" / "views.py"


def entries(text: str) -> list[tuple[re.Match[str], str]]:
    """Each entry's header and the stack that follows it, up to the next line that is
    not part of a stack."""
    found = []
    for match in HEADER.finditer(text):
        lines = text[match.end() + 1 :].splitlines()
        stack = []
        for line in lines:
            if not line.startswith("  "):
                break
            stack.append(line)
        found.append((match, "\n".join(stack)))
    return found


class Server:
    def __init__(self, run: Run, protocol: str, address: Address) -> None:
        self.run = run
        self.protocol = protocol
        self.address = address

    def request(self, path: str, query: str = "", **kwargs: Any) -> Response:
        kwargs.setdefault("timeout", 30)
        return REQUESTS[self.protocol](self.address, "GET", path, query=query, **kwargs)

    def slow(self, seconds: float = SLEEP, **kwargs: Any) -> dict[str, Any]:
        """A request to the sleeping view, answered in full."""
        started = time.monotonic()
        response = self.request("/slow/", f"s={seconds}", **kwargs)
        assert response.status == 200, response
        data: dict[str, Any] = response.json()
        assert data["slept"] >= seconds
        assert time.monotonic() - started >= seconds
        return data


def start(runner: Runner, protocol: str, method: str, *words: str) -> Server:
    if protocol == "ajp":
        port = free_port()
        address: Address = ("127.0.0.1", port)
        bind = ["host=127.0.0.1", f"port={port}"]
    else:
        address = str(runner.tmp / "app.sock")
        bind = [f"socket={address}"]
    run = runner.serve(
        "daemonize=false",
        f"protocol={protocol}",
        f"method={method}",
        *bind,
        f"slowlog={LIMIT}",
        *words,
        address=address,
    )
    return Server(run, protocol, address)


def check_entry(header: re.Match[str], stack: str, data: dict[str, Any], query: str) -> None:
    """The entry names the request, its process and thread, and the view's sleep."""
    assert header["method"] == "GET"
    assert header["uri"] == f"/slow/?{query}"
    assert int(header["pid"]) == data["pid"]
    assert int(header["thread"]) == data["thread"]
    assert LIMIT <= float(header["elapsed"]) < SLEEP
    assert float(header["limit"]) == LIMIT
    assert (
        abs(time.mktime(time.strptime(header["time"], "%Y-%m-%d %H:%M:%S %z")) - time.time()) < 30
    )
    # Most recent call last: the view's sleep ends the stack of that one thread.
    assert stack.splitlines()[-2:] == [
        f'  File "{VIEWS}", line {sleep_line()}, in slow',
        "    time.sleep(seconds)",
    ]
    assert stack.count(", in slow\n") == 1
    # Not the watcher's own stack, nor an idle pool thread's.
    assert "in _watch\n" not in stack
    assert "in _wait_for_job\n" not in stack


def sleep_line() -> int:
    lines = VIEWS.read_text().splitlines()
    start = lines.index("def slow(request: HttpRequest) -> JsonResponse:")
    return start + 1 + next(i for i, line in enumerate(lines[start:]) if "time.sleep(" in line)


@pytest.mark.parametrize(
    ("protocol", "method"),
    [("fcgi", "prefork"), ("fcgi", "threaded"), ("scgi", "prefork"), ("ajp", "threaded")],
)
def test_a_slow_request_is_logged_once_and_not_interrupted(
    runner: Runner, protocol: str, method: str
) -> None:
    log = runner.tmp / "slow.log"
    server = start(runner, protocol, method, f"slowlogfile={log}", "status=/status")
    assert server.request("/").status == 200
    data = server.slow()
    assert server.request("/").status == 200
    [(header, stack)] = entries(log.read_text())
    check_entry(header, stack, data, f"s={SLEEP}")
    status = json.loads(server.request("/status", "json").body)
    assert status["slow_requests"] == 1
    assert not entries(server.run.stderr)


def test_the_default_is_the_errlog_and_works_without_status(runner: Runner) -> None:
    errlog = runner.tmp / "err.log"
    server = start(runner, "fcgi", "prefork", f"errlog={errlog}")
    data = server.slow()
    [(header, stack)] = entries(errlog.read_text())
    check_entry(header, stack, data, f"s={SLEEP}")
    assert not entries(server.run.stderr)  # not on the terminal


def test_what_the_web_server_sent_is_escaped(runner: Runner) -> None:
    log = runner.tmp / "slow.log"
    server = start(runner, "fcgi", "threaded", f"slowlogfile={log}")
    query = f"s={LIMIT * 2}&x=a\nb c\\d\x1b".encode() + b"\xe9"
    server.slow(LIMIT * 2, params={"REQUEST_URI": b"/slow/?" + query, "QUERY_STRING": query})
    [(header, _)] = entries(log.read_text())
    assert header["uri"] == f"/slow/?s={LIMIT * 2}&x=a\\x0ab\\x20c\\x5cd\\x1b\\xe9"
    # One line, which the header's pattern matches as a whole.
    assert HEADER.fullmatch(log.read_text().splitlines()[0])


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_usr1_reopens_the_slow_log(runner: Runner, method: str) -> None:
    """After logrotate moved the file away, USR1 makes every process write to a new one."""
    log = runner.tmp / "slow.log"
    server = start(runner, "fcgi", method, f"slowlogfile={log}", *SMALL_POOL)
    server.slow(LIMIT * 2)
    rotated = log.rename(runner.tmp / "slow.log.1")
    server.run.signal(signal.SIGUSR1)
    assert wait_for(log.exists, 10)
    time.sleep(0.5)  # the worker reopens between connections
    data = server.slow()
    assert len(entries(rotated.read_text())) == 1
    [(header, stack)] = entries(log.read_text())
    check_entry(header, stack, data, f"s={SLEEP}")


def test_an_idle_worker_is_not_woken(runner: Runner) -> None:
    """The watcher sleeps until a running request can reach the limit: with none
    running, neither it nor the worker's main thread wakes."""
    server = start(runner, "fcgi", "prefork", *SMALL_POOL)
    pid = server.slow(LIMIT * 2)["pid"]
    assert server.request("/").status == 200
    time.sleep(LIMIT * 2)  # the watcher may wake once, when the fast request would be due
    before = wakeups(pid, threads=True)
    time.sleep(LIMIT * 4)
    assert wakeups(pid, threads=True) - before == 0


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["slowlog=soon"],
            "slowlog='soon' is not a number of seconds; use 0 or more, such as 30.",
        ),
        (["slowlog=-1"], "slowlog='-1' is not a number of seconds; use 0 or more, such as 30."),
        (
            ["slowlogfile=slow.log"],
            "slowlogfile='slow.log' needs slowlog= too: the seconds after which a running "
            "request is logged, such as slowlog=5.",
        ),
        (
            ["slowlog=5", "slowlogfile=/nonexistent/slow.log"],
            "Cannot open slowlogfile='/nonexistent/slow.log': No such file or directory.",
        ),
    ],
)
def test_a_bad_value_is_one_line(runner: Runner, words: list[str], message: str) -> None:
    run = runner.run(f"socket={runner.tmp / 's.sock'}", "daemonize=false", *words)
    assert run.proc.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"CommandError: {message}"
    assert not Path(runner.tmp / "s.sock").exists()


def test_threads_serving_slow_requests_at_once_each_get_their_entry(runner: Runner) -> None:
    """method=threaded: two slow requests at once, and a fast one beside them; each slow
    one has its own entry, with its own thread's stack."""
    log = runner.tmp / "slow.log"
    server = start(runner, "fcgi", "threaded", f"slowlogfile={log}", "status=/status")
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(server.slow, SLEEP + n) for n in (0, 1)]
        time.sleep(LIMIT / 2)
        assert server.request("/").status == 200
        answers = [future.result(timeout=30) for future in slow]
    assert answers[0]["thread"] != answers[1]["thread"]
    found = {header["uri"]: (header, stack) for header, stack in entries(log.read_text())}
    assert sorted(found) == [f"/slow/?s={SLEEP}", f"/slow/?s={SLEEP + 1}"]
    for n, data in enumerate(answers):
        check_entry(*found[f"/slow/?s={SLEEP + n}"], data, f"s={SLEEP + n}")
    assert json.loads(server.request("/status", "json").body)["slow_requests"] == 2


def test_a_reload_goes_on_logging_and_counting(runner: Runner) -> None:
    log = runner.tmp / "slow.log"
    server = start(runner, "fcgi", "prefork", f"slowlogfile={log}", "status=/status")
    server.slow(LIMIT * 2)
    server.run.signal(signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in server.run.stdout, 60), server.run.describe()
    data = server.slow()
    first, (header, stack) = entries(log.read_text())
    assert first[0]["uri"] == f"/slow/?s={LIMIT * 2}"
    check_entry(header, stack, data, f"s={SLEEP}")
    assert json.loads(server.request("/status", "json").body)["slow_requests"] == 2


def test_check_finds_a_slowlogfile_it_cannot_open(runner: Runner) -> None:
    run = runner.run(
        "check",
        f"socket={runner.tmp / 's.sock'}",
        "slowlog=5",
        "slowlogfile=/nonexistent/slow.log",
    )
    assert run.proc.returncode == 1
    assert "Cannot open slowlogfile='/nonexistent/slow.log': No such file or directory." in (
        run.stderr.splitlines()
    )


def test_a_connection_passed_by_a_super_server_is_watched_too(runner: Runner) -> None:
    """inetd style: the process serves the one connection on its standard input."""
    log = runner.tmp / "slow.log"
    address = str(runner.tmp / "inetd.sock")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(address)
        listening.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(address)
            accepted, _ = listening.accept()
            with accepted:
                run = runner.start(f"slowlog={LIMIT}", f"slowlogfile={log}", stdin=accepted)
            response = fcgi_request(address, "GET", "/slow/", query=f"s={SLEEP}", sock=client)
    assert response.status == 200, run.describe()
    assert run.wait(10) == 0, run.describe()
    [(header, stack)] = entries(log.read_text())
    check_entry(header, stack, response.json(), f"s={SLEEP}")


def test_the_documented_entry_has_the_shape_of_a_logged_one() -> None:
    page = (TESTPROJECT.parent / "docs" / "status.rst").read_text()
    [sample] = [line.strip() for line in page.splitlines() if "] Slow request: " in line]
    assert HEADER.fullmatch(sample)
