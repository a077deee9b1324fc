"""TERM, then start again: the stopping server hands its socket to the new one.

This is what the historic restart script does (kill, rm the pidfile, start). The
connections that arrive in between wait on the socket and are served by the new
server. The testproject reports the release it loaded, so a response shows which
server answered it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from django_runfcgi import handover
from django_runfcgi.addresses import Unix
from tests.support.clients import Response, fcgi_request
from tests.support.net import free_port
from tests.support.processes import children_of, wait_for
from tests.support.runner import Run, Runner


def serve(runner: Runner, address: str, release: str, *words: str) -> Run:
    """A foreground server with a pidfile, as the restart script starts one."""
    release_file = runner.tmp / f"release-{release}"
    release_file.write_text(release)
    bind = (f"socket={address}",) if "/" in address else _tcp_words(address)
    pidfile = runner.tmp / "app.pid"
    run = runner.serve(
        "daemonize=false",
        f"pidfile={pidfile}",
        *bind,
        *words,
        address=_address(address),
        env={"TESTPROJECT_RELEASE_FILE": str(release_file)},
    )
    # The socket accepts from the bind on; the pidfile is written just after.
    assert wait_for(lambda: _names(pidfile, run.proc.pid), timeout=10), run.describe()
    # Workers exist once a request is answered; until then, "no workers left" after a
    # TERM could be seen before the master had started them.
    assert fcgi_request(_address(address), "GET", "/echo/").json()["release"] == release
    return run


def _names(pidfile: Path, pid: int) -> bool:
    try:
        return pidfile.read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def kill_and_rm_pidfile(runner: Runner, run: Run) -> None:
    """The restart script's stop: ``kill `cat $PIDFILE`; rm -f $PIDFILE``."""
    run.signal(signal.SIGTERM)
    (runner.tmp / "app.pid").unlink()


def _tcp_words(address: str) -> tuple[str, str]:
    host, port = address.rsplit(":", 1)
    return f"host={host}", f"port={port}"


def _address(address: str) -> str | tuple[str, int]:
    if "/" in address:
        return address
    host, port = address.rsplit(":", 1)
    return host, int(port)


def in_background(call: Callable[[], Response]) -> Callable[[], Response]:
    """Start `call` in a thread; the returned function waits for its response."""
    result: list[Response | BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as err:  # handed to the test's thread
            result.append(err)

    thread = threading.Thread(target=run)
    thread.start()

    def wait() -> Response:
        thread.join(timeout=60)
        assert result, "the request did not finish"
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    return wait


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, runner: Runner) -> str:
    if request.param == "unix":
        return str(runner.tmp / "app.sock")
    return f"127.0.0.1:{free_port()}"


def test_a_server_started_during_a_stop_takes_the_socket_and_its_waiting_requests(
    runner: Runner, address: str
) -> None:
    old = serve(runner, address, "v1", "handover=30")
    kill_and_rm_pidfile(runner, old)
    assert wait_for(lambda: not children_of(old.proc.pid), timeout=10), "idle workers exit"
    # Sent once the old workers are gone and before the new server exists: it waits.
    waiting = in_background(lambda: fcgi_request(_address(address), "GET", "/echo/"))
    time.sleep(0.5)

    new = serve(runner, address, "v2")

    response = waiting()
    assert response.status == 200
    assert response.json()["release"] == "v2"
    assert old.wait(timeout=10) == 0
    assert "Handed the listening socket to the runfcgi started as PID" in old.stderr
    assert fcgi_request(_address(address), "GET", "/echo/").json()["release"] == "v2"
    assert new.proc.poll() is None
    if "/" in address:
        new.signal(signal.SIGTERM)  # A plain stop: its pidfile is still in place.
        assert new.wait(timeout=10) == 0
        assert not Path(address).exists()


def test_the_new_server_may_reuse_the_pidfile_of_the_one_it_replaces(runner: Runner) -> None:
    """``kill `cat $PIDFILE`; start`` without the rm, while a request keeps the old one busy."""
    address, pidfile = str(runner.tmp / "app.sock"), runner.tmp / "app.pid"
    old = serve(runner, address, "v1", "handover=30")
    busy = in_background(lambda: fcgi_request(address, "GET", "/slow/", query="s=6"))
    time.sleep(0.5)
    old.signal(signal.SIGTERM)

    new = serve(runner, address, "v2")

    assert _names(pidfile, new.proc.pid)
    assert fcgi_request(address, "GET", "/echo/").json()["release"] == "v2"
    assert busy().status == 200
    assert old.wait(timeout=10) == 0


def test_a_restart_whose_new_server_never_comes_ends_after_handover_seconds(
    runner: Runner,
) -> None:
    address = str(runner.tmp / "app.sock")
    old = serve(runner, address, "v1", "handover=2")
    started = time.monotonic()
    kill_and_rm_pidfile(runner, old)

    assert old.wait(timeout=10) == 0
    assert 1.5 < time.monotonic() - started < 6.0
    assert not Path(address).exists()


def test_a_plain_stop_does_not_wait_for_a_new_server(runner: Runner) -> None:
    address, pidfile = str(runner.tmp / "app.sock"), runner.tmp / "app.pid"
    old = serve(runner, address, "v1", "handover=30")
    started = time.monotonic()
    old.signal(signal.SIGTERM)

    assert old.wait(timeout=10) == 0
    assert time.monotonic() - started < 4.0
    assert not Path(address).exists()
    assert not pidfile.exists()


def test_int_during_the_wait_for_a_new_server_stops_at_once(runner: Runner) -> None:
    address = str(runner.tmp / "app.sock")
    old = serve(runner, address, "v1", "handover=60")
    kill_and_rm_pidfile(runner, old)
    assert not wait_for(lambda: old.proc.poll() is not None, timeout=1.0)
    started = time.monotonic()

    old.signal(signal.SIGINT)

    assert old.wait(timeout=10) == 0
    assert time.monotonic() - started < 2.0
    assert not Path(address).exists()


def test_with_handover_0_term_frees_the_socket_path_at_once(runner: Runner) -> None:
    address = str(runner.tmp / "app.sock")
    old = serve(runner, address, "v1", "handover=0")
    old.signal(signal.SIGTERM)
    assert wait_for(lambda: not Path(address).exists(), timeout=2)
    assert old.wait(timeout=10) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_process_of_another_user_is_not_given_the_socket(runner: Runner) -> None:
    address = str(runner.tmp / "app.sock")
    old = serve(runner, address, "v1", "handover=30")
    kill_and_rm_pidfile(runner, old)
    assert wait_for(lambda: not children_of(old.proc.pid), timeout=10), "the stop has begun"

    assert _offered_to_nobody(address) is False
    assert wait_for(lambda: "another user's process" in old.stderr, timeout=5), old.stderr
    assert old.proc.poll() is None, "still offering it to its own user"


def _offered_to_nobody(address: str) -> bool:
    """Whether a process running as nobody receives a file descriptor from the offer."""
    name = handover.offer_name(Unix(Path(address)))
    assert name is not None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        received = b"0"
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(5)
                conn.connect(name)
                _, fds, _, _ = socket.recv_fds(conn, 32, 1)
                received = b"1" if fds else b"0"
        except OSError:
            pass
        finally:
            os.write(write_end, received)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as result:
        answer = result.read()
    os.waitpid(child, 0)
    return answer == b"1"
